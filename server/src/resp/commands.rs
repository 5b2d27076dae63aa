//! The commands the endpoint speaks, as `COMMAND` describes them: arity, flags, where the
//! keys are, and a line of documentation. Cluster clients (redis-py, the `redis` crate,
//! redis-cli) read this table to route each command to the shard owning its keys, so the key
//! positions here are the ones the shell checks slots by: one table, used both ways.

/// One command.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Lower-case name, as `COMMAND` reports it.
    pub name: &'static str,
    /// Redis's arity: `n` exactly n arguments (the name included), `-n` at least n.
    pub arity: i32,
    /// Redis's command flags.
    pub flags: &'static [&'static str],
    /// Index of the first key (0: no keys).
    pub first_key: i32,
    /// Index of the last key (-1: the last argument).
    pub last_key: i32,
    /// Step between keys (2 for key, value pairs).
    pub step: i32,
    /// Whether the keys are written (key specs' `RW`/`OW`) or only read (`RO`).
    pub writes: bool,
    /// Redis's command group (`COMMAND DOCS`).
    pub group: &'static str,
    /// One line: what it does here.
    pub summary: &'static str,
}

const fn spec(
    name: &'static str,
    arity: i32,
    flags: &'static [&'static str],
    keys: (i32, i32, i32),
    writes: bool,
    group: &'static str,
    summary: &'static str,
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
        writes,
        group,
        summary,
    }
}

const NO_KEYS: (i32, i32, i32) = (0, 0, 0);
const ONE_KEY: (i32, i32, i32) = (1, 1, 1);
const ALL_KEYS: (i32, i32, i32) = (1, -1, 1);
const PAIRS: (i32, i32, i32) = (1, -1, 2);

const READ: &[&str] = &["readonly", "fast"];
const WRITE: &[&str] = &["write", "denyoom"];
const WRITE_FAST: &[&str] = &["write", "denyoom", "fast"];
const DELETE: &[&str] = &["write", "fast"];
const CONN: &[&str] = &["fast", "no-auth", "loading", "stale"];
const ADMIN: &[&str] = &["loading", "stale"];

/// Every command the endpoint speaks, by name.
pub const COMMANDS: &[Spec] = &[
    spec("append", 3, WRITE_FAST, ONE_KEY, true, "string", "Appends to a value, atomically"),
    spec("auth", -2, CONN, NO_KEYS, false, "connection", "Authenticates with a token"),
    spec("client", -2, ADMIN, NO_KEYS, false, "connection", "Names and identifies the connection"),
    spec("cluster", -2, ADMIN, NO_KEYS, false, "cluster", "The shards, their slots and leaders"),
    spec("command", -1, ADMIN, NO_KEYS, false, "server", "This table"),
    spec(
        "config",
        -2,
        ADMIN,
        NO_KEYS,
        false,
        "server",
        "CONFIG GET of the settings clients ask about",
    ),
    spec("dbsize", 1, &["readonly", "fast"], NO_KEYS, false, "server", "Keys in this shard"),
    spec("decr", 2, WRITE_FAST, ONE_KEY, true, "string", "Subtracts 1, atomically"),
    spec("decrby", 3, WRITE_FAST, ONE_KEY, true, "string", "Subtracts an integer, atomically"),
    spec("del", -2, &["write"], ALL_KEYS, true, "generic", "Deletes keys (one slot)"),
    spec(
        "discard",
        1,
        &["noscript", "loading", "stale", "fast"],
        NO_KEYS,
        false,
        "transactions",
        "Drops a MULTI",
    ),
    spec("echo", 2, &["fast"], NO_KEYS, false, "connection", "Returns its argument"),
    spec(
        "exec",
        1,
        &["noscript", "loading", "stale"],
        NO_KEYS,
        false,
        "transactions",
        "Runs a MULTI as one transaction",
    ),
    spec("exists", -2, READ, ALL_KEYS, false, "generic", "Counts the keys that exist"),
    spec("expire", -3, DELETE, ONE_KEY, true, "generic", "Sets a time to live (s)"),
    spec("expireat", -3, DELETE, ONE_KEY, true, "generic", "Sets a deadline (s since 1970)"),
    spec("get", 2, READ, ONE_KEY, false, "string", "Reads a key"),
    spec("getdel", 2, DELETE, ONE_KEY, true, "string", "Reads and deletes a key"),
    spec("getex", -2, DELETE, ONE_KEY, true, "string", "Reads a key, setting its time to live"),
    spec("getrange", 4, &["readonly"], ONE_KEY, false, "string", "Reads part of a value"),
    spec("getset", 3, WRITE_FAST, ONE_KEY, true, "string", "Writes a key, returns the old value"),
    spec("hello", -1, CONN, NO_KEYS, false, "connection", "Chooses RESP2 or RESP3"),
    spec("incr", 2, WRITE_FAST, ONE_KEY, true, "string", "Adds 1, atomically"),
    spec("incrby", 3, WRITE_FAST, ONE_KEY, true, "string", "Adds an integer, atomically"),
    spec("incrbyfloat", 3, WRITE_FAST, ONE_KEY, true, "string", "Adds a number, atomically"),
    spec("info", -1, ADMIN, NO_KEYS, false, "server", "About this node and shard"),
    spec(
        "keys",
        2,
        &["readonly"],
        NO_KEYS,
        false,
        "generic",
        "Keys of this shard matching a pattern",
    ),
    spec("mget", -2, &["readonly", "fast"], ALL_KEYS, false, "string", "Reads keys (one slot)"),
    spec("mset", -3, WRITE, PAIRS, true, "string", "Writes keys (one slot), atomically"),
    spec("msetnx", -3, WRITE, PAIRS, true, "string", "Writes keys (one slot) if none exists"),
    spec(
        "multi",
        1,
        &["noscript", "loading", "stale", "fast"],
        NO_KEYS,
        false,
        "transactions",
        "Starts queueing a transaction",
    ),
    spec("persist", 2, DELETE, ONE_KEY, true, "generic", "Removes the time to live"),
    spec("pexpire", -3, DELETE, ONE_KEY, true, "generic", "Sets a time to live (ms)"),
    spec("pexpireat", -3, DELETE, ONE_KEY, true, "generic", "Sets a deadline (ms since 1970)"),
    spec("ping", -1, &["fast"], NO_KEYS, false, "connection", "PONG"),
    spec("psetex", 4, WRITE, ONE_KEY, true, "string", "Writes a key that expires (ms)"),
    spec("pttl", 2, READ, ONE_KEY, false, "generic", "Time to live in ms"),
    spec("quit", -1, CONN, NO_KEYS, false, "connection", "Closes the connection"),
    spec(
        "readonly",
        1,
        &["fast", "loading", "stale"],
        NO_KEYS,
        false,
        "cluster",
        "Stale reads from this replica",
    ),
    spec(
        "readwrite",
        1,
        &["fast", "loading", "stale"],
        NO_KEYS,
        false,
        "cluster",
        "Linearizable reads again",
    ),
    spec("scan", -2, &["readonly"], NO_KEYS, false, "generic", "Iterates this shard's keys"),
    spec(
        "select",
        2,
        &["loading", "stale", "fast"],
        NO_KEYS,
        false,
        "connection",
        "Database 0 only",
    ),
    spec("set", -3, WRITE, ONE_KEY, true, "string", "Writes a key"),
    spec("setex", 4, WRITE, ONE_KEY, true, "string", "Writes a key that expires (s)"),
    spec("setnx", 3, WRITE_FAST, ONE_KEY, true, "string", "Writes a key that does not exist"),
    spec("setrange", 4, WRITE, ONE_KEY, true, "string", "Overwrites part of a value, atomically"),
    spec("strlen", 2, READ, ONE_KEY, false, "string", "Length of a value"),
    spec("ttl", 2, READ, ONE_KEY, false, "generic", "Time to live in s"),
    spec("type", 2, READ, ONE_KEY, false, "generic", "string, or none"),
    spec("unlink", -2, DELETE, ALL_KEYS, true, "generic", "Deletes keys (one slot)"),
    spec(
        "unwatch",
        1,
        &["noscript", "loading", "stale", "fast"],
        NO_KEYS,
        false,
        "transactions",
        "Forgets watched keys",
    ),
    spec(
        "watch",
        -2,
        &["noscript", "loading", "stale", "fast"],
        ALL_KEYS,
        false,
        "transactions",
        "Makes EXEC depend on keys",
    ),
];

/// The command named `name` (any case).
pub fn find(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS.iter().find(|spec| spec.name.as_bytes().eq_ignore_ascii_case(name))
}

impl Spec {
    /// Whether `args` (the name included) has a count the arity allows.
    pub fn arity_ok(&self, args: usize) -> bool {
        if self.arity >= 0 {
            args == self.arity as usize
        } else {
            args >= self.arity.unsigned_abs() as usize
        }
    }

    /// The indexes of the keys in `args`.
    pub fn key_indexes(&self, args: usize) -> impl Iterator<Item = usize> {
        let (first, step) = (self.first_key.max(0) as usize, self.step.max(1) as usize);
        let last = if self.last_key < 0 {
            args as i64 + self.last_key as i64
        } else {
            self.last_key as i64
        };
        let end = if first == 0 { 0 } else { (last + 1).clamp(0, args as i64) as usize };
        (first..end).step_by(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows the table is sorted and unique (COMMAND output is stable), and key positions
    // come out as cluster clients compute them.
    #[test]
    fn table_is_sorted_and_keys_are_where_clients_look() {
        for pair in COMMANDS.windows(2) {
            assert!(pair[0].name < pair[1].name, "{} before {}", pair[0].name, pair[1].name);
        }
        let keys =
            |name: &str, n| find(name.as_bytes()).unwrap().key_indexes(n).collect::<Vec<_>>();
        assert_eq!(keys("GET", 2), [1]);
        assert_eq!(keys("mset", 5), [1, 3]);
        assert_eq!(keys("del", 4), [1, 2, 3]);
        assert_eq!(keys("set", 5), [1]);
        assert_eq!(keys("ping", 2), Vec::<usize>::new());
        assert!(find(b"SeT").is_some_and(|s| s.arity_ok(3) && !s.arity_ok(2)));
        assert!(find(b"get").is_some_and(|s| s.arity_ok(2) && !s.arity_ok(3)));
    }
}
