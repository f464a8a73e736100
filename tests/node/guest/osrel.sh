#!/bin/sh
# On a Kairos node the OS lives in the UKI, so its .osrel is the os-release that systemd-sysext (and
# bootkeeper-sysext) judge extensions against. The guest's UKIs share one root file system: a UKI of
# OS vN (bktest.osversion=N) gets /usr/local/lib/bktest/os-release.vN, the text of its .osrel (both
# come from nodevm.os_release), bind-mounted over /usr/lib/os-release (/etc/os-release links there).
exec >/dev/ttyS0 2>&1
v=$(sed -n 's/.*bktest\.osversion=\([0-9]*\).*/\1/p' /proc/cmdline)
[ -n "$v" ] || exit 0
mkdir -p /run/bktest
cp "/usr/local/lib/bktest/os-release.v$v" /run/bktest/os-release
mount --bind /run/bktest/os-release /usr/lib/os-release
printf '@@@ OSREL %s\n' "$(. /etc/os-release; echo "VERSION_ID=$VERSION_ID IMAGE_VERSION=$IMAGE_VERSION")"
