#!/bin/sh
# bktest-goodboot-multiuser.service: fail when /efi/bktest/fail-multiuser names the booted role (the
# entry systemd-boot selected, without counter, as fault.sh finds it; else the UKI's bktest.role=).
exec >/dev/ttyS0 2>&1
say() { printf '@@@ %s\n' "$*"; }  # not echo: dash's echo expands backslashes
f=/sys/firmware/efi/efivars/LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
role=$([ -e "$f" ] && cat "$f" | tail -c +5 | tr -d '\000' | sed -n 's/^\([a-z]*\)\(+[0-9-]*\)\{0,1\}\.efi$/\1/p')
[ -n "$role" ] || role=$(sed -n 's/.*bktest\.role=\([a-z]*\).*/\1/p' /proc/cmdline)
if grep -qx "$role" /efi/bktest/fail-multiuser 2>/dev/null; then
  say "MULTIUSER fail ($role)"
  exit 1
fi
say "MULTIUSER ok ($role)"
