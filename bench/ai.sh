#!/usr/bin/env bash
# Runs ../shared/bench/ai_bench.sh with Tollgate beside the mock provider
# (direct), an nginx pass-through and LiteLLM's proxy: non-streaming and
# streamed chat completions at 1 and 64 connections.
# Tollgate runs one worker thread pinned to the proxy core, with key auth,
# token limits, a budget, cost accounting and access logging on (bench/ai.yaml).
#   bench/ai.sh                       # the full comparison (~8 min, LiteLLM installed on first run)
#   ONLY="direct nginx" bench/ai.sh   # without LiteLLM
# The summary lands in /tmp/gwbench/ai/summary.txt; copy the figures to BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED_BENCH:-../shared/bench}
PROXY_CPU=${PROXY_CPU:-1}
export ONLY=${ONLY:-direct nginx litellm}

cargo build --release --bin tollgate
rm -rf /tmp/tollgate-bench-ai && mkdir -p /tmp/tollgate-bench-ai
taskset -c "$PROXY_CPU" target/release/tollgate serve --config bench/ai.yaml --workers 1 \
  > /tmp/tollgate-bench-ai/stdout.log 2> /tmp/tollgate-bench-ai/stderr.log &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -fsS http://127.0.0.1:18104/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
kill -0 $PID 2>/dev/null || { cat /tmp/tollgate-bench-ai/stderr.log >&2; exit 1; }

# Access records dropped because the writer fell behind (the metric).
dropped() {
  curl -fsS "http://127.0.0.1:$1/metrics" | awk '/^tollgate_access_log_dropped_total/ { n = $2 } END { print n + 0 }'
}

"$SHARED/ai_bench.sh" tollgate=http://127.0.0.1:18102/v1/chat/completions "$@"
echo "access records written: $(wc -l < /tmp/tollgate-bench-ai/access.log)," \
  "dropped: $(dropped 18104) (a figure measured while records were dropped is not comparable)"
tail -n 1 /tmp/tollgate-bench-ai/access.log
