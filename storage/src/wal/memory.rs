//! An in-memory WAL "disk" for tests and the deterministic simulator: segment files are byte
//! vectors, and a flush job becomes durable only when [`MemSegments::run`] applies it — so a
//! simulated crash (dropping a job that was taken but not run) loses exactly what a real crash
//! loses: everything after the last completed flush.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

use crate::constants::SEGMENT_HEADER_BYTES;
use crate::error::{Result, StorageError};
use crate::wal::format::segment_file_name;
use crate::wal::recovery::SegmentSource;
use crate::wal::writer::FlushJob;

/// Shared handle to one WAL's in-memory segments. Clones see the same segments.
#[derive(Debug, Clone)]
pub struct MemSegments {
    segments: Rc<RefCell<BTreeMap<u64, Vec<u8>>>>,
    segment_bytes: u64,
    name: String,
}

impl MemSegments {
    /// An empty WAL whose segments are `segment_bytes` long; `name` appears in messages.
    pub fn new(name: impl Into<String>, segment_bytes: u64) -> Self {
        MemSegments { segments: Rc::default(), segment_bytes, name: name.into() }
    }

    /// Makes a job's writes durable, as a completed flush would.
    pub fn run(&self, job: &FlushJob) {
        let mut segments = self.segments.borrow_mut();
        for write in &job.writes {
            let file =
                segments.entry(write.seq).or_insert_with(|| vec![0; self.segment_bytes as usize]);
            let start = write.offset as usize;
            file[start..start + write.bytes.len()].copy_from_slice(&write.bytes);
        }
    }

    /// Writes part of a job, as a crash in the middle of a flush might leave it: the first
    /// `bytes` bytes of its writes, in order — except that a segment's header block is
    /// written whole or not at all (a real segment is a renamed spare whose old header stays
    /// valid until the new one replaces it in one block write).
    pub fn run_torn(&self, job: &FlushJob, mut bytes: usize) {
        let mut segments = self.segments.borrow_mut();
        for write in &job.writes {
            let mut n = bytes.min(write.bytes.len());
            if write.offset == 0 && n < write.bytes.len().min(SEGMENT_HEADER_BYTES as usize) {
                n = 0;
            }
            if n == 0 {
                return;
            }
            let file =
                segments.entry(write.seq).or_insert_with(|| vec![0; self.segment_bytes as usize]);
            let start = write.offset as usize;
            file[start..start + n].copy_from_slice(&write.bytes[..n]);
            bytes -= n;
            if bytes == 0 {
                return;
            }
        }
    }

    /// Removes a segment (what retiring does on a real disk).
    pub fn remove(&self, seq: u64) {
        self.segments.borrow_mut().remove(&seq);
    }

    /// Bytes of all segments.
    pub fn bytes(&self) -> u64 {
        self.segments.borrow().len() as u64 * self.segment_bytes
    }
}

impl SegmentSource for MemSegments {
    fn list(&self) -> Result<Vec<u64>> {
        Ok(self.segments.borrow().keys().copied().collect())
    }

    fn read_segment(&self, seq: u64) -> Result<Vec<u8>> {
        self.segments.borrow().get(&seq).cloned().ok_or_else(|| {
            StorageError::io("read", self.path(seq), std::io::ErrorKind::NotFound.into())
        })
    }

    fn read_at(&self, seq: u64, offset: u64, len: usize) -> Result<Vec<u8>> {
        let segments = self.segments.borrow();
        let file = segments.get(&seq).ok_or_else(|| {
            StorageError::io("read", self.path(seq), std::io::ErrorKind::NotFound.into())
        })?;
        let start = offset as usize;
        file.get(start..start + len).map(<[u8]>::to_vec).ok_or_else(|| {
            StorageError::io("read", self.path(seq), std::io::ErrorKind::UnexpectedEof.into())
        })
    }

    fn path(&self, seq: u64) -> PathBuf {
        PathBuf::from(format!("mem:{}/{}", self.name, segment_file_name(seq)))
    }

    fn dir(&self) -> PathBuf {
        PathBuf::from(format!("mem:{}", self.name))
    }
}
