#!/bin/sh
# Node test rig (run by report.sh when /efi/bktest/rigcheck exists): what the update scenarios need of
# the machine. The NIC and its address, the registry behind QEMU's guestfwd fetched over TLS with the
# test CA (/efi/bktest/ca.pem), the address a restricted user network must not reach, and every block
# device with its removable flag (the USB stick).
say() { printf '@@@ %s\n' "$*"; }  # not echo: dash's echo expands backslashes
# network-online.target as the repair's unit wants it: reached at once without a NIC (wait-online's
# ExecCondition= skips it), after DHCP with one
t0=$(date +%s%N); systemctl start network-online.target; rc=$?; t1=$(date +%s%N)
say "ONLINE_TARGET rc=$rc ms=$(( (t1 - t0) / 1000000 ))"
if ls /sys/class/net | grep -qv "^lo$"; then
  /usr/lib/systemd/systemd-networkd-wait-online --any --timeout=30 >/dev/null 2>&1; say "WAIT_ONLINE rc=$?"
fi
say "NET_LINKS $(ls /sys/class/net | tr '\n' ' ')"
say "NET_STATE $(networkctl --no-pager --no-legend list 2>&1 | tr -s ' ' | tr '\n' ';')"
say "NET_ADDR $(networkctl --no-pager -n0 status 2>&1 | sed -n 's/^ *Address: *//p' | tr '\n' ' ')"
say "NET_ONLINE $(systemctl show -p ActiveState -p Result -p ExecMainStartTimestampMonotonic systemd-networkd-wait-online.service | tr '\n' ' ')"
say "REGISTRY $(python3 - <<'PY' 2>&1 | tail -1
import ssl, urllib.request
ctx = ssl.create_default_context(cafile="/efi/bktest/ca.pem")
out = []
for _ in range(3):  # three connections, one after another, each its own TLS session
    try:
        with urllib.request.urlopen("https://10.0.2.100:5000/v2/", context=ctx, timeout=20) as r:
            out.append(f"status={r.status} api={r.headers.get('Docker-Distribution-Api-Version')}")
    except Exception as exc:
        out.append(f"error={type(exc).__name__}: {exc}")
print(" ".join(out))
PY
)"
# restrict=on: nothing but the forwarded address (the gateway's DNS and any other host are cut off)
say "OUTSIDE $(python3 -c '
import socket
s = socket.socket(); s.settimeout(5)
try:
    s.connect(("10.0.2.2", 22)); print("connected")
except Exception as exc:
    print(f"refused={type(exc).__name__}")
' 2>&1 | tail -1)"
for b in /sys/block/*; do
  n=${b##*/}
  case "$n" in loop*|ram*) continue ;; esac
  say "BLOCK $n removable=$(cat "$b/removable") size=$(cat "$b/size") model=$(cat "$b/device/model" 2>/dev/null | tr -d ' ')"
done
if [ -e /dev/sda ]; then
  mkdir -p /run/bktest/stick
  if mount -o ro /dev/sda /run/bktest/stick 2>/dev/null; then
    say "STICK_FILES $(cd /run/bktest/stick && find . -maxdepth 2 | LC_ALL=C sort | tr '\n' ' ')"
    umount /run/bktest/stick
  else
    say "STICK_FILES unmountable"
  fi
fi
