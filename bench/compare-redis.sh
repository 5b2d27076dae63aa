#!/usr/bin/env bash
# corekv's Redis endpoint beside Redis itself, on this machine.
#
#   bench/compare-redis.sh [--out DIR] [--runs N] [--requests N] [--clients C]
#                          [--systems "corekv redis-always redis-everysec"]
#                          [--bin-dir DIR] [--no-build] [--quick]
#
# Each system runs alone on the machine, loaded by redis-benchmark (Debian's redis-tools) with
# the same flags: `-t set,get -c C -d 100 -r 100000 -n N` (C clients, one request each in
# flight, 100-byte values, keys drawn from 100,000). `corekv` is a 3-node, 2-shard `corekv dev`
# cluster loaded through `redis-benchmark --cluster` (every SET committed on a majority and
# fsynced before its reply; every GET linearizable). `redis-always` is one redis-server
# (Debian's redis-server) with `appendonly yes`, `appendfsync always` (each event loop's writes
# fsynced before their replies); `redis-everysec` the same with `appendfsync everysec` (writes
# fsynced once a second: a crash loses up to a second of acknowledged writes). The median of
# --runs runs per system goes to DIR/table.md with corekv's ratio to each Redis; every run's
# CSV is kept in DIR.
#
# --quick is the CI smoke run: 1 run of 2,000 requests with 16 clients.
set -euo pipefail
cd "$(dirname "$0")/.."

out="bench/out/redis-$(date -u +%Y%m%dT%H%M%SZ)"
runs=3
requests=1000000
clients=256
systems="corekv redis-always redis-everysec"
bin_dir="target/release"
build=1
corekv_port=7500
redis_port=16379

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "compare-redis.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --runs) runs="${2:?}"; shift 2 ;;
    --requests) requests="${2:?}"; shift 2 ;;
    --clients) clients="${2:?}"; shift 2 ;;
    --systems) systems="${2:?}"; shift 2 ;;
    --bin-dir) bin_dir="${2:?}"; shift 2 ;;
    --no-build) build=0; shift ;;
    --quick) runs=1; requests=2000; clients=16; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
for n in "$runs" "$requests" "$clients"; do
  case "$n" in ''|*[!0-9]*|0) die "--runs, --requests and --clients take positive integers" ;; esac
done
for s in $systems; do
  case "$s" in
    corekv|redis-always|redis-everysec) ;;
    *) die "unknown system '$s' (corekv, redis-always or redis-everysec)" ;;
  esac
done
command -v redis-benchmark >/dev/null || die "redis-benchmark not found: apt-get install redis-tools"
case " $systems " in *" redis-"*)
  command -v redis-server >/dev/null || die "redis-server not found: apt-get install redis-server"
esac

if [ "$build" = 1 ]; then
  profile=release
  [ "$bin_dir" = target/debug ] && profile=dev
  cargo build --profile "$profile" -p corekv-server
fi
corekv="$bin_dir/corekv"
[ -x "$corekv" ] || die "$corekv not found (build it, or give --bin-dir)"

# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_log "$out"

# Waits until every shard is led by its preferred node (shard s by node s mod 3 + 1: a new
# cluster moves each shard's leadership there once it is caught up): redis-benchmark
# --cluster gives up when a shard's master changes under it. A Redis node id is the node's
# id in hex, then the shard's (DESIGN.md §14).
settle() {
  local _ id flags masters preferred
  for _ in $(seq 1 100); do
    masters=0 preferred=0
    while read -r id _ flags _; do
      case "$flags" in *master*) ;; *) continue ;; esac
      masters=$((masters + 1))
      [ $((16#${id:0:20})) = $((16#${id:20:20} % 3 + 1)) ] && preferred=$((preferred + 1))
    done < <(redis-cli -p "$1" cluster nodes 2>/dev/null)
    [ "$masters" = 2 ] && [ "$preferred" = 2 ] && return 0
    sleep 0.5
  done
  die "the shards' leaders did not settle on their preferred nodes"
}

# Starts a system; sets `target` to redis-benchmark's arguments for it.
start_system() {
  case "$1" in
    corekv)
      local dir="$out/corekv-data" resp
      start_dev "$dir" "$corekv_port" corekv-dev
      resp=$(sed -n 's/^resp_port = //p' "$dir/corekv.toml" | head -1)
      [ -n "$resp" ] || die "the dev registry has no resp_port"
      target=(--cluster -h 127.0.0.1 -p "$resp")
      settle "$resp"
      ;;
    redis-*)
      local dir="$out/$1-data"
      rm -rf "$dir"
      mkdir -p "$dir"
      redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --save "" \
        --appendonly yes --appendfsync "${1#redis-}" --daemonize no \
        >"$out/$1.out" 2>&1 &
      pids+=("$!")
      local _
      for _ in $(seq 1 100); do
        if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
          target=(-h 127.0.0.1 -p "$redis_port")
          return 0
        fi
        sleep 0.1
      done
      die "redis-server did not come up (see $out/$1.out)"
      ;;
  esac
}

# One run: redis-benchmark's CSV rows ("SET","rps",...) into DIR/SYSTEM-RUN.csv.
run_once() {
  local system=$1 run=$2 file="$out/$1-$2.csv"
  redis-benchmark "${target[@]}" -t set,get -c "$clients" -d 100 -r 100000 -n "$requests" --csv \
    2>>"$log" | tr '\r' '\n' | grep '^"' >"$file" || true
  if ! grep -q '^"SET"' "$file" || ! grep -q '^"GET"' "$file"; then
    die "redis-benchmark against $system gave no results (see $log)"
  fi
  say "$system run $run: $(grep -v '^"test"' "$file" | cut -d, -f1,2 | tr '\n' ' ')"
}

for system in $systems; do
  say "starting $system"
  start_system "$system"
  for run in $(seq 1 "$runs"); do run_once "$system" "$run"; done
  cleanup
  rm -rf "$out/corekv-data" "$out/$system-data"
done

python3 - "$out" "$systems" "$runs" "$clients" "$requests" <<'EOF'
import csv, statistics, sys
out, systems, runs = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
clients, requests = sys.argv[4], sys.argv[5]
rows = {}
for system in systems:
    for run in range(1, runs + 1):
        with open(f"{out}/{system}-{run}.csv") as f:
            for row in csv.DictReader(f):
                rows.setdefault((system, row["test"]), []).append(row)
def median(system, test, field):
    return statistics.median(float(r[field]) for r in rows[(system, test)])
lines = [
    f"redis-benchmark -t set,get -c {clients} -d 100 -r 100000 -n {requests}; median of {runs}",
    "",
    "| test | system | requests/s | p50 ms | p99 ms | corekv's ratio |",
    "|---|---|---:|---:|---:|---:|",
]
for test in ["SET", "GET"]:
    for system in systems:
        rps = median(system, test, "rps")
        ratio = ""
        if system != "corekv" and "corekv" in systems:
            ratio = f"{median('corekv', test, 'rps') / rps:.2f}"
        lines.append(
            f"| {test} | {system} | {rps:,.0f} | {median(system, test, 'p50_latency_ms'):.2f} "
            f"| {median(system, test, 'p99_latency_ms'):.2f} | {ratio} |"
        )
open(f"{out}/table.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
say "done: $out/table.md"
