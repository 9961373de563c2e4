//! Every key flowguard keeps in shared data (Envoy's, or any [`crate::store::Host`]), in one
//! place:
//!
//! - `fg/s/<n>` session slots and `fg/a/<n>` client-address slots ([`slot_key`],
//!   [`address_key`]: written by compare-and-swap, `crate::judge` and `crate::exchange`);
//! - `fg/reg` the learning registry of templates ([`REGISTRY`]);
//! - `fg/learn` the merged learning counters ([`STATS`]; `crate::node`);
//! - `fg/model/v` the active model's version, the cheap probe every tick and first
//!   request reads ([`MODEL_VERSION`]), and `fg/model` its policy JSON ([`MODEL`]);
//! - `fg/used/<version>` when each endpoint of that model was last used ([`used`]).

use std::fmt::Write;

pub const REGISTRY: &str = "fg/reg";
pub const STATS: &str = "fg/learn";
pub const MODEL_VERSION: &str = "fg/model/v";
pub const MODEL: &str = "fg/model";

/// The last-use times of model `version`'s endpoints.
pub fn used(version: u64) -> String {
    format!("fg/used/{version}")
}

/// A shared-data key of a slot (`fg/s/<n>`, `fg/a/<n>`: at most 15 bytes), on the stack,
/// passed by value: the request path neither allocates one nor shares a buffer for it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key {
    bytes: [u8; 16],
    len: usize,
}

impl Key {
    /// `prefix` then `index` in decimal, written digit by digit: no `fmt` machinery on
    /// the request path.
    fn new(prefix: &[u8; PREFIX_LEN], index: u32) -> Key {
        let mut bytes = [0; 16];
        let digits = index.checked_ilog10().map_or(1, |log| log as usize + 1);
        let len = PREFIX_LEN + digits; // at most 5 + 10 bytes
        for (to, from) in bytes.iter_mut().zip(prefix) {
            *to = *from;
        }
        let mut rest = index;
        let mut at = len;
        while at > PREFIX_LEN {
            at -= 1;
            if let Some(digit) = bytes.get_mut(at) {
                *digit = b'0' + (rest % 10) as u8;
            }
            rest /= 10;
        }
        Key { bytes, len }
    }

    pub fn as_str(&self) -> &str {
        self.bytes
            .get(..self.len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }
}

impl Write for Key {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let room = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The length of a slot key's prefix (`fg/s/`, `fg/a/`).
const PREFIX_LEN: usize = 5;

/// The key of session slot `index`.
pub fn slot_key(index: u32) -> Key {
    Key::new(b"fg/s/", index)
}

/// The key of client-address slot `index`.
pub fn address_key(index: u32) -> Key {
    Key::new(b"fg/a/", index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_keys_fit_on_the_stack() {
        assert_eq!(slot_key(4_294_967_295).as_str(), "fg/s/4294967295");
        assert_eq!(address_key(7).as_str(), "fg/a/7");
        assert_eq!(used(3), "fg/used/3");
    }

    /// The key as `write!` made it before the digits were written by hand.
    fn old_key(prefix: &str, index: u32) -> Key {
        let mut key = Key {
            bytes: [0; 16],
            len: 0,
        };
        let _ = write!(key, "{prefix}{index}");
        key
    }

    #[test]
    fn keys_are_what_write_made() {
        let mut x = 0x2545_f491_4f6c_dd1d_u64; // xorshift, deterministic
        let edges = (0..=10_000)
            .chain((1..10).flat_map(|d| [10u32.pow(d) - 1, 10u32.pow(d), 10u32.pow(d) + 1]))
            .chain([u32::MAX - 1, u32::MAX, 16_383, 16_384, 65_535]);
        let random = (0..200_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> (x % 32)) as u32 // every magnitude
        });
        for index in edges.chain(random) {
            for (key, prefix) in [(slot_key(index), "fg/s/"), (address_key(index), "fg/a/")] {
                let old = old_key(prefix, index);
                assert_eq!(key, old, "{index}"); // the whole buffer and the length
                assert_eq!(key.as_str(), format!("{prefix}{index}"));
            }
        }
    }
}
