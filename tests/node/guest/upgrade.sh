#!/bin/sh
# Upgrade scenarios (run by report.sh, after bless, on the read-only /efi):
# * /efi/bktest/refuse: arguments of a `bootkeeper upgrade` the gate must refuse; every file under /efi
#   is hashed before and after it.
# * /efi/bktest/upgrade: arguments of the upgrade to run, with the environment in
#   /efi/bktest/upgrade-env (BOOTKEEPER_TEST_STEP_PAUSE: every ESP write step is announced on the
#   console, where the test cuts the power). Done once: /var/lib/bktest/upgrade-done marks a run that
#   finished (rc 0); after a power cut it is not there, so the next boot runs it again.
compact() { python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)))' 2>&1; }
say() { printf '@@@ %s\n' "$*"; }  # not echo: dash's echo expands backslashes
esp_hashes() { (cd /efi && find . -type f | LC_ALL=C sort | xargs -d '\n' sha256sum) | sha256sum | cut -d' ' -f1; }
esp_files() { (cd /efi && find . | LC_ALL=C sort | tr '\n' ' '); }
# one upgrade: LABEL ARGS...; stderr reaches the console as it comes (the pause lines), and a copy is kept
run() {
  label=$1; shift
  { bootkeeper upgrade "$@" --json; echo $? > /tmp/up.rc; } 2>&1 >/tmp/up.json | tee /tmp/up.err
  say "UPGRADE_RC $label $(cat /tmp/up.rc)"
  say "UPGRADE_JSON $label $(compact < /tmp/up.json)"
  say "UPGRADE_ERR $label $(tr '\n' '|' < /tmp/up.err)"
  say "EFI_MOUNT_AFTER $label $(findmnt -no OPTIONS /efi)"
}
if [ -s /efi/bktest/refuse ]; then
  say "ESP_HASH before $(esp_hashes)"
  say "ESP_FILES before $(esp_files)"
  # shellcheck disable=SC2046  # the arguments, split on blanks
  run refuse $(cat /efi/bktest/refuse)
  say "ESP_HASH after $(esp_hashes)"
  say "ESP_FILES after $(esp_files)"
fi
if [ -s /efi/bktest/upgrade ] && [ ! -e /var/lib/bktest/upgrade-done ]; then
  env=$(cat /efi/bktest/upgrade-env 2>/dev/null)
  say "LINUX_BEFORE $(ls /efi/EFI/Linux | tr '\n' ' ')"
  # shellcheck disable=SC2086  # NAME=VALUE words
  [ -z "$env" ] || export $env
  # shellcheck disable=SC2046
  run upgrade $(cat /efi/bktest/upgrade)
  unset BOOTKEEPER_TEST_STEP_PAUSE
  if [ "$(cat /tmp/up.rc)" = 0 ]; then touch /var/lib/bktest/upgrade-done; sync; fi
  say "LINUX_AFTER $(ls -a /efi/EFI/Linux /efi/EFI/Linux/*.extra.d 2>&1 | tr '\n' ' ')"
fi
exit 0
