//! Server-side TLS streams over rustls's *unbuffered* API, with buffers we own.
//!
//! Why not tokio-rustls: its stream wraps rustls's buffered connection, which keeps a 4 KiB
//! record deframer (and its plaintext and ciphertext queues) allocated for the connection's
//! whole life. An edge node holds tens of thousands of quiet device connections; for a parked
//! one (see `parking`) that deframer was the largest thing it cost. Here the ciphertext and
//! plaintext buffers belong to [`TlsStream`], are reused while the connection is busy (this
//! layer allocates nothing per request; rustls still allocates each decrypted record), and [`TlsStream::release_idle_buffers`] frees them
//! when it goes quiet: a parked connection keeps only rustls's session state and keys.
//!
//! The stream implements tokio's `AsyncRead`/`AsyncWrite`, so hyper serves on it unchanged.
//! Small vectored writes (a response head and a small body) are gathered into one TLS record;
//! large ones are encrypted straight from the caller's slices. About [`MAX_WRITE`] bytes are
//! taken per write and whatever is still unsent is flushed before more is taken, so what a slow
//! reader leaves with us is bounded.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::wire::Wire;

/// Plaintext taken per write call (four full records; up to one more to avoid a short tail).
pub const MAX_WRITE: usize = 64 * 1024;
/// Vectored writes at most this long (one full record) are gathered into a single record.
const GATHER_LIMIT: usize = 16 * 1024;
/// What the incoming buffer starts at: a request head, or the first part of a record.
const INITIAL_INCOMING: usize = 4096;
/// The incoming buffer's ceiling: a handshake message rustls accepts (64 KiB) joined from
/// records, plus one more record being read.
const MAX_INCOMING: usize = 0xffff + 2 * (16 * 1024 + 2048 + 5);
/// Per-record bytes beyond the plaintext, an upper bound for every suite we offer (TLS 1.3:
/// header 5, content type 1, tag 16; TLS 1.2 AES-GCM: header 5, explicit nonce 8, tag 16).
const RECORD_OVERHEAD: usize = 32;
/// rustls fragments application data into records of this much plaintext.
const MAX_FRAGMENT: usize = 16 * 1024;

/// Accepts a TLS connection on `io`: runs the handshake to completion and returns the stream
/// ready for application data.
///
/// `wire`, when given, is told how every byte sent maps onto plaintext (see [`Wire`]), from
/// the first handshake byte on, so that it can say what the peer has acknowledged.
pub async fn accept<IO>(
    config: Arc<ServerConfig>,
    io: IO,
    wire: Option<Arc<Wire>>,
) -> io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
    let mut stream = TlsStream {
        io,
        conn,
        incoming: Incoming::default(),
        outgoing: Outgoing {
            wire,
            ..Outgoing::default()
        },
        plaintext: Plaintext::default(),
        gather: Vec::new(),
        peer_closed: false,
        close_sent: false,
    };
    poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

/// A server TLS connection on `IO` (see the module docs).
pub struct TlsStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    incoming: Incoming,
    outgoing: Outgoing,
    plaintext: Plaintext,
    /// Where small vectored writes are gathered into one record.
    gather: Vec<u8>,
    /// The peer's close_notify (or a clean EOF) was seen: reads return end-of-stream.
    peer_closed: bool,
    close_sent: bool,
}

impl<IO> TlsStream<IO> {
    /// The transport underneath.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The protocol chosen by ALPN, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// True when a read would return something without the socket becoming readable again:
    /// decrypted bytes, a whole record not yet processed, or the end of the stream. (Part of a
    /// record is not enough: the rest has to come from the socket.)
    pub fn has_buffered_input(&self) -> bool {
        !self.plaintext.is_empty() || self.incoming.holds_a_record() || self.peer_closed
    }

    /// Frees every buffer that holds nothing: called when the connection goes quiet, so that
    /// an idle connection costs only the TLS session. The next read or write allocates again.
    pub fn release_idle_buffers(&mut self) {
        if self.incoming.len == 0 {
            self.incoming.buf = Vec::new();
        }
        if self.outgoing.is_empty() {
            self.outgoing.release();
        }
        if self.plaintext.is_empty() {
            self.plaintext = Plaintext::default();
        }
        self.gather = Vec::new();
    }

    /// Bytes of buffer this stream holds (not counting rustls's own state).
    pub fn buffered_capacity(&self) -> usize {
        self.incoming.buf.capacity()
            + self.outgoing.buf.capacity()
            + self.plaintext.buf.capacity()
            + self.gather.capacity()
    }
}

/// What a call into rustls is for; decides where the processing loop stops.
enum Intent<'a, 'b> {
    Handshake,
    Read(&'a mut ReadBuf<'b>),
    Write(&'a [IoSlice<'a>]),
    CloseNotify,
}

/// Where the processing loop stopped.
enum Outcome {
    /// Nothing more can happen without bytes from the peer.
    NeedRead,
    /// Application data was copied into the reader's buffer.
    Delivered,
    /// This much of the writer's data was encrypted (or, for a close_notify, queued).
    Wrote(usize),
    /// The peer closed (close_notify), or both sides did.
    Closed,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    /// Feeds the unprocessed ciphertext to rustls and handles what it asks for (records to
    /// encode and transmit, decrypted data to keep), until `intent` can be served or more
    /// bytes from the peer are needed.
    fn poll_process(
        &mut self,
        cx: &mut Context<'_>,
        mut intent: Intent<'_, '_>,
    ) -> Poll<io::Result<Outcome>> {
        loop {
            let UnbufferedStatus { mut discard, state } = self
                .conn
                .process_tls_records(&mut self.incoming.buf[..self.incoming.len]);
            // Every exit goes through `discard` below: rustls requires the processed bytes to
            // be removed before it is called again. `Err`: the peer broke the protocol.
            let step: Result<Option<Poll<io::Result<Outcome>>>, rustls::Error> = match state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    let mut delivered = false;
                    let mut failed = None;
                    while let Some(record) = records.next_record() {
                        let record = match record {
                            Ok(r) => r,
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        };
                        discard += record.discard;
                        let mut payload = record.payload;
                        if let Intent::Read(buf) = &mut intent {
                            if self.plaintext.is_empty() {
                                let n = payload.len().min(buf.remaining());
                                buf.put_slice(&payload[..n]);
                                payload = &payload[n..];
                                delivered |= n > 0;
                            }
                        }
                        self.plaintext.push(payload);
                    }
                    match failed {
                        Some(e) => Err(e),
                        None => Ok(delivered.then_some(Poll::Ready(Ok(Outcome::Delivered)))),
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    self.outgoing.encode(&mut encode);
                    Ok(None)
                }
                Ok(ConnectionState::TransmitTlsData(mut transmit)) => {
                    Ok(match self.outgoing.poll_flush(&mut self.io, cx) {
                        Poll::Ready(Ok(())) => {
                            transmit.done();
                            None
                        }
                        Poll::Ready(Err(e)) => Some(Poll::Ready(Err(e))),
                        // The socket will not take more now (its waker is registered).
                        // rustls only asks for this once no complete record is left, so a
                        // reader goes on reading meanwhile: waiting for the peer to drain our
                        // records before reading its own could deadlock a peer that writes
                        // before it reads.
                        Poll::Pending => match (&intent, transmit.may_encrypt_app_data()) {
                            // Application data may follow the records still being sent.
                            (Intent::Write(bufs), Some(mut writer)) => Some(Poll::Ready(
                                encrypt(&mut writer, &mut self.outgoing, &mut self.gather, bufs)
                                    .map(Outcome::Wrote),
                            )),
                            (Intent::Handshake | Intent::Read(_), _) => {
                                Some(Poll::Ready(Ok(Outcome::NeedRead)))
                            }
                            _ => Some(Poll::Pending),
                        },
                    })
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Poll::Ready(match intent {
                    Intent::Handshake | Intent::Read(_) => Ok(Outcome::NeedRead),
                    _ => Err(io::Error::other("TLS handshake not complete")),
                }))),
                Ok(ConnectionState::WriteTraffic(mut writer)) => {
                    Ok(Some(Poll::Ready(match &intent {
                        Intent::Handshake | Intent::Read(_) => Ok(Outcome::NeedRead),
                        Intent::Write(bufs) => {
                            encrypt(&mut writer, &mut self.outgoing, &mut self.gather, bufs)
                                .map(Outcome::Wrote)
                        }
                        Intent::CloseNotify => close_notify(&mut writer, &mut self.outgoing),
                    })))
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(match intent {
                        Intent::Write(_) | Intent::CloseNotify => None,
                        _ => Some(Poll::Ready(Ok(Outcome::Closed))),
                    })
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    Ok(Some(Poll::Ready(Ok(Outcome::Closed))))
                }
                // Early data is never accepted (the config leaves it off); anything newer is
                // not something we know how to serve.
                Ok(_) => Ok(Some(Poll::Ready(Err(io::Error::other(
                    "unexpected TLS connection state",
                ))))),
            };
            self.incoming.discard(discard);
            match step {
                Ok(Some(step)) => return step,
                Ok(None) => {}
                Err(e) => return self.fail(cx, e),
            }
        }
    }

    /// Ends processing with `error`, after a best-effort attempt to tell the peer why (rustls
    /// queues the alert; it goes out if the socket takes it now).
    fn fail(&mut self, cx: &mut Context<'_>, error: rustls::Error) -> Poll<io::Result<Outcome>> {
        let UnbufferedStatus { discard, state } = self
            .conn
            .process_tls_records(&mut self.incoming.buf[..self.incoming.len]);
        if let Ok(ConnectionState::EncodeTlsData(mut alert)) = state {
            self.outgoing.encode(&mut alert);
            let _ = self.outgoing.poll_flush(&mut self.io, cx);
        }
        self.incoming.discard(discard);
        Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)))
    }

    /// Drives the handshake until it is complete. Each wake-up starts again from rustls, so
    /// records waiting to go out are retried whether it was the socket's read or write side
    /// that woke us.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match ready!(self.poll_process(cx, Intent::Handshake))? {
                // Done (possibly with session tickets still going out: the stream's reads and
                // writes finish sending them).
                Outcome::NeedRead if !self.conn.is_handshaking() => return Poll::Ready(Ok(())),
                Outcome::NeedRead => {
                    if ready!(self.incoming.poll_fill(&mut self.io, cx))? == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Outcome::Closed => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Outcome::Delivered | Outcome::Wrote(_) => {}
            }
        }
    }

    fn poll_read_inner(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Nothing can be handed over, so nothing is read: decrypted data waiting here is only
        // ever what came with records already read.
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.plaintext.take_into(buf) || self.peer_closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.poll_process(cx, Intent::Read(buf)))? {
                Outcome::Delivered | Outcome::Closed => return Poll::Ready(Ok(())),
                Outcome::NeedRead => {
                    if ready!(self.incoming.poll_fill(&mut self.io, cx))? == 0 {
                        if self.incoming.len > 0 {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "connection closed inside a TLS record",
                            )));
                        }
                        // No close_notify, but between records: hyper treats it as the
                        // client going away, which is what it is.
                        self.peer_closed = true;
                    }
                }
                Outcome::Wrote(_) => {}
            }
        }
    }

    fn poll_write_inner(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        // What the socket has not taken yet goes first: this bounds what we hold.
        ready!(self.outgoing.poll_flush(&mut self.io, cx))?;
        let written = match ready!(self.poll_process(cx, Intent::Write(bufs)))? {
            Outcome::Wrote(n) => n,
            _ => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        };
        // Start sending now; whatever the socket does not take waits for the next call.
        if let Poll::Ready(Err(e)) = self.outgoing.poll_flush(&mut self.io, cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(written))
    }
}

/// Encrypts up to [`MAX_WRITE`] bytes of `bufs` into `outgoing`; returns how many were taken.
fn encrypt(
    writer: &mut WriteTraffic<'_, ServerConnectionData>,
    outgoing: &mut Outgoing,
    gather: &mut Vec<u8>,
    bufs: &[IoSlice<'_>],
) -> io::Result<usize> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let pieces = bufs.iter().filter(|b| !b.is_empty()).count();
    if pieces > 1 && total <= GATHER_LIMIT {
        gather.clear();
        for b in bufs {
            gather.extend_from_slice(b);
        }
        encrypt_slice(writer, outgoing, gather)?;
        return Ok(total);
    }
    let mut taken = 0;
    for b in bufs {
        // A slice is cut only at a record boundary and never leaves a tail shorter than a
        // record: a tiny record costs a seal and, often, a write of its own.
        if taken + b.len() <= MAX_WRITE + MAX_FRAGMENT {
            encrypt_slice(writer, outgoing, b)?;
            taken += b.len();
            continue;
        }
        let room = (MAX_WRITE.saturating_sub(taken) / MAX_FRAGMENT) * MAX_FRAGMENT;
        let n = if taken == 0 {
            room.max(MAX_FRAGMENT)
        } else {
            room
        };
        if n > 0 {
            encrypt_slice(writer, outgoing, &b[..n])?;
            taken += n;
        }
        break;
    }
    Ok(taken)
}

fn encrypt_slice(
    writer: &mut WriteTraffic<'_, ServerConnectionData>,
    outgoing: &mut Outgoing,
    data: &[u8],
) -> io::Result<()> {
    let mut need = data.len() + (data.len() / MAX_FRAGMENT + 1) * RECORD_OVERHEAD;
    loop {
        match writer.encrypt(data, outgoing.spare(need)) {
            Ok(n) => {
                outgoing.commit(n);
                if let Some(wire) = &outgoing.wire {
                    wire.wrote(data.len(), n, Some(MAX_FRAGMENT));
                }
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size }))
                if required_size > need =>
            {
                need = required_size
            }
            Err(e) => return Err(io::Error::other(e)),
        }
    }
}

fn close_notify(
    writer: &mut WriteTraffic<'_, ServerConnectionData>,
    outgoing: &mut Outgoing,
) -> io::Result<Outcome> {
    let n = writer
        .queue_close_notify(outgoing.spare(64))
        .map_err(io::Error::other)?;
    outgoing.commit_control(n);
    Ok(Outcome::Wrote(0))
}

/// Ciphertext from the peer; `buf[..len]` is not processed yet.
#[derive(Default)]
struct Incoming {
    buf: Vec<u8>,
    len: usize,
}

impl Incoming {
    /// Reads what the transport has into the free space, growing the buffer when it is full
    /// (a record or handshake message larger than what we hold so far). `Ok(0)`: end of stream.
    fn poll_fill<IO: AsyncRead + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.len == self.buf.len() {
            if self.len >= MAX_INCOMING {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS message larger than the limit",
                )));
            }
            let grown = (self.len * 2).clamp(INITIAL_INCOMING, MAX_INCOMING);
            self.buf.resize(grown, 0);
        }
        let mut free = ReadBuf::new(&mut self.buf[self.len..]);
        ready!(Pin::new(io).poll_read(cx, &mut free))?;
        let n = free.filled().len();
        self.len += n;
        Poll::Ready(Ok(n))
    }

    /// A whole TLS record (5-byte header: type, version, length) is buffered.
    fn holds_a_record(&self) -> bool {
        match self.buf.get(..self.len.min(5)) {
            Some(&[_, _, _, hi, lo]) => self.len >= 5 + usize::from(u16::from_be_bytes([hi, lo])),
            _ => false,
        }
    }

    fn discard(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
    }
}

/// Ciphertext for the peer; `buf[start..end]` is not written yet. The vector's length is its
/// usable size (zeroed once when it grows), so reuse costs nothing.
#[derive(Default)]
struct Outgoing {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Told what every committed byte carries (download connections only).
    wire: Option<Arc<Wire>>,
}

impl Outgoing {
    /// Frees the buffer (nothing is pending).
    fn release(&mut self) {
        self.buf = Vec::new();
        self.start = 0;
        self.end = 0;
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// At least `need` writable bytes after what is pending.
    fn spare(&mut self, need: usize) -> &mut [u8] {
        if self.is_empty() {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.end < need {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end < need {
                self.buf.resize(self.end + need, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    fn commit(&mut self, n: usize) {
        self.end += n;
    }

    /// Commits bytes that carry no application data (handshake, alerts).
    fn commit_control(&mut self, n: usize) {
        self.commit(n);
        if let Some(wire) = &self.wire {
            wire.wrote_control(n);
        }
    }

    /// Appends the handshake (or alert) record rustls has ready, with room for it.
    fn encode(&mut self, record: &mut EncodeTlsData<'_, ServerConnectionData>) {
        let mut need = 512;
        loop {
            match record.encode(self.spare(need)) {
                Ok(n) => return self.commit_control(n),
                Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                    need = required_size
                }
                Err(EncodeError::AlreadyEncoded) => return,
            }
        }
    }

    fn poll_flush<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.start < self.end {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.buf[self.start..self.end]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.start += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// Decrypted application data the reader has not taken yet: `buf[start..]`.
#[derive(Default)]
struct Plaintext {
    buf: Vec<u8>,
    start: usize,
}

impl Plaintext {
    fn is_empty(&self) -> bool {
        self.start == self.buf.len()
    }

    fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.is_empty() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Moves what fits into `out`; true when anything was moved.
    fn take_into(&mut self, out: &mut ReadBuf<'_>) -> bool {
        let n = (self.buf.len() - self.start).min(out.remaining());
        if n == 0 {
            return false;
        }
        out.put_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        true
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_read_inner(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_inner(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_inner(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.outgoing.poll_flush(&mut this.io, cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        if let Some(wire) = &this.outgoing.wire {
            wire.flushed();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            // Best effort: a connection already failed or closed has nothing to notify.
            let _ = ready!(this.poll_process(cx, Intent::CloseNotify));
            this.close_sent = true;
        }
        ready!(this.outgoing.poll_flush(&mut this.io, cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_rustls::client::TlsStream as ClientStream;

    fn configs(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert: CertificateDer<'static> = generated.cert.der().clone();
        let key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.key_pair.serialize_der()));
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A connected pair over an in-memory pipe whose buffers hold `pipe` bytes.
    async fn pair(
        versions: &[&'static rustls::SupportedProtocolVersion],
        pipe: usize,
    ) -> (TlsStream<DuplexStream>, ClientStream<DuplexStream>) {
        let (server_config, client_config) = configs(versions);
        let (s, c) = tokio::io::duplex(pipe);
        let connector = tokio_rustls::TlsConnector::from(client_config);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let (server, client) =
            tokio::join!(accept(server_config, s, None), connector.connect(name, c));
        (server.unwrap(), client.unwrap())
    }

    const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

    /// The server reads `request` and answers `response`, while the client does the opposite.
    async fn exchange(
        server: &mut TlsStream<DuplexStream>,
        client: &mut ClientStream<DuplexStream>,
        request: &[u8],
        response: &[u8],
    ) {
        let serve = async {
            let mut got = vec![0; request.len()];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(got, request);
            server.write_all(response).await.unwrap();
            server.flush().await.unwrap();
        };
        let ask = async {
            client.write_all(request).await.unwrap();
            client.flush().await.unwrap();
            let mut got = vec![0; response.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, response);
        };
        tokio::join!(serve, ask);
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_quiet_stream_gives_its_buffers_back_and_serves_again() {
        let (mut server, mut client) = pair(TLS13, 64 * 1024).await;
        exchange(
            &mut server,
            &mut client,
            b"GET / HTTP/1.1\r\n\r\n",
            &pattern(100_000),
        )
        .await;
        assert!(server.buffered_capacity() > 0);
        assert!(!server.has_buffered_input());
        server.release_idle_buffers();
        assert_eq!(server.buffered_capacity(), 0);
        exchange(&mut server, &mut client, &pattern(50_000), &pattern(3)).await;
        assert!(server.buffered_capacity() > 0);

        // Part of a record is no reason to wake: the rest must come from the socket.
        let raw = client.get_mut().0;
        raw.write_all(&[23, 3, 3, 0, 40, 1, 2, 3]).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_millis(50), server.read(&mut buf)).await;
        assert!(read.is_err(), "nothing to read yet");
        assert!(!server.has_buffered_input());
        // The rest of it: it does not decrypt, and that is an error, not a panic.
        client.get_mut().0.write_all(&[0; 37]).await.unwrap();
        let err = server.read(&mut buf).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn an_oversized_record_is_refused_without_buffering_it() {
        let (mut server, mut client) = pair(TLS13, 256 * 1024).await;
        exchange(&mut server, &mut client, b"hi", b"ok").await;
        // A record header announcing 65 535 bytes (TLS allows 16 KiB + 256), then a stream of
        // bytes: the server must fail, not keep buffering what follows.
        let flood = async {
            let raw = client.get_mut().0;
            let _ = raw.write_all(&[23, 3, 3, 0xff, 0xff]).await;
            let _ = raw.write_all(&vec![0u8; 200 * 1024]).await;
        };
        let mut buf = [0u8; 1024];
        let (_, read) = tokio::join!(flood, server.read(&mut buf));
        assert_eq!(read.err().unwrap().kind(), io::ErrorKind::InvalidData);
        assert!(server.buffered_capacity() <= MAX_INCOMING + MAX_WRITE);
    }

    #[test]
    fn a_record_is_whole_only_with_all_its_bytes() {
        let mut incoming = Incoming {
            buf: vec![23, 3, 3, 0, 3, 1, 2, 3, 23],
            len: 4,
        };
        assert!(!incoming.holds_a_record());
        incoming.len = 7;
        assert!(!incoming.holds_a_record());
        incoming.len = 8;
        assert!(incoming.holds_a_record());
        incoming.len = 9;
        assert!(incoming.holds_a_record());
    }

    #[tokio::test]
    async fn records_split_across_tiny_reads_and_writes_still_arrive_whole() {
        // Seven bytes in flight at a time: every record and handshake message arrives in
        // pieces. Each side runs its whole conversation concurrently with the other, as over a
        // socket (the session tickets we send after the handshake wait for the client to read).
        let (server_config, client_config) = configs(TLS13);
        let (s, c) = tokio::io::duplex(7);
        let (request, response) = (pattern(40_000), pattern(70_000));
        let serve = async {
            let mut server = accept(server_config, s, None).await.unwrap();
            let mut got = vec![0; request.len()];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(got, request);
            server.write_all(&response).await.unwrap();
            server.flush().await.unwrap();
        };
        let ask = async {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let connector = tokio_rustls::TlsConnector::from(client_config);
            let mut client = connector.connect(name, c).await.unwrap();
            client.write_all(&request).await.unwrap();
            client.flush().await.unwrap();
            let mut got = vec![0; response.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, response);
        };
        tokio::join!(serve, ask);
    }

    #[tokio::test]
    async fn tls12_clients_are_served() {
        let (mut server, mut client) = pair(&[&rustls::version::TLS12], 64 * 1024).await;
        exchange(&mut server, &mut client, b"ping", &pattern(20_000)).await;
    }

    #[tokio::test]
    async fn a_client_key_update_is_followed() {
        let (mut server, mut client) = pair(TLS13, 64 * 1024).await;
        exchange(&mut server, &mut client, b"one", b"1").await;
        client.get_mut().1.refresh_traffic_keys().unwrap();
        exchange(&mut server, &mut client, b"two", &pattern(40_000)).await;
        exchange(&mut server, &mut client, b"three", b"3").await;
    }

    #[tokio::test]
    async fn closes_are_clean_in_both_directions() {
        let (mut server, mut client) = pair(TLS13, 64 * 1024).await;
        exchange(&mut server, &mut client, b"bye", b"ok").await;
        // Our close_notify: the client sees a clean end of stream, not a truncation error.
        server.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
        // The client's close_notify: our reads end.
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
        assert!(server.has_buffered_input());
    }

    #[tokio::test]
    async fn plaintext_or_a_hang_up_fails_the_handshake_without_a_panic() {
        let (server_config, _) = configs(TLS13);
        let (s, mut c) = tokio::io::duplex(4096);
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let err = accept(server_config.clone(), s, None).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // The alert rustls queued went out.
        let mut alert = [0u8; 1];
        c.read_exact(&mut alert).await.unwrap();
        assert_eq!(alert[0], 21, "a TLS alert record");

        let (s, c) = tokio::io::duplex(4096);
        drop(c);
        let err = accept(server_config, s, None).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn writes_are_cut_only_at_record_boundaries() {
        let (mut server, mut client) = pair(TLS13, 1 << 20).await;
        let head = pattern(250);
        let body = pattern(128 * 1024);
        let first = server
            .write_vectored(&[IoSlice::new(&head), IoSlice::new(&body)])
            .await
            .unwrap();
        // The head whole, then as many full records of the body as fit in MAX_WRITE.
        assert_eq!(first, 250 + 3 * MAX_FRAGMENT);
        // What is left is taken whole rather than leaving a short tail for later.
        let rest = &body[first - 250..];
        assert_eq!(server.write(rest).await.unwrap(), rest.len());
        server.flush().await.unwrap();
        let mut got = vec![0; head.len() + body.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..250], &head[..]);
        assert_eq!(&got[250..], &body[..]);
    }
}
