#!/usr/bin/env bash
# make cluster: three instances behind HAProxy, their requests through PgBouncer in
# transaction mode, under mixed load and live-update streams while each instance is
# restarted in turn, one is killed, PgBouncer restarts and PostgreSQL restarts
# (cluster_test.go, deploy/). Prints a table per phase and checks that no acknowledged
# write was lost or doubled; the full run also measures throughput through HAProxy.
# CLUSTER_SHORT=1 is the ~30 s run CI does. Installs haproxy, pgbouncer and wrk when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
export PATH="$PATH:/usr/sbin"
command -v haproxy >/dev/null || { echo "cluster: installing haproxy" >&2; apt_install haproxy; }
command -v pgbouncer >/dev/null || { echo "cluster: installing pgbouncer" >&2; apt_install pgbouncer; }
command -v wrk >/dev/null || { echo "cluster: installing wrk" >&2; apt_install wrk; }
use_testdb
go test -tags cluster -run '^TestCluster$' -count=1 -timeout 20m -v ./load | grep -v -e '^=== ' -e '^--- PASS' -e '^PASS' -e '^ok '
