#!/bin/sh
# What bootkeeper costs this boot (scenario 1, /efi/bktest/boottime; issue 18), printed once the boot
# is finished: `systemd-analyze critical-chain` refuses a boot whose FinishTimestampMonotonic is still 0,
# and report.sh is part of the boot, so report.sh starts this with systemd-run and does not power off.
# * BT_UNIT UNIT PROPS: each unit's monotonic timestamps (µs since the kernel started): start
#   (InactiveExit), main process start and exit, active (ActiveEnter), and whether its conditions ran;
#   a oneshot with ExecStartPost (bless, boot: the motd) is ActiveEnter - InactiveExit in all;
# * BT_BLAME, BT_CHAIN, BT_TIME: systemd-analyze blame (bootkeeper's units and their neighbours; not
#   in the boot with bootkeeper's units masked), critical-chain boot-complete.target, time;
# * BT_GENERATOR_RUN N rc= us= wrote=: the installed bootkeeper-generator run by hand into a scratch
#   folder (as the manager runs it, three output folders), and BT_PYTHON_RUN N us=: `python3 -IS -c pass`
#   timed the same way: what the interpreter alone costs of it. The manager's own generator phase (all
#   generators) is BT_MANAGER, which report.sh printed before anything could reload the manager.
# Then it powers the machine off, whatever happened.
exec >/dev/ttyS0 2>&1
say() { printf '@@@ %s\n' "$*"; }  # not echo: dash's echo expands backslashes
trap 'systemctl poweroff --no-block' EXIT
export SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat LC_ALL=C
i=0
while [ "$(systemctl show -P FinishTimestampMonotonic)" = 0 ] && [ "$i" -lt 600 ]; do
  sleep 0.1
  i=$((i + 1))
done
say "BT_FINISHED $(systemctl show -P FinishTimestampMonotonic) waited=${i}00ms"
say "BT_CMDLINE $(cat /proc/cmdline)"
if [ -e /run/bootkeeper/sysext.json ]; then say "BT_SXREPORT present"; else say "BT_SXREPORT absent"; fi
# one systemctl call for all (each call costs ~0.15 s under TCG); Id= names each block
systemctl show -p Id -p LoadState -p ActiveState -p Result -p ConditionResult -p ConditionTimestampMonotonic \
    -p InactiveExitTimestampMonotonic -p ExecMainStartTimestampMonotonic -p ExecMainExitTimestampMonotonic \
    -p ActiveEnterTimestampMonotonic \
    bootkeeper-sysext.service bootkeeper-random-seed.service bootkeeper-boot.service bootkeeper-bless.service \
    bootkeeper-metrics.service bootkeeper-metrics.path bootkeeper-metrics.timer systemd-sysext.service \
    bootkeeper-update.timer bootkeeper-repair.service \
    bktest-fault.service bk-health.service bktest-boot-complete.service sysinit.target basic.target \
    boot-complete.target multi-user.target \
  | awk 'BEGIN { RS = ""; FS = "\n" }
      { id = ""; props = ""
        for (i = 1; i <= NF; i++) if ($i ~ /^Id=/) id = substr($i, 4); else props = props " " $i
        print "@@@ BT_UNIT " id props }'
# blame takes ~5 s under TCG: only where bootkeeper's units ran (the masked boot has none to show)
case " $(cat /proc/cmdline) " in
  *" systemd.mask=bootkeeper-"*) ;;
  *)
    systemd-analyze blame --no-pager 2>&1 | grep -E 'bootkeeper|systemd-sysext|bk-health|bktest|rror' \
      | sed 's/^ *//; s/^/@@@ BT_BLAME /'
    ;;
esac
systemd-analyze critical-chain boot-complete.target --no-pager 2>&1 | sed 's/^/@@@ BT_CHAIN /'
systemd-analyze time --no-pager 2>&1 | sed 's/^/@@@ BT_TIME /'
gen=/usr/lib/systemd/system-generators/bootkeeper-generator
[ -x "$gen" ] || gen=/etc/systemd/system-generators/bootkeeper-generator
for n in 1 2 3; do
  d=/run/bktest/gen$n
  rm -rf "$d"
  mkdir -p "$d/normal" "$d/early" "$d/late"
  t0=$(date +%s%N)
  "$gen" "$d/normal" "$d/early" "$d/late" 2>/dev/null
  rc=$?
  t1=$(date +%s%N)
  say "BT_GENERATOR_RUN $n rc=$rc us=$(( (t1 - t0) / 1000 )) wrote=$(cd "$d" && find . -type f | LC_ALL=C sort | tr '\n' ' ')"
  t0=$(date +%s%N)
  python3 -IS -c pass
  t1=$(date +%s%N)
  say "BT_PYTHON_RUN $n us=$(( (t1 - t0) / 1000 ))"
done
say "BT_DONE"
