# shellcheck shell=bash
# Sourced by the bench scripts that start servers (compare-etcd.sh, compare-redis.sh):
#   bench_log DIR   makes DIR, sets $out to its absolute path and $log to its log.txt (emptied)
#   say WORDS       a time-stamped line on stdout and in $log
#   pids, cleanup   the processes the script started; cleanup stops and reaps them (it runs
#                   on exit, and between systems)
#   start_dev DIR PORT NAME [FLAG...]
#                   starts `$corekv dev` (3 nodes, 2 shards, data in DIR, client ports from
#                   PORT, FLAGs added) in the background, output in $out/NAME.out and .err,
#                   prefixed by ${launch[@]} when set (taskset), and waits until every shard
#                   has a leader; dies (the caller's `die`) when it exits first or after 120 s

bench_log() {
  mkdir -p "$1"
  out="$(cd "$1" && pwd)"
  log="$out/log.txt"
  : >"$log"
}

say() { printf '%s  %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$log"; }

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap cleanup EXIT

launch=()
start_dev() {
  local dir="$1" port="$2" name="$3" _
  shift 3
  "${launch[@]}" "${corekv:?set by the script}" dev --nodes 3 --shards 2 --base-port "$port" \
    --clean --dir "$dir" "$@" >"$out/$name.out" 2>"$out/$name.err" &
  pids+=("$!")
  for _ in $(seq 1 600); do
    grep -q "every shard has a leader" "$out/$name.out" 2>/dev/null && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.2
  done
  cat "$out/$name.err" >&2
  die "corekv dev did not come up (see $out/$name.err)"
}
