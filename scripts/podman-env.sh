# Podman for the image tests (sourced, not run): installs podman, buildah and
# what they run with from Debian's packages when missing, and points them at
# a private configuration, storage and build cache under WALCAST_CONTAINERS_DIR
# (default /var/lib/walcast/containers), so the machine's own container
# settings are neither used nor changed. Idempotent.
#
#   source scripts/podman-env.sh && podman_setup
#
# The settings (docs/docker.md says why each is needed on such machines):
# runc (crun refuses hybrid cgroup hierarchies), cgroupfs (no systemd),
# fixed ulimits (a process may not raise its own), netavark with
# aardvark-dns (containers find each other by name), file-based events.

WALCAST_CONTAINERS_DIR="${WALCAST_CONTAINERS_DIR:-/var/lib/walcast/containers}"

podman_setup() {
  local sudo="" need=() p
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  for p in podman buildah runc netavark aardvark-dns debootstrap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if ((${#need[@]})); then
    printf '[podman] installing Debian packages: %s\n' "${need[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
  fi
  local dir="$WALCAST_CONTAINERS_DIR"
  $sudo install -d "$dir/conf" "$dir/networks" "$dir/storage"
  $sudo tee "$dir/conf/containers.conf" >/dev/null <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
network_config_dir = "$dir/networks"
CONF
  $sudo tee "$dir/conf/storage.conf" >/dev/null <<CONF
[storage]
driver = "overlay"
graphroot = "$dir/storage"
runroot = "/run/walcast-containers"
CONF
  $sudo tee "$dir/conf/registries.conf" >/dev/null <<CONF
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
CONF
  # Build caches (`RUN --mount=type=cache`) and temporary files of builds
  # go under TMPDIR: here, beside the storage, not in /var/tmp.
  $sudo install -d "$dir/tmp"
  export TMPDIR="$dir/tmp"
  export CONTAINERS_CONF="$dir/conf/containers.conf"
  export CONTAINERS_STORAGE_CONF="$dir/conf/storage.conf"
  export CONTAINERS_REGISTRIES_CONF="$dir/conf/registries.conf"
}
