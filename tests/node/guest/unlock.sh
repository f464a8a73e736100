#!/bin/sh
# Disk unlock by the TPM (run by report.sh when the disk has a partition labelled bkdata,
# tests/test_node_unlock.py): the LUKS2 volume "bkdata" of /etc/crypttab (tpm2-device=auto, noauto:
# no other scenario's disk has it) is opened here, after sysinit and ready are measured into PCR 11,
# with the signed PCR 11 policy the booted UKI's .pcrsig carried (the stub's
# /.extra/tpm2-pcr-signature.json, kept by the initramfs hook) put where systemd-cryptsetup looks for
# it after switch-root. Prints:
# * UNLOCK_SIG: the signature file's sha256 (or "none"); UNLOCK_RC: systemctl start's exit code and
#   how long it took; UNLOCK_UNIT: the unit's state; UNLOCK_LOG: its journal; UNLOCK_OPEN yes|no;
# * UNLOCK_DATA: the first bytes of the opened volume: "bktest-data BOOT_ID" written by the first boot
#   that opened it (UNLOCK_WROTE), read back by the later ones.
# Then /efi/bktest/unlock-upgrade, lines "LABEL ARGS...": each a `bootkeeper upgrade ARGS --json`,
# reported as upgrade.sh reports its runs (UPGRADE_RC/JSON/ERR LABEL ...), with every file under /efi
# hashed before and after each (UNLOCK_ESP_HASH LABEL-before|LABEL-after).
compact() { python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)))' 2>&1; }
say() { printf '@@@ %s\n' "$*"; }  # not echo: dash's echo expands backslashes
esp_hashes() { (cd /efi && find . -type f | LC_ALL=C sort | xargs -d '\n' sha256sum) | sha256sum | cut -d' ' -f1; }
unit=systemd-cryptsetup@bkdata.service
sig=/run/initrd-extra/tpm2-pcr-signature.json
if [ -f "$sig" ]; then
  mkdir -p /run/systemd
  cat "$sig" > /run/systemd/tpm2-pcr-signature.json
  say "UNLOCK_SIG $(sha256sum "$sig" | cut -d' ' -f1)"
else
  say "UNLOCK_SIG none"
fi
t0=$(date +%s%N)
systemctl start "$unit"
rc=$?
t1=$(date +%s%N)
say "UNLOCK_RC $rc $(( (t1 - t0) / 1000000 ))ms"
say "UNLOCK_UNIT $(systemctl show -p ActiveState -p Result -p LoadState "$unit" | tr '\n' ' ')"
journalctl -b -o cat --no-pager -u "$unit" | sed 's/^/@@@ UNLOCK_LOG /'
head64() { dd if=/dev/mapper/bkdata bs=64 count=1 status=none | tr -c 'a-z0-9 -' '?'; }
if [ -b /dev/mapper/bkdata ]; then
  say "UNLOCK_OPEN yes"
  case "$(head64)" in
    "bktest-data "*) ;;
    *)
      printf 'bktest-data %-52s' "$(cat /proc/sys/kernel/random/boot_id)" | dd of=/dev/mapper/bkdata conv=notrunc,fsync status=none
      say "UNLOCK_WROTE $(cat /proc/sys/kernel/random/boot_id)"
      ;;
  esac
  say "UNLOCK_DATA $(head64)"
else
  say "UNLOCK_OPEN no"
fi
if [ -s /efi/bktest/unlock-upgrade ]; then
  while read -r label args; do
    [ -n "$label" ] || continue
    say "UNLOCK_ESP_HASH $label-before $(esp_hashes)"
    # shellcheck disable=SC2086  # the arguments, split on blanks
    bootkeeper upgrade $args --json >/tmp/up.json 2>/tmp/up.err </dev/null
    rc=$?
    say "UNLOCK_ESP_HASH $label-after $(esp_hashes)"
    say "UPGRADE_RC $label $rc"
    say "UPGRADE_JSON $label $(compact < /tmp/up.json)"
    say "UPGRADE_ERR $label $(tr '\n' '|' < /tmp/up.err)"
  done < /efi/bktest/unlock-upgrade
  say "LINUX_AFTER $(ls /efi/EFI/Linux | tr '\n' ' ')"
fi
say "UNLOCK_DONE"
