#!/bin/sh
exec >/dev/ttyS0 2>&1
if [ -e /run/bktest/fail-health ]; then
  echo "@@@ HEALTH fail"
  exit 1
fi
echo "@@@ HEALTH ok"
