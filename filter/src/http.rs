//! One request's path through the filter (ARCHITECTURE.md, a request through the filter).

use crate::host::{self, EnvoyHost, HostResult};
use crate::metrics::Metrics;
use crate::response_head::ResponseHead;
use crate::shared;
use crate::worker::{SharedWorker, Worker};
use flowguard_engine::decision::Decision;
use flowguard_engine::endpoint_set::EndpointId;
use flowguard_engine::failure;
use flowguard_engine::fingerprint::hex;
use flowguard_engine::fleet_join::Fleet;
use flowguard_engine::header_map::decode_pairs;
use flowguard_engine::judge::{Judged, Located};
use flowguard_engine::rule::{Action as RuleAction, Rule};
use flowguard_engine::sensitive::Scanner;
use flowguard_engine::session::{self, Source};
use flowguard_engine::slot::{is_auth_failure, is_success, Slot, Visit};
use flowguard_engine::slot_table::Placement;
use flowguard_engine::store::{self, Host};
use flowguard_engine::telemetry::{sampled, Event};
use flowguard_engine::verdict::{Outcome, Request, Verdict};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType};

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
    /// The endpoint had already succeeded in this session (on this object, if its
    /// successes are tracked per object): another success changes nothing.
    completed: bool,
    /// The identifier hash of the request's object, when its success is tracked per
    /// object (always while learning; for steps a bound rule waits for after).
    object: Option<u64>,
    /// Learning counts this exchange (no rule fired on it).
    learn: bool,
    /// An earlier call of the endpoint in this session had not succeeded.
    retry: bool,
    /// Learning counts what this exchange shows about its endpoint (where authentication
    /// fails, what answers carry), also for a weak session, which teaches no flow.
    endpoint_facts: bool,
    /// A configured login (`endpoints.failure.auth`): a failure by body is an
    /// authentication failure.
    auth_step: bool,
    /// Its answer may carry the next identity's token (`session.handover.templates`).
    handover_step: bool,
}

pub struct Http {
    worker: SharedWorker,
    pending: Option<Pending>,
    scanner: Option<Scanner>,
    /// The request whose response is being scanned (`None`: no session's), with its
    /// endpoint, its id space and whether learning counts the answer (the worker's
    /// scratch template belongs to whichever request it handled last, on any stream).
    scanned: Option<Pending>,
    /// A request without a session whose 401/403 answer counts against its client
    /// address, with its endpoint (if known).
    address_watch: Option<Option<EndpointId>>,
    /// A 2xx JSON answer whose outcome waits for its body (`endpoints.failure`), with its
    /// status, and the body read so far.
    deferred: Option<(Pending, u16)>,
    failure_body: Vec<u8>,
    /// The telemetry event of this request, completed with the response's status.
    event: Option<Event>,
    /// The session an answer's `set-cookie` hands this one over to, once the step is
    /// settled.
    handover_to: Option<u64>,
    /// The request is paused for the fleet's answer to this callout (`crate::fleet`).
    asking: Option<u32>,
}

impl Http {
    pub fn new(worker: SharedWorker) -> Http {
        Http {
            worker,
            pending: None,
            scanner: None,
            scanned: None,
            address_watch: None,
            deferred: None,
            failure_body: Vec::new(),
            event: None,
            handover_to: None,
            asking: None,
        }
    }

    /// Forgets a question still in flight (the stream ended while paused). The callout is
    /// not cancelled: the host owns gRPC calls by the root context, so its answer still
    /// comes within the deadline and the SDK forgets the token then (a cancelled call
    /// never answers, and the SDK would keep its token forever).
    fn stop_asking(&mut self) {
        if self.asking.take().is_none() {
            return;
        }
        if let Ok(mut guard) = self.worker.try_borrow_mut() {
            if let Some(w) = guard.as_mut() {
                w.fleet_waiting = w.fleet_waiting.saturating_sub(1);
            }
        }
    }
}

impl Context for Http {
    /// The fleet's answer for a paused request: judge it again and resume it, or reply.
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if self.asking != Some(token_id) {
            return;
        }
        self.asking = None;
        let reply = crate::fleet::read(status_code, response_size);
        let Ok(mut guard) = self.worker.try_borrow_mut() else {
            let _ = host::resume_request();
            return;
        };
        let Some(w) = guard.as_mut() else {
            let _ = host::resume_request();
            return;
        };
        w.fleet_waiting = w.fleet_waiting.saturating_sub(1);
        let action = on_request(
            w,
            &mut self.pending,
            &mut self.event,
            &mut self.address_watch,
            &mut self.asking,
            Some(&reply),
        );
        let resume = match action {
            Ok(Action::Pause) => false, // a local reply was sent
            Ok(_) => true,
            Err(e) => {
                Metrics::inc(w.metrics.host_errors);
                host::log(
                    LogLevel::Debug,
                    &format!("flowguard: fleet answer: host error {e:?}"),
                );
                true
            }
        };
        if resume {
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
        match on_request(
            w,
            &mut self.pending,
            &mut self.event,
            &mut self.address_watch,
            &mut self.asking,
            None,
        ) {
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

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let Ok(mut guard) = self.worker.try_borrow_mut() else {
            return Action::Continue;
        };
        let Some(w) = guard.as_mut() else {
            return Action::Continue;
        };
        let pending = self.pending.take();
        // Beyond the status, the headers matter only to an answer from a session (the
        // next cookie, a failure in the body) or one that may be inspected.
        let whole =
            pending.is_some() || w.settings.rules.get(Rule::SensitiveData) != RuleAction::Off;
        let head = match ResponseHead::read(w, whole) {
            Ok(head) => head,
            Err(e) => {
                response_host_error(w, e);
                ResponseHead::default()
            }
        };
        let status = head.status;
        if let (Some(endpoint), true) = (self.address_watch.take(), is_auth_failure(status)) {
            note_auth_failure(w, endpoint);
            if let Err(e) = host::now_ms().and_then(|now_ms| record_address_failure(w, now_ms)) {
                response_host_error(w, e);
            }
        }
        if let (true, Some(p)) = (is_success(status), pending) {
            self.handover_to = head.cookie_session.filter(|to| *to != p.fingerprint);
        }
        // An API that answers failures with 2xx and a JSON error, or a login that hands
        // out the next token in its body: the step's outcome waits for the body
        // (bounded), or for the end of the stream (fail-open).
        let defer = !end_of_stream
            && is_success(status)
            && head.json
            && (!w.settings.endpoints.failure.is_empty()
                || pending.is_some_and(|p| p.handover_step));
        if let (true, Some(p)) = (defer, pending) {
            self.deferred = Some((p, status));
            self.failure_body.clear();
        } else if let Some(pending) = pending {
            settled(w, pending, status, self.handover_to.take());
        }
        if let (Some(mut event), Some(t)) = (self.event.take(), w.telemetry.as_mut()) {
            let now_ms = host::now_ms().unwrap_or(event.time_ms);
            event.status = status;
            event.latency_us =
                u32::try_from(now_ms.saturating_sub(event.time_ms).saturating_mul(1000))
                    .unwrap_or(u32::MAX);
            if self.deferred.is_some() {
                // The outcome waits for the body: the fleet must not take a failure
                // answered 2xx as a completed step (`settle` reports it).
                self.event = Some(event);
            } else {
                t.record(event, &w.metrics);
            }
        }
        if should_inspect(w, &head) {
            self.scanner = Some(Scanner::default());
            self.scanned = pending;
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.deferred.is_some() {
            self.judge_failure(body_size, end_of_stream);
        }
        let Some(scanner) = self.scanner.as_mut() else {
            return Action::Continue;
        };
        let Ok(mut guard) = self.worker.try_borrow_mut() else {
            return Action::Continue;
        };
        let Some(w) = guard.as_mut() else {
            return Action::Continue;
        };
        let max = usize::try_from(w.settings.sensitive.max_bytes).unwrap_or(usize::MAX);
        if scanner.scanned.saturating_add(body_size) > max {
            self.scanner = None; // too large to inspect: let it stream untouched
            return Action::Continue;
        }
        // The chunk streams on unchanged; the scanner keeps only a short tail of it.
        if let Ok(Some(chunk)) = host::buffer(BufferType::HttpResponseBody, 0, body_size) {
            scanner.feed(&chunk, &w.settings.sensitive.fields, end_of_stream);
        }
        if end_of_stream {
            let findings = scanner.findings;
            self.scanner = None;
            // An answer that straddled a model install names its endpoint in the old id
            // space (a registry id is no model id): neither learned from nor judged.
            if self.scanned.is_some_and(|p| p.epoch != w.epoch()) {
                return Action::Continue;
            }
            if let Some(p) = self.scanned.filter(|p| p.endpoint_facts) {
                w.delta.observe_sensitive(p.endpoint, &findings); // what it normally carries
            }
            // Judged against what the endpoint's answers normally carry; counted, not
            // logged per answer (telemetry and the counter carry it).
            let endpoint = self.scanned.map(|p| p.endpoint);
            let beyond = w
                .model
                .as_ref()
                .is_some_and(|m| m.sensitive_beyond_normal(endpoint, &findings));
            if beyond {
                w.metrics.rule(Rule::SensitiveData);
                Metrics::inc(w.metrics.flag);
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.stop_asking();
        // The stream ended before the deferred body did (reset, cut short): fail open, the
        // status stands, so a customer's step is never lost.
        self.settle(false);
    }
}

impl Http {
    /// Reads the deferred answer's body; at its end (or past the bound) settles the step.
    fn judge_failure(&mut self, body_size: usize, end_of_stream: bool) {
        let room = failure::MAX_BODY.saturating_sub(self.failure_body.len());
        if body_size > room {
            return self.settle(false); // too large to judge: the status stands
        }
        if let Ok(Some(chunk)) = host::buffer(BufferType::HttpResponseBody, 0, body_size) {
            self.failure_body.extend_from_slice(&chunk);
        }
        if end_of_stream {
            self.settle(true);
        }
    }

    /// Records the deferred outcome: judged by the body when `judge`, else as its status.
    fn settle(&mut self, judge: bool) {
        let Some((pending, status)) = self.deferred.take() else {
            return;
        };
        let Ok(mut guard) = self.worker.try_borrow_mut() else {
            return;
        };
        let Some(w) = guard.as_mut() else {
            return;
        };
        let status = if judge {
            w.settings.endpoints.failure.effective_status(
                status,
                pending.auth_step,
                &self.failure_body,
            )
        } else {
            status
        };
        let token_session = (judge && pending.handover_step)
            .then(|| crate::handover::from_body(w, &self.failure_body))
            .flatten();
        self.failure_body = Vec::new();
        if let (Some(mut event), Some(t)) = (self.event.take(), w.telemetry.as_mut()) {
            event.status = status;
            t.record(event, &w.metrics);
        }
        settled(
            w,
            pending,
            status,
            self.handover_to.take().or(token_session),
        );
    }
}

/// Records a step's outcome, then hands the session over to the identity its answer
/// issued (`to`: by a cookie, or a token in the body), so the step goes with it.
fn settled(w: &mut Worker, pending: Pending, status: u16, to: Option<u64>) {
    if let Err(e) = on_response(w, pending, status) {
        response_host_error(w, e);
    }
    if let (Some(to), true) = (to, is_success(status)) {
        let (index, fp, epoch) = (pending.index, pending.fingerprint, pending.epoch);
        if let Err(e) = crate::handover::hand_over(w, index, fp, epoch, to) {
            response_host_error(w, e);
        }
    }
}

/// A host error in the response phase: that answer's bookkeeping fails open, counted.
fn response_host_error(w: &Worker, e: host::HostError) {
    Metrics::inc(w.metrics.host_errors);
    host::log(
        LogLevel::Debug,
        &format!("flowguard: response: host error {e:?}"),
    );
}

/// JSON answers within the size bound are inspected when the rule is on.
fn should_inspect(w: &Worker, head: &ResponseHead) -> bool {
    w.settings.rules.get(Rule::SensitiveData) != RuleAction::Off
        && (200..300).contains(&head.status)
        && head.json
        && head
            .content_length
            .is_none_or(|l| l <= u64::from(w.settings.sensitive.max_bytes))
}

/// Judges a request and carries out the decision; `reply` is the fleet's answer when the
/// request was paused to ask it (then the request is judged again, from its headers).
fn on_request(
    w: &mut Worker,
    pending: &mut Option<Pending>,
    event: &mut Option<Event>,
    address_watch: &mut Option<Option<EndpointId>>,
    asking: &mut Option<u32>,
    reply: Option<&crate::fleet::Reply>,
) -> HostResult<Action> {
    if reply.is_none() {
        Metrics::inc(w.metrics.requests);
    }
    if w.model.is_none() {
        // Another worker may have published the model since this one's last tick.
        crate::tick::adopt_published(w)?;
    }
    let now_ms = host::now_ms()?;
    let now = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
    let bytes = host::header_pairs(MapType::HttpRequestHeaders)?;
    let pairs = decode_pairs(&bytes);
    strip_own_headers(&pairs)?;
    let headers = Headers(&pairs);

    let header_key = session::derive(&w.settings.session.sources, |n| headers.get(n), None);
    let id = normalise(w, &headers);
    let endpoint = w.endpoint_id()?;
    let check_address = w.model.as_ref().is_some_and(|m| m.checks_address(endpoint))
        && w.settings.rules.get(Rule::AuthFailures) != RuleAction::Off;
    let address = if check_address
        || (header_key.is_none() && w.settings.session.sources.contains(&Source::Address))
    {
        EnvoyHost.client_address()?
    } else {
        None
    };
    let addr = address.as_deref().and_then(|a| std::str::from_utf8(a).ok());
    let derived = || session::derive(&w.settings.session.sources, |n| headers.get(n), addr);
    let Some(key) = header_key.or_else(derived) else {
        Metrics::inc(w.metrics.sessionless);
        // Its answer counts against the address even where no failure was seen yet.
        if w.settings.rules.get(Rule::AuthFailures) != RuleAction::Off {
            *address_watch = Some(endpoint);
        }
        return match (check_address, address.as_deref()) {
            (true, Some(a)) => sessionless(w, a, now, headers.request_id(), address_watch),
            _ => Ok(Action::Continue),
        };
    };
    let fingerprint = w
        .settings
        .session
        .fingerprinter
        .fingerprint(key.kind, key.value.as_bytes());
    let mut request = Request {
        endpoint,
        id,
        now_ms,
        weak_session: key.kind == Source::Address.kind() && w.settings.session.address_is_weak(),
        fleet: crate::fleet::standing(w, reply),
        ..Request::default()
    };
    if let Some(model) = &w.model {
        request.deprecated_template =
            endpoint.is_none() && model.matches_deprecated(&w.scratch.template);
    }
    if check_address {
        request.address_failures = w
            .judge()
            .address_failures(&mut EnvoyHost, address.as_deref(), now)
            .map_err(host::from_store)?;
    }

    w.started.get_or_insert(now);
    let mut judged = judge(w, &mut request, fingerprint, address.as_deref(), now)?;
    if let (Fleet::Asking, Some((verdict, _, _))) = (request.fleet, &judged) {
        // A new session's first request skips a step: wait for the fleet's answer (the
        // slot was not written), or, if it cannot be asked, decide on the budget now.
        if let Some(token) = crate::fleet::ask(w, &request, verdict, fingerprint) {
            *asking = Some(token);
            return Ok(Action::Pause);
        }
        request.fleet = Fleet::Unavailable;
        judged = judge(w, &mut request, fingerprint, address.as_deref(), now)?;
    }
    let Some((verdict, decision, judged)) = judged else {
        Metrics::inc(w.metrics.slot_conflicts);
        return Ok(Action::Continue);
    };
    match request.fleet {
        Fleet::Answered(_) if verdict.fired.contains(Rule::MissingPrerequisite) => {
            Metrics::inc(w.metrics.fleet_refused);
        }
        Fleet::Answered(_) => Metrics::inc(w.metrics.fleet_joined),
        Fleet::Unavailable => Metrics::inc(w.metrics.fleet_unavailable),
        Fleet::Unasked | Fleet::Asking => {}
    }
    *pending = judged;
    if let (Some(e), false) = (endpoint, verdict.fired.contains(Rule::DeprecatedEndpoint)) {
        if let Some(t) = w.last_used.get_mut(usize::from(e)) {
            *t = now;
        }
    }
    report(w, decision, &verdict, &request, fingerprint, event);
    act(w, decision, &verdict, fingerprint, &headers, pending)
}

/// The request's headers, as read once from the host.
struct Headers<'a>(&'a [(&'a [u8], &'a [u8])]);

impl<'a> Headers<'a> {
    /// The first value of header `name` (any case), if it is UTF-8.
    fn get(&self, name: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// `x-request-id`, when plain enough to echo in a JSON body.
    fn request_id(&self) -> Option<&'a str> {
        self.get("x-request-id").filter(|id| is_safe_id(id))
    }
}

/// Upstreams trust `x-flowguard-*` headers, so a client may never send one.
fn strip_own_headers(pairs: &[(&[u8], &[u8])]) -> HostResult<()> {
    for (name, _) in pairs {
        if name
            .get(..OWN_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(OWN_PREFIX))
        {
            host::remove_header(MapType::HttpRequestHeaders, name)?;
        }
    }
    Ok(())
}

/// Normalises the request into `scratch.template`; returns its object's identifier hash.
fn normalise(w: &mut Worker, headers: &Headers) -> Option<u64> {
    let normaliser = w
        .model
        .as_ref()
        .map_or(&w.base_normaliser, |m| &m.normaliser);
    // The method the upstream will serve: the override header only if it honours one.
    let method = headers.get(":method").unwrap_or("GET");
    let method = match headers.get("x-http-method-override") {
        Some(m) if w.settings.endpoints.method_override && method.eq_ignore_ascii_case("POST") => {
            m.trim()
        }
        _ => method,
    };
    let path = headers.get(":path").unwrap_or("/");
    normaliser.normalise(method, path, &mut w.scratch.template)
}

/// Judges the request against its session's slot (`engine::judge`, which writes the slot
/// back with compare-and-swap), then counts it: the verdict, the decision and what the
/// answer must settle, or `None` when every attempt lost its race.
fn judge(
    w: &mut Worker,
    request: &mut Request,
    fingerprint: u64,
    address: Option<&[u8]>,
    now: u32,
) -> HostResult<Option<(Verdict, Decision, Option<Pending>)>> {
    let judged = w
        .judge()
        .request(&mut EnvoyHost, request, fingerprint, address, now)
        .map_err(host::from_store)?;
    let Some(Judged {
        verdict,
        decision,
        visit,
        located,
        learns,
    }) = judged
    else {
        return Ok(None);
    };
    if request.midflow_ok {
        Metrics::inc(w.metrics.midflow);
    }
    match located.placement {
        Placement::Own => {}
        Placement::Free => Metrics::inc(w.metrics.sessions_new),
        Placement::Evict => {
            Metrics::inc(w.metrics.sessions_new);
            Metrics::inc(w.metrics.evictions);
        }
    }
    if let (true, Some(e)) = (learns, request.endpoint) {
        let registered = w.model.as_ref().map_or(w.registry.len(), |m| m.len());
        let known = w.settings.learning.absences_to_record(registered);
        if request.weak_session {
            w.delta.observe_inventory(e, &visit, request.carried);
        } else {
            w.delta.observe_request(e, &visit, known);
        }
    }
    let pending = request
        .endpoint
        .map(|e| pending_for(w, e, request, &located, &visit, fingerprint, learns));
    Ok(Some((verdict, decision, pending)))
}

/// What the answer to a request on `endpoint` must settle in its session's slot.
fn pending_for(
    w: &Worker,
    endpoint: EndpointId,
    request: &Request,
    located: &Located,
    visit: &Visit,
    fingerprint: u64,
    learns: bool,
) -> Pending {
    let template = &w.scratch.template;
    // With a model and no relearning, a success no rule waits for changes nothing: the
    // answer then costs no shared-data round trip.
    let unread = !w.relearns() && w.model.as_ref().is_some_and(|m| !m.is_required(endpoint));
    let object = request
        .id
        .filter(|_| w.model.as_ref().is_none_or(|m| m.binds(endpoint)));
    let done_on_object = match object {
        Some(_) => visit.object.is_some_and(|done| done.contains(endpoint)),
        None => true,
    };
    Pending {
        auth_step: w.settings.endpoints.failure.auth.contains(template),
        handover_step: w.settings.session.handover.templates.contains(template),
        index: located.index,
        fingerprint,
        endpoint,
        epoch: located.slot.model_version,
        completed: unread || (located.slot.completed.contains(endpoint) && done_on_object),
        object,
        // A shared address's flow mixes clients: it teaches no flow.
        learn: learns && visit.learn && !request.weak_session,
        retry: visit.retry,
        endpoint_facts: learns && visit.learn,
    }
}

/// The request's telemetry event, if it is reported: complete now for a local reply, else
/// left in `event` for the answer's status.
fn report(
    w: &mut Worker,
    decision: Decision,
    verdict: &Verdict,
    request: &Request,
    fingerprint: u64,
    event: &mut Option<Event>,
) {
    let Some(t) = w.telemetry.as_mut() else {
        return;
    };
    // A step some rule waits for is reported from every session, at once: the fleet
    // answers other proxies from it (`Sessions.Completed`).
    let prompt = request
        .endpoint
        .is_some_and(|e| w.model.as_ref().is_some_and(|m| m.is_required(e)));
    let sampled = sampled(fingerprint, t.settings.sample_rate);
    if verdict.fired.is_empty() && !sampled && !prompt {
        return;
    }
    let e = Event {
        time_ms: request.now_ms,
        session: fingerprint,
        template: w.scratch.template.clone(),
        status: decision.reply_status().unwrap_or(0),
        outcome: decision.acts().then_some(verdict.outcome),
        rules: verdict.fired,
        latency_us: 0,
        // The fleet learner learns what this filter's learner would: a session flagged
        // only as "not seen before" still teaches (`Verdict::teaches`).
        summary: verdict.teaches() && sampled,
        ids: request.id,
        weak_session: request.weak_session,
        prompt,
    };
    match decision {
        Decision::Reply { .. } => t.record(e, &w.metrics),
        _ => *event = Some(e),
    }
}

/// Carries out the decision: headers for the upstream, or the local reply.
fn act(
    w: &mut Worker,
    decision: Decision,
    verdict: &Verdict,
    fingerprint: u64,
    headers: &Headers,
    pending: &mut Option<Pending>,
) -> HostResult<Action> {
    if decision == Decision::Pass {
        return Ok(Action::Continue);
    }
    let session_id = hex(fingerprint);
    let session_id = std::str::from_utf8(&session_id).unwrap_or_default();
    host::set_header(MapType::HttpRequestHeaders, SESSION_HEADER, session_id)?;
    match decision {
        Decision::Pass | Decision::Session => Ok(Action::Continue),
        Decision::Annotate => {
            record_verdict(w, verdict);
            annotate(w, verdict)?;
            Ok(Action::Continue)
        }
        Decision::Reply {
            status,
            retry_after_s,
        } => {
            record_verdict(w, verdict);
            *pending = None;
            block(w, status, retry_after_s, headers.request_id(), fingerprint)?;
            Ok(Action::Pause)
        }
    }
}

/// Tells the upstream the verdict (`x-flowguard-verdict`).
fn annotate(w: &mut Worker, verdict: &Verdict) -> HostResult<()> {
    verdict.write_header(&mut w.scratch.header);
    host::set_header(
        MapType::HttpRequestHeaders,
        VERDICT_HEADER,
        &w.scratch.header,
    )
}

/// A request no session source matched, from a watched client address: the per-address
/// failure rule still applies (a stuffing bot need not send the session cookie).
fn sessionless(
    w: &mut Worker,
    address: &[u8],
    now: u32,
    request_id: Option<&str>,
    address_watch: &mut Option<Option<EndpointId>>,
) -> HostResult<Action> {
    let judged = w
        .judge()
        .sessionless(&mut EnvoyHost, address, now)
        .map_err(host::from_store)?;
    let Some((verdict, decision)) = judged.filter(|(v, _)| !v.fired.is_empty()) else {
        return Ok(Action::Continue);
    };
    record_verdict(w, &verdict);
    match decision {
        Decision::Reply {
            status,
            retry_after_s,
        } => {
            *address_watch = None;
            let fp = w.judge().address_fingerprint(address).unwrap_or(0);
            block(w, status, retry_after_s, request_id, fp)?;
            Ok(Action::Pause)
        }
        Decision::Annotate => {
            annotate(w, &verdict)?;
            Ok(Action::Continue)
        }
        Decision::Pass | Decision::Session => Ok(Action::Continue),
    }
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
    retry_after_s: u32,
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
    let retry = retry_after_s.max(1).to_string();
    let mut headers = vec![("content-type", "application/json")];
    if status == 429 {
        headers.push(("retry-after", &retry));
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

fn on_response(w: &mut Worker, p: Pending, status: u16) -> HostResult<()> {
    let auth_failure = is_auth_failure(status);
    // Only a first success or an auth failure changes the slot (learning counts them all).
    let learning = w.model.is_none();
    if (!is_success(status) && !auth_failure) || (p.completed && !auth_failure && !learning) {
        return Ok(());
    }
    let now_ms = host::now_ms()?;
    let auth_window_ms = w.settings.limits.auth_window_s.saturating_mul(1000);
    let mut peak = None;
    let mut unlearned = false;
    let written = shared::update(store::slot_key(p.index).as_str(), |bytes| {
        let mut slot = Slot::decode(bytes?).ok()?;
        if slot.fingerprint != p.fingerprint || slot.model_version != p.epoch {
            return None; // the slot changed hands meanwhile
        }
        unlearned = slot.unlearned;
        peak = slot.record_response(p.endpoint, p.object, status, now_ms, auth_window_ms);
        Some(slot.encode().to_vec())
    })?;
    if written && p.learn && !unlearned {
        w.delta.observe_response(p.endpoint, p.retry, status, peak);
    } else if written && auth_failure && p.endpoint_facts {
        w.delta.observe_endpoint_failure(p.endpoint);
    }
    if auth_failure {
        note_auth_failure(w, Some(p.endpoint));
        record_address_failure(w, now_ms)?;
    }
    Ok(())
}

/// From now on, requests to an endpoint that answered 401/403 are checked against their
/// client address's failures (the learning sample may have held none).
fn note_auth_failure(w: &mut Worker, endpoint: Option<EndpointId>) {
    if let (Some(model), Some(e)) = (w.model.as_mut(), endpoint) {
        model.note_auth_failure(e);
    }
}

/// Counts a 401/403 answer against the client address (over all its sessions, and
/// requests without one).
fn record_address_failure(w: &mut Worker, now_ms: u64) -> HostResult<()> {
    let now = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
    let peak = w
        .judge()
        .record_address_failure(&mut EnvoyHost, now)
        .map_err(host::from_store)?;
    if w.model.is_none() {
        w.delta.observe_address_failure(peak);
    }
    Ok(())
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
