//! Telemetry and policy over Envoy's gRPC callout, entirely off the request path:
//! requests append to a bounded buffer; each worker's tick sends at most one batch and
//! polls for a policy; answers arrive as callbacks on the root context. Completions of
//! steps some rule waits for go to a second buffer, sent on every (short) tick, so the
//! fleet can answer for them soon after (`Sessions.Completed`, `crate::fleet`).

use crate::host::{self, EnvoyHost};
use crate::metrics::Metrics;
use flowguard_engine::config::{CollectorSettings, Mode, Settings};
use flowguard_engine::model::Model;
use flowguard_engine::node::Node;
use flowguard_engine::policy::Policy;
use flowguard_engine::telemetry::{Event, EventBuffer};
use flowguard_proto::v1;
use flowguard_proto::Message;
use proxy_wasm::types::{BufferType, LogLevel};
use std::collections::HashMap;
use std::time::Duration;

/// Policies larger than this are refused unread.
pub const MAX_POLICY_BYTES: usize = 1 << 20;
/// Batches in flight per worker at most; a slow collector makes events wait, then drop.
const MAX_IN_FLIGHT: usize = 2;
/// Prompt batches in flight per worker at most: more, as they are small and late ones
/// are what another proxy's question misses (a batch sent is stored even if this proxy
/// dies; one still buffered dies with it).
const MAX_PROMPT_IN_FLIGHT: usize = 8;

enum Call {
    Report(usize),
    /// A batch of the prompt buffer.
    Prompt(usize),
    Policy,
}

pub struct Telemetry {
    pub settings: CollectorSettings,
    buffer: EventBuffer,
    /// Completions of steps some rule waits for, sent on every tick.
    prompt: EventBuffer,
    in_flight: HashMap<u32, Call>,
    /// The collector cluster as a serialized `envoy.config.core.v3.GrpcService`.
    upstream: Vec<u8>,
    batch_id: u64,
    worker: u32,
    /// The version this worker's model runs (0: learning) and the mode, told with each
    /// batch so the collector knows what every proxy runs.
    policy_version: u64,
    mode: &'static str,
    last_flush_ms: u64,
    last_poll_ms: u64,
    logged_failure: bool,
}

impl Telemetry {
    pub fn new(settings: CollectorSettings, mode: Mode) -> Telemetry {
        use std::hash::BuildHasher;
        let worker = std::collections::hash_map::RandomState::new().hash_one(0u8) as u32;
        Telemetry {
            upstream: flowguard_proto::envoy_grpc_service(&settings.cluster),
            buffer: EventBuffer::new(settings.buffer_events as usize),
            prompt: EventBuffer::new(settings.buffer_events as usize),
            settings,
            in_flight: HashMap::new(),
            batch_id: 0,
            worker,
            policy_version: 0,
            mode: mode.id(),
            last_flush_ms: 0,
            last_poll_ms: 0,
            logged_failure: false,
        }
    }

    /// Buffers an event; a full buffer drops it and counts the drop.
    pub fn record(&mut self, event: Event, m: &Metrics) {
        let buffer = if event.prompt {
            &mut self.prompt
        } else {
            &mut self.buffer
        };
        if !buffer.push(event) {
            Metrics::inc(m.telemetry_dropped);
        }
    }

    /// Sends a batch and polls for a policy when their intervals have passed.
    pub fn tick(&mut self, now_ms: u64, model_version: u64, m: &Metrics) {
        self.policy_version = model_version;
        let flush_due =
            now_ms.saturating_sub(self.last_flush_ms) >= u64::from(self.settings.flush_interval_ms);
        if flush_due && !self.buffer.is_empty() && self.reports_in_flight() < MAX_IN_FLIGHT {
            self.last_flush_ms = now_ms;
            self.send_batch(false, m);
        }
        let interval = u64::from(self.settings.policy_interval_ms);
        let polling = self.in_flight.values().any(|c| matches!(c, Call::Policy));
        if interval > 0 && !polling && now_ms.saturating_sub(self.last_poll_ms) >= interval {
            self.last_poll_ms = now_ms;
            self.poll_policy(model_version, m);
        }
    }

    /// Sends the prompt buffer's events, on every tick (see `crate::tick`).
    pub fn send_prompt(&mut self, m: &Metrics) {
        let in_flight = self
            .in_flight
            .values()
            .filter(|c| matches!(c, Call::Prompt(_)))
            .count();
        if !self.prompt.is_empty() && in_flight < MAX_PROMPT_IN_FLIGHT {
            self.send_batch(true, m);
        }
    }

    /// Whether prompt events wait to be sent.
    pub fn has_prompt(&self) -> bool {
        !self.prompt.is_empty()
    }

    fn reports_in_flight(&self) -> usize {
        self.in_flight
            .values()
            .filter(|c| matches!(c, Call::Report(_)))
            .count()
    }

    fn send_batch(&mut self, prompt: bool, m: &Metrics) {
        let buffer = if prompt {
            &mut self.prompt
        } else {
            &mut self.buffer
        };
        let (events, dropped) = buffer.take(self.settings.batch_events as usize);
        let n = events.len();
        self.batch_id += 1;
        let request = v1::ReportRequest {
            node: self.settings.node.clone(),
            batch_id: self.batch_id,
            worker: self.worker,
            policy_version: self.policy_version,
            mode: self.mode.to_owned(),
            dropped,
            events: events.into_iter().map(v1::Event::from).collect(),
        };
        match self.dispatch(
            flowguard_proto::TELEMETRY_SERVICE,
            flowguard_proto::REPORT_METHOD,
            &request.encode_to_vec(),
        ) {
            Some(token) => {
                let call = if prompt {
                    Call::Prompt(n)
                } else {
                    Call::Report(n)
                };
                self.in_flight.insert(token, call);
            }
            None => {
                Metrics::add(m.telemetry_failed, n as u64);
            }
        }
    }

    fn poll_policy(&mut self, known_version: u64, m: &Metrics) {
        let request = v1::GetPolicyRequest {
            node: self.settings.node.clone(),
            known_version,
        };
        match self.dispatch(
            flowguard_proto::POLICIES_SERVICE,
            flowguard_proto::GET_POLICY_METHOD,
            &request.encode_to_vec(),
        ) {
            Some(token) => {
                self.in_flight.insert(token, Call::Policy);
            }
            None => Metrics::inc(m.policy_failed),
        }
    }

    fn dispatch(&mut self, service: &str, method: &str, message: &[u8]) -> Option<u32> {
        let timeout = Duration::from_millis(self.settings.timeout_ms.into());
        self.dispatch_within(service, method, message, timeout)
    }

    /// Asks the collector what a session completed (`crate::fleet`). Called from an HTTP
    /// context, so the answer comes to that context, not to the root; it is not tracked
    /// here.
    pub fn ask_sessions(&mut self, message: &[u8], timeout: Duration) -> Option<u32> {
        self.dispatch_within(
            flowguard_proto::SESSIONS_SERVICE,
            flowguard_proto::COMPLETED_METHOD,
            message,
            timeout,
        )
    }

    fn dispatch_within(
        &mut self,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Option<u32> {
        let upstream = String::from_utf8_lossy(&self.upstream).into_owned();
        let bearer = self.settings.token.as_ref().map(|t| format!("Bearer {t}"));
        let metadata: Vec<(&str, &[u8])> = bearer
            .iter()
            .map(|b| ("authorization", b.as_bytes()))
            .collect();
        match host::dispatch_grpc_call(&upstream, service, method, metadata, message, timeout) {
            Ok(token) => Some(token),
            Err(status) => {
                self.log_failure(&format!(
                    "cannot call {service}/{method} on cluster {}: {status:?}",
                    self.settings.cluster
                ));
                None
            }
        }
    }

    fn log_failure(&mut self, what: &str) {
        // Once per worker until a call succeeds again: a dead collector must not flood logs.
        if !self.logged_failure {
            self.logged_failure = true;
            host::log(LogLevel::Warn, &format!("flowguard: telemetry: {what}"));
        }
    }

    /// Handles the answer to a callout: counts reports, installs a new valid policy.
    pub fn on_response(
        &mut self,
        token: u32,
        status: u32,
        size: usize,
        settings: &Settings,
        m: &Metrics,
    ) {
        let Some(call) = self.in_flight.remove(&token) else {
            return;
        };
        if status != 0 {
            match call {
                Call::Report(n) | Call::Prompt(n) => Metrics::add(m.telemetry_failed, n as u64),
                Call::Policy => Metrics::inc(m.policy_failed),
            }
            self.log_failure(&format!(
                "collector answered gRPC status {status} (cluster {})",
                self.settings.cluster
            ));
            return;
        }
        self.logged_failure = false;
        match call {
            Call::Report(n) | Call::Prompt(n) => Metrics::add(m.telemetry_sent, n as u64),
            Call::Policy => self.on_policy(size, settings, m),
        }
    }

    fn on_policy(&mut self, size: usize, settings: &Settings, m: &Metrics) {
        if size > MAX_POLICY_BYTES {
            Metrics::inc(m.policy_refused);
            host::log(
                LogLevel::Error,
                &format!("flowguard: refused policy: {size} bytes exceeds {MAX_POLICY_BYTES}"),
            );
            return;
        }
        let bytes = host::buffer(BufferType::GrpcReceiveBuffer, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let answer = match v1::GetPolicyResponse::decode(bytes.as_slice()) {
            Ok(a) => a,
            Err(e) => {
                Metrics::inc(m.policy_refused);
                host::log(
                    LogLevel::Error,
                    &format!("flowguard: refused policy answer: {e}"),
                );
                return;
            }
        };
        if answer.unchanged {
            return;
        }
        let checked = Policy::from_json(answer.policy_json.as_bytes())
            .and_then(|p| Model::compile(&p, settings).map(|_| p));
        match checked {
            Ok(p) if p.version == answer.version => publish(&p, &answer.policy_json, m),
            Ok(p) => {
                Metrics::inc(m.policy_refused);
                host::log(
                    LogLevel::Error,
                    &format!(
                        "flowguard: refused policy: answer says version {} but policy is {}",
                        answer.version, p.version
                    ),
                );
            }
            Err(e) => {
                Metrics::inc(m.policy_refused);
                host::log(
                    LogLevel::Error,
                    &format!("flowguard: refused policy version {}: {e}", answer.version),
                );
            }
        }
    }

    /// Cancels every callout still pending (VM shutdown) and counts its events as failed.
    pub fn cancel_all(&mut self, m: &Metrics) {
        for (token, call) in self.in_flight.drain() {
            let _ = host::cancel_grpc_call(token);
            if let Call::Report(n) | Call::Prompt(n) = call {
                Metrics::add(m.telemetry_failed, n as u64);
            }
        }
    }
}

/// Puts a validated policy in shared data; every worker installs it on its next tick.
fn publish(policy: &Policy, json: &str, m: &Metrics) {
    // Every worker polls: the first to see a new version publishes it, the others find it
    // published (or lose the claim to the one publishing it).
    let result = Node::published_version(&mut EnvoyHost).and_then(|(current, cas)| {
        if current == policy.version {
            return Ok(false);
        }
        Node::publish(&mut EnvoyHost, policy.version, json, cas)
    });
    match result {
        Ok(false) => {}
        Ok(true) => {
            Metrics::inc(m.policy_updates);
            host::log(
                LogLevel::Info,
                &format!(
                    "flowguard: collector policy version {} published to all workers",
                    policy.version
                ),
            );
        }
        Err(e) => host::log(
            LogLevel::Warn,
            &format!("flowguard: could not publish policy: {e:?}"),
        ),
    }
}
