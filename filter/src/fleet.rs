//! Asking the fleet about a session new here whose first request skips a step
//! (`flowguard_engine::fleet_join`): the request is paused, the collector is asked over
//! Envoy's gRPC callout with a short deadline (`session.midflow.fleet_timeout_ms`), and
//! the answer comes back to the request's HTTP context, which judges it again.

use crate::host;
use crate::metrics::Metrics;
use crate::worker::Worker;
use flowguard_engine::fleet_join::{self, Fleet, Seed};
use flowguard_engine::verdict::{Request, Verdict};
use flowguard_proto::v1;
use flowguard_proto::Message;
use proxy_wasm::types::BufferType;
use std::time::Duration;

/// Questions in flight per worker at most: beyond, the budget applies at once. Bounds
/// what a flood of step-skipping sessions costs the collector.
pub const MAX_WAITING: u32 = 256;
/// Answers larger than this are not read (128 templates of 1 KiB at most, twice).
const MAX_ANSWER_BYTES: usize = 1 << 18;

/// What came back for a paused request.
pub enum Reply {
    Answer(v1::CompletedResponse),
    Unavailable,
}

/// How far back a question looks: a customer who logged in hours ago and stayed active
/// is still mid-flow.
const FLEET_HORIZON_S: u32 = 7 * 86_400;

/// Asks the collector what session `fingerprint` completed among the steps some rule
/// waits for. Returns the callout's token (the request then waits), or `None` when no
/// question could be sent.
pub fn ask(w: &mut Worker, request: &Request, verdict: &Verdict, fingerprint: u64) -> Option<u32> {
    if w.fleet_waiting >= MAX_WAITING {
        return None;
    }
    let model = w.model.as_ref()?;
    let question = v1::CompletedRequest {
        session: fingerprint,
        templates: fleet_join::question(model, verdict)
            .map(str::to_owned)
            .collect(),
        ids: fleet_join::question_object(model, request).unwrap_or(0),
        // A session's age, not its idle time, says how far back its steps lie: ask for
        // all the collector keeps (it caps the horizon at 7 days).
        horizon_s: FLEET_HORIZON_S,
    };
    let timeout = Duration::from_millis(w.settings.session.midflow_fleet_timeout_ms.into());
    let token = w
        .telemetry
        .as_mut()?
        .ask_sessions(&question.encode_to_vec(), timeout)?;
    w.fleet_waiting += 1;
    Metrics::inc(w.metrics.fleet_asked);
    Some(token)
}

/// Reads the answer to a question (gRPC `status`, `size` bytes).
pub fn read(status: u32, size: usize) -> Reply {
    if status != 0 || size > MAX_ANSWER_BYTES {
        return Reply::Unavailable;
    }
    match host::buffer(BufferType::GrpcReceiveBuffer, 0, size) {
        Ok(bytes) => {
            let bytes = bytes.unwrap_or_default();
            v1::CompletedResponse::decode(bytes.as_slice())
                .map_or(Reply::Unavailable, Reply::Answer)
        }
        Err(_) => Reply::Unavailable,
    }
}

/// Where the request stands with the fleet, in the installed model's ids.
pub fn standing(w: &Worker, reply: Option<&Reply>) -> Fleet {
    match (reply, w.model.as_ref()) {
        (None, _) => Fleet::Unasked,
        (Some(Reply::Answer(a)), Some(model)) => Fleet::Answered(Seed::from_answer(
            model,
            a.known,
            a.completed.iter().map(String::as_str),
            a.on_object.iter().map(String::as_str),
        )),
        (Some(_), _) => Fleet::Unavailable,
    }
}
