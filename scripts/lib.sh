# Shared by the scripts in this folder; sourced, not run.

# as_root runs a command as root: directly when we are root, else through sudo.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# apt_install installs Debian packages, refreshing the package lists once if needed.
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -q "$@" >&2 ||
    { as_root apt-get update -q >&2 && as_root apt-get install -y -q "$@" >&2; }
}
