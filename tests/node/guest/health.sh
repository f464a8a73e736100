#!/bin/sh
exec >/dev/ttyS0 2>&1
say() { printf '@@@ %s\n' "$*"; }  # not echo: dash's echo expands backslashes
# which OS runs and which extension it merged (after systemd-sysext.service: sysinit.target), also on
# a boot that FailureAction=reboot ends before report.sh runs
say "OS $(. /etc/os-release; echo "VERSION_ID=$VERSION_ID")"
if out=$(bk-hello-tools 2>/dev/null); then say "TOOLS $out"; else say "TOOLS missing"; fi
if [ -e /run/bktest/fail-health ]; then
  say "HEALTH fail"
  exit 1
fi
say "HEALTH ok"
