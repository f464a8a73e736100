#!/bin/sh
exec >/dev/ttyS0 2>&1
compact() { python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)))' 2>&1; }
echo "@@@ REPORT up=$(cut -d' ' -f1 /proc/uptime)"
echo "@@@ HANDED_OVER $(ls /run/initrd-extra/sysext 2>&1 | tr '\n' ' ')"
echo "@@@ EFI_MOUNT $(findmnt -no OPTIONS /efi)"
for u in bk-health.service boot-complete.target bootkeeper-bless.service bootkeeper-sysext.service systemd-sysext.service; do
  echo "@@@ UNIT $u $(systemctl show -p ActiveState -p Result -p FailureAction "$u" | tr '\n' ' ')"
done
echo "@@@ DROPINS $(ls /run/systemd/generator/bk-health.service.d 2>/dev/null | tr '\n' ' ')"
echo "@@@ STATUS_JSON $(bootkeeper status --json | compact)"
bootkeeper status 2>&1 | sed 's/^/@@@ STATUS /'
if [ -e /efi/bktest/sysext-compare ]; then /usr/local/lib/bktest/sysext-compare.sh; fi
echo "@@@ DONE"
systemctl poweroff --no-block
