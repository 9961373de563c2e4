//! One request's path through the filter (ARCHITECTURE.md, a request through the filter):
//! the engine's exchange (`flowguard_engine::exchange`) does the work; this reads what it
//! needs from Envoy, calls it, and applies what it returns.

use crate::host::{self, EnvoyHost, HostResult};
use crate::metrics::Metrics;
use crate::worker::{SharedWorker, Worker};
use flowguard_engine::exchange::{
    AnswerNeeds, Exchange, FleetCount, RequestStep, ResponseHead, ResponseStep,
};
use flowguard_engine::fleet_join::Fleet;
use flowguard_engine::header_map;
use flowguard_engine::rule::Rule;
use flowguard_engine::verdict::Outcome;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType};

pub struct Http {
    worker: SharedWorker,
    exchange: Exchange,
    /// The request is paused for the fleet's answer to this callout (`crate::fleet`).
    asking: Option<u32>,
}

impl Http {
    pub fn new(worker: SharedWorker) -> Http {
        Http {
            worker,
            exchange: Exchange::default(),
            asking: None,
        }
    }

    /// Forgets a question still in flight (the stream ended while paused). The callout is
    /// not cancelled: the host owns gRPC calls by the root context, so its answer still
    /// comes within the deadline and the SDK forgets the token then (a cancelled call
    /// never answers, and the SDK would keep its token forever).
    fn stop_asking(&mut self) {
        if self.asking.take().is_some() {
            with_worker(&self.worker, (), |w| {
                w.fleet_waiting = w.fleet_waiting.saturating_sub(1);
            });
        }
    }
}

/// Runs `body` with this worker's state; a worker being configured or already borrowed
/// (never on one thread) leaves the stream alone.
fn with_worker<T>(worker: &SharedWorker, fallback: T, body: impl FnOnce(&mut Worker) -> T) -> T {
    let Ok(mut guard) = worker.try_borrow_mut() else {
        return fallback;
    };
    guard.as_mut().map_or(fallback, body)
}

impl Context for Http {
    /// The fleet's answer for a paused request: judge it with the answer, then resume it
    /// or reply.
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if self.asking != Some(token_id) {
            return;
        }
        self.asking = None;
        let reply = crate::fleet::read(status_code, response_size);
        let exchange = &mut self.exchange;
        let Ok(mut guard) = self.worker.try_borrow_mut() else {
            let _ = host::resume_request();
            return;
        };
        let Some(w) = guard.as_mut() else {
            let _ = host::resume_request();
            return;
        };
        w.fleet_waiting = w.fleet_waiting.saturating_sub(1);
        let action = resume(w, exchange, &reply).unwrap_or_else(|e| {
            request_host_error(w, e);
            Action::Continue
        });
        if action == Action::Continue {
            if let Err(e) = host::resume_request() {
                // The stream is gone (reset while paused): nothing to resume.
                host::log(
                    LogLevel::Debug,
                    &format!("flowguard: fleet answer: not resumed {e:?}"),
                );
            }
        }
    }

    fn on_done(&mut self) -> bool {
        self.stop_asking();
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        #[cfg(feature = "crash-switch")]
        crash_switch();
        let Ok(mut guard) = self.worker.try_borrow_mut() else {
            return Action::Continue;
        };
        let Some(w) = guard.as_mut() else {
            return Action::Continue;
        };
        match on_request(w, &mut self.exchange, &mut self.asking) {
            Ok(action) => action,
            Err(e) => {
                // Fail open on host errors: the filter must never take the API down.
                request_host_error(w, e);
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let exchange = &mut self.exchange;
        with_worker(&self.worker, Action::Continue, |w| {
            if let Err(e) = on_response_head(w, exchange, end_of_stream) {
                response_host_error(w, e);
            }
            Action::Continue
        })
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.exchange.wants_body() {
            return Action::Continue;
        }
        let exchange = &mut self.exchange;
        with_worker(&self.worker, Action::Continue, |w| {
            // The chunk streams on unchanged; the exchange keeps a bounded part of it.
            let chunk = host::buffer(BufferType::HttpResponseBody, 0, body_size);
            let chunk = chunk.map(Option::unwrap_or_default).unwrap_or_default();
            let step = {
                let (scope, delta) = w.scope();
                exchange
                    .response_body_clocked(
                        &scope,
                        &mut EnvoyHost,
                        &chunk,
                        end_of_stream,
                        host::now_ms,
                        delta,
                    )
                    .map_err(host::from_store)
            };
            applied_response(w, step);
            Action::Continue
        })
    }

    fn on_log(&mut self) {
        self.stop_asking();
        // The stream ended: an outcome still waiting for its body stands as its status
        // (fail open: a customer's step is never lost), a held event is reported.
        if !self.exchange.unfinished() {
            return;
        }
        let exchange = &mut self.exchange;
        with_worker(&self.worker, (), |w| {
            // The clock is read only if something is still to be recorded.
            let step = {
                let (scope, delta) = w.scope();
                exchange
                    .finish_clocked(&scope, &mut EnvoyHost, host::now_ms, delta)
                    .map_err(host::from_store)
            };
            applied_response(w, step);
        });
    }
}

/// Judges a request from its headers and applies the step: headers for the upstream, a
/// local reply, or a pause while the fleet is asked.
fn on_request(w: &mut Worker, x: &mut Exchange, asking: &mut Option<u32>) -> HostResult<Action> {
    Metrics::inc(w.metrics.requests);
    if w.node.model.is_none() {
        // Another worker may have published the model since this one's last tick.
        crate::tick::adopt_published(w)?;
    }
    // The worker's template buffer goes with the request, so it allocates none; a request
    // paused for the fleet keeps it until it is judged.
    x.template = std::mem::take(&mut w.scratch_template);
    let action = judge_request(w, x, asking);
    if asking.is_none() {
        w.scratch_template = std::mem::take(&mut x.template);
    }
    action
}

fn judge_request(w: &mut Worker, x: &mut Exchange, asking: &mut Option<u32>) -> HostResult<Action> {
    let now_ms = host::now_ms()?;
    w.node
        .started
        .get_or_insert(u32::try_from(now_ms / 1000).unwrap_or(u32::MAX));
    let bytes = host::header_pairs(MapType::HttpRequestHeaders)?;
    w.requests_seen = w.requests_seen.wrapping_add(1);
    x.can_ask = w.telemetry.is_some() && w.fleet_waiting < crate::fleet::MAX_WAITING;
    let step = {
        let serial = w.requests_seen;
        let (scope, delta) = w.scope();
        x.request_encoded(&scope, &mut EnvoyHost, &bytes, now_ms, serial, delta)
    };
    let mut step = step.map_err(host::from_store)?;
    // Upstreams trust `x-flowguard-*` headers, so a client may never send one.
    for name in &step.strip {
        host::remove_header(MapType::HttpRequestHeaders, name)?;
    }
    if let Some(registry) = step.registry.take() {
        w.node.adopt_registry(&w.settings, *registry);
    }
    if let Some(question) = &step.ask {
        if let Some(token) = crate::fleet::ask(w, question) {
            *asking = Some(token);
            return Ok(Action::Pause);
        }
        // The question could not be sent: the mid-flow budget decides now.
        let serial = w.requests_seen;
        let (scope, delta) = w.scope();
        let fleet = Fleet::Unavailable;
        step = x
            .resume(&scope, &mut EnvoyHost, fleet, now_ms, serial, delta)
            .map_err(host::from_store)?;
    }
    apply(w, x, step, now_ms)
}

/// The fleet's answer (or its absence) for a paused request.
fn resume(w: &mut Worker, x: &mut Exchange, reply: &crate::fleet::Reply) -> HostResult<Action> {
    let now_ms = host::now_ms()?;
    let fleet = crate::fleet::standing(w, reply);
    let step = {
        let serial = w.requests_seen;
        let (scope, delta) = w.scope();
        x.resume(&scope, &mut EnvoyHost, fleet, now_ms, serial, delta)
    };
    let action = apply(w, x, step.map_err(host::from_store)?, now_ms);
    x.template = String::new();
    action
}

/// Carries out a request step: counts it, then sets the upstream's headers or replies.
fn apply(w: &mut Worker, x: &Exchange, step: RequestStep, now_ms: u64) -> HostResult<Action> {
    count(w, &step);
    if let (Some(event), Some(t)) = (step.event, w.telemetry.as_mut()) {
        t.record(*event, &w.metrics);
    }
    if let (Some(e), Some(v)) = (step.endpoint, step.verdict) {
        if !v.fired.contains(Rule::DeprecatedEndpoint) {
            if let Some(t) = w.node.last_used.get_mut(usize::from(e)) {
                *t = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
            }
        }
    }
    // Every `x-flowguard-*` header the request carried was stripped (`step.strip`), so
    // these are added, not replaced.
    for (name, value) in step.set.iter() {
        host::add_header(MapType::HttpRequestHeaders, name, value)?;
    }
    let Some(reply) = step.reply else {
        return Ok(Action::Continue);
    };
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .collect();
    host::send_response(reply.status.into(), &headers, reply.body.as_bytes())?;
    Metrics::inc(w.metrics.local_replies);
    host::log(
        LogLevel::Debug,
        &format!(
            "flowguard: blocked {} with {}: {}",
            x.template, reply.status, reply.body
        ),
    );
    Ok(Action::Pause)
}

/// The request step's metrics.
fn count(w: &Worker, step: &RequestStep) {
    let m = &w.metrics;
    let c = step.counts;
    for (happened, metric) in [
        (c.sessionless, m.sessionless),
        (c.slot_conflict, m.slot_conflicts),
        (c.new_session, m.sessions_new),
        (c.eviction, m.evictions),
        (c.midflow, m.midflow),
    ] {
        if happened {
            Metrics::inc(metric);
        }
    }
    match c.fleet {
        Some(FleetCount::Joined) => Metrics::inc(m.fleet_joined),
        Some(FleetCount::Refused) => Metrics::inc(m.fleet_refused),
        Some(FleetCount::Unavailable) => Metrics::inc(m.fleet_unavailable),
        None => {}
    }
    let (Some(outcome), Some(verdict)) = (c.outcome, step.verdict) else {
        return;
    };
    Metrics::inc(match outcome {
        Outcome::Allow => m.allow,
        Outcome::Flag => m.flag,
        Outcome::Block { .. } => m.block,
    });
    verdict.fired.iter().for_each(|r| m.rule(r));
}

/// The answer's head: read as much as the exchange needs (often only the status, or
/// nothing), then the response step.
fn on_response_head(w: &mut Worker, x: &mut Exchange, end_of_stream: bool) -> HostResult<()> {
    let needs = {
        let (scope, _) = w.scope();
        x.answer_needs_in(&scope, end_of_stream)
    };
    let head = match needs {
        AnswerNeeds::Nothing => return Ok(()),
        AnswerNeeds::Status => {
            let status = host::header(MapType::HttpResponseHeaders, ":status")?;
            ResponseHead::from_headers(
                &w.settings,
                &[(b":status", status.as_deref().unwrap_or_default())],
            )
        }
        AnswerNeeds::Headers => {
            // One host call for the whole map: the profile prices a header read at about
            // the same as the whole map (the call and the copy, not the size).
            let bytes = host::header_pairs(MapType::HttpResponseHeaders)?;
            ResponseHead::from_pairs(&w.settings, header_map::pairs(&bytes))
        }
    };
    let step = {
        let (scope, delta) = w.scope();
        x.response_head_clocked(
            &scope,
            &mut EnvoyHost,
            &head,
            end_of_stream,
            host::now_ms,
            delta,
        )
    };
    applied_response(w, step.map_err(host::from_store));
    Ok(())
}

/// Carries out a response step: its metrics, its events, what the model learns from it.
fn applied_response(w: &mut Worker, step: HostResult<ResponseStep>) {
    let step = match step {
        Ok(step) => step,
        Err(e) => return response_host_error(w, e),
    };
    let m = &w.metrics;
    if step.handed_over {
        Metrics::inc(m.handovers);
    }
    if step.slot_conflict {
        Metrics::inc(m.slot_conflicts);
    }
    if step.sensitive {
        // Counted, not logged per answer (telemetry and the counter carry it).
        m.rule(Rule::SensitiveData);
        Metrics::inc(m.flag);
    }
    // From now on, requests to an endpoint that answered 401/403 are checked against
    // their client address's failures (the learning sample may have held none).
    if let (Some(Some(e)), Some(model)) = (step.auth_failure, w.node.model.as_mut()) {
        model.note_auth_failure(e);
    }
    if let Some(t) = w.telemetry.as_mut() {
        for event in step.events {
            t.record(event, &w.metrics);
        }
    }
}

/// A host error in the request phase: the request passes, counted.
fn request_host_error(w: &Worker, e: host::HostError) {
    Metrics::inc(w.metrics.host_errors);
    host::log(
        LogLevel::Debug,
        &format!("flowguard: request: host error {e:?}"),
    );
}

/// A host error in the response phase: that answer's bookkeeping fails open, counted.
fn response_host_error(w: &Worker, e: host::HostError) {
    Metrics::inc(w.metrics.host_errors);
    host::log(
        LogLevel::Debug,
        &format!("flowguard: response: host error {e:?}"),
    );
}

/// Test builds only (`--features crash-switch`): a request carrying
/// `x-flowguard-test-crash` panics the VM, so tests can watch Envoy's failure policy.
#[cfg(feature = "crash-switch")]
#[allow(clippy::panic)]
fn crash_switch() {
    if let Ok(Some(_)) = host::header(MapType::HttpRequestHeaders, "x-flowguard-test-crash") {
        panic!("crash switch pulled");
    }
}
