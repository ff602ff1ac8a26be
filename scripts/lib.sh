# Shared by the scripts in this folder; sourced, not run.

# as_root runs a command as root: directly when we are root, else through sudo.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# apt_install installs Debian packages, refreshing the package lists once if needed.
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -q "$@" >&2 ||
    { as_root apt-get update -q >&2 && as_root apt-get install -y -q "$@" >&2; }
}

# use_devdb starts the development database and exports DATABASE_URL and the rest of
# scripts/devdb.sh's settings. When devdb fails, its own message is the last word: the
# caller stops here instead of tripping over a variable that was never set.
use_devdb() {
  local env
  env=$(scripts/devdb.sh) || exit 1
  eval "$env"
}

# use_testdb is use_devdb on a cluster of the tests' own (.pgdata-test/, port 15433 or
# TASKFLOW_TEST_PG_PORT): tests stop and start theirs, which must not be the one a
# make run beside them is using.
use_testdb() {
  TASKFLOW_PGDATA=$PWD/.pgdata-test TASKFLOW_PG_PORT=${TASKFLOW_TEST_PG_PORT:-15433} \
    TASKFLOW_PORT_SETTING=TASKFLOW_TEST_PG_PORT use_devdb
}

# port_free fails with "$2" when something listens on 127.0.0.1:$1.
port_free() {
  if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "$2" >&2
    return 1
  fi
}
