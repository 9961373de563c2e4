//! The compact binary session record kept in one shared-data slot.
//!
//! Fixed size, little-endian, versioned: one slot read and at most one write per phase,
//! and no JSON on the request path.

use crate::endpoint_set::{EndpointId, EndpointSet};

/// Encoded size of a slot, in bytes.
pub const SLOT_SIZE: usize = 64;
const FORMAT: u8 = 1;
/// `last_endpoint` when the session has made no request yet, or only to unknown endpoints.
pub const NO_ENDPOINT: EndpointId = u16::MAX;

/// One session's flow state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// Keyed hash of the owning session key; 0 marks an empty slot.
    pub fingerprint: u64,
    /// Seconds since the Unix epoch.
    pub first_seen: u32,
    pub last_seen: u32,
    pub requests: u32,
    pub last_endpoint: EndpointId,
    /// Version of the model whose endpoint indices the sets below use (0: learning registry).
    pub model_version: u32,
    /// Endpoints this session has called.
    pub visited: EndpointSet,
    /// Endpoints this session has called with a successful (2xx/3xx) answer.
    pub completed: EndpointSet,
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

/// What a request changed, for the learner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Visit {
    pub new_session: bool,
    pub first_visit: bool,
    pub previous: EndpointId,
    pub completed_before: EndpointSet,
}

impl Slot {
    /// A fresh slot for a session first seen at `now`.
    pub fn new(fingerprint: u64, now: u32, model_version: u32) -> Slot {
        Slot {
            fingerprint,
            first_seen: now,
            last_seen: now,
            last_endpoint: NO_ENDPOINT,
            model_version,
            ..Slot::default()
        }
    }

    /// Whether the slot's owner has been idle for longer than `idle` seconds at `now`.
    pub fn is_stale(&self, now: u32, idle: u32) -> bool {
        self.fingerprint == 0 || now.saturating_sub(self.last_seen) > idle
    }

    /// Records a request to `endpoint` (or an unknown endpoint) at `now`.
    pub fn record_request(&mut self, endpoint: Option<EndpointId>, now: u32) -> Visit {
        let id = endpoint.unwrap_or(NO_ENDPOINT);
        let visit = Visit {
            new_session: self.requests == 0,
            first_visit: endpoint.is_some_and(|e| !self.visited.contains(e)),
            previous: self.last_endpoint,
            completed_before: self.completed,
        };
        if let Some(e) = endpoint {
            self.visited.insert(e);
        }
        self.last_endpoint = id;
        self.last_seen = self.last_seen.max(now);
        self.requests = self.requests.saturating_add(1);
        visit
    }

    /// Records the answer to a request: success unlocks what depends on `endpoint`.
    pub fn record_response(&mut self, endpoint: EndpointId, status: u16) {
        if is_success(status) {
            self.completed.insert(endpoint);
        }
    }

    pub fn encode(&self) -> [u8; SLOT_SIZE] {
        let mut b = [0u8; SLOT_SIZE];
        let mut w = Writer { buf: &mut b, at: 0 };
        w.put(&[FORMAT, 0]);
        w.put(&self.fingerprint.to_le_bytes());
        w.put(&self.first_seen.to_le_bytes());
        w.put(&self.last_seen.to_le_bytes());
        w.put(&self.requests.to_le_bytes());
        w.put(&self.last_endpoint.to_le_bytes());
        w.put(&self.model_version.to_le_bytes());
        w.put(&self.visited.0.to_le_bytes());
        w.put(&self.completed.0.to_le_bytes());
        b
    }

    pub fn decode(bytes: &[u8]) -> Result<Slot, SlotError> {
        let bytes: &[u8; SLOT_SIZE] = bytes
            .try_into()
            .map_err(|_| SlotError::Length(bytes.len()))?;
        let mut r = Reader { buf: bytes, at: 0 };
        let [format, _flags] = r.take::<2>();
        if format != FORMAT {
            return Err(SlotError::Format(format));
        }
        Ok(Slot {
            fingerprint: u64::from_le_bytes(r.take()),
            first_seen: u32::from_le_bytes(r.take()),
            last_seen: u32::from_le_bytes(r.take()),
            requests: u32::from_le_bytes(r.take()),
            last_endpoint: u16::from_le_bytes(r.take()),
            model_version: u32::from_le_bytes(r.take()),
            visited: EndpointSet(u128::from_le_bytes(r.take())),
            completed: EndpointSet(u128::from_le_bytes(r.take())),
        })
    }
}

/// 2xx and 3xx complete a step; 1xx, 4xx and 5xx do not.
pub fn is_success(status: u16) -> bool {
    (200..400).contains(&status)
}

struct Writer<'a> {
    buf: &'a mut [u8; SLOT_SIZE],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.at..self.at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        self.at += bytes.len();
    }
}

struct Reader<'a> {
    buf: &'a [u8; SLOT_SIZE],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.buf.get(self.at..self.at + N) {
            out.copy_from_slice(src);
        }
        self.at += N;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn visits_and_successes_update_the_flow() {
        let mut s = Slot::new(7, 100, 0);
        let v = s.record_request(Some(3), 101);
        assert!(v.new_session && v.first_visit);
        assert_eq!(v.previous, NO_ENDPOINT);
        s.record_response(3, 402);
        assert!(!s.completed.contains(3));
        let v = s.record_request(Some(3), 102);
        assert!(!v.new_session && !v.first_visit);
        assert_eq!(v.previous, 3);
        s.record_response(3, 200);
        assert!(s.completed.contains(3));
        assert_eq!((s.requests, s.last_seen), (2, 102));
    }

    #[test]
    fn staleness_and_bad_bytes() {
        let s = Slot::new(7, 100, 0);
        assert!(!s.is_stale(150, 60) && s.is_stale(161, 60));
        assert!(Slot::default().is_stale(0, 60));
        assert_eq!(Slot::decode(&[1; 3]), Err(SlotError::Length(3)));
        assert_eq!(Slot::decode(&[9; SLOT_SIZE]), Err(SlotError::Format(9)));
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(fp: u64, a: u32, b: u32, n: u32, last: u16, mv: u32, v: u128, c: u128) {
            let s = Slot { fingerprint: fp, first_seen: a, last_seen: b, requests: n, last_endpoint: last,
                model_version: mv, visited: EndpointSet(v), completed: EndpointSet(c) };
            prop_assert_eq!(Slot::decode(&s.encode()), Ok(s));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Slot::decode(&bytes);
        }
    }
}
