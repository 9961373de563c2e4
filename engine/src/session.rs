//! Which client session a request belongs to: the configured sources, tried in order.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

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
    /// A claim of the JWT in the `authorization` header (`Bearer` or `Token`), such as
    /// `sub`: refreshed tokens of one user stay one session. flowguard does not verify the
    /// token: Envoy's `jwt_authn` must, before this filter, or a client could name any
    /// session it likes.
    #[serde(rename = "jwt_claim")]
    JwtClaim(String),
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
            Source::JwtClaim(_) => 5,
        }
    }

    /// The request header this source reads, if any.
    pub fn header_name(&self) -> Option<&str> {
        match self {
            Source::Cookie(_) => Some("cookie"),
            Source::Header(name) => Some(name),
            Source::Bearer | Source::Authorization(_) | Source::JwtClaim(_) => {
                Some("authorization")
            }
            Source::Address => None,
        }
    }
}

/// The session key found for a request: which source, and the raw value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionKey<'a> {
    pub kind: u8,
    pub value: Cow<'a, str>,
}

/// Tries `sources` in order. `header` returns a request header by lower-case name;
/// `address` is Envoy's `source.address` (`ip:port`).
pub fn derive<'a>(
    sources: &[Source],
    header: impl Fn(&str) -> Option<&'a str>,
    address: Option<&'a str>,
) -> Option<SessionKey<'a>> {
    sources.iter().find_map(|source| {
        let value: Cow<'a, str> = match source {
            Source::Cookie(name) => header("cookie").and_then(|c| cookie_value(c, name))?.into(),
            Source::Header(name) => header(name).map(trim)?.into(),
            Source::Bearer => header("authorization").and_then(bearer_token)?.into(),
            Source::Authorization(schemes) => header("authorization")
                .and_then(|h| credentials(h, schemes.iter().map(String::as_str)))?
                .into(),
            Source::JwtClaim(claim) => header("authorization")
                .and_then(|h| credentials(h, ["bearer", "token"].into_iter()))
                .and_then(|token| jwt_claim(token, claim))?
                .into(),
            Source::Address => address.map(address_host)?.into(),
        };
        (!value.is_empty() && value.len() <= MAX_KEY_LEN).then_some(SessionKey {
            kind: source.kind(),
            value,
        })
    })
}

/// The value of top-level claim `claim` in a JWT's payload (`header.payload.signature`,
/// base64url): a string's raw text or a number's. Nothing is verified here.
pub fn jwt_claim(token: &str, claim: &str) -> Option<String> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    if payload.len() > MAX_KEY_LEN * 2 {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    top_level_value(&json, claim)
}

/// The field at `path` of a JSON object (`token`, or `user.token` for a field of a nested
/// object; see [`top_level_value`]), bounded by [`MAX_KEY_LEN`]: a value longer than a
/// session key is no session key.
pub fn json_field(json: &[u8], path: &str) -> Option<String> {
    let (parents, key) = match path.rsplit_once('.') {
        Some((parents, key)) => (Some(parents), key),
        None => (None, path),
    };
    let mut object = json;
    for parent in parents.into_iter().flat_map(|p| p.split('.')) {
        object = raw_value(object, parent).filter(|v| v.first() == Some(&b'{'))?;
    }
    top_level_value(object, key).filter(|v| !v.is_empty() && v.len() <= MAX_KEY_LEN)
}

/// Scans a JSON object's top level for `key` without building a document: string values
/// come back as their raw text, numbers and literals as written; nested values are
/// skipped by depth (strings' escapes honoured). Malformed input gives `None`.
fn top_level_value(json: &[u8], key: &str) -> Option<String> {
    let raw = raw_value(json, key)?;
    let text = match raw.first() {
        Some(b'"') => raw.get(1..raw.len().saturating_sub(1))?,
        Some(b'{' | b'[') => return None,
        _ => raw,
    };
    std::str::from_utf8(text).ok().map(str::to_owned)
}

/// The raw text of the top-level field `key` of a JSON object (an object or array value
/// whole, a string with its quotes).
fn raw_value<'j>(json: &'j [u8], key: &str) -> Option<&'j [u8]> {
    let mut i = json.iter().position(|b| !b.is_ascii_whitespace())?;
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(json, i);
        let (k, after) = string_at(json, i)?;
        i = skip_ws(json, after);
        if json.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(json, i + 1);
        let end = value_end(json, i)?;
        if k == key.as_bytes() {
            return json.get(i..end);
        }
        i = skip_ws(json, end);
        match json.get(i) {
            Some(b',') => i += 1,
            _ => return None, // `}` or malformed: the key is not there
        }
    }
}

fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while json.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// The string starting at `i` (its raw bytes) and the index after its closing quote.
fn string_at(json: &[u8], i: usize) -> Option<(&[u8], usize)> {
    if json.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match json.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some((json.get(i + 1..j)?, j + 1)),
            _ => j += 1,
        }
    }
}

/// The index just after the JSON value starting at `i`.
fn value_end(json: &[u8], i: usize) -> Option<usize> {
    match json.get(i)? {
        b'"' => string_at(json, i).map(|(_, end)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match json.get(j)? {
                    b'"' => {
                        j = string_at(json, j)?.1;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let n = json
                .get(i..)?
                .iter()
                .take_while(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
                .count();
            (n > 0).then_some(i + n)
        }
    }
}

/// The value of cookie `name` in a `cookie` header (`a=1; b=2`): the first pair whose
/// name, trimmed, is `name`, its value trimmed and stripped of quotes.
///
/// This runs on every request: it looks for `;` eight bytes at a time and for each pair's
/// first `=` the same way (both ASCII, so every cut is a char boundary), rather than
/// through `split`/`split_once`'s char searchers.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = header;
    loop {
        let end = find_byte(rest.as_bytes(), b';');
        let pair = rest.get(..end.unwrap_or(rest.len()))?;
        if let Some(eq) = find_byte(pair.as_bytes(), b'=') {
            if trim(pair.get(..eq)?) == name {
                return Some(trim_quotes(trim(pair.get(eq + 1..)?)));
            }
        }
        rest = rest.get(end? + 1..)?;
    }
}

/// Where `needle` first is in `bytes` (the `memchr` crate: a word at a time).
fn find_byte(bytes: &[u8], needle: u8) -> Option<usize> {
    memchr::memchr(needle, bytes)
}

/// `s.trim()`, exactly, cheaper on ASCII: ASCII whitespace (what `char::is_whitespace`
/// says of ASCII, `\x0b` included) is stripped byte by byte; only when a non-ASCII byte is
/// left at either end (U+00A0, U+2003, ...) does the char-based `trim` decide the rest.
/// Every whitespace char stripped here `trim` would strip too, so the result is the same.
fn trim(s: &str) -> &str {
    let bytes = s.as_bytes();
    let mut start = 0;
    while bytes.get(start).is_some_and(|&b| is_space(b)) {
        start += 1;
    }
    let mut end = bytes.len();
    while end > start && bytes.get(end - 1).is_some_and(|&b| is_space(b)) {
        end -= 1;
    }
    // Only ASCII bytes were skipped: both cuts are char boundaries.
    let t = s.get(start..end).unwrap_or_default();
    match (t.as_bytes().first(), t.as_bytes().last()) {
        (Some(&first), Some(&last)) if !first.is_ascii() || !last.is_ascii() => t.trim(),
        _ => t,
    }
}

/// Whether ASCII byte `b` is whitespace to `char::is_whitespace` (U+0009..=U+000D, U+0020;
/// unlike `u8::is_ascii_whitespace`, U+000B counts).
const fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// `s.trim_matches('"')` on bytes (a `"` byte is always the whole char).
fn trim_quotes(s: &str) -> &str {
    let bytes = s.as_bytes();
    let start = bytes.iter().position(|&b| b != b'"').unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b'"')
        .map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or_default()
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
    let header = trim(header);
    let space = find_byte(header.as_bytes(), b' ')?;
    let scheme = header.get(..space)?;
    let token = header.get(space + 1..)?;
    schemes
        .any(|s| s.eq_ignore_ascii_case(scheme))
        .then(|| trim(token))
        .filter(|t| !t.is_empty())
}

/// The host part of `ip:port`, `[v6]:port` or a bare address.
pub fn address_host(address: &str) -> &str {
    let bytes = address.as_bytes();
    if bytes.first() == Some(&b'[') {
        let rest = address.get(1..).unwrap_or_default();
        let close = rest.as_bytes().iter().position(|&b| b == b']');
        return close.and_then(|i| rest.get(..i)).unwrap_or(rest);
    }
    // `host:port` with exactly one `:` and a port of digits only (or none).
    let Some(colon) = bytes.iter().position(|&b| b == b':') else {
        return address;
    };
    let port = bytes.get(colon + 1..).unwrap_or_default();
    if port.iter().all(u8::is_ascii_digit) {
        return address.get(..colon).unwrap_or(address);
    }
    address
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

    fn jwt(payload: &str) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.c2ln",
            b64.encode(r#"{"alg":"RS256"}"#),
            b64.encode(payload)
        )
    }

    #[test]
    fn a_jwt_claim_keeps_refreshed_tokens_one_session() {
        let sources = [Source::JwtClaim("sub".into())];
        let first = format!("Bearer {}", jwt(r#"{"sub":"user-17","iat":1,"exp":2}"#));
        let refreshed = format!(
            "Token {}",
            jwt(r#"{"iat":900,"nested":{"sub":"x"},"note":"a \"sub\": y","sub":"user-17"}"#)
        );
        let key = |h: &str| {
            derive(&sources, |n| (n == "authorization").then_some(h), None)
                .map(|k| (k.kind, k.value.into_owned()))
        };
        assert_eq!(key(&first), Some((5, "user-17".to_owned())));
        assert_eq!(key(&first), key(&refreshed));
        assert_eq!(
            jwt_claim(&jwt(r#"{"sub":42}"#), "sub").as_deref(),
            Some("42")
        );
        for bad in ["Bearer not-a-jwt", "Bearer a.!!!.c", "Basic dXNlcg=="] {
            assert_eq!(key(bad), None, "{bad}");
        }
        assert_eq!(
            key(&format!("Bearer {}", jwt(r#"{"name":"no sub"}"#))),
            None
        );
        assert_eq!(key(&format!("Bearer {}", jwt(r#"{"sub":{"id":1}}"#))), None);
    }

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
        assert_eq!((key.kind, key.value.as_ref()), (1, "abc"));

        let h = [("authorization", "bearer  tok ")];
        let key = derive(&sources, headers(&h), Some("10.0.0.1:5000")).unwrap();
        assert_eq!((key.kind, key.value.as_ref()), (3, "tok"));

        let key = derive(&sources, headers(&[]), Some("10.0.0.1:5000")).unwrap();
        assert_eq!((key.kind, key.value.as_ref()), (4, "10.0.0.1"));
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

    /// The byte-level parsers before they were rewritten, to check the new ones against.
    mod old {
        use super::super::{jwt_claim, Source};
        use std::borrow::Cow;

        pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
            header.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"'))
            })
        }

        pub fn bearer_token(header: &str) -> Option<&str> {
            credentials(header, std::iter::once("bearer"))
        }

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

        pub fn address_host(address: &str) -> &str {
            if let Some(rest) = address.strip_prefix('[') {
                return rest.split(']').next().unwrap_or(rest);
            }
            match address.rsplit_once(':') {
                Some((host, port))
                    if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    host
                }
                _ => address,
            }
        }

        pub fn derive<'a>(
            sources: &[Source],
            header: impl Fn(&str) -> Option<&'a str>,
            address: Option<&'a str>,
        ) -> Option<(u8, Cow<'a, str>)> {
            sources.iter().find_map(|source| {
                let value: Cow<'a, str> = match source {
                    Source::Cookie(name) => {
                        header("cookie").and_then(|c| cookie_value(c, name))?.into()
                    }
                    Source::Header(name) => header(name).map(str::trim)?.into(),
                    Source::Bearer => header("authorization").and_then(bearer_token)?.into(),
                    Source::Authorization(schemes) => header("authorization")
                        .and_then(|h| credentials(h, schemes.iter().map(String::as_str)))?
                        .into(),
                    Source::JwtClaim(claim) => header("authorization")
                        .and_then(|h| credentials(h, ["bearer", "token"].into_iter()))
                        .and_then(|token| jwt_claim(token, claim))?
                        .into(),
                    Source::Address => address.map(super::super::address_host)?.into(),
                };
                (!value.is_empty() && value.len() <= super::super::MAX_KEY_LEN)
                    .then_some((source.kind(), value))
            })
        }
    }

    /// Fragments that make the parsers' edge cases: separators, ASCII and Unicode
    /// whitespace (`\x0b` is whitespace to `str::trim`, not to `u8::is_ascii_whitespace`),
    /// quotes, names that are prefixes of others, schemes in any case, addresses.
    const PIECES: &[&str] = &[
        "",
        " ",
        "  ",
        "\t",
        "\n",
        "\r",
        "\x0b",
        "\x0c",
        "\u{a0}",
        "\u{2003}",
        "\u{3000}",
        "\u{85}",
        "\u{1680}",
        "\u{200b}",
        "\u{feff}",
        "é",
        "日",
        ";",
        ";;",
        "; ",
        "=",
        "==",
        "\"",
        "\"\"",
        "session",
        "sessionx",
        "sessio",
        "Session",
        "x",
        "abc",
        "a=1",
        "session=",
        "session=abc",
        " session = \"v\" ",
        "Bearer",
        "bearer",
        "BEARER",
        "Token",
        "Basic",
        "Bearer ",
        "token ",
        "eyJ.a.b",
        "10.0.0.1",
        ":",
        "::",
        ":80",
        ":0",
        "[",
        "]",
        "[::1]",
        "[2001:db8::1]:443",
        "127.0.0.1:5000",
        "4294967295",
        ".",
        "0",
        "9",
        "-",
        "\u{0}",
    ];

    /// A deterministic xorshift, so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn text(&mut self) -> String {
            let n = self.below(12);
            (0..n)
                .map(|_| {
                    PIECES
                        .get(self.below(PIECES.len()))
                        .copied()
                        .unwrap_or_default()
                })
                .collect()
        }
    }

    fn all_agree(header: &str, name: &str) {
        assert_eq!(
            cookie_value(header, name),
            old::cookie_value(header, name),
            "cookie_value({header:?}, {name:?})"
        );
        assert_eq!(
            bearer_token(header),
            old::bearer_token(header),
            "{header:?}"
        );
        let schemes = [name, "token", "Bearer"];
        assert_eq!(
            credentials(header, schemes.into_iter()),
            old::credentials(header, schemes.into_iter()),
            "credentials({header:?}, {name:?})"
        );
        assert_eq!(
            address_host(header),
            old::address_host(header),
            "{header:?}"
        );
        assert_eq!(trim(header), header.trim(), "{header:?}");
        assert_eq!(trim_quotes(header), header.trim_matches('"'), "{header:?}");
        let sources = [
            Source::Header("x-key".into()),
            Source::Cookie(name.into()),
            Source::Authorization(vec![name.into(), "Token".into()]),
            Source::Bearer,
            Source::Address,
        ];
        let h = [
            ("x-key", name),
            ("cookie", header),
            ("authorization", header),
        ];
        for n in 0..sources.len() {
            let sources = sources.get(n..).unwrap_or_default();
            assert_eq!(
                derive(sources, headers(&h), Some(header)).map(|k| (k.kind, k.value)),
                old::derive(sources, headers(&h), Some(header)),
                "derive({header:?}, {name:?}) from source {n}"
            );
        }
    }

    #[test]
    fn find_byte_is_position() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..20_000 {
            let len = rng.below(40);
            // few distinct bytes, so needles come often, in runs and at every offset
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    b"=; a\x80\xff"
                        .get(rng.below(6))
                        .copied()
                        .unwrap_or_default()
                })
                .collect();
            for needle in [b'=', b';', b' ', b'a', 0x80, 0xff, 0, b'b'] {
                let start = rng.below(len + 1);
                let bytes = bytes.get(start..).unwrap_or_default();
                assert_eq!(
                    find_byte(bytes, needle),
                    bytes.iter().position(|&b| b == needle),
                    "{bytes:?} {needle}"
                );
            }
        }
    }

    #[test]
    fn is_space_is_char_whitespace_on_ascii() {
        for b in 0..=0x7fu8 {
            assert_eq!(is_space(b), char::from(b).is_whitespace(), "{b:#x}");
        }
    }

    #[test]
    fn byte_parsers_agree_with_the_char_parsers() {
        for header in PIECES {
            for name in PIECES {
                all_agree(header, name);
            }
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..100_000 {
            let header = rng.text();
            let name = if rng.below(2) == 0 {
                "session".to_owned()
            } else {
                rng.text()
            };
            all_agree(&header, &name);
        }
        for (header, name) in [
            ("session=a; session=b", "session"),
            ("sessionx=1; session=2", "session"),
            ("x=1; session", "session"),
            ("session=a=b=c", "session"),
            (" \u{a0}session\u{2003}=\u{a0}\"v\"\t;", "session"),
            ("\u{a0}session=v", "\u{a0}session"),
            (";;;;session=v;;", "session"),
            ("=v", ""),
            ("Bearer\t\u{a0}tok\u{a0}", "x"),
            ("\u{2003}Token  tok ", "token"),
        ] {
            all_agree(header, name);
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_any_header(cookie in ".*", auth in ".*", addr in ".*") {
            let h = [("cookie", cookie.as_str()), ("authorization", auth.as_str())];
            let _ = derive(&default_sources(), headers(&h), Some(addr.as_str()));
            let _ = derive(&[Source::JwtClaim("sub".into())], headers(&h), None);
        }

        #[test]
        fn byte_parsers_agree_on_any_text(header in ".*", name in ".{0,8}") {
            all_agree(&header, &name);
            all_agree(&format!("{name}={header}"), &name);
        }

        #[test]
        fn any_jwt_payload_is_scanned_safely(payload in proptest::collection::vec(any::<u8>(), 0..300), claim in "[a-z]{1,4}") {
            use base64::Engine;
            let token = format!("a.{}.c", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&payload));
            let _ = jwt_claim(&token, &claim);
        }
    }
}
