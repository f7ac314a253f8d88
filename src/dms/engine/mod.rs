//! The SyncML DM session engine: authenticates devices, answers every command with a Status,
//! and drives each device's jobs through the seed flows' steps, one message exchange at a
//! time.
//!
//! The parts, in the order a message meets them:
//! - `session`: a message's way in: decode, find or start the session, authenticate,
//!   answer every command, compose the reply.
//! - `auth`: credentials both ways, challenges, and what may continue a session.
//! - `answers`: what the device's Statuses, Results and Alerts mean for its jobs.
//! - `reads`: DevDetail and inventory reads, with `?list=` or node by node.
//! - `stages`: the job stage machine ([`Stage`]), one method per stage,
//!   emitting the next commands for the device.
//! - `writes`: nodes added on the device (`Add`, `Replace` on 418) before the Exec that
//!   needs them.
//! - `inband` and `alternate`: the two delivery mechanisms (a large object inside the
//!   session, flow 5.4.1; a one-time URL on an ADS node, flow 5.4.2, with its callbacks).
//!
//! A session is keyed by (device id, SessionID). Processing a message takes the session out of
//! the map and puts it back after, so no lock is held across storage awaits and two messages of
//! one session are never processed at once. Job progress lives in SQLite (the `stage` of each
//! job): a device that drops mid-session simply continues from the stage in its next session.

mod alternate;
mod answers;
mod auth;
mod inband;
mod reads;
mod session;
mod stages;
mod writes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

pub use self::alternate::AdsEvent;
use self::session::Session;
use super::ads_client::AdsPool;
use super::job::{Delivery, Job, JobState, Stage, Step};
use super::store::{Device, DmsStore, DmsStoreError};
use crate::net::guard::AuthThrottle;
use crate::syncml::codec::{CodecError, Limits};

/// Engine failures that are not answered in SyncML.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("not a SyncML DM message: {0}")]
    Undecodable(CodecError),
    #[error(transparent)]
    Store(#[from] DmsStoreError),
    /// Too many failed authentications from this device at this address: wait.
    #[error("authentication backoff: retry after {0:?}")]
    Backoff(Duration),
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub server_id: String,
    pub dm_url: String,
    pub allow_basic: bool,
    pub session_timeout: Duration,
    pub emi_url: Option<String>,
    pub limits: Limits,
    /// Where ADS nodes send download callbacks.
    pub ads_callback_url: String,
    /// `auto` delivery goes alternate above this size.
    pub alternate_threshold: u64,
    pub fallback_to_dm: bool,
    /// `Man/Mod` patterns of devices that get DLOTA descriptors under `auto`.
    pub dlota_devices: Vec<String>,
    /// In-band deliveries a job may start before it fails (a device that drops every
    /// session must not keep the job, and its session slot, busy forever).
    pub max_delivery_attempts: u32,
    /// Messages a session may take beyond an in-band object's chunks.
    pub max_session_messages: u32,
    pub ticket_ttl_secs: u64,
    /// Delivery of jobs the device asks for (alternative flows 1).
    pub default_delivery: Delivery,
}

/// The session engine. Cheap to share behind an `Arc`.
pub struct Engine {
    store: DmsStore,
    cfg: EngineConfig,
    ads: Arc<AdsPool>,
    sessions: Mutex<HashMap<(String, String), Session>>,
    wake: Arc<Notify>,
    auth_throttle: AuthThrottle,
}

impl Engine {
    pub fn new(
        store: DmsStore,
        cfg: EngineConfig,
        ads: Arc<AdsPool>,
        wake: Arc<Notify>,
        auth_throttle: AuthThrottle,
    ) -> Self {
        Self {
            store,
            cfg,
            ads,
            sessions: Mutex::new(HashMap::new()),
            wake,
            auth_throttle,
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the device has a live session (then it needs no notification).
    pub fn in_session(&self, device: &str) -> bool {
        let timeout = self.cfg.session_timeout;
        self.sessions()
            .values()
            .any(|s| s.device == device && s.last_seen.elapsed() < timeout)
    }

    /// Drops sessions idle past the timeout.
    pub fn expire_sessions(&self) {
        let timeout = self.cfg.session_timeout;
        self.sessions()
            .retain(|_, s| s.last_seen.elapsed() < timeout);
    }

    async fn load_job(&self, id: &str) -> Result<Option<Job>, EngineError> {
        let id = id.to_string();
        Ok(self.store.run(move |st| st.job(&id)).await?)
    }

    async fn save_job(&self, job: &Job) -> Result<(), EngineError> {
        let j = job.clone();
        self.store.run(move |st| st.put_job(&j)).await?;
        Ok(())
    }

    async fn device(&self, id: &str) -> Result<Option<Device>, EngineError> {
        let id = id.to_string();
        Ok(self.store.run(move |st| st.device(&id)).await?)
    }

    /// Ends a job and queues the EMI webhook in the same transaction (seed: "the DMS notifies
    /// the External Management Infrastructure").
    pub async fn finish(
        &self,
        job: &mut Job,
        ok: bool,
        result: Option<u16>,
        reason: Option<String>,
    ) -> Result<(), EngineError> {
        job.state = if ok {
            JobState::Succeeded
        } else {
            JobState::Failed
        };
        job.stage = Stage::Done;
        job.result_code = result;
        job.reason = reason;
        let outcome = if ok { "succeeded" } else { "failed" };
        let told = match self.cfg.emi_url {
            Some(_) => outcome.to_string(),
            // The step is on every timeline: here it says nobody was told, and why.
            None => format!("skipped: no EMI webhook configured ({outcome})"),
        };
        job.record(Step::EmiNotified, Some(told));
        let j = job.clone();
        let url = self.cfg.emi_url.clone();
        self.store
            .run(move |st| st.finish_job(&j, url.as_deref()))
            .await?;
        self.wake.notify_one();
        tracing::info!(job = %job.id, device = %job.device, ok, result, "job finished");
        Ok(())
    }
}
