-- wrk's script for the gateway runs of bench/compare-etcd.sh (system `corekv-http`): the
-- same workloads as corekv-bench's, over corekv's HTTP API, and a result file in
-- corekv-bench's JSON form (the fields bench/summarize.py reads).
--
--   WORKLOAD=put|get|mixed KEYS=100000 CONCURRENCY=256 JSON=out.json \
--     wrk -t2 -c256 -d10s -s bench/http.lua http://127.0.0.1:8080
--
-- Keys are corekv-bench's: "k" and 15 digits, uniform over KEYS (16,384 drawn per wrk thread,
-- then sent in turn); values 100 bytes. Each
-- connection has one request in flight (HTTP/1.1, no pipelining), so connections are the
-- concurrency. A status other than 2xx or 3xx (a read of a missing key: 404) is an error.

local workload = os.getenv("WORKLOAD") or "put"
local keys = tonumber(os.getenv("KEYS") or "100000")
local value = string.rep("v", 100)
local next_thread = 0

function setup(thread)
  next_thread = next_thread + 1
  thread:set("seed", os.time() * 1000 + next_thread)
end

-- Requests are made ahead, in init, so that the Lua work per request is one table lookup.
local made = 16384
local requests = {}
local next_request = 0

local function path()
  return string.format("/v1/kv/k%015d", math.random(0, keys - 1))
end

function init(args)
  math.randomseed(seed)
  for i = 1, made do
    local write = workload == "put" or (workload == "mixed" and math.random() < 0.5)
    if write then
      requests[i] = wrk.format("PUT", path(), nil, value)
    else
      requests[i] = wrk.format("GET", path())
    end
  end
end

function request()
  next_request = next_request % made + 1
  return requests[next_request]
end

function done(summary, latency, requests)
  local socket = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  local seconds = summary.duration / 1e6
  local json = string.format(
    '{"config": {"target": "corekv-http", "workload": "%s", "concurrency": %s, "keys": %d},'
      .. ' "ops": %d, "ops_per_sec": %.1f,'
      .. ' "latency_us": {"p50": %d, "p99": %d, "p999": %d, "max": %d},'
      .. ' "errors": {"http_status": %d, "socket": %d}}\n',
    workload, os.getenv("CONCURRENCY") or "0", keys, summary.requests,
    summary.requests / seconds, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max, summary.errors.status, socket)
  local out = os.getenv("JSON")
  if out then
    local file = assert(io.open(out, "w"))
    file:write(json)
    file:close()
  end
  io.write(json)
end
