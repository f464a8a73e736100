#!/bin/sh
# tests/test_node_extdirs.py (issue 26 item 5): what activation left in the other extension folders
# (/etc/extensions, /var/lib/extensions) and its quarantine, and what systemd-sysext merged from them.
compact() { python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)))' 2>&1; }
say() { printf '@@@ %s\n' "$*"; }  # not echo: dash's echo expands backslashes
say "XD_RESIDENTS $(python3 -c 'import json; print(json.dumps(json.load(open("/run/bootkeeper/sysext.json"))["residents"]))' 2>&1)"
say "XD_LS var $(ls -A /var/lib/extensions 2>/dev/null | tr '\n' ' ')"
say "XD_LS etc $(ls -A /etc/extensions 2>/dev/null | tr '\n' ' ')"
say "XD_QUARANTINE $(cd /var/lib/bootkeeper/quarantine 2>/dev/null && find . -type f | sort | tr '\n' ' ')"
say "XD_STATUS $(systemd-sysext status --json=short)"
for b in bk-hello-intruder bk-hello-resident; do
  if out=$($b 2>/dev/null); then say "XD_RUN $b ok $out"; else say "XD_RUN $b missing"; fi
done
journalctl -b -o cat --no-pager -u systemd-sysext.service | sed 's/^/@@@ XD_SYSEXT_LOG /'
