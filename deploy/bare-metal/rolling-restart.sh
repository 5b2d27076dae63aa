#!/usr/bin/env bash
# Restarts every node of a corekv cluster, one at a time, never taking a second node down
# before the first is back: before each restart and after it, every node must answer /health
# with 200 (each of its shards has a leader it hears from and is not catching up) and every
# replica of every shard must have applied what its leader had committed. Upgrades use the
# same procedure (install the new binary on a node, then restart it).
#
#   rolling-restart.sh [--registry FILE] [--restart-cmd CMD] [--timeout SECONDS] [NODE_ID...]
#
#   --registry FILE    the cluster's registry (default $COREKV_REGISTRY, then
#                      /etc/corekv/corekv.toml)
#   --restart-cmd CMD  how to restart one node; {id} and {host} are replaced (default:
#                      ssh {host} sudo systemctl restart corekv)
#   --timeout SECONDS  how long to wait for health before and after each restart (default 300)
#   NODE_ID...         the nodes to restart, in order (default: all, in registry order)
#
# Needs corekvctl (on PATH or beside this script), curl and python3.
# Exit status: 0 all restarted, 1 the cluster did not become healthy (the script stops there,
# with the reason), 2 bad arguments.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

registry=${COREKV_REGISTRY:-/etc/corekv/corekv.toml}
restart_cmd='ssh {host} sudo systemctl restart corekv'
timeout=300
nodes=()
while [ $# -gt 0 ]; do
  case "$1" in
    --registry) [ $# -ge 2 ] || usage; registry=$2; shift ;;
    --restart-cmd) [ $# -ge 2 ] || usage; restart_cmd=$2; shift ;;
    --timeout) [ $# -ge 2 ] || usage; timeout=$2; shift ;;
    -h | --help) usage ;;
    -*) echo "rolling-restart.sh: unknown option $1" >&2; usage ;;
    *) nodes+=("$1") ;;
  esac
  shift
done
[ -f "$registry" ] || { echo "rolling-restart.sh: registry $registry not found" >&2; exit 2; }
case "$timeout" in '' | *[!0-9]*) echo "rolling-restart.sh: bad --timeout" >&2; exit 2 ;; esac
ctl=$(command -v corekvctl || true)
[ -n "$ctl" ] || ctl=$here/corekvctl
[ -x "$ctl" ] || { echo "rolling-restart.sh: corekvctl not found" >&2; exit 2; }
export COREKV_REGISTRY=$registry

# "ID HOST HTTP_PORT" per node, from the registry.
node_table() {
  python3 - "$registry" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    reg = tomllib.load(f)
for n in reg["node"]:
    print(n["id"], n["host"], n["http_port"])
PY
}
mapfile -t table < <(node_table)
if [ ${#nodes[@]} -eq 0 ]; then
  for row in "${table[@]}"; do nodes+=("${row%% *}"); done
fi

# Whether the cluster is healthy, from `corekvctl status -o json` on stdin: every replica
# reachable, each shard has one leader that every replica follows, and every replica has
# applied at least what the leader had committed when the wait began (TARGETS, a file
# written on the first healthy-looking answer). Prints the reason when not.
check() { # targets-file
  python3 -c '
import json, sys
targets_path = sys.argv[1]
status = json.load(sys.stdin)
replicas = status["replicas"]
down = [r for r in replicas if "error" in r]
if down:
    r = down[0]
    node, shard, error = r["node_id"], r["shard"], r["error"]
    print(f"node {node} shard {shard} unreachable: {error}")
    sys.exit(1)
shards = {}
for r in replicas:
    shards.setdefault(r["shard"], []).append(r)
try:
    with open(targets_path) as f:
        targets = {int(k): v for k, v in json.load(f).items()}
except (FileNotFoundError, ValueError):
    targets = {}
for shard, rs in sorted(shards.items()):
    leaders = [r for r in rs if r["role"] == "leader"]
    if len(leaders) != 1:
        print(f"shard {shard}: {len(leaders)} leaders")
        sys.exit(1)
    leader = leaders[0]
    leader_id = leader["node_id"]
    strays = [r["node_id"] for r in rs if r["leader_id"] != leader_id]
    if strays:
        print(f"shard {shard}: nodes {strays} do not follow leader {leader_id} yet")
        sys.exit(1)
    targets.setdefault(shard, leader["commit_index"])
with open(targets_path, "w") as f:
    json.dump(targets, f)
for shard, rs in sorted(shards.items()):
    behind = [(r["node_id"], r["applied_index"]) for r in rs if r["applied_index"] < targets[shard]]
    if behind:
        print(f"shard {shard}: replicas (node, applied) {behind} behind commit {targets[shard]}")
        sys.exit(1)
' "$1"
}

# Why a node does not answer /health with 200 (nothing when it does).
unhealthy() { # id
  local body
  if body=$(curl -sf --max-time 2 "$(health_url "$1")" 2>/dev/null); then
    return 0
  fi
  body=$(curl -s --max-time 2 "$(health_url "$1")" 2>/dev/null | head -n 1)
  echo "node $1: /health is not 200 (${body:-no answer})"
}

wait_healthy() { # what-we-wait-for
  local what=$1 deadline reason targets row nid
  deadline=$(($(date +%s) + timeout))
  targets=$(mktemp)
  rm -f "$targets"
  while :; do
    reason=""
    for row in "${table[@]}"; do
      nid=${row%% *}
      reason=$(unhealthy "$nid")
      [ -z "$reason" ] || break
    done
    if [ -n "$reason" ]; then
      :
    elif ! reason=$("$ctl" status -o json --timeout 2s 2>&1 | check "$targets"); then
      :
    else
      rm -f "$targets"
      echo "  healthy ($what)"
      return 0
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      rm -f "$targets"
      echo "rolling-restart.sh: not healthy after ${timeout}s ($what): $reason" >&2
      return 1
    fi
    sleep 1
  done
}

node_row() { # id -> "HOST HTTP_PORT" from the registry (nothing when unknown)
  local row rid rest
  for row in "${table[@]}"; do
    read -r rid rest <<< "$row"
    if [ "$rid" = "$1" ]; then echo "$rest"; return; fi
  done
}

health_url() { # id
  local host port
  read -r host port <<< "$(node_row "$1")"
  echo "http://$host:$port/health"
}

host_of() { # id
  local host _port
  read -r host _port <<< "$(node_row "$1")"
  echo "$host"
}

for id in "${nodes[@]}"; do
  host=$(host_of "$id")
  [ -n "$host" ] || { echo "rolling-restart.sh: node $id is not in $registry" >&2; exit 2; }
done

for id in "${nodes[@]}"; do
  host=$(host_of "$id")
  echo "== node $id ($host)"
  wait_healthy "before restarting node $id" || exit 1
  cmd=${restart_cmd//\{id\}/$id}
  cmd=${cmd//\{host\}/$host}
  echo "  $cmd"
  if ! bash -c "$cmd"; then
    echo "rolling-restart.sh: restarting node $id failed: $cmd" >&2
    exit 1
  fi
  wait_healthy "node $id restarted and caught up" || exit 1
done
echo "all ${#nodes[@]} nodes restarted"
