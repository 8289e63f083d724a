#!/usr/bin/env bash
# CPU per request, user and kernel, thread by thread, at saturation: nginx
# (the shared bench's proxy config), Tollgate (bench/proxy.yaml), the lean
# HTTP/1.1 loop of this directory, and that loop's upstream exchange behind
# hyper's HTTP/1 server (`--hyper-server`), and hyper's server and client
# together (`--hyper-both`), each alone on core 1 with one
# worker, `wrk -t1 -c64` on core 0 against the shared bench's nginx
# upstream (also core 0). Times are read from /proc/PID/task/*/stat before
# and after each run.
#   bench/lean-h1-spike/run.sh            # 8 s a target
#   SECS=15 bench/lean-h1-spike/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/thread-times.sh
SHARED=${SHARED_BENCH:-../shared/bench}
SECS=${SECS:-8}
RUN=/tmp/tollgate-lean-h1
rm -rf "$RUN" && mkdir -p "$RUN/upstream/tmp" "$RUN/nginx/tmp" "$RUN/data"
for tool in nginx wrk; do
  command -v "$tool" >/dev/null || apt-get install -y -qq "$tool" >/dev/null
done
cargo build --release --bin tollgate
CARGO_TARGET_DIR=/tmp/tollgate-lean-h1-target cargo build --release \
  --manifest-path bench/lean-h1-spike/Cargo.toml
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done' EXIT
cp "$SHARED/conf/upstream-nginx.conf" "$RUN/upstream/nginx.conf"
cp "$SHARED/conf/proxy-nginx.conf" "$RUN/nginx/nginx.conf"
taskset -c 0 nginx -p "$RUN/upstream/" -e stderr -c "$RUN/upstream/nginx.conf" -g 'daemon off;' 2>"$RUN/upstream.log" &
PIDS+=($!)

# measure NAME URL PID: one warm-up, then one timed run.
measure() {
  local name=$1 url=$2 pid=$3 before after out
  taskset -c 0 wrk -t1 -c64 -d2s "$url" >/dev/null
  before=$(thread_times "$pid")
  out=$(taskset -c 0 wrk -t1 -c64 -d"${SECS}s" "$url")
  after=$(thread_times "$pid")
  local rps requests
  rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
  requests=$(awk '/requests in/ { print $1 }' <<<"$out")
  thread_costs "$before" "$after" "$requests" | while read -r thread user kernel; do
    printf "%-10s %8.0f RPS  %-20s user %5.2f us/req  kernel %5.2f us/req\n" \
      "$name" "$rps" "$thread" "$user" "$kernel"
  done
}

# wait_for URL: waits until URL answers.
wait_for() {
  for _ in $(seq 100); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2
  exit 1
}

taskset -c 1 nginx -p "$RUN/nginx/" -e stderr -c "$RUN/nginx/nginx.conf" -g 'daemon off;' 2>"$RUN/nginx.log" &
PIDS+=($!)
wait_for http://127.0.0.1:18081/
# The proxy's own worker: the newest "nginx: worker process" may be the
# upstream's.
measure nginx http://127.0.0.1:18081/ "$(pgrep -P "${PIDS[-1]}" | head -n 1)"

taskset -c 1 /tmp/tollgate-lean-h1-target/release/lean-h1-spike 2>"$RUN/spike.log" &
PIDS+=($!)
wait_for http://127.0.0.1:18095/
measure lean-h1 http://127.0.0.1:18095/ "${PIDS[-1]}"
kill "${PIDS[-1]}" && wait "${PIDS[-1]}" 2>/dev/null || true

# The same upstream exchange behind hyper's HTTP/1 server.
taskset -c 1 /tmp/tollgate-lean-h1-target/release/lean-h1-spike --hyper-server 2>"$RUN/spike-hyper.log" &
PIDS+=($!)
wait_for http://127.0.0.1:18095/
measure hyper+lean http://127.0.0.1:18095/ "${PIDS[-1]}"
kill "${PIDS[-1]}" && wait "${PIDS[-1]}" 2>/dev/null || true

# hyper's server and hyper's client, the connection driven by its own task.
taskset -c 1 /tmp/tollgate-lean-h1-target/release/lean-h1-spike --hyper-both 2>"$RUN/spike-hyper-both.log" &
PIDS+=($!)
wait_for http://127.0.0.1:18095/
measure hyper-both http://127.0.0.1:18095/ "${PIDS[-1]}"

rm -rf /tmp/tollgate-bench && mkdir -p /tmp/tollgate-bench
taskset -c 1 target/release/tollgate serve --config bench/proxy.yaml --workers 1 \
  >"$RUN/tollgate.log" 2>&1 &
PIDS+=($!)
wait_for http://127.0.0.1:18090/
measure tollgate http://127.0.0.1:18090/ "${PIDS[-1]}"
