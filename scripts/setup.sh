#!/usr/bin/env bash
# Prepare a Debian machine to build and test walcast. Idempotent: every step
# checks whether its work is already done and skips it.
# WALCAST_SETUP=build prepares only what building the extension needs (the
# PostgreSQL server headers, libclang, cargo-pgrx), as Dockerfile.postgres
# does; the default, WALCAST_SETUP=full, prepares everything the tests use.
set -euo pipefail

PG_MAJOR="${PG_MAJOR:-15}"
PGRX_VERSION="0.18.0"
WALCAST_SETUP="${WALCAST_SETUP:-full}"
log() { printf '[setup] %s\n' "$*" >&2; }

case "$WALCAST_SETUP" in
  full) pkgs=("postgresql-${PG_MAJOR}" "postgresql-server-dev-${PG_MAJOR}" libclang-dev
              "postgresql-${PG_MAJOR}-wal2json" pkg-config libssl-dev openssl chromium curl) ;;
  build) pkgs=("postgresql-server-dev-${PG_MAJOR}" libclang-dev) ;;
  *) log "WALCAST_SETUP must be 'full' or 'build', not '${WALCAST_SETUP}'"; exit 2 ;;
esac

need_pkgs=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    need_pkgs+=("$p")
  fi
done
if ((${#need_pkgs[@]})); then
  log "installing Debian packages: ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
else
  log "Debian packages present"
fi

PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config}"
[ -x "$PG_CONFIG" ] || PG_CONFIG="$(command -v pg_config)"

if cargo pgrx --version 2>/dev/null | grep -q " ${PGRX_VERSION}\$"; then
  log "cargo-pgrx ${PGRX_VERSION} present"
else
  log "installing cargo-pgrx ${PGRX_VERSION} (several minutes on a cold machine)"
  cargo install cargo-pgrx --version "${PGRX_VERSION}" --locked
fi

PGRX_HOME="${PGRX_HOME:-$HOME/.pgrx}"
if grep -qs "^pg${PG_MAJOR} *= *\"${PG_CONFIG}\"" "$PGRX_HOME/config.toml"; then
  log "pgrx already initialised for pg${PG_MAJOR}"
else
  log "cargo pgrx init --pg${PG_MAJOR}=${PG_CONFIG}"
  cargo pgrx init "--pg${PG_MAJOR}=${PG_CONFIG}"
fi

if [ "$WALCAST_SETUP" = full ]; then
  for comp in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^${comp}"; then
      log "adding rustup component ${comp}"
      rustup component add "${comp}"
    fi
  done
fi
log "done"
