//! The storage engine behind the store, kept behind one small trait.
//!
//! Everything above this module speaks [`Engine`]: ordered byte keys, byte values, prefix scans and
//! atomic batches. Switching engines means writing one file like `sled_engine.rs` and changing
//! [`DefaultEngine`] and [`open_default`] here.

use std::path::Path;

use crate::error::Result;

/// One write inside an atomic [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or overwrite a key.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key (no error if absent).
    Delete(Vec<u8>),
}

/// A group of writes applied all together or not at all, even across a crash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The writes, applied in order.
    pub ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(key.into(), value.into()));
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(key.into()));
    }

    /// Whether the batch has no writes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// What [`Engine::visit_range`] calls with each key and value; it returns whether to go on.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// An ordered key-value engine with atomic batches.
pub trait Engine: Send + Sync {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Calls `f` with each pair whose key is in `[from, to)` (`to = None`: no end), in key order,
    /// until `f` returns `false`. Values stream: none is held after `f` returns.
    fn visit_range(&self, from: &[u8], to: Option<&[u8]>, f: &mut Visitor<'_>) -> Result<()>;
    /// Applies every write of `batch` atomically: after a crash either all or none are visible.
    fn apply(&self, batch: Batch) -> Result<()>;
    /// Makes every applied write durable on disk.
    fn flush(&self) -> Result<()>;
    /// Bytes the engine's files take on disk.
    fn size_on_disk(&self) -> Result<u64>;
}

impl dyn Engine + '_ {
    /// Calls `f` with each pair whose key starts with `prefix`, in key order, until it returns
    /// `false`.
    pub fn visit_prefix(&self, prefix: &[u8], f: &mut Visitor<'_>) -> Result<()> {
        self.visit_range(prefix, prefix_end(prefix).as_deref(), f)
    }

    /// All pairs whose key is in `[from, to)`, in key order.
    pub fn scan_range(&self, from: &[u8], to: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.visit_range(from, to, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })?;
        Ok(out)
    }

    /// All pairs whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan_range(prefix, prefix_end(prefix).as_deref())
    }

    /// Whether no key starts with `prefix` (reads at most one pair).
    pub fn is_empty_prefix(&self, prefix: &[u8]) -> Result<bool> {
        let mut empty = true;
        self.visit_prefix(prefix, &mut |_, _| {
            empty = false;
            Ok(false)
        })?;
        Ok(empty)
    }
}

/// The least key above every key that starts with `prefix` (`None`: there is none).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The engine [`Store`](crate::Store) uses.
pub type DefaultEngine = crate::sled_engine::SledEngine;

/// Opens (creating if needed) the default engine's files in `dir`.
pub fn open_default(dir: &Path) -> Result<DefaultEngine> {
    crate::sled_engine::SledEngine::open(dir)
}
