"""Follows a corekv gateway watch as a browser's EventSource does, with httpx and httpx-sse:
reads server-sent events, remembers the last event id, and after a dropped connection, a
refused one or an `end` event reconnects with `Last-Event-ID` (every 200 ms, for up to 60 s).

Usage: sse_follow.py URL STOP_KEY...

Prints one JSON line per change ({"shard", "index", "type", "key"}), {"ready": cursor} when a
stream starts and {"reconnect": why} when it reconnects; exits 0 once it has seen the change
of every STOP_KEY (changes on different shards come in no set order, so a test gives one stop
key per shard), 2 on an HTTP error other than 503, 3 on an `error` event.
"""

import json
import sys
import time

import httpx
from httpx_sse import connect_sse


def main():
    url, stop_keys = sys.argv[1], set(sys.argv[2:])
    last_id = None
    down_since = None
    with httpx.Client(timeout=httpx.Timeout(10.0, read=30.0)) as client:
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with connect_sse(client, "GET", url, headers=headers) as source:
                    status = source.response.status_code
                    if status == 503:
                        raise httpx.TransportError("503")
                    if status != 200:
                        body = source.response.read().decode()
                        print(json.dumps({"http_error": status, "body": body}), flush=True)
                        return 2
                    down_since = None
                    for sse in source.iter_sse():
                        if sse.id:
                            last_id = sse.id
                        if sse.event == "ready":
                            print(json.dumps({"ready": json.loads(sse.data)["cursor"]}), flush=True)
                        elif sse.event == "message":
                            event = json.loads(sse.data)
                            for change in event["changes"]:
                                line = {"shard": event["shard"], "index": event["index"],
                                        "type": change["type"], "key": change["key"]}
                                print(json.dumps(line), flush=True)
                                stop_keys.discard(change["key"])
                                if not stop_keys:
                                    return 0
                        elif sse.event == "error":
                            print(json.dumps({"error": sse.data}), flush=True)
                            return 3
                        elif sse.event == "end":
                            break
                    print(json.dumps({"reconnect": "stream ended"}), flush=True)
            except httpx.TransportError as error:
                print(json.dumps({"reconnect": str(error)}), flush=True)
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > 60:
                print(json.dumps({"gave_up": True}), flush=True)
                return 4
            time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
