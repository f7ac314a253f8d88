//! The download plane: `GET|HEAD /d/{token}[/{filename}]`.
//!
//! One short handler composing stages in order: method → token (no storage) → ticket
//! (cache, then SQLite) → [`plan`] (pure: `If-None-Match`, `If-Range` + `Range` into a
//! [`Plan`]: 304, 416, HEAD or the bytes to send) → admission on the ticket → response with a
//! streamed [`DownloadBody`]. Each stage's refusal maps to one status here and nowhere else.

pub mod body;
pub mod conditional;
pub mod delivery;
mod descriptor;
pub mod plan;
pub mod range;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use self::body::{DownloadBody, Segment};
use self::delivery::Tracker;
use self::plan::Plan;
use self::range::{ByteRange, RangeDecision};
use super::cache::ChunkCache;
use super::metrics::Metrics;
use super::object::ServedObject;
use super::tickets::{Refusal, Tickets};
use super::token::{Keyring, TokenError};
use crate::net::wire::Wire;

/// Header carrying the whole object's BLAKE3 (hex), beside `Repr-Digest`'s SHA-256.
pub const BLAKE3_HEADER: HeaderName = HeaderName::from_static("x-blake3");
const REPR_DIGEST: HeaderName = HeaderName::from_static("repr-digest");
static OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");
static BYTES: HeaderValue = HeaderValue::from_static("bytes");
// Signed per-device URLs must not land in shared caches, and proxies must not re-encode the
// bytes the hashes describe.
static CACHE_CONTROL: HeaderValue = HeaderValue::from_static("private, no-transform");

/// Shared state of the download plane.
pub struct DownloadPlane {
    pub keyring: Keyring,
    pub tickets: Tickets,
    pub cache: ChunkCache,
    pub metrics: Arc<Metrics>,
    pub max_ranges: usize,
    pub access_log: bool,
    /// Where responses wait for their last bytes to be acknowledged (drained at shutdown).
    pub settles: tokio_util::task::TaskTracker,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Extracts the token from `{prefix}{token}` or `{prefix}{token}/{anything}`.
fn token_after<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(prefix)?;
    let token = rest.split('/').next().unwrap_or("");
    (!token.is_empty()).then_some(token)
}

/// Extracts the token from `/d/{token}` or `/d/{token}/{anything}`.
fn token_from_path(path: &str) -> Option<&str> {
    token_after(path, "/d/")
}

/// What the three URL kinds of a ticket are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// `/d/{token}`: the object.
    Object,
    /// `/dd/{token}`: a DLOTA ticket's descriptor.
    Descriptor,
    /// `/dn/{token}`: a DLOTA ticket's install-notify report.
    InstallNotify,
}

impl Route {
    fn of(path: &str) -> Self {
        if path.starts_with("/dd/") {
            Route::Descriptor
        } else if path.starts_with("/dn/") {
            Route::InstallNotify
        } else {
            Route::Object
        }
    }

    /// The path as the access log shows it: the token is a bearer credential.
    fn logged(self) -> &'static str {
        match self {
            Route::Object => "/d/…",
            Route::Descriptor => "/dd/…",
            Route::InstallNotify => "/dn/…",
        }
    }
}

/// A plain-text answer (a refusal, or a short report reply).
fn plain(status: StatusCode, message: impl Into<Bytes>) -> Response<DownloadBody> {
    let mut resp = Response::new(DownloadBody::text(message));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

impl DownloadPlane {
    /// hyper entry point; `wire` is the connection's delivery ledger.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<hyper::body::Incoming>,
        wire: Option<Arc<Wire>>,
    ) -> Result<Response<DownloadBody>, Infallible> {
        let route = Route::of(req.uri().path());
        let resp = match route {
            Route::Object => self.respond(&req, wire).await,
            Route::Descriptor => self.descriptor(&req).await,
            Route::InstallNotify => {
                // The one route that reads (and so consumes) its request's body.
                let method = req.method().clone();
                let resp = self.install_notify(req).await;
                return Ok(self.finish(resp, route, &method, None));
            }
        };
        Ok(self.finish(resp, route, req.method(), req.headers().get(header::RANGE)))
    }

    /// What every answer gets on its way out: no body for HEAD, its status counted, and the
    /// access log line when enabled.
    fn finish(
        &self,
        mut resp: Response<DownloadBody>,
        route: Route,
        method: &Method,
        range: Option<&HeaderValue>,
    ) -> Response<DownloadBody> {
        if method == Method::HEAD {
            // A refusal's text is for GET: HTTP/2 does not strip a HEAD response's body the
            // way HTTP/1.1 does, and a client sees DATA on a HEAD as a protocol error.
            *resp.body_mut() = DownloadBody::empty();
        }
        self.metrics.count_status(resp.status().as_u16());
        if self.access_log {
            tracing::info!(
                target: "access",
                %method,
                // Only the path prefix: the token is a bearer credential and stays out of logs.
                path = route.logged(),
                range = ?range,
                status = resp.status().as_u16(),
                "download"
            );
        }
        resp
    }

    async fn respond<B>(
        &self,
        req: &Request<B>,
        wire: Option<Arc<Wire>>,
    ) -> Response<DownloadBody> {
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                return not_allowed(
                    "GET, HEAD",
                    "only GET and HEAD are allowed on download URLs\n",
                )
            }
        };
        let Some(token) = token_from_path(req.uri().path()) else {
            return plain(
                StatusCode::NOT_FOUND,
                "not a download URL; expected /d/{token}\n",
            );
        };
        let Found {
            ticket,
            token_expired,
            now,
        } = match self.find(token).await {
            Ok(f) => f,
            Err(r) => return r,
        };
        let obj = &ticket.object;
        let target = plan::Target {
            size: obj.size,
            etag: &obj.etag,
            last_modified: obj.last_modified,
        };
        let (decision, planned) = match plan::plan(req.headers(), head, &target, self.max_ranges) {
            Plan::Send { decision, ranges } => (decision, ranges),
            // No body (304, 416, HEAD): the ticket must still be usable; nothing is counted.
            no_body => {
                if let Err(r) = self.tickets.check(&ticket, token_expired, now) {
                    return refused(r);
                }
                return match no_body {
                    Plan::NotModified => {
                        let mut r = Response::new(DownloadBody::empty());
                        *r.status_mut() = StatusCode::NOT_MODIFIED;
                        r.headers_mut().insert(header::ETAG, obj.etag.clone());
                        r
                    }
                    Plan::Head(decision) => self.build(obj, decision, true),
                    _ => self.build(obj, RangeDecision::Unsatisfiable, true),
                };
            }
        };
        let guard = match self
            .tickets
            .admit(&ticket, planned.covered(), token_expired, now)
        {
            Ok(g) => g,
            Err(r) => return refused(r),
        };
        let mut resp = self.build(obj, decision, false);
        let tracker = if obj.size == 0 {
            // Nothing to send: an empty object is delivered by any successful GET.
            let mut guard = guard;
            let done = guard.credit(0, 0);
            let mut t = Tracker::new(guard, None, None, self.settles.clone());
            t.watch(done);
            t
        } else {
            let begin = guard.begin(&planned);
            Tracker::new(guard, begin, wire, self.settles.clone())
        };
        let body = std::mem::replace(resp.body_mut(), DownloadBody::empty());
        *resp.body_mut() = body.tracked(tracker);
        // A response on a ticket that records its deliveries: the head waits with the first
        // frame until the intent is recorded (see `produce_first_frame`), so a failure to
        // record (a full disk, a locked database) is a clean 503, never a cut 200. Shared
        // links record lazily and have nothing to wait for.
        if !ticket.record.is_shared() {
            if let Err(e) = resp.body_mut().produce_first_frame().await {
                tracing::warn!(error = %e, "download refused: its delivery could not be recorded");
                let mut r = plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily unable to record this download; retry later\n",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
        }
        resp
    }

    /// The ticket a URL token names: verified without storage (403 when forged), then found
    /// in the cache or SQLite (410 when unknown). An expired token is still found, since a
    /// started ticket stays usable for its grace period: the ticket decides.
    async fn find(&self, token: &str) -> Result<Found, Response<DownloadBody>> {
        let now = now_unix();
        let (claims, token_expired) = match self.keyring.verify(token, now) {
            Ok(c) => (c, false),
            Err(TokenError::Expired(c)) => (c, true),
            Err(_) => return Err(plain(StatusCode::FORBIDDEN, "invalid download URL\n")),
        };
        match self.tickets.lookup(claims.ticket).await {
            Ok(Some(ticket)) => Ok(Found {
                ticket,
                token_expired,
                now,
            }),
            Ok(None) => Err(plain(
                StatusCode::GONE,
                "this download is no longer available\n",
            )),
            Err(e) => {
                tracing::error!(error = %e, "ticket lookup failed");
                Err(plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily unable to serve this download; retry later\n",
                ))
            }
        }
    }

    fn build(
        &self,
        obj: &Arc<ServedObject>,
        decision: RangeDecision,
        head: bool,
    ) -> Response<DownloadBody> {
        let (status, body, length, content_type, content_range) = match decision {
            RangeDecision::Full => (
                StatusCode::OK,
                self.span(obj, 0, obj.size, head),
                obj.content_length.clone(),
                OCTET_STREAM.clone(),
                None,
            ),
            RangeDecision::Single(r) => (
                StatusCode::PARTIAL_CONTENT,
                self.span(obj, r.start, r.end + 1, head),
                HeaderValue::from(r.len()),
                OCTET_STREAM.clone(),
                Some(content_range(r, obj.size)),
            ),
            RangeDecision::Multi(ranges) => {
                let (body, length, content_type) = self.multipart(obj, &ranges, head);
                (
                    StatusCode::PARTIAL_CONTENT,
                    body,
                    HeaderValue::from(length),
                    content_type,
                    None,
                )
            }
            RangeDecision::Unsatisfiable => {
                let mut r = plain(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "none of the requested ranges overlap the object\n",
                );
                let value = format!("bytes */{}", obj.size);
                if let Ok(v) = HeaderValue::from_str(&value) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                r.headers_mut().insert(header::ACCEPT_RANGES, BYTES.clone());
                return r;
            }
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.reserve(12);
        h.insert(header::CONTENT_TYPE, content_type);
        h.insert(header::CONTENT_LENGTH, length);
        if let Some(cr) = content_range {
            h.insert(header::CONTENT_RANGE, cr);
        }
        h.insert(header::ACCEPT_RANGES, BYTES.clone());
        h.insert(header::ETAG, obj.etag.clone());
        h.insert(header::LAST_MODIFIED, obj.last_modified_header.clone());
        h.insert(REPR_DIGEST, obj.repr_digest.clone());
        h.insert(BLAKE3_HEADER, obj.blake3_header.clone());
        h.insert(header::CONTENT_DISPOSITION, obj.content_disposition.clone());
        h.insert(header::CACHE_CONTROL, CACHE_CONTROL.clone());
        resp
    }

    fn span(&self, obj: &Arc<ServedObject>, start: u64, end: u64, head: bool) -> DownloadBody {
        if head || start >= end {
            return DownloadBody::empty();
        }
        DownloadBody::span(
            obj.clone(),
            self.cache.clone(),
            self.metrics.clone(),
            start,
            end,
        )
    }

    /// Builds a `multipart/byteranges` body (RFC 9110 §14.6) and its exact length.
    fn multipart(
        &self,
        obj: &Arc<ServedObject>,
        ranges: &[ByteRange],
        head: bool,
    ) -> (DownloadBody, u64, HeaderValue) {
        let boundary = format!("{:024x}", rand::random::<u128>() >> 32);
        let mut segments = Vec::with_capacity(ranges.len() * 2 + 1);
        let mut length = 0u64;
        for r in ranges {
            let mut part = BytesMut::with_capacity(128);
            part.put_slice(b"\r\n--");
            part.put_slice(boundary.as_bytes());
            part.put_slice(b"\r\nContent-Type: application/octet-stream\r\nContent-Range: ");
            part.put_slice(format!("bytes {}-{}/{}", r.start, r.end, obj.size).as_bytes());
            part.put_slice(b"\r\n\r\n");
            length += part.len() as u64 + r.len();
            segments.push(Segment::Literal(part.freeze()));
            segments.push(Segment::Span {
                pos: r.start,
                end: r.end + 1,
            });
        }
        let closing = Bytes::from(format!("\r\n--{boundary}--\r\n"));
        length += closing.len() as u64;
        segments.push(Segment::Literal(closing));
        let content_type =
            HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}"))
                .unwrap_or_else(|_| OCTET_STREAM.clone());
        let body = if head {
            DownloadBody::empty()
        } else {
            DownloadBody::segments(
                obj.clone(),
                self.cache.clone(),
                self.metrics.clone(),
                segments,
            )
        };
        (body, length, content_type)
    }
}

/// A verified token's ticket.
struct Found {
    ticket: Arc<super::tickets::LiveTicket>,
    token_expired: bool,
    now: u64,
}

/// 405 with the methods the route takes.
fn not_allowed(allow: &'static str, message: &'static str) -> Response<DownloadBody> {
    let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, message);
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn refused(r: Refusal) -> Response<DownloadBody> {
    match r {
        Refusal::Gone(why) => plain(StatusCode::GONE, format!("{why}\n")),
        Refusal::TooManyConnections => {
            let mut resp = plain(
                StatusCode::TOO_MANY_REQUESTS,
                "too many concurrent requests on this download URL\n",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            resp
        }
        Refusal::OverBudget => plain(
            StatusCode::FORBIDDEN,
            "this download URL's byte budget is spent\n",
        ),
    }
}

fn content_range(r: ByteRange, size: u64) -> HeaderValue {
    let value = format!("bytes {}-{}/{}", r.start, r.end, size);
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("bytes */0"))
}

#[cfg(test)]
mod tests {
    use super::token_from_path;

    #[test]
    fn token_paths() {
        assert_eq!(token_from_path("/d/abc"), Some("abc"));
        assert_eq!(token_from_path("/d/abc/fw.bin"), Some("abc"));
        assert_eq!(token_from_path("/d/"), None);
        assert_eq!(token_from_path("/x/abc"), None);
    }
}
