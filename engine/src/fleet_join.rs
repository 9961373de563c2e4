//! Mid-flow joins on evidence: a session new to this proxy whose first request would be
//! blocked for a skipped step is let through only if the fleet saw it take that step.
//!
//! The judge ([`crate::judge::Judge::request`]) does not decide such a request at once
//! when a collector is configured: it leaves the slot unwritten and marks the request
//! [`Fleet::Asking`]. The filter pauses it and asks the collector (`Sessions.Completed`,
//! the [`question`] built here) what the session completed; the answer becomes a
//! [`Seed`] ([`Seed::from_answer`]) and the request is judged again with
//! [`Fleet::Answered`]: the seeded steps count as done, anything still missing blocks. No
//! answer in time ([`Fleet::Unavailable`]) falls back to the per-address budget of
//! `session.midflow`, flagged.

use crate::config::{Mode, Settings};
use crate::endpoint_set::{EndpointId, EndpointSet};
use crate::model::Model;
use crate::slot::Slot;
use crate::verdict::{Request, Verdict};

/// Where a request stands with the fleet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fleet {
    /// Not asked (the usual case: the request is judged on this proxy's state alone).
    #[default]
    Unasked,
    /// The judge wants the fleet's answer before deciding; nothing was written.
    Asking,
    /// The fleet answered; the steps it saw completed count as done.
    Answered(Seed),
    /// No answer in time (collector unreachable, slow, or refusing): the budgeted join.
    Unavailable,
}

/// What the fleet saw a session complete, in this model's endpoint ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seed {
    /// The fleet had stored some event of the session.
    pub known: bool,
    /// Steps completed on any object.
    pub completed: EndpointSet,
    /// Steps completed on the request's own object.
    pub on_object: EndpointSet,
}

/// Whether new sessions' skipped steps are asked about: a collector is configured, the
/// deadline is not 0, and the mode acts on verdicts.
pub fn asks(settings: &Settings) -> bool {
    settings.collector.is_some()
        && settings.session.midflow_fleet_timeout_ms > 0
        && settings.mode != Mode::Learn
}

/// The templates to ask about: the steps the verdict found missing. Bound steps are
/// asked about on the request's object too (`request.id`, sent alongside).
pub fn question<'m>(model: &'m Model, verdict: &Verdict) -> impl Iterator<Item = &'m str> {
    // Every step some rule waits for, not only the ones this request misses: the answer
    // seeds the slot once, and the session's later steps are judged against it.
    EndpointSet(verdict.missing.0 | model.required().0)
        .iter()
        .filter_map(|e| model.template(e))
}

/// The object a question names: the request's identifier hash, when a bound rule of its
/// endpoint waits for steps on it.
pub fn question_object(model: &Model, request: &Request) -> Option<u64> {
    let e = request.endpoint?;
    request
        .id
        .filter(|_| !model.bound_prerequisites(e).is_empty())
}

impl Seed {
    /// The answer's templates as this model's ids; templates it does not know are ignored.
    pub fn from_answer<'a>(
        model: &Model,
        known: bool,
        completed: impl IntoIterator<Item = &'a str>,
        on_object: impl IntoIterator<Item = &'a str>,
    ) -> Seed {
        let ids = |ts: &mut dyn Iterator<Item = &'a str>| {
            let mut set = EndpointSet::EMPTY;
            ts.filter_map(|t| model.endpoint(t))
                .for_each(|e| set.insert(e));
            set
        };
        Seed {
            known,
            completed: ids(&mut completed.into_iter()),
            on_object: ids(&mut on_object.into_iter()),
        }
    }

    /// Records the seeded steps in `slot` as completed (on `object` too, for those done on
    /// it), as if this proxy had seen their answers.
    pub fn apply(&self, slot: &mut Slot, object: Option<u64>) {
        slot.completed = EndpointSet(slot.completed.0 | self.completed.0 | self.on_object.0);
        if let Some(id) = object {
            self.on_object
                .iter()
                .for_each(|e: EndpointId| slot.objects.complete(id, e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::{Judge, Judged};
    use crate::policy::Policy;
    use crate::rule::Rule;
    use crate::store::{self, MemoryHost};
    use crate::verdict::Outcome;

    const POLICY: &str = r#"{"version":1,"endpoints":[
        {"template":"POST /login","entry":true},
        {"template":"POST /o/{id}/pay","prerequisites":["POST /login"]},
        {"template":"POST /o/{id}/confirm","prerequisites":["POST /login"],
         "bound_prerequisites":["POST /o/{id}/pay"]}],
      "transitions":[{"from":"^","to":"POST /login","count":9},
        {"from":"POST /login","to":"POST /o/{id}/pay","count":9},
        {"from":"POST /o/{id}/pay","to":"POST /o/{id}/confirm","count":9}]}"#;
    const LOGIN: EndpointId = 0;
    const PAY: EndpointId = 1;
    const CONFIRM: EndpointId = 2;
    const ORDER: u64 = 0xfeed;
    const FLEET: &str = r#""collector":{"cluster":"c"}"#;

    fn settings(json: &str) -> Settings {
        Settings::from_json(json.as_bytes()).unwrap()
    }

    fn model(s: &Settings) -> Model {
        Model::compile(&Policy::from_json(POLICY.as_bytes()).unwrap(), s).unwrap()
    }

    fn judge<'a>(s: &'a Settings, m: &'a Model, started: u32) -> Judge<'a> {
        Judge {
            settings: s,
            model: Some(m),
            layout: u32::try_from(m.layout).unwrap(),
            registry_map: &[],
            started,
            relearns: false,
        }
    }

    fn confirm(fleet: Fleet) -> Request {
        Request {
            endpoint: Some(CONFIRM),
            id: Some(ORDER),
            now_ms: 5_000_000,
            fleet,
            ..Request::default()
        }
    }

    fn host(address: &str) -> MemoryHost {
        let mut h = MemoryHost::default();
        h.address = Some(address.to_owned());
        h
    }

    fn run(j: &Judge, h: &mut MemoryHost, r: &mut Request, fp: u64) -> Judged {
        j.request(h, r, fp, None, 5_000).unwrap().expect("judged")
    }

    fn written(h: &mut MemoryHost, j: &Judge, fp: u64) -> bool {
        let located = j.locate(h, fp, 5_000).unwrap();
        located.placement == crate::slot_table::Placement::Own
            && store::Host::get(h, located.key.as_str())
                .unwrap()
                .0
                .is_some()
    }

    #[test]
    fn a_new_sessions_skip_waits_for_the_fleet_and_writes_nothing() {
        let s = settings(&format!(r#"{{"mode":"enforce",{FLEET}}}"#));
        let m = model(&s);
        let j = judge(&s, &m, 5_000);
        let mut h = host("10.0.0.1:5");
        let mut r = confirm(Fleet::Unasked);
        let judged = run(&j, &mut h, &mut r, 7);
        assert_eq!(r.fleet, Fleet::Asking);
        assert!(!r.midflow_ok, "no budget spent while asking");
        assert!(!written(&mut h, &j, 7), "the slot waits for the answer");
        let asked: Vec<&str> = question(&m, &judged.verdict).collect();
        assert_eq!(asked, ["POST /login", "POST /o/{id}/pay"]);
        assert_eq!(question_object(&m, &r), Some(ORDER));
        // A step that needs no object names none.
        let pay = Request {
            endpoint: Some(PAY),
            id: Some(ORDER),
            ..Request::default()
        };
        assert_eq!(question_object(&m, &pay), None);
        // An existing session's skip is not asked about: this proxy saw its flow.
        let mut h = host("10.0.0.1:5");
        let mut login = Request {
            endpoint: Some(LOGIN),
            now_ms: 5_000_000,
            ..Request::default()
        };
        run(&j, &mut h, &mut login, 8);
        let mut r = confirm(Fleet::Unasked);
        let judged = run(&j, &mut h, &mut r, 8);
        assert_eq!(r.fleet, Fleet::Unasked);
        assert_eq!(judged.verdict.outcome, Outcome::Block { status: 403 });
    }

    #[test]
    fn the_fleets_evidence_lets_a_customer_in_and_nothing_else() {
        let s = settings(&format!(r#"{{"mode":"enforce",{FLEET}}}"#));
        let m = model(&s);
        let j = judge(&s, &m, 5_000);
        let seed = |done: &[&str], on: &[&str]| {
            Seed::from_answer(&m, true, done.iter().copied(), on.iter().copied())
        };
        // Logged in and paid this order elsewhere: confirm passes, unflagged for order.
        let mut h = host("10.0.0.1:5");
        let paid = seed(&["POST /login", "POST /o/{id}/pay"], &["POST /o/{id}/pay"]);
        let mut r = confirm(Fleet::Answered(paid));
        let judged = run(&j, &mut h, &mut r, 7);
        // (Flagged only for the transition from nowhere: its steps went elsewhere.)
        assert_eq!(judged.verdict.outcome, Outcome::Flag, "{judged:?}");
        assert!(!judged.verdict.fired.contains(Rule::MissingPrerequisite));
        assert!(
            !judged.located.slot.midflow,
            "joined on evidence, not on trust"
        );
        assert!(judged.located.slot.completed.contains(PAY));
        assert!(written(&mut h, &j, 7));
        // Its next skip blocks as any session's would.
        let mut other = confirm(Fleet::Unasked);
        other.id = Some(ORDER + 1);
        let judged = run(&j, &mut h, &mut other, 7);
        assert_eq!(judged.verdict.outcome, Outcome::Block { status: 403 });
        // Paid another order only: confirming this one still blocks.
        let mut h = host("10.0.0.1:5");
        let other_order = seed(&["POST /login", "POST /o/{id}/pay"], &[]);
        let mut r = confirm(Fleet::Answered(other_order));
        let judged = run(&j, &mut h, &mut r, 9);
        assert_eq!(judged.verdict.outcome, Outcome::Block { status: 403 });
        assert!(judged.verdict.fired.contains(Rule::MissingPrerequisite));
        // Unknown to the fleet: a new session; the skip blocks, and no budget is spent.
        for fp in 100..110 {
            let mut r = confirm(Fleet::Answered(Seed::default()));
            let judged = run(&j, &mut h, &mut r, fp);
            assert_eq!(judged.verdict.outcome, Outcome::Block { status: 403 });
            assert!(!r.midflow_ok);
        }
    }

    #[test]
    fn without_an_answer_the_budget_applies_flagged() {
        // `always`: the budget is open outside a restart window too.
        let s = settings(&format!(
            r#"{{"mode":"enforce",{FLEET},"session":{{"midflow":{{"budget":2,"always":true}}}}}}"#
        ));
        let m = model(&s);
        let j = judge(&s, &m, 0);
        let mut h = host("10.0.0.1:5");
        let outcomes: Vec<(Outcome, bool)> = (0..4)
            .map(|fp| {
                let mut r = confirm(Fleet::Unavailable);
                let judged = run(&j, &mut h, &mut r, 50 + fp);
                (judged.verdict.outcome, r.midflow_ok)
            })
            .collect();
        let block = Outcome::Block { status: 403 };
        assert_eq!(
            outcomes,
            [
                (Outcome::Flag, true),
                (Outcome::Flag, true),
                (block, false),
                (block, false)
            ]
        );
        // Not `always`, and long after this proxy started: no budget either.
        let s = settings(&format!(r#"{{"mode":"enforce",{FLEET}}}"#));
        let j = judge(&s, &m, 0);
        let mut r = confirm(Fleet::Unavailable);
        let judged = run(&j, &mut host("10.0.0.2:5"), &mut r, 60);
        assert_eq!(judged.verdict.outcome, block);
    }

    #[test]
    fn without_a_collector_or_with_no_deadline_the_restart_window_stands() {
        for json in [
            r#"{"mode":"enforce"}"#,
            r#"{"mode":"enforce","collector":{"cluster":"c"},"session":{"midflow":{"fleet_timeout_ms":0}}}"#,
        ] {
            let s = settings(json);
            assert!(!asks(&s));
            let m = model(&s);
            let j = judge(&s, &m, 5_000);
            let mut r = confirm(Fleet::Unasked);
            let judged = run(&j, &mut host("10.0.0.1:5"), &mut r, 7);
            assert_eq!(r.fleet, Fleet::Unasked);
            assert!(r.midflow_ok, "{json}");
            assert_eq!(judged.verdict.outcome, Outcome::Flag);
        }
        let s = settings(&format!(r#"{{"mode":"learn",{FLEET}}}"#));
        assert!(!asks(&s), "learn mode acts on nothing");
    }

    #[test]
    fn the_deadline_is_configured_and_checked_at_load() {
        assert_eq!(settings("{}").session.midflow_fleet_timeout_ms, 50);
        let s = settings(r#"{"session":{"midflow":{"fleet_timeout_ms":200}}}"#);
        assert_eq!(s.session.midflow_fleet_timeout_ms, 200);
        for bad in ["-1", "1001", "\"50\""] {
            let json = format!(r#"{{"session":{{"midflow":{{"fleet_timeout_ms":{bad}}}}}}}"#);
            let e = Settings::from_json(json.as_bytes())
                .expect_err(&json)
                .to_string();
            assert!(
                e.contains("session.midflow.fleet_timeout_ms"),
                "{json}: {e}"
            );
        }
    }

    #[test]
    fn a_seed_marks_steps_done_overall_and_on_the_object() {
        let s = settings("{}");
        let m = model(&s);
        let seed = Seed::from_answer(
            &m,
            true,
            ["POST /login", "GET /unknown"],
            ["POST /o/{id}/pay"],
        );
        assert_eq!(seed.completed.iter().collect::<Vec<_>>(), [LOGIN]);
        let mut slot = Slot::new(1, 0, 1);
        seed.apply(&mut slot, Some(ORDER));
        assert!(slot.completed.contains(LOGIN) && slot.completed.contains(PAY));
        assert!(slot
            .objects
            .completed(ORDER)
            .is_some_and(|done| done.contains(PAY)));
        assert!(slot
            .objects
            .completed(ORDER + 1)
            .is_some_and(|done| !done.contains(PAY)));
    }
}
