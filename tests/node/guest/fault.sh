#!/bin/sh
# Lines of /efi/bktest/faults read like `bootkeeper simulate --fail`: ROLE=always|N[:panic|service].
# The role is the booted entry's (LoaderEntrySelected without counter and .efi: after an upgrade the
# old active's UKI boots as passive), else the UKI's command line (bktest.role=); boots per role are
# counted on the root file system. panic: the kernel crashes now (panic=-1 resets the machine);
# service: bk-health fails. A line vN=... is OS version N's fault (bktest.osversion=N).
exec >/dev/ttyS0 2>&1
say() { printf '@@@ %s\n' "$*"; }  # not echo: dash's echo expands backslashes
efivar() { f=/sys/firmware/efi/efivars/$1-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f; [ -e "$f" ] && cat "$f" | tail -c +5 | tr -d '\000'; }
role=$(efivar LoaderEntrySelected | sed -n 's/^\([a-z]*\)\(+[0-9-]*\)\{0,1\}\.efi$/\1/p')
[ -n "$role" ] || role=$(sed -n 's/.*bktest\.role=\([a-z]*\).*/\1/p' /proc/cmdline)
mkdir -p /var/lib/bktest /run/bktest
n=$(( $(cat "/var/lib/bktest/boots-$role" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "/var/lib/bktest/boots-$role"
sync
say "BOOT role=$role nth=$n"
# efivarfs files cannot seek: tail reads them through a pipe (efivar above)
for v in LoaderEntrySelected LoaderBootCountPath; do say "EFIVAR $v=$(efivar $v)"; done
[ -f /efi/bktest/bless-pause ] && cp /efi/bktest/bless-pause /run/bktest/bless.env
line=$(grep "^$role=" /efi/bktest/faults 2>/dev/null | head -1)
# an OS version's own fault (vN=..., tests/node/test_node_update.py: a release that fails its health
# check), whatever entry it boots as; counted per version
osv=$(sed -n 's/.*bktest\.osversion=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -z "$line" ] && [ -n "$osv" ] && grep -q "^v$osv=" /efi/bktest/faults 2>/dev/null; then
  line=$(grep "^v$osv=" /efi/bktest/faults | head -1)
  n=$(( $(cat "/var/lib/bktest/boots-v$osv" 2>/dev/null || echo 0) + 1 ))
  echo "$n" > "/var/lib/bktest/boots-v$osv"
  sync
  say "OSFAULT v$osv nth=$n"
fi
[ -n "$line" ] || exit 0
spec=${line#*=}; count=${spec%%:*}; kind=panic
case "$spec" in *:*) kind=${spec#*:} ;; esac
if [ "$count" = always ] || [ "$n" -le "$count" ]; then
  say "FAULT $kind"
  if [ "$kind" = panic ]; then
    sync
    echo c > /proc/sysrq-trigger
  fi
  touch /run/bktest/fail-health
fi
exit 0
