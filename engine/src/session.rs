//! Which client session a request belongs to: the configured sources, tried in order.

use serde::{Deserialize, Serialize};

/// Session values longer than this are ignored (the next source is tried), so a 64 KiB
/// cookie costs one bounded hash at most.
pub const MAX_KEY_LEN: usize = 4096;

/// One place a session id can come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Source {
    /// A cookie of this name.
    Cookie(String),
    /// A request header of this name (lower case).
    Header(String),
    /// The bearer token of the `authorization` header.
    Bearer,
    /// The credentials of the `authorization` header under any of these schemes
    /// (`["Bearer", "Token"]`, case-insensitive): the same token under either is one
    /// session, as under `bearer`.
    Authorization(Vec<String>),
    /// The client address (host part only), the last resort.
    Address,
}

impl Source {
    /// A small tag mixed into the fingerprint, so the same text from two sources differs.
    pub fn kind(&self) -> u8 {
        match self {
            Source::Cookie(_) => 1,
            Source::Header(_) => 2,
            Source::Bearer | Source::Authorization(_) => 3,
            Source::Address => 4,
        }
    }

    /// The request header this source reads, if any.
    pub fn header_name(&self) -> Option<&str> {
        match self {
            Source::Cookie(_) => Some("cookie"),
            Source::Header(name) => Some(name),
            Source::Bearer | Source::Authorization(_) => Some("authorization"),
            Source::Address => None,
        }
    }
}

/// The session key found for a request: which source, and the raw value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionKey<'a> {
    pub kind: u8,
    pub value: &'a str,
}

/// Tries `sources` in order. `header` returns a request header by lower-case name;
/// `address` is Envoy's `source.address` (`ip:port`).
pub fn derive<'a>(
    sources: &[Source],
    header: impl Fn(&str) -> Option<&'a str>,
    address: Option<&'a str>,
) -> Option<SessionKey<'a>> {
    sources.iter().find_map(|source| {
        let value = match source {
            Source::Cookie(name) => header("cookie").and_then(|c| cookie_value(c, name)),
            Source::Header(name) => header(name).map(str::trim),
            Source::Bearer => header("authorization").and_then(bearer_token),
            Source::Authorization(schemes) => header("authorization")
                .and_then(|h| credentials(h, schemes.iter().map(String::as_str))),
            Source::Address => address.map(address_host),
        }?;
        (!value.is_empty() && value.len() <= MAX_KEY_LEN).then_some(SessionKey {
            kind: source.kind(),
            value,
        })
    })
}

/// The value of cookie `name` in a `cookie` header (`a=1; b=2`).
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// The token of an `authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer_token(header: &str) -> Option<&str> {
    credentials(header, std::iter::once("bearer"))
}

/// The credentials of an `authorization` header whose scheme is one of `schemes`.
pub fn credentials<'h, 's>(
    header: &'h str,
    mut schemes: impl Iterator<Item = &'s str>,
) -> Option<&'h str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    schemes
        .any(|s| s.eq_ignore_ascii_case(scheme))
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The host part of `ip:port`, `[v6]:port` or a bare address.
pub fn address_host(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => address,
    }
}

/// The default sources: a `session` cookie, a bearer token, then the client address.
pub fn default_sources() -> Vec<Source> {
    vec![
        Source::Cookie("session".into()),
        Source::Bearer,
        Source::Address,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_and_bearer_schemes_name_one_session() {
        let sources = [Source::Authorization(vec!["Bearer".into(), "Token".into()])];
        let key = |h: &'static str| derive(&sources, |n| (n == "authorization").then_some(h), None);
        let token = key("Token eyJhbGciOi.payload.sig").unwrap();
        let bearer = key("bearer eyJhbGciOi.payload.sig").unwrap();
        assert_eq!(token, bearer, "the same credentials under either scheme");
        assert_eq!(token.value, "eyJhbGciOi.payload.sig");
        assert_eq!(token.kind, Source::Bearer.kind());
        assert!(
            key("Basic dXNlcjpwYXNz").is_none(),
            "a scheme not configured"
        );
        assert!(derive(&[Source::Bearer], |_| Some("Token abc"), None).is_none());
    }
    use proptest::prelude::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn cookie_wins_then_bearer_then_address() {
        let sources = default_sources();
        let h = [
            ("cookie", "theme=dark; session=abc"),
            ("authorization", "Bearer t"),
        ];
        let key = derive(&sources, headers(&h), Some("10.0.0.1:5000")).unwrap();
        assert_eq!((key.kind, key.value), (1, "abc"));

        let h = [("authorization", "bearer  tok ")];
        let key = derive(&sources, headers(&h), Some("10.0.0.1:5000")).unwrap();
        assert_eq!((key.kind, key.value), (3, "tok"));

        let key = derive(&sources, headers(&[]), Some("10.0.0.1:5000")).unwrap();
        assert_eq!((key.kind, key.value), (4, "10.0.0.1"));
    }

    #[test]
    fn empty_or_oversized_values_fall_through() {
        let sources = vec![Source::Header("x-api-key".into()), Source::Address];
        let big = "k".repeat(MAX_KEY_LEN + 1);
        let h = [("x-api-key", big.as_str())];
        let key = derive(&sources, headers(&h), Some("[::1]:80")).unwrap();
        assert_eq!(key.value, "::1");
        let h = [("x-api-key", "  ")];
        assert_eq!(derive(&sources, headers(&h), None), None);
    }

    #[test]
    fn parses_cookies_tokens_and_addresses() {
        assert_eq!(cookie_value("a=1;session=\"x\"", "session"), Some("x"));
        assert_eq!(cookie_value("sessionx=1", "session"), None);
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(address_host("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(address_host("::1"), "::1");
        assert_eq!(address_host("[2001:db8::1]:443"), "2001:db8::1");
    }

    proptest! {
        #[test]
        fn never_panics_on_any_header(cookie in ".*", auth in ".*", addr in ".*") {
            let h = [("cookie", cookie.as_str()), ("authorization", auth.as_str())];
            let _ = derive(&default_sources(), headers(&h), Some(addr.as_str()));
        }
    }
}
