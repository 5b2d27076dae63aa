#!/usr/bin/env bash
# WAL micro-benchmark beside fio on the same directory.
#
#   bench/wal-vs-fio.sh [DIR] [SECONDS]
#
# Runs, in DIR (default: a temporary directory under ./target), for SECONDS each (default 10):
#   - fio sequential 1 MiB O_DIRECT writes with an fdatasync after each, and the WAL with
#     1 MiB of records per flush (one write and one fdatasync per flush): bandwidth;
#   - fio 4 KiB O_DIRECT writes with an fdatasync after each, and the WAL with one 4 KiB
#     record per flush: the latency of one durable write.
# fio runs with the psync engine (pwrite + fdatasync syscalls) and the io_uring engine (the
# kernel path glommio uses). The WAL runs pipelined (the next batch is appended while the
# previous flush is in flight, as in the server) and --sequential.
# fio overwrites a file it lays out first (--overwrite=1), as the WAL overwrites its prepared
# segments: both measure overwrites of written blocks, never first writes into holes.
# Needs fio (Debian package `fio`) and a release build of corekv-wal.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${1:-}
seconds=${2:-10}
if [ -z "$dir" ]; then
  mkdir -p target
  dir=$(mktemp -d -p target wal-bench.XXXXXX)
  trap 'rm -rf "$dir"' EXIT
fi
mkdir -p "$dir"
command -v fio >/dev/null || { echo "wal-vs-fio.sh: fio not found (apt-get install fio)" >&2; exit 2; }
cargo build --release -q -p corekv-server --bin corekv-wal
wal=target/release/corekv-wal

fio_run() { # bs engine
  fio --name=wal --filename="$dir/fio.dat" --rw=write --bs="$1" --direct=1 --fdatasync=1 \
    --overwrite=1 --size=256M --runtime="$seconds" --time_based --ioengine="$2" \
    --output-format=json 2>/dev/null
}

fio_report() { # label
  python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
w, s = j["write"], j["sync"]["lat_ns"]
p = lambda h, q: h["percentile"][q] / 1000
print("%s: %.1f MiB/s, %.0f ops/s; write p50 %.0f us; fdatasync p50 %.0f us p99 %.0f us; write+fdatasync p50 ~%.0f us" % (
  sys.argv[1], w["bw_bytes"] / 1048576, w["iops"], p(w["clat_ns"], "50.000000"),
  p(s, "50.000000"), p(s, "99.000000"), p(w["clat_ns"], "50.000000") + p(s, "50.000000")))' "$1"
}

wal_run() { # flush-bytes [--sequential]
  rm -rf "$dir/wal"
  local extra=()
  if [ -n "${2:-}" ]; then extra=("$2"); fi
  "$wal" bench "$dir/wal" --flush-bytes "$1" --record-bytes 4064 --seconds "$seconds" "${extra[@]}"
}

echo "== 1 MiB per flush"
for engine in psync io_uring; do fio_run 1m "$engine" | fio_report "fio bs=1m $engine"; done
wal_run 1048576
wal_run 1048576 --sequential

echo "== 4 KiB per flush"
for engine in psync io_uring; do fio_run 4k "$engine" | fio_report "fio bs=4k $engine"; done
wal_run 4096
wal_run 4096 --sequential
rm -rf "$dir/fio.dat" "$dir/wal"
