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
    ///
    /// SipHash-1-3 of the message `kind` then `value`, as `SipHasher13` computes it after
    /// `write_u8(kind)` and `write(value)` (the tests check it against `siphasher`), but
    /// in straight-line words without the hasher's tail buffering: with `kind` first,
    /// each of the message's words is the top byte of `value`'s previous word (or `kind`)
    /// and the low seven bytes of its next.
    pub fn fingerprint(&self, kind: u8, value: &[u8]) -> u64 {
        let mut sip = Sip13::new(self.k0, self.k1);
        let length = value.len().wrapping_add(1) as u64; // the message's, `kind` included
        let mut carry = u64::from(kind);
        let mut words = value.chunks_exact(8);
        for word in &mut words {
            let word = word.try_into().map_or(0, u64::from_le_bytes);
            sip.compress(carry | word << 8);
            carry = word >> 56;
        }
        let tail = words.remainder();
        let mut last = carry | load_le(tail) << 8;
        if tail.len() == 7 {
            // `carry` and seven bytes: a whole word, and the length alone in the last
            sip.compress(last);
            last = 0;
        }
        sip.finish(last | (length & 0xff) << 56).max(1)
    }
}

/// SipHash-1-3's state: one round per message word, three to finish.
struct Sip13 {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
}

impl Sip13 {
    fn new(k0: u64, k1: u64) -> Self {
        Sip13 {
            v0: k0 ^ 0x736f_6d65_7073_6575,
            v1: k1 ^ 0x646f_7261_6e64_6f6d,
            v2: k0 ^ 0x6c79_6765_6e65_7261,
            v3: k1 ^ 0x7465_6462_7974_6573,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13) ^ self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16) ^ self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21) ^ self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17) ^ self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    #[inline(always)]
    fn compress(&mut self, word: u64) {
        self.v3 ^= word;
        self.round();
        self.v0 ^= word;
    }

    #[inline(always)]
    fn finish(mut self, last: u64) -> u64 {
        self.compress(last);
        self.v2 ^= 0xff;
        self.round();
        self.round();
        self.round();
        self.v0 ^ self.v1 ^ self.v2 ^ self.v3
    }
}

/// Up to 7 bytes as a little-endian integer (4-, 2- and 1-byte loads, no loop).
#[inline(always)]
fn load_le(bytes: &[u8]) -> u64 {
    let mut out = 0;
    let mut at = 0;
    if let Some(four) = bytes.first_chunk::<4>() {
        out = u64::from(u32::from_le_bytes(*four));
        at = 4;
    }
    if let Some(two) = bytes.get(at..).and_then(<[u8]>::first_chunk::<2>) {
        out |= u64::from(u16::from_le_bytes(*two)) << (8 * at);
        at += 2;
    }
    if let Some(&one) = bytes.get(at) {
        out |= u64::from(one) << (8 * at);
    }
    out
}

/// A fingerprint as the 16 lowercase hex digits of `x-flowguard-session`, on the stack.
///
/// All sixteen digits at once in a `u128`, one byte per nibble: the nibbles are spread
/// apart by halves (32, 16, 8, 4 bits), then each byte `n` becomes `b'0' + n`, plus
/// `b'a' - b'0' - 10` where `n > 9` (`n + 6` carries into bit 4 exactly then; no byte
/// overflows into the next).
pub fn hex(fingerprint: u64) -> [u8; 16] {
    let x = u128::from(fingerprint);
    let x = (x & 0xffff_ffff) | (x & 0xffff_ffff_0000_0000) << 32;
    let x = (x & 0x0000_0000_0000_ffff_0000_0000_0000_ffff)
        | (x & 0x0000_0000_ffff_0000_0000_0000_ffff_0000) << 16;
    let x = (x & 0x0000_00ff_0000_00ff_0000_00ff_0000_00ff)
        | (x & 0x0000_ff00_0000_ff00_0000_ff00_0000_ff00) << 8;
    let x = (x & 0x000f_000f_000f_000f_000f_000f_000f_000f)
        | (x & 0x00f0_00f0_00f0_00f0_00f0_00f0_00f0_00f0) << 4;
    const ONES: u128 = u128::MAX / 0xff; // 0x0101...01
    let letters = ((x + 6 * ONES) >> 4) & ONES;
    (x + u128::from(b'0') * ONES + letters * u128::from(b'a' - b'0' - 10)).to_be_bytes()
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
