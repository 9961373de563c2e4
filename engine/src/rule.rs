//! Rule ids and actions: the contract (ARCHITECTURE.md, the observable contract), spelled once.

use serde::{Deserialize, Serialize};

/// A detection rule. The serde names are the stable ids used by tests, telemetry and config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Rule {
    #[serde(rename = "order.missing_prerequisite")]
    MissingPrerequisite,
    #[serde(rename = "order.unknown_transition")]
    UnknownTransition,
    #[serde(rename = "rate.session")]
    RateSession,
    #[serde(rename = "rate.enumeration")]
    RateEnumeration,
    #[serde(rename = "auth.failures")]
    AuthFailures,
    #[serde(rename = "inventory.unknown_endpoint")]
    UnknownEndpoint,
    #[serde(rename = "inventory.deprecated_endpoint")]
    DeprecatedEndpoint,
    #[serde(rename = "response.sensitive_data")]
    SensitiveData,
}

impl Rule {
    /// Every rule, in the contract's order.
    pub const ALL: [Rule; 8] = [
        Rule::MissingPrerequisite,
        Rule::UnknownTransition,
        Rule::RateSession,
        Rule::RateEnumeration,
        Rule::AuthFailures,
        Rule::UnknownEndpoint,
        Rule::DeprecatedEndpoint,
        Rule::SensitiveData,
    ];

    /// The stable rule id.
    pub const fn id(self) -> &'static str {
        match self {
            Rule::MissingPrerequisite => "order.missing_prerequisite",
            Rule::UnknownTransition => "order.unknown_transition",
            Rule::RateSession => "rate.session",
            Rule::RateEnumeration => "rate.enumeration",
            Rule::AuthFailures => "auth.failures",
            Rule::UnknownEndpoint => "inventory.unknown_endpoint",
            Rule::DeprecatedEndpoint => "inventory.deprecated_endpoint",
            Rule::SensitiveData => "response.sensitive_data",
        }
    }

    /// What `enforce` does when the rule fires and configuration says nothing.
    pub const fn default_action(self) -> Action {
        match self {
            Rule::MissingPrerequisite
            | Rule::RateSession
            | Rule::RateEnumeration
            | Rule::AuthFailures => Action::Block,
            _ => Action::Flag,
        }
    }

    /// The status of the local reply when the rule blocks.
    pub const fn block_status(self) -> u16 {
        match self {
            Rule::RateSession | Rule::RateEnumeration | Rule::AuthFailures => 429,
            _ => 403,
        }
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// What a fired rule does in `enforce`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Block,
    Flag,
    Off,
}

/// A small set of rules, one bit each: what fired for one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleSet(u8);

impl RuleSet {
    pub const EMPTY: RuleSet = RuleSet(0);

    pub fn remove(&mut self, rule: Rule) {
        self.0 &= !rule.bit();
    }

    pub fn insert(&mut self, rule: Rule) {
        self.0 |= rule.bit();
    }

    pub fn contains(self, rule: Rule) -> bool {
        self.0 & rule.bit() != 0
    }

    /// The rules in both sets.
    pub fn intersection(self, other: RuleSet) -> RuleSet {
        RuleSet(self.0 & other.0)
    }

    /// The rules in `self` and not in `other`.
    pub fn difference(self, other: RuleSet) -> RuleSet {
        RuleSet(self.0 & !other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The rules in the set, in the contract's order (bit `i` is `Rule::ALL[i]`): one
    /// step per member, none for an empty set (the common case).
    pub fn iter(self) -> impl Iterator<Item = Rule> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            let i = bits.trailing_zeros();
            bits &= bits.wrapping_sub(1);
            Rule::ALL.get(usize::try_from(i).ok()?).copied()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_serde_names() {
        for rule in Rule::ALL {
            let json = serde_json::to_string(&rule).unwrap();
            assert_eq!(json, format!("\"{}\"", rule.id()));
        }
    }

    #[test]
    fn rule_set_keeps_order_and_membership() {
        let mut set = RuleSet::EMPTY;
        set.insert(Rule::UnknownEndpoint);
        set.insert(Rule::MissingPrerequisite);
        let ids: Vec<_> = set.iter().map(Rule::id).collect();
        assert_eq!(
            ids,
            ["order.missing_prerequisite", "inventory.unknown_endpoint"]
        );
        assert!(!set.contains(Rule::RateSession));
        assert_eq!(RuleSet::EMPTY.iter().count(), 0);
    }

    #[test]
    fn every_rule_is_its_own_bit_in_contract_order() {
        for (i, rule) in Rule::ALL.into_iter().enumerate() {
            assert_eq!(rule.bit(), 1 << i);
        }
        let mut all = RuleSet::EMPTY;
        Rule::ALL.into_iter().for_each(|r| all.insert(r));
        assert!(all.iter().eq(Rule::ALL));
    }
}
