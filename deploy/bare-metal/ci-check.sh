#!/usr/bin/env bash
# Checks the deployment files as far as a machine without NVMe or systemd running can.
# Runs shellcheck on every script, systemd-analyze on the unit, install.sh into a temporary root
# (twice: it must be idempotent and keep edited config), setup-nvme.sh in dry-run mode against
# a file (and a loop device when one can be made), the alert rules against the metrics a real
# node exports, and rolling-restart.sh against a local 3-node cluster.
#
#   deploy/bare-metal/ci-check.sh BIN_DIR     (BIN_DIR holds corekv and corekvctl)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=$(cd "${1:?usage: ci-check.sh BIN_DIR}" && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]:-}"; do kill -TERM "$pid" 2>/dev/null || true; done
  if [ -f "$work/pids" ]; then
    while read -r pid; do kill -TERM "$pid" 2>/dev/null || true; done < "$work/pids"
  fi
  if [ -n "${loop:-}" ]; then losetup -d "$loop" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "ci-check: FAILED: $*" >&2; exit 1; }
step() { printf -- '-- %s\n' "$*"; }

step "shellcheck"
mapfile -t scripts < <(cd "$root" && git ls-files '*.sh' .ci/run)
(cd "$root" && shellcheck "${scripts[@]}")

step "install.sh --prefix"
prefix=$work/root
"$here/install.sh" --prefix "$prefix" --bin-dir "$bin" \
  --registry "$here/registry/cluster-3-nodes.toml" --node-id 2 > "$work/install1.log"
for f in usr/local/bin/corekv usr/local/bin/corekvctl etc/systemd/system/corekv.service \
  etc/systemd/system/corekv-gateway.service etc/corekv/corekv-gateway.env \
  etc/sysctl.d/90-corekv.conf etc/corekv/corekv.env etc/corekv/corekv.toml \
  usr/local/share/doc/corekv/RUNBOOK.md usr/local/share/doc/corekv/TUNING.md \
  usr/local/share/corekv/corekv-alerts.yml usr/local/share/corekv/rolling-restart.sh \
  usr/local/share/corekv/setup-nvme.sh; do
  [ -s "$prefix/$f" ] || fail "install.sh did not place $f"
done
[ -x "$prefix/usr/local/bin/corekv" ] || fail "corekv is not executable"
[ -d "$prefix/srv/corekv/data" ] || fail "no data directory"
grep -qx 'COREKV_NODE_ID=2' "$prefix/etc/corekv/corekv.env" || fail "node id not written"
cmp -s "$here/registry/cluster-3-nodes.toml" "$prefix/etc/corekv/corekv.toml" || fail "registry differs"
"$prefix/usr/local/bin/corekv" --version > /dev/null || fail "installed corekv does not run"
(cd "$prefix" && find . -type f | sort | xargs md5sum) > "$work/tree1"
echo "COREKV_ARGS=--snapshot-entries 1000" >> "$prefix/etc/corekv/corekv.env"
"$here/install.sh" --prefix "$prefix" --bin-dir "$bin" \
  --registry "$here/registry/cluster-3-nodes.toml" --node-id 2 > "$work/install2.log"
grep -q 'snapshot-entries 1000' "$prefix/etc/corekv/corekv.env" || fail "a second install lost the edited env file"
(cd "$prefix" && find . -type f | sort | xargs md5sum) | grep -v 'etc/corekv/corekv.env' > "$work/tree2"
grep -v 'etc/corekv/corekv.env' "$work/tree1" | diff - "$work/tree2" || fail "a second install changed other files"
"$here/install.sh" --prefix "$prefix" --bin-dir "$bin" --node-id 3 --force-config > /dev/null
grep -qx 'COREKV_NODE_ID=3' "$prefix/etc/corekv/corekv.env" || fail "--force-config did not rewrite the env file"
if "$here/install.sh" --prefix "$prefix" --bin-dir "$work/nowhere" > /dev/null 2>&1; then
  fail "install.sh accepted a missing binary directory"
fi

step "systemd-analyze verify"
# The installed unit, with ExecStart pointing at the installed binary under the prefix (verify
# checks that the command exists and is executable).
mkdir -p "$work/units"
sed "s|/usr/local/bin/corekv|$prefix/usr/local/bin/corekv|" \
  "$prefix/etc/systemd/system/corekv.service" > "$work/units/corekv.service"
sed "s|/usr/local/bin/corekv|$prefix/usr/local/bin/corekv|" \
  "$prefix/etc/systemd/system/corekv-gateway.service" > "$work/units/corekv-gateway.service"
systemd-analyze verify "$work/units/corekv.service" "$work/units/corekv-gateway.service"

step "setup-nvme.sh --dry-run"
image=$work/disk.img
truncate -s 64M "$image"
before=$(md5sum < "$image")
"$here/setup-nvme.sh" --dry-run --fstab "$work/fstab" "$image" /srv/corekv > "$work/dry.log"
grep -q '^+ mkfs.xfs -f -K -L corekv ' "$work/dry.log" || fail "dry run does not show mkfs"
grep -q 'noatime' "$work/dry.log" || fail "dry run does not show the fstab line"
grep -q '^+ mount /srv/corekv' "$work/dry.log" || fail "dry run does not show the mount"
[ "$(md5sum < "$image")" = "$before" ] || fail "dry run changed the image"
[ ! -e "$work/fstab" ] || fail "dry run wrote the fstab"
set +e
"$here/setup-nvme.sh" --yes "$image" /srv/corekv > /dev/null 2>&1; rc_file=$?
"$here/setup-nvme.sh" --dry-run "$image" > /dev/null 2>&1; rc_args=$?
"$here/setup-nvme.sh" --dry-run "$work/missing" /srv/corekv > /dev/null 2>&1; rc_missing=$?
set -e
[ "$rc_file" = 2 ] || fail "a regular file was accepted outside --dry-run (exit $rc_file)"
[ "$rc_args" = 2 ] || fail "a missing argument was accepted (exit $rc_args)"
[ "$rc_missing" = 2 ] || fail "a missing device was accepted (exit $rc_missing)"
if loop=$(losetup -f --show "$image" 2>/dev/null); then
  "$here/setup-nvme.sh" --dry-run --fstab "$work/fstab" "$loop" /srv/corekv > "$work/loop.log"
  grep -q 'logical block size: [0-9]' "$work/loop.log" || fail "no block size read off $loop"
  [ "$(md5sum < "$image")" = "$before" ] || fail "dry run changed the loop device"
else
  loop=""
  echo "(no loop device here; the file run covers the dry run)"
fi

step "local cluster for the alert rules and the rolling restart"
base=7600
cat > "$work/corekv.toml" <<TOML
cluster = "deploy-check"
shards = 2
TOML
for i in 1 2 3; do
  cat >> "$work/corekv.toml" <<TOML

[[node]]
id = $i
host = "127.0.0.1"
client_port = $((base + i * 10))
peer_port = $((base + 100 + i * 10))
http_port = $((base + 200 + i))
TOML
done
# Starts node ID in the background; its pid goes to $work/pid-ID and $work/pids.
cat > "$work/start-node.sh" <<SH
#!/usr/bin/env bash
id=\$1
setsid "$bin/corekv" serve --registry "$work/corekv.toml" --node-id "\$id" \
  --data-dir "$work/node-\$id" >> "$work/node-\$id.log" 2>&1 < /dev/null &
echo \$! > "$work/pid-\$id"
echo \$! >> "$work/pids"
SH
# Stops node ID (SIGTERM, waits for the exit) and starts it again: what systemctl restart does.
cat > "$work/restart-node.sh" <<SH
#!/usr/bin/env bash
set -e
id=\$1
pid=\$(cat "$work/pid-\$id")
kill -TERM "\$pid"
while kill -0 "\$pid" 2>/dev/null; do sleep 0.05; done
bash "$work/start-node.sh" "\$id"
SH
for i in 1 2 3; do bash "$work/start-node.sh" "$i"; done
export COREKV_REGISTRY=$work/corekv.toml
for _ in $(seq 1 200); do
  if "$bin/corekvctl" put deploy-check ok > /dev/null 2>&1; then break; fi
  sleep 0.1
done
"$bin/corekvctl" get deploy-check > /dev/null || fail "the local cluster does not serve"

step "alert rules name metrics that exist"
curl -sf "http://127.0.0.1:$((base + 201))/metrics" > "$work/metrics.txt"
# The TLS metrics come from a node with TLS: a one-node corekv dev --tls cluster.
"$bin/corekv" dev --tls --nodes 1 --shards 1 --dir "$work/tls-dev" --base-port 7950 \
  > "$work/tls-dev.log" 2>&1 &
pids+=("$!")
tls=$work/tls-dev/tls
for _ in $(seq 1 300); do
  if curl -sf --cacert "$tls/ca.pem" --cert "$tls/client.pem" --key "$tls/client-key.pem" \
    "https://127.0.0.1:8150/metrics" >> "$work/metrics.txt"; then break; fi
  sleep 0.1
done
grep -q '^corekv_tls_certificate_expiry_timestamp_seconds' "$work/metrics.txt" \
  || fail "the TLS node exports no certificate expiry ($(tail -3 "$work/tls-dev.log"))"
python3 - "$here/prometheus/corekv-alerts.yml" "$work/metrics.txt" <<'PY'
import re, sys, yaml
rules = yaml.safe_load(open(sys.argv[1]))
exported = {line.split("{")[0].split(" ")[0] for line in open(sys.argv[2]) if line.startswith("corekv_")}
missing = []
count = 0
for group in rules["groups"]:
    for rule in group["rules"]:
        count += 1
        assert rule["alert"] and rule["expr"] and rule["annotations"]["summary"], rule
        for name in re.findall(r"\bcorekv_[a-z_]+", rule["expr"]):
            if name not in exported:
                missing.append((rule["alert"], name))
if missing:
    sys.exit(f"alert rules use metrics no node exports: {missing}")
print(f"{count} rules; every metric they use is exported")
PY

step "rolling-restart.sh"
declare -A before_pid
for i in 1 2 3; do before_pid[$i]=$(cat "$work/pid-$i"); done
PATH="$bin:$PATH" "$here/rolling-restart.sh" --registry "$work/corekv.toml" --timeout 60 \
  --restart-cmd "bash $work/restart-node.sh {id}" > "$work/rolling.log" 2>&1 ||
  { cat "$work/rolling.log"; fail "rolling restart of a healthy cluster failed"; }
for i in 1 2 3; do
  [ "$(cat "$work/pid-$i")" != "${before_pid[$i]}" ] || fail "node $i was not restarted"
done
grep -q 'all 3 nodes restarted' "$work/rolling.log" || fail "rolling restart did not finish"
[ "$("$bin/corekvctl" get deploy-check)" = ok ] || fail "data lost across the rolling restart"
# With a node down, it must refuse to restart anything.
kill -TERM "$(cat "$work/pid-3")"
sleep 1
for i in 1 2; do before_pid[$i]=$(cat "$work/pid-$i"); done
if PATH="$bin:$PATH" "$here/rolling-restart.sh" --registry "$work/corekv.toml" --timeout 3 \
  --restart-cmd "bash $work/restart-node.sh {id}" 1 2 > "$work/rolling-down.log" 2>&1; then
  fail "rolling restart went ahead with node 3 down"
fi
grep -q 'node 3: /health is not 200' "$work/rolling-down.log" ||
  { cat "$work/rolling-down.log"; fail "no reason given"; }
[ "$(cat "$work/pid-1")" = "${before_pid[1]}" ] || fail "node 1 was restarted while node 3 was down"
echo "deploy checks passed"
