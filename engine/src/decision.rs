//! What the filter does with a request's verdict, by mode: the mode table, in one place.

use crate::config::Mode;
use crate::verdict::{Outcome, Verdict};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// `learn`: the request passes untouched and nothing is acted on.
    Pass,
    /// No model yet (`monitor`, `enforce`): the upstream is told the session only.
    Session,
    /// The upstream is told the session and the verdict (`x-flowguard-verdict`).
    Annotate,
    /// `enforce`, a blocking verdict: a local reply (`retry-after` with a 429).
    Reply { status: u16, retry_after_s: u32 },
}

impl Decision {
    pub fn of(mode: Mode, has_model: bool, verdict: &Verdict) -> Decision {
        match (mode, has_model, verdict.outcome) {
            (Mode::Learn, _, _) => Decision::Pass,
            (_, false, _) => Decision::Session,
            (Mode::Enforce, true, Outcome::Block { status }) => Decision::Reply {
                status,
                retry_after_s: verdict.retry_after_s,
            },
            (_, true, _) => Decision::Annotate,
        }
    }

    /// Whether the verdict counts (metrics, telemetry's outcome): a model decided it in
    /// `monitor` or `enforce`.
    pub fn acts(self) -> bool {
        matches!(self, Decision::Annotate | Decision::Reply { .. })
    }

    /// The local reply's status, when there is one.
    pub fn reply_status(self) -> Option<u16> {
        match self {
            Decision::Reply { status, .. } => Some(status),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(outcome: Outcome) -> Verdict {
        Verdict {
            outcome,
            retry_after_s: 7,
            ..Verdict::ALLOW
        }
    }

    #[test]
    fn the_mode_table() {
        let block = verdict(Outcome::Block { status: 429 });
        let flag = verdict(Outcome::Flag);
        let allow = verdict(Outcome::Allow);
        let table = [
            // learn never acts, with or without a model
            (Mode::Learn, true, &block, Decision::Pass),
            (Mode::Learn, false, &block, Decision::Pass),
            // without a model only the session is told
            (Mode::Monitor, false, &block, Decision::Session),
            (Mode::Enforce, false, &block, Decision::Session),
            // monitor annotates every verdict, blocking ones too
            (Mode::Monitor, true, &block, Decision::Annotate),
            (Mode::Monitor, true, &flag, Decision::Annotate),
            // enforce replies to a blocking verdict, annotates the rest
            (
                Mode::Enforce,
                true,
                &block,
                Decision::Reply {
                    status: 429,
                    retry_after_s: 7,
                },
            ),
            (Mode::Enforce, true, &flag, Decision::Annotate),
            (Mode::Enforce, true, &allow, Decision::Annotate),
        ];
        for (mode, model, v, want) in table {
            let got = Decision::of(mode, model, v);
            assert_eq!(got, want, "{mode:?}, model {model}, {:?}", v.outcome);
            assert_eq!(
                got.acts(),
                matches!(want, Decision::Annotate | Decision::Reply { .. })
            );
        }
        assert_eq!(
            Decision::of(Mode::Enforce, true, &block).reply_status(),
            Some(429)
        );
        assert_eq!(
            Decision::of(Mode::Monitor, true, &block).reply_status(),
            None
        );
    }
}
