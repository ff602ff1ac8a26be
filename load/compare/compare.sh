#!/usr/bin/env bash
# make bench: one run, one table: the PostgreSQL ceiling (pgbench: one plain statement per
# request), the Node peer (Fastify + postgres.js + fast-jwt), and the service, all against
# a fresh private PostgreSQL 15 cluster on this machine. The ratio column is req/s over the
# ceiling's. This is the comparison harness of TaskFlow's shared bench, owned here (what
# was changed is marked "taskflow:"), so that make bench and it cannot disagree.
#
#   usage: scripts/bench.sh (make bench), which builds the service and benchkit first
#   env:   CPU_MODE         split (default): server + PostgreSQL on CPU 0, load generator on CPU 1
#                           shared: nothing pinned, everything shares both cores
#          NODE_ANCHOR      1 (default): also run the Node peer, found at NODE_PEER
#          NODE_PEER        the Node peer's folder (default: ../shared/peers/node beside this
#                           repository's checkout; without one, NODE_ANCHOR=0)
#          LOG              1: the service and the peer log every request (as in production)
#          TARGET_CMD       command that starts the third target (see the slot below)
#          TARGET_LABEL     its name in the table (default: go)
#          DB_LATENCY       taskflow: e.g. 500us: every target, the ceiling too, reaches
#                           PostgreSQL through a proxy that adds this much each way
#          STREAMS          taskflow: N: the service is measured a second time, as
#                           go+Nstreams, with an event stream open for each of N users
#          CONCURRENCY "16 64", DURATION 15, WARMUP 5, THREADS 2, OPS, USERS 1000, PER_USER 50
#          PGPORT 15440 (and 15442 for DB_LATENCY's proxy), HTTP_PORT 18080, RUN_DIR (/tmp/taskflow-bench), BETTER_AUTH_SECRET
set -euo pipefail
LOAD=$(cd "$(dirname "$0")" && pwd)
ANCH=$LOAD
. "$LOAD/lib.sh"

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
RUN_DIR=${RUN_DIR:-/tmp/taskflow-bench}
PGPORT=${PGPORT:-15440} # taskflow: below the ephemeral ports (32768-60999), as every test server here
HTTP_PORT=${HTTP_PORT:-18080}
CPU_MODE=${CPU_MODE:-split}
NODE_ANCHOR=${NODE_ANCHOR:-1}
NODE_PEER=${NODE_PEER:-$LOAD/../../../shared/peers/node} # taskflow
if [ "$NODE_ANCHOR" = 1 ] && [ ! -f "$NODE_PEER/server.mjs" ]; then
  echo "bench: no Node peer at $NODE_PEER (set NODE_PEER); measuring without it" >&2
  NODE_ANCHOR=0
fi
BENCHKIT=${BENCHKIT:-benchkit} # taskflow
export BETTER_AUTH_SECRET=${BETTER_AUTH_SECRET:-anchors-benchmark-secret-0123456789abcdef}
export CONCURRENCY=${CONCURRENCY:-"16 64"} DURATION=${DURATION:-15} WARMUP=${WARMUP:-5}
export THREADS=${THREADS:-2} OPS=${OPS:-"list get toggle create"}
export USERS=${USERS:-1000} PER_USER=${PER_USER:-50} NO_HEADER=1

case $CPU_MODE in
  split)  SUT_CPUS=0; LOAD_CPUS=1 ;;
  shared) SUT_CPUS=;  LOAD_CPUS= ;;
  *) echo "CPU_MODE must be split or shared" >&2; exit 2 ;;
esac
export LOAD_CPUS
sut_pin=() load_pin=()
[ -n "$SUT_CPUS" ] && sut_pin=(taskset -c "$SUT_CPUS") && load_pin=(taskset -c "$LOAD_CPUS")

OUT=$RUN_DIR/results-$(date +%Y%m%d-%H%M%S)-$CPU_MODE
mkdir -p "$OUT"
export RESULTS=$OUT/results.tsv
: > "$RESULTS"
ADMIN_URL="postgresql://bench@127.0.0.1:$PGPORT/postgres"
PGDATA=$RUN_DIR/pgdata
SERVER_PID=

stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || true   # its own process group (setsid)
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}
stop_pg() {
  if [ -f "$PGDATA/postmaster.pid" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" stop -m fast -w > /dev/null || true
  fi
}
cleanup() { stop_server; [ -z "$PROXY_PID" ] || kill "$PROXY_PID" 2>/dev/null; stop_pg; } # taskflow: the proxy
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- a fresh PostgreSQL 15 cluster, owned by postgres, on the server's CPUs ----------
stop_pg
rm -rf "$PGDATA" "$RUN_DIR/sock"
mkdir -p "$PGDATA" "$RUN_DIR/sock"
chown postgres:postgres "$PGDATA" "$RUN_DIR/sock"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -U bench --auth=trust -E UTF8 --locale=C.UTF-8 > /dev/null
cat >> "$PGDATA/postgresql.conf" <<CONF
# benchmark cluster (durable defaults kept: fsync, synchronous_commit, full_page_writes on)
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$RUN_DIR/sock'
max_connections = 300
shared_buffers = 512MB
max_wal_size = 4GB
timezone = 'UTC'
CONF
"${sut_pin[@]}" runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w start > /dev/null
export PG_PID=$(head -1 "$PGDATA/postmaster.pid")

{
  echo "date: $(date -u +%FT%TZ)   cpu mode: $CPU_MODE (server+db cpus: ${SUT_CPUS:-any}, load generator cpus: ${LOAD_CPUS:-any})"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') x $(nproc)"
  echo "postgres: $("$PGBIN/postgres" --version)   wrk: $(wrk -v 2>&1 | head -1)"
  echo "concurrency: $CONCURRENCY   duration: ${DURATION}s after ${WARMUP}s warm-up   wrk/pgbench threads: $THREADS   users: $USERS x $PER_USER tasks"
  echo "database latency added each way: ${DB_LATENCY:-none}   streams open: ${STREAMS:-0}   log: ${LOG:-0}" # taskflow
} | tee "$OUT/env.txt"

new_db() { # NAME -> URL
  psql -X -q -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" > /dev/null
  echo "postgresql://bench@127.0.0.1:$PGPORT/$1"
}

start_server() { # LOGNAME command...   (PORT, DATABASE_URL, BETTER_AUTH_SECRET in env)
  local log=$OUT/$1.log; shift
  setsid "${sut_pin[@]}" "$@" > "$log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 120); do
    if curl -sf -o /dev/null "http://127.0.0.1:$HTTP_PORT/healthz"; then return 0; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
    sleep 0.5
  done
  echo "server did not come up; its log ($log):" >&2
  tail -20 "$log" >&2
  exit 1
}

# taskflow: with DB_LATENCY, a proxy on the load generator's CPUs holds every byte
# between the targets and PostgreSQL that long each way; via is a URL through it.
PROXY_PID=
via() { # URL -> the URL through the proxy, if any
  if [ -n "${DB_LATENCY:-}" ]; then echo "${1/:$PGPORT\//:$((PGPORT + 2))/}"; else echo "$1"; fi
}
if [ -n "${DB_LATENCY:-}" ]; then
  "${load_pin[@]}" "$BENCHKIT" delay -listen "127.0.0.1:$((PGPORT + 2))" -to "127.0.0.1:$PGPORT" -each-way "$DB_LATENCY" &
  PROXY_PID=$!
fi

run_http_target() { # LABEL DBNAME command...
  local label=$1 url follower=
  url=$(new_db "$2"); shift 2
  PORT=$HTTP_PORT DATABASE_URL=$(via "$url") start_server "$label" "$@"
  if [ -n "${FOLLOW:-}" ]; then # taskflow: streams open, from before the seeding
    /usr/bin/python3 "$LOAD/mint_tokens.py" "$BETTER_AUTH_SECRET" "$USERS" > "$OUT/tokens.txt"
    "${load_pin[@]}" "$BENCHKIT" follow -base "http://127.0.0.1:$HTTP_PORT" -tokens "$OUT/tokens.txt" -n "$FOLLOW" 2>> "$OUT/$label.log" &
    follower=$!
  fi
  sleep 1   # let every worker finish starting
  SUT_SID=$SERVER_PID LABEL=$label DATABASE_URL=$url "$LOAD/run.sh" "http://127.0.0.1:$HTTP_PORT" "$BETTER_AUTH_SECRET"
  if [ -n "$follower" ]; then kill -TERM "$follower"; wait "$follower" || true; fi
  stop_server
}

print_header

# ---- 1. the ceiling: PostgreSQL alone, prepared statements ----------------------------
LABEL=pgbench "$ANCH/pgbench/run.sh" "$(via "$(new_db anchors_pgbench)")"

# ---- 2. the Node peer: Fastify + postgres.js + fast-jwt, one process --------------------
if [ "$NODE_ANCHOR" = 1 ]; then
  peer=$NODE_PEER # taskflow
  if [ ! -d "$peer/node_modules" ]; then   # shared/ may be read-only: install a copy
    rm -rf "$RUN_DIR/peer" && cp -r "$peer" "$RUN_DIR/peer" && peer=$RUN_DIR/peer
    (cd "$peer" && npm ci --silent --no-audit --no-fund) >&2
  fi
  run_http_target node anchors_node "$peer/run.sh"
fi

# ---- 3. SLOT: third target (the Go server) -------------------------------------------
# TARGET_CMD is run by bash in its own process group, pinned like the FastAPI anchor, with
# PORT, DATABASE_URL (a fresh empty database) and BETTER_AUTH_SECRET in its environment.
# It must answer GET /healthz and have created its `tasks` table (contract columns) by then;
# the harness seeds that table with SQL. Example:
#   TARGET_CMD='exec /path/to/taskflow-server' TARGET_LABEL=go load/compare.sh
if [ -n "${TARGET_CMD:-}" ]; then
  run_http_target "${TARGET_LABEL:-go}" anchors_target bash -c "$TARGET_CMD"
  if [ "${STREAMS:-0}" -gt 0 ]; then # taskflow
    FOLLOW=$STREAMS run_http_target "${TARGET_LABEL:-go}+${STREAMS}streams" anchors_target bash -c "$TARGET_CMD"
  fi
fi

# ---- the table: every row with its ratio to the pgbench ceiling -----------------------
echo
echo "== summary ($CPU_MODE): req/s and ratio to the pgbench ceiling at the same op and concurrency =="
awk -F'\t' -v ops="$OPS" -v concs="$CONCURRENCY" -v fmt="${ROW_FMT%\\n}" '
  { n++; row[n] = $0; if ($1 == "pgbench") ceil[$2 SUBSEP $3] = $4 }
  END {
    printf fmt " %6s\n", "target", "op", "conc", "req/s", "p50_ms", "p99_ms", "non2xx", "errs", "cpu0/cpu1", "sut", "loadgen", "other", "ratio"
    nc = split(concs, C, " "); no = split(ops, O, " ")
    for (i = 1; i <= nc; i++) for (j = 1; j <= no; j++) for (k = 1; k <= n; k++) {
      split(row[k], f, "\t")
      if (f[2] != O[j] || f[3] != C[i]) continue
      r = ceil[f[2] SUBSEP f[3]]
      printf fmt " %6s\n", f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12], (r > 0 ? sprintf("%.3f", f[4] / r) : "-")
    }
  }' "$RESULTS" | tee "$OUT/table.txt"
echo "results: $OUT"
