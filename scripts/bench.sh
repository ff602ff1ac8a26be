#!/usr/bin/env bash
# make bench-live and make bench-capture: the Go harnesses in load/ that measure what live
# updates cost an instance and what recording a change costs a write (BENCH_RUN names
# which; docs/performance.md). make bench is scripts/compare.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
command -v wrk >/dev/null || { echo "bench: installing wrk" >&2; apt_install wrk; }
command -v taskset >/dev/null || apt_install util-linux
use_testdb
export PATH="$TASKFLOW_PGBIN:$PATH" # pgbench ships with the server
go test -tags bench -run "${BENCH_RUN:?make bench-live or make bench-capture}" -count=1 -timeout 90m -v ./load | grep -v -e '^=== ' -e '^--- PASS' -e '^PASS' -e '^ok '
