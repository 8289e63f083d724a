#!/usr/bin/env bash
# Shared counters (issue 6): the rate-limited proxy path (auth: key + a
# rate limit the load never reaches) with node-local counters, with every
# hit counted in Redis, and with `sync_interval: 50ms`, on one node and on
# two; then config propagation between two nodes on PostgreSQL.
#
#   bench/cluster.sh                  # ~6 min; needs redis-server and PostgreSQL
#
# One node: ../shared/bench/proxy_bench.sh with nginx as the reference and
# three Tollgate targets, each one worker pinned to the proxy core; Redis
# runs on core 0 beside wrk and the upstream (as a real Redis would run
# elsewhere, its CPU is not the gateway's).
# Two nodes: two gateways on the proxy core sharing one Redis counter (the
# limit is by API), each loaded by its own wrk; the RPS is their sum.
# Propagation: bench/propagation.py, two release nodes on one PostgreSQL
# schema, 200 admin writes on one, the other polled until it serves each.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED_BENCH:-../shared/bench}
PROXY_CPU=${PROXY_CPU:-1}
DURATION=${DURATION:-10s}
export BENCH_API_KEY=tg_bench_key_0123456789abcdefghijklmnopqrstuvwxyz
OUT=/tmp/gwbench/cluster
mkdir -p "$OUT"

cargo build --release --bin tollgate
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done' EXIT

taskset -c 0 redis-server --port 18110 --bind 127.0.0.1 --save '' --appendonly no \
  --daemonize no --logfile "$OUT/redis.log" &
PIDS+=($!)

# config NAME PROXY_PORT ADMIN_PORT STORAGE_EXTRA LIMIT_EXTRA BY
config() {
  cat > "$OUT/$1.yaml" <<YAML
listen: { proxy: 127.0.0.1:$2, admin: 127.0.0.1:$3 }
storage: { database: sqlite:///tmp/$1/tollgate.db $4 }
access_log: { file: /tmp/$1/access.log }
consumers:
  - name: bench
    keys: [{ value: env:BENCH_API_KEY }]
services:
  - name: bench
    upstream: { targets: [{ url: http://127.0.0.1:18080 }] }
apis:
  - name: bench
    service: bench
    match: { paths: [/] }
    policies:
      auth: { methods: [key], key_query_param: api_key }
      rate_limit:
        - { limit: 100000000, window: 1m, by: $6 $5 }
YAML
}
REDIS=", redis: 'redis://127.0.0.1:18110'"
config tg-local 18092 18093 "" "" consumer
config tg-redis 18094 18095 "$REDIS" "" consumer
config tg-redis-sync 18096 18097 "$REDIS" ", sync_interval: 50ms" consumer

# start NAME ADMIN_PORT
start() {
  rm -rf "/tmp/$1" && mkdir -p "/tmp/$1"
  taskset -c "$PROXY_CPU" target/release/tollgate serve --config "$OUT/$1.yaml" --workers 1 \
    > "/tmp/$1/stdout.log" 2> "/tmp/$1/stderr.log" &
  PIDS+=($!)
  for _ in $(seq 50); do
    curl -fsS "http://127.0.0.1:$2/readyz" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "$1 did not start:" >&2; cat "/tmp/$1/stderr.log" >&2; exit 1
}
start tg-local 18093
start tg-redis 18095
start tg-redis-sync 18097
Q="?api_key=$BENCH_API_KEY"
ONLY=${ONLY:-nginx} "$SHARED/proxy_bench.sh" \
  "local=http://127.0.0.1:18092/$Q" "redis=http://127.0.0.1:18094/$Q" \
  "redis-sync=http://127.0.0.1:18096/$Q" "$@" | tee "$OUT/one-node.txt"
redis-cli -p 18110 --scan --pattern 'tollgate:rl|*' | head -3

# Two nodes sharing one counter (by: api), each under its own wrk.
mkdir -p "$OUT/upstream/tmp"
cp "$SHARED/conf/upstream-nginx.conf" "$OUT/upstream/nginx.conf"
taskset -c 0 nginx -p "$OUT/upstream/" -e stderr -c nginx.conf -g 'daemon off;' &
PIDS+=($!)
sleep 0.5
two_nodes() { # LABEL STORAGE_EXTRA LIMIT_EXTRA
  config tg-a 18120 18121 "$2" "$3" api
  config tg-b 18122 18123 "$2" "$3" api
  start tg-a 18121
  start tg-b 18123
  local pa=${PIDS[-2]} pb=${PIDS[-1]}
  for url in "http://127.0.0.1:18120/$Q" "http://127.0.0.1:18122/$Q"; do
    taskset -c 0 wrk -t1 -c32 -d2s "$url" >/dev/null
  done
  taskset -c 0 wrk -t1 -c32 -d"$DURATION" --latency "http://127.0.0.1:18120/$Q" > "$OUT/$1-a.txt" &
  local wa=$!
  taskset -c 0 wrk -t1 -c32 -d"$DURATION" --latency "http://127.0.0.1:18122/$Q" > "$OUT/$1-b.txt"
  wait "$wa"
  kill "$pa" "$pb"; wait "$pa" "$pb" 2>/dev/null || true
  python3 - "$1" "$OUT/$1-a.txt" "$OUT/$1-b.txt" <<'PY'
import re, sys
label, files = sys.argv[1], sys.argv[2:]
rps, p99s, non2xx = 0.0, [], 0
for f in files:
    t = open(f).read()
    rps += float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    p99s.append(re.search(r"99%\s+([\d.]+\w+)", t).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    non2xx += int(m.group(1)) if m else 0
print(f"two nodes, {label:11s} total {rps:8.0f} RPS   p99 {' / '.join(p99s)}   non-2xx {non2xx}")
PY
}
{
  two_nodes local "" ""
  two_nodes redis "$REDIS" ""
  two_nodes redis-sync "$REDIS" ", sync_interval: 50ms"
} | tee "$OUT/two-nodes.txt"

python3 bench/propagation.py | tee "$OUT/propagation.txt"
