#!/bin/sh
# Scenario 1: what systemd-sysext merged under bootkeeper (enforced), then the same boot in
# permissive mode (all but rogue placed: its signature would make systemd-sysext refuse the whole
# set, issue 26 item 4), then enforced again.
compact() { python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)))' 2>&1; }
say() { printf '@@@ %s\n' "$*"; }  # not echo: dash's echo expands backslashes
runs() {
  for b in bk-hello-tools-a bk-hello-tools-b bk-hello-rogue bk-hello-plain; do
    if out=$($b 2>/dev/null); then say "RUN $1 $b ok $out"; else say "RUN $1 $b missing"; fi
  done
}
say "SX_REPORT $(compact < /run/bootkeeper/sysext.json)"
say "VERITY_D $(ls /run/verity.d 2>/dev/null | tr '\n' ' ')"
say "SX_STATUS enforced $(systemd-sysext status --json=short)"
runs enforced
systemd-sysext unmerge >/dev/null 2>&1
say "SX_ACTIVATE permissive $(bootkeeper sysext activate --mode permissive --no-refresh --json | compact)"
systemd-sysext refresh > /tmp/refresh.log 2>&1; rc=$?
say "SX_REFRESH permissive rc=$rc $(tr '\n' '|' < /tmp/refresh.log)"
say "SX_STATUS permissive $(systemd-sysext status --json=short)"
runs permissive
systemd-sysext unmerge >/dev/null 2>&1
say "SX_ACTIVATE enforced $(bootkeeper sysext activate --mode enforced --no-refresh --json | compact)"
systemd-sysext refresh --image-policy=root=signed+absent:usr=signed+absent > /tmp/refresh.log 2>&1; rc=$?
say "SX_REFRESH enforced rc=$rc $(tr '\n' '|' < /tmp/refresh.log)"
say "SX_STATUS enforced-again $(systemd-sysext status --json=short)"
runs enforced-again
