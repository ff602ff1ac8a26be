#!/usr/bin/env bash
# make bench: the comparison harness (load/compare/compare.sh) on this tree's build: the
# ceiling (pgbench), the Node peer, and the service, in one run, with wrk. Installs what it
# needs when missing (wrk, Python, PostgreSQL 15, Node.js for the peer). Its knobs are the
# harness's (load/compare/compare.sh): CONCURRENCY ("1 16 64" here), DURATION, WARMUP,
# OPS, LOG (1 here), NODE_PEER, DB_LATENCY, STREAMS, CPU_MODE. docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
for tool in wrk:wrk python3:python3 taskset:util-linux psql:postgresql-client; do
  command -v "${tool%%:*}" >/dev/null || { echo "bench: installing ${tool#*:}" >&2; apt_install "${tool#*:}"; }
done
[ -x /usr/lib/postgresql/15/bin/pgbench ] || { echo "bench: installing postgresql-15" >&2; apt_install postgresql-15; }
command -v npm >/dev/null || { echo "bench: installing Node.js for the peer" >&2; apt_install nodejs npm; }
go build -o bin/taskflow-api . && go build -o bin/benchkit ./load/benchkit
export TARGET_CMD="exec $PWD/bin/taskflow-api" BENCHKIT=$PWD/bin/benchkit
export CONCURRENCY=${CONCURRENCY:-"1 16 64"} LOG=${LOG:-1}
exec load/compare/compare.sh
