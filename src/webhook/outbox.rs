//! The durable event outbox: one SQLite table, rows enqueued inside the caller's transaction
//! (so an event exists if and only if the state change that caused it committed), claimed
//! with a lease by the dispatcher, then marked delivered, rescheduled or dead.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

/// Table definition; owners run it in their own database.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    event_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    url TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    delivered_at_ms INTEGER,
    last_error TEXT,
    claimed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_attempt_at_ms);
";

/// Outbox failures.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// An event waiting for delivery.
#[derive(Clone, Debug)]
pub struct Pending {
    pub event_id: String,
    pub url: String,
    pub payload: String,
    pub attempts: u32,
    pub created_at_ms: u64,
}

/// An event as the admin API lists it.
#[derive(Clone, Debug, Serialize)]
pub struct EventView {
    pub event_id: String,
    pub kind: String,
    pub url: String,
    pub state: String,
    pub attempts: u32,
    pub next_attempt_at_ms: u64,
    pub created_at_ms: u64,
    pub delivered_at_ms: Option<u64>,
    pub last_error: Option<String>,
    pub payload: serde_json::Value,
}

/// A fresh event id (`evt_` + 128 random bits).
pub fn new_event_id() -> String {
    format!("evt_{:032x}", rand::random::<u128>())
}

/// Enqueues an event inside the caller's transaction.
pub fn enqueue(
    conn: &Connection,
    event_id: &str,
    kind: &str,
    url: &str,
    payload: &str,
    now_ms: u64,
) -> Result<(), OutboxError> {
    conn.execute(
        "INSERT OR IGNORE INTO outbox (event_id, kind, url, payload, next_attempt_at_ms, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![event_id, kind, url, payload, now_ms as i64],
    )?;
    Ok(())
}

/// The dispatcher's handle on an outbox table (its own connection).
pub struct Outbox {
    conn: Mutex<Connection>,
}

impl Outbox {
    /// Opens the outbox in the SQLite database at `path` (creating the table if needed).
    pub fn open(path: &Path) -> Result<Self, OutboxError> {
        let conn = crate::sqlite::open(path, crate::sqlite::Durability::Process)?;
        conn.execute_batch(SCHEMA)?;
        // One dispatcher per database: whatever was claimed when the last one stopped was
        // interrupted mid-attempt and is due again now (not after its lease).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        conn.execute(
            "UPDATE outbox SET claimed = 0, next_attempt_at_ms = ?1 WHERE claimed = 1 AND state = 'pending'",
            [now],
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims up to `limit` due events, leasing them until `lease_until_ms` so that a crash
    /// mid-delivery leads to a retry after the lease, never to a lost event.
    pub fn claim_due(
        &self,
        now_ms: u64,
        lease_until_ms: u64,
        limit: usize,
    ) -> Result<Vec<Pending>, OutboxError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "UPDATE outbox SET next_attempt_at_ms = ?1, claimed = 1
             WHERE event_id IN (SELECT event_id FROM outbox
                                WHERE state = 'pending' AND next_attempt_at_ms <= ?2
                                ORDER BY next_attempt_at_ms LIMIT ?3)
             RETURNING event_id, url, payload, attempts, created_at_ms",
        )?;
        let rows = stmt.query_map(
            params![lease_until_ms as i64, now_ms as i64, limit as i64],
            |r| {
                Ok(Pending {
                    event_id: r.get(0)?,
                    url: r.get(1)?,
                    payload: r.get(2)?,
                    attempts: r.get::<_, i64>(3)? as u32,
                    created_at_ms: r.get::<_, i64>(4)? as u64,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The earliest time any pending event is due, if any.
    pub fn next_due_ms(&self) -> Result<Option<u64>, OutboxError> {
        let v: Option<i64> = self
            .conn()
            .query_row(
                "SELECT MIN(next_attempt_at_ms) FROM outbox WHERE state = 'pending'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        Ok(v.map(|x| x.max(0) as u64))
    }

    pub fn mark_delivered(&self, id: &str, attempts: u32, now_ms: u64) -> Result<(), OutboxError> {
        self.conn().execute(
            "UPDATE outbox SET state = 'delivered', attempts = ?2, delivered_at_ms = ?3, last_error = NULL, claimed = 0
             WHERE event_id = ?1",
            params![id, attempts as i64, now_ms as i64],
        )?;
        Ok(())
    }

    pub fn reschedule(
        &self,
        id: &str,
        attempts: u32,
        next_ms: u64,
        error: &str,
    ) -> Result<(), OutboxError> {
        self.conn().execute(
            "UPDATE outbox SET attempts = ?2, next_attempt_at_ms = ?3, last_error = ?4, claimed = 0
             WHERE event_id = ?1",
            params![id, attempts as i64, next_ms as i64, error],
        )?;
        Ok(())
    }

    pub fn mark_dead(&self, id: &str, attempts: u32, error: &str) -> Result<(), OutboxError> {
        self.conn().execute(
            "UPDATE outbox SET state = 'dead', attempts = ?2, last_error = ?3, claimed = 0 WHERE event_id = ?1",
            params![id, attempts as i64, error],
        )?;
        Ok(())
    }

    /// Puts a dead event back in the queue, due now, with a fresh horizon. False if there is
    /// no dead event with that id.
    pub fn retry(&self, id: &str, now_ms: u64) -> Result<bool, OutboxError> {
        let n = self.conn().execute(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at_ms = ?2, created_at_ms = ?2
             WHERE event_id = ?1 AND state = 'dead'",
            params![id, now_ms as i64],
        )?;
        Ok(n > 0)
    }

    /// Events, newest first, optionally of one state.
    pub fn list(&self, state: Option<&str>, limit: usize) -> Result<Vec<EventView>, OutboxError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT event_id, kind, url, state, attempts, next_attempt_at_ms, created_at_ms,
                    delivered_at_ms, last_error, payload
             FROM outbox WHERE (?1 IS NULL OR state = ?1)
             ORDER BY created_at_ms DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![state, limit as i64], |r| {
            let payload: String = r.get(9)?;
            Ok(EventView {
                event_id: r.get(0)?,
                kind: r.get(1)?,
                url: r.get(2)?,
                state: r.get(3)?,
                attempts: r.get::<_, i64>(4)? as u32,
                next_attempt_at_ms: r.get::<_, i64>(5)? as u64,
                created_at_ms: r.get::<_, i64>(6)? as u64,
                delivered_at_ms: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                last_error: r.get(8)?,
                payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_interrupted_by_a_crash_is_due_again_at_restart() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("o.sqlite3");
        let ob = Outbox::open(&db).unwrap();
        enqueue(&ob.conn(), "evt_1", "k", "http://x/", "{}", 1000).unwrap();
        let claimed = ob.claim_due(2000, 10_000_000_000_000, 10).unwrap();
        assert_eq!(claimed.len(), 1);
        // Leased far into the future: not due again while this dispatcher lives.
        assert!(ob.claim_due(3000, 4000, 10).unwrap().is_empty());
        drop(ob);
        let ob = Outbox::open(&db).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let again = ob.claim_due(now + 1, now + 100, 10).unwrap();
        assert_eq!(again.len(), 1);
        ob.mark_delivered("evt_1", 2, now).unwrap();
        assert!(ob
            .claim_due(u64::MAX / 2, u64::MAX / 2, 10)
            .unwrap()
            .is_empty());
        assert_eq!(ob.list(Some("delivered"), 10).unwrap().len(), 1);
    }
}
