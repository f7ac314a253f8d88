//! Ties a response to its ticket: the intent is durable before the first byte leaves, and
//! object bytes count toward the ticket only once the device's TCP stack has acknowledged them.
//!
//! Each frame handed to hyper is remembered with a flush mark of the connection's
//! [`Wire`]. The first flush after the mark puts the frame's end at or below a known
//! plaintext position; once the peer has acknowledged up to there, the frame is credited
//! (partly, record by record, when the acknowledgement stops inside it). A response whose body
//! has ended leaves its unconfirmed frames to a small task that polls the kernel with a
//! growing interval (1 ms to 100 ms, no worker held) until they are acknowledged, the
//! connection is reset, or it has been closed without progress for [`LINGER`]. What is then
//! still unconfirmed was handed over but maybe never received: it becomes *tentative*
//! coverage, exactly as after a crash, so a device that resumes from what it really has can
//! still complete the ticket, and nothing counts as delivered that the device may not hold.
//!
//! Shared links (no callback, several deliveries) and connections without a wire credit
//! frames as hyper takes them: nobody waits on their completion.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::task::{task_tracker::TaskTrackerToken, TaskTracker};

use crate::ads::store::StoreError;
use crate::ads::tickets::RequestGuard;
use crate::net::wire::Wire;

/// A commit's acknowledgement from the ticket writer.
pub type Ack = oneshot::Receiver<Result<(), StoreError>>;

/// How long a closed connection may go without a new acknowledgement before what it still
/// holds is given up as maybe-delivered.
pub const LINGER: Duration = Duration::from_secs(10);
/// The settling task's polling interval starts here and doubles ...
const FIRST_POLL: Duration = Duration::from_millis(1);
/// ... up to this.
const MAX_POLL: Duration = Duration::from_millis(100);

/// Object bytes `start..end` handed to hyper after flush mark `mark`; `target`, once known,
/// is a plaintext position at or past their end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handed {
    start: u64,
    end: u64,
    mark: u64,
    target: Option<u64>,
}

/// What one frame's worth of acknowledgement credits.
#[derive(Debug, PartialEq, Eq)]
enum Confirm {
    /// Nothing yet.
    None,
    /// The first `n` bytes of the frame.
    Part(u64),
    /// All of it.
    Whole,
}

/// How much of a frame of `len` bytes ending at or below plaintext `target` is usable by a
/// peer that has everything below `acked`. Conservative: the frame may end before `target`,
/// never after, so this never credits a byte the peer may lack.
fn confirmed(len: u64, target: u64, acked: u64) -> Confirm {
    if acked >= target {
        return Confirm::Whole;
    }
    let start = target.saturating_sub(len);
    match acked.saturating_sub(start) {
        0 => Confirm::None,
        n => Confirm::Part(n.min(len)),
    }
}

/// See the module docs.
pub struct Tracker {
    /// `None` only after [`Tracker::settle`] took it.
    guard: Option<RequestGuard>,
    begin: Option<Ack>,
    wire: Option<Arc<Wire>>,
    handed: VecDeque<Handed>,
    completions: Vec<Ack>,
    settles: TaskTracker,
    /// Counts this response as unsettled, so a shutdown waits for it (bounded).
    _unsettled: TaskTrackerToken,
    /// This is the settling task's copy: dropped unfinished (the runtime is shutting down),
    /// it gives up at once instead of spawning again.
    settling: bool,
}

impl Tracker {
    /// `begin`: the intent's commit, awaited before the first byte. `wire`: the connection's
    /// ledger; `None` credits frames as hyper takes them.
    /// `settles`: where the settling task runs (drained at shutdown).
    pub fn new(
        guard: RequestGuard,
        begin: Option<Ack>,
        wire: Option<Arc<Wire>>,
        settles: TaskTracker,
    ) -> Self {
        let wire = if guard.is_shared() { None } else { wire };
        Self {
            _unsettled: settles.token(),
            settles,
            guard: Some(guard),
            begin,
            wire,
            handed: VecDeque::new(),
            completions: Vec::new(),
            settling: false,
        }
    }

    /// Adds a completion commit to watch (an empty object completes before any byte).
    pub fn watch(&mut self, completion: Option<Ack>) {
        self.completions.extend(completion);
    }

    /// Ready once the intent is durable; `Err` if it could not be recorded.
    pub fn poll_begin(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Some(begin) = self.begin.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let r = match Pin::new(begin).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(Ok(()))) => Ok(()),
            Poll::Ready(Ok(Err(e))) => {
                tracing::error!(error = %e, "download intent not persisted");
                Err(std::io::Error::other("cannot record the download; retry"))
            }
            Poll::Ready(Err(_)) => Err(std::io::Error::other("cannot record the download; retry")),
        };
        self.begin = None;
        Poll::Ready(r)
    }

    /// Object bytes `start..end` were handed to hyper.
    pub fn handed(&mut self, start: u64, end: u64) {
        match &self.wire {
            Some(wire) => self.handed.push_back(Handed {
                start,
                end,
                mark: wire.mark(),
                target: None,
            }),
            None => self.credit(start, end),
        }
    }

    fn credit(&mut self, start: u64, end: u64) {
        if let Some(guard) = self.guard.as_mut() {
            let done = guard.credit(start, end);
            self.completions.extend(done);
        }
    }

    /// Credits what the peer has acknowledged so far. Asks the kernel only when a handed
    /// frame's end is known. Returns whether the connection may still acknowledge more.
    pub fn confirm(&mut self) -> bool {
        let Some(wire) = self.wire.clone() else {
            return true;
        };
        for h in self.handed.iter_mut() {
            if h.target.is_none() {
                h.target = wire.flushed_since(h.mark);
            }
        }
        if !matches!(
            self.handed.front(),
            Some(Handed {
                target: Some(_),
                ..
            })
        ) {
            return !wire.is_closed();
        }
        let acked = wire.acked();
        while let Some(h) = self.handed.front().copied() {
            let Some(target) = h.target else { break };
            match confirmed(h.end - h.start, target, acked.plain) {
                Confirm::None => break,
                Confirm::Whole => {
                    self.handed.pop_front();
                    self.credit(h.start, h.end);
                }
                Confirm::Part(n) => {
                    if let Some(front) = self.handed.front_mut() {
                        front.start += n;
                    }
                    self.credit(h.start, h.start + n);
                    break;
                }
            }
        }
        acked.open
    }

    /// Settles the rest after the body ended or was dropped: waits (on a task of its own)
    /// for what is still unacknowledged, then records the outcome and releases the guard.
    fn settle(&mut self) {
        let mut rest = Tracker {
            guard: self.guard.take(),
            begin: None,
            wire: self.wire.take(),
            handed: std::mem::take(&mut self.handed),
            completions: std::mem::take(&mut self.completions),
            settles: self.settles.clone(),
            _unsettled: self.settles.token(),
            settling: true,
        };
        rest.confirm();
        if rest.handed.is_empty() && rest.completions.is_empty() {
            // Releases the request's slot and persists its progress.
            rest.guard = None;
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let settles = rest.settles.clone();
                settles.spawn_on(rest.settle_async(), &rt);
            }
            Err(_) => {
                rest.give_up();
                rest.guard = None;
            }
        }
    }

    async fn settle_async(mut self) {
        let mut delay = FIRST_POLL;
        let mut quiet_since = tokio::time::Instant::now();
        let mut pending = self.handed.iter().map(|h| h.end - h.start).sum::<u64>();
        while !self.handed.is_empty() {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_POLL);
            let open = self.confirm();
            let left = self.handed.iter().map(|h| h.end - h.start).sum::<u64>();
            if left < pending {
                pending = left;
                quiet_since = tokio::time::Instant::now();
            }
            let closed = self.wire.as_ref().is_none_or(|w| w.is_closed());
            if !open || (closed && quiet_since.elapsed() >= LINGER) {
                break;
            }
        }
        self.give_up();
        for done in std::mem::take(&mut self.completions) {
            let failed = !matches!(done.await, Ok(Ok(())));
            if failed {
                if let Some(guard) = self.guard.as_mut() {
                    tracing::error!("a completed delivery could not be recorded");
                    guard.completion_failed();
                }
            }
        }
        self.guard = None;
    }

    /// What is still unconfirmed was handed over but maybe never received.
    fn give_up(&mut self) {
        if let Some(guard) = self.guard.as_mut() {
            for h in self.handed.drain(..) {
                guard.unconfirmed(h.start, h.end);
            }
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if self.guard.is_none() {
            return;
        }
        if self.settling {
            self.give_up();
            self.guard = None;
        } else {
            self.settle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_counts_by_what_the_peer_acknowledged() {
        // A 100-byte frame that ends at or below plaintext 1000.
        assert_eq!(confirmed(100, 1000, 899), Confirm::None);
        assert_eq!(confirmed(100, 1000, 900), Confirm::None);
        assert_eq!(confirmed(100, 1000, 950), Confirm::Part(50));
        assert_eq!(confirmed(100, 1000, 999), Confirm::Part(99));
        assert_eq!(confirmed(100, 1000, 1000), Confirm::Whole);
        assert_eq!(confirmed(100, 1000, 5000), Confirm::Whole);
        // A target below the frame's length (the frame started the stream).
        assert_eq!(confirmed(100, 60, 30), Confirm::Part(30));
    }
}
