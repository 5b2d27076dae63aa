#!/usr/bin/env python3
"""Turns an h2load run into a corekv-bench result file (the fields bench/summarize.py reads).

    h2load-result.py OUTPUT LOG WORKLOAD CONCURRENCY JSON

OUTPUT is h2load's standard output, LOG its --log-file (one line per request: start time,
status, microseconds). Requests that failed, errored, timed out or got a 4xx or 5xx count as
errors. Exits 1 when either file is not what h2load writes.
"""

import json
import re
import sys


def fail(message):
    print(f"h2load-result.py: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 6:
        fail("usage: h2load-result.py OUTPUT LOG WORKLOAD CONCURRENCY JSON")
    output_path, log_path, workload, concurrency, json_path = sys.argv[1:]
    text = open(output_path).read()
    rate = re.search(r"finished in [0-9.]+m?s, ([0-9.]+) req/s", text)
    requests = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout", text)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if not (rate and requests and codes):
        fail(f"{output_path} is not h2load's output")
    latencies = []
    for number, line in enumerate(open(log_path), 1):
        fields = line.split("\t")
        if len(fields) != 3:
            fail(f"{log_path}:{number}: not an h2load log line")
        latencies.append(int(fields[2]))
    if not latencies:
        fail(f"{log_path} holds no requests")
    latencies.sort()

    def percentile(p):
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))]

    result = {
        "config": {"target": "corekv-http2", "workload": workload,
                   "concurrency": int(concurrency)},
        "ops": int(requests.group(3)),
        "ops_per_sec": float(rate.group(1)),
        "latency_us": {"p50": percentile(0.5), "p99": percentile(0.99),
                       "p999": percentile(0.999), "max": latencies[-1]},
        "errors": {"failed": int(requests.group(4)), "errored": int(requests.group(5)),
                   "timeout": int(requests.group(6)),
                   "http_status": int(codes.group(3)) + int(codes.group(4))},
    }
    with open(json_path, "w") as out:
        json.dump(result, out)
        out.write("\n")


if __name__ == "__main__":
    main()
