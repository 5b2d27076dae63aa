//! `WATCH`, `MULTI`, `EXEC`, `DISCARD`, `UNWATCH`: Redis transactions as one corekv
//! transaction.
//!
//! `WATCH` reads the keys' mod indexes (linearizably) and remembers them. `MULTI` queues
//! commands, checking each as it comes (an unknown command, a wrong arity, a key of another
//! shard or a command that cannot run in a transaction fails the transaction, and `EXEC`
//! then answers `EXECABORT`, as Redis does). `EXEC` sends one transaction: a compare of each
//! watched key's mod index with the one read (0: it did not exist), then every queued
//! command's ops (`keys::txn_form`) — all applied at one raft index, or none when a
//! watched key changed (`EXEC` answers null). A command that fails as it runs (`INCR` of a
//! word) answers its error in `EXEC`'s array while the others apply, as in Redis.

use corekv_proto::client::{CompareOp, CompareTarget, ReplyFrame};
use corekv_proto::encode::{CompareSpec, TxnOpSpec};

use super::commands;
use super::keys::{txn_form, TxnStep};
use super::render::{Render, Shape};
use super::session::{Answer, Host, Session};
use crate::constants::RESP_COMMAND_BYTES_MAX;
use corekv_proto::constants::BATCH_KEYS_MAX;

/// Most commands one `MULTI` may queue (a transaction's ops are bounded by the batch limit).
pub const QUEUED_COMMANDS_MAX: usize = 1_000;

/// Most keys a connection may watch.
pub const WATCHED_KEYS_MAX: usize = 1_000;

/// A `MULTI` being queued.
#[derive(Debug, Default)]
pub(super) struct Multi {
    /// The queued commands' arguments.
    queued: Vec<Vec<Vec<u8>>>,
    /// Their bytes: at most [`RESP_COMMAND_BYTES_MAX`], so `EXEC`'s request fits a frame.
    bytes: usize,
    /// Their transaction ops: at most [`BATCH_KEYS_MAX`], a transaction's bound.
    ops: usize,
    /// A command failed to queue: `EXEC` answers `EXECABORT`.
    failed: bool,
}

impl Multi {
    /// Bytes of the queued commands.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Session {
    /// Runs `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH` (`name`: the command's, as the
    /// table has it); `None` for other commands.
    pub(super) fn transaction_command(
        &mut self,
        seq: u64,
        name: &str,
        args: &[Vec<u8>],
        host: &mut dyn Host,
    ) -> Option<Answer> {
        Some(match name {
            "multi" if args.len() == 1 => {
                if self.multi.is_some() {
                    return Some(self.error("ERR MULTI calls can not be nested"));
                }
                self.multi = Some(Multi::default());
                Answer::Now(self.reply(|r| r.ok()))
            }
            "discard" if args.len() == 1 => match self.multi.take() {
                Some(_) => {
                    self.watched.clear();
                    Answer::Now(self.reply(|r| r.ok()))
                }
                None => self.error("ERR DISCARD without MULTI"),
            },
            "exec" if args.len() == 1 => self.exec(seq, host),
            "unwatch" if args.len() == 1 => {
                self.watched.clear();
                Answer::Now(self.reply(|r| r.ok()))
            }
            "watch" if args.len() >= 2 => self.watch(seq, args, host),
            "multi" | "discard" | "exec" | "unwatch" | "watch" => {
                self.error(&format!("ERR wrong number of arguments for '{name}' command"))
            }
            _ => return None,
        })
    }

    /// Queues a command inside `MULTI`: `QUEUED`, or the error that fails the transaction.
    pub(super) fn queue(&mut self, args: Vec<Vec<u8>>, host: &mut dyn Host) -> Answer {
        let checked = self.check_queued(&args, host);
        let Some(multi) = self.multi.as_mut() else { unreachable!("queueing outside MULTI") };
        match checked {
            Ok(ops) => {
                multi.bytes += args.iter().map(Vec::len).sum::<usize>();
                multi.ops += ops;
                multi.queued.push(args);
                Answer::Now(self.reply(|r| r.simple("QUEUED")))
            }
            Err(error) => {
                multi.failed = true;
                self.error(&error)
            }
        }
    }

    /// Whether the command may be queued: the transaction ops it adds, or why not.
    fn check_queued(&self, args: &[Vec<u8>], host: &dyn Host) -> Result<usize, String> {
        let spec = commands::find(&args[0]).ok_or_else(|| super::session::unknown_command(args))?;
        if !spec.arity_ok(args.len()) {
            return Err(format!("ERR wrong number of arguments for '{}' command", spec.name));
        }
        let Some(multi) = self.multi.as_ref() else { unreachable!("checking outside MULTI") };
        if multi.queued.len() >= QUEUED_COMMANDS_MAX {
            return Err(format!("ERR a transaction queues at most {QUEUED_COMMANDS_MAX} commands"));
        }
        if multi.bytes + args.iter().map(Vec::len).sum::<usize>() > RESP_COMMAND_BYTES_MAX {
            return Err(format!(
                "ERR a transaction's commands take at most {RESP_COMMAND_BYTES_MAX} bytes"
            ));
        }
        if spec.first_key == 0 {
            return Err(format!(
                "ERR {} is not supported inside MULTI (only commands on keys are)",
                spec.name.to_uppercase()
            ));
        }
        self.route(spec, args, host)?;
        let ops = txn_form(spec, args, host.now_ms())?.0.len();
        if multi.ops + ops > BATCH_KEYS_MAX {
            return Err(format!("ERR a transaction holds at most {BATCH_KEYS_MAX} operations"));
        }
        Ok(ops)
    }

    /// `EXEC`: the queued commands as one transaction, guarded by the watched keys.
    fn exec(&mut self, seq: u64, host: &mut dyn Host) -> Answer {
        let Some(multi) = self.multi.take() else {
            return self.error("ERR EXEC without MULTI");
        };
        let watched = std::mem::take(&mut self.watched);
        if multi.failed {
            return self.error("EXECABORT Transaction discarded because of previous errors.");
        }
        if multi.queued.is_empty() && watched.is_empty() {
            return Answer::Now(self.reply(|r| r.array(0)));
        }
        let now_ms = host.now_ms();
        let mut steps: Vec<TxnStep<'_>> = Vec::new();
        let mut shapes: Vec<Shape> = Vec::new();
        for args in &multi.queued {
            let spec = commands::find(&args[0]).expect("checked when queued");
            match txn_form(spec, args, now_ms) {
                Ok((ops, shape)) => {
                    steps.extend(ops);
                    shapes.push(shape);
                }
                // Checked when queued; a clock-dependent form could only now be refused.
                Err(error) => return self.error(&format!("EXECABORT {error}")),
            }
        }
        let compares: Vec<CompareSpec<'_>> = watched
            .iter()
            .map(|(key, mod_index)| CompareSpec {
                key,
                target: CompareTarget::ModIndex,
                op: CompareOp::Equal,
                value: None,
                number: *mod_index,
            })
            .collect();
        let ops: Vec<TxnOpSpec<'_>> = steps.iter().map(TxnStep::spec).collect();
        host.submit(self.encoder.txn(seq, &compares, &ops, &[]));
        // The slot of the first key, for a redirection: every key is this shard's.
        let first = multi.queued.first().map(|args| &args[1]).or(watched.first().map(|w| &w.0));
        let slot = first.map(|key| corekv_types::placement::slot(key));
        Answer::Core(Render::Exec(shapes), slot)
    }

    /// `WATCH key…`: reads the keys' mod indexes, remembered when the reply comes.
    fn watch(&mut self, seq: u64, args: &[Vec<u8>], host: &mut dyn Host) -> Answer {
        if self.multi.is_some() {
            return self.error("ERR WATCH inside MULTI is not allowed");
        }
        if self.watched.len() + args.len() - 1 > WATCHED_KEYS_MAX {
            return self
                .error(&format!("ERR a connection watches at most {WATCHED_KEYS_MAX} keys"));
        }
        let spec = commands::find(b"exists").expect("in the table");
        if let Err(error) = self.route(spec, args, host) {
            return self.error(&error);
        }
        let keys: Vec<&[u8]> = args[1..].iter().map(Vec::as_slice).collect();
        let frame =
            self.encoder.batch_get(seq, &keys, corekv_proto::client::Consistency::Linearizable);
        host.submit(frame);
        let slot = corekv_types::placement::slot(&args[1]);
        Answer::Core(Render::Watch(args[1..].to_vec()), Some(slot))
    }

    /// Takes a `WATCH`'s reply: each key's mod index (0: it did not exist).
    pub(super) fn watched_read(&mut self, keys: &[Vec<u8>], frame: &ReplyFrame<'_>) {
        let Some(batch) = frame.reply_as_batch_get_reply() else { return };
        for (key, result) in keys.iter().zip(batch.results()) {
            let mod_index = result.entry().map_or(0, |e| e.meta().mod_index());
            self.watched.push((key.clone(), mod_index));
        }
    }
}
