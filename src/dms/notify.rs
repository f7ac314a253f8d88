//! Package 0 delivery: the DMS starts a server-initiated session by POSTing the binary
//! notification to the device's notification endpoint (standing in for WAP push / SMS), and
//! re-notifies devices whose work is waiting while they are silent.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::engine::Engine;
use super::store::{now_ms, DmsStore, DmsStoreError};
use crate::syncml::{auth, pkg0};

/// Sends package 0 to one device. Returns false when the device has no notification endpoint
/// or is already in a session.
pub async fn notify(
    store: &DmsStore,
    engine: &Engine,
    http: &reqwest::Client,
    server_id: &str,
    device_id: &str,
) -> Result<bool, DmsStoreError> {
    if engine.in_session(device_id) {
        return Ok(false);
    }
    let id = device_id.to_string();
    let Some(dev) = store.run(move |s| s.device(&id)).await? else {
        return Ok(false);
    };
    let Some(url) = dev.notify_url.clone() else {
        return Ok(false);
    };
    let session = rand::random::<u16>().max(1);
    let n = pkg0::Notification::new(server_id, session);
    let Ok(bytes) = n.encode(
        &dev.server_password,
        &auth::decode_nonce(&dev.server_auth_nonce),
    ) else {
        return Ok(false);
    };
    let sent = http
        .post(&url)
        .header("content-type", pkg0::CONTENT_TYPE)
        .timeout(Duration::from_secs(5))
        .body(bytes)
        .send()
        .await;
    let ok = matches!(&sent, Ok(r) if r.status().is_success());
    if !ok {
        tracing::info!(device = %device_id, ?sent, "package 0 not accepted; will retry");
    }
    let id = device_id.to_string();
    store
        .run(move |s| s.update_device(&id, |d| d.last_notified_at_ms = Some(now_ms())))
        .await?;
    Ok(ok)
}

/// Every second: drops idle sessions and re-notifies silent devices with work waiting.
pub async fn renotify_loop(
    store: DmsStore,
    engine: Arc<Engine>,
    http: reqwest::Client,
    server_id: String,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {},
        }
        engine.expire_sessions();
        let Ok(devices) = store.run(|s| s.devices_with_open_jobs()).await else {
            continue;
        };
        for d in devices {
            let id = d.clone();
            let (dev, jobs) = match store
                .run(move |s| Ok((s.device(&id)?, s.open_jobs(&id)?)))
                .await
            {
                Ok(x) => x,
                Err(_) => continue,
            };
            let needs_device = jobs.iter().any(|j| j.stage.needs_device());
            let last = dev.and_then(|d| d.last_notified_at_ms).unwrap_or(0);
            if needs_device && now_ms().saturating_sub(last) >= every.as_millis() as u64 {
                let _ = notify(&store, &engine, &http, &server_id, &d).await;
            }
        }
    }
}
