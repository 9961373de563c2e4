//! What the response phase needs from an answer's headers, read in one host call.
//!
//! The profile (`bench/results/profile.md`) prices a header read at about the same as the
//! whole map: the cost is the call and the copy into the VM, not the map's size. An answer
//! that needs more than its status (a 2xx to inspect, to judge by its body, or that may
//! set the next session cookie) is read whole, once, instead of header by header.

use crate::host::{self, HostResult};
use crate::worker::Worker;
use flowguard_engine::handover;
use flowguard_engine::header_map::decode_pairs;
use proxy_wasm::types::MapType;

#[derive(Clone, Copy, Debug, Default)]
pub struct ResponseHead {
    /// 0 when missing or unreadable.
    pub status: u16,
    /// `content-type` names JSON.
    pub json: bool,
    pub content_length: Option<u64>,
    /// The session a configured session cookie in `set-cookie` starts.
    pub cookie_session: Option<u64>,
}

impl ResponseHead {
    /// Reads the status alone, or (`whole`) every header at once.
    pub fn read(w: &Worker, whole: bool) -> HostResult<ResponseHead> {
        if !whole {
            let status = host::header(MapType::HttpResponseHeaders, ":status")?;
            return Ok(ResponseHead {
                status: status.as_deref().map_or(0, parse_status),
                ..ResponseHead::default()
            });
        }
        let bytes = host::header_pairs(MapType::HttpResponseHeaders)?;
        let mut head = ResponseHead::default();
        let reads_cookie = w.settings.session.reads_set_cookie();
        for (name, value) in decode_pairs(&bytes) {
            if name == b":status" {
                head.status = parse_status(value);
            } else if name.eq_ignore_ascii_case(b"content-type") {
                head.json = value.windows(4).any(|w| w.eq_ignore_ascii_case(b"json"));
            } else if name.eq_ignore_ascii_case(b"content-length") {
                head.content_length = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
            } else if reads_cookie
                && head.cookie_session.is_none()
                && name.eq_ignore_ascii_case(b"set-cookie")
            {
                head.cookie_session = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| handover::from_set_cookie(&w.settings.session.sources, v))
                    .map(|key| crate::handover::fingerprint(w, &key));
            }
        }
        Ok(head)
    }
}

fn parse_status(value: &[u8]) -> u16 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}
