#!/usr/bin/env bash
# Runs ../shared/bench/proxy_bench.sh with Tollgate beside nginx, haproxy and caddy.
# Two Tollgate targets, each one worker thread pinned to the proxy core, access logging on:
#   tollgate       the plain proxy (bench/proxy.yaml)
#   tollgate-auth  the same route behind `auth: key` + `rate_limit` (bench/auth.yaml)
# Only one target is loaded at a time, so the idle one costs nothing.
#   bench/proxy.sh                 # the full comparison (~4 min)
#   ONLY="nginx" bench/proxy.sh    # just the two Tollgates against nginx
# The summary lands in /tmp/gwbench/proxy/summary.txt; copy the figures to BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED_BENCH:-../shared/bench}
PROXY_CPU=${PROXY_CPU:-1}
export BENCH_API_KEY=tg_bench_key_0123456789abcdefghijklmnopqrstuvwxyz

cargo build --release --bin tollgate
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done' EXIT

# start NAME CONFIG ADMIN_PORT: runs a gateway in /tmp/NAME and waits until it is ready.
start() {
  local name=$1 config=$2 admin=$3
  rm -rf "/tmp/$name" && mkdir -p "/tmp/$name"
  taskset -c "$PROXY_CPU" target/release/tollgate serve --config "$config" --workers 1 \
    > "/tmp/$name/stdout.log" 2> "/tmp/$name/stderr.log" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 50); do
    curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "$name did not start:" >&2
    cat "/tmp/$name/stderr.log" >&2
    exit 1
  fi
}
start tollgate-bench bench/proxy.yaml 18091
start tollgate-bench-auth bench/auth.yaml 18093

# Access records dropped because the writer fell behind (the metric).
dropped() {
  curl -fsS "http://127.0.0.1:$1/metrics" | awk '/^tollgate_access_log_dropped_total/ { n = $2 } END { print n + 0 }'
}

"$SHARED/proxy_bench.sh" tollgate=http://127.0.0.1:18090/ \
  "tollgate-auth=http://127.0.0.1:18092/?api_key=$BENCH_API_KEY" "$@"
echo "access records written: plain $(wc -l < /tmp/tollgate-bench/access.log)," \
  "auth $(wc -l < /tmp/tollgate-bench-auth/access.log); dropped: plain $(dropped 18091)," \
  "auth $(dropped 18093) (a figure measured while records were dropped is not comparable)"
