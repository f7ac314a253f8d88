//! Durable ticket state through one writer thread with group commit.
//!
//! The download path never writes SQLite itself: it sends operations over a channel to this
//! thread, which applies every operation waiting in the channel in one transaction and only
//! then acknowledges them. Under load many requests share one commit; idle, an operation is
//! committed as soon as it arrives. Loads go through the same queue so that they observe every
//! earlier write.
//!
//! Crash safety (`kill -9`): before a response's first body byte, its planned ranges are
//! recorded as an *intent*; when it ends, the intent is replaced by the ticket's progress.
//! After a crash, leftover intents become the ticket's *tentative* coverage: bytes that may or
//! may not have reached the device. See `LiveTicket::credit` for how they count.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{oneshot, Notify};

use super::coverage::Coverage;
use super::{Mechanism, Snapshot, TicketRecord, TicketState};
use crate::ads::store::StoreError;
use crate::ads::token::TicketId;
use crate::paging::{Listed, Page};
use crate::webhook::outbox;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tickets (
    id TEXT PRIMARY KEY,
    component_id TEXT NOT NULL,
    device_id TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    callback_url TEXT,
    context TEXT,
    max_deliveries INTEGER NOT NULL DEFAULT 1,
    max_connections INTEGER,
    max_bytes INTEGER,
    state TEXT NOT NULL DEFAULT 'issued',
    deliveries INTEGER NOT NULL DEFAULT 0,
    bytes_sent INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    first_byte_at_ms INTEGER,
    last_byte_at_ms INTEGER,
    completed_at_ms INTEGER,
    coverage TEXT NOT NULL DEFAULT '',
    tentative TEXT NOT NULL DEFAULT '',
    mechanism TEXT NOT NULL DEFAULT 'https',
    content_type TEXT,
    report TEXT
);
CREATE INDEX IF NOT EXISTS tickets_by_component ON tickets(component_id, state);
CREATE INDEX IF NOT EXISTS tickets_by_state ON tickets(state, expires_at);
CREATE TABLE IF NOT EXISTS ticket_intents (
    ticket_id TEXT NOT NULL,
    req_id INTEGER NOT NULL,
    ranges TEXT NOT NULL,
    PRIMARY KEY (ticket_id, req_id)
);
";

/// An event to enqueue in the same transaction as a state change.
#[derive(Debug)]
pub struct NewEvent {
    pub event_id: String,
    pub kind: &'static str,
    pub url: String,
    pub payload: String,
}

/// A ticket loaded from storage.
pub struct Loaded {
    pub record: TicketRecord,
    pub snapshot: Snapshot,
}

type Ack = oneshot::Sender<Result<(), StoreError>>;

/// What the writer can be asked to do.
pub enum Op {
    Mint {
        record: Box<TicketRecord>,
        ack: Ack,
    },
    Begin {
        ticket: TicketId,
        req: u64,
        ranges: String,
        ack: Ack,
    },
    End {
        ticket: TicketId,
        req: u64,
        snapshot: Box<Snapshot>,
    },
    Transition {
        ticket: TicketId,
        snapshot: Box<Snapshot>,
        event: Option<NewEvent>,
        ack: Option<Ack>,
        /// The request whose intent this also settles (it will send no `End`).
        settles: Option<u64>,
    },
    Load {
        ticket: TicketId,
        reply: mpsc::SyncSender<Result<Option<Loaded>, StoreError>>,
    },
    /// A page of tickets, newest first (`GET /v1/tickets`).
    List {
        filter: TicketFilter,
        page: Page,
        reply: oneshot::Sender<Result<Listed<ListedTicket>, StoreError>>,
    },
    /// Ids of tickets whose expiry (plus grace, once started) has passed.
    ExpiryCandidates {
        now: u64,
        grace: u64,
        reply: oneshot::Sender<Vec<TicketId>>,
    },
}

/// Which tickets to list; `state` is the effective one (a ticket past its expiry, plus grace
/// once started, lists as expired before the sweeper ended it).
#[derive(Clone, Debug, Default)]
pub struct TicketFilter {
    pub state: Option<TicketState>,
    pub component: Option<String>,
    pub device: Option<String>,
    /// Unix seconds, and the grace period, that decide effective states.
    pub now: u64,
    pub grace: u64,
}

/// A listed ticket as stored, with its component's size.
pub struct ListedTicket {
    pub record: TicketRecord,
    pub snapshot: Snapshot,
    pub size: u64,
}

enum Reply {
    None,
    Ack(Ack),
    Load(
        mpsc::SyncSender<Result<Option<Loaded>, StoreError>>,
        Option<Box<Loaded>>,
    ),
    Ids(oneshot::Sender<Vec<TicketId>>, Vec<TicketId>),
}

/// Handle to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
}

impl Writer {
    /// Opens the ticket tables in `db`, turns leftover intents into tentative coverage, and
    /// starts the writer thread. `wake` is notified after commits that enqueued events.
    pub fn start(db: &Path, wake: Arc<Notify>) -> Result<Self, StoreError> {
        // A commit survives the process being killed; group commits stay cheap.
        let mut conn = crate::sqlite::open(db, crate::sqlite::Durability::Process)?;
        conn.execute_batch(SCHEMA)?;
        add_missing_columns(&conn)?;
        conn.execute_batch(outbox::SCHEMA)?;
        recover_intents(&mut conn)?;
        let (tx, rx) = mpsc::channel::<Op>();
        std::thread::Builder::new()
            .name("ticket-writer".into())
            .spawn(move || run(conn, rx, wake))
            .map_err(|e| StoreError::Io {
                path: db.to_path_buf(),
                source: e,
            })?;
        Ok(Self { tx })
    }

    /// Queues an operation. Fails only if the writer thread is gone.
    pub fn send(&self, op: Op) -> Result<(), StoreError> {
        self.tx.send(op).map_err(|_| StoreError::WorkerGone)
    }
}

/// Columns added since the first schema, with their definitions: a database written by an
/// older node gains them at start (SQLite has no `ADD COLUMN IF NOT EXISTS`).
const ADDED_COLUMNS: [(&str, &str); 3] = [
    ("mechanism", "TEXT NOT NULL DEFAULT 'https'"),
    ("content_type", "TEXT"),
    ("report", "TEXT"),
];

fn add_missing_columns(conn: &Connection) -> Result<(), StoreError> {
    let existing: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('tickets')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for (name, definition) in ADDED_COLUMNS {
        if !existing.iter().any(|c| c == name) {
            conn.execute_batch(&format!(
                "ALTER TABLE tickets ADD COLUMN {name} {definition}"
            ))?;
        }
    }
    Ok(())
}

fn recover_intents(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let intents: Vec<(String, String)> = {
        let mut stmt = tx.prepare("SELECT ticket_id, ranges FROM ticket_intents")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (ticket, ranges) in &intents {
        let current: Option<String> = tx
            .query_row(
                "SELECT tentative FROM tickets WHERE id = ?1",
                [ticket],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(current) = current {
            let mut t = Coverage::from_text(&current);
            t.merge(&Coverage::from_text(ranges));
            tx.execute(
                "UPDATE tickets SET tentative = ?2,
                        state = CASE WHEN state = 'issued' THEN 'downloading' ELSE state END
                 WHERE id = ?1",
                params![ticket, t.to_text()],
            )?;
        }
    }
    tx.execute("DELETE FROM ticket_intents", [])?;
    tx.commit()?;
    if !intents.is_empty() {
        tracing::warn!(
            count = intents.len(),
            "recovered responses that were in flight when the node stopped"
        );
    }
    Ok(())
}

const MAX_BATCH: usize = 4096;

fn run(mut conn: Connection, rx: mpsc::Receiver<Op>, wake: Arc<Notify>) {
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::with_capacity(64);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(batch.len());
        let mut events = false;
        let outcome = (|| -> Result<(), StoreError> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for op in batch {
                if matches!(op, Op::Transition { event: Some(_), .. }) {
                    events = true;
                }
                replies.push(apply(&tx, op)?);
            }
            tx.commit()?;
            Ok(())
        })();
        match outcome {
            Ok(()) => {
                for r in replies {
                    match r {
                        Reply::None => {}
                        Reply::Ack(a) => {
                            let _ = a.send(Ok(()));
                        }
                        Reply::Load(s, v) => {
                            let _ = s.send(Ok(v.map(|b| *b)));
                        }
                        Reply::Ids(s, v) => {
                            let _ = s.send(v);
                        }
                    }
                }
                if events {
                    wake.notify_one();
                }
            }
            Err(e) => {
                // Every waiting caller learns why (a full disk is a 507, a busy database a
                // 503), not just that the writer went away.
                tracing::error!(error = %e, "ticket state batch failed to commit");
                for r in replies {
                    match r {
                        Reply::Ack(a) => {
                            let _ = a.send(Err(e.duplicate()));
                        }
                        Reply::Load(s, _) => {
                            let _ = s.send(Err(e.duplicate()));
                        }
                        Reply::None | Reply::Ids(..) => {}
                    }
                }
            }
        }
    }
}

fn apply(tx: &rusqlite::Transaction<'_>, op: Op) -> Result<Reply, StoreError> {
    Ok(match op {
        Op::Mint { record, ack } => {
            let r = &record;
            tx.prepare_cached(
                "INSERT INTO tickets (id, component_id, device_id, created_at, expires_at,
                    callback_url, context, max_deliveries, max_connections, max_bytes,
                    mechanism, content_type)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                r.id.to_hex(),
                r.component_id,
                r.device_id,
                r.created_at as i64,
                r.expires_at as i64,
                r.callback_url,
                r.context.as_ref().map(|c| c.to_string()),
                r.max_deliveries as i64,
                r.max_connections.map(|v| v as i64),
                r.max_bytes.map(|v| v as i64),
                r.mechanism.as_str(),
                r.content_type,
            ])?;
            Reply::Ack(ack)
        }
        Op::Begin {
            ticket,
            req,
            ranges,
            ack,
        } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO ticket_intents (ticket_id, req_id, ranges) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![ticket.to_hex(), req as i64, ranges])?;
            Reply::Ack(ack)
        }
        Op::End {
            ticket,
            req,
            snapshot,
        } => {
            tx.prepare_cached("DELETE FROM ticket_intents WHERE ticket_id = ?1 AND req_id = ?2")?
                .execute(params![ticket.to_hex(), req as i64])?;
            save_snapshot(tx, ticket, &snapshot)?;
            Reply::None
        }
        Op::Transition {
            ticket,
            snapshot,
            event,
            ack,
            settles,
        } => {
            if let Some(req) = settles {
                tx.prepare_cached(
                    "DELETE FROM ticket_intents WHERE ticket_id = ?1 AND req_id = ?2",
                )?
                .execute(params![ticket.to_hex(), req as i64])?;
            }
            save_snapshot(tx, ticket, &snapshot)?;
            if let Some(e) = event {
                outbox::enqueue(tx, &e.event_id, e.kind, &e.url, &e.payload, now_ms())
                    .map_err(|outbox::OutboxError::Sqlite(s)| StoreError::Sqlite(s))?;
            }
            ack.map_or(Reply::None, Reply::Ack)
        }
        Op::Load { ticket, reply } => Reply::Load(reply, load(tx, ticket)?.map(Box::new)),
        Op::List {
            filter,
            page,
            reply,
        } => {
            let _ = reply.send(list(tx, &filter, &page));
            Reply::None
        }
        Op::ExpiryCandidates { now, grace, reply } => {
            let mut stmt = tx.prepare_cached(
                "SELECT id FROM tickets
                 WHERE (state = 'issued' AND expires_at < ?1)
                    OR (state = 'downloading' AND expires_at + ?2 < ?1)
                 LIMIT 1000",
            )?;
            let ids = stmt
                .query_map(params![now as i64, grace as i64], |r| r.get::<_, String>(0))?
                .filter_map(|r| r.ok())
                .filter_map(|s| TicketId::from_hex(&s))
                .collect();
            Reply::Ids(reply, ids)
        }
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn save_snapshot(
    tx: &rusqlite::Transaction<'_>,
    ticket: TicketId,
    s: &Snapshot,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE tickets SET state = ?2, deliveries = ?3, bytes_sent = ?4, requests = ?5,
            first_byte_at_ms = ?6, last_byte_at_ms = ?7, completed_at_ms = ?8,
            coverage = ?9, tentative = ?10, report = ?11
         WHERE id = ?1",
    )?
    .execute(params![
        ticket.to_hex(),
        s.state.as_str(),
        s.deliveries as i64,
        s.bytes_sent as i64,
        s.requests as i64,
        s.first_byte_at_ms.map(|v| v as i64),
        s.last_byte_at_ms.map(|v| v as i64),
        s.completed_at_ms.map(|v| v as i64),
        s.coverage.to_text(),
        s.tentative.to_text(),
        s.report
            .as_ref()
            .and_then(|r| serde_json::to_string(r).ok()),
    ])?;
    Ok(())
}

/// The columns [`row_to_ticket`] reads, in its order.
const TICKET_COLUMNS: &str = "t.component_id, t.device_id, t.created_at, t.expires_at,
    t.callback_url, t.context, t.max_deliveries, t.max_connections, t.max_bytes, t.state,
    t.deliveries, t.bytes_sent, t.requests, t.first_byte_at_ms, t.last_byte_at_ms,
    t.completed_at_ms, t.coverage, t.tentative, t.mechanism, t.content_type, t.report, t.id";

fn row_to_ticket(r: &rusqlite::Row<'_>) -> rusqlite::Result<Loaded> {
    let context: Option<String> = r.get(5)?;
    let state: String = r.get(9)?;
    let report: Option<String> = r.get(20)?;
    let id: String = r.get(21)?;
    Ok(Loaded {
        record: TicketRecord {
            id: TicketId::from_hex(&id).ok_or_else(|| {
                rusqlite::Error::InvalidColumnType(21, "id".into(), rusqlite::types::Type::Text)
            })?,
            component_id: r.get(0)?,
            device_id: r.get(1)?,
            created_at: r.get::<_, i64>(2)? as u64,
            expires_at: r.get::<_, i64>(3)? as u64,
            callback_url: r.get(4)?,
            context: context.and_then(|c| serde_json::from_str(&c).ok()),
            max_deliveries: r.get::<_, i64>(6)? as u32,
            max_connections: r.get::<_, Option<i64>>(7)?.map(|v| v as u32),
            max_bytes: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
            mechanism: Mechanism::parse(&r.get::<_, String>(18)?),
            content_type: r.get(19)?,
        },
        snapshot: Snapshot {
            state: TicketState::parse(&state),
            deliveries: r.get::<_, i64>(10)? as u32,
            bytes_sent: r.get::<_, i64>(11)? as u64,
            requests: r.get::<_, i64>(12)? as u64,
            first_byte_at_ms: r.get::<_, Option<i64>>(13)?.map(|v| v as u64),
            last_byte_at_ms: r.get::<_, Option<i64>>(14)?.map(|v| v as u64),
            completed_at_ms: r.get::<_, Option<i64>>(15)?.map(|v| v as u64),
            coverage: Coverage::from_text(&r.get::<_, String>(16)?),
            tentative: Coverage::from_text(&r.get::<_, String>(17)?),
            report: report.and_then(|j| serde_json::from_str(&j).ok()),
        },
    })
}

fn load(tx: &rusqlite::Transaction<'_>, id: TicketId) -> Result<Option<Loaded>, StoreError> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {TICKET_COLUMNS} FROM tickets t WHERE t.id = ?1"
    ))?;
    Ok(stmt.query_row([id.to_hex()], row_to_ticket).optional()?)
}

/// A page of tickets, newest first; the cursor is `<created_at>:<id>` of the last one shown.
fn list(
    tx: &rusqlite::Transaction<'_>,
    f: &TicketFilter,
    page: &Page,
) -> Result<Listed<ListedTicket>, StoreError> {
    let (before, before_id) = match page.cursor.as_deref().and_then(|c| c.split_once(':')) {
        Some((at, id)) => (at.parse::<i64>().unwrap_or(i64::MAX), id.to_string()),
        None => (i64::MAX, String::new()),
    };
    // The effective state, as `LiveTicket::effective_state` decides it.
    let state_clause = match f.state {
        None => "1",
        Some(TicketState::Issued) => "t.state = 'issued' AND t.expires_at >= ?6",
        Some(TicketState::Downloading) => "t.state = 'downloading' AND t.expires_at + ?7 >= ?6",
        Some(TicketState::Expired) => {
            "(t.state = 'expired' OR (t.state = 'issued' AND t.expires_at < ?6)
              OR (t.state = 'downloading' AND t.expires_at + ?7 < ?6))"
        }
        Some(TicketState::Completed) => "t.state = 'completed'",
        Some(TicketState::Revoked) => "t.state = 'revoked'",
    };
    let sql = format!(
        "SELECT {TICKET_COLUMNS}, c.size FROM tickets t JOIN components c ON c.id = t.component_id
         WHERE (t.created_at < ?1 OR (t.created_at = ?1 AND (?2 = '' OR t.id < ?2)))
           AND (?3 IS NULL OR t.component_id = ?3)
           AND (?4 IS NULL OR t.device_id = ?4)
           AND {state_clause}
         ORDER BY t.created_at DESC, t.id DESC LIMIT ?5"
    );
    let mut stmt = tx.prepare_cached(&sql)?;
    let mut values: Vec<rusqlite::types::Value> = vec![
        before.into(),
        before_id.into(),
        f.component.clone().into(),
        f.device.clone().into(),
        (page.limit as i64 + 1).into(),
    ];
    // SQLite refuses parameters a statement does not name: the clock only where it counts.
    if state_clause.contains("?6") {
        values.push((f.now as i64).into());
    }
    if state_clause.contains("?7") {
        values.push((f.grace as i64).into());
    }
    let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let loaded = row_to_ticket(r)?;
        out.push(ListedTicket {
            record: loaded.record,
            snapshot: loaded.snapshot,
            size: r.get::<_, i64>(22)? as u64,
        });
    }
    Ok(Listed::from_rows(out, page, |t| {
        format!("{}:{}", t.record.created_at, t.record.id.to_hex())
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A database written before DLOTA tickets existed gains their columns at start, and its
    /// tickets read as plain HTTPS tickets with no report.
    #[test]
    fn an_older_ticket_table_gains_the_new_columns() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ads.sqlite3");
        let old_schema = ADDED_COLUMNS
            .iter()
            .fold(SCHEMA.to_string(), |s, (name, definition)| {
                s.replace(&format!(",\n    {name} {definition}"), "")
            });
        assert!(!old_schema.contains("mechanism"), "{old_schema}");
        let id = TicketId::random();
        {
            let conn = Connection::open(&db).unwrap();
            conn.execute_batch(&old_schema).unwrap();
            conn.execute(
                "INSERT INTO tickets (id, component_id, created_at, expires_at)
                 VALUES (?1, 'c', 1, 4000000000)",
                [id.to_hex()],
            )
            .unwrap();
        }
        let _writer = Writer::start(&db, Arc::new(Notify::new())).unwrap();
        let mut conn = Connection::open(&db).unwrap();
        let tx = conn.transaction().unwrap();
        let loaded = load(&tx, id).unwrap().unwrap();
        assert_eq!(loaded.record.mechanism, Mechanism::Https);
        assert_eq!(loaded.record.content_type, None);
        assert_eq!(loaded.snapshot.report, None);
        // Starting again finds the columns there and adds nothing.
        drop(tx);
        add_missing_columns(&conn).unwrap();
    }
}
