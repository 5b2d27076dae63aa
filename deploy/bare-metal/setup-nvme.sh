#!/usr/bin/env bash
# Prepares an NVMe namespace for a corekv data directory: reports what the device offers the
# WAL, formats it XFS, mounts it with noatime and records the mount in /etc/fstab.
#
#   setup-nvme.sh [--dry-run] [--yes] [--fstab FILE] DEVICE MOUNTPOINT
#
#   --dry-run   report the device and print the commands, change nothing (DEVICE may be a
#               regular file or a loop device, for trying the script out)
#   --yes       do not ask before formatting (for automation; formatting erases DEVICE)
#   --fstab     the fstab to add the mount to (default /etc/fstab)
#
# Exit status: 0 done (or dry run), 1 a step failed, 2 bad arguments or refused.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

dry_run=0
yes=0
fstab=/etc/fstab
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --yes) yes=1 ;;
    --fstab) [ $# -ge 2 ] || usage; fstab=$2; shift ;;
    -h | --help) usage ;;
    -*) echo "setup-nvme.sh: unknown option $1" >&2; usage ;;
    *) args+=("$1") ;;
  esac
  shift
done
[ ${#args[@]} -eq 2 ] || usage
device=${args[0]}
mountpoint=${args[1]}

die() { echo "setup-nvme.sh: $*" >&2; exit 2; }
run() { # prints the command; runs it unless this is a dry run
  echo "+ $*"
  if [ "$dry_run" = 0 ]; then "$@"; fi
}

[ -e "$device" ] || die "$device does not exist"
case "$mountpoint" in /*) ;; *) die "the mount point must be an absolute path: $mountpoint" ;; esac
if [ -b "$device" ]; then
  kind="block device"
elif [ -f "$device" ]; then
  [ "$dry_run" = 1 ] || die "$device is a regular file; only --dry-run accepts one"
  kind="regular file (dry run only)"
else
  die "$device is neither a block device nor a file"
fi

echo "== $device ($kind)"
# What the kernel says about the device, from sysfs (absent for files).
queue=""
if [ -b "$device" ]; then
  name=$(basename "$(readlink -f "$device")")
  if [ -d "/sys/class/block/$name/queue" ]; then
    queue=/sys/class/block/$name/queue
  elif [ -e "/sys/class/block/$name/partition" ]; then
    parent=$(basename "$(dirname "$(readlink -f "/sys/class/block/$name")")")
    queue=/sys/class/block/$parent/queue
  fi
fi
read_sys() { if [ -n "$queue" ] && [ -r "$queue/$1" ]; then cat "$queue/$1"; else echo "unknown"; fi; }

logical=$(read_sys logical_block_size)
physical=$(read_sys physical_block_size)
cache=$(read_sys write_cache)
io_poll=$(read_sys io_poll)
poll_queues=unknown
if [ -r /sys/module/nvme/parameters/poll_queues ]; then
  poll_queues=$(cat /sys/module/nvme/parameters/poll_queues)
fi

echo "logical block size: $logical bytes (physical: $physical)"
echo "  corekv's WAL and snapshots write with O_DIRECT in 4096-byte blocks; any logical block"
echo "  size up to 4096 works. 512 means each 4 KiB write is 8 sectors; 4096 is ideal."
if [ "$logical" != unknown ] && [ "$logical" -gt 4096 ]; then
  echo "  WARNING: blocks larger than 4096 bytes: O_DIRECT writes of 4 KiB will fail with EINVAL."
fi
echo "write cache: $cache"
echo "  'write back': the drive acknowledges writes from its cache, and every WAL fdatasync"
echo "  also sends a cache flush; acknowledged writes are durable only once that flush returns"
echo "  (corekv always waits for it). Drives with power-loss protection report 'write through'"
echo "  or make the flush nearly free; consumer drives without it pay ~1 ms or more per flush."
echo "polled I/O: nvme.poll_queues=$poll_queues, io_poll=$io_poll"
echo "  glommio completes O_DIRECT reads and writes by polling when the device has poll queues"
echo "  (nvme.poll_queues=N on the kernel command line, N about the number of shard cores):"
echo "  no interrupt per completion, a few microseconds less per WAL write. Without them"
echo "  (0 or unknown) it uses interrupts, which works and costs a little latency."

current=$(findmnt -n -o TARGET --source "$device" 2>/dev/null || true)
[ -z "$current" ] || die "$device is mounted on $current; unmount it first"
existing=$(blkid -o value -s TYPE "$device" 2>/dev/null || true)

echo "== plan"
if [ -n "$existing" ]; then
  echo "$device holds a $existing file system: formatting ERASES it."
fi
if [ "$dry_run" = 0 ] && [ "$yes" = 0 ]; then
  [ -t 0 ] || die "refusing to format $device without --yes (no terminal to ask on)"
  printf 'Type the device path (%s) to format it: ' "$device"
  read -r answer
  [ "$answer" = "$device" ] || die "not confirmed; nothing changed"
fi

# XFS: corekv's segment and snapshot files are large and written with O_DIRECT; XFS allocates
# them in big extents and takes no inode lock on overlapping direct writes. -K skips the
# discard of the whole device at format time (slow on some drives, pointless on a new one).
run mkfs.xfs -f -K -L corekv "$device"
run mkdir -p "$mountpoint"
if [ "$dry_run" = 1 ]; then
  uuid="<UUID of $device after mkfs>"
else
  uuid=$(blkid -o value -s UUID "$device")
fi
# noatime: reads do not turn into inode writes. No `discard`: online discard makes every
# unlink issue trims the WAL's fdatasync can queue behind; run fstrim.timer weekly instead.
line="UUID=$uuid $mountpoint xfs defaults,noatime 0 0"
if grep -qs "[[:space:]]${mountpoint}[[:space:]]" "$fstab"; then
  echo "$fstab already mounts $mountpoint; leaving it:"
  grep "[[:space:]]${mountpoint}[[:space:]]" "$fstab"
else
  echo "+ append to $fstab: $line"
  if [ "$dry_run" = 0 ]; then echo "$line" >> "$fstab"; fi
fi
run mount "$mountpoint"
echo "== done$([ "$dry_run" = 1 ] && echo ' (dry run: nothing was changed)')"
echo "Next: install.sh (creates $mountpoint/data owned by the corekv user when the env file points there)."
