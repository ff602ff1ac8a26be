#!/usr/bin/env bash
# make bench: seeds a fresh database, then measures pgbench (the ceiling: the service's own
# statements, nothing else) and the service under wrk, pinned to separate cores, and prints
# the tables (docs/performance.md). Knobs: BENCH_DURATION (15s), BENCH_WARMUP (3s),
# BENCH_CONC (16,64), BENCH_OPS (list,list-304,get,toggle,create,create-key), BENCH_AUTH
# (HS256 or EdDSA), BENCH_REPEAT (1), BENCH_NOTIFY_AB=1 (the service also with its
# notification trigger off), BENCH_COMPARE (name=binary,... measured beside this tree's
# service in the same run). make bench-live runs TestBenchLive instead (BENCH_RUN).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
command -v wrk >/dev/null || { echo "bench: installing wrk" >&2; apt_install wrk; }
command -v taskset >/dev/null || apt_install util-linux
use_testdb
export PATH="$TASKFLOW_PGBIN:$PATH" # pgbench ships with the server
go test -tags bench -run "${BENCH_RUN:-^TestBench\$}" -count=1 -timeout 90m -v ./load | grep -v -e '^=== ' -e '^--- PASS' -e '^PASS' -e '^ok '
