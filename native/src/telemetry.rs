//! Telemetry and fleet policy for the native module, off the request path: the Wasm
//! filter's reports (`flowguard.v1.Telemetry/Report` batches) and policy polls
//! (`flowguard.v1.Policies/GetPolicy`) to the same collector, from one background thread
//! per [`crate::Filter`] with its own tonic client.
//!
//! Why a thread and not Envoy's callout: the dynamic-module ABI's callouts are plain HTTP
//! requests and streams to a named cluster, answered through hooks on the thread that
//! started them; gRPC framing, status trailers, deadlines and the in-flight bookkeeping
//! would all be hand-made on top, in hooks that run beside requests. A thread with tonic
//! speaks gRPC exactly as the collector does, costs the request path one `try_send` per
//! reported request, and stops with its filter. What it gives up: the cluster's settings
//! (TLS, load balancing over replicas, circuit breaking), which the Wasm filter gets from
//! Envoy; here it is one plaintext HTTP/2 connection to one address.
//!
//! Where the collector is: the Wasm filter names an Envoy cluster (`collector.cluster`),
//! which a module cannot dial. The native module reads `collector.address`
//! (`http://host:port`); one JSON may carry both and serve both builds. A `collector`
//! section without an address is refused at load, naming the key: a configured collector
//! that silently receives nothing would be worse.
//!
//! The request path pushes complete events ([`Queue::push`]) into bounded channels of
//! `collector.buffer_events` (one for summaries and rule events, one for the prompt
//! completions some rule waits for); a full channel drops the event and counts it
//! (`flowguard.telemetry.dropped`). The thread takes up to `collector.batch_events` every
//! `collector.flush_interval_ms` (prompt events as soon as they arrive), sends at most
//! [`MAX_IN_FLIGHT`] report batches at once, and polls for a newer policy every
//! `collector.policy_interval_ms`; a valid newer policy is compiled on the thread and
//! installed through [`Sink::install`]. Counts the thread makes (sent, failed, policy
//! updates) wait in [`Pending`] until Envoy's main thread takes them ([`Pending::take`],
//! woken through [`Pending::wake`]). Dropping the [`Telemetry`] stops the thread and joins
//! it: in-flight calls are abandoned, never awaited.
//!
//! The fleet's answers for paused requests: a session new here whose first request skips
//! a step is paused while the thread asks `Sessions.Completed`
//! ([`Queue::ask`], at most [`MAX_WAITING`] questions per filter outstanding), with the
//! deadline `session.midflow.fleet_timeout_ms`; the answer (or its absence) is put in
//! the request's [`Answer`] and its waker called (Envoy: the stream's scheduler, which
//! resumes the request on its worker thread). A request gone meanwhile revoked its waker:
//! the late answer is dropped.

use crate::Level;
use flowguard_engine::config::{CollectorSettings, Settings};
use flowguard_engine::exchange;
use flowguard_engine::model::Model;
use flowguard_engine::policy::Policy;
use flowguard_engine::telemetry::Event;
use flowguard_proto::v1;
use flowguard_proto::v1::policies_client::PoliciesClient;
use flowguard_proto::v1::sessions_client::SessionsClient;
use flowguard_proto::v1::telemetry_client::TelemetryClient;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;

/// Policies larger than this are refused unread (the Wasm filter's bound).
pub const MAX_POLICY_BYTES: usize = 1 << 20;
/// Report batches in flight at most; a slow collector makes events wait, then drop.
pub const MAX_IN_FLIGHT: usize = 2;
/// Prompt batches in flight at most (small, and what another proxy's question misses).
pub const MAX_PROMPT_IN_FLIGHT: usize = 8;
/// Questions to the fleet outstanding per filter at most (the Wasm filter's bound per
/// worker): beyond, the mid-flow budget decides at once. Bounds what a flood of
/// step-skipping sessions costs the collector and the paused requests Envoy holds.
pub const MAX_WAITING: u32 = 256;
/// Answers larger than this are not read (the Wasm filter's bound).
const MAX_ANSWER_BYTES: usize = 1 << 18;

/// The collector's address as tonic reads it (the engine checked its shape).
pub fn check_address(address: &str) -> Result<(), String> {
    let rest = address.strip_prefix("http://").ok_or_else(|| {
        format!(
            "collector.address: expected http://host:port (the native module speaks plaintext \
             gRPC; TLS to the collector needs the Wasm filter's Envoy cluster), got {address:?}"
        )
    })?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || address.len() > 200 {
        return Err(format!(
            "collector.address: expected http://host:port, got {address:?}"
        ));
    }
    tonic::transport::Endpoint::from_shared(address.to_owned())
        .map(|_| ())
        .map_err(|e| format!("collector.address: {address:?}: {e}"))
}

/// Asks the host to take [`Pending`]'s counts (Envoy: commits to its scheduler).
pub type Waker = Box<dyn Fn() + Send>;

/// Counts the thread (and the request path's drops) made that Envoy has not been told of
/// yet, and how the host is woken to take them.
#[derive(Default)]
pub struct Pending {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    pub policy_updates: AtomicU64,
    pub policy_refused: AtomicU64,
    pub policy_failed: AtomicU64,
    /// Drops since the last batch was taken (the batch reports them, as the Wasm filter's).
    dropped_since_batch: AtomicU64,
    /// A wake is outstanding (the host clears it before taking the counts).
    woken: AtomicBool,
    /// Who to wake: the host's schedulers (Envoy's main thread), by id.
    wakers: Mutex<Vec<(u64, Waker)>>,
    next_waker: AtomicU64,
}

/// What [`Pending::take`] hands the host: each count since the last take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub sent: u64,
    pub failed: u64,
    pub dropped: u64,
    pub policy_updates: u64,
    pub policy_refused: u64,
    pub policy_failed: u64,
}

impl Pending {
    fn add(&self, counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
            self.wake();
        }
    }

    /// Asks one registered host to take the counts, unless a wake is already outstanding.
    pub fn wake(&self) {
        if self.woken.swap(true, Ordering::AcqRel) {
            return;
        }
        let wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        match wakers.first() {
            Some((_, wake)) => wake(),
            None => self.woken.store(false, Ordering::Release),
        }
    }

    /// Registers a waker (called from any thread, while registered); its id.
    pub fn register(&self, wake: Waker) -> u64 {
        let id = self.next_waker.fetch_add(1, Ordering::Relaxed);
        self.wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id, wake));
        // A wake that found no one: whoever registers now takes it.
        self.woken.store(false, Ordering::Release);
        self.wake();
        id
    }

    /// Unregisters waker `id`: once this returns it is never called again.
    pub fn unregister(&self, id: u64) {
        self.wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(w, _)| *w != id);
        // A wake the removed host may not have taken goes to the next one.
        self.woken.store(false, Ordering::Release);
        self.wake();
    }

    /// The counts since the last take (the host reports them).
    pub fn take(&self) -> Counts {
        self.woken.store(false, Ordering::Release);
        let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed);
        Counts {
            sent: take(&self.sent),
            failed: take(&self.failed),
            dropped: take(&self.dropped),
            policy_updates: take(&self.policy_updates),
            policy_refused: take(&self.policy_refused),
            policy_failed: take(&self.policy_failed),
        }
    }
}

/// Where the fleet's answer to one paused request goes: shared by the request (its
/// stream) and the telemetry thread. Counts as outstanding until both have let go.
pub struct Answer {
    state: Mutex<AnswerState>,
    outstanding: Arc<AtomicU32>,
}

struct AnswerState {
    /// `Some(None)`: no answer (deadline, failure, unreadable).
    answer: Option<Option<v1::CompletedResponse>>,
    delivered: bool,
    /// Called once the answer is in; `None` once the request is gone.
    wake: Option<Waker>,
}

impl Answer {
    fn lock(&self) -> std::sync::MutexGuard<'_, AnswerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The thread's answer: kept, and the request woken (under the lock, so a request
    /// that revokes its waker never sees it called afterwards).
    pub fn deliver(&self, answer: Option<v1::CompletedResponse>) {
        let mut state = self.lock();
        if state.delivered {
            return;
        }
        state.delivered = true;
        state.answer = Some(answer);
        if let Some(wake) = &state.wake {
            wake();
        }
    }

    /// The answer, once delivered (`Some(None)`: none came in time).
    pub fn take(&self) -> Option<Option<v1::CompletedResponse>> {
        self.lock().answer.take()
    }

    /// The request is gone or resumed: its waker is never called once this returns.
    pub fn revoke(&self) {
        let wake = self.lock().wake.take();
        drop(wake);
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A question for the thread, and where its answer goes. Dropped unanswered (the
/// thread stopped, or its call was abandoned), it answers "none": a paused request is
/// always resumed.
struct Question {
    request: v1::CompletedRequest,
    answer: Arc<Answer>,
}

impl Drop for Question {
    fn drop(&mut self) {
        self.answer.deliver(None);
    }
}

/// The bounded buffers the request path pushes into.
pub struct Queue {
    events: tokio::sync::mpsc::Sender<Event>,
    prompt: tokio::sync::mpsc::Sender<Event>,
    questions: tokio::sync::mpsc::Sender<Question>,
    /// Questions asked whose [`Answer`] is still held (bounded by [`MAX_WAITING`]).
    outstanding: Arc<AtomicU32>,
    pub pending: Arc<Pending>,
}

/// The receiving ends, for the thread.
pub struct Receivers {
    events: tokio::sync::mpsc::Receiver<Event>,
    prompt: tokio::sync::mpsc::Receiver<Event>,
    questions: tokio::sync::mpsc::Receiver<Question>,
}

impl Queue {
    /// Buffers of `capacity` events each (at least one).
    pub fn new(capacity: usize) -> (Queue, Receivers) {
        let capacity = capacity.max(1);
        let (events, events_rx) = tokio::sync::mpsc::channel(capacity);
        let (prompt, prompt_rx) = tokio::sync::mpsc::channel(capacity);
        let (questions, questions_rx) = tokio::sync::mpsc::channel(MAX_WAITING as usize);
        (
            Queue {
                events,
                prompt,
                questions,
                outstanding: Arc::new(AtomicU32::new(0)),
                pending: Arc::new(Pending::default()),
            },
            Receivers {
                events: events_rx,
                prompt: prompt_rx,
                questions: questions_rx,
            },
        )
    }

    /// Whether a question could be asked now (fewer than [`MAX_WAITING`] outstanding).
    pub fn can_ask(&self) -> bool {
        self.outstanding.load(Ordering::Acquire) < MAX_WAITING
    }

    /// Questions outstanding (tests).
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Acquire)
    }

    /// Asks the fleet `question` without waiting; `wake` is called (from the thread) once
    /// its answer is in the returned [`Answer`]. `None` when it cannot be asked: the bound
    /// is reached, or the thread has stopped.
    pub fn ask(&self, question: &exchange::Question, wake: Waker) -> Option<Arc<Answer>> {
        if self.outstanding.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        // From here the answer's drop gives the place back.
        let answer = Arc::new(Answer {
            state: Mutex::new(AnswerState {
                answer: None,
                delivered: false,
                wake: Some(wake),
            }),
            outstanding: self.outstanding.clone(),
        });
        let request = v1::CompletedRequest {
            session: question.session,
            templates: question.templates.clone(),
            ids: question.object,
            horizon_s: question.horizon_s,
        };
        self.questions
            .try_send(Question {
                request,
                answer: answer.clone(),
            })
            .ok()?;
        Some(answer)
    }

    /// Buffers `event` without waiting; a full buffer (or a stopped thread) drops it and
    /// counts the drop. Whether it was buffered.
    pub fn push(&self, event: Event) -> bool {
        let channel = if event.prompt {
            &self.prompt
        } else {
            &self.events
        };
        match channel.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                self.pending
                    .dropped_since_batch
                    .fetch_add(1, Ordering::Relaxed);
                self.pending.add(&self.pending.dropped, 1);
                false
            }
        }
    }
}

/// Where the thread installs a newer policy, and what it asks the collector about.
pub trait Sink: Send + Sync + 'static {
    /// The installed model's version (0: none).
    fn version(&self) -> u64;
    /// Installs a compiled collector policy; false if it was not (a newer one is in).
    fn install(&self, policy: Policy, model: Model) -> bool;
    fn log(&self, level: Level, message: &str);
}

/// The background thread of one filter; stopped and joined when dropped.
pub struct Telemetry {
    pub queue: Queue,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Telemetry {
    /// Starts the thread reporting to `address` with `collector`'s settings; `settings`
    /// (the filter's) compile the policies it receives.
    pub fn start(
        address: String,
        settings: &Settings,
        collector: &CollectorSettings,
        sink: Arc<dyn Sink>,
    ) -> Result<Telemetry, String> {
        let (queue, receivers) = Queue::new(collector.buffer_events as usize);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let worker = {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(0u8) as u32
        };
        let run = Run {
            address,
            settings: settings.clone(),
            collector: collector.clone(),
            pending: queue.pending.clone(),
            sink,
            worker,
        };
        let thread = std::thread::Builder::new()
            .name("flowguard-telemetry".to_owned())
            .spawn(move || run.thread(receivers, stopped))
            .map_err(|e| format!("collector: cannot start the telemetry thread: {e}"))?;
        Ok(Telemetry {
            queue,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Whether the thread is still running (tests).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Never joins itself: the thread holds no `Filter`, only what it reports to.
            let _ = thread.join();
        }
    }
}

struct Run {
    address: String,
    settings: Settings,
    collector: CollectorSettings,
    pending: Arc<Pending>,
    sink: Arc<dyn Sink>,
    worker: u32,
}

/// What a finished call reports.
enum Done {
    Report {
        events: u64,
        ok: bool,
        error: String,
    },
    Prompt {
        events: u64,
        ok: bool,
        error: String,
    },
    Policy(Result<v1::GetPolicyResponse, String>),
}

impl Run {
    fn thread(self, receivers: Receivers, stopped: tokio::sync::oneshot::Receiver<()>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                self.sink.log(
                    Level::Error,
                    &format!("flowguard: telemetry: no runtime: {e}"),
                );
                return;
            }
        };
        // A panic here ends the thread, never the process (the unwind stops at its edge).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(self.run(receivers, stopped));
        }));
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(Duration::from_millis(self.collector.timeout_ms.into()));
        if let Some(token) = &self.collector.token {
            if let Ok(value) = format!("Bearer {token}").parse() {
                request.metadata_mut().insert("authorization", value);
            }
        }
        request
    }

    async fn run(self, mut receivers: Receivers, mut stopped: tokio::sync::oneshot::Receiver<()>) {
        let timeout = Duration::from_millis(self.collector.timeout_ms.into());
        let endpoint = match tonic::transport::Endpoint::from_shared(self.address.clone()) {
            Ok(e) => e.connect_timeout(timeout).timeout(timeout),
            Err(e) => {
                self.sink.log(
                    Level::Error,
                    &format!("flowguard: telemetry: collector.address: {e}"),
                );
                return;
            }
        };
        // Connected now if the collector answers within `timeout_ms`: a paused request's
        // question (50 ms by default) must not pay for the connection. Otherwise lazily,
        // on the first call (and again after a failure either way).
        let channel = tokio::select! {
            _ = &mut stopped => return,
            connected = tokio::time::timeout(timeout, endpoint.connect()) => match connected {
                Ok(Ok(channel)) => channel,
                _ => endpoint.connect_lazy(),
            },
        };
        let reports = TelemetryClient::new(channel.clone());
        let policies = PoliciesClient::new(channel.clone());
        let sessions = SessionsClient::new(channel).max_decoding_message_size(MAX_ANSWER_BYTES);
        let fleet_timeout =
            Duration::from_millis(self.settings.session.midflow_fleet_timeout_ms.into());
        let mut asked = tokio::task::JoinSet::new();
        let mut flush = tokio::time::interval(Duration::from_millis(
            self.collector.flush_interval_ms.into(),
        ));
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let poll_ms = u64::from(self.collector.policy_interval_ms);
        let mut poll = tokio::time::interval(Duration::from_millis(poll_ms.max(1)));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let batch = (self.collector.batch_events as usize).max(1);
        let mut calls = tokio::task::JoinSet::new();
        let (mut reporting, mut prompting, mut polling) = (0usize, 0usize, false);
        let mut batch_id = 0u64;
        let mut logged_failure = false;
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = flush.tick(), if reporting < MAX_IN_FLIGHT => {
                    let events = take(&mut receivers.events, None, batch);
                    if !events.is_empty() {
                        batch_id += 1;
                        reporting += 1;
                        let n = events.len() as u64;
                        let call = self.report(batch_id, events);
                        let mut client = reports.clone();
                        calls.spawn(async move {
                            let (ok, error) = outcome(client.report(call).await);
                            Done::Report { events: n, ok, error }
                        });
                    }
                }
                first = receivers.prompt.recv(), if prompting < MAX_PROMPT_IN_FLIGHT => {
                    // Closed only once the filter is gone: nothing more will come.
                    let Some(first) = first else { break };
                    let events = take(&mut receivers.prompt, Some(first), batch);
                    batch_id += 1;
                    prompting += 1;
                    let n = events.len() as u64;
                    let call = self.report(batch_id, events);
                    let mut client = reports.clone();
                    calls.spawn(async move {
                        let (ok, error) = outcome(client.report(call).await);
                        Done::Prompt { events: n, ok, error }
                    });
                }
                question = receivers.questions.recv() => {
                    // Closed only once the filter is gone.
                    let Some(mut question) = question else { break };
                    let mut client = sessions.clone();
                    let mut call = self.request(std::mem::take(&mut question.request));
                    call.set_timeout(fleet_timeout);
                    asked.spawn(async move {
                        let reply = tokio::time::timeout(fleet_timeout, client.completed(call)).await;
                        question.answer.deliver(match reply {
                            Ok(Ok(r)) => Some(r.into_inner()),
                            _ => None,
                        });
                    });
                }
                Some(_) = asked.join_next() => {}
                _ = poll.tick(), if poll_ms > 0 && !polling => {
                    polling = true;
                    let call = self.request(v1::GetPolicyRequest {
                        node: self.collector.node.clone(),
                        known_version: self.sink.version(),
                    });
                    let mut client = policies.clone();
                    calls.spawn(async move {
                        let answer = client
                            .get_policy(call)
                            .await
                            .map(tonic::Response::into_inner)
                            .map_err(|s| format!("gRPC status {:?}: {}", s.code(), s.message()));
                        Done::Policy(answer)
                    });
                }
                Some(done) = calls.join_next() => {
                    let failure = match done {
                        Ok(Done::Report { events, ok, error }) => {
                            reporting = reporting.saturating_sub(1);
                            self.count_report(events, ok, error)
                        }
                        Ok(Done::Prompt { events, ok, error }) => {
                            prompting = prompting.saturating_sub(1);
                            self.count_report(events, ok, error)
                        }
                        Ok(Done::Policy(answer)) => {
                            polling = false;
                            self.on_policy(answer)
                        }
                        Err(_) => {
                            // A call that panicked: what is left in flight bounds the rest.
                            let left = calls.len();
                            reporting = reporting.min(left);
                            prompting = prompting.min(left);
                            polling = polling && left > 0;
                            None
                        }
                    };
                    match failure {
                        // Once until a call succeeds again: a dead collector must not
                        // flood Envoy's log.
                        Some(error) if !logged_failure => {
                            logged_failure = true;
                            self.sink.log(
                                Level::Warn,
                                &format!("flowguard: telemetry: collector {}: {error}", self.address),
                            );
                        }
                        Some(_) => {}
                        None => logged_failure = false,
                    }
                }
            }
        }
        calls.abort_all();
        asked.abort_all();
    }

    fn report(&self, batch_id: u64, events: Vec<Event>) -> tonic::Request<v1::ReportRequest> {
        let dropped = self.pending.dropped_since_batch.swap(0, Ordering::Relaxed);
        self.request(v1::ReportRequest {
            node: self.collector.node.clone(),
            batch_id,
            worker: self.worker,
            dropped,
            events: events.into_iter().map(v1::Event::from).collect(),
            policy_version: self.sink.version(),
            mode: self.settings.mode.id().to_owned(),
        })
    }

    fn count_report(&self, events: u64, ok: bool, error: String) -> Option<String> {
        if ok {
            self.pending.add(&self.pending.sent, events);
            None
        } else {
            self.pending.add(&self.pending.failed, events);
            Some(error)
        }
    }

    /// A policy answer: a newer valid policy is installed; the failure to log, if any.
    fn on_policy(&self, answer: Result<v1::GetPolicyResponse, String>) -> Option<String> {
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.pending.add(&self.pending.policy_failed, 1);
                return Some(format!("policy poll: {e}"));
            }
        };
        if answer.unchanged || answer.version == self.sink.version() {
            return None;
        }
        let refuse = |why: String| {
            self.pending.add(&self.pending.policy_refused, 1);
            self.sink
                .log(Level::Error, &format!("flowguard: refused policy: {why}"));
            None
        };
        if answer.policy_json.len() > MAX_POLICY_BYTES {
            return refuse(format!(
                "{} bytes exceeds {MAX_POLICY_BYTES}",
                answer.policy_json.len()
            ));
        }
        let policy = match Policy::from_json(answer.policy_json.as_bytes()) {
            Ok(p) => p,
            Err(e) => return refuse(format!("version {}: {e}", answer.version)),
        };
        if policy.version != answer.version {
            return refuse(format!(
                "answer says version {} but policy is {}",
                answer.version, policy.version
            ));
        }
        let model = match Model::compile(&policy, &self.settings) {
            Ok(m) => m,
            Err(e) => return refuse(format!("version {}: {e}", answer.version)),
        };
        let version = policy.version;
        if self.sink.install(policy, model) {
            self.pending.add(&self.pending.policy_updates, 1);
            self.sink.log(
                Level::Info,
                &format!("flowguard: collector policy version {version} installed"),
            );
        }
        None
    }
}

/// Up to `max` events: `first`, then what the channel holds now (never waits).
fn take(
    channel: &mut tokio::sync::mpsc::Receiver<Event>,
    first: Option<Event>,
    max: usize,
) -> Vec<Event> {
    let mut events: Vec<Event> = first.into_iter().collect();
    while events.len() < max {
        match channel.try_recv() {
            Ok(e) => events.push(e),
            Err(_) => break,
        }
    }
    events
}

/// Whether a report call was answered OK, and the failure otherwise.
fn outcome<T>(answer: Result<tonic::Response<T>, tonic::Status>) -> (bool, String) {
    match answer {
        Ok(_) => (true, String::new()),
        Err(s) => (
            false,
            format!("gRPC status {:?}: {}", s.code(), s.message()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowguard_engine::rule::RuleSet;

    fn event(n: u64, prompt: bool) -> Event {
        Event {
            time_ms: n,
            session: n,
            template: "GET /".into(),
            status: 200,
            outcome: None,
            rules: RuleSet::EMPTY,
            latency_us: 0,
            summary: true,
            ids: None,
            weak_session: false,
            prompt,
            request_id: None,
        }
    }

    #[test]
    fn a_full_buffer_drops_and_counts_without_waiting() {
        let (queue, mut receivers) = Queue::new(3);
        let woken = Arc::new(AtomicU64::new(0));
        let w = woken.clone();
        queue.pending.register(Box::new(move || {
            w.fetch_add(1, Ordering::Relaxed);
        }));
        let started = std::time::Instant::now();
        let pushed: Vec<bool> = (0..5).map(|i| queue.push(event(i, false))).collect();
        assert_eq!(pushed, [true, true, true, false, false]);
        // The prompt buffer is bounded on its own.
        assert!(queue.push(event(9, true)));
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "never waits"
        );
        let counts = queue.pending.take();
        assert_eq!(counts.dropped, 2, "{counts:?}");
        assert_eq!(queue.pending.take().dropped, 0, "taken once");
        assert!(woken.load(Ordering::Relaxed) >= 1, "the host was woken");
        // The next batch reports the drops since the last one, oldest events first.
        assert_eq!(
            queue.pending.dropped_since_batch.swap(0, Ordering::Relaxed),
            2
        );
        let batch = take(&mut receivers.events, None, 2);
        assert_eq!(batch.iter().map(|e| e.time_ms).collect::<Vec<_>>(), [0, 1]);
        assert!(queue.push(event(5, false)), "room again");
        // A closed channel (the thread gone) drops and counts too.
        drop(receivers);
        assert!(!queue.push(event(6, false)));
        assert_eq!(queue.pending.take().dropped, 1);
    }

    #[test]
    fn an_unregistered_waker_is_never_called() {
        let pending = Pending::default();
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let id = pending.register(Box::new(move || {
            c.fetch_add(1, Ordering::Relaxed);
        }));
        pending.take(); // what registering woke the host for
        let after_register = calls.load(Ordering::Relaxed);
        pending.add(&pending.sent, 3);
        pending.add(&pending.sent, 4);
        assert_eq!(
            calls.load(Ordering::Relaxed),
            after_register + 1,
            "one wake until the host takes the counts"
        );
        assert_eq!(pending.take().sent, 7);
        pending.unregister(id);
        pending.add(&pending.failed, 1);
        assert_eq!(calls.load(Ordering::Relaxed), after_register + 1);
        assert_eq!(pending.take().failed, 1, "counted all the same");
    }

    #[test]
    fn the_address_is_checked_where_it_is_read() {
        assert_eq!(check_address("http://127.0.0.1:50051"), Ok(()));
        for bad in ["https://c:443", "127.0.0.1:50051", "http://c:1/path"] {
            let json = format!(r#"{{"collector":{{"address":"{bad}"}}}}"#);
            let err = Settings::from_json(json.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("collector.address"), "{bad}: {err}");
        }
    }
}
