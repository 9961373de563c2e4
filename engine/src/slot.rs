//! The compact binary session record kept in one shared-data slot.
//!
//! Fixed size, little-endian, versioned: one slot read and at most one write per phase,
//! and no JSON on the request path.

use crate::endpoint_set::{EndpointId, EndpointSet};
use crate::le::{Reader, Writer};
use crate::object::Objects;
use crate::rate::{RateEntry, Tally, WindowCounter};

/// Encoded size of a slot, in bytes (a benchmark target: at most 213): 128 for the
/// session's steps, times and rates, 84 for its object table, 1 for more flags.
pub const SLOT_SIZE: usize = 128 + Objects::SIZE + 1;
const FORMAT: u8 = 4;
/// The second flags byte.
const MIDFLOW: u8 = 1;
/// Endpoints whose rate a slot tracks at once; the least loaded entry is reused.
pub const RATE_ENTRIES: usize = 3;
/// `last_endpoint` when the session has made no request yet, or only to unknown endpoints.
pub const NO_ENDPOINT: EndpointId = u16::MAX;
const SEEN: u8 = 1;
const UNLEARNED: u8 = 2;
const HAS_ADDRESS: u8 = 4;
/// The flags byte keeps the address's sketch bit (0..32) in its top five bits.
const ADDRESS_SHIFT: u8 = 3;

/// One session's flow state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// Keyed hash of the owning session key; 0 marks an empty slot.
    pub fingerprint: u64,
    /// Seconds since the Unix epoch.
    pub first_seen: u32,
    pub last_seen: u32,
    /// Whether the session has made a request.
    pub seen: bool,
    /// Left out of learning: its client address had started its share of sessions.
    pub unlearned: bool,
    /// The support sketch bit of the session's client address, when learning looked it up.
    pub address_bit: Option<u8>,
    pub last_endpoint: EndpointId,
    /// The layout (first model version with these endpoint ids) whose indices the sets
    /// below use (0: learning registry).
    pub layout: u32,
    /// Endpoints this session has called.
    pub visited: EndpointSet,
    /// Endpoints this session has called with a successful (2xx/3xx) answer.
    pub completed: EndpointSet,
    /// 401/403 answers in the auth window.
    pub auth: WindowCounter,
    /// All requests of the session (`endpoint` and `ids` unused).
    pub total: RateEntry,
    /// Per-endpoint rate and distinct-id state.
    pub rates: [RateEntry; RATE_ENTRIES],
    /// Steps completed per object (identifier), for rules bound to an object.
    pub objects: Objects,
    /// The session's first request here came mid-flow (its earlier steps were seen by
    /// another proxy, or before a restart): its order rules flag instead of blocking.
    pub midflow: bool,
}

/// Why bytes from shared data are not a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotError {
    Length(usize),
    Format(u8),
}

impl std::fmt::Display for SlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotError::Length(n) => write!(f, "slot record: expected {SLOT_SIZE} bytes, got {n}"),
            SlotError::Format(v) => write!(f, "slot record: unknown format {v}"),
        }
    }
}

/// What a request changed, for the learner and the rate rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Visit {
    pub new_session: bool,
    pub first_visit: bool,
    /// An earlier call of the endpoint in this session had not succeeded: this one retries.
    pub retry: bool,
    pub previous: EndpointId,
    pub completed_before: EndpointSet,
    /// The endpoint's window tally (new peaks, distinct ids this window).
    pub tally: Tally,
    /// The session's new peak of requests per window, if this request set one.
    pub total_peak: Option<u8>,
    /// Which of `rates` holds the endpoint's state.
    pub entry: Option<usize>,
    /// Whether learning counts this request (see [`Slot::unlearned`]).
    pub learn: bool,
    /// Support sketch bits of the session and of its client address.
    pub session_bit: u8,
    pub address_bit: u8,
    /// The steps already completed on the request's object (`None`: the request names
    /// no object, or the session's table has forgotten it).
    pub object: Option<EndpointSet>,
}

impl Slot {
    /// A fresh slot for a session first seen at `now`.
    pub fn new(fingerprint: u64, now: u32, layout: u32) -> Slot {
        let empty = RateEntry::fresh(NO_ENDPOINT, 0);
        Slot {
            fingerprint,
            first_seen: now,
            last_seen: now,
            last_endpoint: NO_ENDPOINT,
            layout,
            total: empty,
            rates: [empty; RATE_ENTRIES],
            ..Slot::default()
        }
    }

    /// Whether the slot's owner has been idle for longer than `idle` seconds at `now`.
    pub fn is_stale(&self, now: u32, idle: u32) -> bool {
        self.fingerprint == 0 || now.saturating_sub(self.last_seen) > idle
    }

    /// Milliseconds since `first_seen`, the clock of the rate state.
    pub fn clock(&self, now_ms: u64) -> u32 {
        let since = now_ms.saturating_sub(u64::from(self.first_seen) * 1000);
        u32::try_from(since).unwrap_or(u32::MAX)
    }

    /// Records a request to `endpoint` (or an unknown endpoint) at `now_ms`, with the hash
    /// of its identifier values if it has any.
    pub fn record_request(
        &mut self,
        endpoint: Option<EndpointId>,
        id: Option<u64>,
        now_ms: u64,
        window_ms: u32,
    ) -> Visit {
        let now = self.clock(now_ms);
        let mut visit = Visit {
            new_session: !self.seen,
            first_visit: endpoint.is_some_and(|e| !self.visited.contains(e)),
            retry: endpoint
                .is_some_and(|e| self.visited.contains(e) && !self.completed.contains(e)),
            previous: self.last_endpoint,
            completed_before: self.completed,
            learn: !self.unlearned,
            session_bit: crate::support::bit_of(self.fingerprint),
            // Without an address lookup each session stands for its own address.
            address_bit: self
                .address_bit
                .unwrap_or_else(|| crate::support::bit_of(self.fingerprint)),
            total_peak: self.total.tally(now, window_ms, None).new_peak,
            ..Visit::default()
        };
        visit.object = match (endpoint, id) {
            (Some(_), Some(id)) => self.objects.completed(id),
            _ => None,
        };
        if let Some(e) = endpoint {
            self.visited.insert(e);
            let i = self.entry_for(e, now);
            if let Some(entry) = self.rates.get_mut(i) {
                visit.tally = entry.tally(now, window_ms, id);
                visit.entry = Some(i);
            }
        }
        self.seen = true;
        self.last_endpoint = endpoint.unwrap_or(NO_ENDPOINT);
        self.last_seen = self
            .last_seen
            .max(u32::try_from(now_ms / 1000).unwrap_or(u32::MAX));
        visit
    }

    /// The entry tracking `endpoint`, reusing the least loaded one (the one whose GCRA
    /// state has drained furthest) so a flooded endpoint keeps its state.
    fn entry_for(&mut self, endpoint: EndpointId, now: u32) -> usize {
        if let Some(i) = self.rates.iter().position(|r| r.endpoint == endpoint) {
            return i;
        }
        let i = (0..RATE_ENTRIES)
            .min_by_key(|i| {
                self.rates.get(*i).map_or((false, 0), |r| {
                    (r.endpoint != NO_ENDPOINT, r.tat.max(r.window_start))
                })
            })
            .unwrap_or(0);
        if let Some(r) = self.rates.get_mut(i) {
            *r = RateEntry::fresh(endpoint, now);
        }
        i
    }

    /// Records the answer to a request: success unlocks what depends on `endpoint` (and,
    /// with `object`, the identifier hash of a tracked object, what depends on it for that
    /// object); 401/403 count as authentication failures. Returns a new auth-failure peak.
    pub fn record_response(
        &mut self,
        endpoint: EndpointId,
        object: Option<u64>,
        status: u16,
        now_ms: u64,
        auth_window_ms: u32,
    ) -> Option<u16> {
        if is_success(status) {
            self.completed.insert(endpoint);
            if let Some(id) = object {
                self.objects.complete(id, endpoint);
            }
        }
        if is_auth_failure(status) {
            let now = self.clock(now_ms);
            return self.auth.add(now, auth_window_ms);
        }
        None
    }

    pub fn encode(&self) -> [u8; SLOT_SIZE] {
        let mut b = [0u8; SLOT_SIZE];
        let mut w = Writer::new(&mut b);
        w.put(&[FORMAT, self.flags()]);
        w.put(&self.fingerprint.to_le_bytes());
        w.put(&self.first_seen.to_le_bytes());
        w.put(&self.last_seen.to_le_bytes());
        w.put(&self.last_endpoint.to_le_bytes());
        w.put(&self.layout.to_le_bytes());
        w.put(&self.visited.0.to_le_bytes());
        w.put(&self.completed.0.to_le_bytes());
        w.put(&self.auth.window_start.to_le_bytes());
        w.put(&self.auth.count.to_le_bytes());
        w.put(&self.auth.peak.to_le_bytes());
        w.put(&[self.total.count, self.total.peak]);
        w.put(&self.total.window_start.to_le_bytes());
        w.put(&self.total.tat.to_le_bytes());
        for r in &self.rates {
            let mut e = [0u8; RateEntry::SIZE];
            r.encode(&mut e);
            w.put(&e);
        }
        self.objects.encode(&mut w);
        w.put(&[if self.midflow { MIDFLOW } else { 0 }]);
        b
    }

    /// Rewrites the slot's steps from learning registry ids into a model's (`map`).
    pub fn remap_steps(&mut self, map: impl Fn(EndpointId) -> Option<EndpointId> + Copy) {
        self.visited = self.visited.remap(map);
        self.completed = self.completed.remap(map);
        self.objects.remap(map);
        self.last_endpoint = map(self.last_endpoint).unwrap_or(NO_ENDPOINT);
    }

    /// Continues `from`'s flow in this slot (an identity hand-over): its visited and
    /// completed steps and objects join this session's; rates, failures and learning
    /// state stay this session's own, so a new identity is learned as a new session.
    pub fn continue_from(&mut self, from: &Slot) {
        self.visited = EndpointSet(self.visited.0 | from.visited.0);
        self.completed = EndpointSet(self.completed.0 | from.completed.0);
        self.objects.absorb(&from.objects);
        if from.last_endpoint != NO_ENDPOINT {
            self.last_endpoint = from.last_endpoint;
        }
    }

    /// Forgets the session's steps (another policy's ids mean nothing here), keeping its
    /// rates and failures.
    pub fn forget_steps(&mut self) {
        self.visited = EndpointSet::EMPTY;
        self.completed = EndpointSet::EMPTY;
        self.objects = Objects::default();
        self.last_endpoint = NO_ENDPOINT;
    }

    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.seen {
            flags |= SEEN;
        }
        if self.unlearned {
            flags |= UNLEARNED;
        }
        if let Some(bit) = self.address_bit {
            flags |= HAS_ADDRESS | (bit % 32) << ADDRESS_SHIFT;
        }
        flags
    }

    pub fn decode(bytes: &[u8]) -> Result<Slot, SlotError> {
        let bytes: &[u8; SLOT_SIZE] = bytes
            .try_into()
            .map_err(|_| SlotError::Length(bytes.len()))?;
        let mut r = Reader::new(bytes);
        let [format, flags] = r.take::<2>();
        if format != FORMAT {
            return Err(SlotError::Format(format));
        }
        let mut s = Slot {
            seen: flags & SEEN != 0,
            unlearned: flags & UNLEARNED != 0,
            address_bit: (flags & HAS_ADDRESS != 0).then_some(flags >> ADDRESS_SHIFT),
            fingerprint: u64::from_le_bytes(r.take()),
            first_seen: u32::from_le_bytes(r.take()),
            last_seen: u32::from_le_bytes(r.take()),
            last_endpoint: u16::from_le_bytes(r.take()),
            layout: u32::from_le_bytes(r.take()),
            visited: EndpointSet(u128::from_le_bytes(r.take())),
            completed: EndpointSet(u128::from_le_bytes(r.take())),
            auth: WindowCounter {
                window_start: u32::from_le_bytes(r.take()),
                count: u16::from_le_bytes(r.take()),
                peak: u16::from_le_bytes(r.take()),
            },
            ..Slot::default()
        };
        let [count, peak] = r.take::<2>();
        s.total = RateEntry {
            endpoint: NO_ENDPOINT,
            count,
            peak,
            window_start: u32::from_le_bytes(r.take()),
            tat: u32::from_le_bytes(r.take()),
            ..RateEntry::default()
        };
        for e in s.rates.iter_mut() {
            *e = RateEntry::decode(&r.take::<{ RateEntry::SIZE }>());
        }
        s.objects = Objects::decode(&mut r);
        let [more] = r.take::<1>();
        s.midflow = more & MIDFLOW != 0;
        Ok(s)
    }
}

/// 2xx and 3xx complete a step; 1xx, 4xx and 5xx do not.
pub fn is_success(status: u16) -> bool {
    (200..400).contains(&status)
}

/// 401 and 403: what credential stuffing and broken access control produce.
pub fn is_auth_failure(status: u16) -> bool {
    status == 401 || status == 403
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::DistinctSketch;
    use proptest::prelude::*;

    const W: u32 = 10_000;

    #[test]
    fn visits_and_successes_update_the_flow() {
        let mut s = Slot::new(7, 100, 0);
        let v = s.record_request(Some(3), None, 101_000, W);
        assert!(v.new_session && v.first_visit);
        assert_eq!(v.previous, NO_ENDPOINT);
        s.record_response(3, None, 402, 101_000, W);
        assert!(!s.completed.contains(3));
        let v = s.record_request(Some(3), None, 102_000, W);
        assert!(!v.new_session && !v.first_visit);
        assert_eq!(v.previous, 3);
        assert_eq!(v.tally.new_peak, Some(2));
        assert_eq!(v.total_peak, Some(2));
        s.record_response(3, None, 200, 102_000, W);
        assert!(s.completed.contains(3));
        assert_eq!(s.last_seen, 102);
    }

    #[test]
    fn auth_failures_are_counted_in_windows() {
        let mut s = Slot::new(7, 100, 0);
        assert_eq!(s.record_response(0, None, 401, 100_000, W), Some(1));
        assert_eq!(s.record_response(0, None, 403, 100_500, W), Some(2));
        assert_eq!(s.record_response(0, None, 200, 100_600, W), None);
        assert_eq!(s.auth.current(s.clock(101_000), W), 2);
        assert_eq!(s.auth.current(s.clock(111_000), W), 0);
    }

    #[test]
    fn a_flooded_endpoint_keeps_its_entry_while_others_rotate() {
        let mut s = Slot::new(7, 0, 0);
        for _ in 0..20 {
            let v = s.record_request(Some(1), None, 0, W);
            if let Some(i) = v.entry {
                s.rates[i].tat += 1000; // as GCRA would while admitting
            }
        }
        for e in 2..10 {
            s.record_request(Some(e), None, 1, W);
        }
        assert!(s.rates.iter().any(|r| r.endpoint == 1 && r.count == 20));
    }

    #[test]
    fn staleness_and_bad_bytes() {
        let s = Slot::new(7, 100, 0);
        assert!(!s.is_stale(150, 60) && s.is_stale(161, 60));
        assert!(Slot::default().is_stale(0, 60));
        assert_eq!(Slot::decode(&[1; 3]), Err(SlotError::Length(3)));
        assert_eq!(Slot::decode(&[9; SLOT_SIZE]), Err(SlotError::Format(9)));
        assert_eq!(Slot::new(1, u32::MAX, 0).clock(0), 0);
    }

    fn entry() -> impl Strategy<Value = RateEntry> {
        (
            any::<u16>(),
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(
                |(endpoint, count, peak, ids_peak, window_start, tat, ids)| RateEntry {
                    endpoint,
                    count,
                    peak,
                    ids_peak,
                    window_start,
                    tat,
                    ids: DistinctSketch(ids),
                },
            )
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(fp: u64, a: u32, b: u32, seen: bool, unlearned: bool, abit in proptest::option::of(0u8..32), last: u16, mv: u32, v: u128, c: u128,
                                     aw: u32, ac: u16, ap: u16, tc: u8, tp: u8, tw: u32, tt: u32,
                                     rates in proptest::array::uniform3(entry()), forgotten: u32, midflow: bool,
                                     objects in proptest::array::uniform4((any::<u32>(), any::<u128>()))) {
            let objects = Objects { forgotten, entries: objects.map(|(key, c)| crate::object::ObjectEntry { key, completed: EndpointSet(c) }) };
            let s = Slot { fingerprint: fp, first_seen: a, last_seen: b, seen, unlearned, address_bit: abit, last_endpoint: last,
                layout: mv, visited: EndpointSet(v), completed: EndpointSet(c),
                auth: WindowCounter { window_start: aw, count: ac, peak: ap },
                total: RateEntry { endpoint: NO_ENDPOINT, count: tc, peak: tp, window_start: tw, tat: tt, ..RateEntry::default() },
                rates, objects, midflow };
            prop_assert_eq!(Slot::decode(&s.encode()), Ok(s));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Slot::decode(&bytes);
        }

        #[test]
        fn recording_never_panics(ops in proptest::collection::vec((any::<Option<u16>>(), any::<u64>(), any::<u16>()), 0..50), start: u32) {
            let mut s = Slot::new(1, start, 0);
            for (e, t, status) in ops {
                s.record_request(e, Some(t), t, W);
                if let Some(e) = e {
                    s.record_response(e, Some(t % 7), status, t, W);
                }
            }
        }
    }
}
