#!/bin/bash
# A Debian 13 (trixie) minbase tree with systemd 257's systemd-repart and systemd-dissect, for the
# interoperability tests (bookworm's systemd-repart has no -S/--offline and refuses erofs), and
# ukify with systemd-stub and systemd-boot 257, which the node tests build their UKIs and ESP with;
# and Debian's packaging tools (debhelper, dh-python, pybuild's pyproject plugin, setuptools >= 77,
# which Debian 12 does not have) with bootkeeper's python3-* dependencies, which scripts/build-deb.sh
# builds the Debian package with (it runs the package's own install-units at build time); and the TPM
# side of systemd 257 for the measured-boot tests: the tpm2-tss libraries systemd-measure sign and
# systemd-pcrlock dlopen, systemd-cryptenroll, a software TPM (swtpm, reached through its TCTI) and
# tpm2-tools to read it back.
# Idempotent; cached in $TRIXIE_ROOT (default .cache/trixie). The mirror comes from the machine's
# own apt sources. Nothing is installed on the host except debootstrap.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=${TRIXIE_ROOT:-$here/.cache/trixie}
[ "$(id -u)" = 0 ] || { echo "setup-trixie: must run as root" >&2; exit 2; }
mirror=${DEBIAN_MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
[ -n "$mirror" ] || { echo "setup-trixie: no Debian mirror in the machine's apt sources; set DEBIAN_MIRROR" >&2; exit 2; }
pkgs="systemd systemd-repart systemd-container cryptsetup-bin erofs-utils squashfs-tools openssl systemd-ukify systemd-boot-efi"
# debian/control's Build-Depends, and build-essential, which dpkg-buildpackage requires of every build
pkgs="$pkgs build-essential debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools"
pkgs="$pkgs python3-click python3-yaml python3-rich python3-cryptography python3-asn1crypto"
pkgs="$pkgs systemd-cryptsetup libtss2-esys-3.0.2-0t64 libtss2-mu-4.0.1-0t64 libtss2-rc0t64 libtss2-tcti-device0t64"
pkgs="$pkgs libtss2-tcti-swtpm0t64 swtpm swtpm-tools tpm2-tools"
if [ -x "$root/usr/bin/systemd-dissect" ] && [ -x "$root/usr/bin/systemd-repart" ] && [ -x "$root/usr/bin/mkfs.erofs" ] && [ -x "$root/usr/sbin/veritysetup" ] \
   && [ -x "$root/usr/bin/ukify" ] && [ -f "$root/usr/lib/systemd/boot/efi/linuxx64.efi.stub" ] \
   && [ -x "$root/usr/bin/dh_python3" ] && [ -d "$root/usr/share/perl5/Debian/Debhelper" ] \
   && [ -x "$root/usr/bin/systemd-cryptenroll" ] && [ -x "$root/usr/bin/swtpm" ] \
   && chroot "$root" dpkg-query -W pybuild-plugin-pyproject python3-asn1crypto build-essential libtss2-tcti-swtpm0t64 tpm2-tools >/dev/null 2>&1; then
  exit 0
fi
command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null
if [ ! -x "$root/usr/bin/apt-get" ]; then
  rm -rf "$root"; mkdir -p "$(dirname "$root")"
  debootstrap --variant=minbase trixie "$root" "$mirror" > "$root.debootstrap.log" 2>&1 \
    || { echo "setup-trixie: debootstrap failed:" >&2; tail -5 "$root.debootstrap.log" >&2; exit 1; }
fi
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod +x "$root/usr/sbin/policy-rc.d"
unshare --mount --propagation private /bin/bash -c "
  set -e
  mount -t proc proc '$root/proc'
  chroot '$root' /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive /bin/sh -c '
    apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $pkgs >/tmp/apt.log 2>&1 \
      || { tail -20 /tmp/apt.log; exit 1; }
    apt-get clean; rm -rf /var/lib/apt/lists/*'
"
echo "setup-trixie: $(chroot "$root" systemd-repart --version | head -1) in $root"
