#!/usr/bin/env python3
"""Summarize a directory of corekv-bench result files (as bench/compare-etcd.sh writes them).

    summarize.py DIR                               markdown tables: medians per row, ratios
    summarize.py --median-file DIR SYSTEM WORKLOAD C
                                                   the result file of the median run (by ops/s)
    summarize.py --watch DIR                       the watch runs' table (corekv-bench watch)

Runs are grouped by (system, workload, concurrency) from each file's "config". Every figure in
a row is the median of that figure over the group's runs (with an even count, the lower middle
one), so a row can mix runs; --median-file names the run whose throughput is the median.
Exits 1 when DIR holds no results or a result file is malformed.
"""

import json
import sys
from pathlib import Path

WORKLOAD_ORDER = {"put": 0, "get": 1, "mixed": 2}
WORKLOAD_NAMES = {"put": "write-only", "get": "read-only (linearizable)", "mixed": "50/50"}


def fail(message):
    print(f"summarize.py: {message}", file=sys.stderr)
    sys.exit(1)


def load(directory):
    groups = {}
    for path in sorted(Path(directory).glob("*.json")):
        try:
            result = json.loads(path.read_text())
            config = result["config"]
            # TLS and auth runs are systems of their own: corekv-tls, corekv-tls-auth.
            system = config["target"] + ("-tls" if config.get("tls") else "")
            system += "-auth" if config.get("auth") else ""
            key = (system, config["workload"], int(config["concurrency"]))
            row = {
                "path": str(path),
                "ops": float(result["ops_per_sec"]),
                "p50": result["latency_us"]["p50"],
                "p99": result["latency_us"]["p99"],
                "p999": result["latency_us"]["p999"],
                "max": result["latency_us"]["max"],
                "cpu": result.get("server_cpu_us_per_op"),
                "errors": sum(result.get("errors", {}).values()),
            }
        except (OSError, ValueError, KeyError, TypeError) as error:
            fail(f"{path} is not a corekv-bench result: {error!r}")
        groups.setdefault(key, []).append(row)
    if not groups:
        fail(f"no result files (*.json) in {directory}")
    return groups


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    return values[(len(values) - 1) // 2]


def median_run(rows):
    ordered = sorted(rows, key=lambda r: r["ops"])
    return ordered[(len(ordered) - 1) // 2]


def ms(us):
    return "—" if us is None else f"{us / 1000:.2f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.1f}×"


def tables(groups):
    rows = sorted(groups, key=lambda k: (WORKLOAD_ORDER.get(k[1], 9), k[2], k[0]))
    lines = [
        "| workload | C | system | runs | ops/s | p50 ms | p99 ms | p99.9 ms | max ms | server CPU µs/op | errors |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    medians = {}
    for key in rows:
        system, workload, c = key
        runs = groups[key]
        m = {f: median(r[f] for r in runs) for f in ("ops", "p50", "p99", "p999", "max", "cpu")}
        m["errors"] = sum(r["errors"] for r in runs)
        medians[key] = m
        cpu = "—" if m["cpu"] is None else f"{m['cpu']:.1f}"
        lines.append(
            f"| {WORKLOAD_NAMES.get(workload, workload)} | {c} | {system} | {len(runs)} "
            f"| {m['ops']:,.0f} | {ms(m['p50'])} | {ms(m['p99'])} | {ms(m['p999'])} "
            f"| {ms(m['max'])} | {cpu} | {m['errors']} |"
        )
    pairs = sorted(
        {(w, c) for (_, w, c) in groups},
        key=lambda k: (WORKLOAD_ORDER.get(k[0], 9), k[1]),
    )
    for ours, theirs, heading in (
        ("corekv", "etcd", "corekv against etcd (throughput: corekv ÷ etcd; latency and CPU: "
         "etcd ÷ corekv, so above 1× means corekv is ahead):"),
        ("corekv-tls", "corekv", "corekv with TLS against corekv without (throughput: with ÷ "
         "without; latency and CPU: without ÷ with, so below 1× is what TLS costs):"),
        ("corekv-tls-auth", "corekv", "corekv with TLS and auth against corekv without either "
         "(throughput: with ÷ without; latency and CPU: without ÷ with, so below 1× is what "
         "they cost):"),
    ):
        compared = [(w, c) for (w, c) in pairs if (ours, w, c) in medians and (theirs, w, c) in medians]
        if not compared:
            continue
        lines += [
            "",
            heading,
            "",
            "| workload | C | throughput | p50 | p99 | p99.9 | server CPU per op |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for w, c in compared:
            k, e = medians[(ours, w, c)], medians[(theirs, w, c)]
            lines.append(
                f"| {WORKLOAD_NAMES.get(w, w)} | {c} | {ratio(k['ops'], e['ops'])} "
                f"| {ratio(e['p50'], k['p50'])} | {ratio(e['p99'], k['p99'])} "
                f"| {ratio(e['p999'], k['p999'])} | {ratio(e['cpu'], k['cpu'])} |"
            )
    return "\n".join(lines)


def watch_table(directory):
    groups = {}
    for path in sorted(Path(directory).glob("*.json")):
        try:
            result = json.loads(path.read_text())
            config = result["config"]
            key = (config["target"], int(config["watchers"]), float(config["rate"]))
            rss = result.get("server_rss_bytes", {})
            grown = None
            if rss.get("before") is not None and rss.get("watching") is not None:
                grown = (rss["watching"] - rss["before"]) / 1048576
            row = {
                "writes": float(result["ops_per_sec"]),
                "events": float(result["events_per_sec"]),
                "p50": result["latency_us"]["p50"],
                "p99": result["latency_us"]["p99"],
                "max": result["latency_us"]["max"],
                "grown": grown,
                "errors": result.get("write_errors", 0),
            }
        except (OSError, ValueError, KeyError, TypeError) as error:
            fail(f"{path} is not a corekv-bench watch result: {error!r}")
        groups.setdefault(key, []).append(row)
    if not groups:
        fail(f"no watch results (*.json) in {directory}")
    lines = [
        "| system | watchers | writes/s asked | runs | writes/s | changes delivered/s | p50 ms | p99 ms | max ms | server memory for the watchers, MiB | write errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in sorted(groups, key=lambda k: (k[1], k[2], k[0])):
        system, watchers, rate = key
        runs = groups[key]
        m = {f: median(r[f] for r in runs) for f in ("writes", "events", "p50", "p99", "max", "grown")}
        grown = "—" if m["grown"] is None else f"{m['grown']:.0f}"
        lines.append(
            f"| {system} | {watchers} | {rate:,.0f} | {len(runs)} | {m['writes']:,.0f} "
            f"| {m['events']:,.0f} | {ms(m['p50'])} | {ms(m['p99'])} | {ms(m['max'])} | {grown} "
            f"| {sum(r['errors'] for r in runs)} |"
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) == 2 and argv[0] == "--watch":
        print(watch_table(argv[1]))
        return
    if len(argv) == 5 and argv[0] == "--median-file":
        directory, system, workload, c = argv[1:]
        groups = load(directory)
        rows = groups.get((system, workload, int(c)))
        if rows:
            print(median_run(rows)["path"])
        return
    if len(argv) != 1 or argv[0].startswith("-"):
        fail(
            "usage: summarize.py DIR | summarize.py --median-file DIR SYSTEM WORKLOAD C | "
            "summarize.py --watch DIR"
        )
    print(tables(load(argv[0])))


if __name__ == "__main__":
    main(sys.argv[1:])
