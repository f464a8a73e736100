#!/bin/sh
exec >/dev/ttyS0 2>&1
say() { printf '@@@ %s\n' "$*"; }  # not echo: dash's echo expands backslashes
if [ -e /run/bktest/fail-health ]; then
  say "HEALTH fail"
  exit 1
fi
say "HEALTH ok"
