//! The numbers corekv's parts pass to each other, each its own type so one cannot be given
//! where another is meant (a node id for a shard, a term for an index): [`NodeId`],
//! [`ShardId`], [`Term`], [`LogIndex`]. Each is a transparent wrapper — the same bytes on the
//! wire, the same number in JSON and in the registry file — and converts to and from its
//! integer where it meets code that speaks integers (raft-rs, the flatbuffers schema).

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($int:ty)) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize,
            Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $int);

        impl $name {
            /// The number.
            pub const fn get(self) -> $int {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$int> for $name {
            fn from(value: $int) -> Self {
                $name(value)
            }
        }

        impl From<$name> for $int {
            fn from(value: $name) -> Self {
                value.0
            }
        }
    };
}

id_type!(
    /// A node of the cluster: its id in the registry file, and its raft id in every shard.
    /// Greater than 0; [`NodeId::NONE`] (0) says "no node" where raft-rs does (no leader known).
    NodeId(u64)
);

id_type!(
    /// A shard's index, `0..shards`: the same on every node (shard `s` of each node is one
    /// raft group).
    ShardId(u32)
);

id_type!(
    /// A raft term.
    Term(u64)
);

id_type!(
    /// A position in a shard's raft log; also a shard's revision (a key's create and mod
    /// indexes are log indexes). 0 is "before the first entry".
    LogIndex(u64)
);

impl NodeId {
    /// No node: what raft-rs calls `INVALID_ID`.
    pub const NONE: NodeId = NodeId(0);
}

impl LogIndex {
    /// Entries from `earlier` up to this index (0 when `earlier` is later).
    pub fn since(self, earlier: LogIndex) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows the wrappers are transparent in JSON and print as their numbers.
    #[test]
    fn transparent_in_json_and_display() {
        assert_eq!(serde_json::to_string(&NodeId(3)).unwrap(), "3");
        assert_eq!(serde_json::from_str::<LogIndex>("42").unwrap(), LogIndex(42));
        assert_eq!(format!("{} {}", ShardId(1), Term(7)), "1 7");
        assert_eq!(LogIndex(10).since(LogIndex(7)), 3);
        assert_eq!(LogIndex(7).since(LogIndex(10)), 0);
    }
}
