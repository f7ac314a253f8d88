//! Answers that come before the request body has been read (a 401 or 429 to an upload) must
//! reach HTTP/2 clients as answers.
//!
//! RFC 9113 §8.1 lets a server answer before the request is complete and then reset the stream
//! with `NO_ERROR`, which hyper and h2 do. But clients in the field do not all take it: curl
//! 7.88 (Debian 12's) drops the answer it already has and fails with error 92 ("stream error
//! in the HTTP/2 framing layer"), so an operator's `curl` with a mistyped token never sees the
//! 401. This layer keeps a refused request's body until the answer has been sent, then reads
//! and discards what is left of it, up to [`DRAIN_LIMIT`] bytes within [`DRAIN_TIME`], so
//! that the stream ends normally; a larger or slower body still gets the spec's `NO_ERROR`
//! reset (dropped before the answer was sent, h2 would reset with `CANCEL` instead).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

type Slot = Arc<Mutex<Option<Body>>>;

/// Most of a refused request's body read (and discarded) so that its answer arrives whole.
pub const DRAIN_LIMIT: u64 = 1 << 20;
/// How long that reading may take.
pub const DRAIN_TIME: Duration = Duration::from_secs(2);

/// axum middleware: see the module docs. Costs one small allocation per request; for
/// command endpoints, not the download plane.
pub async fn drain_refused_bodies(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let slot: Slot = Arc::new(Mutex::new(Some(body)));
    let req = Request::from_parts(parts, Body::new(Shared(slot.clone())));
    let resp = next.run(req).await;
    let refused = resp.status().is_client_error() || resp.status().is_server_error();
    let (parts, body) = resp.into_parts();
    Response::from_parts(
        parts,
        Body::new(Holding {
            body,
            held: slot,
            drain: refused,
        }),
    )
}

/// Reads what is left of `body` (at most [`DRAIN_LIMIT`] bytes within [`DRAIN_TIME`]) and
/// drops it: read to its end, the stream closes normally; otherwise h2 resets it with
/// `NO_ERROR`, the answer having been sent.
async fn drain(mut body: Body) {
    use http_body_util::BodyExt;
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut read = 0u64;
    while !http_body::Body::is_end_stream(&body) && read <= DRAIN_LIMIT {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
            // The end, an error, or time up: nothing more to wait for.
            _ => return,
        }
    }
}

/// The request body as the handler sees it: read through the shared slot.
struct Shared(Slot);

impl http_body::Body for Shared {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()
            .map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

/// The response body, keeping the request body alive until the response is done with, and
/// then (for a refusal) reading what is left of it.
struct Holding {
    body: Body,
    held: Slot,
    drain: bool,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        let left = self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(body) = left else { return };
        if !self.drain || http_body::Body::is_end_stream(&body) {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(drain(body));
        }
    }
}
