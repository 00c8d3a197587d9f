#!/usr/bin/env bash
# Build the walcast extension in release mode and install it (walcast.so,
# control and SQL files) into the PostgreSQL that pg_config names.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_MAJOR="${PG_MAJOR:-15}"
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config}"
[ -x "$PG_CONFIG" ] || PG_CONFIG="$(command -v pg_config)"
SUDO=""
if [ "$(id -u)" -ne 0 ] && [ ! -w "$("$PG_CONFIG" --pkglibdir)" ]; then SUDO="sudo"; fi
printf '[install] building and installing walcast into %s\n' "$("$PG_CONFIG" --pkglibdir)" >&2
(cd extension && $SUDO env "PATH=$PATH" cargo pgrx install --release --no-default-features \
    --features "pg${PG_MAJOR}" --pg-config "$PG_CONFIG")
