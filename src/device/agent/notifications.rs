//! Package 0: the server's notification, verified against the server's password and our
//! nonce, and the plain-HTTP listener a device (or a test) receives it on.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Agent, DeviceError, Trigger};
use crate::syncml::auth;
use crate::syncml::pkg0;

impl Agent {
    /// Verifies a package 0 and runs the session it asks for.
    pub async fn on_notification(
        self: &Arc<Self>,
        bytes: &[u8],
    ) -> Result<pkg0::Notification, DeviceError> {
        let client_nonce = auth::decode_nonce(&self.state.lock().await.client_nonce);
        // Clients retry with a reset nonce; field implementations disagree on its form.
        let n = pkg0::verify(
            bytes,
            &self.cfg.server_id,
            &self.cfg.server_password,
            &[&client_nonce, &[0, 0, 0, 0], b"0x00000000"],
        )?;
        Ok(n)
    }
}

/// Serves package 0 notifications on `addr` (plain HTTP `POST /notify`), running the
/// requested sessions in the background. Returns the bound address.
pub async fn listen_for_notifications(
    agent: Arc<Agent>,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    use axum::routing::post;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/notify",
        post(move |body: axum::body::Bytes| {
            let agent = agent.clone();
            async move {
                match agent.on_notification(&body).await {
                    Ok(n) => {
                        let session_id = n.session_id_hex();
                        tokio::spawn(async move {
                            if let Err(e) = agent.run(Trigger::Server { session_id }).await {
                                tracing::warn!(device = %agent.cfg.id, error = %e, "session failed");
                            }
                        });
                        axum::http::StatusCode::ACCEPTED
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "package 0 refused");
                        axum::http::StatusCode::UNAUTHORIZED
                    }
                }
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(bound)
}
