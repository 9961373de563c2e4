//! Asking the fleet about a session new here whose first request skips a step
//! (`flowguard_engine::fleet_join`): the request is paused, the collector is asked over
//! Envoy's gRPC callout with a short deadline (`session.midflow.fleet_timeout_ms`), and
//! the answer comes back to the request's HTTP context, whose exchange resumes with it.

use crate::host;
use crate::metrics::Metrics;
use crate::worker::Worker;
use flowguard_engine::exchange::Question;
use flowguard_engine::fleet_join::{Fleet, Seed};
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

/// Sends the exchange's question about a session new here (`Sessions.Completed`).
/// Returns the callout's token (the request then waits), or `None` when it could not be
/// sent.
pub fn ask(w: &mut Worker, question: &Question) -> Option<u32> {
    if w.fleet_waiting >= MAX_WAITING {
        return None;
    }
    let message = v1::CompletedRequest {
        session: question.session,
        templates: question.templates.clone(),
        ids: question.object,
        horizon_s: question.horizon_s,
    };
    let timeout = Duration::from_millis(w.settings.session.midflow_fleet_timeout_ms.into());
    let token = w
        .telemetry
        .as_mut()?
        .ask_sessions(&message.encode_to_vec(), timeout)?;
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
pub fn standing(w: &Worker, reply: &Reply) -> Fleet {
    match (reply, w.model()) {
        (Reply::Answer(a), Some(model)) => Fleet::Answered(Seed::from_answer(
            model,
            a.known,
            a.completed.iter().map(String::as_str),
            a.on_object.iter().map(String::as_str),
        )),
        _ => Fleet::Unavailable,
    }
}
