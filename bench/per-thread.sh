#!/usr/bin/env bash
# Where a request's CPU goes, thread by thread: each proxy alone on the proxy
# core (one worker), `wrk -t1` on core 0 beside the upstream, CPU time per
# thread read from /proc before and after each run, in µs a request. The
# harness (../shared/bench) gives ratios; this says which thread, user or
# kernel, makes them, and compares two builds on the same host in the same
# minutes (alternating rounds, one gateway alive at a time).
#
#   bench/per-thread.sh                          # Tollgate (bench/proxy.yaml) against nginx
#   PATHS=ai bench/per-thread.sh                 # the AI path (bench/ai.yaml, chat.lua) against an nginx pass-through
#   PATHS=auth bench/per-thread.sh               # the key + rate-limit route (bench/auth.yaml)
#   OLD=/tmp/old/tollgate bench/per-thread.sh    # A/B: another build in nginx's place
#   CONFIG=/tmp/x.yaml bench/per-thread.sh       # Tollgate with another config (same ports as bench/proxy.yaml)
#   RECORDS=dropped bench/per-thread.sh          # the access log's channel 1 record long: nearly every
#                                                # record dropped, so the writer idles (what logging costs)
#   RECORDS=database bench/per-thread.sh         # no JSON-lines file, the database sink alone
#
# Settings: ROUNDS (3), SECS (8 s a run), CONNS (64), PROXY_CPU (1).
# The access-log writer shows as `tollgate-access`; threads under 0.05 µs a
# request are left out. Kill other gateways first: they share the ports.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/thread-times.sh
SHARED=${SHARED_BENCH:-../shared/bench}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-8}
CONNS=${CONNS:-64}
PROXY_CPU=${PROXY_CPU:-1}
PATHS=${PATHS:-plain}
export BENCH_API_KEY=tg_bench_key_0123456789abcdefghijklmnopqrstuvwxyz
RUN=/tmp/tollgate-per-thread
for tool in wrk nginx; do
  command -v "$tool" >/dev/null || apt-get install -y -qq "$tool" >/dev/null
done
cargo build --release --bin tollgate
NEW=target/release/tollgate

case $PATHS in
  plain) CONFIG=${CONFIG:-bench/proxy.yaml} URL=http://127.0.0.1:18090/ SCRIPT= \
    NGINX_CONF=proxy-nginx.conf NGINX_URL=http://127.0.0.1:18081/ ;;
  auth) CONFIG=${CONFIG:-bench/auth.yaml} URL="http://127.0.0.1:18092/?api_key=$BENCH_API_KEY" SCRIPT= \
    NGINX_CONF=proxy-nginx.conf NGINX_URL=http://127.0.0.1:18081/ ;;
  ai) CONFIG=${CONFIG:-bench/ai.yaml} URL=http://127.0.0.1:18102/v1/chat/completions \
    SCRIPT=$SHARED/lua/chat.lua NGINX_CONF=ai-nginx.conf NGINX_URL=http://127.0.0.1:18103/v1/chat/completions ;;
  *) echo "PATHS is plain, auth or ai" >&2; exit 2 ;;
esac

rm -rf "$RUN" && mkdir -p "$RUN/upstream/tmp" "$RUN/nginx/tmp"
case ${RECORDS:-all} in
  all) ;;
  dropped)
    sed 's/^access_log:$/access_log:\n  buffer: 1/' "$CONFIG" > "$RUN/config.yaml"
    grep -q 'buffer: 1' "$RUN/config.yaml" || { echo "no access_log section in $CONFIG" >&2; exit 2; }
    CONFIG=$RUN/config.yaml ;;
  database)
    awk '/^access_log:/ { skip = 1; next } skip && /^  / { next } { skip = 0; print }' "$CONFIG" > "$RUN/config.yaml"
    CONFIG=$RUN/config.yaml ;;
  *) echo "RECORDS is all, dropped or database" >&2; exit 2 ;;
esac
PIDS=()
GATEWAY=
cleanup() {
  [[ -n $GATEWAY ]] && { kill "$GATEWAY" 2>/dev/null || true; wait "$GATEWAY" 2>/dev/null || true; }
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# The upstream on core 0, beside wrk, as the harness has it.
if [[ $PATHS == ai ]]; then
  taskset -c 0 python3 "$SHARED/mock_openai.py" --host 127.0.0.1 --port 18100 >"$RUN/mock.log" 2>&1 &
else
  cp "$SHARED/conf/upstream-nginx.conf" "$RUN/upstream/nginx.conf"
  taskset -c 0 nginx -p "$RUN/upstream/" -e stderr -c nginx.conf -g 'daemon off;' 2>"$RUN/upstream.log" &
fi
PIDS+=($!)

# alive NAME LOG: fails with LOG when the server just started has exited
# (most often: its port is taken by a server left running).
alive() {
  sleep 0.5
  kill -0 "${PIDS[-1]}" 2>/dev/null && return
  echo "$1 did not start (a port taken?):" >&2
  cat "$2" >&2
  exit 1
}
if [[ $PATHS == ai ]]; then alive "the mock" "$RUN/mock.log"; else alive "the upstream" "$RUN/upstream.log"; fi

# measure LABEL PID URL: one warm-up, then one run; prints RPS, p50, p99 and
# µs a request per thread of PID.
measure() {
  local label=$1 pid=$2 url=$3 before after out requests
  local script_args=()
  [[ -n $SCRIPT ]] && script_args=(-s "$SCRIPT")
  timeout 30 taskset -c 0 wrk -t1 -c"$CONNS" -d2s "${script_args[@]}" "$url" >/dev/null
  before=$(thread_times "$pid")
  out=$(timeout $((SECS + 20)) taskset -c 0 wrk -t1 -c"$CONNS" -d"${SECS}s" --latency "${script_args[@]}" "$url")
  after=$(thread_times "$pid")
  requests=$(awk '/requests in/ { print $1 }' <<<"$out")
  printf '%-10s %8.0f RPS  p50 %-9s p99 %-9s' "$label" \
    "$(awk '/Requests\/sec/ { print $2 }' <<<"$out")" \
    "$(awk '$1 == "50%" { print $2 }' <<<"$out")" "$(awk '$1 == "99%" { print $2 }' <<<"$out")"
  thread_costs "$before" "$after" "$requests" |
    awk '{ printf "  %s %s+%s", $1, $2, $3 } END { print "" }'
}

# gateway BIN: starts BIN with CONFIG on the proxy core; its PID in GATEWAY.
gateway() {
  local data
  data=$(awk -F'sqlite://' '/database:/ { print $2 }' "$CONFIG" | xargs dirname)
  rm -rf "$data" && mkdir -p "$data"
  taskset -c "$PROXY_CPU" "$1" serve --config "$CONFIG" --workers 1 >"$RUN/gateway.log" 2>&1 &
  GATEWAY=$!
  local admin
  admin=$(awk '/admin:/ { print $2 }' "$CONFIG")
  for _ in $(seq 100); do
    curl -fsS "http://$admin/readyz" >/dev/null 2>&1 && return
    sleep 0.1
  done
  cat "$RUN/gateway.log" >&2
  exit 1
}

stop_gateway() {
  kill "$GATEWAY" 2>/dev/null || true
  wait "$GATEWAY" 2>/dev/null || true
  GATEWAY=
}

echo "user+kernel µs a request per thread; $PATHS path, records ${RECORDS:-all}, -c$CONNS, ${SECS}s runs, $ROUNDS rounds"
if [[ -z ${OLD:-} ]]; then
  cp "$SHARED/conf/$NGINX_CONF" "$RUN/nginx/nginx.conf"
  taskset -c "$PROXY_CPU" nginx -p "$RUN/nginx/" -e stderr -c nginx.conf -g 'daemon off;' 2>"$RUN/nginx.log" &
  PIDS+=($!)
  alive nginx "$RUN/nginx.log"
  # Its worker, once it has one (nginx retries a taken port for ~2 s first).
  NGINX_WORKER=
  for _ in $(seq 30); do
    NGINX_WORKER=$(pgrep -P "${PIDS[-1]}" | head -n 1) && break
    sleep 0.1
  done
  [[ -n $NGINX_WORKER ]] || { echo "nginx has no worker:" >&2; cat "$RUN/nginx.log" >&2; exit 1; }
fi
for round in $(seq "$ROUNDS"); do
  if [[ -n ${OLD:-} ]]; then
    gateway "$OLD"
    measure "old" "$GATEWAY" "$URL"
    stop_gateway
  else
    measure "nginx" "$NGINX_WORKER" "$NGINX_URL"
  fi
  gateway "$NEW"
  measure "tollgate" "$GATEWAY" "$URL"
  stop_gateway
done
