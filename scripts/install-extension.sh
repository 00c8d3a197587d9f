#!/usr/bin/env bash
# Build the walcast extension in release mode and install it (walcast.so,
# control and SQL files) into one PostgreSQL major.
#
#   ./scripts/install-extension.sh [MAJOR]    # 15 (default), 16, 17 or 18
#
# 15 is Debian's (/usr/lib/postgresql/15); 16-18 are the builds
# ./scripts/setup.sh unpacks (scripts/postgresql-majors.sh). PG_CONFIG
# overrides where pg_config is. The last line printed (on stdout) is the
# pg_config path of the PostgreSQL it installed into.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/postgresql-majors.sh
source scripts/postgresql-majors.sh
PG_MAJOR="${1:-${PG_MAJOR:-15}}"
if [ -z "${PG_CONFIG:-}" ] || [ -n "${1:-}" ]; then
  PG_CONFIG="$(pg_config_for "$PG_MAJOR")"
fi
if [ "$PG_MAJOR" = 15 ] && [ ! -x "$PG_CONFIG" ]; then PG_CONFIG="$(command -v pg_config)"; fi
if [ ! -x "$PG_CONFIG" ]; then
  echo "[install] no PostgreSQL ${PG_MAJOR} at ${PG_CONFIG}: run ./scripts/setup.sh first" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ] && [ ! -w "$("$PG_CONFIG" --pkglibdir)" ]; then SUDO="sudo"; fi
printf '[install] building and installing walcast into PostgreSQL %s (%s)\n' \
  "$PG_MAJOR" "$("$PG_CONFIG" --pkglibdir)" >&2
(cd extension && $SUDO env "PATH=$PATH" cargo pgrx install --release --no-default-features \
    --features "pg${PG_MAJOR}" --pg-config "$PG_CONFIG" >&2)
echo "$PG_CONFIG"
