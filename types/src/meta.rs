//! What a key carries besides its value, and how a transaction's compare compares: the same
//! for the state machine that keeps them, the server that sends them and the client that
//! reads them.

/// Per-key metadata. Indexes are raft log indexes of the key's shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct KeyMeta {
    /// Index of the write that created the key.
    pub create_index: u64,
    /// Index of the write that last changed it.
    pub mod_index: u64,
    /// Writes since it was created (1 after the first put).
    pub version: u64,
}

/// How a compare compares (the numbering is the wire protocol's and the log's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Equal = 0,
    /// `!=`
    NotEqual = 1,
    /// `<`
    Less = 2,
    /// `>`
    Greater = 3,
}

impl CompareOp {
    /// From its number; `None` for one no version defines.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Equal,
            1 => Self::NotEqual,
            2 => Self::Less,
            3 => Self::Greater,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::CompareOp;

    #[test]
    fn compare_ops_round_trip_their_numbers() {
        for op in [CompareOp::Equal, CompareOp::NotEqual, CompareOp::Less, CompareOp::Greater] {
            assert_eq!(CompareOp::from_u8(op as u8), Some(op));
        }
        assert_eq!(CompareOp::from_u8(4), None);
    }
}
