#!/bin/sh
# tests/test_node_usrlocal.py: what the node sees of its persistent /usr/local with the extensions
# merged (systemd-sysext 257 under bootkeeper's default), then the control in a private mount
# namespace (this script again, with "control"): README's old example, hierarchies
# [/usr, /opt, /usr/local], with a directory extension that ships /usr/local content.
# Lines: UL_CHECK <phase> marker= write= persisted= tool= anchor=; UL_MOUNTS, UL_SX (systemd-sysext
# status), UL_STATUS (bootkeeper status --json: shadowed, warnings) per phase; UL_CTL for the control.
exec >/dev/ttyS0 2>&1
say() { printf '@@@ %s\n' "$*"; }
shadowed() {
  python3 -c 'import json, sys; j = json.load(sys.stdin); print(json.dumps({"shadowed": j["extensions"]["shadowed"], "warnings": j["warnings"]}))' 2>&1
}
check() {
  m=$(cat /usr/local/bktest-marker 2>/dev/null || echo MISSING)
  f="bktest-written-$1"
  if echo "$1" > "/usr/local/$f" 2>/dev/null; then w=ok; else w=fail; fi
  # did the write reach the persistent folder? (seen through a plain bind of the root file system)
  if [ -e "/run/bktest-rootfs/var/lib/bktest/usrlocal/$f" ]; then p=yes; else p=no; fi
  t=$(bk-hello-tools-a 2>/dev/null | tr ' ' _)
  a=$(cat /usr/share/pki/trust/anchors/bktest.pem 2>/dev/null | tr ' ' _)
  say "UL_CHECK $1 marker=$(echo "$m" | tr ' ' _) write=$w persisted=$p tool=${t:-MISSING} anchor=${a:-MISSING}"
  say "UL_MOUNTS $1 $(findmnt -rn -o TARGET,FSTYPE,OPTIONS | grep -E '^/usr(/| )' | tr '\n' '|')"
  say "UL_SX $1 $(systemd-sysext status --json=short)"
  say "UL_STATUS $1 $(bootkeeper status --json 2>/dev/null | shadowed)"
}
if [ "${1:-}" = control ]; then
  mount --make-rshared /  # private to this namespace since unshare: systemd-sysext's mounts come back here only
  mount -t tmpfs tmpfs /var/lib/extensions
  d=/var/lib/extensions/bktest-ctl
  mkdir -p "$d/usr/local/share" "$d/usr/lib/extension-release.d"
  echo "from an extension" > "$d/usr/local/share/bktest-ctl"
  echo "ID=_any" > "$d/usr/lib/extension-release.d/extension-release.bktest-ctl"
  export SYSTEMD_SYSEXT_HIERARCHIES=/usr:/opt:/usr/local  # also for UL_SX's status
  systemd-sysext refresh --image-policy=root=signed+absent:usr=signed+absent > /tmp/bktest-ctl.log 2>&1
  say "UL_CTL rc=$? $(tr '\n' '|' < /tmp/bktest-ctl.log)"
  check control
  exit 0
fi
mkdir -p /run/bktest-rootfs
mountpoint -q /run/bktest-rootfs || mount --bind / /run/bktest-rootfs
check merged
unshare -m --propagation private /bin/sh /usr/local/lib/bktest/usrlocal.sh control
check after-control
