//! One request/response exchange, host-independent: what any host (the proxy-wasm filter,
//! the native dynamic module, a test) does with a request's headers and its answer's
//! status, as steps that return what to do. Everything goes through [`Host`]; learning
//! counters go into the caller's [`LearnStats`].
//!
//! Steps: [`Exchange::request`] (strip client-sent `x-flowguard-*` headers, derive the
//! session, normalise, judge, decide: pass, headers for the upstream, or a local reply),
//! [`Exchange::response_head`] (the answer's status: a completed step is recorded in the
//! session's slot by compare-and-swap, a 401/403 counted against the client address).
//! The exchange ends when it is dropped: nothing is held but the pending step.
//!
//! Not here yet (still only in the Wasm filter): a failure judged from the answer's body,
//! identity hand-over, the sensitive-data scan, telemetry events and the fleet callout.

use crate::config::Settings;
use crate::decision::Decision;
use crate::endpoint::Normaliser;
use crate::endpoint_set::EndpointId;
use crate::fingerprint::hex;
use crate::fleet_join::Fleet;
use crate::judge::{Judge, Judged, Located};
use crate::learn::{LearnStats, Registry};
use crate::model::Model;
use crate::rule::{Action as RuleAction, Rule};
use crate::session::{self, Source};
use crate::slot::{is_auth_failure, is_success, Slot, Visit};
use crate::slot_table::Placement;
use crate::store::{self, Host, StoreError};
use crate::verdict::{Outcome, Request, Verdict};

/// The session the upstream is told (16 hex digits of the fingerprint).
pub const SESSION_HEADER: &str = "x-flowguard-session";
/// The verdict the upstream is told (`allow`, `flag; rules=…`, `block; rules=…`).
pub const VERDICT_HEADER: &str = "x-flowguard-verdict";
/// Headers with this prefix are flowguard's: a client may never send one.
pub const OWN_PREFIX: &[u8] = b"x-flowguard-";
/// The learning registry's key (templates and learned variable positions).
pub const REGISTRY_KEY: &str = "fg/reg";

/// What a host knows when it starts an exchange: settings, the installed model and how to
/// normalise while learning.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    pub settings: &'a Settings,
    /// The installed model; `None` while learning.
    pub model: Option<&'a Model>,
    /// Learning-registry id to model id, for slots recorded while learning.
    pub registry_map: &'a [Option<EndpointId>],
    /// Normalises while learning (declared templates, learned variable positions).
    pub base_normaliser: &'a Normaliser,
    /// When this host handled its first request (seconds).
    pub started: u32,
    /// Whether learning goes on with a model installed.
    pub relearns: bool,
}

impl Scope<'_> {
    /// The tag slots are written under (the model's layout; 0 while learning).
    pub fn epoch(&self) -> u32 {
        self.model
            .map_or(0, |m| u32::try_from(m.layout).unwrap_or(u32::MAX))
    }

    pub fn judge(&self) -> Judge<'_> {
        Judge {
            settings: self.settings,
            model: self.model,
            epoch: self.epoch(),
            registry_map: self.registry_map,
            started: self.started,
            relearns: self.relearns,
        }
    }
}

/// The normaliser learning uses: declared templates and the registry's learned variable
/// positions.
pub fn base_normaliser(settings: &Settings, registry: &Registry) -> Normaliser {
    Normaliser::new(
        settings.endpoints.templates.clone(),
        registry.variable_prefixes().iter().cloned().collect(),
    )
    .with_id_params(settings.endpoints.id_params.clone())
    .case_insensitive(settings.endpoints.case_insensitive)
}

/// What the answer to a request must settle in its session's slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    pub index: u32,
    pub fingerprint: u64,
    pub endpoint: EndpointId,
    pub epoch: u32,
    /// Another success changes nothing (already completed, or no rule waits for it).
    pub completed: bool,
    /// The identifier hash of the request's object, when its success is tracked per object.
    pub object: Option<u64>,
    /// Learning counts this exchange's flow.
    pub learn: bool,
    /// An earlier call of the endpoint in this session had not succeeded.
    pub retry: bool,
    /// Learning counts what this exchange shows about its endpoint.
    pub endpoint_facts: bool,
}

/// A local reply: the client learns that it was blocked, never which rule fired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    /// `content-type`, and `retry-after` with a 429.
    pub headers: Vec<(&'static str, String)>,
    /// `{"error":"request blocked","request_id":"<id>"}`.
    pub body: String,
}

/// What to count for the request (the host's metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// No session source matched.
    pub sessionless: bool,
    /// Every compare-and-swap attempt lost: the request passed unjudged.
    pub slot_conflict: bool,
    pub new_session: bool,
    pub eviction: bool,
    pub midflow: bool,
    /// The verdict's outcome, when a model decided it in `monitor`/`enforce`.
    pub outcome: Option<Outcome>,
}

/// What the host does with the request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestStep {
    /// Client-sent `x-flowguard-*` headers to remove (names as sent).
    pub strip: Vec<Vec<u8>>,
    /// Headers to set for the upstream.
    pub set: Vec<(&'static str, String)>,
    /// A local reply instead of the upstream.
    pub reply: Option<LocalReply>,
    pub verdict: Option<Verdict>,
    pub decision: Option<Decision>,
    pub counts: Counts,
}

/// What the response step found (for the host's metrics and its model).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseStep {
    /// The answer completed a step in the session's slot.
    pub completed: bool,
    /// A 401/403 answer on this endpoint (or on an unknown one): from now on requests to
    /// it are checked against their address's failures (`Model::note_auth_failure`).
    pub auth_failure: Option<Option<EndpointId>>,
}

/// One exchange: what the response phase needs from the request phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct Exchange {
    pub pending: Option<Pending>,
    /// A request without a session whose 401/403 answer counts against its client
    /// address, with its endpoint (if known).
    pub address_watch: Option<Option<EndpointId>>,
}

/// The request's headers as the host read them.
struct Headers<'a>(&'a [(&'a [u8], &'a [u8])]);

impl<'a> Headers<'a> {
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

/// Request ids go into a JSON body verbatim, so only plain ones are echoed.
pub fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The local reply for a blocking decision; `serial` makes the fallback request id unique.
pub fn local_reply(
    status: u16,
    retry_after_s: u32,
    request_id: Option<&str>,
    fingerprint: u64,
    serial: u64,
) -> LocalReply {
    let id = match request_id {
        Some(id) => id.to_owned(),
        None => format!("fg-{fingerprint:016x}-{serial}"),
    };
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if status == 429 {
        headers.push(("retry-after", retry_after_s.max(1).to_string()));
    }
    LocalReply {
        status,
        headers,
        body: format!("{{\"error\":\"request blocked\",\"request_id\":\"{id}\"}}"),
    }
}

/// The endpoint id of `template`: the model's, or the learning registry's in shared data
/// (adding the template, generalised by the positions learned so far, if it is new and
/// there is room). `template` becomes the template the id stands for.
pub fn endpoint_id<H: Host>(
    scope: &Scope,
    host: &mut H,
    template: &mut String,
) -> Result<Option<EndpointId>, StoreError<H::Error>> {
    if let Some(model) = scope.model {
        return Ok(model.endpoint(template));
    }
    let (bytes, _) = host.get(REGISTRY_KEY)?;
    let cached = bytes.as_deref().map(Registry::decode).unwrap_or_default();
    if let Some(id) = cached.get(template) {
        return Ok(Some(id));
    }
    let limit = scope.settings.learning.max_endpoints;
    let min_distinct = scope.settings.learning.variable_segment_min;
    let mut found = None;
    let mut latest = Registry::default();
    store::update(host, REGISTRY_KEY, |bytes| {
        latest = bytes.map(Registry::decode).unwrap_or_default();
        let before = latest.encode();
        found = latest.learn(template, limit, min_distinct);
        let after = latest.encode();
        (after != before).then_some(after)
    })?;
    if let Some(t) = found.and_then(|id| latest.templates().get(usize::from(id))) {
        template.clone_from(t);
    }
    Ok(found)
}

impl Exchange {
    /// The request step: `headers` are the request's (name, value) pairs as read from the
    /// host; `serial` numbers requests for the fallback request id of a local reply.
    pub fn request<H: Host>(
        &mut self,
        scope: &Scope,
        host: &mut H,
        headers: &[(&[u8], &[u8])],
        now_ms: u64,
        serial: u64,
        delta: &mut LearnStats,
    ) -> Result<RequestStep, StoreError<H::Error>> {
        let settings = scope.settings;
        let mut step = RequestStep {
            strip: own_headers(headers),
            ..RequestStep::default()
        };
        let now = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
        let headers = Headers(headers);
        let header_key = session::derive(&settings.session.sources, |n| headers.get(n), None);
        let mut template = String::new();
        let id = normalise(scope, &headers, &mut template);
        let endpoint = endpoint_id(scope, host, &mut template)?;
        let check_address = scope.model.is_some_and(|m| m.checks_address(endpoint))
            && settings.rules.get(Rule::AuthFailures) != RuleAction::Off;
        let address = if check_address
            || (header_key.is_none() && settings.session.sources.contains(&Source::Address))
        {
            host.client_address()?
        } else {
            None
        };
        let addr = address.as_deref().and_then(|a| std::str::from_utf8(a).ok());
        let derived = || session::derive(&settings.session.sources, |n| headers.get(n), addr);
        let Some(key) = header_key.or_else(derived) else {
            step.counts.sessionless = true;
            if settings.rules.get(Rule::AuthFailures) != RuleAction::Off {
                self.address_watch = Some(endpoint);
            }
            if let (true, Some(a)) = (check_address, address.as_deref()) {
                self.sessionless(scope, host, a, now, &headers, serial, &mut step)?;
            }
            return Ok(step);
        };
        let fingerprint = settings
            .session
            .fingerprinter
            .fingerprint(key.kind, key.value.as_bytes());
        let mut request = Request {
            endpoint,
            id,
            now_ms,
            weak_session: key.kind == Source::Address.kind() && settings.session.address_is_weak(),
            ..Request::default()
        };
        if let Some(model) = scope.model {
            request.deprecated_template = endpoint.is_none() && model.matches_deprecated(&template);
        }
        let judge = scope.judge();
        if check_address {
            request.address_failures = judge.address_failures(host, address.as_deref(), now)?;
        }
        let mut judged = judge.request(host, &mut request, fingerprint, address.as_deref(), now)?;
        if request.fleet == Fleet::Asking {
            // No fleet callout from this host: decide on the mid-flow budget now.
            request.fleet = Fleet::Unavailable;
            judged = judge.request(host, &mut request, fingerprint, address.as_deref(), now)?;
        }
        let Some(Judged {
            verdict,
            decision,
            visit,
            located,
            learns,
        }) = judged
        else {
            step.counts.slot_conflict = true;
            return Ok(step);
        };
        step.counts.midflow = request.midflow_ok;
        step.counts.new_session = located.placement != Placement::Own;
        step.counts.eviction = located.placement == Placement::Evict;
        if let (true, Some(e)) = (learns, request.endpoint) {
            let registered = scope
                .model
                .map_or_else(|| registry_len(host), |m| Ok(m.len()))?;
            let known = settings.learning.absences_to_record(registered);
            if request.weak_session {
                delta.observe_inventory(e, &visit, request.carried);
            } else {
                delta.observe_request(e, &visit, known);
            }
        }
        self.pending = request
            .endpoint
            .map(|e| pending_for(scope, e, &request, &located, &visit, fingerprint, learns));
        step.verdict = Some(verdict);
        step.decision = Some(decision);
        if decision.acts() {
            step.counts.outcome = Some(verdict.outcome);
        }
        if decision == Decision::Pass {
            return Ok(step);
        }
        let session_id = hex(fingerprint);
        let session_id = std::str::from_utf8(&session_id).unwrap_or_default();
        step.set.push((SESSION_HEADER, session_id.to_owned()));
        match decision {
            Decision::Pass | Decision::Session => {}
            Decision::Annotate => step.set.push((VERDICT_HEADER, verdict_header(&verdict))),
            Decision::Reply {
                status,
                retry_after_s,
            } => {
                self.pending = None;
                step.reply = Some(local_reply(
                    status,
                    retry_after_s,
                    headers.request_id(),
                    fingerprint,
                    serial,
                ));
            }
        }
        Ok(step)
    }

    /// A request no session source matched, from a watched client address: the per-address
    /// failure rule still applies.
    #[allow(clippy::too_many_arguments)]
    fn sessionless<H: Host>(
        &mut self,
        scope: &Scope,
        host: &mut H,
        address: &[u8],
        now: u32,
        headers: &Headers,
        serial: u64,
        step: &mut RequestStep,
    ) -> Result<(), StoreError<H::Error>> {
        let judge = scope.judge();
        let judged = judge.sessionless(host, address, now)?;
        let Some((verdict, decision)) = judged.filter(|(v, _)| !v.fired.is_empty()) else {
            return Ok(());
        };
        step.verdict = Some(verdict);
        step.decision = Some(decision);
        step.counts.outcome = decision.acts().then_some(verdict.outcome);
        match decision {
            Decision::Reply {
                status,
                retry_after_s,
            } => {
                self.address_watch = None;
                let fp = judge.address_fingerprint(address).unwrap_or(0);
                step.reply = Some(local_reply(
                    status,
                    retry_after_s,
                    headers.request_id(),
                    fp,
                    serial,
                ));
            }
            Decision::Annotate => step.set.push((VERDICT_HEADER, verdict_header(&verdict))),
            Decision::Pass | Decision::Session => {}
        }
        Ok(())
    }

    /// The response step: the answer's `status` settles the pending step (recorded in the
    /// slot by compare-and-swap; learning counts it), and a 401/403 counts against the
    /// client address.
    pub fn response_head<H: Host>(
        &mut self,
        scope: &Scope,
        host: &mut H,
        status: u16,
        now_ms: u64,
        delta: &mut LearnStats,
    ) -> Result<ResponseStep, StoreError<H::Error>> {
        let mut step = ResponseStep::default();
        if let (Some(endpoint), true) = (self.address_watch.take(), is_auth_failure(status)) {
            step.auth_failure = Some(endpoint);
            record_address_failure(scope, host, now_ms, delta)?;
        }
        if let Some(p) = self.pending.take() {
            step.completed = settle(scope, host, p, status, now_ms, delta)?;
            if is_auth_failure(status) {
                step.auth_failure = Some(Some(p.endpoint));
            }
        }
        Ok(step)
    }
}

/// Records a step's outcome in its slot (`filter/src/http.rs` `on_response`). Returns
/// whether the slot was written.
fn settle<H: Host>(
    scope: &Scope,
    host: &mut H,
    p: Pending,
    status: u16,
    now_ms: u64,
    delta: &mut LearnStats,
) -> Result<bool, StoreError<H::Error>> {
    let auth_failure = is_auth_failure(status);
    let learning = scope.model.is_none();
    if (!is_success(status) && !auth_failure) || (p.completed && !auth_failure && !learning) {
        return Ok(false);
    }
    let auth_window_ms = scope.settings.limits.auth_window_s.saturating_mul(1000);
    let mut peak = None;
    let mut unlearned = false;
    let written = store::update(host, store::slot_key(p.index).as_str(), |bytes| {
        let mut slot = Slot::decode(bytes?).ok()?;
        if slot.fingerprint != p.fingerprint || slot.model_version != p.epoch {
            return None; // the slot changed hands meanwhile
        }
        unlearned = slot.unlearned;
        peak = slot.record_response(p.endpoint, p.object, status, now_ms, auth_window_ms);
        Some(slot.encode().to_vec())
    })?;
    if written && p.learn && !unlearned {
        delta.observe_response(p.endpoint, p.retry, status, peak);
    } else if written && auth_failure && p.endpoint_facts {
        delta.observe_endpoint_failure(p.endpoint);
    }
    if auth_failure {
        record_address_failure(scope, host, now_ms, delta)?;
    }
    Ok(written && is_success(status))
}

/// Counts a 401/403 answer against the client address.
fn record_address_failure<H: Host>(
    scope: &Scope,
    host: &mut H,
    now_ms: u64,
    delta: &mut LearnStats,
) -> Result<(), StoreError<H::Error>> {
    let now = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
    let peak = scope.judge().record_address_failure(host, now)?;
    if scope.model.is_none() {
        delta.observe_address_failure(peak);
    }
    Ok(())
}

/// The names of client-sent `x-flowguard-*` headers.
fn own_headers(pairs: &[(&[u8], &[u8])]) -> Vec<Vec<u8>> {
    pairs
        .iter()
        .filter(|(name, _)| {
            name.get(..OWN_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(OWN_PREFIX))
        })
        .map(|(name, _)| name.to_vec())
        .collect()
}

fn verdict_header(verdict: &Verdict) -> String {
    let mut out = String::new();
    verdict.write_header(&mut out);
    out
}

fn registry_len<H: Host>(host: &mut H) -> Result<usize, StoreError<H::Error>> {
    let (bytes, _) = host.get(REGISTRY_KEY)?;
    Ok(bytes.as_deref().map_or(0, |b| Registry::decode(b).len()))
}

/// Normalises the request into `out`; returns its object's identifier hash.
fn normalise(scope: &Scope, headers: &Headers, out: &mut String) -> Option<u64> {
    let normaliser = scope.model.map_or(scope.base_normaliser, |m| &m.normaliser);
    let method = headers.get(":method").unwrap_or("GET");
    let method = match headers.get("x-http-method-override") {
        Some(m)
            if scope.settings.endpoints.method_override && method.eq_ignore_ascii_case("POST") =>
        {
            m.trim()
        }
        _ => method,
    };
    let path = headers.get(":path").unwrap_or("/");
    normaliser.normalise(method, path, out)
}

/// What the answer to a request on `endpoint` must settle in its session's slot.
fn pending_for(
    scope: &Scope,
    endpoint: EndpointId,
    request: &Request,
    located: &Located,
    visit: &Visit,
    fingerprint: u64,
    learns: bool,
) -> Pending {
    let unread = !scope.relearns && scope.model.is_some_and(|m| !m.is_required(endpoint));
    let object = request
        .id
        .filter(|_| scope.model.is_none_or(|m| m.binds(endpoint)));
    let done_on_object = match object {
        Some(_) => visit.object.is_some_and(|done| done.contains(endpoint)),
        None => true,
    };
    Pending {
        index: located.index,
        fingerprint,
        endpoint,
        epoch: located.slot.model_version,
        completed: unread || (located.slot.completed.contains(endpoint) && done_on_object),
        object,
        learn: learns && visit.learn && !request.weak_session,
        retry: visit.retry,
        endpoint_facts: learns && visit.learn,
    }
}

#[cfg(test)]
mod tests;
