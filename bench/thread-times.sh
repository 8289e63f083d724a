# Sourced by the bench scripts that split a request's CPU by thread
# (bench/per-thread.sh, bench/lean-h1-spike/run.sh): CPU times per thread
# read from /proc before and after a run.

# thread_times PID: one line per thread of PID, sorted by thread id:
# `tid name utime stime` (clock ticks; spaces in a name become `_`).
thread_times() {
  local task line fields
  for task in /proc/"$1"/task/*; do
    line=$(<"$task/stat") || continue
    # Fields after the parenthesised name, from the 3rd: utime and stime
    # are the 14th and 15th.
    read -r -a fields <<<"${line##*) }"
    echo "$(basename "$task") $(tr ' ' _ < "$task/comm") ${fields[11]} ${fields[12]}"
  done | sort
}

# thread_costs BEFORE AFTER REQUESTS: `name user kernel` per thread, in µs
# a request, from two `thread_times` outputs; threads under 0.05 µs left
# out.
thread_costs() {
  join <(echo "$1") <(echo "$2") | awk -v n="$3" -v hz="$(getconf CLK_TCK)" '
    { user = ($6 - $3) * 1e6 / hz / n; kernel = ($7 - $4) * 1e6 / hz / n
      if (user + kernel >= 0.05) printf "%s %.2f %.2f\n", $2, user, kernel }'
}
