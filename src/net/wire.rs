//! What a connection's peer has really received: the plaintext position up to which the
//! device's TCP stack has acknowledged our bytes.
//!
//! A one-time download counts as delivered only when the device has the bytes, not when they
//! reached our kernel: socket buffers hold megabytes, and a device whose link drops near the
//! end would otherwise find its URL spent. A [`Wire`] is kept per download connection by the
//! layer that turns plaintext into bytes on the socket (the TLS stream, or the plain-HTTP
//! wrapper). It records
//!
//! - how the plaintext maps onto the socket's byte stream: TLS seals plaintext into records,
//!   and a device can use a record only once it has all of it, so plaintext counts as received
//!   record by record;
//! - the writer's flushes: hyper flushes its buffers after taking a body frame, so the first
//!   flush after a frame was handed out marks a socket position at or past that frame's end;
//! - a duplicate of the socket's descriptor, to ask the kernel (`TCP_INFO`'s
//!   `tcpi_bytes_acked`) how much the peer has acknowledged, even after the connection task
//!   has ended and while the kernel still drains what it holds.
//!
//! Where the kernel cannot say (not Linux, or the descriptor could not be duplicated), the
//! acknowledged position falls back to what was flushed into the socket.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::tcp_info;

/// Plaintext bytes per record for a transport with no records (plain HTTP).
const NO_RECORDS: u64 = u64::MAX;
/// Flushes remembered; a mark older than that uses the oldest one remembered (still a bound).
const FLUSH_HISTORY: usize = 16;

/// A run of plaintext written as equal records: `plain_len` bytes from `plain_start`, sealed
/// into records of `record` plaintext bytes (the last may be shorter), each `overhead` bytes
/// longer on the socket, starting at socket offset `cipher_start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    plain_start: u64,
    cipher_start: u64,
    plain_len: u64,
    record: u64,
    overhead: u64,
}

impl Run {
    fn records(&self) -> u64 {
        if self.record == NO_RECORDS {
            1
        } else {
            self.plain_len.div_ceil(self.record)
        }
    }

    fn cipher_end(&self) -> u64 {
        self.cipher_start + self.plain_len + self.records() * self.overhead
    }

    /// Plaintext of this run the peer can use once `acked` socket bytes are acknowledged.
    fn usable(&self, acked: u64) -> u64 {
        if acked >= self.cipher_end() {
            return self.plain_len;
        }
        let into = acked.saturating_sub(self.cipher_start);
        if self.record == NO_RECORDS {
            return into.min(self.plain_len);
        }
        let whole = into / (self.record + self.overhead);
        (whole * self.record).min(self.plain_len)
    }

    /// Appends `next` to this run when it continues it exactly (same record shape, this run
    /// ending on a whole record).
    fn absorb(&mut self, next: &Run) -> bool {
        let contiguous = next.plain_start == self.plain_start + self.plain_len
            && next.cipher_start == self.cipher_end();
        let same_shape = next.record == self.record && next.overhead == self.overhead;
        let ends_whole = self.record == NO_RECORDS || self.plain_len % self.record == 0;
        if contiguous && same_shape && ends_whole {
            self.plain_len += next.plain_len;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Plaintext taken by the writer so far.
    plain_written: u64,
    /// Socket bytes produced so far (handshake, records, alerts), in socket order.
    cipher_written: u64,
    /// Completed flushes of the writer.
    flushes: u64,
    /// `plain_written` at the last completed flush: all of it is in the kernel.
    plain_at_flush: u64,
    /// `plain_written` at each of the last [`FLUSH_HISTORY`] flushes (flush `n` at index
    /// `n % FLUSH_HISTORY`), so a mark finds the *first* flush after it, not a later one that
    /// also carried what was written since.
    history: [u64; FLUSH_HISTORY],
    /// Runs not yet wholly acknowledged, oldest first.
    runs: VecDeque<Run>,
    /// The acknowledged plaintext position last computed (never decreases).
    acked_plain: u64,
}

/// A reading of what the peer has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acked {
    /// Plaintext position up to which the peer has every byte (whole records).
    pub plain: u64,
    /// More may still be acknowledged (the connection is open, or we cannot tell).
    pub open: bool,
}

/// One connection's delivery ledger (see the module docs).
#[derive(Debug)]
pub struct Wire {
    state: Mutex<State>,
    fd: Option<OwnedFd>,
    closed: AtomicBool,
}

impl Wire {
    /// A ledger for a connection whose socket is `fd` (a duplicate it owns), or `None` when
    /// the kernel cannot be asked.
    pub fn new(fd: Option<OwnedFd>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            fd,
            closed: AtomicBool::new(false),
        }
    }

    /// A ledger for `socket`, holding a duplicate of its descriptor.
    pub fn for_socket(socket: &impl AsFd) -> Self {
        let fd = socket.as_fd().try_clone_to_owned().ok();
        Self::new(fd)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update is a few integer assignments; a poisoned ledger is still consistent
        // enough to read.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Socket bytes that carry no plaintext (handshake messages, alerts).
    pub fn wrote_control(&self, cipher: usize) {
        self.lock().cipher_written += cipher as u64;
    }

    /// `plain` plaintext bytes sealed into `cipher` socket bytes, in records of at most
    /// `record` plaintext bytes (`None`: no records, the bytes go out as they are).
    pub fn wrote(&self, plain: usize, cipher: usize, record: Option<usize>) {
        if plain == 0 {
            return self.wrote_control(cipher);
        }
        let (plain, cipher) = (plain as u64, cipher as u64);
        let mut s = self.lock();
        let mut run = Run {
            plain_start: s.plain_written,
            cipher_start: s.cipher_written,
            plain_len: plain,
            record: record.map_or(NO_RECORDS, |r| r as u64),
            overhead: 0,
        };
        if run.record != NO_RECORDS {
            let records = run.records();
            let extra = cipher.saturating_sub(plain);
            if extra % records == 0 {
                run.overhead = extra / records;
            } else {
                // Records of unequal overhead: count the run as one record, usable only whole.
                run.record = plain;
                run.overhead = extra;
            }
        }
        s.plain_written += plain;
        s.cipher_written += cipher;
        let merged = s.runs.back_mut().is_some_and(|last| last.absorb(&run));
        if !merged {
            s.runs.push_back(run);
        }
    }

    /// The writer completed a flush: everything written so far is in the kernel.
    pub fn flushed(&self) {
        let mut s = self.lock();
        s.flushes += 1;
        s.plain_at_flush = s.plain_written;
        let slot = (s.flushes % FLUSH_HISTORY as u64) as usize;
        s.history[slot] = s.plain_written;
    }

    /// A mark to pass to [`Wire::flushed_since`] later.
    pub fn mark(&self) -> u64 {
        self.lock().flushes
    }

    /// If a flush completed after `mark` was taken, the plaintext position the first such
    /// flush reached: every byte handed to the writer before the mark lies below it.
    pub fn flushed_since(&self, mark: u64) -> Option<u64> {
        let s = self.lock();
        if s.flushes <= mark {
            return None;
        }
        let oldest_kept = s.flushes.saturating_sub(FLUSH_HISTORY as u64 - 1).max(1);
        let first = (mark + 1).max(oldest_kept);
        Some(s.history[(first % FLUSH_HISTORY as u64) as usize])
    }

    /// The connection task has ended: nothing more will be written. What the kernel still
    /// holds keeps draining (and its FIN follows it); acknowledgements can still be read.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(fd) = &self.fd {
            // Our duplicate keeps the socket open after the connection's own descriptor is
            // closed: send the FIN that closing it would have sent.
            let _ = socket2::SockRef::from(fd).shutdown(std::net::Shutdown::Write);
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Asks the kernel what the peer has acknowledged and maps it onto plaintext.
    pub fn acked(&self) -> Acked {
        let info = self
            .fd
            .as_ref()
            .and_then(|fd| tcp_info::read(fd.as_fd()).ok());
        let mut s = self.lock();
        let Some(info) = info else {
            // No way to ask: what was flushed into the socket is the best we know.
            let flushed = s.plain_at_flush;
            s.acked_plain = s.acked_plain.max(flushed);
            return Acked {
                plain: s.acked_plain,
                open: !self.is_closed(),
            };
        };
        // A FIN is acknowledged as one more byte than we wrote.
        let acked = info.bytes_acked.min(s.cipher_written);
        let mut plain = s.acked_plain;
        while let Some(run) = s.runs.front().copied() {
            let usable = run.usable(acked);
            plain = plain.max(run.plain_start + usable);
            if usable == run.plain_len {
                s.runs.pop_front();
            } else {
                break;
            }
        }
        s.acked_plain = plain;
        Acked {
            plain,
            open: info.open,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(plain_start: u64, cipher_start: u64, plain_len: u64, record: u64, overhead: u64) -> Run {
        Run {
            plain_start,
            cipher_start,
            plain_len,
            record,
            overhead,
        }
    }

    #[test]
    fn a_record_counts_only_when_all_of_it_is_acknowledged() {
        // Three records: 100, 100 and 50 plaintext bytes, 22 bytes of overhead each.
        let r = run(0, 10, 250, 100, 22);
        assert_eq!(r.cipher_end(), 10 + 250 + 3 * 22);
        assert_eq!(r.usable(10), 0);
        assert_eq!(r.usable(10 + 121), 0);
        assert_eq!(r.usable(10 + 122), 100);
        assert_eq!(r.usable(10 + 243), 100);
        assert_eq!(r.usable(10 + 244), 200);
        assert_eq!(r.usable(r.cipher_end() - 1), 200);
        assert_eq!(r.usable(r.cipher_end()), 250);
        // Without records, every acknowledged byte is usable.
        let p = run(0, 0, 250, NO_RECORDS, 0);
        assert_eq!(p.usable(137), 137);
        assert_eq!(p.usable(1000), 250);
    }

    #[test]
    fn runs_merge_only_where_records_continue() {
        let mut a = run(0, 0, 200, 100, 22);
        assert!(a.absorb(&run(200, 244, 50, 100, 22)));
        assert_eq!(a.plain_len, 250);
        // Now ending on a short record: the next run starts a record of its own.
        assert!(!a.absorb(&run(250, a.cipher_end(), 100, 100, 22)));
        // Not contiguous on the socket (a control record in between).
        let mut b = run(0, 0, 100, 100, 22);
        assert!(!b.absorb(&run(100, 130, 100, 100, 22)));
    }

    #[test]
    fn flush_marks_bound_what_was_handed_over() {
        let w = Wire::new(None);
        let mark = w.mark();
        w.wrote(1000, 1000, None);
        assert_eq!(w.flushed_since(mark), None);
        w.flushed();
        assert_eq!(w.flushed_since(mark), Some(1000));
        // A later flush (a GOAWAY, the next response) does not move an earlier mark's bound.
        w.wrote(17, 17, None);
        w.flushed();
        assert_eq!(w.flushed_since(mark), Some(1000));
        assert_eq!(w.flushed_since(mark + 1), Some(1017));
        // Past the history, the oldest flush kept is the bound.
        for _ in 0..40 {
            w.wrote(1, 1, None);
            w.flushed();
        }
        assert_eq!(w.flushed_since(mark), Some(1017 + 40 - 15));
        // Without a descriptor, acknowledged means flushed.
        w.wrote(500, 500, None);
        assert_eq!(w.acked().plain, 1057);
        w.flushed();
        assert_eq!(w.acked().plain, 1557);
    }

    #[test]
    fn unequal_records_count_as_one() {
        let w = Wire::new(None);
        w.wrote(300, 300 + 50, Some(100));
        let s = w.lock();
        assert_eq!(s.runs[0].record, 300);
        assert_eq!(s.runs[0].overhead, 50);
    }

    #[test]
    fn acknowledged_bytes_map_onto_records_of_a_real_socket() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let wire = Wire::for_socket(&server);
        // A 5-byte "handshake", then two 1000-byte records of 900 plaintext bytes each.
        server.write_all(&[0u8; 5]).unwrap();
        wire.wrote_control(5);
        server.write_all(&[1u8; 1000]).unwrap();
        wire.wrote(900, 1000, Some(900));
        let mut got = [0u8; 1005];
        client.read_exact(&mut got).unwrap();
        server.write_all(&[2u8; 1000]).unwrap();
        wire.wrote(900, 1000, Some(900));
        // The second record has not been read: the client's kernel still acknowledges it.
        let mut acked = wire.acked();
        for _ in 0..200 {
            if acked.plain == 1800 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
            acked = wire.acked();
        }
        assert_eq!(acked.plain, 1800);
        assert!(acked.open);
    }
}
