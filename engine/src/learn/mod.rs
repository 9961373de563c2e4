//! Learning: counters from normal traffic, and their compilation into a [`Policy`].
//!
//! Counters are keyed by endpoint id (the learning registry's, or an active model's), are
//! sums, maxima and OR-able sketches, and merge: each worker keeps its own and folds them
//! into the shared copy on tick. One module per job: the counters and their codec, the
//! compilation into a policy (with the evidence each rule needs), relearning an active
//! policy, and offline learning from stored requests.
//!
//! [`Policy`]: crate::policy::Policy

mod compile;
mod counters;
mod offline;
mod relearn;
#[cfg(test)]
mod tests;

pub use crate::registry::Registry;
pub use compile::{compile, limit_from, variable_prefixes};
pub use counters::LearnStats;
pub use offline::{learn_from, Exchange, Observation};
pub use relearn::{relearn, relearn_due};
