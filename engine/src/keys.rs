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
/// It also names its slot ([`Key::slot`]), so a host that keeps slots in arrays indexes
/// them without reading the text (`store::Host::read_key`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key {
    bytes: [u8; 16],
    len: usize,
    kind: SlotKind,
    index: u32,
}

/// The two tables of slots, each of `session.capacity` slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    /// `fg/s/<n>`: a session's flow state.
    Session,
    /// `fg/a/<n>`: a client address's failures and anonymous requests.
    Address,
}

impl SlotKind {
    const fn prefix(self) -> &'static [u8; PREFIX_LEN] {
        match self {
            SlotKind::Session => b"fg/s/",
            SlotKind::Address => b"fg/a/",
        }
    }

    /// The slot a shared-data key names, if it is a slot key as [`Key`] writes them.
    pub fn parse(key: &str) -> Option<(SlotKind, u32)> {
        let (prefix, digits) = key.split_at_checked(PREFIX_LEN)?;
        let kind = [SlotKind::Session, SlotKind::Address]
            .into_iter()
            .find(|k| k.prefix() == prefix.as_bytes())?;
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        Some((kind, digits.parse().ok().filter(|_| canonical)?))
    }
}

impl Key {
    /// `prefix` then `index` in decimal, written digit by digit: no `fmt` machinery on
    /// the request path.
    fn new(kind: SlotKind, index: u32) -> Key {
        let prefix = kind.prefix();
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
        Key {
            bytes,
            len,
            kind,
            index,
        }
    }

    /// The slot this key names.
    pub fn slot(&self) -> (SlotKind, u32) {
        (self.kind, self.index)
    }

    pub fn as_str(&self) -> &str {
        self.bytes
            .get(..self.len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
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
    Key::new(SlotKind::Session, index)
}

/// The key of client-address slot `index`.
pub fn address_key(index: u32) -> Key {
    Key::new(SlotKind::Address, index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slot_keys_parse_as_slots() {
        assert_eq!(SlotKind::parse("fg/s/12"), Some((SlotKind::Session, 12)));
        assert_eq!(SlotKind::parse("fg/a/0"), Some((SlotKind::Address, 0)));
        for other in [
            "fg/s/",
            "fg/s/012",
            "fg/s/+1",
            "fg/s/1x",
            "fg/s/4294967296",
            "fg/reg",
            "fg/learn",
            "fg/model/v",
            "fg/used/3",
            "fg/x/1",
            "",
            "fg/s",
        ] {
            assert_eq!(SlotKind::parse(other), None, "{other}");
        }
    }

    #[test]
    fn slot_keys_fit_on_the_stack() {
        assert_eq!(slot_key(4_294_967_295).as_str(), "fg/s/4294967295");
        assert_eq!(address_key(7).as_str(), "fg/a/7");
        assert_eq!(used(3), "fg/used/3");
    }

    /// The key's text as `write!` made it before the digits were written by hand.
    fn old_key(prefix: &str, index: u32) -> String {
        format!("{prefix}{index}")
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
                assert_eq!(key.as_str(), old_key(prefix, index), "{index}");
                assert_eq!(SlotKind::parse(key.as_str()), Some(key.slot()));
            }
        }
    }
}
