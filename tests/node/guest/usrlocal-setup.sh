#!/bin/sh
# tests/test_node_usrlocal.py: /var/lib/bktest/usrlocal (on the root file system, kept across boots)
# bind-mounted on /usr/local, seeded once from the image's /usr/local (the rig lives there) with a
# marker; /var/lib/bktest/anchors bind-mounted on /usr/share/pki/trust/anchors.
set -e
P=/var/lib/bktest/usrlocal
if [ ! -d "$P" ]; then
  rm -rf "$P.new"
  mkdir -p "$P.new"
  cp -a /usr/local/. "$P.new/"
  echo "persistent marker" > "$P.new/bktest-marker"
  mv "$P.new" "$P"
fi
A=/var/lib/bktest/anchors
mkdir -p "$A" /usr/share/pki/trust/anchors
echo "bktest anchor" > "$A/bktest.pem"
mount --bind "$P" /usr/local
mount --bind "$A" /usr/share/pki/trust/anchors
