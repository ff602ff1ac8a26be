#!/usr/bin/env bash
# make run: a local PostgreSQL unless DATABASE_URL is set, a fresh build, the server on
# PORT (8000) with a development secret, and a demo user's token to try it with.
# Ctrl-C stops the server, and the database too if this run started it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

export BETTER_AUTH_SECRET=${BETTER_AUTH_SECRET:-taskflow-development-secret-not-for-production}
export PORT=${PORT:-8000}
export LOG_FORMAT=${LOG_FORMAT:-text}

go build -ldflags "-X main.version=$(git describe --always --dirty 2>/dev/null || echo dev)" -o bin/taskflow-api .

# A server left behind by a run that was killed still holds the port; stop it, but only
# if the PID in the file is still that server and not some unrelated process.
mkdir -p .run
if [ -f .run/server.pid ]; then
  old=$(cat .run/server.pid)
  if [ -r "/proc/$old/cmdline" ] && tr '\0' ' ' <"/proc/$old/cmdline" | grep -q 'bin/taskflow-api'; then
    echo "run: stopping the server a previous run left behind (pid $old)"
    kill "$old" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f .run/server.pid
fi

# Before the database starts, so that a port in use leaves nothing running behind.
port_free "$PORT" "run: port $PORT is in use; stop what listens there or pick another with PORT=..." || exit 1
db_started=0
if [ -z "${DATABASE_URL:-}" ]; then
  use_devdb
  db_started=$TASKFLOW_PG_STARTED
fi
bin/taskflow-api &
pid=$!
echo "$pid" >.run/server.pid
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f .run/server.pid
  if [ "$db_started" = 1 ]; then scripts/devdb.sh stop; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { echo "run: the server exited; see the line above"; exit 1; }
  sleep 0.1
done

token=$(bin/taskflow-api dev-token demo-user)
cat <<MSG

TaskFlow API on http://localhost:$PORT (Ctrl-C stops it). In another shell, a demo user's
token (valid for a day) and a first call; README.md walks through every endpoint:

  export TOKEN=$token
  curl -si -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
       -d '{"title":"Buy milk"}' http://localhost:$PORT/api/demo-user/tasks

MSG
wait "$pid"
