//! One request's path through the filter (DESIGN.md section 2).

use crate::host::{self, HostResult, CAS_MISMATCH};
use crate::metrics::Metrics;
use crate::root::SharedWorker;
use crate::shared::{self, CAS_RETRIES};
use crate::worker::Worker;
use flowguard_engine::config::Mode;
use flowguard_engine::endpoint_set::EndpointId;
use flowguard_engine::header_map::decode_pairs;
use flowguard_engine::session::{self, Source};
use flowguard_engine::slot::{is_success, Slot};
use flowguard_engine::slot_table::Placement;
use flowguard_engine::verdict::{self, Outcome, Verdict};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, MapType};
use std::fmt::Write;

const VERDICT_HEADER: &str = "x-flowguard-verdict";
const SESSION_HEADER: &str = "x-flowguard-session";
const OWN_PREFIX: &[u8] = b"x-flowguard-";

/// What the response phase needs from the request phase.
#[derive(Clone, Copy)]
struct Pending {
    index: u32,
    fingerprint: u64,
    endpoint: EndpointId,
    epoch: u32,
}

pub struct Http {
    worker: SharedWorker,
    pending: Option<Pending>,
}

impl Http {
    pub fn new(worker: SharedWorker) -> Http {
        Http {
            worker,
            pending: None,
        }
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Ok(mut guard) = self.worker.try_borrow_mut() else {
            return Action::Continue;
        };
        let Some(w) = guard.as_mut() else {
            return Action::Continue;
        };
        match on_request(w, &mut self.pending) {
            Ok(action) => action,
            Err(e) => {
                // Fail open on host errors: the filter must never take the API down.
                Metrics::inc(w.metrics.host_errors);
                host::log(
                    LogLevel::Debug,
                    &format!("flowguard: request: host error {e:?}"),
                );
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(pending) = self.pending.take() else {
            return Action::Continue;
        };
        let Ok(mut guard) = self.worker.try_borrow_mut() else {
            return Action::Continue;
        };
        if let Some(w) = guard.as_mut() {
            if let Err(e) = on_response(w, pending) {
                Metrics::inc(w.metrics.host_errors);
                host::log(
                    LogLevel::Debug,
                    &format!("flowguard: response: host error {e:?}"),
                );
            }
        }
        Action::Continue
    }
}

fn on_request(w: &mut Worker, pending: &mut Option<Pending>) -> HostResult<Action> {
    Metrics::inc(w.metrics.requests);
    let now = host::now_secs()?;
    let bytes = host::header_pairs(MapType::HttpRequestHeaders)?;
    let pairs = decode_pairs(&bytes);
    // Upstreams trust x-flowguard-* headers, so a client may never send one.
    for (name, _) in &pairs {
        if name
            .get(..OWN_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(OWN_PREFIX))
        {
            host::remove_header(MapType::HttpRequestHeaders, name)?;
        }
    }
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };

    let sources = &w.settings.session.sources;
    let mut key = session::derive(sources, get, None);
    let address;
    if key.is_none() && sources.contains(&Source::Address) {
        address = host::property(&["source", "address"])?;
        let addr = address.as_deref().and_then(|a| std::str::from_utf8(a).ok());
        key = session::derive(sources, get, addr);
    }
    let Some(key) = key else {
        Metrics::inc(w.metrics.sessionless);
        return Ok(Action::Continue);
    };
    let fingerprint = w
        .settings
        .session
        .fingerprinter
        .fingerprint(key.kind, key.value.as_bytes());

    let normaliser = w
        .model
        .as_ref()
        .map_or(&w.base_normaliser, |m| &m.normaliser);
    normaliser.normalise(
        get(":method").unwrap_or("GET"),
        get(":path").unwrap_or("/"),
        &mut w.scratch.template,
    );
    let endpoint = w.endpoint_id()?;
    let learning = w.model.is_none();

    let mut decided = None;
    for _ in 0..CAS_RETRIES {
        let mut located = w.locate(fingerprint, now)?;
        let before = located.slot;
        let visit = located.slot.record_request(endpoint, now);
        let verdict = match &w.model {
            Some(model) => verdict::decide(model, &w.settings.rules, &before, endpoint),
            None => Verdict::ALLOW,
        };
        match host::shared_set(&w.scratch.key, &located.slot.encode(), located.cas) {
            Ok(()) => {}
            Err(CAS_MISMATCH) => continue,
            Err(e) => return Err(e),
        }
        match located.placement {
            Placement::Own => {}
            Placement::Free => Metrics::inc(w.metrics.sessions_new),
            Placement::Evict => {
                Metrics::inc(w.metrics.sessions_new);
                Metrics::inc(w.metrics.evictions);
            }
        }
        if let (true, Some(e)) = (learning, endpoint) {
            w.delta.observe_request(e, &visit);
        }
        *pending = endpoint.map(|endpoint| Pending {
            index: located.index,
            fingerprint,
            endpoint,
            epoch: located.slot.model_version,
        });
        decided = Some(verdict);
        break;
    }
    let Some(verdict) = decided else {
        Metrics::inc(w.metrics.slot_conflicts);
        return Ok(Action::Continue);
    };
    if w.settings.mode == Mode::Learn {
        return Ok(Action::Continue);
    }
    let session_id = &mut w.scratch.key;
    session_id.clear();
    let _ = write!(session_id, "{fingerprint:016x}");
    host::set_header(MapType::HttpRequestHeaders, SESSION_HEADER, session_id)?;
    if learning {
        return Ok(Action::Continue);
    }
    record_verdict(w, &verdict);
    if let (Mode::Enforce, Outcome::Block { status }) = (w.settings.mode, verdict.outcome) {
        *pending = None;
        let request_id = get("x-request-id").filter(|id| is_safe_id(id));
        block(w, status, request_id, fingerprint)?;
        return Ok(Action::Pause);
    }
    verdict.write_header(&mut w.scratch.header);
    host::set_header(
        MapType::HttpRequestHeaders,
        VERDICT_HEADER,
        &w.scratch.header,
    )?;
    Ok(Action::Continue)
}

fn record_verdict(w: &Worker, verdict: &Verdict) {
    let m = &w.metrics;
    Metrics::inc(match verdict.outcome {
        Outcome::Allow => m.allow,
        Outcome::Flag => m.flag,
        Outcome::Block { .. } => m.block,
    });
    verdict.fired.iter().for_each(|r| m.rule(r));
}

/// Request ids go into a JSON body verbatim, so only plain ones are echoed.
fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Sends the local reply. The client learns that it was blocked, never which rule fired.
fn block(
    w: &mut Worker,
    status: u16,
    request_id: Option<&str>,
    fingerprint: u64,
) -> HostResult<()> {
    w.requests_seen = w.requests_seen.wrapping_add(1);
    let fallback;
    let id = match request_id {
        Some(id) => id,
        None => {
            fallback = format!("fg-{fingerprint:016x}-{}", w.requests_seen);
            &fallback
        }
    };
    let body = format!("{{\"error\":\"request blocked\",\"request_id\":\"{id}\"}}");
    let mut headers = vec![("content-type", "application/json")];
    if status == 429 {
        headers.push(("retry-after", "60"));
    }
    host::send_response(status.into(), &headers, body.as_bytes())?;
    Metrics::inc(w.metrics.local_replies);
    host::log(
        LogLevel::Debug,
        &format!(
            "flowguard: blocked {} with {status}, request_id {id}",
            w.scratch.template
        ),
    );
    Ok(())
}

fn on_response(w: &mut Worker, p: Pending) -> HostResult<()> {
    let status = host::header(MapType::HttpResponseHeaders, ":status")?
        .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok())
        .unwrap_or(0);
    if !is_success(status) {
        return Ok(());
    }
    shared::slot_key(p.index, &mut w.scratch.key);
    let written = shared::update(&w.scratch.key, |bytes| {
        let mut slot = Slot::decode(bytes?).ok()?;
        if slot.fingerprint != p.fingerprint || slot.model_version != p.epoch {
            return None; // the slot changed hands meanwhile
        }
        slot.record_response(p.endpoint, status);
        Some(slot.encode().to_vec())
    })?;
    if written && w.model.is_none() {
        w.delta.observe_success(p.endpoint);
    }
    Ok(())
}
