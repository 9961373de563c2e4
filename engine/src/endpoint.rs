//! Endpoint normalisation: `method + path` to a template such as `POST /api/orders/{id}/pay`.
//!
//! The template a rule sees must be the one the upstream serves, so the path is decoded
//! and canonicalised first (percent-escapes, dot segments, doubled slashes, `;` params).

use percent_encoding::percent_decode_str;
use std::borrow::Cow;
use std::collections::HashSet;

/// Paths longer than this, or with more segments, map to one overlong template.
pub const MAX_PATH_LEN: usize = 2048;
pub const MAX_SEGMENTS: usize = 32;
/// A literal segment longer than this is treated as an identifier.
const MAX_LITERAL_LEN: usize = 64;
/// The placeholder for an identifier segment.
pub const ID: &str = "{id}";

/// A template declared in configuration: optional method, segments with `{name}` wildcards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredTemplate {
    method: Option<String>,
    segments: Vec<String>,
    text: String,
}

impl DeclaredTemplate {
    /// Parses `"GET /api/users/{name}"` or `"/api/users/{name}"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (method, path) = match text.split_once(' ') {
            Some((m, p)) => (Some(m.trim().to_ascii_uppercase()), p.trim()),
            None => (None, text),
        };
        if !path.starts_with('/') {
            return Err(format!("expected a path starting with '/', got {text:?}"));
        }
        if method
            .as_deref()
            .is_some_and(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()))
        {
            return Err(format!("expected METHOD /path, got {text:?}"));
        }
        let segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(DeclaredTemplate {
            method,
            segments,
            text: path.to_owned(),
        })
    }

    fn literal_segments(&self) -> usize {
        self.segments.iter().filter(|s| !is_wildcard(s)).count()
            + usize::from(self.method.is_some())
    }

    fn matches<S: AsRef<str>>(&self, method: &str, segments: &[S]) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && self.segments.len() == segments.len()
            && self
                .segments
                .iter()
                .zip(segments)
                .all(|(t, s)| is_wildcard(t) || t == s.as_ref())
    }
}

fn is_wildcard(segment: &str) -> bool {
    segment.len() >= 2 && segment.starts_with('{') && segment.ends_with('}')
}

/// Turns requests into templates. Declared templates win over the built-in classifiers;
/// learned variable prefixes (`GET /api/users`) turn the segment after them into `{id}`.
#[derive(Clone, Debug, Default)]
pub struct Normaliser {
    declared: Vec<DeclaredTemplate>,
    variable_prefixes: HashSet<String>,
    id_params: Vec<String>,
    case_insensitive: bool,
}

impl Normaliser {
    pub fn new(mut declared: Vec<DeclaredTemplate>, variable_prefixes: HashSet<String>) -> Self {
        // The most specific template wins: `/pet/findByStatus` before `/pet/{petId}`,
        // whatever order a spec lists them in (the first match is taken).
        declared.sort_by_key(|t| std::cmp::Reverse(t.literal_segments()));
        Normaliser {
            declared,
            variable_prefixes,
            id_params: Vec::new(),
            case_insensitive: false,
        }
    }

    /// Builds templates from the lower-cased path, for upstreams that ignore case.
    pub fn case_insensitive(mut self, on: bool) -> Self {
        self.case_insensitive = on;
        self
    }

    /// Also treats these query parameters' values as identifiers (`?page=3`).
    pub fn with_id_params(mut self, params: Vec<String>) -> Self {
        self.id_params = params;
        self
    }

    /// Writes the template of `method path` into `out` (cleared first). Returns a hash of
    /// the identifier values (the segments that became placeholders, and configured query
    /// parameters), for counting distinct identifiers.
    pub fn normalise(&self, method: &str, path: &str, out: &mut String) -> Option<u64> {
        out.clear();
        let method = canonical_method(method);
        out.push_str(method);
        out.push(' ');
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let path = path.split('#').next().unwrap_or("");
        let lowered;
        let path = if self.case_insensitive && path.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = path.to_ascii_lowercase();
            lowered.as_str()
        } else {
            path
        };
        // Most paths are canonical already (no escapes, `;` params or dot segments): their
        // segments are slices of the path, on the stack. The rest are decoded.
        let mut plain = [""; MAX_SEGMENTS];
        let mut ids = match plain_segments(path, &mut plain) {
            Some(n) => self.template(method, plain.get(..n).unwrap_or_default(), out),
            None => match canonical_segments(path) {
                Some(segments) => self.template(method, &segments, out),
                None => {
                    out.push_str("/{overlong}");
                    return None;
                }
            },
        };
        if !self.id_params.is_empty() {
            for pair in query.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if self.id_params.iter().any(|p| p == k) {
                    ids.add(v);
                }
            }
        }
        ids.finish()
    }
}

impl Normaliser {
    /// Appends the template of canonical `segments` to `out`; returns the hash of the
    /// identifier values so far.
    fn template<S: AsRef<str>>(&self, method: &str, segments: &[S], out: &mut String) -> IdHash {
        let mut ids = IdHash::default();
        if let Some(t) = self.declared.iter().find(|t| t.matches(method, segments)) {
            out.push_str(&t.text);
            for (t, s) in t.segments.iter().zip(segments) {
                if is_wildcard(t) {
                    ids.add(s.as_ref());
                }
            }
            return ids;
        }
        if segments.is_empty() {
            out.push('/');
        }
        for segment in segments {
            let segment = segment.as_ref();
            let variable =
                !self.variable_prefixes.is_empty() && self.variable_prefixes.contains(out.as_str());
            out.push('/');
            if variable || is_identifier(segment) {
                out.push_str(ID);
                ids.add(segment);
            } else {
                out.push_str(segment);
            }
        }
        ids
    }
}

/// The segments of a path that needs no decoding (no `%` escape, no `;` parameter, no
/// `.` or `..` segment), empty ones dropped, written into `out`; how many there are.
/// `None`: the path needs [`canonical_segments`] (or is too long for it).
fn plain_segments<'p>(path: &'p str, out: &mut [&'p str; MAX_SEGMENTS]) -> Option<usize> {
    if path.len() > MAX_PATH_LEN {
        return None;
    }
    let mut n = 0;
    let mut start = 0;
    // Every byte that ends or rules out a plain segment is ASCII, so each slice is at a
    // character boundary.
    for (i, b) in path.bytes().chain(std::iter::once(b'/')).enumerate() {
        match b {
            b'%' | b';' => return None,
            b'/' => {
                match path.get(start..i)? {
                    "" => {}
                    "." | ".." => return None,
                    segment => {
                        *out.get_mut(n)? = segment;
                        n += 1;
                    }
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    Some(n)
}

/// Hash of identifier values, in order.
#[derive(Default)]
struct IdHash(Option<siphasher::sip::SipHasher13>);

impl IdHash {
    fn add(&mut self, value: &str) {
        use std::hash::Hasher;
        let h = self
            .0
            .get_or_insert_with(|| siphasher::sip::SipHasher13::new_with_keys(7, 11));
        h.write(value.as_bytes());
        h.write_u8(0xff);
    }

    fn finish(self) -> Option<u64> {
        use std::hash::Hasher;
        self.0.map(|h| h.finish())
    }
}

/// HEAD is served as GET by every HTTP server, so it shares GET's template.
fn canonical_method(method: &str) -> &str {
    const KNOWN: [&str; 8] = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    if method.eq_ignore_ascii_case("HEAD") {
        return "GET";
    }
    KNOWN
        .into_iter()
        .find(|k| k.eq_ignore_ascii_case(method))
        .unwrap_or("OTHER")
}

/// Decoded segments with empty and `.` segments dropped and `..` applied; `None` if too long.
fn canonical_segments(path: &str) -> Option<Vec<Cow<'_, str>>> {
    if path.len() > MAX_PATH_LEN {
        return None;
    }
    let mut out: Vec<Cow<'_, str>> = Vec::new();
    for raw in path.split('/') {
        let raw = raw.split(';').next().unwrap_or("");
        let segment = percent_decode_str(raw).decode_utf8_lossy();
        match segment.as_ref() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => {
                if out.len() == MAX_SEGMENTS {
                    return None;
                }
                out.push(segment);
            }
        }
    }
    Some(out)
}

/// Whether a path segment is an identifier by its shape alone: a number, a UUID, long
/// hex (Mongo ObjectIds included), a token-like run, an e-mail address, a date or time,
/// or letters mixed with at least four digits (`user00017`, `ord-2024-0042`). Short
/// mixes such as `v2`, `oauth2` or `sha256` stay literal: they name API versions and
/// features. Names without digits (`alice`) are learned instead, from how many values
/// their position takes.
pub fn is_identifier(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    // One pass over the segment gathers what every test below asks.
    let (mut digits, mut letters) = (0usize, 0usize);
    let (mut hex, mut at, mut date_like, mut token_like) = (true, false, true, true);
    for &b in bytes {
        if b.is_ascii_digit() {
            digits += 1;
        } else if b.is_ascii_alphabetic() {
            letters += 1;
            hex &= b.is_ascii_hexdigit();
        } else {
            hex = false;
            at |= b == b'@';
            date_like &= matches!(b, b'-' | b':' | b'.' | b'_' | b'+');
            token_like &= matches!(b, b'-' | b'_' | b'=' | b'+' | b'.');
        }
    }
    if digits == bytes.len() {
        return !bytes.is_empty();
    }
    if bytes.len() > MAX_LITERAL_LEN || is_uuid(bytes) {
        return true;
    }
    if bytes.len() >= 16 && hex {
        return true;
    }
    if at && is_email(bytes) {
        return true;
    }
    let separators = bytes.len() - digits - letters;
    // Dates and times: 2024-01-31, 2024-01-31T10:00:00Z, 10:30.
    if digits >= 4 && letters <= 2 && date_like {
        return true;
    }
    if !token_like || letters == 0 || digits == 0 {
        return false;
    }
    bytes.len() >= 20 || (digits >= 4 && separators <= 2)
}

/// `local@domain.tld`, loosely: identifiers, not validation.
fn is_email(b: &[u8]) -> bool {
    let Some(at) = b.iter().position(|c| *c == b'@') else {
        return false;
    };
    let (local, domain) = (
        b.get(..at).unwrap_or_default(),
        b.get(at + 1..).unwrap_or_default(),
    );
    !local.is_empty() && domain.len() >= 3 && domain.contains(&b'.') && !domain.contains(&b'@')
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Splits a template into its method and the path segments after it.
pub fn template_parts(template: &str) -> (&str, impl Iterator<Item = &str>) {
    let (method, path) = template.split_once(' ').unwrap_or(("", template));
    (method, path.split('/').filter(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(n: &Normaliser, method: &str, path: &str) -> String {
        let mut out = String::new();
        n.normalise(method, path, &mut out);
        out
    }

    #[test]
    fn case_folds_only_when_the_upstream_ignores_case() {
        let mut out = String::new();
        Normaliser::default().normalise("GET", "/API/Menu", &mut out);
        assert_eq!(out, "GET /API/Menu");
        Normaliser::default()
            .case_insensitive(true)
            .normalise("GET", "/API/Menu", &mut out);
        assert_eq!(out, "GET /api/menu");
    }

    #[test]
    fn identifier_values_are_hashed() {
        let n = Normaliser::default().with_id_params(vec!["page".into()]);
        let mut out = String::new();
        let a = n.normalise("GET", "/orders/1", &mut out);
        let b = n.normalise("GET", "/orders/2", &mut out);
        let a2 = n.normalise("GET", "/orders/1?x=1", &mut out);
        assert!(a.is_some() && a != b && a == a2);
        assert_eq!(n.normalise("GET", "/menu", &mut out), None);
        let p1 = n.normalise("GET", "/list?page=1", &mut out);
        let p2 = n.normalise("GET", "/list?page=2", &mut out);
        assert_eq!(out, "GET /list");
        assert!(p1.is_some() && p1 != p2);
        let d = Normaliser::new(
            vec![DeclaredTemplate::parse("/u/{name}").unwrap()],
            HashSet::new(),
        );
        assert_ne!(
            d.normalise("GET", "/u/ann", &mut out),
            d.normalise("GET", "/u/bob", &mut out)
        );
    }

    #[test]
    fn identifiers_become_placeholders() {
        let n = Normaliser::default();
        assert_eq!(
            norm(&n, "post", "/api/orders/42/confirm?x=1"),
            "POST /api/orders/{id}/confirm"
        );
        assert_eq!(
            norm(&n, "GET", "/api/u/3f2b8c1e-9d4a-4b6e-8f00-123456789abc"),
            "GET /api/u/{id}"
        );
        assert_eq!(norm(&n, "GET", "/t/deadbeefdeadbeef00"), "GET /t/{id}");
        assert_eq!(norm(&n, "GET", "/t/eyJhbGciOiJIUzI1NiJ9abc"), "GET /t/{id}");
        assert_eq!(norm(&n, "GET", "/api/v1/menu"), "GET /api/v1/menu");
        assert_eq!(norm(&n, "GET", ""), "GET /");
        // Shapes of identifiers seen on real APIs.
        for id in [
            "user00017",
            "507f1f77bcf86cd799439011",
            "alice@example.com",
            "bob%40example.org",
            "2024-01-31",
            "2024-01-31T10:00:00Z",
            "ord-2024-0042",
            "INV20240042",
        ] {
            let path = format!("/users/v1/{id}/email");
            assert_eq!(norm(&n, "PUT", &path), "PUT /users/v1/{id}/email", "{id}");
        }
        // Versions, features and words stay literal.
        for word in [
            "v1", "v2beta1", "oauth2", "sha256", "ipv4", "s3", "alice", "me", "2fa",
        ] {
            let path = format!("/api/{word}");
            assert_eq!(norm(&n, "GET", &path), format!("GET /api/{word}"), "{word}");
        }
    }

    #[test]
    fn evasions_land_on_the_same_template() {
        let n = Normaliser::default();
        let want = "POST /api/orders/{id}/confirm";
        for path in [
            "/api/orders/%31/confirm",
            "//api//orders/7/confirm/",
            "/api/cart/../orders/7/confirm",
            "/api/./orders/7;jsessionid=1/confirm",
            "/api/orders/7/confirm#frag",
        ] {
            assert_eq!(norm(&n, "POST", path), want, "{path}");
        }
        assert_eq!(norm(&n, "HEAD", "/a"), norm(&n, "GET", "/a"));
        assert_eq!(norm(&n, "BREW", "/a"), "OTHER /a");
    }

    #[test]
    fn declared_templates_and_learned_prefixes_win() {
        let declared = vec![
            DeclaredTemplate::parse("GET /api/users/{name}").unwrap(),
            DeclaredTemplate::parse("/files/{f}/raw").unwrap(),
        ];
        let prefixes = HashSet::from(["GET /api/shops".to_owned()]);
        let n = Normaliser::new(declared, prefixes);
        assert_eq!(norm(&n, "GET", "/api/users/alice"), "GET /api/users/{name}");
        assert_eq!(norm(&n, "PUT", "/api/users/alice"), "PUT /api/users/alice");
        assert_eq!(norm(&n, "DELETE", "/files/a/raw"), "DELETE /files/{f}/raw");
        assert_eq!(
            norm(&n, "GET", "/api/shops/rome/menu"),
            "GET /api/shops/{id}/menu"
        );
        assert!(DeclaredTemplate::parse("api/x").is_err());
        assert!(DeclaredTemplate::parse("G3T /x").is_err());
    }

    #[test]
    fn the_most_specific_declared_template_wins() {
        let declared = [
            "GET /pet/{petId}",
            "GET /pet/findByStatus",
            "/pet/{petId}/{x}",
        ]
        .into_iter()
        .map(|t| DeclaredTemplate::parse(t).unwrap())
        .collect();
        let n = Normaliser::new(declared, HashSet::new());
        assert_eq!(
            norm(&n, "GET", "/pet/findByStatus"),
            "GET /pet/findByStatus"
        );
        assert_eq!(norm(&n, "GET", "/pet/42"), "GET /pet/{petId}");
        assert_eq!(
            norm(&n, "POST", "/pet/42/uploadImage"),
            "POST /pet/{petId}/{x}"
        );
    }

    #[test]
    fn overlong_paths_are_bounded() {
        let n = Normaliser::default();
        let long = "/a".repeat(MAX_SEGMENTS + 1);
        assert_eq!(norm(&n, "GET", &long), "GET /{overlong}");
        let huge = format!("/{}", "x".repeat(MAX_PATH_LEN));
        assert_eq!(norm(&n, "GET", &huge), "GET /{overlong}");
        assert_eq!(
            norm(&n, "GET", &format!("/{}", "y".repeat(65))),
            "GET /{id}"
        );
    }

    /// `is_identifier` as it was written before its one-pass form: the two must agree.
    fn is_identifier_by_passes(segment: &str) -> bool {
        let bytes = segment.as_bytes();
        let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
        if digits == bytes.len() {
            return !bytes.is_empty();
        }
        if bytes.len() > MAX_LITERAL_LEN || is_uuid(bytes) {
            return true;
        }
        if bytes.len() >= 16 && bytes.iter().all(u8::is_ascii_hexdigit) {
            return true;
        }
        if is_email(bytes) {
            return true;
        }
        let letters = bytes.iter().filter(|b| b.is_ascii_alphabetic()).count();
        let separators = bytes.len() - digits - letters;
        if digits >= 4
            && letters <= 2
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b':' | b'.' | b'_' | b'+'))
        {
            return true;
        }
        let token_like = bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'+' | b'.'));
        if !token_like || letters == 0 || digits == 0 {
            return false;
        }
        bytes.len() >= 20 || (digits >= 4 && separators <= 2)
    }

    /// A path normalised from stack slices, as if it were decoded segment by segment.
    fn by_decoding(n: &Normaliser, method: &str, path: &str) -> (String, Option<u64>) {
        let mut out = String::new();
        let method = canonical_method(method);
        out.push_str(method);
        out.push(' ');
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let path = path.split('#').next().unwrap_or("");
        match canonical_segments(path) {
            Some(segments) => {
                let ids = n.template(method, &segments, &mut out).finish();
                (out, ids)
            }
            None => (out + "/{overlong}", None),
        }
    }

    proptest! {
        #[test]
        fn one_pass_identifiers_agree(segment in "[a-f0-9A-Z@.:_+=/ -]{0,40}") {
            prop_assert_eq!(is_identifier(&segment), is_identifier_by_passes(&segment));
        }

        #[test]
        fn plain_paths_agree_with_decoding(path in "(/(a|b1|42|deadbeefdeadbeef12|x-y|[a-z]{1,6}|[0-9]{1,5}|)){0,40}[?]?[a-z=&]{0,8}") {
            let n = Normaliser::default();
            let mut out = String::new();
            let ids = n.normalise("GET", &path, &mut out);
            prop_assert_eq!((out, ids), by_decoding(&n, "GET", &path));
        }

        #[test]
        fn never_panics_on_any_bytes(method in ".{0,8}", bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let path = String::from_utf8_lossy(&bytes);
            let once = norm(&Normaliser::default(), &method, &path);
            prop_assert!(once.len() <= MAX_PATH_LEN * 3 + 16);
        }

        #[test]
        fn a_template_normalises_to_itself(method in "(GET|POST|head)", path in "[a-z0-9/.;]{0,120}") {
            let n = Normaliser::default();
            let once = norm(&n, &method, &path);
            let (m, rest) = once.split_once(' ').unwrap();
            prop_assert_eq!(norm(&n, m, rest), once);
        }
    }
}
