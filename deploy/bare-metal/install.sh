#!/usr/bin/env bash
# Installs corekv on a host: the binaries, the systemd units (the node's; the HTTP gateway's,
# not enabled), the environment files, the registry file, the sysctl file and the runbook.
# Safe to run again (an upgrade replaces the binaries, the units and the docs; the
# environment and registry files the operator edited are kept unless --force-config).
#
#   install.sh [--prefix DIR] [--bin-dir DIR] [--registry FILE] [--node-id N]
#              [--data-dir DIR] [--force-config]
#
#   --prefix DIR      install under DIR instead of / (for trying it out or packaging: no user
#                     is created, systemd and sysctl are not touched)
#   --bin-dir DIR     where corekv and corekvctl are (default: target/release of this checkout)
#   --registry FILE   the cluster's registry file, copied to /etc/corekv/corekv.toml
#   --node-id N       this host's node id, written to /etc/corekv/corekv.env
#   --data-dir DIR    the data directory (default /srv/corekv/data, under the unit's
#                     ReadWritePaths)
#   --force-config    overwrite an existing corekv.env and corekv.toml
#
# Exit status: 0 installed, 1 a step failed, 2 bad arguments.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}
die() { echo "install.sh: $*" >&2; exit 2; }

prefix=""
bin_dir="$here/../../target/release"
registry=""
node_id=""
data_dir=/srv/corekv/data
force_config=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || usage; prefix=$2; shift ;;
    --bin-dir) [ $# -ge 2 ] || usage; bin_dir=$2; shift ;;
    --registry) [ $# -ge 2 ] || usage; registry=$2; shift ;;
    --node-id) [ $# -ge 2 ] || usage; node_id=$2; shift ;;
    --data-dir) [ $# -ge 2 ] || usage; data_dir=$2; shift ;;
    --force-config) force_config=1 ;;
    -h | --help) usage ;;
    *) echo "install.sh: unknown argument $1" >&2; usage ;;
  esac
  shift
done
if [ -n "$prefix" ]; then
  mkdir -p "$prefix"
  prefix=$(cd "$prefix" && pwd)
fi
for bin in corekv corekvctl; do
  [ -x "$bin_dir/$bin" ] || die "$bin_dir/$bin not found; build it (cargo build --release) or pass --bin-dir"
done
[ -z "$registry" ] || [ -f "$registry" ] || die "registry file $registry not found"
if [ -n "$node_id" ]; then
  case "$node_id" in '' | *[!0-9]* | 0) die "--node-id must be a positive integer" ;; esac
fi
case "$data_dir" in /*) ;; *) die "--data-dir must be an absolute path" ;; esac

# Runs a command, or only prints it when installing under a prefix.
host() {
  if [ -n "$prefix" ]; then echo "skipped under --prefix: $*"; else "$@"; fi
}

echo "== binaries"
install -d -m 0755 "$prefix/usr/local/bin"
install -m 0755 "$bin_dir/corekv" "$bin_dir/corekvctl" "$prefix/usr/local/bin/"

echo "== systemd unit, sysctl, docs"
install -d -m 0755 "$prefix/etc/systemd/system" "$prefix/etc/sysctl.d" \
  "$prefix/usr/local/share/doc/corekv" "$prefix/usr/local/share/corekv"
install -m 0644 "$here/systemd/corekv.service" "$here/systemd/corekv-gateway.service" \
  "$prefix/etc/systemd/system/"
install -m 0644 "$here/sysctl/90-corekv.conf" "$prefix/etc/sysctl.d/90-corekv.conf"
install -m 0644 "$here/RUNBOOK.md" "$here/TUNING.md" "$prefix/usr/local/share/doc/corekv/"
install -m 0644 "$here/prometheus/corekv-alerts.yml" "$prefix/usr/local/share/corekv/"
install -m 0755 "$here/rolling-restart.sh" "$here/setup-nvme.sh" "$prefix/usr/local/share/corekv/"

echo "== configuration (/etc/corekv)"
install -d -m 0755 "$prefix/etc/corekv"
env_file="$prefix/etc/corekv/corekv.env"
if [ -e "$env_file" ] && [ "$force_config" = 0 ]; then
  echo "keeping $env_file"
  [ -z "$node_id" ] || grep -q "^COREKV_NODE_ID=$node_id\$" "$env_file" ||
    echo "note: $env_file has a different COREKV_NODE_ID; --force-config replaces it"
else
  sed -e "s|^COREKV_NODE_ID=.*|COREKV_NODE_ID=${node_id:-1}|" \
    -e "s|^COREKV_DATA_DIR=.*|COREKV_DATA_DIR=$data_dir|" \
    "$here/systemd/corekv.env" > "$env_file.tmp"
  chmod 0644 "$env_file.tmp"
  mv "$env_file.tmp" "$env_file"
  [ -n "$node_id" ] || echo "note: set COREKV_NODE_ID in $env_file (written with 1)"
fi
gateway_env="$prefix/etc/corekv/corekv-gateway.env"
if [ -e "$gateway_env" ] && [ "$force_config" = 0 ]; then
  echo "keeping $gateway_env"
else
  install -m 0644 "$here/systemd/corekv-gateway.env" "$gateway_env"
fi
if [ -n "$registry" ]; then
  if [ -e "$prefix/etc/corekv/corekv.toml" ] && [ "$force_config" = 0 ] &&
    ! cmp -s "$registry" "$prefix/etc/corekv/corekv.toml"; then
    echo "keeping $prefix/etc/corekv/corekv.toml (differs from $registry; --force-config replaces it)"
  else
    install -m 0644 "$registry" "$prefix/etc/corekv/corekv.toml"
  fi
elif [ ! -e "$prefix/etc/corekv/corekv.toml" ]; then
  echo "note: no registry yet; copy the cluster's to $prefix/etc/corekv/corekv.toml"
fi

echo "== user and data directory"
if [ -z "$prefix" ] && ! id corekv >/dev/null 2>&1; then
  useradd --system --home-dir /srv/corekv --no-create-home --shell /usr/sbin/nologin corekv
else
  echo "user corekv: $([ -n "$prefix" ] && echo 'skipped under --prefix' || echo exists)"
fi
install -d -m 0750 "$prefix$data_dir"
host chown corekv:corekv "$prefix$data_dir"

echo "== system"
host sysctl --quiet --system
host systemctl daemon-reload
echo "installed. Next: systemctl enable --now corekv; then corekvctl status (RUNBOOK.md, 'First start')"
echo "the HTTP gateway, where wanted: systemctl enable --now corekv-gateway (RUNBOOK.md, 'The HTTP gateway')"
