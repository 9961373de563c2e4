//! Decoding of the proxy-wasm header-map wire format, without trusting it.
//!
//! Layout: `u32 count`, then `count` pairs of `u32` key/value sizes, then each key and
//! value followed by a NUL byte. A truncated or inconsistent buffer yields the pairs that
//! fit, never a panic; values need not be UTF-8.

/// The `(name, value)` pairs of a serialized header map.
pub fn decode_pairs(bytes: &[u8]) -> Vec<(&[u8], &[u8])> {
    let pairs = pairs(bytes);
    let mut out = Vec::with_capacity(pairs.len());
    out.extend(pairs);
    out
}

/// The `(name, value)` pairs of a serialized header map, read as they are asked for
/// (nothing allocated).
pub fn pairs(bytes: &[u8]) -> Pairs<'_> {
    let count = read_u32(bytes, 0).unwrap_or(0);
    // Each pair needs 8 bytes of sizes; a larger count is a lie.
    let count = count.min(bytes.len() / 8);
    Pairs {
        bytes,
        count,
        n: 0,
        at: count.checked_mul(8).and_then(|n| n.checked_add(4)),
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(b)).ok()
}

/// The iterator of [`pairs`]: it stops at the first pair that does not fit.
pub struct Pairs<'a> {
    bytes: &'a [u8],
    count: usize,
    n: usize,
    /// Where the next pair's name starts; `None` once the buffer lied.
    at: Option<usize>,
}

impl Pairs<'_> {
    /// How many pairs the buffer claims (at most what it can hold).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.n >= self.count {
            return None;
        }
        let pair = self.read();
        if pair.is_none() {
            self.n = self.count;
        }
        pair
    }
}

impl<'a> Pairs<'a> {
    fn read(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        let at = self.at?;
        let sizes = 4 + self.n * 8;
        let klen = read_u32(self.bytes, sizes)?;
        let vlen = read_u32(self.bytes, sizes + 4)?;
        let key = self.bytes.get(at..at.checked_add(klen)?)?;
        let at = at + klen + 1;
        let value = self.bytes.get(at..at.checked_add(vlen)?)?;
        self.at = Some(at + vlen + 1);
        self.n += 1;
        Some((key, value))
    }
}

/// Encodes pairs in the same format (for local replies and tests).
pub fn encode_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| k.len() + v.len() + 10)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&len(k.len()));
        out.extend_from_slice(&len(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_survives_lies() {
        let bytes = encode_pairs(&[(":path", "/a"), ("cookie", "session=1")]);
        let pairs = decode_pairs(&bytes);
        assert_eq!(
            pairs,
            [
                (&b":path"[..], &b"/a"[..]),
                (&b"cookie"[..], &b"session=1"[..])
            ]
        );
        let mut lie = bytes.clone();
        lie[0] = 200;
        assert!(decode_pairs(&lie).len() <= bytes.len() / 8);
        assert!(decode_pairs(&bytes[..10]).is_empty());
        assert!(decode_pairs(&[]).is_empty());
        assert_eq!(
            super::pairs(&bytes).collect::<Vec<_>>(),
            decode_pairs(&bytes)
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_pairs(&bytes);
            prop_assert!(pairs(&bytes).count() <= bytes.len() / 8);
        }
    }
}
