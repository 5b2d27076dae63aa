//! The core's vocabulary for what it reports: the kind of a request, the kind of an error
//! reply, and a raft-rs role under its shared name. Metrics label by these; the status shape
//! (`corekv_types::status`) carries the role.

use corekv_proto::encode::ErrorInfo;
use corekv_types::status::Role;
use raft::StateRole;

/// Client operations, for per-operation counters and latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Connection hello.
    Hello,
    /// Single-key read.
    Get,
    /// Single-key write.
    Put,
    /// Single-key delete.
    Delete,
    /// Multi-key read.
    BatchGet,
    /// Multi-key write.
    BatchPut,
    /// Multi-key delete.
    BatchDelete,
    /// Range or prefix read.
    Scan,
    /// Transaction.
    Txn,
    /// Status request.
    Status,
    /// Membership request.
    Members,
    /// Membership change.
    MemberChange,
    /// Leadership transfer.
    TransferLeader,
    /// A watch (counted when it ends).
    Watch,
    /// A watch's cancellation.
    CancelWatch,
    /// A lease grant.
    LeaseGrant,
    /// A lease revoke.
    LeaseRevoke,
    /// A lease keep-alive.
    LeaseKeepAlive,
    /// A lease's time to live.
    LeaseTimeToLive,
    /// A backup stream (its latency: until the snapshot is ready to stream).
    Backup,
}

impl Op {
    /// Every operation, in label order.
    pub const ALL: [Op; 20] = [
        Op::Hello,
        Op::Get,
        Op::Put,
        Op::Delete,
        Op::BatchGet,
        Op::BatchPut,
        Op::BatchDelete,
        Op::Scan,
        Op::Txn,
        Op::Status,
        Op::Members,
        Op::MemberChange,
        Op::TransferLeader,
        Op::Watch,
        Op::CancelWatch,
        Op::LeaseGrant,
        Op::LeaseRevoke,
        Op::LeaseKeepAlive,
        Op::LeaseTimeToLive,
        Op::Backup,
    ];

    /// The Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            Op::Hello => "hello",
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::BatchGet => "batch_get",
            Op::BatchPut => "batch_put",
            Op::BatchDelete => "batch_delete",
            Op::Scan => "scan",
            Op::Txn => "txn",
            Op::Status => "status",
            Op::Members => "members",
            Op::MemberChange => "member_change",
            Op::TransferLeader => "transfer_leader",
            Op::Watch => "watch",
            Op::CancelWatch => "cancel_watch",
            Op::LeaseGrant => "lease_grant",
            Op::LeaseRevoke => "lease_revoke",
            Op::LeaseKeepAlive => "lease_keep_alive",
            Op::LeaseTimeToLive => "lease_time_to_live",
            Op::Backup => "backup",
        }
    }
}

/// The kind of an error reply, for the error counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not the shard's leader.
    NotLeader,
    /// The key belongs to another shard.
    WrongShard,
    /// The replica cannot serve now.
    Unavailable,
    /// Timed out; the outcome is unknown.
    Timeout,
    /// The request was malformed.
    InvalidRequest,
    /// A key, value or frame was too large.
    TooLarge,
    /// A transaction's compare failed.
    CompareFailed,
    /// Overloaded: retry later.
    Busy,
    /// This replica is no longer a member of its shard.
    NotMember,
    /// A membership change or leadership transfer was refused.
    ChangeRefused,
    /// The lease named does not exist.
    LeaseNotFound,
    /// The caller's user may not do this.
    PermissionDenied,
}

impl ErrorKind {
    /// Every kind, in label order.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::NotLeader,
        ErrorKind::WrongShard,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::InvalidRequest,
        ErrorKind::TooLarge,
        ErrorKind::CompareFailed,
        ErrorKind::Busy,
        ErrorKind::NotMember,
        ErrorKind::ChangeRefused,
        ErrorKind::LeaseNotFound,
        ErrorKind::PermissionDenied,
    ];

    /// The kind of an error reply.
    pub fn of(error: &ErrorInfo<'_>) -> ErrorKind {
        match error {
            ErrorInfo::NotLeader { .. } => ErrorKind::NotLeader,
            ErrorInfo::WrongShard { .. } => ErrorKind::WrongShard,
            ErrorInfo::Unavailable { .. } => ErrorKind::Unavailable,
            ErrorInfo::Timeout => ErrorKind::Timeout,
            ErrorInfo::InvalidRequest { .. } => ErrorKind::InvalidRequest,
            ErrorInfo::TooLarge { .. } => ErrorKind::TooLarge,
            ErrorInfo::CompareFailed { .. } => ErrorKind::CompareFailed,
            ErrorInfo::Busy { .. } => ErrorKind::Busy,
            ErrorInfo::NotMember { .. } => ErrorKind::NotMember,
            ErrorInfo::ChangeRefused { .. } => ErrorKind::ChangeRefused,
            ErrorInfo::LeaseNotFound { .. } => ErrorKind::LeaseNotFound,
            ErrorInfo::PermissionDenied { .. } => ErrorKind::PermissionDenied,
        }
    }

    /// The Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::NotLeader => "not_leader",
            ErrorKind::WrongShard => "wrong_shard",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::CompareFailed => "compare_failed",
            ErrorKind::Busy => "busy",
            ErrorKind::NotMember => "not_member",
            ErrorKind::ChangeRefused => "change_refused",
            ErrorKind::LeaseNotFound => "lease_not_found",
            ErrorKind::PermissionDenied => "permission_denied",
        }
    }
}

/// The shared name (`corekv_types::status::Role`) of a raft-rs role.
pub fn role_of(role: StateRole) -> Role {
    match role {
        StateRole::Leader => Role::Leader,
        StateRole::Follower => Role::Follower,
        StateRole::Candidate => Role::Candidate,
        StateRole::PreCandidate => Role::PreCandidate,
    }
}
