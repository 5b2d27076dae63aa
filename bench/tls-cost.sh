#!/usr/bin/env bash
# What TLS and auth cost (issue 23's goal: at most 15% less throughput and 15% more p99):
# put and get on a plaintext `corekv dev` cluster and on one with TLS on every port and every
# request checked (`corekv dev --auth`), in alternating rounds (plaintext first in odd rounds,
# TLS and auth first in even ones: a shared VM drifts over minutes), each run on a fresh
# 3-node, 2-shard cluster with --keys keys prefilled.
#
#   bench/tls-cost.sh [--out DIR] [--rounds N] [--concurrency C] [--workloads "put get"]
#                     [--duration S] [--warmup S] [--keys N] [--split-cpus] [--bin-dir DIR]
#
# --split-cpus puts the nodes on the first half of the CPUs this script may use and the load
# generator on the rest (taskset; `corekv dev` lays its nodes out over the CPUs it is given),
# as when the clients run on machines of their own: the load generator's TLS work then takes
# no CPU from the nodes. Each run's share of each CPU's time is logged beside it.
# DIR/table.md has every run and, per workload, the means and the differences.
set -euo pipefail
cd "$(dirname "$0")/.."

out="bench/out/tls-cost-$(date -u +%Y%m%dT%H%M%SZ)"
rounds=4
concurrency=256
workloads="put get"
duration=10
warmup=1
keys=100000
split=0
bin_dir="target/release"
port=7500

usage() { sed -n '7,8p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "tls-cost.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --rounds) rounds="${2:?}"; shift 2 ;;
    --concurrency) concurrency="${2:?}"; shift 2 ;;
    --workloads) workloads="${2:?}"; shift 2 ;;
    --duration) duration="${2:?}"; shift 2 ;;
    --warmup) warmup="${2:?}"; shift 2 ;;
    --keys) keys="${2:?}"; shift 2 ;;
    --split-cpus) split=1; shift ;;
    --bin-dir) bin_dir="${2:?}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
case "$rounds" in ''|*[!0-9]*|0) die "--rounds must be a positive integer" ;; esac
case "$concurrency" in ''|*[!0-9]*|0) die "--concurrency must be a positive integer" ;; esac
for w in $workloads; do
  case "$w" in put|get|mixed) ;; *) die "unknown workload '$w' (put, get or mixed)" ;; esac
done
bench="$bin_dir/corekv-bench"
corekv="$bin_dir/corekv"
[ -x "$bench" ] || die "$bench not found (cargo build --release, or give --bin-dir)"
[ -x "$corekv" ] || die "$corekv not found (cargo build --release, or give --bin-dir)"

bench_cpus=()
if [ "$split" = 1 ]; then
  command -v taskset >/dev/null || die "--split-cpus needs taskset (util-linux)"
  mapfile -t allowed < <(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)), sep="\n")')
  [ "${#allowed[@]}" -ge 2 ] || die "--split-cpus needs at least 2 CPUs"
  half=$(( ${#allowed[@]} / 2 ))
  nodes_list="$(IFS=,; echo "${allowed[*]:0:$half}")"
  bench_list="$(IFS=,; echo "${allowed[*]:$half}")"
  bench_cpus=(taskset -c "$bench_list")
fi

# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_log "$out"
[ "$split" = 1 ] && launch=(taskset -c "$nodes_list")
[ "$split" = 1 ] && say "nodes on CPUs $nodes_list, the load generator on $bench_list"

# The busy share of each CPU between two /proc/stat samples.
busy() {
  python3 - "$1" "$2" <<'EOF'
import sys
a = {l.split()[0]: list(map(int, l.split()[1:])) for l in open(sys.argv[1]) if l[:3] == "cpu" and l[3] != " "}
b = {l.split()[0]: list(map(int, l.split()[1:])) for l in open(sys.argv[2]) if l[:3] == "cpu" and l[3] != " "}
parts = []
for cpu in sorted(a, key=lambda c: int(c[3:])):
    d = [y - x for x, y in zip(a[cpu], b[cpu])]
    total = sum(d) or 1
    parts.append(f"{cpu} {100 * (total - d[3] - d[4]) / total:.0f}%")
print(", ".join(parts))
EOF
}

run_mode() { # MODE ROUND
  local mode="$1" round="$2" dir="$out/data" creds=() flags=() w name
  [ "$mode" = auth ] && flags=(--auth)
  start_dev "$dir" "$port" "dev-$mode-$round" "${flags[@]}"
  [ "$mode" = auth ] && creds=(--cert "$dir/tls/client.pem" --cert-key "$dir/tls/client-key.pem")
  "$bench" put --registry "$dir/corekv.toml" "${creds[@]}" --keys "$keys" --prefill \
    --concurrency 256 --connections 8 --duration 1 --warmup 0 >/dev/null 2>"$out/prefill.err" \
    || die "prefill failed: $(tail -n 3 "$out/prefill.err")"
  for w in $workloads; do
    name="$w-$mode-$round"
    grep '^cpu' /proc/stat >"$out/$name.stat0"
    "${bench_cpus[@]}" "$bench" "$w" --registry "$dir/corekv.toml" "${creds[@]}" --keys "$keys" \
      --concurrency "$concurrency" --connections "$(( concurrency < 8 ? concurrency : 8 ))" \
      --warmup "$warmup" --duration "$duration" --label "$mode $w c=$concurrency" \
      --json "$out/$name.json" >"$out/$name.txt" 2>"$out/$name.progress" \
      || die "$name failed: $(tail -n 3 "$out/$name.progress")"
    grep '^cpu' /proc/stat >"$out/$name.stat1"
    busy "$out/$name.stat0" "$out/$name.stat1" >"$out/$name.cpu"
    say "round $round $mode $w: $(head -n 2 "$out/$name.txt" | tr -s ' \n' ' ')| busy: $(cat "$out/$name.cpu")"
  done
  cleanup
  rm -rf "$dir"
}

say "tls-cost: $rounds rounds of $workloads at c=$concurrency, ${duration}s each, $keys keys"
for round in $(seq 1 "$rounds"); do
  if [ $((round % 2)) = 1 ]; then order="plain auth"; else order="auth plain"; fi
  for mode in $order; do run_mode "$mode" "$round"; done
done

python3 - "$out" "$rounds" "$workloads" "$concurrency" <<'EOF' | tee "$out/table.md"
import json, sys
out, rounds, workloads, c = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4]
print(f"| C={c}, {rounds} rounds | plaintext ops/s | TLS and auth ops/s | throughput | p99 plaintext → TLS and auth |")
print("| --- | --- | --- | ---: | ---: |")
for w in workloads:
    runs = {m: [json.load(open(f"{out}/{w}-{m}-{r}.json")) for r in range(1, rounds + 1)]
            for m in ("plain", "auth")}
    ops = {m: [r["ops_per_sec"] for r in runs[m]] for m in runs}
    p99 = {m: [r["latency_us"]["p99"] / 1000 for r in runs[m]] for m in runs}
    mean = lambda xs: sum(xs) / len(xs)
    cell = lambda xs: ", ".join(f"{x:,.0f}" for x in xs) + f" ({mean(xs):,.0f})"
    print(f"| {w} | {cell(ops['plain'])} | {cell(ops['auth'])} | "
          f"{100 * (mean(ops['auth']) / mean(ops['plain']) - 1):+.1f}% | "
          f"{mean(p99['plain']):.2f} → {mean(p99['auth']):.2f} ms, "
          f"{100 * (mean(p99['auth']) / mean(p99['plain']) - 1):+.0f}% |")
EOF
