#!/bin/bash
# Create the project's virtual environment and install bootkeeper with its test tools into it.
# On a machine whose python3 lacks the venv module, install Debian's python3-venv first.
set -euo pipefail
venv=${1:-.venv}
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "venv.sh: python3 has no venv module; run as root to install python3-venv" >&2; exit 2; }
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$venv/bin/python" -m pip install -q -e '.[test]'
echo "venv.sh: $("$venv/bin/bootkeeper" --help >/dev/null && echo "bootkeeper installed in $venv")"
