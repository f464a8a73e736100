#!/bin/sh
exec >/dev/ttyS0 2>&1
compact() { python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)))' 2>&1; }
say() { printf '@@@ %s\n' "$*"; }  # not echo: dash's echo expands backslashes
say "REPORT up=$(cut -d' ' -f1 /proc/uptime)"
# the manager's generator phase of this boot, before sysext-compare.sh's refresh may reload the manager
# (a reload runs the generators again and moves these timestamps)
if [ -e /efi/bktest/boottime ]; then
  say "BT_MANAGER $(systemctl show -p GeneratorsStartTimestampMonotonic -p GeneratorsFinishTimestampMonotonic \
    -p UnitsLoadStartTimestampMonotonic -p UnitsLoadFinishTimestampMonotonic -p UserspaceTimestampMonotonic | tr '\n' ' ')"
fi
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
if [ -s /efi/bktest/extdirs ]; then /usr/local/lib/bktest/extdirs.sh; fi  # before sysext-compare unmerges
if [ -s /efi/bktest/sysext-compare ]; then /usr/local/lib/bktest/sysext-compare.sh; fi
/usr/local/lib/bktest/upgrade.sh
if [ -e /efi/bktest/rigcheck ]; then /usr/local/lib/bktest/rigcheck.sh; fi
# tests/node/test_node_update.py: the history (updates and repairs) and what status says of the last one
if [ -e /efi/bktest/history ]; then say "HISTORY_JSON $(bootkeeper history show --json | compact)"; fi
say "DONE"
if [ -s /efi/bktest/stay-up ]; then
  # the update scenarios: the node stays up for the update timer or the repair, whose reboot ends the
  # machine (-no-reboot); the entries as bless left them, before either renames one (Node.boot reads
  # them); powered off after the seconds the file says if nothing rebooted it
  say "LINUX_BEFORE $(ls /efi/EFI/Linux | tr '\n' ' ')"
  say "STAYING $(cat /efi/bktest/stay-up)"
  systemd-run --no-block --collect --unit=bktest-stay-up --on-active="$(cat /efi/bktest/stay-up)" \
    /usr/bin/systemctl poweroff --no-block || systemctl poweroff --no-block
elif [ -e /efi/bktest/boottime ]; then
  # boottime.sh reads the finished boot, which this unit is part of: it runs on its own and powers off
  systemd-run --no-block --collect --unit=bktest-boottime /usr/local/lib/bktest/boottime.sh \
    || systemctl poweroff --no-block
else
  systemctl poweroff --no-block
fi
