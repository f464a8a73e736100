#!/bin/sh
exec >/dev/ttyS0 2>&1
compact() { python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)))' 2>&1; }
say() { printf '@@@ %s\n' "$*"; }  # not echo: dash's echo expands backslashes
say "REPORT up=$(cut -d' ' -f1 /proc/uptime)"
say "HANDED_OVER $(ls /run/initrd-extra/sysext 2>&1 | tr '\n' ' ')"
say "EFI_MOUNT $(findmnt -no OPTIONS /efi)"
for u in bk-health.service boot-complete.target bootkeeper-bless.service bootkeeper-sysext.service systemd-sysext.service \
    bootkeeper-random-seed.service systemd-boot-random-seed.service; do
  say "UNIT $u $(systemctl show -p ActiveState -p Result -p FailureAction -p LoadState "$u" | tr '\n' ' ')"
done
say "FAILED $(systemctl list-units --state=failed --plain --no-legend --no-pager | cut -d' ' -f1 | tr '\n' ' ')"
say "SEED before=$(cat /run/bktest/seed-before 2>/dev/null) after=$({ sha256sum /efi/loader/random-seed 2>/dev/null || echo none; } | cut -d' ' -f1)"
journalctl -b -o cat --no-pager -u bootkeeper-random-seed.service -u systemd-boot-random-seed.service | sed 's/^/@@@ SEED_LOG /'
say "DROPINS $(ls /run/systemd/generator/bk-health.service.d 2>/dev/null | tr '\n' ' ')"
say "STATUS_JSON $(bootkeeper status --json | compact)"
bootkeeper status 2>&1 | sed 's/^/@@@ STATUS /'
if [ -e /sys/class/tpm/tpm0 ]; then /usr/local/lib/bktest/tpm.sh; fi
if [ -e /dev/disk/by-partlabel/bkdata ]; then /usr/local/lib/bktest/unlock.sh; fi
if [ -e /efi/bktest/sysext-compare ]; then /usr/local/lib/bktest/sysext-compare.sh; fi
/usr/local/lib/bktest/upgrade.sh
say "DONE"
systemctl poweroff --no-block
