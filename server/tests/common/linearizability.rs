//! Client histories of single-key operations and their linearizability check, shared by the
//! deterministic simulator and the real-process fault tests.
//!
//! A client records each operation when it sends it (`invoke`) and when the answer comes back
//! (`complete`). An operation whose answer never came (a timeout, a lost connection, a
//! `Timeout` error) stays open: it may or may not have taken effect, at any time after its
//! invocation. An operation refused before it could take effect (`NotLeader`, `Unavailable`,
//! `Busy`) is `forget`-ten — it is not part of the history. Reads with no answer are forgotten
//! too: they change nothing.
//!
//! Every key is an independent register, so the history is checked key by key (linearizability
//! is compositional) with `stateright`'s `LinearizabilityTester`, whose search allows each open
//! operation to take effect or not.

// Shared by the simulator and the fault tests; each uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;

use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

/// An operation on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum KvOp {
    Put(Vec<u8>),
    Get,
    Delete,
    /// Compare-and-set: writes `new` if the value is `expect`.
    Cas {
        expect: Vec<u8>,
        new: Vec<u8>,
    },
    /// Appends to the value (a missing key is empty), in the state machine.
    Append(Vec<u8>),
    /// Adds to the value read as a decimal integer (a missing key is 0), in the state
    /// machine; refused, changing nothing, when the value is not one.
    Incr(i64),
}

/// What an operation returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum KvRet {
    Put,
    Get(Option<Vec<u8>>),
    /// Whether the key existed.
    Delete(bool),
    /// Whether the compare held (and the write happened).
    Cas(bool),
    /// The value's length after an append.
    Length(u64),
    /// The value after an increment; `None`: refused (the value is not an integer).
    Incr(Option<i64>),
}

/// The sequential specification: one register that may be absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Register(Option<Vec<u8>>);

impl SequentialSpec for Register {
    type Op = KvOp;
    type Ret = KvRet;

    fn invoke(&mut self, op: &KvOp) -> KvRet {
        match op {
            KvOp::Put(value) => {
                self.0 = Some(value.clone());
                KvRet::Put
            }
            KvOp::Get => KvRet::Get(self.0.clone()),
            KvOp::Delete => KvRet::Delete(self.0.take().is_some()),
            KvOp::Cas { expect, new } => {
                if self.0.as_ref() == Some(expect) {
                    self.0 = Some(new.clone());
                    KvRet::Cas(true)
                } else {
                    KvRet::Cas(false)
                }
            }
            KvOp::Append(tail) => {
                let value = self.0.get_or_insert_with(Vec::new);
                value.extend_from_slice(tail);
                KvRet::Length(value.len() as u64)
            }
            KvOp::Incr(delta) => {
                let current = match &self.0 {
                    None => Some(0),
                    Some(value) => integer(value),
                };
                let new = current.and_then(|c| c.checked_add(*delta));
                if let Some(new) = new {
                    self.0 = Some(new.to_string().into_bytes());
                }
                KvRet::Incr(new)
            }
        }
    }
}

/// A value as Redis's `INCRBY` reads one: a decimal integer, an optional `-`, no leading zero,
/// no `+`, no spaces. Written apart from the state machine's reading (`computed.rs`) on
/// purpose: the model is what the server is checked against, so it must not share its code.
fn integer(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    let leading_zero = digits.len() > 1 && digits.starts_with('0');
    if digits.is_empty() || leading_zero || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Identifies a recorded operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpId(usize);

#[derive(Clone, Debug)]
struct Recorded {
    key: Vec<u8>,
    thread: u64,
    op: KvOp,
    invoked: u64,
    returned: Option<(u64, KvRet)>,
    forgotten: bool,
}

/// What a check looked at.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckStats {
    pub keys: usize,
    pub operations: usize,
    /// Operations whose outcome is unknown.
    pub open: usize,
    /// Appends and increments (read-modify-writes in the state machine).
    pub computed: usize,
}

/// A history of operations on many keys. Times are any monotonic clock (simulated
/// microseconds, or nanoseconds since the test began); a thread has at most one operation open
/// at a time, and a thread whose operation stays open must not be used again.
#[derive(Clone, Debug, Default)]
pub struct History {
    ops: Vec<Recorded>,
}

impl History {
    pub fn new() -> Self {
        History::default()
    }

    /// Records that `thread` sent `op` on `key` at time `at`.
    pub fn invoke(&mut self, thread: u64, key: &[u8], op: KvOp, at: u64) -> OpId {
        self.ops.push(Recorded {
            key: key.to_vec(),
            thread,
            op,
            invoked: at,
            returned: None,
            forgotten: false,
        });
        OpId(self.ops.len() - 1)
    }

    /// Records the answer to `id`, received at time `at`.
    pub fn complete(&mut self, id: OpId, ret: KvRet, at: u64) {
        let op = &mut self.ops[id.0];
        assert!(op.returned.is_none(), "operation {id:?} completed twice");
        op.returned = Some((at, ret));
    }

    /// What `id` asked.
    pub fn op(&self, id: OpId) -> &KvOp {
        &self.ops[id.0].op
    }

    /// When `id` was invoked.
    pub fn invoked_at(&self, id: OpId) -> u64 {
        self.ops[id.0].invoked
    }

    /// Drops `id`: it was refused before it could take effect.
    pub fn forget(&mut self, id: OpId) {
        self.ops[id.0].forgotten = true;
    }

    /// Checks that the history of every key is linearizable. On failure, says which key and
    /// lists its operations in time order.
    pub fn check(&self) -> Result<CheckStats, String> {
        let mut by_key: BTreeMap<&[u8], Vec<&Recorded>> = BTreeMap::new();
        for op in self.ops.iter().filter(|o| !o.forgotten) {
            by_key.entry(&op.key).or_default().push(op);
        }
        let mut stats = CheckStats { keys: by_key.len(), ..CheckStats::default() };
        for (key, ops) in &by_key {
            stats.operations += ops.len();
            stats.open += ops.iter().filter(|o| o.returned.is_none()).count();
            let computed = |o: &&&Recorded| matches!(o.op, KvOp::Append(_) | KvOp::Incr(_));
            stats.computed += ops.iter().filter(computed).count();
            check_key(ops).map_err(|why| {
                let mut text = format!(
                    "history of key {:?} is not linearizable: {why}\n",
                    String::from_utf8_lossy(key)
                );
                for line in describe(ops) {
                    text.push_str(&line);
                    text.push('\n');
                }
                text
            })?;
        }
        Ok(stats)
    }
}

/// Invocations and returns in time order; at equal times, invocations first (that orders
/// nothing that the clock did not).
fn events(ops: &[&Recorded]) -> Vec<(u64, bool, usize)> {
    let mut events = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoked, false, i));
        if let Some((at, _)) = &op.returned {
            events.push((*at, true, i));
        }
    }
    events.sort();
    events
}

fn check_key(ops: &[&Recorded]) -> Result<(), String> {
    let mut tester = LinearizabilityTester::<u64, Register>::new(Register::default());
    for (_, is_return, i) in events(ops) {
        let op = ops[i];
        let fed = if is_return {
            let (_, ret) = op.returned.as_ref().expect("a return event has a return");
            tester.on_return(op.thread, ret.clone()).map(|_| ())
        } else {
            tester.on_invoke(op.thread, op.op.clone()).map(|_| ())
        };
        fed.map_err(|e| format!("malformed history: {e}"))?;
    }
    if tester.is_consistent() {
        Ok(())
    } else {
        Err("no order of the operations explains every answer".to_string())
    }
}

fn describe(ops: &[&Recorded]) -> Vec<String> {
    let mut ops = ops.to_vec();
    ops.sort_by_key(|o| o.invoked);
    ops.iter()
        .map(|o| match &o.returned {
            Some((at, ret)) => {
                format!(
                    "  [{:>12} .. {:>12}] thread {:>6}: {:?} -> {:?}",
                    o.invoked, at, o.thread, o.op, ret
                )
            }
            None => format!(
                "  [{:>12} ..            ?] thread {:>6}: {:?} -> unknown",
                o.invoked, o.thread, o.op
            ),
        })
        .collect()
}
