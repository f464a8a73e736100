#!/bin/bash
# The guest tree of the node tests (tests/node/test_node.py): Debian 13 (trixie) minbase with systemd 257
# as PID 1, udev, the cloud kernel (dm-verity with root-hash signatures), an initramfs-tools initrd
# (virtio, ext4, zstd), python3 and the Debian packages bootkeeper's package depends on (python3-click,
# -yaml, -rich, -cryptography, -asn1crypto; systemd), and systemd-boot as a node that boots with it has
# it: bootctl (bootkeeper random-seed runs it) and systemd-boot-random-seed.service, which
# bootkeeper-random-seed.service takes the place of; and the TPM side of systemd 257 that a measured
# boot with a software TPM runs (tests/node/test_node_tpm.py): tpm2-tss, which systemd-pcrphase,
# systemd-pcrextend and systemd-cryptsetup dlopen (ESYS, MU, RC and the device TCTI), and
# systemd-cryptsetup with cryptsetup-bin for a LUKS2 volume unlocked by the TPM. bootkeeper itself is
# not in this tree: tests/nodevm.py copies the tree and installs bootkeeper's Debian package (scripts/build-deb.sh) into
# the copy with dpkg -i, which checks those dependencies; so a code change never rebuilds this.
#
# Idempotent and cached in $NODE_GUEST (default .cache/node/guest); rebuilt when this script or the
# guest's initramfs hook changes. The mirror comes from the machine's own apt sources and is not
# left in the tree.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=${NODE_GUEST:-$here/.cache/node/guest}
hook=$here/tests/node/guest/initramfs-keep-extra
[ "$(id -u)" = 0 ] || { echo "setup-node-guest: must run as root" >&2; exit 2; }
mirror=${DEBIAN_MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
stamp_want=$(cat "$0" "$hook" | sha256sum | cut -c1-16)
if [ -f "$root.stamp" ] && [ "$(cat "$root.stamp")" = "$stamp_want" ] && [ -x "$root/usr/lib/systemd/systemd" ]; then
  exit 0
fi
[ -n "$mirror" ] || { echo "setup-node-guest: no Debian mirror in the machine's apt sources; set DEBIAN_MIRROR" >&2; exit 2; }
command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null
t0=$(date +%s)
rm -rf "$root" "$root.stamp"; mkdir -p "$(dirname "$root")"
debootstrap --variant=minbase trixie "$root" "$mirror" > "$root.debootstrap.log" 2>&1 \
  || { echo "setup-node-guest: debootstrap failed:" >&2; tail -5 "$root.debootstrap.log" >&2; exit 1; }
echo "deb $mirror trixie main" > "$root/etc/apt/sources.list"
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod +x "$root/usr/sbin/policy-rc.d"
mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/etc/initramfs-tools/scripts/init-bottom"
printf 'MODULES=list\nCOMPRESS=zstd\n' > "$root/etc/initramfs-tools/conf.d/node.conf"
install -m 0755 "$hook" "$root/etc/initramfs-tools/scripts/init-bottom/keep-extra"
unshare --mount --propagation private /bin/bash -c "
  set -e
  R='$root'
  mount --bind \"\$R\" \"\$R\"
  mount -t proc proc \"\$R/proc\"
  mount --rbind /sys \"\$R/sys\"
  mount --rbind /dev \"\$R/dev\"
  mount -t tmpfs tmpfs \"\$R/run\"
  chroot \"\$R\" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 /bin/sh -c '
    set -e
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends initramfs-tools zstd >/tmp/apt.log 2>&1 || { tail -20 /tmp/apt.log; exit 1; }
    printf \"virtio_pci\nvirtio_blk\next4\n\" >> /etc/initramfs-tools/modules
    apt-get install -y -q --no-install-recommends linux-image-cloud-amd64 systemd systemd-sysv udev \
      libcryptsetup12 dosfstools kmod python3 python3-click python3-yaml python3-rich python3-cryptography \
      python3-asn1crypto python3-prometheus-client systemd-boot libtss2-esys-3.0.2-0t64 libtss2-mu-4.0.1-0t64 \
      libtss2-rc0t64 libtss2-tcti-device0t64 systemd-cryptsetup cryptsetup-bin >/tmp/apt.log 2>&1 || { tail -20 /tmp/apt.log; exit 1; }
    ls /boot/initrd.img-* >/dev/null 2>&1 || update-initramfs -c -k all
    systemctl mask serial-getty@ttyS0.service getty@tty1.service getty-static.service >/dev/null 2>&1
    apt-get clean; rm -rf /var/lib/apt/lists/* /tmp/apt.log /var/log/bootstrap.log
  '
"
# agetty on ttyS0 calls vhangup(): the test units writing to /dev/ttyS0 would get EIO (masked above).
echo "# apt sources are written only while setup-node-guest.sh runs" > "$root/etc/apt/sources.list"
rm -f "$root/usr/sbin/policy-rc.d"
printf '/dev/vda2  /     ext4  rw,noatime      0 0\n/dev/vda1  /efi  vfat  ro,umask=0077   0 0\n' > "$root/etc/fstab"
mkdir -p "$root/efi"
echo bk-node > "$root/etc/hostname"
: > "$root/etc/machine-id"  # empty: not a first boot (machine-id(5)); a new id each boot
rm -f "$root/var/lib/dbus/machine-id"
echo "$stamp_want" > "$root.stamp"
echo "setup-node-guest: $(chroot "$root" systemctl --version | head -1), kernel $(ls "$root/boot" | sed -n 's/^vmlinuz-//p'), $(du -sh "$root" | cut -f1) in $root ($(( $(date +%s) - t0 )) s)"
