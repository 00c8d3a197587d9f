#!/usr/bin/env bash
# Run once by the postgres image's entrypoint when it initialises an empty
# data directory: allows walcast as an output plugin and creates the
# extension in POSTGRES_DB.
set -euo pipefail

q() { psql -XqAt -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password "$@"; }

# Servers with output_plugin_libraries only decode with the plugins it names.
# Add walcast, keeping the plugins already there; servers without the setting
# allow every plugin. ALTER SYSTEM takes effect when the entrypoint restarts
# the server after initialisation.
if [ "$(q --dbname postgres -c "SELECT count(*) FROM pg_settings WHERE name = 'output_plugin_libraries'")" = 1 ]; then
  current="$(q --dbname postgres -c "SHOW output_plugin_libraries")"
  IFS=',' read -ra items <<<"$current"
  libs=()
  for lib in "${items[@]}" pgoutput test_decoding walcast; do
    lib="${lib//[\" ]/}"
    [ -n "$lib" ] || continue
    [[ " ${libs[*]} " == *" ${lib} "* ]] && continue
    libs+=("$lib")
  done
  list="$(printf "'%s', " "${libs[@]//\'/\'\'}")"
  list="${list%, }"
  q --dbname postgres -c "ALTER SYSTEM SET output_plugin_libraries = ${list}"
  echo "walcast: output_plugin_libraries = ${list}"
fi

q --dbname "$POSTGRES_DB" -c "CREATE EXTENSION IF NOT EXISTS walcast"
echo "walcast: extension created in database ${POSTGRES_DB}"
