//! Evidence: when the learned counts are strong enough to enforce a fact.
//!
//! A prerequisite blocks customers who lack it, so it is asserted only when the data
//! show, at `learning.confidence`, that at least `prerequisite_ratio` of the sessions
//! reaching a step had completed it first: the one-sided Clopper-Pearson (exact binomial)
//! lower bound of that share must reach the ratio. And a share of 100 % means nothing when
//! every session took the same route (a test script, one front end): an order rule also
//! needs `learning.min_routes` distinct routes into the step, all through the prerequisite.

use crate::endpoint_set::{EndpointId, EndpointSet};
use serde::{Deserialize, Serialize};

/// Whether `successes` of `trials` show a share of at least `ratio` at `confidence`: the
/// exact one-sided lower confidence bound of the share reaches `ratio`. Equivalent test:
/// were the true share only `ratio`, seeing `successes` or more would be as unlikely as
/// `1 - confidence`.
pub fn share_at_least(successes: u64, trials: u64, ratio: f64, confidence: f64) -> bool {
    if trials == 0 || successes > trials || !(ratio > 0.0 && ratio < 1.0) {
        return false;
    }
    // The bound never exceeds the observed share: skip the sum when that is already short.
    if (successes as f64) < ratio * trials as f64 {
        return false;
    }
    upper_tail_ln(successes, trials, ratio) <= (1.0 - confidence).ln()
}

/// `ln P(X >= k)` for `X ~ Binomial(n, p)`, summed from `n` down in log space (no
/// underflow for large `n`; at most `n - k + 1` terms, and `k >= n p` here).
fn upper_tail_ln(k: u64, n: u64, p: f64) -> f64 {
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    let mut term = n as f64 * lp; // ln P(X = n)
    let mut total = term;
    let mut i = n;
    while i > k {
        // P(X = i-1) = P(X = i) * i / (n - i + 1) * q / p
        term += (i as f64).ln() - ((n - i + 1) as f64).ln() + lq - lp;
        total = log_add(total, term);
        i -= 1;
    }
    total
}

fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    hi + (lo - hi).exp().ln_1p()
}

/// The rank (1-based, among `n` sorted values) whose value is, at `confidence`, at least
/// the true `p`-quantile: the smallest `r` with `P(Binomial(n, p) >= r) <= 1 - confidence`.
/// `None` when not even the largest of `n` values is (`p^n > 1 - confidence`: 459 units
/// are needed for the 99th percentile at 0.99). One pass from the top, in log space.
pub fn quantile_upper_rank(n: u64, p: f64, confidence: f64) -> Option<u64> {
    if n == 0 || !(p > 0.0 && p < 1.0 && confidence > 0.0 && confidence < 1.0) {
        return None;
    }
    let target = (1.0 - confidence).ln();
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    let mut term = n as f64 * lp; // ln P(X = n)
    let mut total = term;
    if total > target {
        return None;
    }
    let mut rank = n;
    let mut i = n;
    while i > 1 {
        term += (i as f64).ln() - ((n - i + 1) as f64).ln() + lq - lp;
        let next = log_add(total, term);
        if next > target {
            break;
        }
        total = next;
        i -= 1;
        rank = i;
    }
    Some(rank)
}

/// Sessions a step needs, none of them violating, before a prerequisite can be asserted:
/// the smallest `n` with `ratio^n <= 1 - confidence` (228 at 0.98 and 0.99).
pub fn sessions_needed(ratio: f64, confidence: f64) -> u64 {
    if !(ratio > 0.0 && ratio < 1.0 && confidence > 0.0 && confidence < 1.0) {
        return u64::MAX;
    }
    ((1.0 - confidence).ln() / ratio.ln()).ceil().max(1.0) as u64
}

/// How many distinct routes a [`Routes`] keeps (as learned, before templates merge).
pub const MAX_ROUTES: usize = 16;

/// The distinct routes sessions took into a step: the set of steps each had completed
/// before it. At most [`MAX_ROUTES`] are kept, as registry ids; compile maps them onto
/// the merged endpoints and counts what stays distinct. Merges by union, so workers and
/// proxies add up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routes(Vec<u128>);

impl Routes {
    pub fn add(&mut self, route: EndpointSet) {
        if self.0.len() < MAX_ROUTES && !self.0.contains(&route.0) {
            self.0.push(route.0);
        }
    }

    pub fn merge(&mut self, other: &Routes) {
        for r in &other.0 {
            self.add(EndpointSet(*r));
        }
    }

    /// The routes with every step mapped through `map` (merged templates).
    pub fn remap(&self, map: impl Fn(EndpointId) -> Option<EndpointId>) -> Routes {
        let mut out = Routes::default();
        for r in &self.0 {
            out.add(EndpointSet(*r).remap(&map));
        }
        out
    }

    /// Routes with `id` taken out of each (a step repeated is not a route into itself).
    pub fn drop_member(&mut self, id: EndpointId) {
        let routes = std::mem::take(&mut self.0);
        for r in routes {
            let mut set = EndpointSet(r);
            set.remove(id);
            self.add(set);
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a policy says about the evidence behind an endpoint's order rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Learned sessions that reached the step.
    pub sessions: u64,
    /// Sessions a prerequisite needs (with no violation) at the configured ratio and
    /// confidence.
    pub sessions_needed: u64,
    /// Distinct routes into the step seen (capped at 16), and how many an order rule needs.
    pub routes: u32,
    pub routes_needed: u32,
    /// Why no order is enforced here, when none is: shown by `policy show` and the demo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Evidence {
    /// The one-line reading of this evidence.
    pub fn describe(&self) -> String {
        match &self.note {
            Some(note) => note.clone(),
            None => format!(
                "order evidence: {} sessions (needs {}), {} routes (needs {})",
                self.sessions, self.sessions_needed, self.routes, self.routes_needed
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perfect_record_needs_the_textbook_sample_size() {
        // (1 - c)^(1/n) >= r  <=>  n >= ln(1-c) / ln r
        assert_eq!(sessions_needed(0.98, 0.99), 228);
        assert_eq!(sessions_needed(0.90, 0.99), 44);
        assert!(!share_at_least(227, 227, 0.98, 0.99));
        assert!(share_at_least(228, 228, 0.98, 0.99));
        assert!(!share_at_least(43, 43, 0.90, 0.99));
        assert!(share_at_least(44, 44, 0.90, 0.99));
    }

    #[test]
    fn violations_raise_the_sample_needed() {
        // One violation in 228 is no longer enough at 0.98; with more data it is.
        assert!(!share_at_least(227, 228, 0.98, 0.99));
        assert!(share_at_least(995, 1000, 0.98, 0.99));
        // A share below the ratio is never enough, whatever the sample.
        assert!(!share_at_least(97_000, 100_000, 0.98, 0.99));
    }

    #[test]
    fn matches_the_exact_bound_computed_directly() {
        // P(X >= 9 | n = 10, p = 0.7) = 10 * 0.7^9 * 0.3 + 0.7^10 = 0.1493
        let tail = upper_tail_ln(9, 10, 0.7).exp();
        assert!((tail - 0.149_308_7).abs() < 1e-6, "{tail}");
        assert!(share_at_least(9, 10, 0.7, 0.85));
        assert!(!share_at_least(9, 10, 0.7, 0.86));
    }

    #[test]
    fn large_samples_do_not_underflow() {
        assert!(share_at_least(9_950_000, 10_000_000, 0.99, 0.999));
        assert!(!share_at_least(9_890_000, 10_000_000, 0.99, 0.999));
    }

    #[test]
    fn an_upper_bound_of_the_99th_percentile_needs_459_units() {
        assert_eq!(quantile_upper_rank(458, 0.99, 0.99), None);
        assert_eq!(
            quantile_upper_rank(459, 0.99, 0.99),
            Some(459),
            "the largest value"
        );
        let r = quantile_upper_rank(10_000, 0.99, 0.99).unwrap();
        assert!(
            (9_920..=9_930).contains(&r),
            "{r}: p99 rank 9,900 plus a margin"
        );
        assert!(upper_tail_ln(r, 10_000, 0.99) <= 0.01f64.ln());
        assert!(upper_tail_ln(r - 1, 10_000, 0.99) > 0.01f64.ln());
        assert_eq!(quantile_upper_rank(0, 0.99, 0.99), None);
    }

    #[test]
    fn degenerate_inputs_assert_nothing() {
        assert!(!share_at_least(0, 0, 0.9, 0.99));
        assert!(!share_at_least(5, 4, 0.9, 0.99));
        assert!(!share_at_least(10, 10, 1.0, 0.99));
        assert_eq!(sessions_needed(1.0, 0.99), u64::MAX);
    }

    #[test]
    fn routes_are_a_bounded_union() {
        let mut a = Routes::default();
        a.add(EndpointSet(1));
        a.add(EndpointSet(1));
        let mut b = Routes::default();
        for r in 0..40 {
            b.add(EndpointSet(r));
        }
        a.merge(&b);
        assert_eq!(a.len(), MAX_ROUTES);
        // Routes that differ only in steps that merge into one template are one route.
        let mut c = Routes::default();
        c.add(EndpointSet(0b011));
        c.add(EndpointSet(0b101));
        assert_eq!(c.remap(|id| Some(if id == 2 { 1 } else { id })).len(), 1);
    }
}
