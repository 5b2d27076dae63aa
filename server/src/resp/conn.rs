//! The commands without keys: the connection's own (`PING`, `HELLO`, `AUTH`, `CLIENT`,
//! `SELECT`, `READONLY`, `QUIT`), the server's (`COMMAND`, `INFO`, `DBSIZE`), and the shard
//! iterators (`SCAN`, `KEYS`), which read this shard's keys only, as a Redis Cluster node's
//! do.

use corekv_proto::constants::SCAN_LIMIT_MAX;
use corekv_proto::encode::ScanSpec;

use super::commands::{Spec, COMMANDS};
use super::render::Render;
use super::reply::Reply;
use super::session::{integer, is, Answer, Host, Session};
use super::{glob, KEYS_MAX, REDIS_VERSION};
use crate::constants::RESP_PATTERN_BYTES_MAX;

/// `SCAN`'s page size when `COUNT` is not given (Redis's).
const SCAN_COUNT_DEFAULT: u32 = 10;

/// Why a pattern was refused before reading.
const PATTERN_TOO_LONG: &str = "ERR pattern longer than 8192 bytes";
const _: () = assert!(RESP_PATTERN_BYTES_MAX == 8192);

impl Session {
    pub(super) fn unkeyed(
        &mut self,
        seq: u64,
        spec: &Spec,
        args: &[Vec<u8>],
        host: &mut dyn Host,
    ) -> Answer {
        let reply = |session: &Session, write: &dyn Fn(&mut Reply<'_>)| {
            Answer::Now(session.reply(|r| write(r)))
        };
        match spec.name {
            "ping" if args.len() > 2 => {
                self.error("ERR wrong number of arguments for 'ping' command")
            }
            "ping" => match args.get(1) {
                Some(message) => reply(self, &|r| r.bulk(message)),
                None => reply(self, &|r| r.simple("PONG")),
            },
            "echo" => reply(self, &|r| r.bulk(&args[1])),
            "quit" => Answer::Close(self.reply(|r| r.ok())),
            "select" => match integer(&args[1]) {
                Ok(0) => reply(self, &|r| r.ok()),
                Ok(_) => self.error("ERR SELECT is not allowed in cluster mode"),
                Err(error) => self.error(&error),
            },
            "readonly" | "readwrite" => {
                self.readonly = spec.name == "readonly";
                reply(self, &|r| r.ok())
            }
            "hello" => self.hello(args, host),
            "auth" => self.auth(&args[1..], host),
            "client" => self.client(args),
            "command" => self.command_info(args),
            "dbsize" => {
                let keys = host.key_count();
                reply(self, &|r| r.int(keys as i64))
            }
            "info" => {
                let text = self.info(args.get(1).map(Vec::as_slice), host);
                reply(self, &|r| r.verbatim(&text))
            }
            "cluster" => self.cluster(args, host),
            "config" => self.config(args),
            "scan" => match self.scan(seq, args, host) {
                Ok(render) => Answer::Core(render, Some(self.first_slot())),
                Err(error) => self.error(&error),
            },
            "keys" if args[1].len() > RESP_PATTERN_BYTES_MAX => self.error(PATTERN_TOO_LONG),
            "keys" => {
                let pattern = args[1].clone();
                let prefix = glob::literal_prefix(&pattern);
                let spec = ScanSpec {
                    prefix: (!prefix.is_empty()).then_some(&prefix[..]),
                    limit: KEYS_MAX as u32,
                    keys_only: true,
                    consistency: self.consistency(),
                    ..ScanSpec::default()
                };
                host.submit(self.encoder.scan(seq, &spec));
                Answer::Core(Render::Keys { pattern }, Some(self.first_slot()))
            }
            other => unreachable!("{other} is in the table but has no handler"),
        }
    }

    /// The first slot of this connection's shard: where a shard-wide command (`SCAN`,
    /// `KEYS`) sent to a replica that does not lead is redirected.
    fn first_slot(&self) -> u32 {
        corekv_types::placement::slot_range(self.place.shard, self.place.shards).start
    }

    /// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]` over this shard's keys. The
    /// cursor names where the last page stopped, kept by the shard for a while
    /// ([`Host::save_cursor`]); 0 starts over.
    fn scan(&mut self, seq: u64, args: &[Vec<u8>], host: &mut dyn Host) -> Result<Render, String> {
        let cursor = std::str::from_utf8(&args[1])
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or("ERR invalid cursor")?;
        let after = match cursor {
            0 => None,
            cursor => Some(host.load_cursor(cursor).ok_or_else(|| {
                format!(
                    "ERR cursor {cursor} is unknown to this shard (expired, or from another \
                     shard): start again from 0"
                )
            })?),
        };
        let (mut pattern, mut count, mut strings) = (None, SCAN_COUNT_DEFAULT, true);
        let mut at = 2;
        while at < args.len() {
            let value = args.get(at + 1).ok_or("ERR syntax error")?;
            if is(&args[at], "MATCH") {
                if value.len() > RESP_PATTERN_BYTES_MAX {
                    return Err(PATTERN_TOO_LONG.into());
                }
                pattern = Some(value.clone());
            } else if is(&args[at], "COUNT") {
                count = match integer(value)? {
                    n if n < 1 => return Err("ERR syntax error".into()),
                    n => n.min(SCAN_LIMIT_MAX as i64) as u32,
                };
            } else if is(&args[at], "TYPE") {
                // Every corekv value is a string.
                strings = is(value, "string");
            } else {
                return Err("ERR syntax error".into());
            }
            at += 2;
        }
        if !strings {
            // No key has another type: an empty last page.
            pattern = Some(b"[]".to_vec());
        }
        let prefix = pattern.as_deref().map(glob::literal_prefix).unwrap_or_default();
        let spec = ScanSpec {
            prefix: (!prefix.is_empty()).then_some(&prefix[..]),
            continuation: after.as_deref(),
            limit: count,
            keys_only: true,
            consistency: self.consistency(),
            ..ScanSpec::default()
        };
        host.submit(self.encoder.scan(seq, &spec));
        Ok(Render::Scan { pattern })
    }

    /// `CONFIG GET pattern…`: the few settings tools read (redis-benchmark asks for `save`
    /// and `appendonly`), with corekv's answers; nothing can be set.
    fn config(&self, args: &[Vec<u8>]) -> Answer {
        const SETTINGS: [(&str, &str); 5] = [
            ("appendfsync", "always"),
            ("appendonly", "yes"),
            ("databases", "1"),
            ("maxmemory", "0"),
            ("save", ""),
        ];
        if !is(&args[1], "GET") || args.len() < 3 {
            return self.error(
                "ERR only CONFIG GET is supported: corekv is configured by its registry file \
                 and flags",
            );
        }
        let found: Vec<&(&str, &str)> = SETTINGS
            .iter()
            .filter(|(name, _)| {
                args[2..].iter().any(|p| glob::matches(&p.to_ascii_lowercase(), name.as_bytes()))
            })
            .collect();
        Answer::Now(self.reply(|r| {
            r.map(found.len());
            for (name, value) in found {
                r.bulk(name.as_bytes());
                r.bulk(value.as_bytes());
            }
        }))
    }

    /// `HELLO [2|3] [AUTH user token] [SETNAME name]`.
    fn hello(&mut self, args: &[Vec<u8>], host: &mut dyn Host) -> Answer {
        let mut resp3 = self.resp3;
        if let Some(version) = args.get(1) {
            match integer(version) {
                Ok(2) => resp3 = false,
                Ok(3) => resp3 = true,
                _ => return self.error("NOPROTO unsupported protocol version"),
            }
        }
        let mut at = 2;
        while at < args.len() {
            if is(&args[at], "AUTH") && at + 2 < args.len() {
                if let Answer::Now(refused) = self.auth(&args[at + 1..at + 3], host) {
                    if refused.first() == Some(&b'-') {
                        return Answer::Now(refused);
                    }
                }
                at += 3;
            } else if is(&args[at], "SETNAME") && at + 1 < args.len() {
                if args[at + 1].iter().any(|b| *b <= b' ' || *b > b'~') {
                    return self.error(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                self.name = Some(args[at + 1].clone());
                at += 2;
            } else {
                return self.error(&format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&args[at])
                ));
            }
        }
        if self.user.is_none() && host.auth_enabled() {
            return self.error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
        }
        self.resp3 = resp3;
        let leader = host
            .shard_views()
            .iter()
            .any(|v| v.shard == self.place.shard && v.leader == self.place.node);
        Answer::Now(self.reply(|r| {
            r.map(7);
            r.bulk(b"server");
            r.bulk(b"redis");
            r.bulk(b"version");
            r.bulk(REDIS_VERSION.as_bytes());
            r.bulk(b"proto");
            r.int(if resp3 { 3 } else { 2 });
            r.bulk(b"id");
            r.int(self.id as i64);
            r.bulk(b"mode");
            r.bulk(b"cluster");
            r.bulk(b"role");
            r.bulk(if leader { b"master" } else { b"replica" });
            r.bulk(b"modules");
            r.array(0);
        }))
    }

    /// `AUTH token` or `AUTH user token`: the token is one of the cluster's bearer tokens
    /// (and names `user`, when given).
    fn auth(&mut self, args: &[Vec<u8>], host: &mut dyn Host) -> Answer {
        if args.len() > 2 {
            return self.error("ERR syntax error");
        }
        if !host.auth_enabled() {
            // As Redis's `nopass` default user: any password for `default`.
            if args.len() == 2 && is(&args[0], "default") {
                return Answer::Now(self.reply(|r| r.ok()));
            }
            return self.error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?");
        }
        let (user, token) = match args {
            [token] => (None, token),
            [user, token] => (Some(String::from_utf8_lossy(user).into_owned()), token),
            _ => return self.error("ERR syntax error"),
        };
        let token = String::from_utf8_lossy(token);
        match host.authenticate(user.as_deref(), &token) {
            Ok(user) => {
                self.user = Some(user);
                Answer::Now(self.reply(|r| r.ok()))
            }
            Err(reason) => {
                tracing::info!(conn = self.id, %reason, "refused a RESP AUTH");
                self.error("WRONGPASS invalid username-password pair or user is disabled.")
            }
        }
    }

    /// `CLIENT ID | SETNAME | GETNAME | SETINFO | INFO`.
    fn client(&mut self, args: &[Vec<u8>]) -> Answer {
        let sub = &args[1];
        if is(sub, "ID") && args.len() == 2 {
            let id = self.id as i64;
            return Answer::Now(self.reply(|r| r.int(id)));
        }
        if is(sub, "GETNAME") && args.len() == 2 {
            let name = self.name.clone();
            return Answer::Now(self.reply(|r| r.bulk_or_null(name.as_deref())));
        }
        if is(sub, "SETNAME") && args.len() == 3 {
            if args[2].iter().any(|b| *b <= b' ' || *b > b'~') {
                return self.error(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            self.name = (!args[2].is_empty()).then(|| args[2].clone());
            return Answer::Now(self.reply(|r| r.ok()));
        }
        if is(sub, "SETINFO") && args.len() == 4 {
            if is(&args[2], "LIB-NAME") {
                self.lib.0 = Some(args[3].clone());
            } else if is(&args[2], "LIB-VER") {
                self.lib.1 = Some(args[3].clone());
            } else {
                return self.error(&format!(
                    "ERR Unrecognized option '{}'",
                    String::from_utf8_lossy(&args[2])
                ));
            }
            return Answer::Now(self.reply(|r| r.ok()));
        }
        if is(sub, "INFO") && args.len() == 2 {
            let text = self.client_line();
            return Answer::Now(self.reply(|r| r.verbatim(&text)));
        }
        self.error(&format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(sub)
        ))
    }

    fn client_line(&self) -> String {
        let text = |v: &Option<Vec<u8>>| {
            v.as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned()
        };
        format!(
            "id={} name={} db=0 resp={} user={} lib-name={} lib-ver={} flags={}\n",
            self.id,
            text(&self.name),
            if self.resp3 { 3 } else { 2 },
            self.user.as_deref().unwrap_or("default"),
            text(&self.lib.0),
            text(&self.lib.1),
            if self.readonly { "r" } else { "N" },
        )
    }

    /// `COMMAND`, `COMMAND COUNT | LIST | INFO name… | DOCS name…`.
    fn command_info(&self, args: &[Vec<u8>]) -> Answer {
        let named = |from: usize| -> Vec<Option<&Spec>> {
            if args.len() <= from {
                COMMANDS.iter().map(Some).collect()
            } else {
                args[from..].iter().map(|name| super::commands::find(name)).collect()
            }
        };
        match args.get(1) {
            None => Answer::Now(self.reply(|r| {
                r.array(COMMANDS.len());
                COMMANDS.iter().for_each(|spec| write_info(r, spec));
            })),
            Some(sub) if is(sub, "COUNT") => {
                Answer::Now(self.reply(|r| r.int(COMMANDS.len() as i64)))
            }
            Some(sub) if is(sub, "LIST") => Answer::Now(self.reply(|r| {
                r.array(COMMANDS.len());
                COMMANDS.iter().for_each(|spec| r.bulk(spec.name.as_bytes()));
            })),
            Some(sub) if is(sub, "INFO") => Answer::Now(self.reply(|r| {
                let specs = named(2);
                r.array(specs.len());
                for spec in specs {
                    match spec {
                        Some(spec) => write_info(r, spec),
                        None => r.null_array(),
                    }
                }
            })),
            Some(sub) if is(sub, "DOCS") => Answer::Now(self.reply(|r| {
                let specs: Vec<&Spec> = named(2).into_iter().flatten().collect();
                r.map(specs.len());
                for spec in specs {
                    r.bulk(spec.name.as_bytes());
                    r.map(3);
                    r.bulk(b"summary");
                    r.bulk(spec.summary.as_bytes());
                    r.bulk(b"since");
                    r.bulk(b"1.0.0");
                    r.bulk(b"group");
                    r.bulk(spec.group.as_bytes());
                }
            })),
            Some(sub) => self.error(&format!(
                "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                String::from_utf8_lossy(sub)
            )),
        }
    }
}

/// One command as `COMMAND INFO` gives it (Redis 7's ten fields, key specs included).
fn write_info(r: &mut Reply<'_>, spec: &Spec) {
    r.array(10);
    r.bulk(spec.name.as_bytes());
    r.int(spec.arity as i64);
    r.set(spec.flags.len());
    spec.flags.iter().for_each(|flag| r.simple(flag));
    r.int(spec.first_key as i64);
    r.int(spec.last_key as i64);
    r.int(spec.step as i64);
    r.set(0); // ACL categories
    r.set(0); // tips
    if spec.first_key == 0 {
        r.array(0);
    } else {
        r.array(1);
        r.map(3);
        r.bulk(b"flags");
        r.set(2);
        r.simple(if spec.writes { "RW" } else { "RO" });
        r.simple(if spec.writes { "UPDATE" } else { "ACCESS" });
        r.bulk(b"begin_search");
        r.map(2);
        r.bulk(b"type");
        r.bulk(b"index");
        r.bulk(b"spec");
        r.map(1);
        r.bulk(b"index");
        r.int(spec.first_key as i64);
        r.bulk(b"find_keys");
        r.map(2);
        r.bulk(b"type");
        r.bulk(b"range");
        r.bulk(b"spec");
        r.map(3);
        r.bulk(b"lastkey");
        r.int(if spec.last_key < 0 {
            spec.last_key as i64
        } else {
            (spec.last_key - spec.first_key) as i64
        });
        r.bulk(b"keystep");
        r.int(spec.step as i64);
        r.bulk(b"limit");
        r.int(0);
    }
    r.array(0); // subcommands
}
