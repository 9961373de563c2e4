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

    #[test]
    fn hex_is_sixteen_lowercase_digits() {
        for v in [0, 1, 0xdead_beef, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(hex(v).as_slice(), format!("{v:016x}").as_bytes());
        }
    }
}
