//! Telemetry events and the bounded per-worker buffer that holds them until a tick
//! sends them. Nothing here waits on the network: a full buffer drops and counts.

use crate::rule::RuleSet;
use crate::verdict::Outcome;

/// One request as reported to the collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub time_ms: u64,
    pub session: u64,
    pub template: String,
    pub status: u16,
    /// `None` while learning.
    pub outcome: Option<Outcome>,
    pub rules: RuleSet,
    pub latency_us: u32,
    /// A sampled request summary (true) or a rule event (false).
    pub summary: bool,
    /// Hash of the identifier values, if the template has any.
    pub ids: Option<u64>,
    /// Keyed by a fallback client address: a weak session.
    pub weak_session: bool,
    /// A step some rule waits for: reported from every session, and at once, so the fleet
    /// can tell another proxy that this session took it (`Sessions.Completed`).
    pub prompt: bool,
    /// The request's `x-request-id` (a plain one), for a rule's event: what a customer
    /// quotes to support.
    pub request_id: Option<String>,
}

/// Whether a session's requests are summarised at `rate`: decided by the session's
/// fingerprint, so a sampled session is reported whole (the fleet learner needs flows).
pub fn sampled(session: u64, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    let bucket = (session.rotate_left(29) % 1_000_000) as f64;
    bucket < rate * 1_000_000.0
}

/// A bounded FIFO of events.
#[derive(Debug, Default)]
pub struct EventBuffer {
    events: std::collections::VecDeque<Event>,
    capacity: usize,
    /// Events refused since the last batch was taken.
    pub dropped: u64,
}

impl EventBuffer {
    pub fn new(capacity: usize) -> EventBuffer {
        EventBuffer {
            events: std::collections::VecDeque::new(),
            capacity,
            dropped: 0,
        }
    }

    /// Appends `event`, or drops and counts it when the buffer is full.
    pub fn push(&mut self, event: Event) -> bool {
        if self.events.len() >= self.capacity {
            self.dropped = self.dropped.saturating_add(1);
            return false;
        }
        self.events.push_back(event);
        true
    }

    /// Takes up to `max` events, oldest first, and the drop count since the last take.
    pub fn take(&mut self, max: usize) -> (Vec<Event>, u64) {
        let n = max.min(self.events.len());
        let batch = self.events.drain(..n).collect();
        (batch, std::mem::take(&mut self.dropped))
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u64) -> Event {
        Event {
            time_ms: n,
            session: n,
            template: "GET /".into(),
            status: 200,
            outcome: None,
            rules: RuleSet::EMPTY,
            latency_us: 0,
            summary: true,
            ids: None,
            weak_session: false,
            prompt: false,
            request_id: None,
        }
    }

    #[test]
    fn buffer_is_bounded_and_counts_drops() {
        let mut b = EventBuffer::new(3);
        assert!((0..5).map(|i| b.push(ev(i))).filter(|ok| !ok).count() == 2);
        let (batch, dropped) = b.take(2);
        assert_eq!((batch.len(), dropped, b.len()), (2, 2, 1));
        assert_eq!(batch[0].time_ms, 0, "oldest first");
        assert_eq!(b.take(10).1, 0, "drops are reported once");
        assert!(b.is_empty());
    }

    #[test]
    fn sampling_is_per_session_and_proportional() {
        assert!(sampled(42, 1.0) && !sampled(42, 0.0));
        assert_eq!(sampled(42, 0.3), sampled(42, 0.3));
        let n = (0..100_000u64)
            .filter(|s| sampled(s.wrapping_mul(0x9e37_79b9_7f4a_7c15), 0.1))
            .count();
        assert!((9_000..11_000).contains(&n), "{n}");
    }
}
