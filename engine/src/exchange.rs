//! One request/response exchange, host-independent: what any host (the proxy-wasm filter,
//! the native dynamic module, a test) does with a request's headers and its answer's
//! status, as steps that return what to do. Everything goes through [`Host`]; learning
//! counters go into the caller's [`LearnStats`].
//!
//! Steps: [`Exchange::request`] (strip client-sent `x-flowguard-*` headers, derive the
//! session, normalise, judge, decide: pass, headers for the upstream, or a local reply),
//! [`Exchange::response_head`] (the answer's head: a completed step is recorded in the
//! session's slot by compare-and-swap, a 401/403 counted against the client address, a
//! new session cookie noted for the hand-over; a 2xx JSON answer whose outcome depends on
//! its body waits for it), [`Exchange::response_body`] (each chunk: the bounded body a
//! deferred outcome or a login's token is judged from, the sensitive-data scan), and
//! [`Exchange::finish`] (the stream ended: a deferred outcome stands as its status).
//!
//! Telemetry: with a collector configured, the steps return the exchange's event
//! ([`Event`]) once it is complete (a local reply at once, else with the answer's status)
//! for the host to buffer. The fleet: a host that can ask the collector (`can_ask`) gets a
//! [`Question`] instead of a decision for a new session's step-skipping first request,
//! pauses the request, and finishes it with [`Exchange::resume`] and the answer.

use crate::config::Settings;
use crate::decision::Decision;
use crate::endpoint::Normaliser;
use crate::endpoint_set::EndpointId;
use crate::failure;
use crate::fingerprint::hex;
use crate::fleet_join::{self, Fleet};
use crate::handover;
use crate::judge::{Judge, Judged, Located};
use crate::learn::{LearnStats, Registry};
use crate::model::Model;
use crate::rule::{Action as RuleAction, Rule, RuleSet};
use crate::sensitive::Scanner;
use crate::session::{self, Source};
use crate::slot::{is_auth_failure, is_success, Slot, Visit};
use crate::slot_table::Placement;
use crate::store::{self, Host, StoreError};
use crate::telemetry::{sampled, Event};
use crate::verdict::{Outcome, Request, Verdict};
use std::borrow::Cow;

/// The session the upstream is told (16 hex digits of the fingerprint).
pub const SESSION_HEADER: &str = "x-flowguard-session";
/// The verdict the upstream is told (`allow`, `flag; rules=…`, `block; rules=…`).
pub const VERDICT_HEADER: &str = "x-flowguard-verdict";
/// Headers with this prefix are flowguard's: a client may never send one.
pub const OWN_PREFIX: &[u8] = b"x-flowguard-";
/// The learning registry's key (templates and learned variable positions).
pub const REGISTRY_KEY: &str = crate::keys::REGISTRY;

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
    /// The host's cache of the learning registry (while learning): a template it holds
    /// costs no shared-data read. `None`: always read.
    pub registry: Option<&'a Registry>,
}

impl Scope<'_> {
    /// The tag slots are written under (the model's layout; 0 while learning).
    pub fn layout(&self) -> u32 {
        self.model
            .map_or(0, |m| u32::try_from(m.layout).unwrap_or(u32::MAX))
    }

    pub fn judge(&self) -> Judge<'_> {
        Judge {
            settings: self.settings,
            model: self.model,
            layout: self.layout(),
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
    pub layout: u32,
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
    /// A configured login (`endpoints.failure.auth`): a failure by body is an
    /// authentication failure.
    pub auth_step: bool,
    /// Its answer may carry the next identity's token (`session.handover.templates`).
    pub handover_step: bool,
}

/// How far back a question to the fleet looks: a customer who logged in hours ago and
/// stayed active is still mid-flow (the collector caps it at 7 days).
pub const FLEET_HORIZON_S: u32 = 7 * 86_400;

/// What to ask the fleet about a session new here whose first request skips a step
/// (`Sessions.Completed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub session: u64,
    /// Every step some rule waits for (the answer seeds the session once).
    pub templates: Vec<String>,
    /// The request's object, when a bound rule of its endpoint waits for steps on it (0:
    /// none).
    pub object: u64,
    pub horizon_s: u32,
}

/// What the fleet made of a question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FleetCount {
    /// The fleet's answer let the session join.
    Joined,
    /// The fleet answered and the step is still missing.
    Refused,
    /// No answer (or none could be asked): the mid-flow budget decided.
    Unavailable,
}

/// How much of an answer's head a host must read ([`Exchange::answer_needs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerNeeds {
    /// The response step can be skipped.
    Nothing,
    /// `:status` alone.
    Status,
    /// Every header ([`ResponseHead::from_headers`]).
    Headers,
}

/// What the response phase needs from an answer's headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseHead {
    /// 0 when missing or unreadable.
    pub status: u16,
    /// `content-type` names JSON.
    pub json: bool,
    pub content_length: Option<u64>,
    /// The session a configured session cookie in `set-cookie` starts.
    pub cookie_session: Option<u64>,
}

impl ResponseHead {
    /// Reads the answer's `(name, value)` header pairs.
    pub fn from_headers(settings: &Settings, pairs: &[(&[u8], &[u8])]) -> ResponseHead {
        ResponseHead::from_pairs(settings, pairs.iter().copied())
    }

    /// As [`ResponseHead::from_headers`], from pairs as they are decoded
    /// (`crate::header_map::pairs`: nothing collected).
    pub fn from_pairs<'h>(
        settings: &Settings,
        pairs: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    ) -> ResponseHead {
        let mut head = ResponseHead::default();
        let reads_cookie = settings.session.reads_set_cookie();
        for (name, value) in pairs {
            if name == b":status" {
                head.status = number(value).unwrap_or(0);
            } else if named(name, b"content-type") {
                head.json = value.windows(4).any(|w| w.eq_ignore_ascii_case(b"json"));
            } else if named(name, b"content-length") {
                head.content_length = number(value);
            } else if reads_cookie && head.cookie_session.is_none() && named(name, b"set-cookie") {
                head.cookie_session = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| handover::from_set_cookie(&settings.session.sources, v))
                    .map(|key| fingerprint(settings, &key));
            }
        }
        head
    }
}

fn fingerprint(settings: &Settings, key: &session::SessionKey<'_>) -> u64 {
    settings
        .session
        .fingerprinter
        .fingerprint(key.kind, key.value.as_bytes())
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
    /// The fleet was asked about this request (it was resumed with the answer).
    pub fleet: Option<FleetCount>,
}

/// What the host does with the request. What is rare (a reply, a question, an event, the
/// registry) is boxed: the step is moved by value through every host's request path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestStep {
    /// Client-sent `x-flowguard-*` headers to remove (names as sent).
    pub strip: Vec<Vec<u8>>,
    /// Headers to set for the upstream.
    pub set: Upstream,
    /// A local reply instead of the upstream.
    pub reply: Option<Box<LocalReply>>,
    pub verdict: Option<Verdict>,
    pub decision: Option<Decision>,
    pub counts: Counts,
    /// The endpoint judged (model or registry id), when the request had a session and
    /// its endpoint is in the inventory (for the host's last-use times).
    pub endpoint: Option<EndpointId>,
    /// Pause the request and ask the fleet this; then [`Exchange::resume`] decides (no
    /// decision yet, nothing written).
    pub ask: Option<Box<Question>>,
    /// A complete telemetry event to buffer now (a local reply's).
    pub event: Option<Box<Event>>,
    /// The learning registry as shared data holds it, when it was read (for the host's
    /// cache and its learning normaliser).
    pub registry: Option<Box<Registry>>,
}

/// The headers flowguard sets for the upstream ([`SESSION_HEADER`], [`VERDICT_HEADER`]),
/// held inline: a plain verdict is a static string, so an allowed request allocates none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upstream {
    session: Option<[u8; 16]>,
    verdict: Option<Cow<'static, str>>,
}

impl Upstream {
    /// `(name, value)` of each header to set, the session's first.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let session = self
            .session
            .as_ref()
            .and_then(|s| std::str::from_utf8(s).ok())
            .map(|s| (SESSION_HEADER, s));
        let verdict = self.verdict.as_deref().map(|v| (VERDICT_HEADER, v));
        session.into_iter().chain(verdict)
    }

    pub fn is_empty(&self) -> bool {
        self.session.is_none() && self.verdict.is_none()
    }

    /// The value of header `name`, if it is set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// What the response step found (for the host's metrics and its model).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseStep {
    /// The answer completed a step in the session's slot.
    pub completed: bool,
    /// A 401/403 answer on this endpoint (or on an unknown one): from now on requests to
    /// it are checked against their address's failures (`Model::note_auth_failure`).
    pub auth_failure: Option<Option<EndpointId>>,
    /// The session's flow was continued in the identity its answer issued.
    pub handed_over: bool,
    /// Every compare-and-swap attempt of the hand-over lost its race.
    pub slot_conflict: bool,
    /// The answer carried more sensitive data than its endpoint's answers normally do
    /// (`response.sensitive_data`, a flag).
    pub sensitive: bool,
    /// Complete telemetry events to buffer: the exchange's own, and, after a hand-over,
    /// the steps the new identity continues from (the fleet must find them under it).
    pub events: Vec<Event>,
}

/// One exchange: what the response phase needs from the request phase.
#[derive(Debug, Default)]
pub struct Exchange {
    /// The host can pause the request to ask the fleet (a callout is possible and within
    /// its bound); otherwise the mid-flow budget decides at once.
    pub can_ask: bool,
    /// The request's endpoint template after the request step. A host may hand in a buffer
    /// it reuses, so the request path does not allocate one.
    pub template: String,
    pub pending: Option<Pending>,
    /// The request waiting for the fleet's answer.
    asking: Option<Box<Prepared>>,
    /// This exchange's telemetry event, waiting for the answer's status.
    event: Option<Event>,
    /// A request without a session whose 401/403 answer counts against its client
    /// address, with its endpoint (if known).
    pub address_watch: Option<Option<EndpointId>>,
    /// A 2xx JSON answer whose outcome waits for its body, with its status, and the body
    /// read so far (at most `failure::MAX_BODY`).
    deferred: Option<(Pending, u16)>,
    body: Vec<u8>,
    /// The session the answer's `set-cookie` hands this one over to.
    handover_to: Option<u64>,
    /// The answer being scanned for sensitive data, and the request it answers.
    scanner: Option<Scanner>,
    scanned: Option<Pending>,
}

/// Indices in [`KNOWN`] of the headers the step reads by name.
const METHOD: usize = 0;
const PATH: usize = 1;
const REQUEST_ID: usize = 4;
const METHOD_OVERRIDE: usize = 5;

/// The headers every request's step reads (by lower-case name), found in one pass.
const KNOWN: [&str; 6] = [
    ":method",
    ":path",
    "cookie",
    "authorization",
    "x-request-id",
    "x-http-method-override",
];

/// A request's header pairs: decoded by the host, or as the proxy-wasm ABI encodes them
/// (`crate::header_map`), decoded as they are read.
#[derive(Clone, Copy)]
enum RequestPairs<'a> {
    Decoded(&'a [(&'a [u8], &'a [u8])]),
    Encoded(&'a [u8]),
}

impl<'a> RequestPairs<'a> {
    fn iter(self) -> PairIter<'a> {
        match self {
            RequestPairs::Decoded(pairs) => PairIter::Decoded(pairs.iter()),
            RequestPairs::Encoded(bytes) => PairIter::Encoded(crate::header_map::pairs(bytes)),
        }
    }
}

enum PairIter<'a> {
    Decoded(std::slice::Iter<'a, (&'a [u8], &'a [u8])>),
    Encoded(crate::header_map::Pairs<'a>),
}

impl<'a> Iterator for PairIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            PairIter::Decoded(pairs) => pairs.next().copied(),
            PairIter::Encoded(pairs) => pairs.next(),
        }
    }
}

/// Whether header `name` is `lower` (any case; Envoy's names are lower case already).
fn named(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len() && (name == lower || name.eq_ignore_ascii_case(lower))
}

/// A header value as text, if it is UTF-8.
fn utf8(value: Option<&[u8]>) -> Option<&str> {
    value.and_then(|v| std::str::from_utf8(v).ok())
}

/// A header's decimal value (surrounding whitespace allowed, as `str::parse` after
/// `trim`): plain digits are read directly, anything else the slow way.
fn number<T: std::str::FromStr + From<u16>>(value: &[u8]) -> Option<T> {
    if (1..=4).contains(&value.len()) && value.iter().all(u8::is_ascii_digit) {
        let n = value.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        return Some(T::from(n));
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse().ok())
}

/// Which of [`KNOWN`] `name` is (any case). The known names' lengths differ, so the
/// length picks the one candidate.
fn known_index(name: &[u8]) -> Option<usize> {
    // `KNOWN`'s index by length (`known_names_differ_in_length` keeps them in step).
    let i = match name.len() {
        7 => 0,
        5 => 1,
        6 => 2,
        13 => 3,
        12 => 4,
        22 => 5,
        _ => return None,
    };
    let known = KNOWN.get(i)?.as_bytes();
    // Envoy's names are lower case already: compare exactly first.
    named(name, known).then_some(i)
}

/// The request's headers as the host read them.
struct Headers<'a> {
    pairs: RequestPairs<'a>,
    /// The first value of each of [`KNOWN`].
    known: [Option<&'a [u8]>; KNOWN.len()],
}

impl<'a> Headers<'a> {
    /// Reads `pairs` once: the known headers' values, and the names of client-sent
    /// `x-flowguard-*` headers (to strip).
    fn new(pairs: RequestPairs<'a>) -> (Headers<'a>, Vec<Vec<u8>>) {
        let mut known = [None; KNOWN.len()];
        let mut own = Vec::new();
        for (name, value) in pairs.iter() {
            if let Some(slot @ None) = known_index(name).and_then(|i| known.get_mut(i)) {
                *slot = Some(value);
            }
            // Most names differ from the prefix by their fourth byte (`x-fl…`).
            if name.get(3).is_some_and(|b| b.eq_ignore_ascii_case(&b'l'))
                && name
                    .get(..OWN_PREFIX.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(OWN_PREFIX))
            {
                own.push(name.to_vec());
            }
        }
        (Headers { pairs, known }, own)
    }

    /// The first value of known header `KNOWN[i]` as sent (not checked for UTF-8 until
    /// someone reads it).
    fn raw(&self, i: usize) -> Option<&'a [u8]> {
        self.known.get(i).copied().flatten()
    }

    /// The first value of known header `KNOWN[i]`, if it is UTF-8.
    fn known(&self, i: usize) -> Option<&'a str> {
        utf8(self.raw(i))
    }

    /// The first header named `name` (any case), if its value is UTF-8.
    fn get(&self, name: &str) -> Option<&'a str> {
        let value = match known_index(name.as_bytes()) {
            Some(i) => self.raw(i),
            None => self
                .pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| v),
        };
        value.and_then(|v| std::str::from_utf8(v).ok())
    }

    /// `x-request-id`, when plain enough to echo in a JSON body.
    fn request_id(&self) -> Option<&'a str> {
        self.known(REQUEST_ID).filter(|id| is_safe_id(id))
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

/// The endpoint id of `template`: the model's, or the learning registry's (the host's
/// cache, else shared data, adding the template, generalised by the positions learned so
/// far, if it is new and there is room). `template` becomes the template the id stands
/// for; `latest` receives the registry when shared data was read.
pub fn endpoint_id<H: Host>(
    scope: &Scope,
    host: &mut H,
    template: &mut String,
    latest: &mut Option<Registry>,
) -> Result<Option<EndpointId>, StoreError<H::Error>> {
    if let Some(model) = scope.model {
        return Ok(model.endpoint(template));
    }
    if let Some(id) = scope.registry.and_then(|r| r.get(template)) {
        return Ok(Some(id));
    }
    let limit = scope.settings.learning.max_endpoints;
    let min_distinct = scope.settings.learning.variable_segment_min;
    let mut found = None;
    let mut read = Registry::default();
    // The last attempt saw (and, if it wrote, extended) what is shared: other hosts'
    // additions too. It is the host's new cache; no second read.
    store::update(host, REGISTRY_KEY, |bytes| {
        read = bytes.map(Registry::decode).unwrap_or_default();
        if let Some(id) = read.get(template) {
            found = Some(id);
            return None;
        }
        let before = read.encode();
        found = read.learn(template, limit, min_distinct);
        let after = read.encode();
        (after != before).then_some(after)
    })?;
    if let Some(t) = found.and_then(|id| read.templates().get(usize::from(id))) {
        template.clone_from(t);
    }
    *latest = Some(read);
    Ok(found)
}

/// A request with a session, ready to be judged; kept while the fleet is asked.
#[derive(Debug)]
struct Prepared {
    request: Request,
    fingerprint: u64,
    address: Option<Vec<u8>>,
    /// `x-request-id` as sent (checked with [`is_safe_id`] where it is used), kept only
    /// while the request waits for the fleet.
    request_id: Option<String>,
    /// The layout its endpoint id is in, kept only while the request waits.
    layout: u32,
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
        let headers = RequestPairs::Decoded(headers);
        self.request_from(scope, host, headers, now_ms, serial, delta)
    }

    /// [`Exchange::request`] from the header map as the proxy-wasm ABI encodes it
    /// (`proxy_get_header_map_pairs`), read without decoding it into a `Vec` first.
    pub fn request_encoded<H: Host>(
        &mut self,
        scope: &Scope,
        host: &mut H,
        encoded: &[u8],
        now_ms: u64,
        serial: u64,
        delta: &mut LearnStats,
    ) -> Result<RequestStep, StoreError<H::Error>> {
        let headers = RequestPairs::Encoded(encoded);
        self.request_from(scope, host, headers, now_ms, serial, delta)
    }

    fn request_from<H: Host>(
        &mut self,
        scope: &Scope,
        host: &mut H,
        headers: RequestPairs,
        now_ms: u64,
        serial: u64,
        delta: &mut LearnStats,
    ) -> Result<RequestStep, StoreError<H::Error>> {
        let settings = scope.settings;
        let (headers, strip) = Headers::new(headers);
        let mut step = RequestStep {
            strip,
            ..RequestStep::default()
        };
        let now = secs(now_ms);
        let header_key = session::derive(&settings.session.sources, |n| headers.get(n), None);
        let mut template = std::mem::take(&mut self.template);
        let id = normalise(scope, &headers, &mut template);
        let mut registry = None;
        let endpoint = endpoint_id(scope, host, &mut template, &mut registry);
        step.registry = registry.map(Box::new);
        self.template = template;
        let endpoint = endpoint?;
        let actions = scope.model.map_or(&settings.rules, |m| m.actions(endpoint));
        let check_address = scope.model.is_some_and(|m| m.checks_address(endpoint))
            && actions.get(Rule::AuthFailures) != RuleAction::Off;
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
            if actions.get(Rule::AuthFailures) != RuleAction::Off {
                self.address_watch = Some(endpoint);
            }
            if let (true, Some(a)) = (check_address, address.as_deref()) {
                self.sessionless(scope, host, a, now, &headers, serial, &mut step)?;
            }
            return Ok(step);
        };
        let fingerprint = fingerprint(settings, &key);
        let mut request = Request {
            endpoint,
            id,
            now_ms,
            weak_session: key.kind == Source::Address.kind() && settings.session.address_is_weak(),
            ..Request::default()
        };
        if let Some(model) = scope.model {
            request.deprecated_template =
                endpoint.is_none() && model.matches_deprecated(&self.template);
        }
        request.checks_address = check_address;
        let prepared = Prepared {
            request,
            fingerprint,
            address,
            request_id: None,
            layout: 0,
        };
        self.judge(
            scope,
            host,
            prepared,
            headers.raw(REQUEST_ID),
            serial,
            delta,
            step,
        )
    }

    /// Finishes a request paused by [`RequestStep::ask`] with the fleet's answer
    /// (`Fleet::Answered`, or anything else: none came). A request whose model changed
    /// meanwhile passes unjudged (its endpoint id means another endpoint now).
    pub fn resume<H: Host>(
        &mut self,
        scope: &Scope,
        host: &mut H,
        fleet: Fleet,
        now_ms: u64,
        serial: u64,
        delta: &mut LearnStats,
    ) -> Result<RequestStep, StoreError<H::Error>> {
        let Some(mut prepared) = self.asking.take().map(|p| *p) else {
            return Ok(RequestStep::default());
        };
        if prepared.layout != scope.layout() {
            return Ok(RequestStep::default());
        }
        prepared.request.fleet = match fleet {
            Fleet::Answered(_) => fleet,
            _ => Fleet::Unavailable,
        };
        prepared.request.now_ms = now_ms;
        let request_id = prepared.request_id.take();
        let step = RequestStep::default();
        self.judge(
            scope,
            host,
            prepared,
            request_id.as_deref().map(str::as_bytes),
            serial,
            delta,
            step,
        )
    }

    /// Judges a prepared request against its session's slot and decides. `request_id` is
    /// the `x-request-id` header as sent: it is checked only where it is used (a local
    /// reply, an event), not for every request.
    #[allow(clippy::too_many_arguments)]
    fn judge<H: Host>(
        &mut self,
        scope: &Scope,
        host: &mut H,
        mut p: Prepared,
        request_id: Option<&[u8]>,
        serial: u64,
        delta: &mut LearnStats,
        mut step: RequestStep,
    ) -> Result<RequestStep, StoreError<H::Error>> {
        let settings = scope.settings;
        let judge = scope.judge();
        let now = secs(p.request.now_ms);
        let (fingerprint, address) = (p.fingerprint, p.address.as_deref());
        let mut judged = judge.request(host, &mut p.request, fingerprint, address, now)?;
        if p.request.fleet == Fleet::Asking {
            // A new session's first request skips a step: the host asks the fleet (nothing
            // was written), or, if it cannot, the mid-flow budget decides now.
            if let (true, Some(model), Some(j)) = (self.can_ask, scope.model, &judged) {
                step.ask = Some(Box::new(Question {
                    session: fingerprint,
                    templates: fleet_join::question(model, &j.verdict)
                        .map(str::to_owned)
                        .collect(),
                    object: fleet_join::question_object(model, &p.request).unwrap_or(0),
                    horizon_s: FLEET_HORIZON_S,
                }));
                p.request_id = utf8(request_id).map(str::to_owned);
                p.layout = scope.layout();
                self.asking = Some(Box::new(p));
                return Ok(step);
            }
            p.request.fleet = Fleet::Unavailable;
            judged = judge.request(host, &mut p.request, fingerprint, address, now)?;
        }
        let request = p.request;
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
        step.counts.fleet = match request.fleet {
            Fleet::Answered(_) if verdict.fired.contains(Rule::MissingPrerequisite) => {
                Some(FleetCount::Refused)
            }
            Fleet::Answered(_) => Some(FleetCount::Joined),
            Fleet::Unavailable => Some(FleetCount::Unavailable),
            Fleet::Unasked | Fleet::Asking => None,
        };
        step.counts.midflow = request.midflow_ok;
        step.counts.new_session = located.placement != Placement::Own;
        step.counts.eviction = located.placement == Placement::Evict;
        if let (true, Some(e)) = (learns, request.endpoint) {
            let registered = match (scope.model, step.registry.as_deref(), scope.registry) {
                (Some(m), _, _) => m.len(),
                (None, Some(r), _) | (None, None, Some(r)) => r.len(),
                (None, None, None) => registry_len(host)?,
            };
            let known = settings.learning.absences_to_record(registered);
            delta.learn_request(e, &visit, request.weak_session, request.carried, known);
        }
        self.pending = request.endpoint.map(|e| {
            let mut p = pending_for(scope, e, &request, &located, &visit, fingerprint, learns);
            p.auth_step = settings.endpoints.failure.auth.contains(&self.template);
            p.handover_step = settings.session.handover.templates.contains(&self.template);
            p
        });
        step.endpoint = request.endpoint;
        step.verdict = Some(verdict);
        step.decision = Some(decision);
        if decision.acts() {
            step.counts.outcome = Some(verdict.outcome);
        }
        let judged = (&verdict, decision);
        if let Some(event) = self.event_of(scope, &request, judged, fingerprint, request_id) {
            match decision {
                Decision::Reply { .. } => step.event = Some(Box::new(event)),
                _ => self.event = Some(event),
            }
        }
        if decision == Decision::Pass {
            return Ok(step);
        }
        step.set.session = Some(hex(fingerprint));
        match decision {
            Decision::Pass | Decision::Session => {}
            Decision::Annotate => step.set.verdict = Some(verdict.header()),
            Decision::Reply {
                status,
                retry_after_s,
            } => {
                self.pending = None;
                step.reply = Some(Box::new(local_reply(
                    status,
                    retry_after_s,
                    utf8(request_id).filter(|id| is_safe_id(id)),
                    fingerprint,
                    serial,
                )));
            }
        }
        Ok(step)
    }

    /// The request's telemetry event, if it is reported (a collector is configured, and a
    /// rule fired, the session is sampled, or the step is one some rule waits for).
    fn event_of(
        &self,
        scope: &Scope,
        request: &Request,
        (verdict, decision): (&Verdict, Decision),
        fingerprint: u64,
        request_id: Option<&[u8]>,
    ) -> Option<Event> {
        let collector = scope.settings.collector.as_ref()?;
        // A step some rule waits for is reported from every session, at once: the fleet
        // answers other proxies from it (`Sessions.Completed`).
        let prompt = request
            .endpoint
            .is_some_and(|e| scope.model.is_some_and(|m| m.is_required(e)));
        let sampled = sampled(fingerprint, collector.sample_rate);
        if verdict.fired.is_empty() && !sampled && !prompt {
            return None;
        }
        Some(Event {
            time_ms: request.now_ms,
            session: fingerprint,
            template: self.template.clone(),
            status: decision.reply_status().unwrap_or(0),
            outcome: decision.acts().then_some(verdict.outcome),
            rules: verdict.fired,
            latency_us: 0,
            // The fleet learner learns what this host's learner would: a session flagged
            // only as "not seen before" still teaches (`Verdict::teaches`).
            summary: verdict.teaches() && sampled,
            ids: request.id,
            weak_session: request.weak_session,
            prompt,
            request_id: utf8(request_id)
                .filter(|id| !verdict.fired.is_empty() && is_safe_id(id))
                .map(str::to_owned),
        })
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
                step.reply = Some(Box::new(local_reply(
                    status,
                    retry_after_s,
                    headers.request_id(),
                    fp,
                    serial,
                )));
            }
            Decision::Annotate => step.set.verdict = Some(verdict.header()),
            Decision::Pass | Decision::Session => {}
        }
        Ok(())
    }

    /// The response-head step: the answer's status settles the pending step (recorded in
    /// the slot by compare-and-swap; learning counts it), a 401/403 counts against the
    /// client address, and a new session cookie is noted for the hand-over. A 2xx JSON
    /// answer whose outcome depends on its body (`endpoints.failure`, or a login whose
    /// token is in its body) is settled by [`Exchange::response_body`] or
    /// [`Exchange::finish`]; so is the sensitive-data scan. `end_of_stream`: no body
    /// follows.
    pub fn response_head<H: Host>(
        &mut self,
        scope: &Scope,
        host: &mut H,
        head: &ResponseHead,
        end_of_stream: bool,
        now_ms: u64,
        delta: &mut LearnStats,
    ) -> Result<ResponseStep, StoreError<H::Error>> {
        self.response_head_clocked(scope, host, head, end_of_stream, || Ok(now_ms), delta)
    }

    /// [`Exchange::response_head`] with the time read from `clock` only if the step needs
    /// it (it records something: a completed step, a failure, a hand-over, an event).
    pub fn response_head_clocked<H: Host>(
        &mut self,
        scope: &Scope,
        host: &mut H,
        head: &ResponseHead,
        end_of_stream: bool,
        mut clock: impl FnMut() -> Result<u64, H::Error>,
        delta: &mut LearnStats,
    ) -> Result<ResponseStep, StoreError<H::Error>> {
        let now = &mut Now {
            ms: None,
            read: &mut clock,
        };
        let settings = scope.settings;
        let mut step = ResponseStep::default();
        let status = head.status;
        let pending = self.pending.take();
        if let (Some(endpoint), true) = (self.address_watch.take(), is_auth_failure(status)) {
            step.auth_failure = Some(endpoint);
            record_address_failure(scope, host, now.ms()?, delta)?;
        }
        if let (true, Some(p)) = (is_success(status), pending) {
            self.handover_to = head.cookie_session.filter(|to| *to != p.fingerprint);
        }
        let defer = !end_of_stream
            && is_success(status)
            && head.json
            && (!settings.endpoints.failure.is_empty() || pending.is_some_and(|p| p.handover_step));
        if let (true, Some(p)) = (defer, pending) {
            self.deferred = Some((p, status));
            self.body.clear();
        }
        if let Some(mut event) = self.event.take() {
            event.status = status;
            event.latency_us = latency_us(&event, now.ms()?);
            if self.deferred.is_some() {
                // The outcome waits for the body: the fleet must not take a failure
                // answered 2xx as a completed step (settled with the body).
                self.event = Some(event);
            } else {
                step.events.push(event);
            }
        }
        if let (false, Some(p)) = (defer, pending) {
            let to = self.handover_to.take();
            self.settled(scope, host, p, status, to, now, delta, &mut step)?;
        }
        let scanned_endpoint = pending.map(|p| p.endpoint);
        let actions = scope
            .model
            .map_or(&settings.rules, |m| m.actions(scanned_endpoint));
        let inspect = actions.get(Rule::SensitiveData) != RuleAction::Off
            && !end_of_stream
            && (200..300).contains(&status)
            && head.json
            && head
                .content_length
                .is_none_or(|l| l <= u64::from(settings.sensitive.max_bytes));
        if inspect {
            self.scanner = Some(Scanner::default());
            self.scanned = pending;
        }
        Ok(step)
    }

    /// How much of the answer's head the response step needs, so a host reads no more:
    /// the whole map for a cookie, a body to wait for or inspect; the status for a step
    /// to settle, a failure to count or an event to complete; else nothing at all.
    pub fn answer_needs(&self, settings: &Settings) -> AnswerNeeds {
        let scans = settings.rules.get(Rule::SensitiveData) != RuleAction::Off;
        self.needs(settings, scans)
    }

    /// [`Exchange::answer_needs`] knowing the model and whether a body follows: the
    /// sensitive-data scan needs the content type only where the rule is on for this
    /// exchange's endpoint (a model may turn it off per endpoint) and a body follows.
    pub fn answer_needs_in(&self, scope: &Scope, end_of_stream: bool) -> AnswerNeeds {
        let settings = scope.settings;
        let endpoint = self.pending.map(|p| p.endpoint);
        let actions = scope.model.map_or(&settings.rules, |m| m.actions(endpoint));
        let scans = !end_of_stream && actions.get(Rule::SensitiveData) != RuleAction::Off;
        self.needs(settings, scans)
    }

    /// What the answer's head must give when `scans` (its body may be scanned).
    fn needs(&self, settings: &Settings, scans: bool) -> AnswerNeeds {
        let whole = scans
            || self.pending.is_some_and(|p| {
                p.handover_step
                    || settings.session.reads_set_cookie()
                    || !settings.endpoints.failure.is_empty()
            });
        if whole {
            AnswerNeeds::Headers
        } else if self.pending.is_some() || self.address_watch.is_some() || self.event.is_some() {
            AnswerNeeds::Status
        } else {
            AnswerNeeds::Nothing
        }
    }

    /// Whether [`Exchange::finish`] has anything to settle or report (an outcome waiting
    /// for its body, an event waiting for its answer); if not, a host may skip it.
    pub fn unfinished(&self) -> bool {
        self.deferred.is_some() || self.event.is_some()
    }

    /// Whether the host should hand this exchange the answer's body.
    pub fn wants_body(&self) -> bool {
        self.deferred.is_some() || self.scanner.is_some()
    }

    /// The response-body step: one chunk of the answer (`end_of_stream`: the last). The
    /// chunk streams on unchanged; only a bounded prefix (deferred outcome) and a short
    /// tail (the scanner) are kept.
    pub fn response_body<H: Host>(
        &mut self,
        scope: &Scope,
        host: &mut H,
        chunk: &[u8],
        end_of_stream: bool,
        now_ms: u64,
        delta: &mut LearnStats,
    ) -> Result<ResponseStep, StoreError<H::Error>> {
        self.response_body_clocked(scope, host, chunk, end_of_stream, || Ok(now_ms), delta)
    }

    /// [`Exchange::response_body`] with the time read from `clock` only if needed.
    pub fn response_body_clocked<H: Host>(
        &mut self,
        scope: &Scope,
        host: &mut H,
        chunk: &[u8],
        end_of_stream: bool,
        mut clock: impl FnMut() -> Result<u64, H::Error>,
        delta: &mut LearnStats,
    ) -> Result<ResponseStep, StoreError<H::Error>> {
        let now = &mut Now {
            ms: None,
            read: &mut clock,
        };
        let mut step = ResponseStep::default();
        if self.deferred.is_some() {
            let room = failure::MAX_BODY.saturating_sub(self.body.len());
            if chunk.len() > room {
                self.settle_deferred(scope, host, false, now, delta, &mut step)?;
            } else {
                self.body.extend_from_slice(chunk);
                if end_of_stream {
                    self.settle_deferred(scope, host, true, now, delta, &mut step)?;
                }
            }
        }
        let settings = scope.settings;
        let Some(scanner) = self.scanner.as_mut() else {
            return Ok(step);
        };
        let max = usize::try_from(settings.sensitive.max_bytes).unwrap_or(usize::MAX);
        if scanner.scanned.saturating_add(chunk.len()) > max {
            self.scanner = None; // too large to inspect: it streams untouched
            return Ok(step);
        }
        scanner.feed(chunk, &settings.sensitive.fields, end_of_stream);
        if end_of_stream {
            let findings = scanner.findings;
            self.scanner = None;
            // An answer that straddled a model install names its endpoint in the old ids.
            if self.scanned.is_some_and(|p| p.layout != scope.layout()) {
                return Ok(step);
            }
            if let Some(p) = self.scanned.filter(|p| p.endpoint_facts) {
                delta.observe_sensitive(p.endpoint, &findings);
            }
            let endpoint = self.scanned.map(|p| p.endpoint);
            step.sensitive = scope
                .model
                .is_some_and(|m| m.sensitive_beyond_normal(endpoint, &findings));
        }
        Ok(step)
    }

    /// The stream ended (completed, reset or cut short): an outcome still waiting for its
    /// body stands as its status (fail open: a customer's step is never lost).
    pub fn finish<H: Host>(
        &mut self,
        scope: &Scope,
        host: &mut H,
        now_ms: u64,
        delta: &mut LearnStats,
    ) -> Result<ResponseStep, StoreError<H::Error>> {
        self.finish_clocked(scope, host, || Ok(now_ms), delta)
    }

    /// [`Exchange::finish`] with the time read from `clock` only if needed (an outcome
    /// still waiting for its body, an event still waiting for its answer).
    pub fn finish_clocked<H: Host>(
        &mut self,
        scope: &Scope,
        host: &mut H,
        mut clock: impl FnMut() -> Result<u64, H::Error>,
        delta: &mut LearnStats,
    ) -> Result<ResponseStep, StoreError<H::Error>> {
        let now = &mut Now {
            ms: None,
            read: &mut clock,
        };
        let mut step = ResponseStep::default();
        self.asking = None;
        self.settle_deferred(scope, host, false, now, delta, &mut step)?;
        if let Some(mut event) = self.event.take() {
            // No answer came (the upstream reset or the client left): reported as such
            // (status 0) rather than lost.
            event.latency_us = latency_us(&event, now.ms()?);
            step.events.push(event);
        }
        self.scanner = None;
        Ok(step)
    }

    /// Records the deferred outcome: judged by the body when `judge`, else as its status.
    fn settle_deferred<H: Host>(
        &mut self,
        scope: &Scope,
        host: &mut H,
        judge: bool,
        now: &mut Now<H::Error>,
        delta: &mut LearnStats,
        step: &mut ResponseStep,
    ) -> Result<(), StoreError<H::Error>> {
        let Some((pending, status)) = self.deferred.take() else {
            return Ok(());
        };
        let settings = scope.settings;
        let status = if judge {
            settings
                .endpoints
                .failure
                .effective_status(status, pending.auth_step, &self.body)
        } else {
            status
        };
        let token_session = (judge && pending.handover_step)
            .then(|| {
                let field = settings.session.handover.json_field.as_deref()?;
                handover::from_body(&settings.session.sources, &self.body, field)
                    .map(|key| fingerprint(settings, &key))
            })
            .flatten();
        self.body = Vec::new();
        if let Some(mut event) = self.event.take() {
            event.status = status;
            step.events.push(event);
        }
        let to = self.handover_to.take().or(token_session);
        self.settled(scope, host, pending, status, to, now, delta, step)
    }

    /// Records a step's outcome, then hands the session over to the identity its answer
    /// issued (`to`: by a cookie, or a token in the body), so the step goes with it.
    #[allow(clippy::too_many_arguments)]
    fn settled<H: Host>(
        &mut self,
        scope: &Scope,
        host: &mut H,
        p: Pending,
        status: u16,
        to: Option<u64>,
        now: &mut Now<H::Error>,
        delta: &mut LearnStats,
        step: &mut ResponseStep,
    ) -> Result<(), StoreError<H::Error>> {
        step.completed = settle(scope, host, p, status, now, delta)?;
        if is_auth_failure(status) {
            step.auth_failure = Some(Some(p.endpoint));
        }
        if let (Some(to), true) = (to, is_success(status)) {
            match hand_over(scope, host, p, to, now.ms()?, &mut step.events)? {
                Some(true) => step.handed_over = true,
                Some(false) => {}
                None => step.slot_conflict = true,
            }
        }
        Ok(())
    }
}

fn latency_us(event: &Event, now_ms: u64) -> u32 {
    u32::try_from(now_ms.saturating_sub(event.time_ms).saturating_mul(1000)).unwrap_or(u32::MAX)
}

/// Continues the flow of `p`'s session in session `to`'s slot, claiming one for it if it
/// has none. `Some(true)`: handed over (with a collector, `events` gains the steps it
/// continues from); `Some(false)`: nothing to continue; `None`: every compare-and-swap
/// attempt lost.
fn hand_over<H: Host>(
    scope: &Scope,
    host: &mut H,
    p: Pending,
    to: u64,
    now_ms: u64,
    events: &mut Vec<Event>,
) -> Result<Option<bool>, StoreError<H::Error>> {
    let now = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
    let continued_from =
        scope
            .judge()
            .hand_over(host, p.index, p.fingerprint, p.layout, to, now)?;
    Ok(match continued_from {
        Some(Some(from)) => {
            if scope.settings.collector.is_some() {
                continued(scope, &from, to, now_ms, events);
            }
            Some(true)
        }
        Some(None) => Some(false),
        None => None,
    })
}

/// Tells the fleet which steps the new identity `to` continues from: at the edge a login's
/// new cookie or token may hash to another proxy, which asks the collector about it
/// (`Sessions.Completed`) and must find them. Session-wide steps only: an object's steps
/// are kept by a short key here, and a flow usually reaches its objects after the login.
fn continued(scope: &Scope, from: &Slot, to: u64, now_ms: u64, events: &mut Vec<Event>) {
    let Some(model) = scope.model else {
        return;
    };
    let steps = crate::endpoint_set::EndpointSet(from.completed.0 & model.required().0);
    events.extend(
        steps
            .iter()
            .filter_map(|e| model.template(e))
            .map(|t| Event {
                time_ms: now_ms,
                session: to,
                template: t.to_owned(),
                status: 200,
                outcome: None,
                rules: RuleSet::EMPTY,
                latency_us: 0,
                summary: false,
                ids: None,
                weak_session: false,
                prompt: true,
                request_id: None,
            }),
    );
}

/// Records a step's outcome in its slot. Returns
/// whether the slot was written.
fn settle<H: Host>(
    scope: &Scope,
    host: &mut H,
    p: Pending,
    status: u16,
    now: &mut Now<H::Error>,
    delta: &mut LearnStats,
) -> Result<bool, StoreError<H::Error>> {
    let auth_failure = is_auth_failure(status);
    let learning = scope.model.is_none();
    if (!is_success(status) && !auth_failure) || (p.completed && !auth_failure && !learning) {
        return Ok(false);
    }
    let now_ms = now.ms()?;
    let recorded = scope.judge().record_response(
        host,
        (p.index, p.fingerprint, p.layout),
        p.endpoint,
        p.object,
        status,
        now_ms,
    )?;
    let (written, peak, unlearned) = match recorded {
        Some(r) => (true, r.peak, r.unlearned),
        None => (false, None, false),
    };
    let learned = (
        written && p.learn && !unlearned,
        written && p.endpoint_facts,
    );
    delta.learn_answer(p.endpoint, learned, p.retry, status, peak);
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
    let now = secs(now_ms);
    let peak = scope.judge().record_address_failure(host, now)?;
    if scope.model.is_none() {
        delta.observe_address_failure(peak);
    }
    Ok(())
}

fn secs(ms: u64) -> u32 {
    u32::try_from(ms / 1000).unwrap_or(u32::MAX)
}

/// The time a response step works with, read from the host at most once and only when
/// the step records something (an answer that changes nothing costs no clock read: on
/// the Wasm host that is a host call).
struct Now<'c, E> {
    ms: Option<u64>,
    read: &'c mut dyn FnMut() -> Result<u64, E>,
}

impl<E> Now<'_, E> {
    fn ms(&mut self) -> Result<u64, E> {
        if let Some(ms) = self.ms {
            return Ok(ms);
        }
        let ms = (self.read)()?;
        self.ms = Some(ms);
        Ok(ms)
    }
}

fn registry_len<H: Host>(host: &mut H) -> Result<usize, StoreError<H::Error>> {
    let (bytes, _) = host.get(REGISTRY_KEY)?;
    Ok(bytes.as_deref().map_or(0, |b| Registry::decode(b).len()))
}

/// Normalises the request into `out`; returns its object's identifier hash.
fn normalise(scope: &Scope, headers: &Headers, out: &mut String) -> Option<u64> {
    let normaliser = scope.model.map_or(scope.base_normaliser, |m| &m.normaliser);
    let method = headers.known(METHOD).unwrap_or("GET");
    let method = match headers.known(METHOD_OVERRIDE) {
        Some(m)
            if scope.settings.endpoints.method_override && method.eq_ignore_ascii_case("POST") =>
        {
            m.trim()
        }
        _ => method,
    };
    let path = headers.known(PATH).unwrap_or("/");
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
        layout: located.slot.layout,
        completed: unread || (located.slot.completed.contains(endpoint) && done_on_object),
        object,
        learn: learns && visit.learn && !request.weak_session,
        retry: visit.retry,
        endpoint_facts: learns && visit.learn,
        auth_step: false,
        handover_step: false,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod headers_tests {
    use super::{
        known_index, Headers, RequestPairs, KNOWN, METHOD, METHOD_OVERRIDE, PATH, REQUEST_ID,
    };

    #[test]
    fn known_names_differ_in_length_and_are_found_in_any_case() {
        for (i, a) in KNOWN.iter().enumerate() {
            assert!(KNOWN.iter().skip(i + 1).all(|b| b.len() != a.len()), "{a}");
            assert_eq!(known_index(a.as_bytes()), Some(i));
        }
        let named = [METHOD, PATH, REQUEST_ID, METHOD_OVERRIDE].map(|i| KNOWN[i]);
        assert_eq!(
            named,
            [":method", ":path", "x-request-id", "x-http-method-override"]
        );
        let pairs: [(&[u8], &[u8]); 5] = [
            (b"Cookie", b"session=1"),
            (b"cookie", b"session=2"),
            (b"X-Flowguard-Verdict", b"allow"),
            (b"x-custom", b"v"),
            (b":path", b"/a"),
        ];
        let as_str: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| {
                (
                    std::str::from_utf8(k).unwrap_or_default(),
                    std::str::from_utf8(v).unwrap_or_default(),
                )
            })
            .collect();
        let encoded = crate::header_map::encode_pairs(&as_str);
        for pairs in [
            RequestPairs::Decoded(&pairs),
            RequestPairs::Encoded(&encoded),
        ] {
            let (headers, own) = Headers::new(pairs);
            assert_eq!(headers.get("cookie"), Some("session=1"), "the first one");
            assert_eq!(headers.get("COOKIE"), Some("session=1"));
            assert_eq!(headers.get("x-custom"), Some("v"));
            assert_eq!(headers.get(":path"), Some("/a"));
            assert_eq!(headers.get(":method"), None);
            assert_eq!(own, vec![b"X-Flowguard-Verdict".to_vec()]);
        }
    }
}
