//! The learning registry: the endpoints seen while learning, and how their paths
//! generalise, online.
//!
//! Ids are handed out in order of first sight and never reused (slots and counters hold
//! them), so literal templates must not fill the registry: a position whose literal values
//! keep changing while what follows stays the same (`PUT /users/v1/alice/email`,
//! `.../bob/email`, …) becomes a variable as soon as it has taken
//! `learning.variable_segment_min` values, and every later request of that shape lands on
//! `PUT /users/v1/{id}/email`. Literals registered before the collapse stay (compile
//! merges their counters into the variable template), so a collapsed position costs at
//! most `variable_segment_min - 1` ids. Memory is bounded: at most [`MAX_CANDIDATES`]
//! positions are watched, each holding fewer than [`MAX_DISTINCT`] value hashes.

use crate::endpoint::{template_parts, ID};
use crate::endpoint_set::{EndpointId, MAX_ENDPOINTS};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hasher;

/// Positions watched for collapse at most.
pub const MAX_CANDIDATES: usize = 512;
/// The largest `learning.variable_segment_min` (values a watched position holds).
pub const MAX_DISTINCT: u32 = 64;

/// The templates seen while learning, in order of first sight, with the learned variable
/// positions; bounded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    templates: Vec<String>,
    index: HashMap<String, EndpointId>,
    /// Prefixes (`PUT /users/v1`) whose next segment was learned to be an identifier.
    variable: BTreeSet<String>,
    /// `(prefix, continuation)` to hashes of the literal values seen between them.
    candidates: BTreeMap<(String, String), BTreeSet<u32>>,
}

impl Registry {
    pub fn get(&self, template: &str) -> Option<EndpointId> {
        self.index.get(template).copied()
    }

    pub fn len(&self) -> usize {
        self.templates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    pub fn templates(&self) -> &[String] {
        &self.templates
    }

    /// Prefixes whose next segment was learned to be an identifier (what the policy's
    /// `variable_prefixes` and the normaliser take).
    pub fn variable_prefixes(&self) -> &BTreeSet<String> {
        &self.variable
    }

    /// Adds `template` as it is, unless present or the registry holds `limit` templates.
    pub fn add(&mut self, template: &str, limit: u16) -> Option<EndpointId> {
        if let Some(id) = self.get(template) {
            return Some(id);
        }
        if self.templates.len() >= usize::from(limit).min(MAX_ENDPOINTS)
            || template.contains('\n')
            || template.starts_with(['~', '?'])
        {
            return None;
        }
        let id = EndpointId::try_from(self.templates.len()).ok()?;
        self.templates.push(template.to_owned());
        self.index.insert(template.to_owned(), id);
        Some(id)
    }

    /// The id of a template seen in traffic: its learned generalisation's, registering
    /// it if new. Each literal position is counted towards collapse first, so the request
    /// that takes a position past `min_distinct` values already lands on the variable
    /// template.
    pub fn learn(&mut self, template: &str, limit: u16, min_distinct: u32) -> Option<EndpointId> {
        let mut current = self.generalise(template);
        if let Some(id) = self.get(&current) {
            return Some(id);
        }
        if self.observe(&current, min_distinct.clamp(2, MAX_DISTINCT)) {
            current = self.generalise(&current);
            if let Some(id) = self.get(&current) {
                return Some(id);
            }
        }
        self.add(&current, limit)
    }

    /// `template` with every learned variable position as `{id}`.
    pub fn generalise(&self, template: &str) -> String {
        let (method, segments) = template_parts(template);
        let mut out = format!("{method} ");
        let mut any = false;
        for seg in segments {
            let variable = self.variable.contains(out.as_str());
            out.push('/');
            out.push_str(if variable { ID } else { seg });
            any = true;
        }
        if !any {
            out.push('/');
        }
        out
    }

    /// Counts the literal values of `template` (already generalised); returns whether a
    /// position collapsed.
    fn observe(&mut self, template: &str, min_distinct: u32) -> bool {
        let (method, segments) = template_parts(template);
        let segments: Vec<&str> = segments.collect();
        let mut collapsed = false;
        for (i, seg) in segments.iter().enumerate() {
            if seg.starts_with('{') {
                continue;
            }
            let prefix = format!("{method} {}", join(segments.get(..i).unwrap_or_default()));
            let continuation = join(segments.get(i + 1..).unwrap_or_default());
            let key = (prefix, continuation);
            if !self.candidates.contains_key(&key) && self.candidates.len() >= MAX_CANDIDATES {
                continue;
            }
            let values = self.candidates.entry(key).or_default();
            values.insert(hash(seg));
            if values.len() >= min_distinct as usize {
                let prefix = format!("{method} {}", join(segments.get(..i).unwrap_or_default()));
                // This method's other watched positions were counted with that position's
                // literals in their prefix or continuation: count them again from here.
                let method_key = format!("{method} ");
                self.candidates
                    .retain(|(p, _), _| !p.starts_with(&method_key));
                self.variable.insert(prefix);
                collapsed = true;
                break; // later positions are counted again on the generalised template
            }
        }
        collapsed
    }

    /// Templates one a line; then `~prefix` per variable prefix and
    /// `?prefix<TAB>continuation<TAB>hex,hex…` per watched position.
    pub fn encode(&self) -> Vec<u8> {
        use std::fmt::Write;
        let mut out = self.templates.join("\n");
        for p in &self.variable {
            let _ = write!(out, "\n~{p}");
        }
        for ((p, c), values) in &self.candidates {
            let _ = write!(out, "\n?{p}\t{c}\t");
            for (i, v) in values.iter().enumerate() {
                let _ = write!(out, "{}{v:x}", if i == 0 { "" } else { "," });
            }
        }
        out.into_bytes()
    }

    /// Decodes what [`Registry::encode`] wrote; bad lines and overflow are dropped.
    pub fn decode(bytes: &[u8]) -> Registry {
        let mut r = Registry::default();
        for line in String::from_utf8_lossy(bytes)
            .split('\n')
            .filter(|l| !l.is_empty())
        {
            if let Some(p) = line.strip_prefix('~') {
                r.variable.insert(p.to_owned());
            } else if let Some(rest) = line.strip_prefix('?') {
                let mut parts = rest.split('\t');
                if let (Some(p), Some(c), Some(vs), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                {
                    if r.candidates.len() < MAX_CANDIDATES {
                        let values: BTreeSet<u32> = vs
                            .split(',')
                            .filter_map(|v| u32::from_str_radix(v, 16).ok())
                            .take(MAX_DISTINCT as usize)
                            .collect();
                        r.candidates.insert((p.to_owned(), c.to_owned()), values);
                    }
                }
            } else {
                r.add(line, MAX_ENDPOINTS as u16);
            }
        }
        r
    }
}

fn join(segments: &[&str]) -> String {
    segments.iter().map(|s| format!("/{s}")).collect()
}

fn hash(segment: &str) -> u32 {
    let mut h = siphasher::sip::SipHasher13::new_with_keys(3, 5);
    h.write(segment.as_bytes());
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_with_many_values_and_one_continuation_collapses_online() {
        let mut r = Registry::default();
        let mut ids = Vec::new();
        for i in 0..100 {
            let name = format!("user{}", (b'a' + (i % 26) as u8) as char).repeat(1 + i / 26);
            ids.push(
                r.learn(&format!("PUT /users/v1/{name}/email"), 128, 16)
                    .unwrap(),
            );
            r.learn(&format!("GET /users/v1/{name}"), 128, 16).unwrap();
        }
        // 15 literals each before the 16th value collapsed the position.
        assert_eq!(r.len(), 32, "{:?}", r.templates());
        assert_eq!(r.get("PUT /users/v1/{id}/email"), Some(ids[99]));
        assert!(r.get("GET /users/v1/{id}").is_some());
        assert!(r.variable_prefixes().contains("PUT /users/v1"));
        assert_eq!(
            r.generalise("PUT /users/v1/zed/email"),
            "PUT /users/v1/{id}/email"
        );
        // The static siblings of another continuation are not merged by GET's collapse.
        assert_eq!(r.generalise("POST /users/v1/login"), "POST /users/v1/login");
    }

    #[test]
    fn few_values_stay_literal_and_memory_is_bounded() {
        let mut r = Registry::default();
        for word in ["login", "register", "logout"] {
            r.learn(&format!("POST /users/v1/{word}"), 128, 16).unwrap();
        }
        assert!(r.variable_prefixes().is_empty());
        assert_eq!(r.len(), 3);
        // A flood of distinct deep paths: candidates stay bounded, ids stop at the limit.
        for i in 0..5_000 {
            r.learn(&format!("GET /x{i}/a{i}/b{i}"), 128, 64);
        }
        assert!(r.candidates.len() <= MAX_CANDIDATES);
        assert!(r.len() <= 128);
    }

    #[test]
    fn codec_round_trips_with_learned_positions() {
        let mut r = Registry::default();
        for i in 0..20 {
            r.learn(
                &format!("GET /books/{}", ["a", "b"][i % 2].repeat(i + 1)),
                128,
                8,
            );
        }
        r.learn("GET /books/x/reviews", 128, 8);
        let back = Registry::decode(&r.encode());
        assert_eq!(back, r);
        assert_eq!(Registry::decode(b"~GET /a\n?bad\nGET /a/b\n").len(), 1);
    }
}
