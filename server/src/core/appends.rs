//! Keeps every AppendEntries message a leader sends within [`RAFT_MESSAGE_BYTES_MAX`] of
//! entries, so it always fits a peer frame.
//!
//! raft-rs bounds each MsgAppend it builds by `max_size_per_msg`, but with `batch_append` (on:
//! fewer, fuller messages when writes stream in) it then merges every MsgAppend to one peer in
//! a Ready into one, with no bound. A follower far behind — back from a restart, or rebuilt
//! from nothing — gets the `max_inflight_msgs` appends of one Ready merged: with 1 MiB values,
//! tens of MiB in one message, past the frame limit, so the follower refuses the frame, the
//! connection drops, and catching up stalls. Here such a message is cut back into consecutive
//! appends: the first keeps its `(index, log_term)`, each next one starts at the previous
//! one's last entry, and all carry the same commit index (the follower commits only as far as
//! the entries it holds). The follower takes them as the separate appends raft-rs would have
//! sent without batching; its responses are the same.

use raft::eraftpb::{Message, MessageType};

use crate::constants::RAFT_MESSAGE_BYTES_MAX;

/// The bound the core applies to its leader's appends: raft-rs's own.
pub(super) const APPEND_BYTES_MAX: usize = RAFT_MESSAGE_BYTES_MAX as usize;

/// Protobuf framing per entry, on top of its data and context: tags and lengths of its
/// fields. An upper bound is enough; the split only needs to stay well inside a frame.
const ENTRY_OVERHEAD_BYTES: usize = 32;

fn entry_bytes(entry: &raft::eraftpb::Entry) -> usize {
    entry.data.len() + entry.context.len() + ENTRY_OVERHEAD_BYTES
}

/// `messages`, with every MsgAppend over `max_bytes` of entries cut into consecutive ones of
/// at most `max_bytes` each (or one entry, when a single entry is larger).
pub(super) fn split_appends(messages: Vec<Message>, max_bytes: usize) -> Vec<Message> {
    let oversized = |m: &Message| {
        m.get_msg_type() == MessageType::MsgAppend
            && m.entries.len() > 1
            && m.entries.iter().map(entry_bytes).sum::<usize>() > max_bytes
    };
    if !messages.iter().any(oversized) {
        return messages;
    }
    let mut out = Vec::with_capacity(messages.len() + 1);
    for message in messages {
        if oversized(&message) {
            split_one(message, max_bytes, &mut out);
        } else {
            out.push(message);
        }
    }
    out
}

fn split_one(mut message: Message, max_bytes: usize, out: &mut Vec<Message>) {
    let entries: Vec<raft::eraftpb::Entry> = message.take_entries().into();
    let (mut index, mut log_term) = (message.index, message.log_term);
    let mut part: Vec<raft::eraftpb::Entry> = Vec::new();
    let mut bytes = 0;
    let mut flush = |part: &mut Vec<raft::eraftpb::Entry>, index: &mut u64, log_term: &mut u64| {
        let last = part.last().expect("a part has an entry");
        let (next_index, next_term) = (last.index, last.term);
        let mut piece = message.clone();
        piece.index = *index;
        piece.log_term = *log_term;
        piece.set_entries(std::mem::take(part).into());
        out.push(piece);
        (*index, *log_term) = (next_index, next_term);
    };
    for entry in entries {
        let size = entry_bytes(&entry);
        if !part.is_empty() && bytes + size > max_bytes {
            flush(&mut part, &mut index, &mut log_term);
            bytes = 0;
        }
        bytes += size;
        part.push(entry);
    }
    if !part.is_empty() {
        flush(&mut part, &mut index, &mut log_term);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::Entry;

    fn append(index: u64, log_term: u64, entries: &[(u64, u64, usize)], commit: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        (m.to, m.from, m.term, m.index, m.log_term, m.commit) = (2, 1, 5, index, log_term, commit);
        let entries: Vec<Entry> = entries
            .iter()
            .map(|&(index, term, bytes)| {
                let mut e = Entry::default();
                (e.index, e.term, e.data) = (index, term, vec![7u8; bytes].into());
                e
            })
            .collect();
        m.set_entries(entries.into());
        m
    }

    // Shows an oversized append becomes consecutive appends that each fit, that chain one to
    // the next by (index, log_term), keep the commit, and carry every entry once, in order.
    #[test]
    fn an_oversized_append_is_cut_into_a_chain() {
        let big = 400;
        let entries: Vec<(u64, u64, usize)> =
            (11..=20).map(|i| (i, if i < 15 { 4 } else { 5 }, big)).collect();
        let heartbeat = {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgHeartbeat);
            m
        };
        let parts = split_appends(vec![heartbeat, append(10, 4, &entries, 18)], 1000);
        assert_eq!(parts[0].get_msg_type(), MessageType::MsgHeartbeat, "others untouched");
        let appends = &parts[1..];
        assert_eq!(appends.len(), 5, "two entries of ~430 bytes per 1000");
        let (mut index, mut log_term) = (10, 4);
        let mut carried = Vec::new();
        for part in appends {
            assert_eq!((part.index, part.log_term, part.commit), (index, log_term, 18));
            assert_eq!((part.to, part.from, part.term), (2, 1, 5));
            assert!(part.entries.iter().map(entry_bytes).sum::<usize>() <= 1000);
            let last = part.entries.last().unwrap();
            (index, log_term) = (last.index, last.term);
            carried.extend(part.entries.iter().map(|e| e.index));
        }
        assert_eq!(carried, (11..=20).collect::<Vec<_>>());
    }

    // Shows appends within the bound, and a single entry over it, are left alone.
    #[test]
    fn appends_that_fit_and_single_entries_are_untouched() {
        let fits = append(3, 1, &[(4, 1, 100), (5, 1, 100)], 5);
        let single = append(3, 1, &[(4, 1, 5000)], 4);
        let out = split_appends(vec![fits.clone(), single.clone()], 1000);
        assert_eq!(out, vec![fits, single]);
    }
}
