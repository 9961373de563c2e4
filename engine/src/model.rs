//! The compiled model: a policy turned into bitsets and hash lookups for the request path.

use crate::endpoint::{DeclaredTemplate, Normaliser};
use crate::endpoint_set::{EndpointId, EndpointSet};
use crate::policy::{Policy, PolicyError, START};
use crate::slot::NO_ENDPOINT;
use std::collections::{HashMap, HashSet};

/// What the filter consults per request. Endpoint ids are positions in the policy.
#[derive(Clone, Debug)]
pub struct Model {
    pub version: u64,
    pub normaliser: Normaliser,
    index: HashMap<String, EndpointId>,
    templates: Vec<String>,
    prerequisites: Vec<EndpointSet>,
    transitions: HashSet<(EndpointId, EndpointId)>,
}

impl Model {
    /// Validates and compiles `policy`; `declared` are the configured templates.
    pub fn compile(policy: &Policy, declared: Vec<DeclaredTemplate>) -> Result<Model, PolicyError> {
        policy.validate()?;
        let templates: Vec<String> = policy
            .endpoints
            .iter()
            .map(|e| e.template.clone())
            .collect();
        let index: HashMap<String, EndpointId> = templates
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((t.clone(), EndpointId::try_from(i).ok()?)))
            .collect();
        let id = |t: &str| {
            if t == START {
                Some(NO_ENDPOINT)
            } else {
                index.get(t).copied()
            }
        };
        let prerequisites = policy
            .endpoints
            .iter()
            .map(|e| {
                let mut set = EndpointSet::EMPTY;
                e.prerequisites
                    .iter()
                    .filter_map(|p| id(p))
                    .for_each(|p| set.insert(p));
                set
            })
            .collect();
        let transitions = policy
            .transitions
            .iter()
            .filter(|t| t.count > 0)
            .filter_map(|t| Some((id(&t.from)?, id(&t.to)?)))
            .collect();
        let prefixes = policy.variable_prefixes.iter().cloned().collect();
        Ok(Model {
            version: policy.version,
            normaliser: Normaliser::new(declared, prefixes),
            prerequisites,
            transitions,
            index,
            templates,
        })
    }

    /// The id of a template, if the model knows it.
    pub fn endpoint(&self, template: &str) -> Option<EndpointId> {
        self.index.get(template).copied()
    }

    pub fn template(&self, id: EndpointId) -> Option<&str> {
        self.templates.get(usize::from(id)).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.templates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// Endpoints that must have succeeded before `id` is called.
    pub fn prerequisites(&self, id: EndpointId) -> EndpointSet {
        self.prerequisites
            .get(usize::from(id))
            .copied()
            .unwrap_or_default()
    }

    /// Whether `from -> to` was seen in learning (`from` = `NO_ENDPOINT`: session start).
    pub fn knows_transition(&self, from: EndpointId, to: EndpointId) -> bool {
        self.transitions.contains(&(from, to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{EndpointPolicy, Transition};

    #[test]
    fn compiles_prerequisites_and_transitions() {
        let p = Policy {
            version: 9,
            variable_prefixes: vec!["GET /u".into()],
            endpoints: vec![
                EndpointPolicy {
                    template: "POST /pay".into(),
                    ..Default::default()
                },
                EndpointPolicy {
                    template: "POST /confirm".into(),
                    prerequisites: vec!["POST /pay".into()],
                    ..Default::default()
                },
            ],
            transitions: vec![
                Transition {
                    from: START.into(),
                    to: "POST /pay".into(),
                    count: 2,
                },
                Transition {
                    from: "POST /pay".into(),
                    to: "POST /confirm".into(),
                    count: 0,
                },
            ],
            ..Default::default()
        };
        let m = Model::compile(&p, vec![]).unwrap();
        assert_eq!((m.version, m.len()), (9, 2));
        assert_eq!(m.endpoint("POST /confirm"), Some(1));
        assert_eq!(m.prerequisites(1).iter().collect::<Vec<_>>(), [0]);
        assert!(m.prerequisites(7).is_empty());
        assert!(m.knows_transition(NO_ENDPOINT, 0));
        assert!(
            !m.knows_transition(0, 1),
            "zero-count transitions are unknown"
        );
        let mut out = String::new();
        m.normaliser.normalise("GET", "/u/alice", &mut out);
        assert_eq!(out, "GET /u/{id}");
    }
}
