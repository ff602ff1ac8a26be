#!/usr/bin/env bash
# make test: a local PostgreSQL (scripts/devdb.sh), then gofmt, go vet and the race-enabled
# tests against it, ending with one line that counts the tests. Under CI=true a missing
# database fails the run instead of skipping. The whole verbose log is in .run/test.log.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# -race needs cgo, so a C compiler; a machine with only Go has none.
if ! command -v gcc >/dev/null; then
  echo "test: installing gcc for the race detector" >&2
  apt_install gcc libc6-dev
fi
# The live-updates tests run PgBouncer, as Neon's pooler runs, to show what it does to LISTEN.
export PATH="$PATH:/usr/sbin"
command -v pgbouncer >/dev/null || { echo "test: installing pgbouncer" >&2; apt_install pgbouncer; }
use_testdb

echo "== gofmt"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  echo "gofmt would reformat: $unformatted"
  exit 1
fi
echo "== go vet"
go vet ./...
echo "== go test -race (PostgreSQL at ${TEST_DATABASE_URL%%\?*})"
mkdir -p .run
set +e
# -p 1: one package at a time, since some tests restart the PostgreSQL all of them use.
go test -race -p 1 -count=1 -v "$@" ./... 2>&1 | tee .run/test.log | awk '
  /^=== (RUN|PAUSE|CONT|NAME)/ { next }
  /^ *--- PASS/ { passed++; next }
  /^ *--- SKIP/ { skipped++ }
  /^ *--- FAIL/ { failed++ }
  /^(PASS|FAIL)$/ { next }
  { print }
  END { printf "== tests: %d passed, %d failed, %d skipped\n", passed, failed, skipped }'
status=${PIPESTATUS[0]}
exit "$status"
