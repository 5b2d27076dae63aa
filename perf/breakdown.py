#!/usr/bin/env python3
"""Where the samples of a folded-stacks file went, in a few named buckets.

    perf/breakdown.py FILE.folded [--top N]

FILE.folded is what perf/flamegraph.sh keeps beside its SVG (one line per distinct stack:
frames separated by ';', then a sample count). A sample counts toward every bucket one of
whose patterns appears anywhere in its stack, so buckets overlap (a TCP send made from inside
io_uring_enter is in both) and do not add up to 100%. Then the threads, and the N functions
with the most samples on top of the stack (self time).
"""

import collections
import sys

BUCKETS = [
    ("io_uring_enter (submit, reap, sleep)", ("__sys_io_uring_enter",)),
    ("TCP send", ("__sys_sendto", "__sys_sendmsg", "tcp_sendmsg")),
    ("TCP receive", ("__sys_recvfrom", "__sys_recvmsg", "tcp_recvmsg")),
    ("softirq (loopback packet delivery)", ("handle_softirqs", "net_rx_action")),
    ("state machine (apply, reads)", ("corekv_storage::state_machine",)),
    ("allocator", ("malloc", "_int_free", "__GI___libc_free", "cfree", "_int_malloc", "realloc")),
    ("raft-rs", ("raft::",)),
    ("flatbuffers (encode, verify)", ("flatbuffers::",)),
    ("protobuf (raft messages)", ("protobuf::",)),
    ("WAL encoding", ("corekv_storage::wal",)),
    ("memcpy", ("memcpy", "memmove")),
    ("crc32c", ("crc32c",)),
]


def main(argv):
    if not argv or argv[0].startswith("-"):
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    top = 15
    if "--top" in argv:
        top = int(argv[argv.index("--top") + 1])
    total = 0
    buckets = collections.Counter()
    threads = collections.Counter()
    leaves = collections.Counter()
    with open(argv[0]) as folded:
        for line in folded:
            line = line.strip()
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            try:
                n = int(count)
            except ValueError:
                sys.exit(f"breakdown.py: not a folded-stacks line: {line[:80]!r}")
            total += n
            frames = stack.split(";")
            threads[frames[0]] += n
            leaves[frames[-1]] += n
            for name, patterns in BUCKETS:
                if any(p in stack for p in patterns):
                    buckets[name] += n
    if total == 0:
        sys.exit("breakdown.py: no samples")
    print("| where | share of samples |\n| --- | ---: |")
    for name, _ in BUCKETS:
        print(f"| {name} | {100 * buckets[name] / total:.1f}% |")
    print("\nthreads: " + ", ".join(f"{t} {100 * n / total:.1f}%" for t, n in threads.most_common(8)))
    print(f"\ntop {top} functions by self samples:")
    for name, n in leaves.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {name[:110]}")


if __name__ == "__main__":
    main(sys.argv[1:])
