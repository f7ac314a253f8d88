//! The chunk cache: fixed-size chunks of component bytes as `Bytes`, in a moka cache weighted
//! by size under a configurable memory budget.
//!
//! Hot components are served from here without touching the disk; a response slices the cached
//! `Bytes` (a reference count, no copy). Misses are read with `pread` on the blocking pool, and
//! moka's `try_get_with` makes concurrent misses on one chunk share a single read.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// A chunk: (component BLAKE3, chunk index).
pub type ChunkKey = ([u8; 32], u64);

/// Shared chunk cache. Cheap to clone.
#[derive(Clone)]
pub struct ChunkCache {
    inner: moka::sync::Cache<ChunkKey, Bytes>,
    chunk_size: u64,
    stats: Arc<CacheStats>,
}

/// Hit and miss counters for `/metrics`.
#[derive(Default, Debug)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// The configured memory budget, in bytes.
    pub budget_bytes: AtomicU64,
}

impl ChunkCache {
    /// A cache holding at most `budget_bytes` of chunks of `chunk_size` bytes.
    pub fn new(budget_bytes: u64, chunk_size: u32) -> Self {
        let inner = moka::sync::Cache::builder()
            .max_capacity(budget_bytes)
            .weigher(|_k: &ChunkKey, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .support_invalidation_closures()
            .build();
        Self {
            inner,
            chunk_size: u64::from(chunk_size.max(4096)),
            stats: Arc::new(CacheStats {
                budget_bytes: AtomicU64::new(budget_bytes),
                ..CacheStats::default()
            }),
        }
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// The cached chunk, if present. Never blocks.
    pub fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        let hit = self.inner.get(key);
        let counter = if hit.is_some() {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    /// Reads chunk `key.1` of the object at `path` (of `size` bytes) and caches it. Blocking:
    /// call from the blocking pool.
    pub fn load_blocking(&self, key: ChunkKey, path: &Path, size: u64) -> std::io::Result<Bytes> {
        let chunk_size = self.chunk_size;
        self.inner
            .try_get_with(key, || read_chunk(path, key.1, chunk_size, size))
            .map_err(|e: Arc<std::io::Error>| std::io::Error::new(e.kind(), e.to_string()))
    }

    /// Drops every cached chunk of a component (after it is deleted).
    pub fn forget(&self, blake3: [u8; 32]) {
        let _ = self.inner.invalidate_entries_if(move |k, _| k.0 == blake3);
    }
}

fn read_chunk(path: &Path, index: u64, chunk_size: u64, size: u64) -> std::io::Result<Bytes> {
    let start = index.saturating_mul(chunk_size);
    if start >= size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "chunk index past the end of the object",
        ));
    }
    let len = chunk_size.min(size - start) as usize;
    let file = std::fs::File::open(path)?;
    let mut buf = BytesMut::zeroed(len);
    let mut filled = 0;
    while filled < len {
        let n = file.read_at(&mut buf[filled..], start + filled as u64)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "object file is shorter than its recorded size",
            ));
        }
        filled += n;
    }
    Ok(buf.freeze())
}
