# The two commands a new user needs: `make run` and `make test`. See README.md.
SHELL := bash
.PHONY: run test e2e cluster build fuzz soak abuse bench bench-live bench-capture db-stop

run:
	@scripts/run.sh

test:
	@scripts/test.sh

# A real Better Auth frontend (EdDSA tokens through its JWKS) and headless Chromium, with the
# client as it ships (and packed, in a Next.js page); every exchange checked against
# openapi.json. ~3 minutes.
e2e:
	@scripts/e2e.sh

# Three instances behind HAProxy and PgBouncer through restarts (deploy/, docs/operations.md);
# CLUSTER_SHORT=1 for the ~30 s run CI does.
cluster:
	@scripts/cluster.sh

build:
	go build -ldflags "-X main.version=$$(git describe --always --dirty 2>/dev/null || echo dev)" -o bin/taskflow-api .

# Each fuzz target for FUZZTIME; the seed corpora already run in make test.
FUZZTIME ?= 60s
fuzz:
	@. scripts/lib.sh && use_testdb && for f in FuzzDecodeTaskBody:./internal/task FuzzAppendString:./internal/task FuzzVerifyToken:.; do \
		go test -run '^$$' -fuzz "^$${f%%:*}\$$" -fuzztime $(FUZZTIME) "$${f#*:}" || exit 1; done

# Mixed load on loopback for SOAK_DURATION (30s) with PostgreSQL crash-restarted once.
soak:
	@. scripts/lib.sh && use_testdb && go test -tags soak -run '^TestSoak$$' -count=1 -timeout 10m -v ./load | grep -v '^=== '

# What hostile clients and an outage cost the server; ABUSE_COMPARE=name=binary,... measures
# other builds beside this tree's in the same run (docs/operations.md).
abuse:
	@. scripts/lib.sh && use_testdb && go test -tags abuse -run '^TestAbuse' -count=1 -timeout 20m -v ./load | grep -v -e '^=== ' -e '^--- PASS' -e '^PASS' -e '^ok '

# The ceiling (pgbench), the Node peer and the service in one run, in one table; DB_LATENCY=500us
# puts a network between each and PostgreSQL, STREAMS=200 measures the service again with
# 200 users following (docs/performance.md). About 15 minutes.
bench:
	@scripts/compare.sh

# Live updates' cost on one instance: 10,000 idle streams, delivery delays, resumption (docs/performance.md).
bench-live:
	@BENCH_RUN='^TestBenchLive$$' scripts/bench.sh

# What recording a change costs a write, at the SQL level; BENCH_SLOW_COMMIT=1 adds 2 ms commits (docs/performance.md).
bench-capture:
	@BENCH_RUN='^TestBenchCapture$$' scripts/bench.sh

db-stop:
	@scripts/devdb.sh stop && TASKFLOW_PGDATA=$(CURDIR)/.pgdata-test scripts/devdb.sh stop
