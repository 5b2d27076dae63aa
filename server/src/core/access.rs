//! Who each client connection is, and whether it may make a request (the registry's
//! `[auth]`; `corekv_types::auth` has the policy).
//!
//! A connection's user is its client certificate's subject common name (the shell tells the
//! core at accept) or, when its hello carries a bearer token the policy knows, the token's
//! user (the token wins). The user's rights are looked up in the policy in force at each
//! request, so a SIGHUP that changes them applies to open connections at once. Every request
//! is checked before it is served: reads need read rights on every key they touch, writes
//! write rights; a scan or a watch needs one readable prefix holding its whole range (it is
//! refused, never cut down); leases need some write right (and a listing of a lease's keys,
//! read rights on every key); status, membership changes, leadership transfers and backups
//! need admin. The membership itself is open to every user: clients route by it.

use std::collections::HashMap;
use std::sync::Arc;

use corekv_proto::client::{Request, RequestFrame, TxnOpKind, WatchScope};
use corekv_types::auth::{prefix_end, Access};

use super::ConnId;
use crate::auth::NodeAuth;

/// See the module docs.
#[derive(Default)]
pub(super) struct AccessControl {
    /// The node's policy; `None`: no `[auth]`, every request allowed.
    pub(super) auth: Option<Arc<NodeAuth>>,
    /// Per open connection, who it is.
    principals: HashMap<ConnId, Principal>,
}

#[derive(Debug, Default, Clone)]
struct Principal {
    /// The client certificate's user.
    cert_user: Option<String>,
    /// The hello's token's user.
    token_user: Option<String>,
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

    pub(super) fn closed(&mut self, conn: ConnId) {
        self.principals.remove(&conn);
    }

    /// The hello's protocol version and token: the user the token names, or why it is
    /// refused.
    pub(super) fn hello(
        &mut self,
        conn: ConnId,
        protocol: u32,
        token: Option<&str>,
    ) -> Result<(), String> {
        if let Some(principal) = self.principals.get_mut(&conn) {
            principal.protocol = protocol;
        }
        let (Some(auth), Some(token)) = (&self.auth, token) else { return Ok(()) };
        let digest = crate::auth::token_digest(token);
        let policy = auth.policy();
        let user = policy
            .token_user(&digest)
            .ok_or("the token is not one the cluster's policy knows (revoked, or mistyped?)")?;
        self.principals.entry(conn).or_default().token_user = Some(user.to_string());
        Ok(())
    }

    /// Whether connection `conn` may make `request`; why not, when not.
    /// Whether connection `conn`'s client knows the `PermissionDenied` error (protocol 8).
    pub(super) fn knows_permission_denied(&self, conn: ConnId) -> bool {
        self.principals.get(&conn).is_some_and(|p| p.protocol >= 8)
    }

    pub(super) fn check(&self, conn: ConnId, request: &RequestFrame<'_>) -> Result<(), String> {
        let Some(auth) = &self.auth else { return Ok(()) };
        let principal = self.principals.get(&conn);
        let user = principal
            .and_then(|p| p.token_user.as_deref().or(p.cert_user.as_deref()))
            .ok_or("no user: show a client certificate or a token")?;
        let policy = auth.policy();
        let access = policy
            .user(user)
            .ok_or_else(|| format!("user {user:?} is not in the cluster's policy"))?;
        allowed(access, request).map_err(|what| format!("user {user:?} may not {what}"))
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
            match request.request_as_lease_time_to_live_request() {
                Some(ttl) if ttl.keys() => range(b"", None),
                _ => Ok(()),
            }
        }
        Request::StatusRequest => admin("read the replicas' status"),
        Request::MemberChangeRequest => admin("change the membership"),
        Request::TransferLeaderRequest => admin("transfer leadership"),
        Request::BackupRequest => admin("take a backup"),
        // The membership (clients route by it), cancelling a watch, the hello.
        _ => Ok(()),
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
