#!/bin/sh
# bktest-goodboot-required.service: sysext.required as the activation judged it (its report's
# "required") and the verdict file bootkeeper-sysext-required.service runs on (or "none").
exec >/dev/ttyS0 2>&1
say() { printf '@@@ %s\n' "$*"; }  # not echo: dash's echo expands backslashes
say "GB_OEM $(tr '\n' '|' < /oem/95-bktest.yaml 2>/dev/null)"
say "GB_SXREQ $(python3 -c 'import json; print(json.dumps(json.load(open("/run/bootkeeper/sysext.json")).get("required")))' 2>&1)"
if [ -e /run/bootkeeper/sysext-required.failed ]; then
  say "GB_FAILED $(tr '\n' '|' < /run/bootkeeper/sysext-required.failed)"
else
  say "GB_FAILED none"
fi
