#!/usr/bin/env bash
# Records a running corekv node with `perf` and writes an SVG flamegraph.
#
#   perf/flamegraph.sh [--pid PID] [--seconds S] [--frequency HZ] [--out FILE.svg]
#                      [--event EVENT] [--fp] [--title TEXT] [--bin-dir DIR]
#                      [-- BENCH-ARGS...]
#
# Without --pid it records the oldest `corekv serve` process on this machine. With
# `-- BENCH-ARGS...` it starts `corekv-bench BENCH-ARGS...` first and records while that runs
# (after a one-second head start), so one command gives a profile of a known load:
#
#   perf/flamegraph.sh --seconds 10 --out put-c256.svg -- put --concurrency 256 --duration 12
#
# perf samples with the `cpu-clock` software event by default (the event a VM without
# hardware counters has; give --event cycles on bare metal) and unwinds with DWARF, which
# needs no frame pointers (release builds keep line tables; `--profile profiling` adds full
# debug info). --fp uses frame pointers instead, far cheaper per sample, for a binary built
# with RUSTFLAGS="-C force-frame-pointers=yes" (see perf/README.md).
# The samples are folded by inferno's perf collapser and drawn by inferno's flamegraph
# renderer (`corekv-flamegraph`, built from bench/); FILE.folded keeps the folded stacks.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

pid=""
seconds=10
frequency=499
out="$root/perf/out/flamegraph-$(date -u +%Y%m%dT%H%M%SZ).svg"
event="cpu-clock"
call_graph="dwarf,16384"
title=""
bin_dir="$root/target/release"
bench_args=()

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "flamegraph.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --pid) pid="${2:?--pid needs a process id}"; shift 2 ;;
    --seconds) seconds="${2:?}"; shift 2 ;;
    --frequency) frequency="${2:?}"; shift 2 ;;
    --out) out="${2:?}"; shift 2 ;;
    --event) event="${2:?}"; shift 2 ;;
    --fp) call_graph="fp"; shift ;;
    --title) title="${2:?}"; shift 2 ;;
    --bin-dir) bin_dir="${2:?}"; shift 2 ;;
    --) shift; bench_args=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
case "$seconds" in ''|*[!0-9]*|0) die "--seconds must be a positive whole number" ;; esac
command -v perf >/dev/null || die "perf not found (Debian: apt-get install linux-perf)"
fold="$bin_dir/corekv-flamegraph"
[ -x "$fold" ] || die "$fold not found: cargo build --release -p corekv-bench (or give --bin-dir)"

mkdir -p "$(dirname "$out")"
bench_pid=""
cleanup() { [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null; true; }
trap cleanup EXIT
if [ "${#bench_args[@]}" -gt 0 ]; then
  [ -x "$bin_dir/corekv-bench" ] || die "$bin_dir/corekv-bench not found"
  "$bin_dir/corekv-bench" "${bench_args[@]}" >"${out%.svg}.bench.txt" 2>&1 &
  bench_pid=$!
  sleep 1
  kill -0 "$bench_pid" 2>/dev/null \
    || die "corekv-bench exited at once: $(tail -n 3 "${out%.svg}.bench.txt")"
fi

if [ -z "$pid" ]; then
  # A spawned cluster (`corekv-bench --spawn-cluster`) may need a moment to start its nodes.
  for _ in $(seq 1 100); do
    pid="$(pgrep -o -f 'corekv serve' || true)"
    [ -n "$pid" ] && break
    sleep 0.2
  done
  [ -n "$pid" ] || die "no running 'corekv serve' process; give --pid"
fi
kill -0 "$pid" 2>/dev/null || die "process $pid is not running"
[ -n "$title" ] || title="corekv pid $pid, $event, ${seconds}s"

data="$(mktemp --suffix=.perf.data)"
trap 'cleanup; rm -f "$data"' EXIT
echo "flamegraph.sh: recording pid $pid for ${seconds}s ($event at ${frequency} Hz, --call-graph $call_graph)" >&2
# A node's io_uring worker threads (iou-wrk-*) come and go; when one exits between perf
# listing the threads and opening them, perf may give up ("Ignored open failure for pid N",
# non-zero exit). That is a race, not a lasting failure: try again, up to three times.
for attempt in 1 2 3; do
  if perf record -e "$event" -F "$frequency" --call-graph "$call_graph" -p "$pid" -o "$data" \
    -- sleep "$seconds" 2>"${out%.svg}.perf-record.txt"; then
    break
  fi
  if [ "$attempt" -eq 3 ] || ! kill -0 "$pid" 2>/dev/null; then
    die "perf record failed: $(tail -n 3 "${out%.svg}.perf-record.txt")"
  fi
  echo "flamegraph.sh: perf record failed ($(tail -n 1 "${out%.svg}.perf-record.txt")); again" >&2
done
perf script -i "$data" 2>/dev/null \
  | "$fold" --title "$title" --folded "${out%.svg}.folded" >"$out"
if [ -n "$bench_pid" ]; then
  wait "$bench_pid" || echo "flamegraph.sh: corekv-bench failed, see ${out%.svg}.bench.txt" >&2
  bench_pid=""
fi
echo "flamegraph.sh: wrote $out ($(wc -l <"${out%.svg}.folded") distinct stacks)" >&2
