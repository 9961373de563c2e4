//! Decoding of the proxy-wasm header-map wire format, without trusting it.
//!
//! Layout: `u32 count`, then `count` pairs of `u32` key/value sizes, then each key and
//! value followed by a NUL byte. A truncated or inconsistent buffer yields the pairs that
//! fit, never a panic; values need not be UTF-8.

/// The `(name, value)` pairs of a serialized header map.
pub fn decode_pairs(bytes: &[u8]) -> Vec<(&[u8], &[u8])> {
    let read_u32 = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(b)).ok()
    };
    let Some(count) = read_u32(0) else {
        return Vec::new();
    };
    // Each pair needs 8 bytes of sizes; a larger count is a lie.
    let count = count.min(bytes.len() / 8);
    let mut pairs = Vec::with_capacity(count);
    let Some(mut at) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return pairs;
    };
    for n in 0..count {
        let sizes = 4 + n * 8;
        let (Some(klen), Some(vlen)) = (read_u32(sizes), read_u32(sizes + 4)) else {
            break;
        };
        let Some(key) = at.checked_add(klen).and_then(|end| bytes.get(at..end)) else {
            break;
        };
        at += klen + 1;
        let Some(value) = at.checked_add(vlen).and_then(|end| bytes.get(at..end)) else {
            break;
        };
        at += vlen + 1;
        pairs.push((key, value));
    }
    pairs
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
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_pairs(&bytes);
        }
    }
}
