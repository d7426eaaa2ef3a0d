//! Who sends which message when: message ids from one counter, the end of the send
//! phase (count or time), open-loop send times, and the live counters the progress
//! bar reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The send phase's clock and id counter, shared by every SMTP session.
#[derive(Debug)]
pub struct Schedule {
    next_id: AtomicU64,
    first_id: u64,
    messages_max: Option<u64>,
    start: Instant,
    end: Option<Instant>,
    rate_msgs_per_s: Option<f64>,
    stopped: AtomicBool,
}

/// One message to send: its id and, in open loop, when it is due.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    /// Run-wide message id.
    pub id: u64,
    /// Open loop: the intended start of its transaction.
    pub due: Option<Instant>,
}

impl Schedule {
    /// A phase starting now with ids from `first_id`.
    pub fn new(
        first_id: u64,
        messages_max: Option<u64>,
        duration: Option<Duration>,
        rate_msgs_per_s: Option<f64>,
    ) -> Schedule {
        let start = Instant::now();
        Schedule {
            next_id: AtomicU64::new(first_id),
            first_id,
            messages_max: messages_max.map(|m| m + first_id),
            start,
            end: duration.map(|d| start + d),
            rate_msgs_per_s,
            stopped: AtomicBool::new(false),
        }
    }

    /// The next message to send, or `None` once the phase is over.
    pub fn claim(&self) -> Option<Ticket> {
        if self.stopped.load(Ordering::Relaxed) || self.end.is_some_and(|e| Instant::now() >= e) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if self.messages_max.is_some_and(|m| id >= m) {
            self.stopped.store(true, Ordering::Relaxed);
            return None;
        }
        let due = self
            .rate_msgs_per_s
            .map(|r| self.start + Duration::from_secs_f64((id - self.first_id) as f64 / r));
        if let (Some(d), Some(e)) = (due, self.end)
            && d >= e
        {
            return None;
        }
        Some(Ticket { id, due })
    }

    /// True once no more messages will be handed out.
    pub fn finished(&self) -> bool {
        self.stopped.load(Ordering::Relaxed) || self.end.is_some_and(|e| Instant::now() >= e)
    }

    /// The first id not handed out (ids below it were claimed).
    pub fn next_id(&self) -> u64 {
        let n = self.next_id.load(Ordering::Relaxed);
        self.messages_max.map_or(n, |m| n.min(m))
    }

    /// True without `--rate`: each session sends its next message as soon as it can.
    pub fn is_closed_loop(&self) -> bool {
        self.rate_msgs_per_s.is_none()
    }

    /// When the phase started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The planned end of the phase, if time-bound.
    pub fn end(&self) -> Option<Instant> {
        self.end
    }
}

/// Counters updated by the sessions as they go (relaxed atomics; read by the progress bar).
#[derive(Debug, Default)]
pub struct Live {
    /// Transactions started.
    pub sent: AtomicU64,
    /// `250` after DATA.
    pub acknowledged: AtomicU64,
    /// `4xx`/`5xx`/broken transactions.
    pub failed: AtomicU64,
    /// Messages retrieved.
    pub retrieved: AtomicU64,
    /// Retrieved messages that did not verify.
    pub corrupt: AtomicU64,
}

impl Live {
    /// Add one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn count_bound_hands_out_each_id_once() {
        let s = Schedule::new(10, Some(5), None, None);
        let ids: Vec<u64> = std::iter::from_fn(|| s.claim().map(|t| t.id)).collect();
        assert_eq!(ids, vec![10, 11, 12, 13, 14]);
        assert!(s.finished());
        assert_eq!(s.next_id(), 15);
    }

    #[tokio::test]
    async fn open_loop_spaces_due_times() {
        let s = Schedule::new(0, Some(3), None, Some(100.0));
        let t: Vec<Ticket> = std::iter::from_fn(|| s.claim()).collect();
        assert_eq!(t.len(), 3);
        let gap = t[2].due.unwrap() - t[1].due.unwrap();
        assert_eq!(gap, Duration::from_millis(10));
    }
}
