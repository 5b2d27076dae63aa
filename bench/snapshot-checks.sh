#!/usr/bin/env bash
# Snapshot measurements on release builds, against a 3-node cluster with one shard:
#
#   1. pause:   client latency while the shard, holding 1M keys of 100 bytes, takes
#               snapshots under a steady open-loop write load, and the same load with
#               snapshots off for comparison: percentiles, the longest request, and how many
#               one-second intervals held a request over 10 ms (the per-second maxima are in
#               OUT_DIR/*.progress, with the UTC time to line them up with the servers' logs).
#               Beside the writes, an open-loop probe of linearizable reads (500/s) runs. A
#               read writes nothing, but its ReadIndex round waits for a follower's heartbeat
#               response, which raft-rs releases only after that follower's earlier WAL
#               flushes: reads see executor stalls and the followers' flush stalls, not the
#               leader's;
#   2. restart: the time from starting a node holding 1M keys (a snapshot and the WAL after
#               it) to its /health answering 200, after SIGTERM and after SIGKILL;
#   3. disk:    the data directory of every node, sampled during a long run of overwrites
#               with the default snapshot thresholds.
#
#   bench/snapshot-checks.sh [OUT_DIR] [DISK_RUN_SECONDS]
#
# With DATA_ON=tmpfs in the environment (root only), the nodes' data directories live on a
# tmpfs mounted for the run: the disk's flush latency leaves the measurement, and what remains
# is what the snapshot itself costs the executors (CPU, memory, locks). The restart figures on
# tmpfs say nothing about a disk; use them only beside a run on the disk. With KEEP_LOGS=1
# the nodes' logs are copied to OUT_DIR at the end.
#
# Results (JSON from corekv-bench, the samples and a summary) go to OUT_DIR
# (default target/snapshot-checks).
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-target/snapshot-checks}
disk_seconds=${2:-300}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cargo build --release -q -p corekv-server -p corekv-bench
bin=$(pwd)/target/release
dir=$(mktemp -d -p "$(pwd)/target" snapshot-checks.XXXXXX)
base=7800
pids=()
data_on=${DATA_ON:-disk}

cleanup() {
  for pid in "${pids[@]:-}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP_LOGS:-}" ]; then cp "$dir"/node-*.log "$out"/ 2>/dev/null || true; fi
  if [ "$data_on" = tmpfs ]; then umount "$dir" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

case $data_on in
  disk) ;;
  tmpfs) mount -t tmpfs -o size=6g corekv-checks "$dir" ;;
  *) echo "DATA_ON must be disk or tmpfs, not '$data_on'" >&2; exit 2 ;;
esac
echo "data directories on: $data_on ($dir)" | tee "$out/data-on.txt"

cat > "$dir/corekv.toml" <<EOF
cluster = "snapshot-checks"
shards = 1
EOF
for i in 1 2 3; do
  cat >> "$dir/corekv.toml" <<EOF

[[node]]
id = $i
host = "127.0.0.1"
client_port = $((base + i))
peer_port = $((base + 10 + i))
http_port = $((base + 20 + i))
EOF
done
export COREKV_REGISTRY=$dir/corekv.toml

# Each node's executor on its own CPU, wrapping round, as `corekv dev` places them (without
# --cpus every node would put its shard 0 on the first CPU).
ncpu=$(nproc)
start_node() { # id extra-args...
  local id=$1; shift
  "$bin/corekv" serve --registry "$dir/corekv.toml" --node-id "$id" --data-dir "$dir/node-$id" \
    --cpus $(((id - 1) % ncpu)) "$@" \
    >> "$dir/node-$id.log" 2>&1 &
  pids[id]=$!
}

wait_health() { # id -> seconds waited
  local id=$1 t0
  t0=$(date +%s.%N)
  until curl -sf "http://127.0.0.1:$((base + 20 + id))/health" >/dev/null 2>&1; do sleep 0.005; done
  echo "$(date +%s.%N) - $t0" | bc
}

metric() { # id name
  curl -s "http://127.0.0.1:$((base + 20 + $1))/metrics" | awk -v m="$2{" 'index($0, m) == 1 {s += $2} END {print s + 0}'
}

slow_seconds() { # progress-file: how many one-second intervals had a request over 10 ms
  awk '{for (i = 1; i < NF; i++) if ($i == "max") { n++; if ($(i + 1) > 10000) slow++ }}
       END {printf "seconds with a request over 10 ms: %d of %d\n", slow, n}' "$1"
}

snapshot_args=(--snapshot-entries 20000)
for i in 1 2 3; do start_node "$i" "${snapshot_args[@]}"; done
for i in 1 2 3; do wait_health "$i" >/dev/null; done
sleep 2

echo "== prefill: 1,000,000 keys of 100 bytes"
"$bin/corekv-bench" put --prefill --keys 1000000 --value-size 100 --ops 1 --warmup 0 > /dev/null

read_probe() { # name: linearizable reads beside the writes, in the background
  "$bin/corekv-bench" get --keys 1000000 --rate 500 --warmup 2 --duration 60 \
    --label "reads beside $1" --json "$out/reads-$1.json" \
    > "$out/reads-$1.txt" 2> "$out/reads-$1.progress" &
  probe=$!
}
probe_done() { # name
  wait "$probe"
  cat "$out/reads-$1.txt"
  slow_seconds "$out/reads-$1.progress" | tee -a "$out/reads-$1.txt"
}

echo "== 1. pause during snapshots (open loop, 2,000 writes/s for 60 s, reads beside them)"
before=$(metric 1 corekv_snapshots_total)
read_probe with-snapshots
"$bin/corekv-bench" put --keys 1000000 --rate 2000 --warmup 2 --duration 60 \
  --label "writes during snapshots" --json "$out/pause-with-snapshots.json" \
  2> "$out/pause-with-snapshots.progress" | tee "$out/pause-with-snapshots.txt"
slow_seconds "$out/pause-with-snapshots.progress" | tee -a "$out/pause-with-snapshots.txt"
probe_done with-snapshots
grep -h "taking a snapshot\|snapshot durable" "$dir/node-1.log" | tail -n 12 > "$out/snapshot-times.txt"
after=$(metric 1 corekv_snapshots_total)
echo "snapshots taken by node 1 during the run: $((after - before))" | tee -a "$out/pause-with-snapshots.txt"
curl -s "http://127.0.0.1:$((base + 21))/metrics" | grep "^corekv_snapshot_duration_seconds_\(sum\|count\)" \
  | tee -a "$out/pause-with-snapshots.txt"

echo "== 2. restart of a node holding 1M keys"
for signal in TERM KILL; do
  kill "-$signal" "${pids[2]}"; wait "${pids[2]}" 2>/dev/null || true
  start_node 2 "${snapshot_args[@]}"
  seconds=$(wait_health 2)
  echo "restart after SIG$signal: ${seconds}s to /health 200" | tee -a "$out/restart.txt"
  grep "state recovered" "$dir/node-2.log" | tail -n 1 | tee -a "$out/restart.txt"
  sleep 2
done

echo "== 1b. the same load with snapshots off (restart the nodes with high thresholds)"
for i in 1 2 3; do kill -TERM "${pids[$i]}"; wait "${pids[$i]}" 2>/dev/null || true; done
for i in 1 2 3; do start_node "$i" --snapshot-entries 100000000 --snapshot-log-mib 100000; done
for i in 1 2 3; do wait_health "$i" >/dev/null; done
sleep 2
read_probe without-snapshots
"$bin/corekv-bench" put --keys 1000000 --rate 2000 --warmup 2 --duration 60 \
  --label "writes, no snapshots" --json "$out/pause-without-snapshots.json" \
  2> "$out/pause-without-snapshots.progress" | tee "$out/pause-without-snapshots.txt"
slow_seconds "$out/pause-without-snapshots.progress" | tee -a "$out/pause-without-snapshots.txt"
probe_done without-snapshots

if [ "$disk_seconds" = 0 ]; then exit 0; fi
echo "== 3. disk use under ${disk_seconds}s of overwrites (default snapshot thresholds)"
for i in 1 2 3; do kill -TERM "${pids[$i]}"; wait "${pids[$i]}" 2>/dev/null || true; done
rm -rf "$dir"/node-*
for i in 1 2 3; do start_node "$i"; done
for i in 1 2 3; do wait_health "$i" >/dev/null; done
sleep 2
(
  for _ in $(seq 1 $((disk_seconds / 15))); do
    sleep 15
    printf '%s' "$(date +%s)"
    for i in 1 2 3; do printf ' %s' "$(du -sb "$dir/node-$i" | cut -f1)"; done
    printf ' written=%s\n' "$(metric 1 corekv_wal_written_bytes_total)"
  done
) > "$out/disk-samples.txt" &
sampler=$!
"$bin/corekv-bench" put --keys 100000 --value-size 1000 --concurrency 64 --warmup 0 \
  --duration "$disk_seconds" --json "$out/disk-run.json" | tee "$out/disk-run.txt"
wait "$sampler" || true
cat "$out/disk-samples.txt"
