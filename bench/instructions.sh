#!/usr/bin/env bash
# Instructions per request, counted by callgrind: a figure host noise does
# not move (wall-clock runs here vary by 20 % from one minute to the next),
# for telling whether a change to the hot path made it cheaper.
#
#   bench/instructions.sh              # the plain proxy and the AI path, 2000 requests each
#   bench/instructions.sh auth         # the plain proxy's route behind key auth and a rate limit
#   N=5000 bench/instructions.sh ai    # one path, more requests
#   BIN=/tmp/old/tollgate bench/instructions.sh   # another build, to compare
#   CACHE=1 bench/instructions.sh plain auth      # also simulate the caches: L1
#                                                 # instruction and data misses a request
#
# It counts user-space instructions only: no system call, no cache miss, no
# wait. The gateway runs bench/proxy.yaml or bench/ai.yaml under valgrind,
# in front of the shared harness's nginx upstream (:18080) or OpenAI mock
# (:18100); one client sends N requests one after the other on one
# keep-alive connection, after 300 to warm up, and only those N are counted.
#
# The access-log writer's share depends on how many records each 10 ms batch
# holds, which under valgrind is few: its commit costs are counted per
# record many times over what they are at load. Compare the main thread's
# figure between builds; the writer's is printed apart.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED_BENCH:-../shared/bench}
N=${N:-2000}
# bench/auth.yaml reads its consumer's key from here; the client sends the same.
export BENCH_API_KEY=tg_bench_key_0123456789abcdefghijklmnopqrstuvwxyz
KINDS=${*:-plain ai}
for tool in valgrind nginx; do
  command -v "$tool" >/dev/null || apt-get install -y -qq "$tool" >/dev/null
done

if [[ -z ${BIN:-} ]]; then
  cargo build --release --bin tollgate
  BIN=target/release/tollgate
fi
RUN=/tmp/tollgate-instructions
rm -rf "$RUN" && mkdir -p "$RUN/nginx/tmp"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done' EXIT
cp "$SHARED/conf/upstream-nginx.conf" "$RUN/nginx/nginx.conf"
nginx -p "$RUN/nginx/" -e stderr -c "$RUN/nginx/nginx.conf" -g 'daemon off;' 2>"$RUN/nginx.log" &
PIDS+=($!)
python3 "$SHARED/mock_openai.py" --host 127.0.0.1 --port 18100 >"$RUN/mock.log" 2>&1 &
PIDS+=($!)

# load PORT COUNT KIND: COUNT requests on one keep-alive connection, each checked.
load() {
  python3 - "$@" <<'EOF'
import http.client, json, sys
port, count, kind = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
AUTH_KEY = "tg_bench_key_0123456789abcdefghijklmnopqrstuvwxyz"

class OneWrite(http.client.HTTPConnection):
    """Sends a request's head and body in one write, as wrk and most clients
    do. http.client sends them apart, and the gateway's lean HTTP/1 server
    hands a request whose body is still to come to hyper: the AI path was
    counted on hyper's server, not on the one the benchmarks load."""

    def _send_output(self, message_body=None, encode_chunked=False):
        self._buffer.extend((b"", b""))
        head = b"\r\n".join(self._buffer)
        del self._buffer[:]
        self.send(head + (message_body or b""))

conn = OneWrite("127.0.0.1", port)
chat = json.dumps({"model": "mock-gpt", "max_tokens": 32, "temperature": 0, "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello in one short sentence."}]})
for _ in range(count):
    if kind == "ai":
        conn.request("POST", "/v1/chat/completions", chat,
                     {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"})
    elif kind == "auth":
        conn.request("GET", "/?api_key=" + AUTH_KEY)
    else:
        conn.request("GET", "/")
    answer = conn.getresponse()
    answer.read()
    assert answer.status == 200, answer.status
EOF
}

# per_thread FILE...: "thread-name instructions" for each callgrind file,
# the thread named by the work it did.
per_thread() {
  python3 - "$@" <<'EOF'
import sys
for path in sys.argv[1:]:
    total, writer = 0, False
    for line in open(path):
        if line.startswith("summary:"):
            total = int(line.split()[1])
        elif "sqlite3_step" in line or "FileSink" in line:
            writer = True
    print("access-log-writer" if writer else "other", total)
EOF
}

for kind in $KINDS; do
  case $kind in
    plain) config=bench/proxy.yaml port=18090 admin=18091 data=/tmp/tollgate-bench ;;
    ai) config=bench/ai.yaml port=18102 admin=18104 data=/tmp/tollgate-bench-ai ;;
    auth) config=bench/auth.yaml port=18092 admin=18093 data=/tmp/tollgate-bench-auth ;;
    *) echo "unknown path '$kind' (plain, auth or ai)" >&2; exit 2 ;;
  esac
  rm -rf "$data" && mkdir -p "$data"
  cache_sim=()
  [[ -n ${CACHE:-} ]] && cache_sim=(--cache-sim=yes)
  valgrind --tool=callgrind "${cache_sim[@]}" --separate-threads=yes --callgrind-out-file="$RUN/$kind.%p" \
    "$BIN" serve --config "$config" --workers 1 >"$RUN/$kind.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 300); do
    curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  load "$port" 300 "$kind"
  sleep 0.5
  callgrind_control -z "$pid" >/dev/null 2>&1
  load "$port" "$N" "$kind"
  sleep 0.5 # the last batch of records reaches the sinks
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  # Thread 1 is the main thread, which runs the single-worker runtime.
  main=$(per_thread "$RUN/$kind.$pid.1-01" | awk '{print $2}')
  writer=$(per_thread "$RUN/$kind.$pid".1-* | awk '$1 == "access-log-writer" { n += $2 } END { print n + 0 }')
  all=$(per_thread "$RUN/$kind.$pid".1-* | awk '{ n += $2 } END { print n }')
  echo "$kind: instructions per request: main thread $((main / N)), access-log writer $((writer / N)), all threads $((all / N))  ($RUN/$kind.$pid.1-*)"
  if [[ -n ${CACHE:-} ]]; then
    # The simulated caches are the machine's sizes, shared by every thread
    # (valgrind runs one at a time): the writer's work evicts the main
    # thread's lines, as on the one core the benchmarks give the gateway.
    awk -v n="$N" -v kind="$kind" '
      /^events:/ { for (i = 2; i <= NF; i++) name[i] = $i }
      /^summary:/ { for (i = 2; i <= NF; i++) v[name[i]] = $i }
      END { printf "%s: main thread misses per request: L1 instruction %d, L1 data read %d, write %d\n",
            kind, v["I1mr"] / n, v["D1mr"] / n, v["D1mw"] / n }' "$RUN/$kind.$pid.1-01"
  fi
done
