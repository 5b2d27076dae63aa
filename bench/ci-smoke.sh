#!/usr/bin/env bash
# CI smoke test of the benchmark and profiling tools: each runs for seconds on this machine and
# must produce well-formed output. No speed is asserted anywhere (DESIGN.md §8).
#
#   bench/ci-smoke.sh BIN_DIR [--with-etcd]
#
# BIN_DIR holds corekv, corekv-bench and corekv-flamegraph. --with-etcd also runs
# bench/compare-etcd.sh --quick against a real 3-member etcd (needs etcd on PATH and
# corekv-bench built with `--features etcd`); CI leaves it out to stay within its time limit.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:?usage: bench/ci-smoke.sh BIN_DIR [--with-etcd]}"
with_etcd="${2:-}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
say() { printf '\n-- %s\n' "$*"; }
# check_table TABLE ROWS SYSTEM...: summarize.py's table has ROWS rows of the SYSTEMs, each
# with a throughput and no errors.
check_table() {
  python3 - "$@" <<'EOF'
import sys
path, want, systems = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
table = open(path).read().splitlines()
rows = [l for l in table if l.startswith("| ") and any(f" {s} |" in l for s in systems)]
assert len(rows) == want, f"expected {want} rows of {systems}: {rows}"
for row in rows:
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[4].replace(",", "")) > 0, row
    assert cells[10] == "0", f"errors in {row}"
print(f"{path}: {want} rows, well-formed")
EOF
}
no_leftover_nodes() { # a spawned cluster's nodes must not outlive corekv-bench
  if pgrep -af 'corekv serve --registry [^ ]*corekv-bench'; then
    echo "nodes of a spawned cluster outlived corekv-bench" >&2
    exit 1
  fi
}

say "corekv-bench against a spawned cluster: ycsb-a and txn, JSON, .hgrm, plot"
for w in ycsb-a txn; do
  "$bin/corekv-bench" "$w" --spawn-cluster 3 --shards 2 --base-port 7400 --keys 500 --prefill \
    --concurrency 8 --warmup 0.5 --duration 1.5 --json "$work/$w.json" --hgrm "$work/$w.hgrm" \
    >"$work/$w.txt" 2>"$work/$w.err" || { cat "$work/$w.err"; exit 1; }
  cat "$work/$w.txt"
  grep -q '^#\[Max' "$work/$w.hgrm"
  no_leftover_nodes
done
"$bin/corekv-bench" plot "$work/ycsb-a.json" "$work/txn.json" --plot "$work/plot.svg"
python3 - "$work" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
work = sys.argv[1]
for w in ("ycsb-a", "txn"):
    r = json.load(open(f"{work}/{w}.json"))
    assert r["ops"] > 0 and r["ops_per_sec"] > 0, r
    assert sum(r["errors"].values()) == 0, r["errors"]
    for p in ("p50", "p99", "p999", "max"):
        assert r["latency_us"][p] > 0, (w, p)
    assert r["config"]["workload"] == w and r["machine"]["cores"] > 0
    assert len(r["percentiles"]) > 5
ET.parse(f"{work}/plot.svg")
print("bench outputs are well-formed")
EOF

say "corekv-bench backup: writes without and during a backup, then a restore"
"$bin/corekv-bench" backup --spawn-cluster 3 --shards 2 --base-port 7400 --keys 2000 --prefill \
  --concurrency 4 --duration 1 --json "$work/backup.json" >"$work/backup.txt" \
  2>"$work/backup.err" || { cat "$work/backup.err"; exit 1; }
cat "$work/backup.txt"
no_leftover_nodes
python3 - "$work/backup.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["backup_keys"] == 2000 and r["backup_bytes"] > 0 and r["restore_seconds"] > 0, r
for phase in ("writes_without", "writes_during"):
    assert r[phase]["errors"] == 0, r[phase]
assert r["writes_without"]["writes_per_sec"] > 0, r
print("backup outputs are well-formed")
EOF

say "corekv-bench refuses bad flags with a clear error"
if "$bin/corekv-bench" put --concurrency 0 --registry /nonexistent 2>"$work/bad.err"; then
  echo "corekv-bench accepted --concurrency 0" >&2; exit 1
fi
grep -q "at least 1" "$work/bad.err"

say "bench/compare-etcd.sh --quick: the HTTP gateway under wrk (HTTP/1.1) and h2load (HTTP/2)"
bench/compare-etcd.sh --quick --no-build --bin-dir "$bin" --systems "corekv-http corekv-http2" \
  --workloads "put get" --out "$work/http" >/dev/null
cat "$work/http/table.md"
check_table "$work/http/table.md" 8 corekv-http corekv-http2

say "bench/compare-redis.sh --quick: the Redis endpoint and Redis under redis-benchmark"
bench/compare-redis.sh --quick --no-build --bin-dir "$bin" --out "$work/redis" >/dev/null
cat "$work/redis/table.md"
python3 - "$work/redis/table.md" <<'EOF'
import sys
rows = [l for l in open(sys.argv[1]) if l.startswith("| SET") or l.startswith("| GET")]
assert len(rows) == 6, rows
for row in rows:
    rps = float(row.split("|")[3].replace(",", ""))
    assert rps > 0, row
print("the Redis comparison table is well-formed")
EOF

if [ "$with_etcd" = "--with-etcd" ]; then
say "bench/compare-etcd.sh --quick: corekv and a 3-member etcd, side by side"
bench/compare-etcd.sh --quick --no-build --bin-dir "$bin" --out "$work/compare" >/dev/null
cat "$work/compare/table.md"
check_table "$work/compare/table.md" 12 corekv etcd
python3 - "$work/compare" <<'EOF'
import sys, xml.etree.ElementTree as ET
out = sys.argv[1]
table = open(f"{out}/table.md").read().splitlines()
ratios = [l for l in table if l.startswith("| ") and l.rstrip().endswith("× |")]
assert len(ratios) == 6, ratios
for w in ("put", "get", "mixed"):
    ET.parse(f"{out}/latency-{w}-c16.svg")
print("comparison outputs are well-formed")
EOF
fi

say "perf/flamegraph.sh: perf record of a node under load, folded and drawn"
if [ "$(id -u)" != 0 ] && [ "$(cat /proc/sys/kernel/perf_event_paranoid)" -gt 1 ]; then
  echo "perf needs root or kernel.perf_event_paranoid <= 1" >&2; exit 1
fi
perf/flamegraph.sh --bin-dir "$bin" --seconds 3 --out "$work/fg/put.svg" \
  -- put --spawn-cluster 3 --shards 2 --base-port 7450 --concurrency 16 --warmup 0 --duration 6
python3 - "$work/fg" <<'EOF'
import sys, xml.etree.ElementTree as ET
d = sys.argv[1]
ET.parse(f"{d}/put.svg")
stacks = [l for l in open(f"{d}/put.folded") if l.strip()]
assert stacks, "no folded stacks"
for l in stacks:
    stack, count = l.rsplit(" ", 1)
    assert int(count) > 0 and stack
assert any("shard-" in l for l in stacks), "no samples from a shard executor"
print(f"flamegraph is well-formed: {len(stacks)} distinct stacks")
EOF
no_leftover_nodes
echo
echo "bench/ci-smoke.sh: all checks passed"
