# shellcheck shell=bash
# Sourced by the bench scripts that start servers (compare-etcd.sh, compare-redis.sh):
#   bench_log DIR   makes DIR, sets $out to its absolute path and $log to its log.txt (emptied)
#   say WORDS       a time-stamped line on stdout and in $log
#   pids, cleanup   the processes the script started; cleanup stops and reaps them (it runs
#                   on exit, and between systems)

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
