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
/// A placeholder segment, as appended to a template.
const SLASH_ID: &str = "/{id}";

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

    /// Whether the `count` canonical `segments` of a `method` request match.
    fn matches<'s>(
        &self,
        method: &str,
        count: usize,
        segments: impl Iterator<Item = &'s str>,
    ) -> bool {
        self.segments.len() == count
            && self.method.as_deref().is_none_or(|m| m == method)
            && self
                .segments
                .iter()
                .zip(segments)
                .all(|(t, s)| is_wildcard(t) || t == s)
    }

    /// Appends this template, matched by `segments`, to `out`; returns the hash of the
    /// values of its wildcards.
    fn write<'s>(&self, segments: impl Iterator<Item = &'s str>, out: &mut String) -> IdHash {
        let mut ids = IdHash::default();
        out.push_str(&self.text);
        for (t, s) in self.segments.iter().zip(segments) {
            if is_wildcard(t) {
                ids.add(s);
            }
        }
        ids
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
    /// Which segment counts some declared template has ([`count_bit`]): most requests
    /// are matched against none of them.
    declared_counts: u64,
    /// A filter of the variable prefixes' lengths and last bytes ([`prefix_bit`]): the
    /// set is only asked when the template written so far passes it.
    prefix_filter: u128,
}

impl Normaliser {
    pub fn new(mut declared: Vec<DeclaredTemplate>, variable_prefixes: HashSet<String>) -> Self {
        // The most specific template wins: `/pet/findByStatus` before `/pet/{petId}`,
        // whatever order a spec lists them in (the first match is taken).
        declared.sort_by_key(|t| std::cmp::Reverse(t.literal_segments()));
        let declared_counts = declared
            .iter()
            .fold(0, |bits, t| bits | count_bit(t.segments.len()));
        let prefix_filter = variable_prefixes.iter().fold(0, |bits, p| {
            bits | prefix_bit(p.len(), p.as_bytes().last().copied().unwrap_or(0))
        });
        Normaliser {
            declared,
            variable_prefixes,
            id_params: Vec::new(),
            case_insensitive: false,
            declared_counts,
            prefix_filter,
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
        let mut ids = match self.plain(method, path, self.case_insensitive, out) {
            Some(ids) => ids,
            None => {
                out.truncate(method.len() + 1);
                self.decoded(method, path, out)?
            }
        };
        if !self.id_params.is_empty() {
            let query = path.split_once('?').map_or("", |(_, query)| query);
            for pair in query.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if self.id_params.iter().any(|p| p == k) {
                    ids.add(v);
                }
            }
        }
        ids.finish()
    }

    /// The template of a path that is not plain: lower-cased if need be, then plain after
    /// all or decoded. `None`: too long (`/{overlong}` is written).
    fn decoded(&self, method: &str, path: &str, out: &mut String) -> Option<IdHash> {
        let path = path.split('?').next().unwrap_or("");
        let path = path.split('#').next().unwrap_or("");
        let lowered;
        let path = if self.case_insensitive && path.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = path.to_ascii_lowercase();
            // Lower-cased, it may be plain after all.
            if let Some(ids) = self.plain(method, &lowered, false, out) {
                return Some(ids);
            }
            out.truncate(method.len() + 1);
            lowered.as_str()
        } else {
            // Not plain, or `normalise` would have taken it.
            path
        };
        match canonical_segments(path) {
            Some(segments) => Some(self.template(method, &segments, out)),
            None => {
                out.push_str("/{overlong}");
                None
            }
        }
    }

    /// Appends the template of a path that needs no decoding (no `%` escape, no `;`
    /// parameter, no `.` or `..` segment, no more than [`MAX_SEGMENTS`] segments, not
    /// longer than [`MAX_PATH_LEN`] and, if `fold`, no capital) to `out`, in one pass over
    /// its bytes up to the query or fragment; returns the hash of the identifier values.
    /// Most paths are plain. `None`: the path is not, and `out` holds a partial template.
    fn plain(&self, method: &str, path: &str, fold: bool, out: &mut String) -> Option<IdHash> {
        if self.declared_counts != 0 {
            if let Some(declared) = self.plain_declared(method, path, fold, out) {
                return declared;
            }
        }
        let bytes = path.as_bytes();
        let mut t = PlainTemplate {
            path,
            out,
            run: (0, 0),
            count: 0,
            ids: IdHash::default(),
        };
        let mut start = 0;
        let mut end = bytes.len();
        let mut shape = Shape::EMPTY;
        // Every byte that ends or rules out a plain segment is ASCII, so each slice is at a
        // character boundary.
        for (i, &b) in bytes.iter().enumerate() {
            let class = class(b);
            if class & SPECIAL == 0 {
                shape.add(class);
                continue;
            }
            match b {
                b'/' => {
                    self.plain_segment(&mut t, start, i, shape, fold)?;
                    start = i + 1;
                    shape = Shape::EMPTY;
                }
                b'?' | b'#' => {
                    end = i;
                    break;
                }
                _ => return None,
            }
        }
        if end > MAX_PATH_LEN {
            return None;
        }
        self.plain_segment(&mut t, start, end, shape, fold)?;
        t.flush();
        if t.count == 0 {
            t.out.push('/');
        }
        Some(t.ids)
    }

    /// Declared templates win: `Some` if one matches the segments of `path` (`None` in it
    /// if the path is not plain after all, and so needs decoding first). Most requests have
    /// no declared template of their segment count.
    fn plain_declared(
        &self,
        method: &str,
        path: &str,
        fold: bool,
        out: &mut String,
    ) -> Option<Option<IdHash>> {
        let (mut count, mut end, mut slash, mut classes) = (0, path.len(), true, 0);
        for (i, &b) in path.as_bytes().iter().enumerate() {
            match b {
                b'/' => slash = true,
                b'?' | b'#' => {
                    end = i;
                    break;
                }
                _ => {
                    count += usize::from(slash);
                    slash = false;
                    classes |= class(b);
                }
            }
        }
        if self.declared_counts & count_bit(count) == 0 {
            return None;
        }
        // Bytes classed `SPECIAL` here are `%` and `;`.
        let ruled_out = SPECIAL | if fold { UPPER } else { 0 };
        if end > MAX_PATH_LEN || count > MAX_SEGMENTS || classes & ruled_out != 0 {
            return Some(None);
        }
        let mut segments = [""; MAX_SEGMENTS];
        for (slot, segment) in segments
            .iter_mut()
            .zip(Segments(path.get(..end).unwrap_or_default()))
        {
            if segment == "." || segment == ".." {
                return Some(None);
            }
            *slot = segment;
        }
        let segments = segments.get(..count).unwrap_or_default();
        let t = self.declared(method, count, segments.iter().copied())?;
        Some(Some(t.write(segments.iter().copied(), out)))
    }

    /// Appends the segment `path[start..end]` of a plain path, of this shape, unless it
    /// is empty; `None` if it rules the path out of [`Normaliser::plain`].
    #[inline(always)]
    fn plain_segment(
        &self,
        t: &mut PlainTemplate<'_>,
        start: usize,
        end: usize,
        shape: Shape,
        fold: bool,
    ) -> Option<()> {
        if end == start {
            return Some(());
        }
        let text = t.path.get(start..end)?;
        if (end - start <= 2 && (text == "." || text == ".."))
            || t.count == MAX_SEGMENTS
            || (fold && shape.classes & UPPER != 0)
        {
            return None;
        }
        t.count += 1;
        // The set is only asked when the template so far passes the filter.
        let variable = self.prefix_filter != 0 && self.prefix_filter & t.prefix_bit() != 0 && {
            t.flush();
            self.variable_prefixes.contains(t.out.as_str())
        };
        if variable || shape.is_identifier(text.as_bytes()) {
            t.flush();
            t.out.push_str(SLASH_ID);
            t.ids.add(text);
            t.run = (end, end);
        } else if start > 0 && t.run.1 == start - 1 {
            // `/segment` follows the literal run in the path: the run grows.
            t.run.1 = end;
        } else if start > 0 {
            t.flush();
            t.run = (start - 1, end);
        } else {
            t.flush();
            t.out.push('/');
            t.out.push_str(text);
            t.run = (end, end);
        }
        Some(())
    }

    /// The first declared template (the most specific) that `count` segments match.
    fn declared<'s>(
        &self,
        method: &str,
        count: usize,
        segments: impl Iterator<Item = &'s str> + Clone,
    ) -> Option<&DeclaredTemplate> {
        self.declared
            .iter()
            .find(|t| t.matches(method, count, segments.clone()))
    }

    /// Appends the template of canonical `segments` to `out`; returns the hash of the
    /// identifier values so far.
    fn template<S: Segment>(&self, method: &str, segments: &[S], out: &mut String) -> IdHash {
        if self.declared_counts & count_bit(segments.len()) != 0 {
            let texts = segments.iter().map(Segment::text);
            if let Some(t) = self.declared(method, segments.len(), texts.clone()) {
                return t.write(texts, out);
            }
        }
        let mut ids = IdHash::default();
        if segments.is_empty() {
            out.push('/');
        }
        for segment in segments {
            self.push_segment(segment.text(), || segment.is_identifier(), &mut ids, out);
        }
        ids
    }

    /// Appends `/segment`, or `/{id}` if the template so far is a variable prefix or the
    /// segment an identifier (then hashed into `ids`).
    #[inline(always)]
    fn push_segment(
        &self,
        segment: &str,
        is_identifier: impl FnOnce() -> bool,
        ids: &mut IdHash,
        out: &mut String,
    ) {
        // The set is only asked when the template so far passes the filter.
        let last = out.as_bytes().last().copied().unwrap_or(0);
        let variable = self.prefix_filter & prefix_bit(out.len(), last) != 0
            && self.variable_prefixes.contains(out.as_str());
        if variable || is_identifier() {
            out.push_str(SLASH_ID);
            ids.add(segment);
        } else {
            out.push('/');
            out.push_str(segment);
        }
    }
}

/// The template of a plain path being written by [`Normaliser::plain`].
struct PlainTemplate<'a> {
    path: &'a str,
    out: &'a mut String,
    /// `path[run.0..run.1]`: literal segments with their slashes (`/api/catalog`), that
    /// go to `out` as they are, in one copy, once a segment that is not follows.
    run: (usize, usize),
    count: usize,
    ids: IdHash,
}

impl PlainTemplate<'_> {
    /// [`prefix_bit`] of the template so far, literal run included.
    fn prefix_bit(&self) -> u128 {
        let (start, end) = self.run;
        let last = if end > start {
            self.path.as_bytes().get(end - 1)
        } else {
            self.out.as_bytes().last()
        };
        prefix_bit(self.out.len() + (end - start), last.copied().unwrap_or(0))
    }

    fn flush(&mut self) {
        if self.run.1 > self.run.0 {
            self.out
                .push_str(self.path.get(self.run.0..self.run.1).unwrap_or_default());
            self.run.0 = self.run.1;
        }
    }
}

/// The non-empty `/`-separated segments of a path.
#[derive(Clone)]
struct Segments<'p>(&'p str);

impl<'p> Iterator for Segments<'p> {
    type Item = &'p str;

    fn next(&mut self) -> Option<&'p str> {
        let bytes = self.0.as_bytes();
        let Some(start) = bytes.iter().position(|&b| b != b'/') else {
            self.0 = "";
            return None;
        };
        let end = bytes
            .iter()
            .skip(start)
            .position(|&b| b == b'/')
            .map_or(bytes.len(), |n| start + n);
        // `/` is ASCII: both ends are at character boundaries.
        let segment = self.0.get(start..end).unwrap_or_default();
        self.0 = self.0.get(end..).unwrap_or_default();
        Some(segment)
    }
}

/// A bit per segment count, the last one shared by all counts from 63 up.
fn count_bit(count: usize) -> u64 {
    1 << count.min(63)
}

/// A bit for a string of this length and last byte (0 if empty).
fn prefix_bit(len: usize, last: u8) -> u128 {
    1 << (len.wrapping_mul(7).wrapping_add(usize::from(last)) % 128)
}

/// A decoded path segment: its text, and whether it is an identifier.
trait Segment {
    fn text(&self) -> &str;
    fn is_identifier(&self) -> bool;
}

impl Segment for Cow<'_, str> {
    fn text(&self) -> &str {
        self
    }

    fn is_identifier(&self) -> bool {
        is_identifier(self)
    }
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
fn canonical_method(method: &str) -> &'static str {
    let is = |known: &str| method.eq_ignore_ascii_case(known);
    // Only a method of the same length can equal a known one, whatever its case.
    match method.len() {
        3 if is("GET") => "GET",
        3 if is("PUT") => "PUT",
        4 if is("HEAD") => "GET",
        4 if is("POST") => "POST",
        5 if is("PATCH") => "PATCH",
        5 if is("TRACE") => "TRACE",
        6 if is("DELETE") => "DELETE",
        7 if is("OPTIONS") => "OPTIONS",
        7 if is("CONNECT") => "CONNECT",
        _ => "OTHER",
    }
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

// What a byte is, for splitting paths and telling identifiers: bits of `CLASSES`.
const DIGIT: u8 = 1;
const LETTER: u8 = 2;
/// Not a hex digit.
const NOT_HEX: u8 = 4;
const AT: u8 = 8;
/// Neither alphanumeric nor one of `-:._+` (dates and times).
const NOT_DATE: u8 = 16;
/// Neither alphanumeric nor one of `-_=+.` (tokens).
const NOT_TOKEN: u8 = 32;
/// Ends a segment or the path, or calls for decoding: one of `/%;?#`.
const SPECIAL: u8 = 64;
/// An ASCII capital.
const UPPER: u8 = 128;

const CLASSES: [u8; 256] = {
    let mut classes = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut class = 0;
        if b.is_ascii_digit() {
            class |= DIGIT;
        } else if b.is_ascii_alphabetic() {
            class |= LETTER;
            if !b.is_ascii_hexdigit() {
                class |= NOT_HEX;
            }
            if b.is_ascii_uppercase() {
                class |= UPPER;
            }
        } else {
            class |= NOT_HEX;
            if b == b'@' {
                class |= AT;
            }
            if !matches!(b, b'-' | b':' | b'.' | b'_' | b'+') {
                class |= NOT_DATE;
            }
            if !matches!(b, b'-' | b'_' | b'=' | b'+' | b'.') {
                class |= NOT_TOKEN;
            }
            if matches!(b, b'/' | b'%' | b';' | b'?' | b'#') {
                class |= SPECIAL;
            }
        }
        // `i < 256`, checked at compile time.
        #[allow(clippy::indexing_slicing)]
        {
            classes[i] = class;
        }
        i += 1;
    }
    classes
};

fn class(b: u8) -> u8 {
    CLASSES.get(usize::from(b)).copied().unwrap_or(0)
}

/// What [`is_identifier`] first asks of a segment, gathered in one pass over its bytes.
#[derive(Clone, Copy)]
struct Shape {
    digits: u32,
    /// The union of the segment's byte classes.
    classes: u8,
}

impl Shape {
    const EMPTY: Self = Shape {
        digits: 0,
        classes: 0,
    };

    fn of(bytes: &[u8]) -> Self {
        let mut shape = Shape::EMPTY;
        for &b in bytes {
            shape.add(class(b));
        }
        shape
    }

    #[inline(always)]
    fn add(&mut self, class: u8) {
        self.digits += u32::from(class & DIGIT);
        self.classes |= class;
    }

    /// Whether `bytes`, of this shape, are an identifier: see [`is_identifier`].
    #[inline(always)]
    fn is_identifier(self, bytes: &[u8]) -> bool {
        let (len, digits) = (bytes.len(), self.digits as usize);
        if digits == len {
            return len != 0;
        }
        // Short, without `@` and with fewer than four digits (`api`, `v2`, `sha256`): none
        // of the shapes below.
        if len < 16 && digits < 4 && self.classes & AT == 0 {
            return false;
        }
        self.is_long_identifier(bytes)
    }

    /// [`Shape::is_identifier`] past its first tests.
    #[inline(never)]
    fn is_long_identifier(self, bytes: &[u8]) -> bool {
        let (len, digits) = (bytes.len(), self.digits as usize);
        if len > MAX_LITERAL_LEN || is_uuid(bytes) {
            return true;
        }
        if len >= 16 && self.classes & NOT_HEX == 0 {
            return true;
        }
        if self.classes & AT != 0 && is_email(bytes) {
            return true;
        }
        let letters = bytes.iter().filter(|b| b.is_ascii_alphabetic()).count();
        let separators = len - digits - letters;
        // Dates and times: 2024-01-31, 2024-01-31T10:00:00Z, 10:30.
        if digits >= 4 && letters <= 2 && self.classes & NOT_DATE == 0 {
            return true;
        }
        if self.classes & NOT_TOKEN != 0 || letters == 0 || digits == 0 {
            return false;
        }
        len >= 20 || (digits >= 4 && separators <= 2)
    }
}

/// Whether a path segment is an identifier by its shape alone: a number, a UUID, long
/// hex (Mongo ObjectIds included), a token-like run, an e-mail address, a date or time,
/// or letters mixed with at least four digits (`user00017`, `ord-2024-0042`). Short
/// mixes such as `v2`, `oauth2` or `sha256` stay literal: they name API versions and
/// features. Names without digits (`alice`) are learned instead, from how many values
/// their position takes.
pub fn is_identifier(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    Shape::of(bytes).is_identifier(bytes)
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

    /// The implementation before it was made cheaper, kept verbatim as the oracle for
    /// the differential tests below: the two must agree byte for byte, hash for hash.
    mod reference {
        // What the rewrite left as it was is called, not copied.
        use super::super::{
            canonical_segments, is_uuid, is_wildcard, DeclaredTemplate, Normaliser, ID,
            MAX_PATH_LEN, MAX_SEGMENTS,
        };

        const MAX_LITERAL_LEN: usize = 64;

        fn matches<S: AsRef<str>>(t: &DeclaredTemplate, method: &str, segments: &[S]) -> bool {
            t.method.as_deref().is_none_or(|m| m == method)
                && t.segments.len() == segments.len()
                && t.segments
                    .iter()
                    .zip(segments)
                    .all(|(t, s)| is_wildcard(t) || t == s.as_ref())
        }

        pub fn normalise(
            n: &Normaliser,
            method: &str,
            path: &str,
            out: &mut String,
        ) -> Option<u64> {
            out.clear();
            let method = canonical_method(method);
            out.push_str(method);
            out.push(' ');
            let (path, query) = path.split_once('?').unwrap_or((path, ""));
            let path = path.split('#').next().unwrap_or("");
            let lowered;
            let path = if n.case_insensitive && path.bytes().any(|b| b.is_ascii_uppercase()) {
                lowered = path.to_ascii_lowercase();
                lowered.as_str()
            } else {
                path
            };
            let mut plain = [""; MAX_SEGMENTS];
            let mut ids = match plain_segments(path, &mut plain) {
                Some(k) => template(n, method, plain.get(..k).unwrap_or_default(), out),
                None => match canonical_segments(path) {
                    Some(segments) => template(n, method, &segments, out),
                    None => {
                        out.push_str("/{overlong}");
                        return None;
                    }
                },
            };
            if !n.id_params.is_empty() {
                for pair in query.split('&') {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if n.id_params.iter().any(|p| p == k) {
                        ids.add(v);
                    }
                }
            }
            ids.finish()
        }

        fn template<S: AsRef<str>>(
            n: &Normaliser,
            method: &str,
            segments: &[S],
            out: &mut String,
        ) -> IdHash {
            let mut ids = IdHash::default();
            if let Some(t) = n.declared.iter().find(|t| matches(t, method, segments)) {
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
                    !n.variable_prefixes.is_empty() && n.variable_prefixes.contains(out.as_str());
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

        fn plain_segments<'p>(path: &'p str, out: &mut [&'p str; MAX_SEGMENTS]) -> Option<usize> {
            if path.len() > MAX_PATH_LEN {
                return None;
            }
            let mut n = 0;
            let mut start = 0;
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

        pub fn canonical_method(method: &str) -> &str {
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

        pub fn is_identifier(segment: &str) -> bool {
            let bytes = segment.as_bytes();
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
            if digits >= 4 && letters <= 2 && date_like {
                return true;
            }
            if !token_like || letters == 0 || digits == 0 {
                return false;
            }
            bytes.len() >= 20 || (digits >= 4 && separators <= 2)
        }

        fn is_email(b: &[u8]) -> bool {
            let Some(at) = b.iter().position(|c| *c == b'@') else {
                return false;
            };
            let (local, domain) = (
                b.get(..at).unwrap_or_default(),
                b.get(at + 1..).unwrap_or_default(),
            );
            !local.is_empty()
                && domain.len() >= 3
                && domain.contains(&b'.')
                && !domain.contains(&b'@')
        }
    }
    const PIECES: &[&str] = &[
        "/",
        "/",
        "/",
        "//",
        "%2F",
        "%2f",
        "%41",
        "%",
        "%4",
        "%zz",
        "%C3%A9",
        "%FF",
        "%2e",
        "%2E%2E",
        ".",
        "..",
        "./",
        "../",
        ";a=b",
        ";",
        "?",
        "#",
        "&",
        "=",
        "page",
        "id",
        "x",
        "API",
        "Users",
        "api",
        "users",
        "catalog",
        "items",
        "v1",
        "v2",
        "v2beta1",
        "oauth2",
        "sha256",
        "s17",
        "2fa",
        "4242",
        "0",
        "42",
        "007",
        "3f2b8c1e-9d4a-4b6e-8f00-123456789abc",
        "3F2B8C1E-9D4A-4B6E-8F00-123456789ABC",
        "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa",
        "3f2b8c1e-9d4a-4b6e-8f00-123456789abg",
        "deadbeefdeadbeef",
        "deadbeefdeadbee",
        "DEADBEEFDEADBEEF00",
        "507f1f77bcf86cd799439011",
        "alice@example.com",
        "a@b.c",
        "@x.yz",
        "a@@b.c",
        "bob%40example.org",
        "a@b",
        "2024-01-31",
        "2024-01-31T10:00:00Z",
        "10:30",
        "1:2:3:4",
        "ord-2024-0042",
        "INV20240042",
        "user00017",
        "ab12",
        "ab1234",
        "a-b-c-1234",
        "a_b_c_d_1234",
        "eyJhbGciOiJIUzI1NiJ9abc",
        "abcdefghijklmnopqrs1",
        "abcdefghijklmnopqr1",
        "ab_cd-12=+.34",
        "-",
        "_",
        "+",
        "+1234",
        ".x",
        "x.",
        "{id}",
        "{",
        "}",
        "{}",
        "HEAD",
        " ",
        "\t",
        "a\u{0}b",
        "é",
        "日本",
        "ü",
        "Ä",
        "\u{1F600}",
        "\u{212A}",
        "ı",
        "İ",
    ];

    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => proptest::sample::select(PIECES).prop_map(str::to_owned),
            2 => "[a-zA-Z0-9@.:_+=%;/?#&{}-]{0,12}",
            1 => "\\PC{0,6}",
            1 => (proptest::sample::select(&["x", "1", "a1", "/a", "f"][..]), 1usize..120)
                .prop_map(|(s, k)| s.repeat(k)),
            1 => Just("z".repeat(700)),
        ]
    }

    fn tricky_path() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => proptest::collection::vec(piece(), 0..48).prop_map(|v| v.concat()),
            1 => "\\PC{0,80}",
            1 => proptest::collection::vec(any::<u8>(), 0..120)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ]
    }

    const DECLARED: &[&str] = &[
        "GET /api/users/{name}",
        "/files/{f}/raw",
        "/api/{x}",
        "POST /{a}/{b}",
        "/",
        "GET /api/catalog/{c}/items/{i}",
        "/API/Users/{u}",
        "/a/b/c",
        "/é/{x}",
        "/{}",
        "get /pet/findByStatus",
        "/pet/{petId}",
        "/{x}/{id}/{y}",
        "PUT /users/v1/{id}/email",
        "/users/{u}/{v}",
        "/{",
    ];

    const PREFIXES: &[&str] = &[
        "GET /api/users",
        "GET /api",
        "GET /API",
        "GET /api/catalog",
        "POST /api/users/{id}",
        "GET ",
        "GET",
        "OTHER /x",
        "GET /é",
        "PUT /users",
        "GET /{id}",
        "GET /api/catalog/s17",
        "DELETE /a/{id}/b",
        "",
    ];

    fn normaliser() -> impl Strategy<Value = Normaliser> {
        (
            any::<bool>(),
            proptest::sample::subsequence(DECLARED, 0..=DECLARED.len()),
            proptest::sample::subsequence(PREFIXES, 0..=PREFIXES.len()),
            proptest::option::of("[a-z]{120,140}"),
            proptest::sample::subsequence(&["page", "id", "", "x", "a=b", "é"][..], 0..=3),
        )
            .prop_map(|(ci, declared, prefixes, long, params)| {
                let declared = declared
                    .into_iter()
                    .map(|t| DeclaredTemplate::parse(t).unwrap())
                    .collect();
                let mut prefixes: HashSet<String> =
                    prefixes.into_iter().map(str::to_owned).collect();
                if let Some(long) = long {
                    prefixes.insert(format!("GET /{long}"));
                }
                Normaliser::new(declared, prefixes)
                    .case_insensitive(ci)
                    .with_id_params(params.into_iter().map(str::to_owned).collect())
            })
    }

    fn method() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => proptest::sample::select(
                &[
                    "GET", "get", "Get", "HEAD", "head", "Post", "POST", "BREW", "", "OPTIONS",
                    "connect", "TRACE", "patch", "DELETE", "PUT", "GETX", "GE", "HEAD ", "HEA",
                    "OTHER", "\u{212A}", "CONNECTX", "DELETe", "options",
                ][..]
            )
            .prop_map(str::to_owned),
            1 => "\\PC{0,8}",
        ]
    }

    fn assert_same(n: &Normaliser, method: &str, path: &str) -> Result<(), TestCaseError> {
        let (mut new, mut old) = (String::from("stale"), String::new());
        let new_ids = n.normalise(method, path, &mut new);
        let old_ids = reference::normalise(n, method, path, &mut old);
        prop_assert_eq!(&new, &old, "method {:?} path {:?} {:?}", method, path, n);
        prop_assert_eq!(
            new_ids,
            old_ids,
            "method {:?} path {:?} {:?}",
            method,
            path,
            n
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn normalise_agrees_with_the_reference(n in normaliser(), m in method(), path in tricky_path()) {
            assert_same(&n, &m, &path)?;
        }

        #[test]
        fn identifiers_agree_with_the_reference(s in prop_oneof![
            proptest::collection::vec(proptest::sample::select(PIECES), 0..4).prop_map(|v| v.concat()),
            "[a-fA-Z0-9@.:_+=/ -]{0,70}",
            "\\PC{0,40}",
        ]) {
            prop_assert_eq!(is_identifier(&s), reference::is_identifier(&s), "{:?}", s);
        }
    }

    #[test]
    fn boundaries_agree_with_the_reference() {
        assert_eq!(SLASH_ID, format!("/{ID}"));
        let configs = [
            Normaliser::default(),
            Normaliser::default().case_insensitive(true),
            Normaliser::new(
                vec![DeclaredTemplate::parse("/a/{x}").unwrap()],
                HashSet::from(["GET /a".to_owned(), "GET /A/a".to_owned()]),
            )
            .case_insensitive(true)
            .with_id_params(vec!["page".into()]),
        ];
        let mut paths = Vec::new();
        for len in [
            MAX_PATH_LEN - 2,
            MAX_PATH_LEN - 1,
            MAX_PATH_LEN,
            MAX_PATH_LEN + 1,
        ] {
            for tail in ["", "?page=1", "#x", "?a#b", "#a?page=2"] {
                for body in ["x", "A", "%41", "/", "é"] {
                    let mut p = String::from("/");
                    while p.len() < len {
                        p.push_str(body);
                    }
                    paths.push(format!("{p}{tail}"));
                    let mut cut = len.min(p.len());
                    while !p.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    paths.push(format!("{}{tail}", &p[..cut]));
                }
            }
        }
        for segs in [0, 1, 31, 32, 33, 40] {
            for seg in ["/a", "/1", "/%41", "/a;x", "/.", "/..", "//b", "/A"] {
                paths.push(seg.repeat(segs));
                paths.push(format!("{}/../x", seg.repeat(segs)));
                paths.push(format!("{}/y/..", seg.repeat(segs)));
            }
        }
        for n in &configs {
            for m in ["GET", "head", "x"] {
                for p in &paths {
                    assert_same(n, m, p).unwrap();
                }
            }
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
