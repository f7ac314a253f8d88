//! The DMS's durable state in SQLite: devices (credentials, nonces, what they reported),
//! the component catalog (bytes kept as content-addressed files), jobs with their timeline,
//! and the EMI webhook outbox (written in the same transaction as a job's end).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::catalog::Build;
pub use super::job::now_ms;
use super::job::{Job, JobState, Step, TimelineEntry};
use crate::syncml::auth::AuthScheme;
use crate::syncml::tree::{DevDetail, DevInfo};
use crate::webhook::outbox;

pub use crate::paging::{Listed, Page};

/// Which jobs to list.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub device: Option<String>,
    /// `queued`, `running`, `succeeded` or `failed`.
    pub state: Option<String>,
    pub result_code: Option<u16>,
}

/// Which devices to list.
#[derive(Clone, Debug, Default)]
pub struct DeviceFilter {
    /// DevInfo `Mod`.
    pub model: Option<String>,
    /// DevDetail `FwV`.
    pub firmware: Option<String>,
    /// Only devices with a session since then (ms since the epoch).
    pub seen_since_ms: Option<u64>,
}

/// Challenges a device may leave unanswered before the oldest stops being accepted.
pub const MAX_OFFERED_NONCES: usize = 4;

fn no_server_auth() -> AuthScheme {
    AuthScheme::None
}

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum DmsStoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored JSON is corrupt: {0}")]
    Json(#[from] serde_json::Error),
    #[error("file system error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the storage worker stopped")]
    WorkerGone,
}

impl From<outbox::OutboxError> for DmsStoreError {
    fn from(e: outbox::OutboxError) -> Self {
        match e {
            outbox::OutboxError::Sqlite(s) => DmsStoreError::Sqlite(s),
        }
    }
}

/// A provisioned device.
/// The EMI's say on a device's alternate download mechanism.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MechanismChoice {
    /// The DMS's rule decides (`dlota_devices`), a signed URL otherwise.
    #[default]
    Auto,
    Https,
    Dlota,
}

impl MechanismChoice {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "auto" => MechanismChoice::Auto,
            "https" => MechanismChoice::Https,
            "dlota" => MechanismChoice::Dlota,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Device {
    pub id: String,
    #[serde(skip_serializing)]
    pub password: String,
    /// The server's password toward this device (package 0 digest, server credentials).
    #[serde(skip_serializing)]
    pub server_password: String,
    /// The DM account's user name, when it is not the device id (`Source/LocURI`): the
    /// device's credentials are checked against it.
    #[serde(default)]
    pub username: Option<String>,
    /// How the device authenticates to us: `md5` or `basic`.
    pub auth: String,
    /// How we authenticate to the device: our `Cred` in every message, and the digest of
    /// package 0 (`none` sends no `Cred`).
    #[serde(default = "no_server_auth")]
    pub server_auth: AuthScheme,
    /// Where package 0 is POSTed.
    pub notify_url: Option<String>,
    /// Nonce the device must use in its next MD5 credential (b64; `""` is the empty nonce of
    /// a factory-fresh device). Replaced only once the device authenticated.
    #[serde(skip_serializing, alias = "server_nonce")]
    pub client_auth_nonce: String,
    /// Nonces we offered in challenges the device has not answered yet (b64, newest last,
    /// at most [`MAX_OFFERED_NONCES`]): accepted beside `client_auth_nonce`, so nobody who
    /// merely sends messages in the device's name can rotate its nonce away.
    #[serde(skip_serializing, default)]
    pub offered_nonces: Vec<String>,
    /// Nonce we use in our credential and package 0 digest (b64), set by the device's last
    /// Chal.
    #[serde(skip_serializing, alias = "client_nonce")]
    pub server_auth_nonce: String,
    /// When the device last authenticated; `None` until its first session, when the empty
    /// nonce is accepted too.
    #[serde(default)]
    pub last_auth_at_ms: Option<u64>,
    /// How alternate downloads reach this device: `https` (a signed URL), `dlota` (an OMA
    /// Download OTA descriptor) or `auto` (the `dlota_devices` rule decides).
    #[serde(default)]
    pub alternate_mechanism: MechanismChoice,
    pub devinfo: Option<DevInfo>,
    pub devdetail: Option<DevDetail>,
    pub inventory: Option<serde_json::Value>,
    pub last_session_at_ms: Option<u64>,
    pub last_notified_at_ms: Option<u64>,
    /// The device's latest request (alternative flows 1) and the job it created.
    #[serde(default)]
    pub last_request: Option<DeviceRequest>,
}

/// A component or operation the device asked for, and the job that carries it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRequest {
    pub job_id: String,
    pub operation: crate::dms::job::JobOp,
    pub component: Option<String>,
    pub at_ms: u64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS builds (
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    final INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs(device, final, created_at_ms);
CREATE TABLE IF NOT EXISTS ads_events (
    event_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    step TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS ads_events_by_job ON ads_events(job_id);
";

/// The DMS store. Cheap to clone; methods block (call through [`DmsStore::run`]).
#[derive(Clone)]
pub struct DmsStore {
    conn: Arc<Mutex<Connection>>,
    catalog_dir: PathBuf,
    db_path: PathBuf,
}

impl DmsStore {
    pub fn open(dir: &Path) -> Result<Self, DmsStoreError> {
        let catalog_dir = dir.join("catalog");
        std::fs::create_dir_all(&catalog_dir).map_err(|source| DmsStoreError::Io {
            path: catalog_dir.clone(),
            source,
        })?;
        let db_path = dir.join("dms.sqlite3");
        let conn = crate::sqlite::open(&db_path, crate::sqlite::Durability::Process)?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(outbox::SCHEMA)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            catalog_dir,
            db_path,
        })
    }

    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    pub fn catalog_dir(&self) -> &Path {
        &self.catalog_dir
    }

    /// Where a build's bytes are kept.
    pub fn build_path(&self, id: &str) -> PathBuf {
        self.catalog_dir.join(id)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs blocking store work on the blocking pool.
    pub async fn run<R, F>(&self, f: F) -> Result<R, DmsStoreError>
    where
        F: FnOnce(&DmsStore) -> Result<R, DmsStoreError> + Send + 'static,
        R: Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|_| DmsStoreError::WorkerGone)?
    }

    pub fn put_device(&self, d: &Device) -> Result<(), DmsStoreError> {
        write_device(&self.conn(), d)
    }

    pub fn device(&self, id: &str) -> Result<Option<Device>, DmsStoreError> {
        read_device(&self.conn(), id)
    }

    /// Runs `f` in one write transaction, the connection held throughout. Immediate: a
    /// deferred transaction that read first cannot take the write lock once the outbox's
    /// connection has written since (SQLITE_BUSY at once, no busy wait).
    fn write_tx<R>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<R, DmsStoreError>,
    ) -> Result<R, DmsStoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let r = f(&tx)?;
        tx.commit()?;
        Ok(r)
    }

    /// Reads, changes and writes a device in one transaction: two updates racing (a session
    /// storing DevInfo, a notification stamping its time) must not write back each other's
    /// stale copy.
    pub fn update_device(
        &self,
        id: &str,
        f: impl FnOnce(&mut Device),
    ) -> Result<Option<Device>, DmsStoreError> {
        self.write_tx(|tx| {
            let Some(mut d) = read_device(tx, id)? else {
                return Ok(None);
            };
            f(&mut d);
            write_device(tx, &d)?;
            Ok(Some(d))
        })
    }

    /// Like [`update_device`](Self::update_device), starting from `new()` when the device is
    /// not registered yet.
    pub fn upsert_device(
        &self,
        id: &str,
        new: impl FnOnce() -> Device,
        f: impl FnOnce(&mut Device),
    ) -> Result<Device, DmsStoreError> {
        self.write_tx(|tx| {
            let mut d = read_device(tx, id)?.unwrap_or_else(new);
            f(&mut d);
            write_device(tx, &d)?;
            Ok(d)
        })
    }

    pub fn put_build(&self, b: &Build) -> Result<(), DmsStoreError> {
        self.conn().execute(
            "INSERT INTO builds (id, name, version, json) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name, version) DO UPDATE SET id = excluded.id, json = excluded.json",
            params![b.id, b.name, b.version, serde_json::to_string(b)?],
        )?;
        Ok(())
    }

    pub fn builds(&self) -> Result<Vec<Build>, DmsStoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT json FROM builds ORDER BY name, version")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for j in rows {
            out.push(serde_json::from_str(&j?)?);
        }
        Ok(out)
    }

    pub fn put_job(&self, j: &Job) -> Result<(), DmsStoreError> {
        write_job(&self.conn(), j)
    }

    /// A job the device asked for (alternative flows 1): stored, named on the device record
    /// (`last_request`), and announced to the EMI (`job.requested`, so it learns the id
    /// before the job ends), in one transaction.
    pub fn put_device_job(&self, j: &Job, emi_url: Option<&str>) -> Result<(), DmsStoreError> {
        self.write_tx(|tx| {
            write_job(tx, j)?;
            if let Some(mut d) = read_device(tx, &j.device)? {
                d.last_request = Some(DeviceRequest {
                    job_id: j.id.clone(),
                    operation: j.operation,
                    component: j.component.clone(),
                    at_ms: j.created_at_ms,
                });
                write_device(tx, &d)?;
            }
            if let Some(url) = emi_url {
                let event_id = outbox::new_event_id();
                let payload = serde_json::json!({
                    "event": "job.requested",
                    "event_id": event_id,
                    "job": j,
                });
                outbox::enqueue(
                    tx,
                    &event_id,
                    "job.requested",
                    url,
                    &payload.to_string(),
                    now_ms(),
                )?;
            }
            Ok(())
        })
    }

    /// Records an ADS callback on a job's timeline; false if this event was already recorded
    /// (callbacks are at-least-once).
    pub fn add_ads_event(
        &self,
        job_id: &str,
        event_id: &str,
        entry: &TimelineEntry,
    ) -> Result<bool, DmsStoreError> {
        let step = serde_json::to_value(entry.step)?;
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO ads_events (event_id, job_id, step, at_ms, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![event_id, job_id, step.as_str(), entry.at_ms as i64, entry.detail],
        )?;
        Ok(n > 0)
    }

    fn merge_ads_events(conn: &Connection, j: &mut Job) -> Result<(), DmsStoreError> {
        let mut stmt =
            conn.prepare_cached("SELECT step, at_ms, detail FROM ads_events WHERE job_id = ?1")?;
        let rows = stmt.query_map([&j.id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, Option<String>>(2)?,
            ))
        })?;
        for row in rows {
            let (name, at_ms, detail) = row?;
            let step: Step = serde_json::from_value(serde_json::Value::String(name))?;
            j.timeline.push(TimelineEntry {
                step,
                at_ms,
                detail,
            });
        }
        j.timeline.sort_by_key(|s| s.at_ms);
        Ok(())
    }

    /// A job with the ADS callbacks merged into its timeline (what the API shows).
    pub fn job_with_events(&self, id: &str) -> Result<Option<Job>, DmsStoreError> {
        let Some(mut j) = self.job(id)? else {
            return Ok(None);
        };
        Self::merge_ads_events(&self.conn(), &mut j)?;
        Ok(Some(j))
    }

    /// Saves a finished job and, if the EMI is configured, its webhook event, atomically.
    pub fn finish_job(&self, j: &Job, emi_url: Option<&str>) -> Result<(), DmsStoreError> {
        self.write_tx(|tx| {
            tx.execute(
                "UPDATE jobs SET final = 1, json = ?2 WHERE id = ?1",
                params![j.id, serde_json::to_string(j)?],
            )?;
            if let Some(url) = emi_url {
                let event_id = outbox::new_event_id();
                let kind = if j.state == JobState::Succeeded {
                    "job.succeeded"
                } else {
                    "job.failed"
                };
                let mut shown = j.clone();
                Self::merge_ads_events(tx, &mut shown)?;
                let payload = serde_json::json!({
                    "event": kind,
                    "event_id": event_id,
                    "job": shown,
                });
                outbox::enqueue(tx, &event_id, kind, url, &payload.to_string(), now_ms())?;
            }
            Ok(())
        })
    }

    pub fn job(&self, id: &str) -> Result<Option<Job>, DmsStoreError> {
        let json: Option<String> = self
            .conn()
            .query_row("SELECT json FROM jobs WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
    }

    /// The device's open jobs, oldest first.
    pub fn open_jobs(&self, device: &str) -> Result<Vec<Job>, DmsStoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT json FROM jobs WHERE device = ?1 AND final = 0 ORDER BY created_at_ms, id",
        )?;
        let rows = stmt.query_map([device], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for j in rows {
            out.push(serde_json::from_str(&j?)?);
        }
        Ok(out)
    }

    /// One page of jobs, newest first, matching `filter`; the cursor of the next page, if
    /// any. The cursor is opaque to callers (`<created_at_ms>:<id>` of the last job shown).
    pub fn list_jobs(&self, filter: &JobFilter, page: &Page) -> Result<Listed<Job>, DmsStoreError> {
        let (before_ms, before_id) = match page.cursor.as_deref().and_then(|c| c.split_once(':')) {
            Some((ms, id)) => (ms.parse::<i64>().unwrap_or(i64::MAX), id.to_string()),
            None => (i64::MAX, String::new()),
        };
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT json FROM jobs
             WHERE (created_at_ms < ?1 OR (created_at_ms = ?1 AND (?2 = '' OR id < ?2)))
               AND (?3 IS NULL OR device = ?3)
               AND (?4 IS NULL OR json_extract(json, '$.state') = ?4)
               AND (?5 IS NULL OR json_extract(json, '$.result_code') = ?5)
             ORDER BY created_at_ms DESC, id DESC LIMIT ?6",
        )?;
        let rows = stmt.query_map(
            params![
                before_ms,
                before_id,
                filter.device,
                filter.state,
                filter.result_code,
                page.limit as i64 + 1
            ],
            |r| r.get::<_, String>(0),
        )?;
        let mut items: Vec<Job> = Vec::new();
        let mut next = None;
        for row in rows {
            if items.len() == page.limit {
                next = items
                    .last()
                    .map(|j| format!("{}:{}", j.created_at_ms, j.id));
                break;
            }
            items.push(serde_json::from_str(&row?)?);
        }
        Ok(Listed { items, next })
    }

    /// One page of devices by id, matching `filter`; the cursor of the next page (the last id
    /// shown), if any.
    pub fn list_devices(
        &self,
        filter: &DeviceFilter,
        page: &Page,
    ) -> Result<Listed<Device>, DmsStoreError> {
        let after = page.cursor.clone().unwrap_or_default();
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT json FROM devices
             WHERE id > ?1
               AND (?2 IS NULL OR json_extract(json, '$.devinfo.model') = ?2)
               AND (?3 IS NULL OR json_extract(json, '$.devdetail.fw_v') = ?3)
               AND (?4 IS NULL OR json_extract(json, '$.last_session_at_ms') >= ?4)
             ORDER BY id LIMIT ?5",
        )?;
        let rows = stmt.query_map(
            params![
                after,
                filter.model,
                filter.firmware,
                filter.seen_since_ms.map(|v| v as i64),
                page.limit as i64 + 1
            ],
            |r| r.get::<_, String>(0),
        )?;
        let mut items: Vec<Device> = Vec::new();
        let mut next = None;
        for row in rows {
            if items.len() == page.limit {
                next = items.last().map(|d| d.id.clone());
                break;
            }
            items.push(serde_json::from_str(&row?)?);
        }
        Ok(Listed { items, next })
    }

    /// Devices with open jobs.
    pub fn devices_with_open_jobs(&self) -> Result<Vec<String>, DmsStoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT DISTINCT device FROM jobs WHERE final = 0")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn read_device(conn: &Connection, id: &str) -> Result<Option<Device>, DmsStoreError> {
    let json: Option<String> = conn
        .query_row("SELECT json FROM devices WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
}

fn write_job(conn: &Connection, j: &Job) -> Result<(), DmsStoreError> {
    conn.execute(
        "INSERT INTO jobs (id, device, final, created_at_ms, json) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(id) DO UPDATE SET final = excluded.final, json = excluded.json",
        params![
            j.id,
            j.device,
            j.state.is_final() as i64,
            j.created_at_ms as i64,
            serde_json::to_string(j)?
        ],
    )?;
    Ok(())
}

fn write_device(conn: &Connection, d: &Device) -> Result<(), DmsStoreError> {
    // Secrets are stored (the DMS must know them to verify digests), just never serialized
    // into API answers: a private struct carries them into the row.
    #[derive(Serialize)]
    struct Row<'a> {
        #[serde(flatten)]
        d: &'a Device,
        password: &'a str,
        server_password: &'a str,
        client_auth_nonce: &'a str,
        offered_nonces: &'a [String],
        server_auth_nonce: &'a str,
    }
    let json = serde_json::to_string(&Row {
        d,
        password: &d.password,
        server_password: &d.server_password,
        client_auth_nonce: &d.client_auth_nonce,
        offered_nonces: &d.offered_nonces,
        server_auth_nonce: &d.server_auth_nonce,
    })?;
    conn.execute(
        "INSERT INTO devices (id, json) VALUES (?1, ?2)
         ON CONFLICT(id) DO UPDATE SET json = excluded.json",
        params![d.id, json],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Two writers updating one device concurrently: without the connection held from read to
    /// write, one writes back a copy that misses the other's change (CI once saw a session's
    /// DevInfo erased by a notification's timestamp this way); and with a deferred transaction,
    /// a write from another connection made an update fail outright (HTTP 500 in a fleet test).
    #[test]
    fn concurrent_device_updates_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = DmsStore::open(dir.path()).unwrap();
        store
            .put_device(&Device {
                id: "d".into(),
                last_notified_at_ms: Some(0),
                ..Device::default()
            })
            .unwrap();
        const PER_THREAD: u64 = 300;
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for _ in 0..PER_THREAD {
                        store
                            .update_device("d", |d| {
                                d.last_notified_at_ms = d.last_notified_at_ms.map(|n| n + 1);
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        // Another connection writing the same database meanwhile (as the webhook outbox's
        // does): an update must wait for it, not fail with SQLITE_BUSY.
        let db = store.db_path().to_path_buf();
        let other = std::thread::spawn(move || {
            let conn = Connection::open(db).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(10))
                .unwrap();
            for i in 0..PER_THREAD {
                conn.execute(
                    "INSERT INTO devices (id, json) VALUES ('other', ?1)
                     ON CONFLICT(id) DO UPDATE SET json = excluded.json",
                    [format!("{{\"id\":\"other\",\"n\":{i}}}")],
                )
                .unwrap();
            }
        });
        for w in writers {
            w.join().unwrap();
        }
        other.join().unwrap();
        let d = store.device("d").unwrap().unwrap();
        assert_eq!(d.last_notified_at_ms, Some(2 * PER_THREAD));
    }
}
