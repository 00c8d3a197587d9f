#!/usr/bin/env bash
# Makes the base images Dockerfile.postgres and Dockerfile.proxy start from,
# locally, for machines that reach no container registry (only Debian's
# mirror and crates.io), and tags them with the official names so that
# `podman build --pull=never` uses them:
#
#   debian:bookworm, debian:bookworm-slim   debootstrap from Debian's mirror
#   rust:1-bookworm                         docker/base/rust.Dockerfile (the host's toolchain)
#   postgres:15-bookworm                    docker/base/postgres.Dockerfile (Debian's PostgreSQL 15)
#
# Each image carries the hash of its recipe (label walcast.recipe) and is
# made again only when the recipe changed. Needs podman_setup
# (scripts/podman-env.sh) in the environment; run by scripts/test-images.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_MAJOR="${PG_MAJOR:-15}"
MIRROR="${WALCAST_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
log() { printf '[base-images] %s\n' "$*" >&2; }

recipe_of() { cat "$@" | sha256sum | cut -c1-16; }
recipe_label() { podman image inspect --format '{{index .Labels "walcast.recipe"}}' "$1" 2>/dev/null || true; }
image_id() { podman image inspect --format '{{.Id}}' "$1"; }

# debian:bookworm and debian:bookworm-slim: a minimal Debian root, with the
# package sources of the official image (updates and security included).
debian_recipe="$(printf '%s\n' "$MIRROR" | recipe_of "$0" -)"
if [ "$(recipe_label debian:bookworm-slim)" = "$debian_recipe" ] \
   && [ "$(recipe_label debian:bookworm)" = "$debian_recipe" ]; then
  log "debian:bookworm present"
else
  log "debootstrap bookworm from ${MIRROR} (a few minutes)"
  root="$(mktemp -d /var/tmp/walcast-debian-XXXXXX)"
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase bookworm "$root" "$MIRROR" >&2
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: ${MIRROR}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  # As in the official images: apt keeps no downloaded packages, and the
  # host's name and resolver are the container engine's.
  printf 'APT::Install-Recommends "false";\n' >"$root/etc/apt/apt.conf.d/docker-no-recommends"
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
    "$root"/var/cache/apt/archives/*.deb
  : >"$root/etc/hostname"; : >"$root/etc/resolv.conf"
  tar -C "$root" -c . | podman import --change 'CMD ["bash"]' \
    --change "LABEL walcast.recipe=${debian_recipe}" - docker.io/library/debian:bookworm >/dev/null
  # The slim variant: no documentation, manual pages or translations, now or
  # for packages installed later.
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' \
    >"$root/etc/dpkg/dpkg.cfg.d/docker-slim"
  find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/*
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  tar -C "$root" -c . | podman import --change 'CMD ["bash"]' \
    --change "LABEL walcast.recipe=${debian_recipe}" - docker.io/library/debian:bookworm-slim >/dev/null
  rm -rf "$root"
  trap - EXIT
  log "debian:bookworm and debian:bookworm-slim made"
fi
debian_id="$(image_id debian:bookworm)"

# rust:1-bookworm: the host's stable toolchain.
sysroot="$(rustc +stable --print sysroot)"
release="$(rustc +stable --version | awk '{print $2}')"
toolchain="${release}-$(rustc +stable -vV | sed -n 's/^host: //p')"
rust_recipe="$(printf '%s\n' "$debian_id" "$toolchain" | recipe_of docker/base/rust.Dockerfile -)"
if [ "$(recipe_label rust:1-bookworm)" = "$rust_recipe" ]; then
  log "rust:1-bookworm present (${toolchain})"
else
  log "building rust:1-bookworm from the host's toolchain ${toolchain}"
  podman build --pull=never --format docker --label "walcast.recipe=${rust_recipe}" \
    --build-arg "RUST_TOOLCHAIN=${toolchain}" \
    -v "${sysroot}:/host/toolchain:ro" -v "$(command -v rustup):/host/rustup:ro" \
    -f docker/base/rust.Dockerfile -t docker.io/library/rust:1-bookworm docker/base >&2
fi

# postgres:<major>-bookworm: Debian's PostgreSQL of that major.
pg_recipe="$(printf '%s\n' "$debian_id" "$PG_MAJOR" \
  | recipe_of docker/base/postgres.Dockerfile docker/base/postgres-entrypoint.sh -)"
if [ "$(recipe_label "postgres:${PG_MAJOR}-bookworm")" = "$pg_recipe" ]; then
  log "postgres:${PG_MAJOR}-bookworm present"
else
  log "building postgres:${PG_MAJOR}-bookworm from Debian's postgresql-${PG_MAJOR}"
  podman build --pull=never --format docker --label "walcast.recipe=${pg_recipe}" \
    --build-arg "PG_MAJOR=${PG_MAJOR}" \
    -f docker/base/postgres.Dockerfile -t "docker.io/library/postgres:${PG_MAJOR}-bookworm" . >&2
fi
