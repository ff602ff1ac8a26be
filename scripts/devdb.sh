#!/usr/bin/env bash
# Starts a local PostgreSQL for development and tests, installing Debian's postgresql
# package first when its binaries are missing, and prints the shell lines that point the
# service and its tests at it:
#
#   db=$(scripts/devdb.sh) && eval "$db"   # start (or reuse) and export DATABASE_URL & co.
#   scripts/devdb.sh stop                  # stop it
#
# Idempotent: a second run reuses the cluster the first one made. Data lives in .pgdata/
# (git-ignored). Works as root (initdb refuses root, so the cluster belongs to the
# postgres user) and as a normal user (sudo is used only for apt-get). Progress and
# errors go to stderr; stdout carries only the export lines.
#
# The port, TASKFLOW_PG_PORT (default 15432), sits below Linux's ephemeral range
# (32768-60999): a server dialing a stopped PostgreSQL on an ephemeral port can connect
# to itself there and keep PostgreSQL from starting again. Without TASKFLOW_PG_PORT, a
# running cluster keeps the port it has: a make test beside a make run started with
# another port must not move the database from under it.
set -euo pipefail
cd "$(dirname "$0")/.."

port=${TASKFLOW_PG_PORT:-}
data=${TASKFLOW_PGDATA:-$PWD/.pgdata}

. scripts/lib.sh
say() { echo "devdb: $*" >&2; }
die() { say "$*"; exit 1; }
bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

bin=$(bindir)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  say "PostgreSQL is not installed; installing Debian's postgresql package (apt-get)"
  apt_install postgresql || die "apt-get could not install postgresql"
  bin=$(bindir)
  [ -x "$bin/initdb" ] || die "apt-get did not provide initdb"
fi

# As root, every server command runs as the postgres user, which must be able to reach
# the data directory; a checkout under a private home directory is not reachable, so the
# data goes to a per-checkout directory under /var/tmp instead.
owner=
if [ "$(id -u)" = 0 ]; then
  owner=postgres
  mkdir -p "$(dirname "$data")"
  if ! (cd / && runuser -u postgres -- test -x "$(dirname "$data")") 2>/dev/null; then
    unreachable=$(dirname "$data")
    data=/var/tmp/taskflow-pgdata-$(printf %s "$data" | cksum | cut -d' ' -f1)
    say "the postgres user cannot reach $unreachable; using $data"
  fi
fi
# From /, so that the postgres user is not asked to enter a directory it cannot read.
pg() { if [ -n "$owner" ]; then (cd / && runuser -u "$owner" -- "$@"); else "$@"; fi; }
running() { [ -f "$data/PG_VERSION" ] && pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; }
# The port a running cluster listens on: the fourth line of its postmaster.pid.
running_port() { sed -n 4p "$data/postmaster.pid" 2>/dev/null; }

# One bootstrap at a time: make run and make test may start together.
exec 9>"$PWD/.pgdata.lock"
flock 9

if [ "${1:-}" = stop ]; then
  if running; then pg "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null; fi
  exit 0
fi

if [ ! -f "$data/PG_VERSION" ]; then
  say "creating a PostgreSQL cluster in $data"
  rm -rf "$data" # a half-made directory from a killed initdb
  mkdir -p "$data"
  [ -n "$owner" ] && chown "$owner": "$data"
  chmod 700 "$data"
  pg "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  # Loopback only, with its own socket directory so that it never collides with a system
  # cluster. The port is given at every start instead (-p), so TASKFLOW_PG_PORT works on
  # an existing cluster. max_connections leaves room for tests that each open a pool.
  pg tee -a "$data/postgresql.conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$data'
max_connections = 300
shared_buffers = 128MB
CONF
fi

if running && [ -z "$port" ]; then
  port=$(running_port)
elif running && [ "$(running_port)" != "$port" ]; then
  say "the cluster runs on port $(running_port); restarting it on $port (TASKFLOW_PG_PORT)"
  pg "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
fi
port=${port:-15432}

started=0
if ! running; then
  port_free "$port" "devdb: port $port is taken by another program; pick a free port below 32768 with ${TASKFLOW_PORT_SETTING:-TASKFLOW_PG_PORT}=..." || exit 1
  # A run killed with SIGKILL leaves its lock files; if the PID they name is gone or now
  # belongs to some other program, PostgreSQL would refuse to start, so drop them.
  if [ -f "$data/postmaster.pid" ]; then
    pid=$(head -n 1 "$data/postmaster.pid")
    if ! [ -r "/proc/$pid/comm" ] || ! grep -qx 'postgres' "/proc/$pid/comm"; then
      say "removing the stale lock of a server that is gone (pid $pid)"
      rm -f "$data/postmaster.pid" "$data"/.s.PGSQL.*.lock
    fi
  fi
  say "starting PostgreSQL on 127.0.0.1:$port"
  # 9>&- : the server must not inherit the bootstrap lock, or it would hold it forever.
  if ! pg "$bin/pg_ctl" -D "$data" -o "-p $port" -l "$data/server.log" -w -t 60 start >/dev/null 9>&-; then
    say "PostgreSQL did not start; the end of $data/server.log says:"
    tail -n 20 "$data/server.log" >&2
    exit 1
  fi
  started=1
fi

for db in taskflow taskflow_test; do
  if ! "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db"
  fi
done

url=postgres://postgres@127.0.0.1:$port
cat <<ENV
export DATABASE_URL='$url/taskflow?sslmode=disable'
export TEST_DATABASE_URL='$url/taskflow_test?sslmode=disable'
export TASKFLOW_PGBIN='$bin'
export TASKFLOW_PGDATA='$data'
export TASKFLOW_PGOWNER='$owner'
export TASKFLOW_PG_PORT='$port'
export TASKFLOW_PG_STARTED=$started
ENV
