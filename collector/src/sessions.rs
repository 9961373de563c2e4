//! `Sessions.Completed`: what a session completed at any proxy, from stored telemetry.
//!
//! A proxy that meets a session for the first time whose first request skips a step asks
//! this before blocking it (`session.midflow`): a customer whose step went through
//! another proxy (or one since restarted) is let through, a step-skipper is not. Every
//! proxy reports the completions of steps some rule waits for (not only sampled
//! sessions), so the store holds what the answer needs.

use flowguard_engine::slot::is_success;
use flowguard_proto::v1::{CompletedRequest, CompletedResponse};

/// Templates one question may ask about (a model has at most 128 endpoints).
pub const MAX_TEMPLATES: usize = 128;
/// The furthest back a question may look (the longest session idle timeout), seconds.
pub const MAX_HORIZON_S: u32 = 7 * 86_400;
/// The horizon of a question that names none (the default session idle timeout).
pub const DEFAULT_HORIZON_S: u32 = 1800;

/// The first stored time a question looks at, for a question at `now_ms`.
pub fn since_ms(q: &CompletedRequest, now_ms: u64) -> u64 {
    let horizon = match q.horizon_s {
        0 => DEFAULT_HORIZON_S,
        h => h.min(MAX_HORIZON_S),
    };
    now_ms.saturating_sub(u64::from(horizon) * 1000)
}

/// The answer from the session's stored events (template, identifier hash, status):
/// the asked templates it completed, overall and on the asked object.
pub fn answer(q: &CompletedRequest, rows: &[(String, u64, u16)]) -> CompletedResponse {
    let mut out = CompletedResponse {
        known: !rows.is_empty(),
        ..CompletedResponse::default()
    };
    for t in &q.templates {
        let (mut completed, mut on_object) = (false, false);
        for (_, ids, _) in rows
            .iter()
            .filter(|(template, _, status)| template == t && is_success(*status))
        {
            completed = true;
            on_object |= q.ids != 0 && *ids == q.ids;
        }
        if completed && !out.completed.contains(t) {
            out.completed.push(t.clone());
        }
        if on_object && !out.on_object.contains(t) {
            out.on_object.push(t.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(templates: &[&str], ids: u64) -> CompletedRequest {
        CompletedRequest {
            session: 9,
            templates: templates.iter().map(|t| t.to_string()).collect(),
            ids,
            horizon_s: 0,
        }
    }

    fn row(t: &str, ids: u64, status: u16) -> (String, u64, u16) {
        (t.to_owned(), ids, status)
    }

    #[test]
    fn answers_completed_steps_overall_and_on_the_object() {
        let rows = [
            row("POST /login", 0, 200),
            row("POST /o/{id}/pay", 5, 402),
            row("POST /o/{id}/pay", 6, 200),
            row("POST /o/{id}/pay", 7, 302),
        ];
        let a = answer(
            &q(&["POST /login", "POST /o/{id}/pay", "POST /cart"], 7),
            &rows,
        );
        assert!(a.known);
        assert_eq!(a.completed, ["POST /login", "POST /o/{id}/pay"]);
        assert_eq!(a.on_object, ["POST /o/{id}/pay"]);
        let a = answer(&q(&["POST /o/{id}/pay"], 5), &rows);
        assert_eq!(a.completed, ["POST /o/{id}/pay"], "paid another order");
        assert!(a.on_object.is_empty(), "this one's payment failed");
        let a = answer(&q(&["POST /o/{id}/pay"], 0), &rows);
        assert!(a.on_object.is_empty(), "no object asked");
    }

    #[test]
    fn an_unknown_session_has_completed_nothing() {
        let a = answer(&q(&["POST /login"], 0), &[]);
        assert!(!a.known && a.completed.is_empty() && a.on_object.is_empty());
        let a = answer(&q(&["POST /login"], 0), &[row("POST /login", 0, 401)]);
        assert!(
            a.known && a.completed.is_empty(),
            "a failed login is no step"
        );
    }

    #[test]
    fn the_horizon_is_bounded() {
        let mut question = q(&[], 0);
        assert_eq!(since_ms(&question, 10_000_000), 10_000_000 - 1_800_000);
        question.horizon_s = u32::MAX;
        assert_eq!(since_ms(&question, 1_000), 0);
        assert_eq!(
            since_ms(&question, u64::from(MAX_HORIZON_S) * 2000),
            u64::from(MAX_HORIZON_S) * 1000
        );
    }
}
