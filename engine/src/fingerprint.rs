//! Keyed hashing of session keys: the filter stores and shows only these fingerprints.

use siphasher::sip::SipHasher13;
use std::hash::Hasher;

/// A keyed hash (SipHash-1-3). The key comes from configuration, so an attacker who does
/// not know it cannot aim session ids at one slot of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprinter {
    k0: u64,
    k1: u64,
}

impl Fingerprinter {
    /// Derives the two SipHash keys from a configured secret of any length.
    pub fn from_secret(secret: &str) -> Self {
        let derive = |domain: u64| {
            let mut h = SipHasher13::new_with_keys(domain, !domain);
            h.write(secret.as_bytes());
            h.finish()
        };
        Fingerprinter {
            k0: derive(0x666c_6f77_6775_6172),
            k1: derive(0x7365_7373_696f_6e73),
        }
    }

    /// Fingerprint of `value` from source `kind`; never 0, which marks an empty slot.
    pub fn fingerprint(&self, kind: u8, value: &[u8]) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write_u8(kind);
        h.write(value);
        h.finish().max(1)
    }
}

/// A fingerprint as the 16 lowercase hex digits of `x-flowguard-session`, on the stack.
pub fn hex(fingerprint: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'0'; 16];
    for (i, digit) in out.iter_mut().enumerate() {
        let nibble = (fingerprint >> (60 - 4 * i)) & 0xf;
        *digit = DIGITS.get(nibble as usize).copied().unwrap_or(b'0');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_on_secret_kind_and_value() {
        let a = Fingerprinter::from_secret("one");
        let b = Fingerprinter::from_secret("two");
        assert_ne!(a.fingerprint(0, b"x"), b.fingerprint(0, b"x"));
        assert_ne!(a.fingerprint(0, b"x"), a.fingerprint(1, b"x"));
        assert_ne!(a.fingerprint(0, b"x"), a.fingerprint(0, b"y"));
        assert_eq!(a.fingerprint(0, b"x"), a.fingerprint(0, b"x"));
    }

    /// The fingerprint as `siphasher` computes it: the stored value it must keep.
    fn old_fingerprint(f: &Fingerprinter, kind: u8, value: &[u8]) -> u64 {
        let mut h = SipHasher13::new_with_keys(f.k0, f.k1);
        h.write_u8(kind);
        h.write(value);
        h.finish().max(1)
    }

    fn old_hex(fingerprint: u64) -> [u8; 16] {
        let mut out = [b'0'; 16];
        for (i, digit) in out.iter_mut().enumerate() {
            let nibble = ((fingerprint >> (60 - 4 * i)) & 0xf) as u8;
            *digit = if nibble < 10 {
                b'0' + nibble
            } else {
                b'a' + nibble - 10
            };
        }
        out
    }

    /// A deterministic xorshift, so a failure reproduces.
    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    #[test]
    fn fingerprints_are_siphashers() {
        let mut x = 0x2545_f491_4f6c_dd1d;
        let bytes: Vec<u8> = (0..1100).map(|_| xorshift(&mut x) as u8).collect();
        for secret in [
            "",
            "one",
            "a much longer configured secret, with unicode: é日",
        ] {
            let f = Fingerprinter::from_secret(secret);
            for kind in [0, 1, 2, 3, 4, 5, 0x7f, 0xff] {
                // every length across the block and tail boundaries, and 256 + n, where the
                // length byte wraps
                for len in (0..=40).chain(250..=270).chain([1023, 1024, 1025, 1099]) {
                    let start = (xorshift(&mut x) % 8) as usize; // unaligned too
                    let value = bytes.get(start..start + len).unwrap_or_default();
                    assert_eq!(
                        f.fingerprint(kind, value),
                        old_fingerprint(&f, kind, value),
                        "{secret:?} {kind} {len}"
                    );
                }
            }
        }
        for _ in 0..20_000 {
            let f = Fingerprinter {
                k0: xorshift(&mut x),
                k1: xorshift(&mut x),
            };
            let len = (xorshift(&mut x) % 80) as usize;
            let value = bytes.get(..len).unwrap_or_default();
            let kind = xorshift(&mut x) as u8;
            assert_eq!(f.fingerprint(kind, value), old_fingerprint(&f, kind, value));
        }
    }

    #[test]
    fn fingerprints_are_pinned() {
        // Stored state: these values (from `siphasher`) must never change.
        let f = Fingerprinter::from_secret("flowguard");
        assert_eq!(f.fingerprint(1, b"session-abc"), 0xce2a_22ea_2059_f41c);
        assert_eq!(f.fingerprint(4, b"10.0.0.1"), 0xb27e_17bb_657b_eca3);
        assert_eq!(f.fingerprint(3, b""), 0x2902_24f2_3411_605f);
    }

    #[test]
    fn hex_is_the_nibble_loops() {
        let mut x = 0x9e37_79b9_7f4a_7c15;
        let edges = (0..=0xffff_u64).chain((0..64).flat_map(|b| [1 << b, (1 << b) - 1, !(1 << b)]));
        for v in edges.chain((0..200_000).map(|_| xorshift(&mut x))) {
            assert_eq!(hex(v), old_hex(v), "{v:#x}");
        }
    }

    #[test]
    fn hex_is_sixteen_lowercase_digits() {
        for v in [0, 1, 0xdead_beef, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(hex(v).as_slice(), format!("{v:016x}").as_bytes());
        }
    }
}
