//! The streamed response body for a download: a sequence of literal pieces (multipart part
//! headers, error text) and spans of the object, produced chunk by chunk from the
//! [`ChunkCache`].
//!
//! Backpressure is hyper's: a frame is produced only when hyper asks for one, which it does
//! only when the connection can take more, so a slow reader holds at most one chunk per
//! response in memory. Cache hits are answered synchronously; a miss parks a blocking read and
//! resumes when it lands.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::task::JoinHandle;

use super::delivery::Tracker;
use crate::ads::cache::ChunkCache;
use crate::ads::metrics::Metrics;
use crate::ads::object::ServedObject;

/// One piece of a response body.
#[derive(Debug)]
pub enum Segment {
    Literal(Bytes),
    /// Object bytes `pos..end` (end exclusive).
    Span {
        pos: u64,
        end: u64,
    },
}

impl Segment {
    fn remaining(&self) -> u64 {
        match self {
            Segment::Literal(b) => b.len() as u64,
            Segment::Span { pos, end } => end - pos,
        }
    }
}

/// Source of object bytes for span segments.
struct Source {
    object: Arc<ServedObject>,
    cache: ChunkCache,
    metrics: Arc<Metrics>,
}

/// A download response body. See the module docs.
pub struct DownloadBody {
    current: Option<Segment>,
    /// Further segments (multipart only; `None` keeps single-range responses allocation-free).
    rest: Option<std::vec::IntoIter<Segment>>,
    source: Option<Source>,
    pending: Option<JoinHandle<std::io::Result<Bytes>>>,
    remaining: u64,
    tracker: Option<Box<Tracker>>,
    /// A frame produced ahead by [`DownloadBody::produce_first_frame`], handed out first.
    primed: Option<Frame<Bytes>>,
}

impl DownloadBody {
    /// An empty body (HEAD, 304, 416 ...).
    pub fn empty() -> Self {
        Self {
            current: None,
            rest: None,
            source: None,
            pending: None,
            remaining: 0,
            tracker: None,
            primed: None,
        }
    }

    /// Attaches the ticket tracker of this response.
    pub fn tracked(mut self, tracker: Tracker) -> Self {
        self.tracker = Some(Box::new(tracker));
        self
    }

    /// A fixed text body (error messages).
    pub fn text(text: impl Into<Bytes>) -> Self {
        let b: Bytes = text.into();
        Self {
            remaining: b.len() as u64,
            current: Some(Segment::Literal(b)),
            ..Self::empty()
        }
    }

    /// Object bytes `start..end` (end exclusive).
    pub fn span(
        object: Arc<ServedObject>,
        cache: ChunkCache,
        metrics: Arc<Metrics>,
        start: u64,
        end: u64,
    ) -> Self {
        Self {
            current: Some(Segment::Span { pos: start, end }),
            rest: None,
            source: Some(Source {
                object,
                cache,
                metrics,
            }),
            pending: None,
            remaining: end - start,
            tracker: None,
            primed: None,
        }
    }

    /// A sequence of segments (multipart/byteranges).
    pub fn segments(
        object: Arc<ServedObject>,
        cache: ChunkCache,
        metrics: Arc<Metrics>,
        segments: Vec<Segment>,
    ) -> Self {
        let remaining = segments.iter().map(Segment::remaining).sum();
        let mut iter = segments.into_iter();
        Self {
            current: iter.next(),
            rest: Some(iter),
            source: Some(Source {
                object,
                cache,
                metrics,
            }),
            pending: None,
            remaining,
            tracker: None,
            primed: None,
        }
    }

    /// Produces the first frame now, inside the service future, and keeps it to hand out
    /// first. For a response that is one frame, what that frame waits for (its intent being
    /// durable) then holds back the response head too: hyper sends head and body in one write
    /// once the intent is recorded, instead of flushing the head alone and waking the device
    /// twice. And a failure to record can still become a clean 503, where a sent 200 could
    /// only be cut off. `Err` is that failure; the body is spent then.
    pub async fn produce_first_frame(&mut self) -> std::io::Result<()> {
        let frame =
            std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut *self), cx)).await;
        match frame {
            Some(Err(e)) => Err(e),
            Some(Ok(f)) => {
                self.primed = Some(f);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn advance(&mut self) {
        self.current = self.rest.as_mut().and_then(Iterator::next);
    }

    /// Emits the part of `chunk` (chunk number `index`) that falls in the current span.
    fn emit(&mut self, chunk: Bytes, index: u64) -> Option<Result<Frame<Bytes>, std::io::Error>> {
        let Some(Segment::Span { pos, end }) = self.current.as_mut() else {
            return None;
        };
        let src = self.source.as_ref()?;
        let chunk_size = src.cache.chunk_size();
        let chunk_start = index * chunk_size;
        let offset = (*pos - chunk_start) as usize;
        if offset >= chunk.len() {
            return Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "object shorter than recorded",
            )));
        }
        let take = (chunk.len() - offset).min((*end - *pos) as usize);
        let piece = chunk.slice(offset..offset + take);
        let piece_start = *pos;
        *pos += take as u64;
        self.remaining -= take as u64;
        src.metrics
            .bytes_sent
            .fetch_add(take as u64, Ordering::Relaxed);
        let done = *pos >= *end;
        if let Some(t) = self.tracker.as_mut() {
            t.handed(piece_start, piece_start + take as u64);
        }
        if done {
            self.advance();
        }
        Some(Ok(Frame::data(piece)))
    }
}

impl http_body::Body for DownloadBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.primed.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(t) = this.tracker.as_mut() {
            if let Err(e) = std::task::ready!(t.poll_begin(cx)) {
                return Poll::Ready(Some(Err(e)));
            }
            // What the device has acknowledged of earlier frames counts now.
            t.confirm();
        }
        loop {
            if let Some(handle) = this.pending.as_mut() {
                let joined = match Pin::new(handle).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(j) => j,
                };
                this.pending = None;
                let chunk = match joined {
                    Ok(Ok(chunk)) => chunk,
                    Ok(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Err(_) => {
                        return Poll::Ready(Some(Err(std::io::Error::other(
                            "chunk read task failed",
                        ))))
                    }
                };
                let index = match (&this.current, &this.source) {
                    (Some(Segment::Span { pos, .. }), Some(src)) => pos / src.cache.chunk_size(),
                    _ => return Poll::Ready(None),
                };
                return Poll::Ready(this.emit(chunk, index));
            }
            match this.current.take() {
                None => return Poll::Ready(None),
                Some(Segment::Literal(b)) => {
                    this.remaining -= b.len() as u64;
                    this.advance();
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Some(Segment::Span { pos, end }) if pos >= end => this.advance(),
                Some(span @ Segment::Span { pos, .. }) => {
                    this.current = Some(span);
                    let Some(src) = this.source.as_ref() else {
                        return Poll::Ready(None);
                    };
                    let index = pos / src.cache.chunk_size();
                    let key = (src.object.blake3, index);
                    if let Some(chunk) = src.cache.get(&key) {
                        return Poll::Ready(this.emit(chunk, index));
                    }
                    let cache = src.cache.clone();
                    let object = src.object.clone();
                    this.pending = Some(tokio::task::spawn_blocking(move || {
                        cache.load_blocking(key, &object.path, object.size)
                    }));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.current.is_none() && self.pending.is_none() && self.primed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let primed = self
            .primed
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |b| b.len() as u64);
        SizeHint::with_exact(self.remaining + primed)
    }
}

use std::future::Future;
