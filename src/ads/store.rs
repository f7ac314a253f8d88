//! The ADS's durable state: component metadata and ticket rows in SQLite, component bytes as
//! content-addressed files beside it (`objects/<2 hex>/<64 hex>`).
//!
//! Every method here blocks; async callers go through [`Store::run`], which moves the work to
//! the blocking pool. The download path only reaches SQLite on a ticket-cache miss.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// Storage failures, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("file system error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("component {0} is still needed by {1} live ticket(s); revoke them or wait for expiry")]
    InUse(String, u64),
    #[error("the storage worker stopped unexpectedly")]
    WorkerGone,
}

impl StoreError {
    /// The same failure again, for each of several callers waiting on one operation (a
    /// batch's commit): kind and SQLite code are kept, so `is_full` and `is_busy` still hold.
    pub fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, msg)) => {
                StoreError::Sqlite(rusqlite::Error::SqliteFailure(*e, msg.clone()))
            }
            StoreError::Io { path, source } => StoreError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            StoreError::InUse(id, n) => StoreError::InUse(id.clone(), *n),
            StoreError::WorkerGone => StoreError::WorkerGone,
            other => StoreError::Io {
                path: PathBuf::from("ticket store"),
                source: std::io::Error::other(other.to_string()),
            },
        }
    }

    /// Whether the disk is full (SQLITE_FULL, or ENOSPC from the file system): 507, nothing
    /// written, worth a retry once space is freed.
    pub fn is_full(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            StoreError::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull
                    || source.raw_os_error() == Some(28)
            }
            _ => false,
        }
    }

    /// Whether another process holds the database (SQLITE_BUSY / SQLITE_LOCKED past the busy
    /// timeout): transient, worth a retry, not a fault of ours.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                )
        )
    }
}

/// A published component's metadata, as the admin API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ComponentMeta {
    /// BLAKE3 of the bytes, lower-case hex: the component id.
    pub id: String,
    pub name: String,
    pub version: String,
    /// File name offered in `Content-Disposition`, already sanitized.
    pub filename: String,
    pub size: u64,
    pub blake3: String,
    pub sha256: String,
    /// Unix seconds.
    pub created_at: u64,
}

/// One name/version a component is known by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentName {
    pub name: String,
    pub version: String,
}

/// Handle to the SQLite database and object directory. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Mutex<Connection>>,
    objects: PathBuf,
    tmp: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS components (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    filename TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
-- Every name/version a component's bytes were published under (the first one included):
-- the same bytes published again under another name record that name, on the same object.
CREATE TABLE IF NOT EXISTS component_names (
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (id, name, version)
);
";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    /// Opens (creating if needed) the store under `data_dir`. Leftover temp files from an
    /// interrupted upload are removed: they were never published.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let objects = data_dir.join("objects");
        let tmp = data_dir.join("tmp");
        std::fs::create_dir_all(&objects).map_err(io_err(&objects))?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        // A published component was acknowledged to the operator: its row survives power loss.
        let conn = crate::sqlite::open(
            &data_dir.join("ads.sqlite3"),
            crate::sqlite::Durability::Power,
        )?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            db: Arc::new(Mutex::new(conn)),
            objects,
            tmp,
        })
    }

    /// Directory for in-progress uploads.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Where the bytes of component `id` live.
    pub fn object_path(&self, id: &str) -> PathBuf {
        let prefix = id.get(..2).unwrap_or("xx");
        self.objects.join(prefix).join(id)
    }

    /// Runs blocking store work on the blocking pool.
    pub async fn run<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|_| StoreError::WorkerGone)?
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is safe to keep using.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a fully written and fsynced temp file as component `meta.id`. Returns the
    /// metadata under the name/version asked for and whether the bytes are new; when they
    /// were already there, the temp file is discarded and the name/version is recorded on the
    /// same object (see [`Store::names`]).
    pub fn publish(
        &self,
        temp: &Path,
        meta: ComponentMeta,
    ) -> Result<(ComponentMeta, bool), StoreError> {
        if let Some(existing) = self.component(&meta.id)? {
            let _ = std::fs::remove_file(temp);
            return Ok((self.also_named(existing, &meta)?, false));
        }
        let dest = self.object_path(&meta.id);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        std::fs::rename(temp, &dest).map_err(io_err(&dest))?;
        if let Some(dir) = dest.parent() {
            // Make the rename itself durable before the metadata says the object exists.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))?;
        }
        // OR IGNORE: a concurrent upload of the same bytes may have won the race; the file it
        // renamed into place is byte-identical to ours, so its row stands.
        let inserted = self.conn().execute(
            "INSERT OR IGNORE INTO components (id, name, version, filename, size, sha256, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                meta.id,
                meta.name,
                meta.version,
                meta.filename,
                meta.size as i64,
                meta.sha256,
                meta.created_at as i64
            ],
        );
        let inserted = match inserted {
            Ok(n) => n,
            Err(e) => {
                // No row, no object: take the file back out unless a row for these bytes
                // exists after all (then the file is that row's, byte for byte).
                if !matches!(self.component(&meta.id), Ok(Some(_))) {
                    let _ = std::fs::remove_file(&dest);
                }
                return Err(e.into());
            }
        };
        if inserted == 0 {
            if let Some(existing) = self.component(&meta.id)? {
                return Ok((self.also_named(existing, &meta)?, false));
            }
        }
        self.add_name(&meta)?;
        Ok((meta, true))
    }

    /// Records `asked`'s name/version on the stored component; returns its metadata under it.
    fn also_named(
        &self,
        existing: ComponentMeta,
        asked: &ComponentMeta,
    ) -> Result<ComponentMeta, StoreError> {
        self.add_name(asked)?;
        Ok(ComponentMeta {
            name: asked.name.clone(),
            version: asked.version.clone(),
            ..existing
        })
    }

    fn add_name(&self, m: &ComponentMeta) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR IGNORE INTO component_names (id, name, version, created_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![m.id, m.name, m.version, m.created_at as i64],
        )?;
        Ok(())
    }

    /// Every name/version a component was published under, oldest first (components stored
    /// before names were recorded show their first name only).
    pub fn names(&self, id: &str) -> Result<Vec<ComponentName>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT name, version FROM component_names WHERE id = ?1
             UNION SELECT name, version FROM components WHERE id = ?1
             ORDER BY 1, 2",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok(ComponentName {
                name: r.get(0)?,
                version: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn row_to_meta(row: &rusqlite::Row<'_>) -> rusqlite::Result<ComponentMeta> {
        let id: String = row.get(0)?;
        Ok(ComponentMeta {
            blake3: id.clone(),
            id,
            name: row.get(1)?,
            version: row.get(2)?,
            filename: row.get(3)?,
            size: row.get::<_, i64>(4)? as u64,
            sha256: row.get(5)?,
            created_at: row.get::<_, i64>(6)? as u64,
        })
    }

    /// One component's metadata.
    pub fn component(&self, id: &str) -> Result<Option<ComponentMeta>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, name, version, filename, size, sha256, created_at
                 FROM components WHERE id = ?1",
                [id],
                Self::row_to_meta,
            )
            .optional()?)
    }

    /// All components, newest first.
    pub fn components(&self) -> Result<Vec<ComponentMeta>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, name, version, filename, size, sha256, created_at
             FROM components ORDER BY created_at DESC, id",
        )?;
        let rows = stmt.query_map([], Self::row_to_meta)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes a component unless a live ticket still points at it (not ended, and not past
    /// its expiry plus `grace`). `Ok(false)` if unknown.
    pub fn delete_component(&self, id: &str, now: u64, grace: u64) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let live: i64 = tx.query_row(
            "SELECT COUNT(*) FROM tickets WHERE component_id = ?1
               AND state IN ('issued', 'downloading') AND expires_at + ?3 >= ?2",
            params![id, now as i64, grace as i64],
            |r| r.get(0),
        )?;
        if live > 0 {
            return Err(StoreError::InUse(id.to_string(), live as u64));
        }
        tx.execute("DELETE FROM tickets WHERE component_id = ?1", [id])?;
        tx.execute("DELETE FROM component_names WHERE id = ?1", [id])?;
        let n = tx.execute("DELETE FROM components WHERE id = ?1", [id])?;
        tx.commit()?;
        drop(conn);
        if n > 0 {
            let path = self.object_path(id);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Ok(n > 0)
    }
}
