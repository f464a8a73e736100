#!/bin/sh
# Measured boot (run by report.sh when the machine has a TPM, tests/test_node_tpm.py): print on the
# console what the host compares with `bootkeeper tpm predict` over the ESP read back from the disk:
# * TPM_EVLOG: the firmware's TCG2 event log (binary_bios_measurements), base64, in lines;
# * PCR BANK N HEX: PCRs 0..15 of every bank the kernel shows, read from the TPM (sysfs);
# * TPM_EFIVAR NAME BASE64: the variables systemd-boot and the stub leave (4 attribute bytes, then data);
# * TPM_USERLOG: /run/log/systemd/tpm2-measure.log, one JSON record a line (what systemd-pcrextend
#   measured: the PCR 11 phase words that ran);
# * UNIT lines of the phase units; TPM_VERIFY: `bootkeeper tpm verify --json` and its exit code
#   (again with /efi/bktest/tpm-expect.json as --expect when it is there).
# /efi/bktest/tpm-swap (a path under /efi) and /efi/bktest/tpm-swap.raw: after that, replace the file
# with tpm-swap.raw on the running node (the ESP changed after the boot) and verify once more.
compact() { python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)))' 2>&1; }
say() { printf '@@@ %s\n' "$*"; }  # not echo: dash's echo expands backslashes
say "TPM_PRESENT $(cat /sys/class/tpm/tpm0/tpm_version_major 2>/dev/null)"
base64 -w 76 /sys/kernel/security/tpm0/binary_bios_measurements | sed 's/^/@@@ TPM_EVLOG /'
say "TPM_EVLOG_END $(sha256sum /sys/kernel/security/tpm0/binary_bios_measurements | cut -d' ' -f1)"
for bank in /sys/class/tpm/tpm0/pcr-*; do
  [ -d "$bank" ] || continue
  for n in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do
    say "PCR ${bank##*/pcr-} $n $(cat "$bank/$n")"
  done
done
for f in /sys/firmware/efi/efivars/*-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f; do
  v=${f##*/}; v=${v%%-*}
  case "$v" in Loader*|Stub*) say "TPM_EFIVAR $v $(cat "$f" | base64 -w 0)" ;; esac
done
if [ -e /run/log/systemd/tpm2-measure.log ]; then
  tr '\036' '\n' < /run/log/systemd/tpm2-measure.log | sed '/^$/d; s/^/@@@ TPM_USERLOG /'
fi
for u in systemd-pcrphase-initrd.service systemd-pcrphase-sysinit.service systemd-pcrphase.service \
    systemd-tpm2-setup.service tpm2.target; do
  say "UNIT $u $(systemctl show -p ActiveState -p Result -p ConditionResult -p LoadState "$u" | tr '\n' ' ')"
done
verify() { # LABEL ARGS...
  label=$1; shift
  bootkeeper tpm verify --json "$@" >/tmp/tpmv.json 2>/tmp/tpmv.err
  say "TPM_VERIFY_RC $label $?"
  say "TPM_VERIFY_JSON $label $(compact < /tmp/tpmv.json)"
  say "TPM_VERIFY_ERR $label $(tr '\n' '|' < /tmp/tpmv.err)"
}
if bootkeeper tpm verify --help >/dev/null 2>&1; then
  verify live
  if [ -e /efi/bktest/tpm-expect.json ]; then verify expect --expect /efi/bktest/tpm-expect.json; fi
  if [ -s /efi/bktest/tpm-swap ] && [ -e /efi/bktest/tpm-swap.raw ]; then
    target=/efi/$(cat /efi/bktest/tpm-swap)
    mount -o remount,rw /efi
    cp /efi/bktest/tpm-swap.raw "$target.tmp" && mv "$target.tmp" "$target"
    sync
    mount -o remount,ro /efi
    say "TPM_SWAPPED $target $(sha256sum "$target" | cut -d' ' -f1)"
    verify swapped
  fi
else
  say "TPM_VERIFY_RC live none (no bootkeeper tpm verify in this package)"
fi
say "TPM_DONE"
