//! A database file opened for redb to write to, without a byte reaching the
//! file: what redb writes (its header, its allocator state, the commits of
//! a check, or of a migration done to check an older file) is kept in
//! memory, over the file's bytes, and gone when the database closes.
//!
//! `messenger-chat check` runs redb's integrity check through it: that check
//! needs a writable database, and a writable open of the file itself
//! rewrites the file's header even when nothing changes. The file is opened
//! for reading and writing only so that redb's locks (which need a file
//! open for writing) keep a running service and a check apart.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use redb::backends::FileBackend;
use redb::{BackendError, DatabaseError, StorageBackend};

/// Bytes kept per entry of the overlay.
const BLOCK: u64 = 4096;
/// The most the overlay holds: a healthy file needs a few pages; the
/// migration of a large older file could need more, and is refused.
pub const LIMIT_BYTES: u64 = 256 << 20;

/// The file, and what was written over it.
#[derive(Debug)]
pub struct Overlay {
    file: FileBackend,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The length redb sees.
    len: u64,
    /// Bytes of the file at or past this offset are not seen (a shorter
    /// length was set); never more than the file's length.
    visible: u64,
    /// Block number → its `BLOCK` bytes as redb wrote them.
    blocks: BTreeMap<u64, Box<[u8]>>,
}

impl Overlay {
    /// Opens `path` (which must exist) without writing to it.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(path: &Path) -> Result<Self, DatabaseError> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Overlay {
            file: FileBackend::new(file)?,
            state: Mutex::new(State { len, visible: len, blocks: BTreeMap::new() }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The bytes redb sees at `offset`, whatever the length.
    fn view(&self, st: &State, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let end = offset + out.len() as u64;
        let from_file = st.visible.clamp(offset, end);
        let split = usize::try_from(from_file - offset).map_err(std::io::Error::other)?;
        let (file_part, zero_part) = out.split_at_mut(split);
        if !file_part.is_empty() {
            self.file.read(offset, file_part)?;
        }
        zero_part.fill(0);
        if out.is_empty() {
            return Ok(());
        }
        for (n, block) in st.blocks.range(offset / BLOCK..=(end - 1) / BLOCK) {
            let start = n * BLOCK;
            let lo = start.max(offset);
            let hi = (start + BLOCK).min(end);
            let (o, b) = (to_usize(lo - offset)?, to_usize(lo - start)?);
            let len = to_usize(hi - lo)?;
            out[o..o + len].copy_from_slice(&block[b..b + len]);
        }
        Ok(())
    }
}

fn to_usize(n: u64) -> std::io::Result<usize> {
    usize::try_from(n).map_err(std::io::Error::other)
}

impl StorageBackend for Overlay {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.state().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let st = self.state();
        if offset.saturating_add(out.len() as u64) > st.len {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end"));
        }
        self.view(&st, offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut st = self.state();
        if len < st.len {
            st.visible = st.visible.min(len);
            st.blocks.retain(|n, _| n * BLOCK < len);
            if let Some(block) = st.blocks.get_mut(&(len / BLOCK)) {
                block[to_usize(len % BLOCK)?..].fill(0);
            }
        }
        st.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        if data.is_empty() {
            return Ok(());
        }
        let mut st = self.state();
        let end = offset + data.len() as u64;
        for n in offset / BLOCK..=(end - 1) / BLOCK {
            if !st.blocks.contains_key(&n) {
                if (st.blocks.len() as u64 + 1) * BLOCK > LIMIT_BYTES {
                    return Err(std::io::Error::other(format!(
                        "checking keeps what redb writes in memory, and this needs more than {} MiB \
                         (an older file's migration); migrate the file first (start the service once, or run \
                         `messenger-chat check --repair`, which writes to the file), then check it",
                        LIMIT_BYTES >> 20
                    )));
                }
                let mut block = vec![0u8; to_usize(BLOCK)?].into_boxed_slice();
                self.view(&st, n * BLOCK, &mut block)?;
                st.blocks.insert(n, block);
            }
            let start = n * BLOCK;
            let lo = start.max(offset);
            let hi = (start + BLOCK).min(end);
            let block = st.blocks.get_mut(&n).expect("inserted above");
            let (b, d, len) = (to_usize(lo - start)?, to_usize(lo - offset)?, to_usize(hi - lo)?);
            block[b..b + len].copy_from_slice(&data[d..d + len]);
        }
        st.len = st.len.max(end);
        Ok(())
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn writes_are_seen_and_the_file_keeps_its_bytes() {
        let original: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let (_dir, path) = file_with(&original);
        let o = Overlay::open(&path).unwrap();
        o.write(4090, &[1; 20]).unwrap();
        let mut out = vec![0; 40];
        o.read(4080, &mut out).unwrap();
        assert_eq!(&out[..10], &original[4080..4090]);
        assert_eq!(&out[10..30], &[1; 20]);
        assert_eq!(&out[30..], &original[4110..4120]);
        // Shrinking hides the file's tail; growing shows zeros there.
        o.set_len(5000).unwrap();
        assert!(o.read(4990, &mut [0; 20]).is_err(), "past the end");
        o.set_len(12_000).unwrap();
        let mut tail = vec![9; 100];
        o.read(4990, &mut tail).unwrap();
        assert_eq!(&tail[..10], &original[4990..5000]);
        assert!(tail[10..].iter().all(|b| *b == 0), "{tail:?}");
        o.write(11_990, &[2; 10]).unwrap();
        assert_eq!(o.len().unwrap(), 12_000);
        o.close().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), original, "nothing reached the file");
    }

    #[test]
    fn a_redb_database_opens_writes_and_checks_in_memory() {
        const T: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("t");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let db = redb::Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(T).unwrap().insert(1, 10).unwrap();
            w.commit().unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        {
            let mut db = redb::Builder::new().create_with_backend(Overlay::open(&path).unwrap()).unwrap();
            assert!(db.check_integrity().unwrap());
            let w = db.begin_write().unwrap();
            w.open_table(T).unwrap().insert(2, 20).unwrap();
            w.commit().unwrap();
            use redb::ReadableDatabase;
            let r = db.begin_read().unwrap();
            assert_eq!(r.open_table(T).unwrap().get(2).unwrap().unwrap().value(), 20);
        }
        assert_eq!(std::fs::read(&path).unwrap(), before, "the file is as it was");
    }
}
