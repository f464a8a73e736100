#!/bin/bash
# Build bootkeeper's Debian package with Debian's own tooling (dpkg-buildpackage, debhelper, pybuild)
# inside the trixie tree of scripts/setup-trixie.sh: Debian 12's python3-setuptools (66) cannot build
# pyproject.toml (PEP 639 licence string, setuptools >= 77). Writes OUT/bootkeeper_VERSION_all.deb
# (default build/deb). Run as root (chroot); the tree must exist: `make deb` makes it first.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=${TRIXIE_ROOT:-$here/.cache/trixie}
out=$(mkdir -p "${1:-$here/build/deb}" && cd "${1:-$here/build/deb}" && pwd)
[ "$(id -u)" = 0 ] || { echo "build-deb: must run as root (chroot into $root)" >&2; exit 2; }
[ -x "$root/usr/bin/dh_python3" ] || { echo "build-deb: $root has no dh_python3: run scripts/setup-trixie.sh" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# What the package is built from: nothing of this machine's .venv, caches or build folders.
mkdir "$work/bootkeeper"
tar -C "$here" --exclude=__pycache__ --exclude='*.egg-info' -cf - src pyproject.toml README.md LICENSE debian man \
  | tar -C "$work/bootkeeper" -xf -
# Mounted at /build, which no shipped file may name (tests/node/test_deb.py checks).
unshare --mount --propagation private /bin/bash -c '
  set -e
  R=$1
  mount --bind "$R" "$R"
  mount -t proc proc "$R/proc"
  mount --rbind /dev "$R/dev"
  mkdir -p "$R/build"
  mount --bind "$2" "$R/build"
  exec chroot "$R" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    SOURCE_DATE_EPOCH="$3" /bin/sh -c "cd /build/bootkeeper && dpkg-buildpackage -b -us -uc" 
' build-deb "$root" "$work" "$(date -d "$(sed -n 's/^ -- .*>  //p' "$here/debian/changelog" | head -1)" +%s)" \
  > "$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; echo "build-deb: dpkg-buildpackage failed" >&2; exit 1; }
deb=$(ls "$work"/bootkeeper_*_all.deb)
cp "$deb" "$out/"
echo "$out/${deb##*/}"
