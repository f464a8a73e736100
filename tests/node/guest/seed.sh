#!/bin/sh
# node test rig: the boot loader's random seed as systemd-boot left it, before bootkeeper-random-seed.service
# (or systemd-boot-random-seed.service) refreshes it; report.sh prints it next to what the OS left.
mkdir -p /run/bktest
{ sha256sum /efi/loader/random-seed 2>/dev/null || echo none; } | cut -d' ' -f1 > /run/bktest/seed-before
