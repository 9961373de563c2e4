//! A fixed set of endpoint indices, one bit each: what a session visited or completed.

/// Most endpoints a model (and a session's bitsets) can hold.
pub const MAX_ENDPOINTS: usize = 128;

/// Index of an endpoint in the active model or the learning registry.
pub type EndpointId = u16;

/// Bitset over endpoint indices `0..MAX_ENDPOINTS`; out-of-range indices are ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointSet(pub u128);

impl EndpointSet {
    pub const EMPTY: EndpointSet = EndpointSet(0);

    pub fn insert(&mut self, id: EndpointId) {
        if usize::from(id) < MAX_ENDPOINTS {
            self.0 |= 1u128 << id;
        }
    }

    pub fn remove(&mut self, id: EndpointId) {
        if usize::from(id) < MAX_ENDPOINTS {
            self.0 &= !(1u128 << id);
        }
    }

    pub fn contains(self, id: EndpointId) -> bool {
        usize::from(id) < MAX_ENDPOINTS && self.0 & (1u128 << id) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Members of `self` missing from `other`.
    pub fn difference(self, other: EndpointSet) -> EndpointSet {
        EndpointSet(self.0 & !other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = EndpointId> {
        let bits = self.0;
        (0..MAX_ENDPOINTS as u16).filter(move |i| bits & (1u128 << i) != 0)
    }

    /// Rewrites each member through `map` (old index to new); members mapped to `None` drop.
    pub fn remap(self, map: impl Fn(EndpointId) -> Option<EndpointId>) -> EndpointSet {
        let mut out = EndpointSet::EMPTY;
        for id in self.iter().filter_map(map) {
            out.insert(id);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_contains_and_bounds() {
        let mut s = EndpointSet::EMPTY;
        s.insert(0);
        s.insert(127);
        s.insert(128);
        s.insert(u16::MAX);
        assert!(s.contains(0) && s.contains(127));
        assert!(!s.contains(128) && !s.contains(1));
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 127]);
    }

    #[test]
    fn difference_and_remap() {
        let mut a = EndpointSet::EMPTY;
        a.insert(1);
        a.insert(2);
        let mut b = EndpointSet::EMPTY;
        b.insert(2);
        assert_eq!(a.difference(b).iter().collect::<Vec<_>>(), [1]);
        let r = a.remap(|i| if i == 1 { Some(9) } else { None });
        assert_eq!(r.iter().collect::<Vec<_>>(), [9]);
    }
}
