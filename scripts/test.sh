#!/usr/bin/env bash
# make test: a local PostgreSQL (scripts/devdb.sh), then gofmt, go vet and the race-enabled
# tests against it. Under CI=true a missing database fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# -race needs cgo, so a C compiler; a machine with only Go has none.
if ! command -v gcc >/dev/null; then
  echo "test: installing gcc for the race detector" >&2
  apt_install gcc libc6-dev
fi

eval "$(scripts/devdb.sh)"

echo "== gofmt"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  echo "gofmt would reformat: $unformatted"
  exit 1
fi
echo "== go vet"
go vet ./...
echo "== go test -race (PostgreSQL at ${TEST_DATABASE_URL%%\?*})"
go test -race -count=1 "$@" ./...
