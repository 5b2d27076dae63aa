"""redis-py's RedisCluster against a corekv cluster: every command the Redis endpoint speaks,
with the options users rely on, checked against what Redis answers.

Usage: redis_cluster.py HOST PORT [TOKEN]   (TOKEN: AUTH with this bearer token)

Exits 0 when every check held; a failed check raises, printing what differed.
"""

import sys
import time

import redis
from redis.cluster import RedisCluster


def check(name, got, want):
    if got != want:
        raise AssertionError(f"{name}: got {got!r}, want {want!r}")
    print(f"ok {name}")


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    token = sys.argv[3] if len(sys.argv) > 3 else None
    rc = RedisCluster(host=host, port=port, password=token, decode_responses=True)

    # Topology: every slot is covered by a master.
    nodes = rc.get_primaries()
    check("masters", len(nodes), len({n.name for n in nodes}))
    slots = rc.cluster_slots(target_nodes=RedisCluster.RANDOM)
    covered = sum(end - start + 1 for (start, end) in slots)
    check("slots covered", covered, 16384)
    check("keyslot", rc.keyslot("{user1}:a"), rc.keyslot("user1"))
    check("ping", rc.ping(), True)
    check("echo", rc.execute_command("ECHO", "hi", target_nodes=RedisCluster.RANDOM), "hi")

    # Strings, across every shard.
    for i in range(200):
        rc.set(f"key:{i}", f"value-{i}")
    check("get all", [rc.get(f"key:{i}") for i in range(200)], [f"value-{i}" for i in range(200)])
    check("get missing", rc.get("missing"), None)
    check("set nx new", rc.set("nx", "1", nx=True), True)
    check("set nx old", rc.set("nx", "2", nx=True), None)
    check("set xx get", rc.set("nx", "3", xx=True, get=True), "1")
    check("set xx missing", rc.set("nope", "1", xx=True), None)
    check("setnx", (rc.setnx("snx", "a"), rc.setnx("snx", "b"), rc.get("snx")), (True, False, "a"))
    check("getset", (rc.getset("snx", "c"), rc.get("snx")), ("a", "c"))
    check("getdel", (rc.getdel("snx"), rc.get("snx"), rc.getdel("snx")), ("c", None, None))
    check("mset", rc.mset({"{m}a": "1", "{m}b": "2"}), True)
    check("mget", rc.mget("{m}a", "{m}b", "{m}c"), ["1", "2", None])
    check("msetnx taken", rc.msetnx({"{m}a": "9", "{m}z": "9"}), False)
    check("msetnx free", rc.msetnx({"{m}x": "1", "{m}y": "2"}), True)
    check("exists", rc.exists("{m}a", "{m}b", "{m}nope"), 2)
    check("delete", rc.delete("{m}a", "{m}b", "{m}nope"), 2)
    check("unlink", rc.unlink("{m}x"), 1)
    check("type", (rc.type("key:1"), rc.type("missing")), ("string", "none"))
    check("strlen", rc.strlen("key:1"), len("value-1"))
    check("getrange", rc.getrange("key:1", 0, 4), "value")
    check("getrange neg", rc.getrange("key:1", -1, -1), "1")

    # Read-modify-write, applied in the state machine.
    check("incr", (rc.incr("n"), rc.incr("n"), rc.incrby("n", 10), rc.decr("n"), rc.decrby("n", 5)),
          (1, 2, 12, 11, 6))
    check("incrbyfloat", rc.incrbyfloat("f", 10.5), 10.5)
    check("incrbyfloat again", rc.incrbyfloat("f", 0.1), 10.6)
    rc.set("word", "abc")
    try:
        rc.incr("word")
        raise AssertionError("incr of a word did not fail")
    except redis.ResponseError as e:
        check("incr word", str(e), "value is not an integer or out of range")
    check("append", (rc.append("s", "Hello"), rc.append("s", " World"), rc.get("s")),
          (5, 11, "Hello World"))
    check("setrange", (rc.setrange("s", 6, "Redis"), rc.get("s")), (11, "Hello Redis"))
    check("setrange pad", (rc.setrange("pad", 2, "x"), rc.get("pad")), (3, "\x00\x00x"))

    # Time to live.
    check("setex", rc.setex("t", 100, "v"), True)
    ttl = rc.ttl("t")
    check("ttl", 98 <= ttl <= 100, True)
    check("pttl", 95_000 <= rc.pttl("t") <= 100_000, True)
    check("psetex", rc.psetex("pt", 50_000, "v"), True)
    check("ttl none", (rc.ttl("key:1"), rc.ttl("missing"), rc.pttl("missing")), (-1, -2, -2))
    check("expire", rc.expire("key:1", 100), True)
    check("expire gt smaller", rc.expire("key:1", 50, gt=True), False)
    check("expire lt smaller", rc.expire("key:1", 50, lt=True), True)
    check("expire nx", rc.expire("key:1", 10, nx=True), False)
    check("pexpire", rc.pexpire("key:2", 100_000), True)
    check("expireat", rc.expireat("key:3", int(time.time()) + 100), True)
    check("pexpireat", rc.pexpireat("key:4", int(time.time() * 1000) + 100_000), True)
    check("expire missing", rc.expire("missing", 10), False)
    check("persist", (rc.persist("key:1"), rc.persist("key:1"), rc.ttl("key:1")), (True, False, -1))
    check("set keepttl", (rc.set("t", "w", keepttl=True), rc.get("t"), rc.ttl("t") > 0), (True, "w", True))
    check("set ex", (rc.set("t2", "v", ex=100), rc.ttl("t2") > 90), (True, True))
    check("set px", (rc.set("t3", "v", px=100_000), rc.pttl("t3") > 90_000), (True, True))
    check("set exat", (rc.set("t4", "v", exat=int(time.time()) + 100), rc.ttl("t4") > 90), (True, True))
    check("getex ex", (rc.getex("t4", ex=30), rc.ttl("t4") <= 30), ("v", True))
    check("getex persist", (rc.getex("t4", persist=True), rc.ttl("t4")), ("v", -1))
    check("short ttl", rc.set("gone", "v", px=200), True)
    time.sleep(0.5)
    check("expired", (rc.get("gone"), rc.exists("gone"), rc.ttl("gone")), (None, 0, -2))
    check("expire past deletes", (rc.expire("key:5", -1), rc.get("key:5")), (True, None))

    # Transactions: one slot, WATCH and MULTI/EXEC.
    pipe = rc.pipeline(transaction=False)
    for i in range(10):
        pipe.set(f"pipe:{i}", i)
    check("pipeline", pipe.execute(), [True] * 10)
    node = rc.get_node_from_key("{tx}")
    conn = redis.Redis(host=node.host, port=node.port, password=token, decode_responses=True)
    tx = conn.pipeline(transaction=True)
    tx.set("{tx}a", "1").incr("{tx}a").get("{tx}a").append("{tx}b", "x")
    check("multi exec", tx.execute(), [True, 2, "2", 1])
    with conn.pipeline(transaction=True) as tx:
        tx.watch("{tx}a")
        tx.multi()
        tx.incr("{tx}a")
        check("watch exec", tx.execute(), [3])
    with conn.pipeline(transaction=True) as tx:
        tx.watch("{tx}a")
        conn.set("{tx}a", "changed")
        tx.multi()
        tx.incr("{tx}a")
        try:
            tx.execute()
            raise AssertionError("EXEC ran though a watched key changed")
        except redis.WatchError:
            print("ok watch abort")
    check("after abort", conn.get("{tx}a"), "changed")

    # Iteration: SCAN per shard (redis-py visits every master), KEYS, DBSIZE.
    scanned = set(rc.scan_iter(match="key:*", count=17))
    check("scan", len(scanned), 199)  # key:5 was deleted
    check("keys", len(rc.keys("key:1*", target_nodes=RedisCluster.PRIMARIES)), 1 + 10 + 100)
    check("dbsize", rc.dbsize(target_nodes=RedisCluster.PRIMARIES) >= 199, True)

    # Errors clients act on.
    try:
        conn.execute_command("LPUSH", "{tx}list", "x")
        raise AssertionError("LPUSH did not fail")
    except redis.ResponseError as e:
        check("unknown command", str(e).startswith("unknown command 'LPUSH'"), True)
    try:
        rc.execute_command("MGET", "a", "b")
        raise AssertionError("MGET across slots did not fail")
    except (redis.ResponseError, redis.exceptions.RedisClusterException) as e:
        check("crossslot", "slot" in str(e).lower(), True)
    print("all checks held")


if __name__ == "__main__":
    main()
