#!/usr/bin/env bash
# Prepare a Debian machine to build and test walcast. Idempotent: every step
# checks whether its work is already done and skips it.
# WALCAST_SETUP=build prepares only what building the extension needs (the
# PostgreSQL server headers, libclang, cargo-pgrx), as Dockerfile.postgres
# does; the default, WALCAST_SETUP=full, prepares everything the tests use.
set -euo pipefail

PG_MAJOR="${PG_MAJOR:-15}"
PGRX_VERSION="0.18.0"
CARGO_FUZZ_VERSION="0.13.2"
WALCAST_SETUP="${WALCAST_SETUP:-full}"
log() { printf '[setup] %s\n' "$*" >&2; }

case "$WALCAST_SETUP" in
  full) pkgs=("postgresql-${PG_MAJOR}" "postgresql-server-dev-${PG_MAJOR}" libclang-dev
              "postgresql-${PG_MAJOR}-wal2json" pkg-config libssl-dev openssl chromium curl
              nats-server) ;;
  build) pkgs=("postgresql-server-dev-${PG_MAJOR}" libclang-dev) ;;
  *) log "WALCAST_SETUP must be 'full' or 'build', not '${WALCAST_SETUP}'"; exit 2 ;;
esac

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
need_pkgs=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    need_pkgs+=("$p")
  fi
done
if ((${#need_pkgs[@]})); then
  log "installing Debian packages: ${need_pkgs[*]}"
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

# PostgreSQL 16, 17 and 18 (the full setup builds and tests on every major).
# shellcheck source=scripts/postgresql-majors.sh
source "$(dirname "$0")/postgresql-majors.sh"
majors=("${PG_MAJOR}")
if [ "$WALCAST_SETUP" = full ]; then
  majors=("${WALCAST_PG_MAJORS[@]}")
  if ! python3 -m pip --version >/dev/null 2>&1; then
    log "installing python3-pip (to download the PostgreSQL 16-18 builds)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-pip
  fi
  for m in "${WALCAST_PG_MAJORS[@]}"; do
    [ "$m" = 15 ] && continue
    if [ -x "/usr/lib/postgresql/${m}/bin/pg_config" ]; then
      log "PostgreSQL ${m} present in /usr/lib/postgresql/${m}"
    elif pg_major_installed "$m"; then
      log "PostgreSQL ${m} present in ${WALCAST_PG_PREFIX}/postgresql-${m}"
    else
      log "installing PostgreSQL ${m} into ${WALCAST_PG_PREFIX}/postgresql-${m}"
      install_pg_major "$m"
    fi
  done
fi

PGRX_HOME="${PGRX_HOME:-$HOME/.pgrx}"
init_args=()
missing=0
for m in "${majors[@]}"; do
  if [ "$m" = "$PG_MAJOR" ]; then cfg="$PG_CONFIG"; else cfg="$(pg_config_for "$m")"; fi
  init_args+=("--pg${m}=${cfg}")
  grep -qs "^pg${m} *= *\"${cfg}\"" "$PGRX_HOME/config.toml" || missing=1
done
if [ "$missing" = 0 ]; then
  log "pgrx already initialised for pg${majors[*]}"
else
  log "cargo pgrx init ${init_args[*]}"
  cargo pgrx init "${init_args[@]}"
fi

if [ "$WALCAST_SETUP" = full ]; then
  # Fuzzing (scripts/fuzz.sh): the nightly toolchain and cargo-fuzz.
  if cargo +nightly --version >/dev/null 2>&1; then
    log "nightly toolchain present"
  else
    log "installing the nightly toolchain (for cargo-fuzz)"
    rustup toolchain install nightly --profile minimal
  fi
  if cargo +nightly fuzz --version 2>/dev/null | grep -q " ${CARGO_FUZZ_VERSION}\$"; then
    log "cargo-fuzz ${CARGO_FUZZ_VERSION} present"
  else
    log "installing cargo-fuzz ${CARGO_FUZZ_VERSION}"
    cargo install cargo-fuzz --version "${CARGO_FUZZ_VERSION}" --locked
  fi
  # The TypeScript client (clients/js): Node.js and its locked dev
  # dependencies (the TypeScript compiler), from the npm registry.
  if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    log "Node.js $(node --version) present"
  else
    log "installing Node.js and npm"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
  fi
  js_dir="$(cd "$(dirname "$0")/.." && pwd)/clients/js"
  js_stamp="$js_dir/node_modules/.walcast-lock"
  if [ -x "$js_dir/node_modules/.bin/tsc" ] && cmp -s "$js_dir/package-lock.json" "$js_stamp"; then
    log "clients/js dependencies present"
  else
    log "npm ci in clients/js"
    (cd "$js_dir" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$js_dir/package-lock.json" "$js_stamp"
  fi
  for comp in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^${comp}"; then
      log "adding rustup component ${comp}"
      rustup component add "${comp}"
    fi
  done
fi
log "done"
