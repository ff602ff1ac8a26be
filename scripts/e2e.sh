#!/usr/bin/env bash
# make e2e: a real Better Auth server and headless Chromium against the Go API (e2e/run.mjs),
# behind a recording proxy whose traffic is checked against openapi.json, with the client
# (client/) built as it ships. Installs what it needs when missing: Debian's chromium,
# Node.js, the client's and the e2e's packages (npm ci, from their lockfiles).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# Ports 3000 and 8000 are the frontend's and the API's real ones: the page's origin and the
# API's CORS allow-list are part of what is tested; 8001 is where the API itself listens,
# behind the proxy on 8000. Checked first, before installing anything.
for port in 3000 8000 8001; do
  port_free $port "e2e: port $port is in use (make run?); make e2e needs 3000, 8000 and 8001 free" || exit 1
done

[ -x /usr/bin/chromium ] || { echo "e2e: installing chromium" >&2; apt_install chromium; }
command -v node >/dev/null || { echo "e2e: installing Node.js" >&2; apt_install nodejs; }
command -v npm >/dev/null || apt_install npm
node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || a === 20 && b >= 19 ? 0 : 1)' ||
  { echo "e2e: Redocly CLI and playwright-core need Node.js 20.19 or later, found $(node --version)" >&2; exit 1; }

# The client as it ships: its own pinned toolchain; check regenerates the types from
# openapi.json and fails on any difference, then runs tsc --strict (CI's check of them);
# then packed as npm would publish it, and its size measured (minified, then gzipped).
(cd client && npm ci --no-audit --no-fund --loglevel=error && npm run --silent check && npm run --silent build)
mkdir -p e2e/.data && rm -f e2e/.data/taskflow-client-*.tgz
(cd client && npm pack --silent --pack-destination ../e2e/.data >/dev/null)
echo "e2e: the client is $(cd client && npx --no esbuild dist/taskflow.js --bundle --format=esm --minify --log-level=warning | wc -c) bytes minified, $(cd client && npm run --silent size) gzipped (esbuild --bundle --format=esm --minify | gzip -9)" >&2
(cd e2e && npm ci --no-audit --no-fund --loglevel=error)
# A Next.js page that installs the packed client as a user would, built by next build
# (a static export that e2e/server.mjs serves under /next).
(cd e2e/next && npm ci --no-audit --no-fund --loglevel=error &&
  npm install --no-save --no-audit --no-fund --loglevel=error ../.data/taskflow-client-*.tgz &&
  NEXT_TELEMETRY_DISABLED=1 npx --no next build >../.data/next-build.log 2>&1 ||
  { cat ../.data/next-build.log >&2; exit 1; })
use_devdb
# TASKFLOW_API_BIN=path runs another build of the API (another worktree's, say) instead of
# building this tree's.
if [ -n "${TASKFLOW_API_BIN:-}" ]; then
  api_bin=$(realpath "$TASKFLOW_API_BIN")
else
  go build -o bin/taskflow-api . && api_bin=$PWD/bin/taskflow-api
fi
cd e2e && TASKFLOW_API_BIN=$api_bin node run.mjs
