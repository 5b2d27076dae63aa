#!/usr/bin/env bash
# The standard runs of DESIGN.md §8, corekv and etcd side by side, on this machine.
#
#   bench/compare-etcd.sh [--out DIR] [--runs N] [--duration S] [--warmup S]
#                         [--concurrency "1 16 64 256"] [--workloads "put get mixed"]
#                         [--keys N]
#                         [--systems "corekv corekv-tls corekv-tls-auth corekv-http corekv-http2 etcd"]
#                         [--bin-dir DIR] [--no-build]
#                         [--watch "WATCHERS@RATE ..."] [--expire "RATE@TTL_MS ..."]
#                         [--expire-with-leases] [--leases "LEASES@TTL_MS ..."] [--quick]
#
# Each system runs alone on the machine: first a 3-node, 2-shard corekv (`corekv dev`), then a
# 3-member etcd (the Debian package `etcd-server`, default durable settings: every write is
# fsynced before it is acknowledged) on loopback. Both get the same workloads from the same
# corekv-bench binary: 16-byte keys over --keys keys (prefilled once), 100-byte values,
# write-only (`put`), linearizable read-only (`get`) and 50/50 (`mixed`), closed loop at each
# concurrency, --runs runs each. The medians of the runs go to DIR/table.md with the ratio
# corekv/etcd per row; every run's JSON and .hgrm are kept in DIR; DIR/latency-*.svg overlay
# the two systems' latency curves at the highest concurrency. `corekv-tls` is the same corekv
# with TLS on every port and a client certificate (`corekv dev --tls`); `corekv-tls-auth` adds
# users and roles, every request checked (`corekv dev --auth`). `corekv-http` is the same
# corekv through one `corekv gateway` (the HTTP API), loaded by wrk (the Debian package) with
# bench/http.lua: the same keys, values and workloads, one request in flight per connection.
#
# --watch adds, per system, `corekv-bench watch` runs: WATCHERS watchers on one prefix while
# writes arrive at RATE per second (open loop); DIR/watch-table.md has their medians
# (acknowledgement-to-delivery delay, changes delivered per second, the servers' memory for
# the watchers). --workloads "" runs the watch runs alone.
#
# --expire adds, per system, `corekv-bench expire` runs: new keys put at RATE per second with a
# time to live of TTL_MS (etcd: leases of that many whole seconds, one granted every 100 ms for
# the keys put meanwhile), one watcher noting each expiry; DIR/expire/*.txt has each run's lag
# from deadline to the expiry's arrival (p50/p99/max) and the keys that never expired.
# --expire-with-leases makes corekv's keys go with leases too: one per key, granted with it.
#
# --leases adds, per system, `corekv-bench leases` runs: LEASES leases of TTL_MS kept alive
# every third of it; DIR/leases/*.txt has the keep-alives per second, their latency and the
# servers' CPU per keep-alive and per lease per second.
#
# --quick is the CI smoke run: 1 run of 1 s at concurrency 1 and 16 on 1,000 keys.
set -euo pipefail
cd "$(dirname "$0")/.."

out="bench/out/compare-$(date -u +%Y%m%dT%H%M%SZ)"
runs=3
duration=10
warmup=2
concurrency="1 16 64 256"
workloads="put get mixed"
keys=100000
systems="corekv etcd"
watch=""
expire=""
expire_leases=0
leases=""
bin_dir="target/release"
build=1
corekv_port=7500
etcd_port=12379
gateway_port=7680

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "compare-etcd.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --runs) runs="${2:?}"; shift 2 ;;
    --duration) duration="${2:?}"; shift 2 ;;
    --warmup) warmup="${2:?}"; shift 2 ;;
    --concurrency) concurrency="${2:?}"; shift 2 ;;
    --workloads) workloads="${2?}"; shift 2 ;;
    --keys) keys="${2:?}"; shift 2 ;;
    --systems) systems="${2:?}"; shift 2 ;;
    --watch) watch="${2?}"; shift 2 ;;
    --expire) expire="${2?}"; shift 2 ;;
    --expire-with-leases) expire_leases=1; shift ;;
    --leases) leases="${2?}"; shift 2 ;;
    --bin-dir) bin_dir="${2:?}"; shift 2 ;;
    --no-build) build=0; shift ;;
    --quick) runs=1; duration=1; warmup=0.5; concurrency="1 16"; keys=1000; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
case "$runs" in ''|*[!0-9]*|0) die "--runs must be a positive integer" ;; esac
for w in $workloads; do
  case "$w" in put|get|mixed) ;; *) die "unknown workload '$w' (put, get or mixed)" ;; esac
done
for spec in $watch; do
  case "$spec" in *@*) ;; *) die "--watch takes WATCHERS@RATE pairs, not '$spec'" ;; esac
  case "${spec%@*}${spec#*@}" in ''|*[!0-9]*) die "--watch '$spec': numbers, like 1000@1000" ;; esac
done
for spec in $expire; do
  case "$spec" in *@*) ;; *) die "--expire takes RATE@TTL_MS pairs, not '$spec'" ;; esac
  case "${spec%@*}${spec#*@}" in ''|*[!0-9]*) die "--expire '$spec': numbers, like 10000@2000" ;; esac
done
for spec in $leases; do
  case "$spec" in *@*) ;; *) die "--leases takes LEASES@TTL_MS pairs, not '$spec'" ;; esac
  case "${spec%@*}${spec#*@}" in ''|*[!0-9]*) die "--leases '$spec': numbers, like 1000@3000" ;; esac
done
for s in $systems; do
  case "$s" in
    corekv|corekv-tls|corekv-tls-auth|corekv-http|corekv-http2|etcd) ;;
    *) die "unknown system '$s' (corekv, corekv-tls, corekv-tls-auth, corekv-http, corekv-http2 or etcd)" ;;
  esac
done
case " $systems " in *" corekv-http "*)
  command -v wrk >/dev/null || die "wrk not found: apt-get install wrk"
esac
case " $systems " in *" corekv-http2 "*)
  command -v h2load >/dev/null || die "h2load not found: apt-get install nghttp2-client"
esac
case " $systems " in *" etcd "*)
  command -v etcd >/dev/null || die "etcd not found: apt-get install etcd-server"
esac

if [ "$build" = 1 ]; then
  profile=release
  [ "$bin_dir" = target/debug ] && profile=dev
  cargo build --profile "$profile" -p corekv-server -p corekv-bench --features corekv-bench/etcd
fi
bench="$bin_dir/corekv-bench"
corekv="$bin_dir/corekv"
[ -x "$bench" ] || die "$bench not found (build it, or give --bin-dir)"
[ -x "$corekv" ] || die "$corekv not found (build it, or give --bin-dir)"

# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_log "$out"

start_corekv() {
  local dir="$out/corekv-data" tls=()
  case "${1:-}" in tls) tls=(--tls) ;; auth) tls=(--auth) ;; esac
  start_dev "$dir" "$corekv_port" corekv-dev "${tls[@]}"
  target_args=(--registry "$dir/corekv.toml")
  [ "${#tls[@]}" -gt 0 ] && target_args+=(--cert "$dir/tls/client.pem" --cert-key "$dir/tls/client-key.pem")
  return 0
}

# One `corekv gateway` in front of the running corekv, on one thread: it shares the machine's
# CPUs with the three nodes and wrk, and hand-offs between its threads cost more than a
# second thread gains there (bench/RESULTS.md).
start_gateway() {
  "$corekv" gateway --registry "$out/corekv-data/corekv.toml" \
    --listen "127.0.0.1:$gateway_port" --max-connections 8192 --threads 1 \
    >"$out/gateway.out" 2>"$out/gateway.err" &
  pids+=("$!")
  local i
  for i in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$gateway_port/health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  cat "$out/gateway.err" >&2
  die "corekv gateway did not come up (see $out/gateway.err)"
}

# One run through the gateway: wrk with bench/http.lua, after a warm-up run.
run_http() {
  local w="$1" c="$2" name="$3" threads=2 warm="${warmup%.*}"
  [ "$c" -lt 2 ] && threads=1
  [ "${warm:-0}" -lt 1 ] && warm=1
  local url="http://127.0.0.1:$gateway_port"
  WORKLOAD="$w" KEYS="$keys" CONCURRENCY="$c" \
    wrk -t"$threads" -c"$c" -d"${warm}s" --timeout 10s -s bench/http.lua "$url" \
    >/dev/null 2>&1 || true
  WORKLOAD="$w" KEYS="$keys" CONCURRENCY="$c" JSON="$out/$name.json" \
    wrk -t"$threads" -c"$c" -d"${duration}s" --timeout 10s -s bench/http.lua "$url" \
    >"$out/$name.txt" 2>"$out/$name.progress" \
    || die "$name failed: $(tail -n 3 "$out/$name.progress")"
}

# One run through the gateway over HTTP/2: h2load over a fixed list of random keys' URLs.
run_http2() {
  local w="$1" c="$2" name="$3" conns streams threads=1 warm="${warmup%.*}"
  conns="$(connections_for "$c")"
  streams=$((c / conns))
  [ "$conns" -ge 2 ] && threads=2
  [ "${warm:-0}" -lt 1 ] && warm=1
  python3 - "$out/h2-urls.txt" "$keys" "http://127.0.0.1:$gateway_port" <<'EOF'
import random, sys
path, keys, base = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(path, "w") as f:
    for _ in range(16384):
        f.write(f"{base}/v1/kv/k{random.randrange(keys):015d}\n")
EOF
  local put=()
  if [ "$w" = put ]; then
    printf 'v%.0s' $(seq 100) >"$out/h2-value"
    put=(-d "$out/h2-value" -H ':method: PUT')
  fi
  rm -f "$out/$name.h2log"
  h2load "${put[@]}" -i "$out/h2-urls.txt" -c "$conns" -m "$streams" -t "$threads" \
    -D "$duration" --warm-up-time "$warm" --log-file "$out/$name.h2log" \
    >"$out/$name.txt" 2>"$out/$name.progress" \
    || die "$name failed: $(tail -n 3 "$out/$name.progress")"
  python3 bench/h2load-result.py "$out/$name.txt" "$out/$name.h2log" "$w" "$c" "$out/$name.json" \
    || die "$name: h2load's output was not understood"
  rm -f "$out/$name.h2log"
}

start_etcd() {
  local cluster="" i client peer
  for i in 1 2 3; do
    peer=$((etcd_port + 10 * i + 1))
    cluster+="${cluster:+,}e$i=http://127.0.0.1:$peer"
  done
  local endpoints=""
  for i in 1 2 3; do
    client=$((etcd_port + 10 * i))
    peer=$((client + 1))
    rm -rf "$out/etcd-data/e$i"
    mkdir -p "$out/etcd-data"
    etcd --name "e$i" --data-dir "$out/etcd-data/e$i" \
      --listen-client-urls "http://127.0.0.1:$client" \
      --advertise-client-urls "http://127.0.0.1:$client" \
      --listen-peer-urls "http://127.0.0.1:$peer" \
      --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token corekv-compare >"$out/etcd-e$i.log" 2>&1 &
    pids+=("$!")
    endpoints+="${endpoints:+,}http://127.0.0.1:$client"
  done
  for i in $(seq 1 300); do
    if curl -fsS "http://127.0.0.1:$((etcd_port + 10))/health" 2>/dev/null | grep '"health":"true"' >/dev/null; then
      target_args=(--target etcd --endpoints "$endpoints")
      return 0
    fi
    sleep 0.2
  done
  tail -n 20 "$out"/etcd-e*.log >&2
  die "etcd did not become healthy"
}

# Connections (client instances) the requests are spread over: one per 32 in flight, at most 8.
connections_for() { local c=$(( ($1 + 31) / 32 )); [ "$c" -gt 8 ] && c=8; echo "$c"; }

run_system() {
  local system="$1" w c r name
  say "starting $system"
  case "$system" in
    corekv) start_corekv ;;
    corekv-tls) start_corekv tls ;;
    corekv-tls-auth) start_corekv auth ;;
    corekv-http|corekv-http2) start_corekv && start_gateway ;;
    *) start_etcd ;;
  esac
  if [ -n "$workloads" ]; then
    say "$system: prefilling $keys keys"
    "$bench" put "${target_args[@]}" --keys "$keys" --prefill --ops 1 --warmup 0 \
      >>"$log" 2>&1 || die "$system prefill failed: $(tail -n 5 "$log")"
  fi
  for w in $workloads; do
    for c in $concurrency; do
      for r in $(seq 1 "$runs"); do
        name="$system-$w-c$c-r$r"
        if [ "$system" = corekv-http ] || [ "$system" = corekv-http2 ]; then
          if [ "$system" = corekv-http ]; then
            run_http "$w" "$c" "$name"
          elif [ "$w" = mixed ]; then
            say "$name: skipped (h2load sends one method per run)"
            continue
          else
            run_http2 "$w" "$c" "$name"
          fi
          say "$name: $(grep -o '"ops_per_sec": [0-9.]*' "$out/$name.json")"
          continue
        fi
        "$bench" "$w" "${target_args[@]}" --keys "$keys" --concurrency "$c" \
          --connections "$(connections_for "$c")" --warmup "$warmup" --duration "$duration" \
          --label "$system $w c=$c" --json "$out/$name.json" --hgrm "$out/$name.hgrm" \
          >"$out/$name.txt" 2>"$out/$name.progress" \
          || die "$name failed: $(tail -n 3 "$out/$name.progress")"
        say "$name: $(head -n 2 "$out/$name.txt" | tr -s ' \n' ' ')"
      done
    done
  done
  local spec watchers rate
  if [ "$system" = corekv-http ] || [ "$system" = corekv-http2 ]; then
    cleanup
    return 0 # the watch, expiry and lease runs speak the native protocol
  fi
  for spec in $watch; do
    watchers="${spec%@*}"
    rate="${spec#*@}"
    mkdir -p "$out/watch"
    for r in $(seq 1 "$runs"); do
      name="$system-watch-$watchers-at-$rate-r$r"
      "$bench" watch "${target_args[@]}" --watchers "$watchers" --rate "$rate" --keys 1000 \
        --connections "$(connections_for "$watchers")" --warmup "$warmup" --duration "$duration" \
        --json "$out/watch/$name.json" --hgrm "$out/watch/$name.hgrm" \
        >"$out/watch/$name.txt" 2>"$out/watch/$name.progress" \
        || die "$name failed: $(tail -n 3 "$out/watch/$name.progress")"
      say "$name: $(head -n 1 "$out/watch/$name.txt")"
    done
  done
  local ttl
  for spec in $expire; do
    rate="${spec%@*}"
    ttl="${spec#*@}"
    mkdir -p "$out/expire"
    for r in $(seq 1 "$runs"); do
      name="$system-expire-$rate-ttl-$ttl-r$r"
      extra=()
      if [ "$system" = corekv ] && [ "$expire_leases" = 1 ]; then
        extra=(--with-leases)
        name="$system-expire-leases-$rate-ttl-$ttl-r$r"
      fi
      "$bench" expire "${target_args[@]}" "${extra[@]}" --rate "$rate" --ttl-ms "$ttl" \
        --warmup "$warmup" --duration "$duration" --json "$out/expire/$name.json" \
        >"$out/expire/$name.txt" 2>"$out/expire/$name.progress" \
        || die "$name failed: $(tail -n 3 "$out/expire/$name.progress")"
      say "$name: $(head -n 1 "$out/expire/$name.txt")"
    done
  done
  local count
  for spec in $leases; do
    count="${spec%@*}"
    ttl="${spec#*@}"
    mkdir -p "$out/leases"
    for r in $(seq 1 "$runs"); do
      name="$system-leases-$count-ttl-$ttl-r$r"
      "$bench" leases "${target_args[@]}" --leases "$count" --ttl-ms "$ttl" \
        --connections 4 --warmup "$warmup" --duration "$duration" --json "$out/leases/$name.json" \
        >"$out/leases/$name.txt" 2>"$out/leases/$name.progress" \
        || die "$name failed: $(tail -n 3 "$out/leases/$name.progress")"
      say "$name: $(tr -s ' \n' ' ' <"$out/leases/$name.txt")"
    done
  done
  cleanup
}

say "corekv-bench compare: systems=[$systems] workloads=[$workloads] concurrency=[$concurrency] runs=$runs duration=${duration}s warmup=${warmup}s keys=$keys out=$out"
for system in $systems; do
  run_system "$system"
done

if [ -n "$workloads" ]; then
  python3 bench/summarize.py "$out" | tee "$out/table.md"
fi
if [ -n "$watch" ]; then
  python3 bench/summarize.py --watch "$out/watch" | tee "$out/watch-table.md"
fi

# Latency curves of the highest concurrency, both systems overlaid (the median run of each).
top="${concurrency##* }"
for w in $workloads; do
  files=()
  for system in $systems; do
    # wrk and h2load keep no latency histogram file.
    [ "$system" = corekv-http ] || [ "$system" = corekv-http2 ] && continue
    median="$(python3 bench/summarize.py --median-file "$out" "$system" "$w" "$top")"
    [ -n "$median" ] && files+=("$median")
  done
  if [ "${#files[@]}" -gt 0 ]; then
    "$bench" plot "${files[@]}" --plot "$out/latency-$w-c$top.svg" >>"$log"
  fi
done
say "done: $out/table.md, $out/latency-*.svg"
