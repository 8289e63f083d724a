#!/usr/bin/env bash
# Runs ../shared/bench/proxy_bench.sh with Tollgate beside nginx, haproxy and caddy.
# Tollgate: one worker thread pinned to the proxy core, access logging on.
#   bench/proxy.sh                 # the full comparison (~3 min)
#   ONLY="direct nginx" bench/proxy.sh
# The summary lands in /tmp/gwbench/proxy/summary.txt; copy the figures to BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED_BENCH:-../shared/bench}
PROXY_CPU=${PROXY_CPU:-1}

cargo build --release --bin tollgate
rm -rf /tmp/tollgate-bench && mkdir -p /tmp/tollgate-bench
taskset -c "$PROXY_CPU" target/release/tollgate serve --config bench/proxy.yaml --workers 1 \
  > /tmp/tollgate-bench/stdout.log 2> /tmp/tollgate-bench/stderr.log &
GW_PID=$!
trap 'kill $GW_PID 2>/dev/null || true; wait $GW_PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -fsS http://127.0.0.1:18091/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
if ! kill -0 "$GW_PID" 2>/dev/null; then
  echo "tollgate did not start:" >&2
  cat /tmp/tollgate-bench/stderr.log >&2
  exit 1
fi
"$SHARED/proxy_bench.sh" tollgate=http://127.0.0.1:18090/ "$@"
echo "access records written: $(wc -l < /tmp/tollgate-bench/access.log)"
