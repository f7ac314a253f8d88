//! The one way this crate opens SQLite. Several connections share a file (the ADS's store,
//! its ticket writer and its webhook dispatcher; the DMS's store and its dispatcher), so they
//! all get the same settings: WAL (readers never block the writer), a 10 s busy timeout (a
//! writer waits for another instead of failing), foreign keys on, and the commit durability
//! the caller names.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

/// How durable a commit is when it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous = NORMAL` in WAL mode: a commit survives the process being killed (it is
    /// in the OS's page cache); a power loss can drop the last few, never corrupts. The ticket
    /// writer's group commits and the outboxes use this.
    Process,
    /// `synchronous = FULL`: a commit survives a power loss too. For rows an operator was
    /// told exist (a published component).
    Power,
}

/// How long a connection waits for another one's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens (creating) the database at `path` with the crate's settings.
pub fn open(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = match durability {
        Durability::Process => "NORMAL",
        Durability::Power => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn settings_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        for (durability, level) in [(Durability::Process, 1), (Durability::Power, 2)] {
            let conn = open(&dir.path().join("x.sqlite3"), durability).unwrap();
            let mode: String = conn
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            let sync: i64 = conn
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap();
            let fk: i64 = conn
                .pragma_query_value(None, "foreign_keys", |r| r.get(0))
                .unwrap();
            let busy: i64 = conn
                .pragma_query_value(None, "busy_timeout", |r| r.get(0))
                .unwrap();
            assert_eq!((mode.as_str(), sync, fk, busy), ("wal", level, 1, 10_000));
        }
    }
}
