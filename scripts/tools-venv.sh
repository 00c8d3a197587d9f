#!/usr/bin/env bash
# Prepares the Python virtualenv the checks and examples use (default
# target/tools/venv, or WALCAST_TOOLS_VENV) and installs the pinned
# requirements given as arguments (`name==version`, or `-r file`) that are
# missing or at another version. Idempotent; prints the virtualenv's path.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${WALCAST_TOOLS_VENV:-target/tools/venv}"
log() { printf '[venv] %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  # Debian's python3 creates virtualenvs only with python3-venv installed.
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    log "installing Debian package python3-venv"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv
  fi
  log "creating virtualenv $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
fi

reqs=()
while [ $# -gt 0 ]; do
  if [ "$1" = -r ]; then
    while IFS= read -r line; do
      line="${line%%#*}"; line="${line//[[:space:]]/}"
      [ -n "$line" ] && reqs+=("$line")
    done <"$2"
    shift 2
  else
    reqs+=("$1"); shift
  fi
done
if [ ${#reqs[@]} -gt 0 ] && ! "$VENV/bin/python" - "${reqs[@]}" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
for req in sys.argv[1:]:
    name, _, pinned = req.partition("==")
    if version(name) != pinned:
        sys.exit(1)
PY
then
  log "installing ${reqs[*]} into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${reqs[@]}"
fi
printf '%s\n' "$VENV"
