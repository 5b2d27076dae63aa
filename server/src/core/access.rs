//! Who each client connection is, and whether it may make a request (the registry's
//! `[auth]`; `corekv_types::auth` has the policy).
//!
//! A connection's user is its client certificate's subject common name (the shell tells the
//! core at accept) or, when its hello carries a bearer token the policy knows, the token's
//! user (the token wins). A hello may also name a user to act for (`as_user`): the
//! connection's own user must then have the `proxy` right, and requests are checked as the
//! named user's (the HTTP gateway acting for the clients whose certificates it verified).
//! The token and the user's rights are looked up in the policy in force at each request, so
//! a SIGHUP that changes them (or removes the token) applies to open connections at once;
//! running watches are checked again after a reload and the refused ones end with
//! `PermissionDenied`. Every request is checked before it is served: reads need read rights
//! on every key they touch, writes write rights; a scan or a watch needs one
//! readable prefix holding its whole range (it is refused, never cut down); leases need some
//! write right, and a grant that puts keys write rights on them; revoking a lease or keeping
//! it alive needs write rights on every key it holds (revoking deletes them), asking its time
//! to live read rights on them (checked by the core, which knows a lease's keys); status,
//! membership changes, leadership transfers and backups need admin. The membership itself is
//! open to every user: clients route by it. A request of a type this module does not know is
//! refused.

use std::collections::HashMap;
use std::sync::Arc;

use corekv_proto::client::{Request, RequestFrame, TxnOpKind, WatchScope};
use corekv_types::auth::{prefix_end, Access, Policy};

use corekv_proto::encode::ErrorInfo;

use super::replies::Caller;
use super::{ConnId, ShardCore};
use crate::auth::NodeAuth;

/// See the module docs.
#[derive(Default)]
pub(super) struct AccessControl {
    /// The node's policy; `None`: no `[auth]`, every request allowed.
    pub(super) auth: Option<Arc<NodeAuth>>,
    /// Per open connection, who it is.
    principals: HashMap<ConnId, Principal>,
    /// The policy's reload count when running watches were last checked.
    seen_generation: u64,
}

#[derive(Debug, Default, Clone)]
struct Principal {
    /// The client certificate's user.
    cert_user: Option<String>,
    /// The digest of the hello's token (looked up again at each request: a token removed
    /// from the policy stops working at once).
    token: Option<String>,
    /// The user the hello said the connection acts for.
    as_user: Option<String>,
    /// A hello of this connection was refused: nothing more is served on it.
    refused: bool,
    /// The client protocol its hello said it speaks (older than 8: no `PermissionDenied`).
    protocol: u32,
}

impl AccessControl {
    pub(super) fn enabled(&self) -> bool {
        self.auth.is_some()
    }

    /// A connection was accepted; its certificate names `cert_user`.
    pub(super) fn connected(&mut self, conn: ConnId, cert_user: Option<String>) {
        if self.enabled() {
            self.principals.insert(conn, Principal { cert_user, ..Principal::default() });
        }
    }

    /// A Redis (RESP) connection was accepted: it has no hello, and reads refusals as
    /// `NOPERM` (it speaks the newest protocol's error kinds).
    fn resp_connected(&mut self, conn: ConnId, cert_user: Option<String>) {
        if self.enabled() {
            let protocol = corekv_proto::constants::CLIENT_PROTOCOL_VERSION;
            self.principals.insert(conn, Principal { cert_user, protocol, ..Principal::default() });
        }
    }

    /// A RESP `AUTH`: bearer token `token` (of user `user`, when named) becomes the
    /// connection's; the user it names, or why not (the connection keeps what it had).
    fn authenticate(
        &mut self,
        conn: ConnId,
        user: Option<&str>,
        token: &str,
    ) -> Result<String, String> {
        let Some(auth) = self.auth.clone() else {
            return Err("the cluster has no [auth]".into());
        };
        let digest = crate::auth::token_digest(token);
        let policy = auth.policy();
        let named = policy.token_user(&digest).ok_or("the token is not one the policy knows")?;
        if user.is_some_and(|user| user != named) {
            return Err(format!("the token is user {named:?}'s, not {user:?}'s"));
        }
        let principal = self.principals.entry(conn).or_default();
        principal.token = Some(digest);
        Ok(named.to_string())
    }

    pub(super) fn closed(&mut self, conn: ConnId) {
        self.principals.remove(&conn);
    }

    /// The hello's protocol version, token and user to act for: the user the connection
    /// is, or why it is refused.
    pub(super) fn hello(
        &mut self,
        conn: ConnId,
        protocol: u32,
        token: Option<&str>,
        as_user: Option<&str>,
    ) -> Result<(), String> {
        let Some(auth) = self.auth.clone() else { return Ok(()) };
        let principal = self.principals.entry(conn).or_default();
        principal.protocol = protocol;
        if principal.refused {
            return Err("a hello on this connection was refused".into());
        }
        if let Some(token) = token {
            let digest = crate::auth::token_digest(token);
            if auth.policy().token_user(&digest).is_none() {
                principal.refused = true;
                return Err("the token is not one the cluster's policy knows (revoked, or \
                            mistyped?)"
                    .into());
            }
            principal.token = Some(digest);
        }
        principal.as_user = as_user.map(str::to_string);
        if as_user.is_some() {
            let policy = auth.policy();
            if let Err(reason) = self.access(conn, &policy) {
                if let Some(principal) = self.principals.get_mut(&conn) {
                    principal.refused = true;
                }
                return Err(reason);
            }
        }
        Ok(())
    }

    /// Connection `conn`'s user and rights under the policy in force; why none, when none.
    fn access<'a>(
        &'a self,
        conn: ConnId,
        policy: &'a Policy,
    ) -> Result<(&'a str, &'a Access), String> {
        let principal = self.principals.get(&conn).filter(|p| !p.refused);
        let user = match principal.and_then(|p| p.token.as_deref()) {
            Some(digest) => policy
                .token_user(digest)
                .ok_or("the connection's token was removed from the cluster's policy")?,
            None => principal
                .and_then(|p| p.cert_user.as_deref())
                .ok_or("no user: show a client certificate or a token")?,
        };
        let access = policy
            .user(user)
            .ok_or_else(|| format!("user {user:?} is not in the cluster's policy"))?;
        let Some(acting) = principal.and_then(|p| p.as_user.as_deref()) else {
            return Ok((user, access));
        };
        if !access.proxy {
            return Err(format!(
                "user {user:?} may not act for other users (none of its roles has proxy = true)"
            ));
        }
        let access = policy
            .user(acting)
            .ok_or_else(|| format!("user {acting:?} is not in the cluster's policy"))?;
        Ok((acting, access))
    }

    /// Whether connection `conn`'s user may still read every key in `[start, end)` (a running
    /// watch, after a reload).
    pub(super) fn may_read_range(
        &self,
        conn: ConnId,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<(), String> {
        let Some(auth) = &self.auth else { return Ok(()) };
        let policy = auth.policy();
        let (user, access) = self.access(conn, &policy)?;
        if access.can_read_range(start, end) {
            Ok(())
        } else {
            Err(format!("user {user:?} may no longer read the keys this watch follows"))
        }
    }

    /// Whether connection `conn`'s user may write (`write`) or read every key of `keys` (a
    /// lease's, for revoking or keeping it alive, or asking its time to live).
    pub(super) fn may_touch_all<'k>(
        &self,
        conn: ConnId,
        keys: impl IntoIterator<Item = &'k [u8]>,
        write: bool,
    ) -> Result<(), String> {
        let Some(auth) = &self.auth else { return Ok(()) };
        let policy = auth.policy();
        let (user, access) = self.access(conn, &policy)?;
        for key in keys {
            let allowed = if write { access.can_write(key) } else { access.can_read(key) };
            if !allowed {
                let what = if write { "write" } else { "read" };
                return Err(format!(
                    "user {user:?} may not {what} {}, a key of the lease",
                    show(key)
                ));
            }
        }
        Ok(())
    }

    /// Whether the policy was reloaded since the last call (running watches are checked
    /// again).
    pub(super) fn reloaded(&mut self) -> bool {
        let Some(auth) = &self.auth else { return false };
        let generation = auth.generation();
        std::mem::replace(&mut self.seen_generation, generation) != generation
    }

    /// Whether connection `conn` may make `request`; why not, when not.
    /// Whether connection `conn`'s client knows the `PermissionDenied` error (protocol 8).
    pub(super) fn knows_permission_denied(&self, conn: ConnId) -> bool {
        self.principals.get(&conn).is_some_and(|p| p.protocol >= 8)
    }

    pub(super) fn check(&self, conn: ConnId, request: &RequestFrame<'_>) -> Result<(), String> {
        let Some(auth) = &self.auth else { return Ok(()) };
        let policy = auth.policy();
        let (user, access) = self.access(conn, &policy)?;
        allowed(access, request).map_err(|what| format!("user {user:?} may not {what}"))
    }
}

impl ShardCore {
    /// Whether connection `conn` may make `request` (see `access`): its type and keys, and for
    /// a lease the keys the lease holds now.
    pub(super) fn check_access(
        &self,
        conn: ConnId,
        request: &RequestFrame<'_>,
    ) -> Result<(), String> {
        self.access.check(conn, request)?;
        let target = match request.request_type() {
            Request::LeaseRevokeRequest => {
                request.request_as_lease_revoke_request().map(|r| (r.lease(), true))
            }
            Request::LeaseKeepAliveRequest => {
                request.request_as_lease_keep_alive_request().map(|r| (r.lease(), true))
            }
            Request::LeaseTimeToLiveRequest => {
                request.request_as_lease_time_to_live_request().map(|r| (r.lease(), false))
            }
            _ => None,
        };
        let Some((lease, write)) = target else { return Ok(()) };
        let Some(held) = self.sm.leases().get(lease) else { return Ok(()) };
        self.access.may_touch_all(conn, held.keys.iter().map(|k| k.as_ref()), write)
    }

    /// Answers a request its user may not make (`InvalidRequest` to a client older than
    /// protocol 8, which does not know `PermissionDenied`).
    pub(super) fn permission_denied(&mut self, caller: Caller, reason: &str) {
        if self.access.knows_permission_denied(caller.conn) {
            self.reply_error(caller, &ErrorInfo::PermissionDenied { reason })
        } else {
            let reason = format!("permission denied: {reason}");
            self.reply_error(caller, &ErrorInfo::InvalidRequest { reason: &reason })
        }
    }

    /// Checks every request against `auth`'s policy from now on (the registry's `[auth]`).
    pub fn set_auth(&mut self, auth: Option<Arc<NodeAuth>>) {
        self.access.auth = auth;
    }

    /// Whether requests are checked (the registry has `[auth]`): the shell then reads each
    /// connection's certificate for its user.
    pub fn checks_access(&self) -> bool {
        self.access.enabled()
    }

    /// A client connection was accepted; its certificate names `cert_user`.
    pub fn on_client_connected(&mut self, conn: ConnId, cert_user: Option<String>) {
        self.access.connected(conn, cert_user);
    }

    /// A Redis (RESP) connection was accepted; its certificate names `cert_user`.
    pub fn on_resp_connected(&mut self, conn: ConnId, cert_user: Option<String>) {
        self.access.resp_connected(conn, cert_user);
    }

    /// A RESP connection's `AUTH` with a bearer token (of `user`, when named): the user the
    /// connection is from now on, or why it was refused.
    pub fn authenticate_resp(
        &mut self,
        conn: ConnId,
        user: Option<&str>,
        token: &str,
    ) -> Result<String, String> {
        self.access.authenticate(conn, user, token)
    }
}

/// Whether `access` allows `request`; what it may not do, when not.
fn allowed(access: &Access, request: &RequestFrame<'_>) -> Result<(), String> {
    let read = |key: &[u8]| {
        if access.can_read(key) {
            Ok(())
        } else {
            Err(format!("read {}", show(key)))
        }
    };
    let write = |key: &[u8]| {
        if access.can_write(key) {
            Ok(())
        } else {
            Err(format!("write {}", show(key)))
        }
    };
    let range = |start: &[u8], end: Option<&[u8]>| {
        if access.can_read_range(start, end) {
            Ok(())
        } else {
            let end = end.map_or("the end".to_string(), show);
            Err(format!("read every key from {} to {end}", show(start)))
        }
    };
    let admin =
        |what: &str| if access.admin { Ok(()) } else { Err(format!("{what} (an admin right)")) };
    match request.request_type() {
        Request::GetRequest => {
            request.request_as_get_request().map_or(Ok(()), |r| read(r.key().bytes()))
        }
        Request::PutRequest => {
            request.request_as_put_request().map_or(Ok(()), |r| write(r.key().bytes()))
        }
        Request::DeleteRequest => {
            request.request_as_delete_request().map_or(Ok(()), |r| write(r.key().bytes()))
        }
        Request::BatchGetRequest => request
            .request_as_batch_get_request()
            .map_or(Ok(()), |r| r.keys().iter().try_for_each(|k| read(k.key().bytes()))),
        Request::BatchPutRequest => request
            .request_as_batch_put_request()
            .map_or(Ok(()), |r| r.items().iter().try_for_each(|i| write(i.key().bytes()))),
        Request::BatchDeleteRequest => request
            .request_as_batch_delete_request()
            .map_or(Ok(()), |r| r.keys().iter().try_for_each(|k| write(k.key().bytes()))),
        Request::ScanRequest => {
            let Some(scan) = request.request_as_scan_request() else { return Ok(()) };
            let prefix = scan.prefix().map(|p| p.bytes()).unwrap_or_default();
            let start = scan.start().map(|s| s.bytes()).unwrap_or_default().max(prefix);
            let prefix_limit = prefix_end(prefix);
            let end = match (scan.end().map(|e| e.bytes()), prefix_limit.as_deref()) {
                (Some(end), Some(limit)) => Some(end.min(limit)),
                (end, limit) => end.or(limit),
            };
            range(start, end)
        }
        Request::TxnRequest => {
            let Some(txn) = request.request_as_txn_request() else { return Ok(()) };
            for compare in txn.compares().iter().flatten() {
                read(compare.key().bytes())?;
            }
            for op in txn.success().iter().flatten().chain(txn.failure().iter().flatten()) {
                match op.kind() {
                    TxnOpKind::Get => read(op.key().bytes())?,
                    _ => write(op.key().bytes())?,
                }
            }
            Ok(())
        }
        Request::WatchRequest => {
            let Some(watch) = request.request_as_watch_request() else { return Ok(()) };
            let key = watch.key().bytes();
            match watch.scope() {
                WatchScope::Prefix => range(key, prefix_end(key).as_deref()),
                WatchScope::Range => {
                    let end = watch.range_end().map(|e| e.bytes()).filter(|e| !e.is_empty());
                    range(key, end)
                }
                _ => read(key),
            }
        }
        Request::LeaseGrantRequest
        | Request::LeaseRevokeRequest
        | Request::LeaseKeepAliveRequest
        | Request::LeaseTimeToLiveRequest => {
            if !access.writes_anything() {
                return Err("use leases (they need a write right)".into());
            }
            // A grant may put keys with the lease.
            if let Some(grant) = request.request_as_lease_grant_request() {
                for item in grant.items().iter().flatten() {
                    write(item.key().bytes())?;
                }
            }
            match request.request_as_lease_time_to_live_request() {
                Some(ttl) if ttl.keys() => range(b"", None),
                _ => Ok(()),
            }
        }
        Request::StatusRequest => admin("read the replicas' status"),
        Request::MemberChangeRequest => admin("change the membership"),
        Request::TransferLeaderRequest => admin("transfer leadership"),
        Request::BackupRequest => admin("take a backup"),
        // The membership (clients route by it), cancelling one's own watch, the hello (which
        // the dispatch refuses when sent twice).
        Request::MembersRequest | Request::CancelWatchRequest | Request::Hello => Ok(()),
        other => Err(format!("make a request of type {}", other.0)),
    }
}

/// A key for a refusal: its text, escaped and cut to 64 bytes.
fn show(key: &[u8]) -> String {
    let cut = &key[..key.len().min(64)];
    let text: String = cut.escape_ascii().to_string();
    if key.len() > 64 {
        format!("\"{text}...\"")
    } else {
        format!("\"{text}\"")
    }
}
