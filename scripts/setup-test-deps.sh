#!/bin/bash
# Install what the test suite needs on a fresh Debian 12 machine (as root), and fetch the pieces the
# VM tests boot: a Debian kernel, systemd-boot 252 (bookworm), 257 (trixie) and 262 (sid) EFI binaries, and a
# busybox initramfs; and swtpm, the software TPM the measured-boot node scenarios boot with
# (tests/node/test_node_tpm.py; QEMU's -tpmdev emulator talks to it). Idempotent; downloads are cached in
# $VM_CACHE (default .cache/vm).
#
# Nothing here installs systemd-boot or a kernel on the machine: the .debs are fetched with
# `apt-get download` and unpacked with `dpkg-deb -x` (installing bookworm's systemd-boot-efi could
# pull a systemd upgrade). The Debian mirror is taken from the machine's own apt sources.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${VM_CACHE:-$here/.cache/vm}
mkdir -p "$cache"
[ "$(id -u)" = 0 ] || { echo "setup-test-deps: must run as root (apt-get, QEMU, mount namespaces)" >&2; exit 2; }
export DEBIAN_FRONTEND=noninteractive

need=()
for p in qemu-system-x86 ovmf mtools dosfstools fdisk e2fsprogs debootstrap busybox-static cpio util-linux mount binutils cryptsetup-bin erofs-utils squashfs-tools openssl systemd strace swtpm swtpm-tools; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
for p in prometheus prometheus-node-exporter; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p"); done  # promtool and the real engines of tests/cli/test_fleet_prometheus.py
for p in docker-registry skopeo sbsigntool apache2-utils; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p"); done  # the OCI registry (and htpasswd, for its basic-auth variant) and skopeo of tests/update/, sbsign/sbverify of the UKI signature checks (docs/updates.md)
for p in man-db groff-base; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p"); done  # man -l and groff -ww render the man pages (tests/project/test_manpages.py)
if [ ${#need[@]} -gt 0 ] || [ ! -f "$cache/.apt-updated" ]; then
  apt-get update -q >/dev/null
  touch "$cache/.apt-updated"
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup-test-deps: installing ${need[*]}"
  apt-get install -y -q --no-install-recommends "${need[@]}" >"$cache/apt-install.log" 2>&1 \
    || { tail -20 "$cache/apt-install.log" >&2; exit 1; }
fi

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
fi
if [ -z "$mirror" ]; then
  mirror=$(awk '$1=="deb"{for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
fi

extract_deb() { # DEB DEST
  local x; x=$(mktemp -d); dpkg-deb -x "$1" "$x"; mkdir -p "$2"; echo "$x"
}

# --- kernel (bookworm's current) -----------------------------------------------------------
if [ ! -s "$cache/kernel/vmlinuz" ] || [ ! -s "$cache/kernel/efivarfs.ko" ]; then
  pkg=$(apt-cache show linux-image-amd64 2>/dev/null | sed -n 's/^Depends: \(linux-image-[^ ,]*\).*/\1/p' | head -1)
  [ -n "$pkg" ] || { echo "setup-test-deps: cannot resolve linux-image-amd64" >&2; exit 1; }
  w=$(mktemp -d); (cd "$w" && apt-get download -q "$pkg" >/dev/null 2>&1) \
    || { echo "setup-test-deps: apt-get download $pkg failed" >&2; exit 1; }
  mkdir -p "$w/x" "$cache/kernel"
  dpkg-deb --fsys-tarfile "$w"/*.deb | tar -x -C "$w/x" --wildcards './boot/vmlinuz-*' '*/efivarfs.ko*'
  cp "$w"/x/boot/vmlinuz-* "$cache/kernel/vmlinuz"
  ko=$(find "$w/x" -name 'efivarfs.ko*' | head -1)
  case "$ko" in
    *.xz) xz -dc "$ko" > "$cache/kernel/efivarfs.ko" ;;
    *.zst) zstd -dc "$ko" > "$cache/kernel/efivarfs.ko" ;;
    *) cp "$ko" "$cache/kernel/efivarfs.ko" ;;
  esac
  echo "$pkg" > "$cache/kernel/version"; rm -rf "$w"
fi

# --- systemd-boot 252 (bookworm, the machine's own sources) --------------------------------
if [ ! -s "$cache/sdboot-252/systemd-bootx64.efi" ] || [ ! -s "$cache/sdboot-252/linuxx64.efi.stub" ]; then
  w=$(mktemp -d); (cd "$w" && apt-get download -q systemd-boot-efi >/dev/null 2>&1) \
    || { echo "setup-test-deps: apt-get download systemd-boot-efi (bookworm) failed" >&2; exit 1; }
  x=$(extract_deb "$w"/*.deb "$cache/sdboot-252")
  cp "$x/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$x/usr/lib/systemd/boot/efi/linuxx64.efi.stub" \
    "$cache/sdboot-252/"
  dpkg-deb -f "$w"/*.deb Version > "$cache/sdboot-252/version"; rm -rf "$w" "$x"
fi

# --- systemd-boot from a newer Debian suite: a private apt configuration (its own sources and
# lists, the mirror from the machine's own sources), apt-get download, dpkg-deb -x; never installed.
fetch_sdboot() { # SUITE DEST FILE... (files of /usr/lib/systemd/boot/efi/)
  local suite=$1 dest=$2; shift 2
  [ -n "$mirror" ] || { echo "setup-test-deps: no Debian mirror in the machine's apt sources; set DEBIAN_MIRROR" >&2; exit 1; }
  local a="$cache/apt-$suite"; mkdir -p "$a/lists/partial" "$a/etc" "$a/archives/partial"
  printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$mirror" "$suite" > "$a/etc/$suite.sources"
  local O=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$a/etc" -o Dir::State::Lists="$a/lists"
     -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o Dir::Cache::archives="$a/archives")
  apt-get "${O[@]}" update -q >/dev/null
  local w x f; w=$(mktemp -d); (cd "$w" && apt-get "${O[@]}" download -q systemd-boot-efi >/dev/null 2>&1) \
    || { echo "setup-test-deps: apt-get download systemd-boot-efi ($suite) failed" >&2; exit 1; }
  x=$(extract_deb "$w"/*.deb "$dest")
  for f in "$@"; do cp "$x/usr/lib/systemd/boot/efi/$f" "$dest/"; done
  dpkg-deb -f "$w"/*.deb Version > "$dest/version"; rm -rf "$w" "$x" "$a/lists"
}

# 257 (trixie), and its systemd-stub: it honours the "@N" profile systemd-boot passes for a multi-profile UKI
if [ ! -s "$cache/sdboot-257/systemd-bootx64.efi" ] || [ ! -s "$cache/sdboot-257/linuxx64.efi.stub" ]; then
  fetch_sdboot trixie "$cache/sdboot-257" systemd-bootx64.efi linuxx64.efi.stub
fi
# 262 (sid)
if [ ! -s "$cache/sdboot-262/systemd-bootx64.efi" ]; then
  fetch_sdboot sid "$cache/sdboot-262" systemd-bootx64.efi
fi

# --- bookworm's own bootctl and systemd-bless-boot, for bench/ (same version as the host's
# libsystemd-shared, unpacked, not installed) ------------------------------------------------
if [ ! -x "$cache/host-tools/bootctl" ]; then
  v=$(dpkg-query -W -f='${Version}' libsystemd-shared)
  w=$(mktemp -d)
  if (cd "$w" && apt-get download -q "systemd-boot=$v" >/dev/null 2>&1); then
    x=$(extract_deb "$w"/*.deb "$cache/host-tools")
    cp "$x/usr/bin/bootctl" "$x/lib/systemd/systemd-bless-boot" "$cache/host-tools/"
    rm -rf "$x"
  else
    echo "setup-test-deps: systemd-boot=$v is no longer served; bench/ will compare with python3 only" >&2
  fi
  rm -rf "$w"
fi

# --- busybox initramfs: prints the command line and the Loader* variables, powers off -------
if [ ! -s "$cache/initrd.img" ] || [ "$here/scripts/setup-test-deps.sh" -nt "$cache/initrd.img" ]; then
  w=$(mktemp -d); mkdir -p "$w"/{bin,proc,sys,dev,lib}
  cp /bin/busybox "$w/bin/busybox"; cp "$cache/kernel/efivarfs.ko" "$w/lib/efivarfs.ko"
  cat > "$w/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "@@@ CMDLINE $(cat /proc/cmdline)"
insmod /lib/efivarfs.ko 2>/dev/null
mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
for v in LoaderEntrySelected LoaderBootCountPath LoaderInfo LoaderEntryOneShot LoaderEntryPreferred; do
  f=/sys/firmware/efi/efivars/$v-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
  if [ -e "$f" ]; then echo "@@@ EFIVAR $v=$(tail -c +5 "$f" | tr -d '\000')"; else echo "@@@ EFIVAR $v="; fi
done
# Variables a test asks to be set for the next boot: efivarfs files (4 attribute bytes, then the
# data) exactly as bootkeeper wrote them on the host, carried in an extra cpio after this one.
for f in /efivars-set/*; do
  [ -f "$f" ] || continue
  if cat "$f" > "/sys/firmware/efi/efivars/${f##*/}"; then echo "@@@ SETVAR ${f##*/}"; else echo "@@@ SETVAR-FAILED ${f##*/}"; fi
done
echo "@@@ DONE"
poweroff -f
INIT
  chmod +x "$w/init"
  (cd "$w" && find . | cpio -o -H newc --quiet | gzip -9) > "$cache/initrd.img"; rm -rf "$w"
fi

bash "$here/scripts/setup-trixie.sh"
bash "$here/scripts/setup-node-guest.sh"

echo "setup-test-deps: qemu $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), kernel $(cat "$cache/kernel/version"), systemd-boot $(cat "$cache/sdboot-252/version"), $(cat "$cache/sdboot-257/version") and $(cat "$cache/sdboot-262/version") in $cache"
