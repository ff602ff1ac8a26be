# The two commands a new user needs: `make run` and `make test`. See README.md.
SHELL := bash
.PHONY: run test e2e build fuzz soak abuse bench db-stop

run:
	@scripts/run.sh

test:
	@scripts/test.sh

# A real Better Auth frontend (EdDSA tokens through its JWKS) and headless Chromium.
e2e:
	@scripts/e2e.sh

build:
	go build -ldflags "-X main.version=$$(git describe --always --dirty 2>/dev/null || echo dev)" -o bin/taskflow-api .

# Each fuzz target for FUZZTIME; the seed corpora already run in make test.
FUZZTIME ?= 60s
fuzz:
	@. scripts/lib.sh && use_devdb && for f in FuzzDecodeTaskBody FuzzVerifyToken; do \
		go test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) . || exit 1; done

# Mixed load on loopback for SOAK_DURATION (30s) with PostgreSQL crash-restarted once.
soak:
	@. scripts/lib.sh && use_devdb && go test -tags soak -run '^TestSoak$$' -count=1 -timeout 10m -v . | grep -v '^=== '

# What hostile clients and an outage cost the server; ABUSE_COMPARE=name=binary,... measures
# other builds beside this tree's in the same run (docs/operations.md).
abuse:
	@. scripts/lib.sh && use_devdb && go test -tags abuse -run '^TestAbuse$$' -count=1 -timeout 20m -v . | grep -v -e '^=== ' -e '^--- PASS' -e '^PASS' -e '^ok '

# The service against pgbench running the same statements; prints tables (docs/performance.md).
bench:
	@scripts/bench.sh

db-stop:
	@scripts/devdb.sh stop
