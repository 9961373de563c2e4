//! Sensitive data in response bodies: e-mail addresses, payment card numbers (Luhn
//! checked), national identifiers (US SSN form) and configured JSON field names.
//!
//! The scanner reads the body in chunks as Envoy streams it, keeping a short tail of the
//! previous chunk so a match split across chunks is still seen, and never buffers more.

/// Bytes of the previous chunk kept so matches can span chunk boundaries.
const CARRY: usize = 64;

/// What a scan found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub emails: u32,
    pub cards: u32,
    pub national_ids: u32,
    pub fields: u32,
}

impl Findings {
    pub fn any(&self) -> bool {
        self.emails + self.cards + self.national_ids + self.fields > 0
    }

    /// Whether an answer carries kinds or amounts beyond what `normal` allows: a kind
    /// never seen in the endpoint's normal answers, or more than twice its normal peak
    /// plus one (a profile carries its user's e-mail; a listing of fifty does not).
    pub fn beyond(&self, normal: &Baseline) -> bool {
        let over = |found: u32, usual: u32| {
            found > 0 && (usual == 0 || found > usual.saturating_mul(2).saturating_add(1))
        };
        over(self.emails, normal.emails)
            || over(self.cards, normal.cards)
            || over(self.national_ids, normal.national_ids)
            || over(self.fields, normal.fields)
    }
}

/// The sensitive values an endpoint's answers normally carry: the peak count of each
/// kind in one answer while learning. Merges by maximum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    #[serde(default)]
    pub emails: u32,
    #[serde(default)]
    pub cards: u32,
    #[serde(default)]
    pub national_ids: u32,
    #[serde(default)]
    pub fields: u32,
}

impl Baseline {
    pub fn observe(&mut self, f: &Findings) {
        self.emails = self.emails.max(f.emails);
        self.cards = self.cards.max(f.cards);
        self.national_ids = self.national_ids.max(f.national_ids);
        self.fields = self.fields.max(f.fields);
    }

    pub fn merge(&mut self, other: &Baseline) {
        self.observe(&Findings {
            emails: other.emails,
            cards: other.cards,
            national_ids: other.national_ids,
            fields: other.fields,
        });
    }

    pub fn is_empty(&self) -> bool {
        *self == Baseline::default()
    }
}

/// A streaming scanner for one response body.
#[derive(Debug, Default)]
pub struct Scanner {
    carry: Vec<u8>,
    pub findings: Findings,
    pub scanned: usize,
}

impl Scanner {
    /// Scans the next chunk; `fields` are JSON keys whose presence is sensitive; `last`
    /// when the body ends with this chunk.
    pub fn feed(&mut self, chunk: &[u8], fields: &[String], last: bool) {
        // One buffer for the whole body: the chunk goes after the kept tail, and the new
        // tail is moved to the front (no allocation once it has grown to a chunk).
        let fresh_from = self.carry.len();
        self.carry.extend_from_slice(chunk);
        self.scanned += chunk.len();
        scan(&self.carry, fresh_from, last, fields, &mut self.findings);
        let keep = self.carry.len().saturating_sub(CARRY);
        self.carry.drain(..keep);
    }
}

/// Scans `buf`, counting matches that end at or after `fresh_from` (earlier ones were
/// counted with the previous chunk). A match touching the end of `buf` may go on in the
/// next chunk, so it waits for that one unless this is the `last`.
fn scan(buf: &[u8], fresh_from: usize, last: bool, fields: &[String], f: &mut Findings) {
    let counts = |end: usize| end >= fresh_from && (end < buf.len() || last);
    let is_local = |b: u8| b.is_ascii_alphanumeric() || b"._%+-".contains(&b);
    let is_domain = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'-';
    for (at, _) in buf.iter().enumerate().filter(|(_, b)| **b == b'@') {
        let local = buf
            .get(..at)
            .map_or(0, |s| s.iter().rev().take_while(|b| is_local(**b)).count());
        let domain: &[u8] = buf.get(at + 1..).map_or(&[], |s| {
            let n = s.iter().take_while(|b| is_domain(**b)).count();
            s.get(..n).unwrap_or_default()
        });
        let end = at + 1 + domain.len();
        let dotted = domain
            .iter()
            .rposition(|b| *b == b'.')
            .is_some_and(|d| d > 0 && d + 2 < domain.len() + 1 && d + 1 < domain.len());
        if local > 0 && dotted && counts(end) {
            f.emails += 1;
        }
    }
    let mut i = 0;
    while i < buf.len() {
        if !buf.get(i).is_some_and(u8::is_ascii_digit)
            || (i > 0 && buf.get(i - 1).is_some_and(u8::is_ascii_digit))
        {
            i += 1;
            continue;
        }
        // A run of digits, allowing single spaces or dashes between groups (only its
        // first 20 digits are kept: longer runs are neither cards nor identifiers).
        let mut digits = [0u8; 20];
        let mut count = 0;
        let mut j = i;
        let mut separators = 0;
        while let Some(b) = buf.get(j) {
            if b.is_ascii_digit() {
                if let Some(d) = digits.get_mut(count) {
                    *d = b - b'0';
                }
                count += 1;
            } else if (*b == b' ' || *b == b'-')
                && buf.get(j + 1).is_some_and(u8::is_ascii_digit)
                && count < 19
            {
                separators += 1;
            } else {
                break;
            }
            j += 1;
        }
        // Digits inside a longer token (a hex id, an API key) are part of that token.
        let in_token = (i > 0 && buf.get(i - 1).is_some_and(u8::is_ascii_alphabetic))
            || buf.get(j).is_some_and(u8::is_ascii_alphabetic);
        let digits = digits.get(..count).unwrap_or_default();
        // A separator that ends the run belongs to it: when it is the buffer's last byte
        // the run may go on in the next chunk, so it waits for that one.
        let end = match buf.get(j) {
            Some(b' ' | b'-') => j + 1,
            _ => j,
        };
        if counts(end) && !in_token {
            if (13..=19).contains(&count) && luhn(digits) {
                f.cards += 1;
            } else if count == 9
                && separators == 2
                && is_ssn_shape(buf.get(i..j).unwrap_or_default())
            {
                f.national_ids += 1;
            }
        }
        i = j.max(i + 1);
    }
    for name in fields {
        // `"name"` followed by a colon: the name is found, then its quotes checked (no
        // needle is built per answer).
        let name = name.as_bytes();
        let mut from = 0;
        while let Some(pos) = find(buf.get(from..).unwrap_or_default(), name) {
            let start = from + pos;
            let end = start + name.len() + 1; // past the closing quote
            from = start + 1;
            let quoted =
                start > 0 && buf.get(start - 1) == Some(&b'"') && buf.get(end - 1) == Some(&b'"');
            if !quoted {
                continue;
            }
            // The colon may follow blanks, and those may end the buffer: the match is
            // counted where its colon is, so a cut among the blanks waits for it.
            let rest = buf.get(end..).unwrap_or_default();
            let blanks = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
            let colon = rest.get(blanks) == Some(&b':');
            if colon && counts(end + blanks) {
                f.fields += 1;
            }
            from = end;
        }
    }
}

/// Where `needle` first occurs in `hay`: candidates by their first byte, then compared.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut at = 0;
    while let Some(i) = hay.get(at..)?.iter().position(|b| *b == first) {
        let start = at + i;
        if hay.get(start + 1..start + needle.len()) == Some(rest) {
            return Some(start);
        }
        at = start + 1;
    }
    None
}

/// `ddd-dd-dddd`.
fn is_ssn_shape(s: &[u8]) -> bool {
    s.len() == 11
        && s.iter().enumerate().all(|(i, b)| match i {
            3 | 6 => *b == b'-',
            _ => b.is_ascii_digit(),
        })
}

/// The Luhn checksum of payment card numbers.
pub fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(*d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    !digits.is_empty() && sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_normal_for_an_endpoint_is_not_flagged() {
        let mut profile = Baseline::default();
        profile.observe(&Findings {
            emails: 1,
            ..Findings::default()
        });
        let one = Findings {
            emails: 1,
            ..Findings::default()
        };
        let fifty = Findings {
            emails: 50,
            ..Findings::default()
        };
        let card = Findings {
            emails: 1,
            cards: 1,
            ..Findings::default()
        };
        assert!(!one.beyond(&profile), "its user's own e-mail");
        assert!(fifty.beyond(&profile), "a listing of e-mails");
        assert!(card.beyond(&profile), "a card where none ever was");
        assert!(one.beyond(&Baseline::default()), "no baseline: any finding");
        assert!(!Findings::default().beyond(&Baseline::default()));
    }
    use proptest::prelude::*;

    fn scan_all(body: &str, fields: &[&str]) -> Findings {
        let fields: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
        let mut s = Scanner::default();
        s.feed(body.as_bytes(), &fields, true);
        s.findings
    }

    #[test]
    fn finds_emails_cards_ids_and_fields() {
        let f = scan_all(
            r#"[{"id":1,"email":"ann@example.com","card":"4111 1111 1111 1111","ssn":"123-45-6789"},
                {"id":2,"contact":"bob.smith+x@mail.example.org","password_hash":"x"}]"#,
            &["password_hash"],
        );
        assert_eq!(
            f,
            Findings {
                emails: 2,
                cards: 1,
                national_ids: 1,
                fields: 1
            }
        );
    }

    #[test]
    fn ordinary_json_is_clean() {
        let f = scan_all(
            r#"{"id":4111111111111112,"order":12345678,"at":"2026-11-23","price":1050,"user":"@ann","v":"1.2.3"}"#,
            &["password_hash"],
        );
        assert_eq!(
            f,
            Findings::default(),
            "bad Luhn, dates, handles and versions are not data"
        );
    }

    #[test]
    fn matches_split_across_chunks_count_once() {
        let body = br#"{"a":"carol@example.com","b":"5555555555554444"}"#;
        for cut in 0..body.len() {
            let mut s = Scanner::default();
            s.feed(&body[..cut], &[], false);
            s.feed(&body[cut..], &[], true);
            assert_eq!(
                (s.findings.emails, s.findings.cards),
                (1, 1),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_run_cut_after_a_separator_waits_for_the_next_chunk() {
        // Whole, this is one run of 25 digits: neither an identifier nor a card.
        let body = b" 078-05-1120 5555 5555 5555 4444";
        let mut s = Scanner::default();
        s.feed(&body[..13], &[], false);
        s.feed(&body[13..], &[], true);
        assert_eq!(
            s.findings,
            scan_all(" 078-05-1120 5555 5555 5555 4444", &[])
        );
        // A run that does end there is still counted, once.
        let mut s = Scanner::default();
        s.feed(b"ssn 078-05-1120 ", &[], false);
        s.feed(b"ok", &[], true);
        assert_eq!(s.findings.national_ids, 1);
        // A field's name cut before its colon, among the blanks.
        let fields = ["ssn".to_string()];
        let mut s = Scanner::default();
        s.feed(br#"{"ssn" "#, &fields, false);
        s.feed(br#": 1}"#, &fields, true);
        assert_eq!(s.findings.fields, 1);
    }

    #[test]
    fn digits_inside_a_token_are_no_card() {
        // 4111111111111111 passes Luhn; inside a hex token it is the token's, not a card.
        let f = scan_all(
            r#"{"auth_token":"9f4111111111111111ab","n":"4111111111111111"}"#,
            &[],
        );
        assert_eq!(f.cards, 1, "only the standalone number");
    }

    #[test]
    fn luhn_checks() {
        assert!(luhn(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]));
        assert!(!luhn(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]));
        assert!(!luhn(&[]));
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..5)) {
            let mut s = Scanner::default();
            for c in chunks {
                s.feed(&c, &["x".to_string()], false);
            }
            prop_assert!(s.carry.len() <= CARRY);
        }

        /// However the body is cut into chunks, the findings are those of the whole body
        /// at once, for bodies within the carried tail. (A run of digits longer than the
        /// tail, cut where the tail begins, is seen from its middle: a limit of the bounded
        /// scan, which can only add a flag.)
        #[test]
        fn chunking_changes_no_finding(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "carol@example.com", "5555 5555 5555 4444", "078-05-1120", "\"ssn\": 1",
                    "\"ssn\"", "ssn\":", " ", "a", "\"", ":", "4", "-", "@x.io",
                ]),
                0..6,
            ),
            cuts in proptest::collection::vec(0usize..60, 0..4),
        ) {
            let body = parts.concat();
            prop_assume!(body.len() <= CARRY);
            let fields = ["ssn".to_string()];
            let mut whole = Scanner::default();
            whole.feed(body.as_bytes(), &fields, true);
            let mut chunked = Scanner::default();
            let mut at = 0;
            for c in cuts {
                let end = (at + c).min(body.len());
                chunked.feed(body.as_bytes().get(at..end).unwrap_or_default(), &fields, false);
                at = end;
            }
            chunked.feed(body.as_bytes().get(at..).unwrap_or_default(), &fields, true);
            prop_assert_eq!(chunked.findings, whole.findings, "{:?}", body);
        }
    }
}
