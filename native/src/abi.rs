//! Envoy's dynamic-module C ABI, as flowguard uses it: every `unsafe` line of the crate.
//!
//! Declared by hand from Envoy's `source/extensions/dynamic_modules/abi/abi.h`, the
//! revision with `{ptr, length}` buffer structs, `get_headers_size` / `get_headers` and
//! `get_body_chunks` (the callbacks the 1.40 binary exports). The revisions of the header
//! at hand declare `ENVOY_DYNAMIC_MODULES_ABI_VERSION "v0.1.0"`; Envoy 1.40 logs
//! "Dynamic module ABI version v0.2.0 matched." for `v0.2.0` (and loads any other string
//! with a deprecation warning), so the module returns `v0.2.0`, and the real-Envoy test
//! checks that line and every hook and callback used here. Envoy resolves every HTTP-filter event hook by name when a
//! filter configuration is created and refuses the configuration if one is missing, so
//! all 30 are exported, the unused ones doing nothing. A panic never crosses the ABI:
//! every hook runs its body under `catch_unwind` and fails open (the request continues).
//!
//! Buffers cross as `{ptr, length}` pairs passed by value; statuses are C enums
//! (`int`-sized; 0 is Continue).
//!
//! The filter's ticker wakes Envoy's main thread every `learning.tick_ms` to tick the node
//! (learning, adoption, retiring) and report the gauges, and, with a collector, the
//! telemetry thread's counts reach Envoy, through a configuration scheduler (`http_filter_config_scheduler_new/commit/delete`: commit may be called from
//! any thread and runs `on_http_filter_config_scheduled` on the main thread), where
//! `http_filter_config_increment_counter` / `_set_gauge` report them. Those two take
//! `(config, id, label_values, label_values_length, value)` like their per-stream
//! counterparts: read off the 1.40 binary's code (the header revision at hand predates
//! them), and exercised by the real-Envoy telemetry tests.
//!
//! A new session's first request that skips a step is paused (`StopAllIterationAndWatermark`)
//! while the telemetry thread asks the fleet; the answer comes back through a per-stream
//! scheduler (`http_filter_scheduler_new/commit/delete`: commit from the telemetry thread,
//! `on_http_filter_scheduled` on the request's worker), where the exchange resumes and the
//! request is continued (`http_filter_continue_decoding`) or answered. See [`Asking`] for
//! why a reset stream is safe.
#![allow(unsafe_code)]

use crate::registry::{self, Origin};
use crate::{
    counted, counted_response, fired, rule_counter, telemetry, telemetry_counts, Counter, Filter,
    Gauge, Level, Stream, COUNTERS, GAUGES,
};
use flowguard_engine::exchange::{AnswerNeeds, Question, RequestStep, ResponseHead, ResponseStep};
use flowguard_engine::rule::Rule;
use std::ffi::{c_char, c_void};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The ABI version this module is built against (`ENVOY_DYNAMIC_MODULES_ABI_VERSION`).
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// A buffer Envoy owns (`envoy_dynamic_module_type_envoy_buffer`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

/// A buffer the module owns (`envoy_dynamic_module_type_module_buffer`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

/// A header Envoy owns (`envoy_dynamic_module_type_envoy_http_header`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

/// A header the module owns (`envoy_dynamic_module_type_module_http_header`).
#[repr(C)]
pub struct ModuleHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

type ConfigEnvoy = *mut c_void;
type ConfigModule = *const c_void;
type FilterEnvoy = *mut c_void;
type FilterModule = *const c_void;

// `envoy_dynamic_module_type_http_header_type`
const REQUEST_HEADER: u32 = 0;
const RESPONSE_HEADER: u32 = 2;
// `envoy_dynamic_module_type_http_body_type_ReceivedResponseBody`
const RECEIVED_RESPONSE_BODY: u32 = 2;
// `envoy_dynamic_module_type_attribute_id_SourceAddress`
const ATTRIBUTE_SOURCE_ADDRESS: u32 = 24;
// `..._on_http_filter_request_headers_status`
const CONTINUE: u32 = 0;
const STOP_ITERATION: u32 = 1;
// `..._request_headers_status_StopAllIterationAndWatermark`: no body or trailers pass
// until the request is continued (a body is buffered up to the watermark).
const STOP_ALL_ITERATION_AND_WATERMARK: u32 = 4;
/// The scheduler event that says a paused request's fleet answer is in.
const FLEET_ANSWER: u64 = 1;
// `envoy_dynamic_module_type_metrics_result_Success`
const METRICS_SUCCESS: u32 = 0;

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: FilterEnvoy, kind: u32)
        -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterEnvoy,
        kind: u32,
        result: *mut EnvoyHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoy,
        kind: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: FilterEnvoy,
        kind: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_header(
        filter: FilterEnvoy,
        kind: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_count: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoy,
        status: u32,
        headers: *mut ModuleHeader,
        headers_count: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: FilterEnvoy,
        body_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: FilterEnvoy,
        body_type: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: FilterEnvoy,
        id: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigEnvoy,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: ConfigEnvoy,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter: FilterEnvoy,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: ConfigEnvoy,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: ConfigEnvoy,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: FilterEnvoy) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: FilterEnvoy);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: ConfigEnvoy,
    ) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: FilterEnvoy,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
}

fn module_buffer(bytes: &[u8]) -> ModuleBuffer {
    ModuleBuffer {
        ptr: bytes.as_ptr(),
        length: bytes.len(),
    }
}

const NULL_BUFFER: ModuleBuffer = ModuleBuffer {
    ptr: std::ptr::null(),
    length: 0,
};

/// Bytes Envoy owns, valid until the end of the current hook.
///
/// # Safety
/// `ptr` must point at `length` readable bytes for the lifetime chosen.
unsafe fn envoy_bytes<'a>(ptr: *const u8, length: usize) -> &'a [u8] {
    if ptr.is_null() || length == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, length)
    }
}

/// A line in Envoy's log (`[dynamic_modules]`).
pub fn log(level: Level, message: &str) {
    // SAFETY: the buffer is valid for the call; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level as u32, module_buffer(message.as_bytes())) }
}

/// What Envoy holds for a filter configuration: the filter and its metrics' ids.
struct Config {
    filter: Arc<Filter>,
    counters: Arc<Counters>,
    /// Envoy's scheduler for this configuration (its address), the waker registered with
    /// the filter's ticker (`Core::register_ticker`: the scheduled hook ticks the node on
    /// the main thread) and, with a collector, the one registered with the telemetry
    /// thread, which commits to it when it has counts for Envoy; the scheduled hook
    /// reports them on the main thread.
    scheduler: Option<(usize, u64, Option<u64>)>,
}

impl Drop for Config {
    fn drop(&mut self) {
        if let Some((scheduler, ticker, waker)) = self.scheduler.take() {
            // Unregistered first: once `unregister` returns no thread commits to it.
            self.filter.unregister_ticker(ticker);
            if let (Some(pending), Some(waker)) = (self.filter.pending(), waker) {
                pending.unregister(waker);
            }
            // SAFETY: the scheduler `scheduler_new` returned, deleted once, never used after.
            unsafe {
                envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
                    scheduler as *mut c_void,
                );
            }
        }
    }
}

/// An Envoy scheduler for `config_envoy`, registered as the filter's ticker and, with a
/// collector, as the telemetry thread's waker.
fn scheduler(config_envoy: ConfigEnvoy, filter: &Filter) -> Option<(usize, u64, Option<u64>)> {
    // SAFETY: `config_envoy` is the pointer Envoy gave the config hook.
    let scheduler =
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(config_envoy) };
    if scheduler.is_null() {
        return None;
    }
    let address = scheduler as usize;
    let wake = move || {
        // SAFETY: called only while registered, before `Config::drop` deletes it; Envoy's
        // commit may be called from any thread.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                address as *mut c_void,
                0,
            );
        }
    };
    let ticker = filter.register_ticker(Box::new(wake));
    let waker = filter.pending().map(|p| p.register(Box::new(wake)));
    Some((address, ticker, waker))
}

#[derive(Default)]
struct Counters {
    /// Envoy's id of each counter, by `Counter as usize` (found in one step per request).
    ids: [Option<usize>; COUNTERS.len()],
    rules: Vec<(Rule, usize)>,
    gauges: Vec<(Gauge, usize)>,
    /// The filter's generation the gauges were last reported at.
    reported: AtomicU64,
}

/// One stream as Envoy holds it.
struct StreamState {
    stream: Stream,
    counters: Arc<Counters>,
    /// The request is paused while the fleet is asked about its session.
    asking: Option<Asking>,
    /// The request hook answered "stop": someone must continue or answer it.
    paused: bool,
    /// Body bytes the answer's `content-length` still promises (when it was read).
    body_left: Option<u64>,
}

/// A paused request's question: where the answer lands, and the stream's Envoy scheduler
/// (its address) that the telemetry thread commits to when it does.
///
/// Lifetimes: the scheduler is deleted only here, after the answer's waker is revoked,
/// and the waker calls `commit` only under the answer's lock while not revoked, so no
/// commit ever reaches a deleted scheduler. A commit Envoy posts for a stream reset
/// meanwhile is dropped by Envoy (it holds the filter weakly); one that arrives after
/// the request resumed finds nothing to resume. A late answer lands in an [`Answer`] no
/// one reads, and is dropped with it.
struct Asking {
    answer: Arc<telemetry::Answer>,
    scheduler: usize,
}

impl Drop for Asking {
    fn drop(&mut self) {
        self.answer.revoke();
        // SAFETY: the scheduler `scheduler_new` returned; deleted once, here, after the
        // revocation above (no thread commits to it any more).
        unsafe {
            envoy_dynamic_module_callback_http_filter_scheduler_delete(
                self.scheduler as *mut c_void,
            );
        }
    }
}

/// Asks the fleet about the paused request's session, through a scheduler for `filter`
/// the answer is delivered with. `None`: not asked (no scheduler, the bound, a stopped
/// thread), and the mid-flow budget decides.
fn ask(filter: FilterEnvoy, state: &StreamState, question: &Question) -> Option<Asking> {
    if !state.stream.filter.can_ask() {
        return None;
    }
    // SAFETY: `filter` is the stream's Envoy pointer, valid during the hook.
    let scheduler = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(filter) };
    if scheduler.is_null() {
        return None;
    }
    let address = scheduler as usize;
    let wake: telemetry::Waker = Box::new(move || {
        // SAFETY: called only while the answer's waker is not revoked, which `Asking`'s
        // drop does before it deletes the scheduler; Envoy's commit may be called from
        // any thread.
        unsafe {
            envoy_dynamic_module_callback_http_filter_scheduler_commit(
                address as *mut c_void,
                FLEET_ANSWER,
            );
        }
    });
    match state.stream.filter.ask(question, wake) {
        Some(answer) => Some(Asking {
            answer,
            scheduler: address,
        }),
        None => {
            // SAFETY: the scheduler just made, never handed out (the waker that held its
            // address is dropped: the question was not sent).
            unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler) };
            None
        }
    }
}

fn define_gauge(config: ConfigEnvoy, name: &str) -> Option<usize> {
    let mut id = 0usize;
    // SAFETY: `config` is the pointer Envoy gave the config hook; `id` is a valid out slot.
    let result = unsafe {
        envoy_dynamic_module_callback_http_filter_config_define_gauge(
            config,
            module_buffer(name.as_bytes()),
            std::ptr::null_mut(),
            0,
            &mut id,
        )
    };
    (result == METRICS_SUCCESS).then_some(id)
}

fn set_gauge(filter: FilterEnvoy, id: usize, value: u64) {
    // SAFETY: `filter` is the stream's Envoy pointer, valid during the hook.
    unsafe {
        envoy_dynamic_module_callback_http_filter_set_gauge(
            filter,
            id,
            std::ptr::null_mut(),
            0,
            value,
        );
    }
}

fn define_counter(config: ConfigEnvoy, name: &str) -> Option<usize> {
    let mut id = 0usize;
    // SAFETY: `config` is the pointer Envoy gave the config hook; `id` is a valid out slot.
    let result = unsafe {
        envoy_dynamic_module_callback_http_filter_config_define_counter(
            config,
            module_buffer(name.as_bytes()),
            std::ptr::null_mut(),
            0,
            &mut id,
        )
    };
    (result == METRICS_SUCCESS).then_some(id)
}

fn increment(filter: FilterEnvoy, id: usize) {
    // SAFETY: `filter` is the stream's Envoy pointer, valid during the hook.
    unsafe {
        envoy_dynamic_module_callback_http_filter_increment_counter(
            filter,
            id,
            std::ptr::null_mut(),
            0,
            1,
        );
    }
}

impl Counters {
    fn count(&self, filter: FilterEnvoy, counter: Counter) {
        if let Some(id) = self.id(counter) {
            increment(filter, id);
        }
    }

    fn id(&self, counter: Counter) -> Option<usize> {
        self.ids.get(counter as usize).copied().flatten()
    }

    /// Reports the gauges if the filter's state changed since they were last reported.
    fn gauges(&self, filter: FilterEnvoy, state: &Filter) {
        let generation = state.generation();
        // Read first: a swap on every request would take the shared line for writing.
        if self.reported.load(Ordering::Relaxed) == generation
            || self.reported.swap(generation, Ordering::Relaxed) == generation
        {
            return;
        }
        for (gauge, value) in state.gauges() {
            if let Some((_, id)) = self.gauges.iter().find(|(g, _)| *g == gauge) {
                set_gauge(filter, *id, value);
            }
        }
    }

    fn rule(&self, filter: FilterEnvoy, rule: Rule) {
        if let Some((_, id)) = self.rules.iter().find(|(r, _)| *r == rule) {
            increment(filter, *id);
        }
    }
}

/// Runs a hook's body; a panic is logged and answered with `fallback` (fail open).
fn guarded<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    crate::guarded(fallback, log, body)
}

/// Up to this many headers are read into arrays on the stack: no allocation per request.
const STACK_HEADERS: usize = 32;

const NO_HEADER: EnvoyHeader = EnvoyHeader {
    key_ptr: std::ptr::null(),
    key_length: 0,
    value_ptr: std::ptr::null(),
    value_length: 0,
};

/// Runs `body` over Envoy's headers of `kind` as `(name, value)` slices: pointers into
/// Envoy's map, nothing copied. They are valid until the hook returns or a header setter
/// is called, so they are only lent to `body`, which sets nothing.
fn with_headers<T>(
    filter: FilterEnvoy,
    kind: u32,
    body: impl for<'a> FnOnce(&'a [(&'a [u8], &'a [u8])]) -> T,
) -> T {
    // SAFETY: `filter` is valid during the hook.
    let n = unsafe { envoy_dynamic_module_callback_http_get_headers_size(filter, kind) };
    if n <= STACK_HEADERS {
        let mut raw = [NO_HEADER; STACK_HEADERS];
        // SAFETY: `raw` has room for the `n` headers Envoy writes.
        let read = n > 0
            && unsafe {
                envoy_dynamic_module_callback_http_get_headers(filter, kind, raw.as_mut_ptr())
            };
        let n = if read { n } else { 0 };
        let mut pairs: [(&[u8], &[u8]); STACK_HEADERS] = [(&[], &[]); STACK_HEADERS];
        for (pair, h) in pairs.iter_mut().zip(raw.iter().take(n)) {
            // SAFETY: Envoy's buffers, valid while `body` runs (no setter is called).
            *pair = unsafe {
                (
                    envoy_bytes(h.key_ptr, h.key_length),
                    envoy_bytes(h.value_ptr, h.value_length),
                )
            };
        }
        body(pairs.get(..n).unwrap_or_default())
    } else {
        let mut raw = vec![NO_HEADER; n];
        // SAFETY: `raw` has room for the `n` headers Envoy writes.
        if !unsafe {
            envoy_dynamic_module_callback_http_get_headers(filter, kind, raw.as_mut_ptr())
        } {
            raw.clear();
        }
        let pairs: Vec<(&[u8], &[u8])> = raw
            .iter()
            .map(|h| {
                // SAFETY: as above.
                unsafe {
                    (
                        envoy_bytes(h.key_ptr, h.key_length),
                        envoy_bytes(h.value_ptr, h.value_length),
                    )
                }
            })
            .collect();
        body(&pairs)
    }
}

/// The first value of header `name` of `kind`, lent to `body` (as [`with_headers`]).
fn with_header<T>(
    filter: FilterEnvoy,
    kind: u32,
    name: &[u8],
    body: impl for<'a> FnOnce(Option<&'a [u8]>) -> T,
) -> T {
    let mut out = EnvoyBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
    let mut count = 0usize;
    // SAFETY: `filter` is valid during the hook; `name` for the call; the value is Envoy's,
    // valid while `body` runs.
    unsafe {
        let found = envoy_dynamic_module_callback_http_get_header(
            filter,
            kind,
            module_buffer(name),
            &mut out,
            0,
            &mut count,
        );
        body(found.then(|| envoy_bytes(out.ptr, out.length)))
    }
}

/// Up to this many body chunks are read into an array on the stack.
const STACK_CHUNKS: usize = 8;

const NO_BUFFER: EnvoyBuffer = EnvoyBuffer {
    ptr: std::ptr::null(),
    length: 0,
};

/// Runs `body` over the chunks of the answer's body received in this event: Envoy's
/// buffers, valid until the hook returns, lent to `body`.
fn with_chunks<T>(filter: FilterEnvoy, body: impl for<'a> FnOnce(&'a [&'a [u8]]) -> T) -> T {
    // SAFETY: `filter` is valid during the hook.
    let n = unsafe {
        envoy_dynamic_module_callback_http_get_body_chunks_size(filter, RECEIVED_RESPONSE_BODY)
    };
    let read = |raw: &mut [EnvoyBuffer]| {
        // SAFETY: `raw` has room for the `n` buffers Envoy writes.
        n > 0
            && unsafe {
                envoy_dynamic_module_callback_http_get_body_chunks(
                    filter,
                    RECEIVED_RESPONSE_BODY,
                    raw.as_mut_ptr(),
                )
            }
    };
    if n <= STACK_CHUNKS {
        let mut raw = [NO_BUFFER; STACK_CHUNKS];
        let n = if read(&mut raw) { n } else { 0 };
        let mut chunks: [&[u8]; STACK_CHUNKS] = [&[]; STACK_CHUNKS];
        for (chunk, b) in chunks.iter_mut().zip(raw.iter().take(n)) {
            // SAFETY: Envoy's buffers, valid until the hook returns.
            *chunk = unsafe { envoy_bytes(b.ptr, b.length) };
        }
        body(chunks.get(..n).unwrap_or_default())
    } else {
        let mut raw = vec![NO_BUFFER; n];
        if !read(&mut raw) {
            raw.clear();
        }
        // SAFETY: as above.
        let chunks: Vec<&[u8]> = raw
            .iter()
            .map(|b| unsafe { envoy_bytes(b.ptr, b.length) })
            .collect();
        body(&chunks)
    }
}

fn client_address(filter: FilterEnvoy) -> Option<Vec<u8>> {
    let mut out = EnvoyBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
    // SAFETY: `filter` is valid during the hook; the result is copied before it returns.
    unsafe {
        envoy_dynamic_module_callback_http_filter_get_attribute_string(
            filter,
            ATTRIBUTE_SOURCE_ADDRESS,
            &mut out,
        )
        .then(|| envoy_bytes(out.ptr, out.length).to_vec())
        .filter(|a| !a.is_empty())
    }
}

/// Adds a request header: for a name the request no longer carries (Envoy's set would
/// first look for it to replace it).
fn add_header(filter: FilterEnvoy, name: &[u8], value: &[u8]) {
    // SAFETY: both buffers are valid for the call; Envoy copies them.
    unsafe {
        envoy_dynamic_module_callback_http_add_header(
            filter,
            REQUEST_HEADER,
            module_buffer(name),
            module_buffer(value),
        );
    }
}

fn set_header(filter: FilterEnvoy, name: &[u8], value: Option<&[u8]>) {
    // SAFETY: both buffers are valid for the call; Envoy copies them.
    unsafe {
        envoy_dynamic_module_callback_http_set_header(
            filter,
            REQUEST_HEADER,
            module_buffer(name),
            value.map_or(NULL_BUFFER, module_buffer),
        );
    }
}

fn send_response(filter: FilterEnvoy, status: u16, headers: &[(&str, String)], body: &str) {
    let mut headers: Vec<ModuleHeader> = headers
        .iter()
        .map(|(k, v)| ModuleHeader {
            key_ptr: k.as_ptr(),
            key_length: k.len(),
            value_ptr: v.as_ptr(),
            value_length: v.len(),
        })
        .collect();
    // SAFETY: every buffer lives until the call returns; Envoy copies them.
    unsafe {
        envoy_dynamic_module_callback_http_send_response(
            filter,
            u32::from(status),
            headers.as_mut_ptr(),
            headers.len(),
            module_buffer(body.as_bytes()),
            module_buffer(b"flowguard_blocked"),
        );
    }
}

/// Test builds only (`--features crash-switch`): a request carrying
/// `x-flowguard-test-crash` panics inside the hook, so a test can watch it caught.
#[cfg(feature = "crash-switch")]
#[allow(clippy::panic)]
fn crash_switch(pairs: &[(&[u8], &[u8])]) {
    if pairs
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case(b"x-flowguard-test-crash"))
    {
        panic!("crash switch pulled");
    }
}

/// The module's state for `module` (a pointer `on_http_filter_new` returned).
///
/// # Safety
/// `module` must be null or a live `StreamState` this module allocated.
unsafe fn stream_state<'a>(module: FilterModule) -> Option<&'a mut StreamState> {
    (module as *mut StreamState).as_mut()
}

/// The floor probe's hooks: taken only with feature `floor-probe` (`native/perf/perf.py`).
mod floor {
    use super::*;
    use flowguard_engine::keys::slot_key;
    use flowguard_engine::slot::SLOT_SIZE;

    /// Reads the clock and the headers, finds the cookie, reads and writes back its slot
    /// (a slot's size, compare-and-swap), adds the two upstream headers.
    pub fn request(filter: FilterEnvoy, state: &StreamState) -> u32 {
        let now = crate::now_ms();
        let hash = with_headers(filter, REQUEST_HEADER, |pairs| {
            let cookie = pairs.iter().find(|(name, _)| *name == b"cookie");
            cookie.map_or(0, |(_, v)| {
                v.iter().fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(*b))
            })
        });
        let table = &state.stream.filter.table;
        let key = slot_key(u32::try_from(hash % 32_768).unwrap_or(0));
        let mut slot = [0u8; SLOT_SIZE];
        if let Ok(cas) = table.read_key(key, |bytes, cas| {
            if let Some(b) = bytes.filter(|b| b.len() == SLOT_SIZE) {
                slot.copy_from_slice(b);
            }
            cas
        }) {
            slot[0] = slot[0].wrapping_add(1);
            slot[1] = now.to_le_bytes()[0];
            let _ = table.set_key(key, &slot, cas);
        }
        add_header(filter, b"x-flowguard-session", b"0123456789abcdef");
        add_header(filter, b"x-flowguard-verdict", b"allow");
        CONTINUE
    }

    /// Reads the answer's status.
    pub fn response(filter: FilterEnvoy) -> u32 {
        with_header(filter, RESPONSE_HEADER, b":status", |status| {
            status.map_or(0, <[u8]>::len)
        });
        CONTINUE
    }
}

/// Streams' boxes each worker thread keeps for its next streams, at most this many.
const MAX_SPARE_STATES: usize = 64;

thread_local! {
    /// Memory of ended streams' state, nothing in it (dropped when the stream ended).
    /// Boxes, not values: each is handed to Envoy as the stream's pointer.
    #[allow(clippy::vec_box)]
    static SPARE_STATES: std::cell::RefCell<Vec<Box<MaybeUninit<StreamState>>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Keeps an ended stream's memory for the worker's next stream (or frees it).
fn spare(room: Box<MaybeUninit<StreamState>>) {
    let _ = SPARE_STATES.try_with(|spares| {
        if let Ok(mut spares) = spares.try_borrow_mut() {
            if spares.len() < MAX_SPARE_STATES {
                spares.push(room);
            }
        }
    });
}

// ------------------------------------------------------------------- event hooks

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr().cast()
}

/// # Safety
/// Envoy passes its config pointer and two buffers valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoy,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ConfigModule {
    let config = envoy_bytes(config.ptr, config.length);
    let _ = name;
    guarded(std::ptr::null(), || {
        let (filter, origin) = match registry::global().filter(config, log) {
            Ok(f) => f,
            Err(e) => {
                log(
                    Level::Critical,
                    &format!("flowguard: invalid plugin configuration: {e}"),
                );
                return std::ptr::null();
            }
        };
        let counters = Counters {
            ids: std::array::from_fn(|i| {
                let (counter, name) = COUNTERS.get(i)?;
                // `COUNTERS` lists the counters in their declaration order.
                (*counter as usize == i).then(|| define_counter(config_envoy, name))?
            }),
            rules: Rule::ALL
                .iter()
                .filter_map(|r| Some((*r, define_counter(config_envoy, &rule_counter(*r))?)))
                .collect(),
            gauges: GAUGES
                .iter()
                .filter_map(|(g, name)| Some((*g, define_gauge(config_envoy, name)?)))
                .collect(),
            reported: AtomicU64::new(0),
        };
        log(
            Level::Info,
            &format!(
                "flowguard: configured (native module), mode {:?}",
                filter.settings.mode
            ),
        );
        if origin == Origin::Adopted {
            log(
                Level::Info,
                "flowguard: the same configuration as a live one: its model, sessions and telemetry carry on",
            );
        }
        if filter.settings.collector.is_some() {
            log(
                Level::Info,
                "flowguard: reporting to the collector from a background thread",
            );
        }
        let scheduler = scheduler(config_envoy, &filter);
        Box::into_raw(Box::new(Config {
            filter,
            counters: Arc::new(counters),
            scheduler,
        })) as ConfigModule
    })
}

/// # Safety
/// `config` is a pointer `on_http_filter_config_new` returned, destroyed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: ConfigModule) {
    if !config.is_null() {
        let config = Box::from_raw(config as *mut Config);
        guarded((), move || drop(config));
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    // No per-route configuration: refused.
    std::ptr::null()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
    _config: *const c_void,
) {
}

/// # Safety
/// `config` is a live pointer `on_http_filter_config_new` returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ConfigModule,
    _filter: FilterEnvoy,
) -> FilterModule {
    let Some(config) = (config as *const Config).as_ref() else {
        return std::ptr::null();
    };
    guarded(std::ptr::null(), || {
        let state = StreamState {
            stream: config.filter.stream(),
            counters: config.counters.clone(),
            asking: None,
            paused: false,
            body_left: None,
        };
        // Room the worker kept from an ended stream: no allocation per stream.
        let boxed = match SPARE_STATES.try_with(|s| s.borrow_mut().pop()) {
            Ok(Some(room)) => Box::write(room, state),
            _ => Box::new(state),
        };
        Box::into_raw(boxed) as FilterModule
    })
}

/// # Safety
/// Envoy passes the stream's pointers, valid during the hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: FilterEnvoy,
    module: FilterModule,
    _end_of_stream: bool,
) -> u32 {
    let Some(state) = stream_state(module) else {
        return CONTINUE;
    };
    if cfg!(feature = "floor-probe") {
        return floor::request(filter, state);
    }
    guarded(CONTINUE, || {
        let step = with_headers(filter, REQUEST_HEADER, |pairs| {
            #[cfg(feature = "crash-switch")]
            crash_switch(pairs);
            state.stream.request(pairs, || client_address(filter))
        });
        let step = match step {
            Ok(step) => step,
            Err(e) => {
                state.counters.count(filter, Counter::Requests);
                state.counters.count(filter, Counter::HostErrors);
                log(
                    Level::Debug,
                    &format!("flowguard: request: host error {e:?}"),
                );
                return CONTINUE;
            }
        };
        // Upstreams trust `x-flowguard-*` headers, so a client may never send one.
        for name in &step.strip {
            set_header(filter, name, None);
        }
        let mut step = step;
        if let Some(question) = step.ask.take() {
            if let Some(asking) = ask(filter, state, &question) {
                state.asking = Some(asking);
                state.paused = true;
                state.counters.count(filter, Counter::Requests);
                state.counters.count(filter, Counter::FleetAsked);
                return STOP_ALL_ITERATION_AND_WATERMARK;
            }
            // The question could not be asked: the mid-flow budget decides now.
            step = match state.stream.resume(None, || client_address(filter)) {
                Ok(step) => step,
                Err(e) => {
                    state.counters.count(filter, Counter::Requests);
                    state.counters.count(filter, Counter::HostErrors);
                    log(
                        Level::Debug,
                        &format!("flowguard: request: host error {e:?}"),
                    );
                    return CONTINUE;
                }
            };
        }
        if apply(filter, state, &step, true) {
            STOP_ITERATION
        } else {
            CONTINUE
        }
    })
}

/// Carries out a judged request step: its counters (`Requests` unless it was counted
/// when the request paused), and the local reply or the upstream headers. Whether it
/// answered with a local reply.
fn apply(filter: FilterEnvoy, state: &StreamState, step: &RequestStep, first: bool) -> bool {
    for counter in counted(step).filter(|c| first || *c != Counter::Requests) {
        state.counters.count(filter, counter);
    }
    for rule in fired(step) {
        state.counters.rule(filter, rule);
    }
    state.counters.gauges(filter, &state.stream.filter);
    if let Some(reply) = &step.reply {
        send_response(filter, reply.status, &reply.headers, &reply.body);
        return true;
    }
    for (name, value) in step.set.iter() {
        if is_own(name.as_bytes()) {
            // Every `x-flowguard-*` header the client sent was stripped.
            add_header(filter, name.as_bytes(), value.as_bytes());
        } else {
            set_header(filter, name.as_bytes(), Some(value.as_bytes()));
        }
    }
    false
}

/// What the scheduled hook did with a paused request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resumed {
    /// Nothing was waiting for this event (or its answer is not in yet).
    Nothing,
    /// Judged: it goes on upstream.
    Continue,
    /// Judged: answered with a local reply.
    Replied,
    /// A panic: the request must not stay paused.
    Failed,
}

/// The fleet's answer is in (or its deadline passed): the paused request is judged with
/// it, on its own worker thread, and continued or answered.
///
/// # Safety
/// Envoy passes the stream's pointers, valid during the hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    filter: FilterEnvoy,
    module: FilterModule,
    event_id: u64,
) {
    let Some(state) = stream_state(module) else {
        return;
    };
    if event_id != FLEET_ANSWER {
        return;
    }
    let resumed = guarded(Resumed::Failed, || {
        let Some(answer) = state.asking.as_ref().and_then(|a| a.answer.take()) else {
            return Resumed::Nothing;
        };
        state.asking = None; // revokes the waker, deletes the scheduler
        state.paused = false;
        let step = match state.stream.resume(answer, || client_address(filter)) {
            Ok(step) => step,
            Err(e) => {
                state.counters.count(filter, Counter::HostErrors);
                log(
                    Level::Debug,
                    &format!("flowguard: resume: host error {e:?}"),
                );
                return Resumed::Continue;
            }
        };
        if apply(filter, state, &step, false) {
            Resumed::Replied
        } else {
            Resumed::Continue
        }
    });
    let go_on = match resumed {
        Resumed::Nothing | Resumed::Replied => false,
        Resumed::Continue => true,
        Resumed::Failed => std::mem::take(&mut state.paused),
    };
    if go_on {
        state.asking = None;
        // SAFETY: `filter` is valid during the hook; the request is paused.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(filter) };
    }
}

/// # Safety
/// Envoy passes the stream's pointers, valid during the hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter: FilterEnvoy,
    module: FilterModule,
    end_of_stream: bool,
) -> u32 {
    let Some(state) = stream_state(module) else {
        return CONTINUE;
    };
    if cfg!(feature = "floor-probe") {
        return floor::response(filter);
    }
    guarded(CONTINUE, || {
        let settings = &state.stream.filter.settings;
        // Read no more of the answer's head than the exchange needs (often the status
        // alone, or nothing), as the Wasm filter does.
        let head = match state.stream.answer_needs(end_of_stream) {
            AnswerNeeds::Nothing => return CONTINUE,
            AnswerNeeds::Status => with_header(filter, RESPONSE_HEADER, b":status", |status| {
                ResponseHead::from_headers(
                    settings,
                    &[(&b":status"[..], status.unwrap_or_default())],
                )
            }),
            // A session cookie may be in any `set-cookie`: the whole map.
            AnswerNeeds::Headers if settings.session.reads_set_cookie() => {
                with_headers(filter, RESPONSE_HEADER, |pairs| {
                    ResponseHead::from_headers(settings, pairs)
                })
            }
            // Else the three headers the step reads, each one look-up in Envoy's map.
            AnswerNeeds::Headers => with_header(filter, RESPONSE_HEADER, b":status", |status| {
                with_header(filter, RESPONSE_HEADER, b"content-type", |kind| {
                    with_header(filter, RESPONSE_HEADER, b"content-length", |length| {
                        let found = [
                            (&b":status"[..], status),
                            (&b"content-type"[..], kind),
                            (&b"content-length"[..], length),
                        ];
                        let mut pairs: [(&[u8], &[u8]); 3] = [(&[], &[]); 3];
                        let mut n = 0;
                        for (name, value) in found {
                            if let (Some(value), Some(slot)) = (value, pairs.get_mut(n)) {
                                *slot = (name, value);
                                n += 1;
                            }
                        }
                        ResponseHead::from_headers(settings, pairs.get(..n).unwrap_or_default())
                    })
                })
            }),
        };
        state.body_left = head.content_length;
        let step = state
            .stream
            .response_head_of(&head, end_of_stream, || client_address(filter));
        count_response(state, filter, step);
        CONTINUE
    })
}

/// Whether `name` is one of flowguard's own headers (`x-flowguard-*`).
fn is_own(name: &[u8]) -> bool {
    name.get(..12)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"x-flowguard-"))
}

fn count_response(
    state: &StreamState,
    filter: FilterEnvoy,
    step: Result<ResponseStep, crate::table::TableError>,
) {
    match step {
        Ok(step) => {
            for counter in counted_response(&step) {
                state.counters.count(filter, counter);
            }
            if step.sensitive {
                state.counters.rule(filter, Rule::SensitiveData);
            }
        }
        Err(e) => {
            state.counters.count(filter, Counter::HostErrors);
            log(
                Level::Debug,
                &format!("flowguard: response: host error {e:?}"),
            );
        }
    }
}

/// # Safety
/// Envoy passes the stream's pointers, valid during the hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    filter: FilterEnvoy,
    module: FilterModule,
    end_of_stream: bool,
) -> u32 {
    let Some(state) = stream_state(module) else {
        return CONTINUE;
    };
    guarded(CONTINUE, || {
        if !state.stream.wants_body() {
            return CONTINUE;
        }
        with_chunks(filter, |chunks| {
            if chunks.is_empty() && end_of_stream {
                let step = state
                    .stream
                    .response_body(&[], true, || client_address(filter));
                count_response(state, filter, step);
            }
            let last = chunks.len().saturating_sub(1);
            for (i, bytes) in chunks.iter().enumerate() {
                // The answer's `content-length` reached: no byte follows, so this chunk
                // is the last one (the engine settles it now, not again on an empty
                // end-of-stream event).
                let left = state
                    .body_left
                    .map(|n| n.saturating_sub(bytes.len() as u64));
                state.body_left = left;
                let ends = (end_of_stream && i == last) || left == Some(0);
                let step = state
                    .stream
                    .response_body(bytes, ends, || client_address(filter));
                count_response(state, filter, step);
                if ends || !state.stream.wants_body() {
                    break;
                }
            }
        });
        CONTINUE
    })
}

/// # Safety
/// Envoy passes the stream's pointers, valid during the hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter: FilterEnvoy,
    module: FilterModule,
) {
    let Some(state) = stream_state(module) else {
        return;
    };
    guarded((), || {
        if !state.stream.unfinished() {
            return; // nothing waits for the end of the answer
        }
        let step = state.stream.finish(|| client_address(filter));
        count_response(state, filter, step);
    });
}

/// # Safety
/// `module` is a pointer `on_http_filter_new` returned, destroyed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: FilterModule) {
    let state = module as *mut StreamState;
    if !state.is_null() {
        // SAFETY: `state` came from `Box::into_raw` in `on_http_filter_new` and Envoy
        // destroys a stream once: it is dropped here in place (releasing its filter and
        // anything paused), then its memory, now uninitialised, is kept or freed.
        guarded((), || unsafe { std::ptr::drop_in_place(state) });
        let room = unsafe { Box::from_raw(state.cast::<MaybeUninit<StreamState>>()) };
        spare(room);
    }
}

// Hooks flowguard does not use: Envoy refuses a module without them.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter: FilterEnvoy,
    _module: FilterModule,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter: FilterEnvoy,
    _module: FilterModule,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter: FilterEnvoy,
    _module: FilterModule,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _filter: FilterEnvoy,
    _module: FilterModule,
    _response_code: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter: FilterEnvoy,
    _module: FilterModule,
    _callout_id: u64,
    _result: u32,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _body: *const EnvoyBuffer,
    _body_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter: FilterEnvoy,
    _module: FilterModule,
    _stream_id: u64,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter: FilterEnvoy,
    _module: FilterModule,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter: FilterEnvoy,
    _module: FilterModule,
    _stream_id: u64,
    _trailers: *const EnvoyHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter: FilterEnvoy,
    _module: FilterModule,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter: FilterEnvoy,
    _module: FilterModule,
    _stream_id: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter: FilterEnvoy,
    _module: FilterModule,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter: FilterEnvoy,
    _module: FilterModule,
) {
}

/// The filter's ticker (every `learning.tick_ms`) or the telemetry thread (counts for
/// Envoy, a new model's gauges) woke the main thread: the node is ticked if due, and the
/// counts and gauges reported through the configuration's own metrics.
///
/// # Safety
/// Envoy passes its config pointer and a live pointer `on_http_filter_config_new` returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: ConfigEnvoy,
    config: ConfigModule,
    _event_id: u64,
) {
    let Some(config) = (config as *const Config).as_ref() else {
        return;
    };
    guarded((), || {
        config.filter.tick_if_due(crate::now_ms());
        let ids = &config.counters;
        let counts = config
            .filter
            .pending()
            .map(|p| p.take())
            .unwrap_or_default();
        for (counter, n) in telemetry_counts(counts) {
            if let (Some(id), true) = (ids.id(counter), n > 0) {
                // SAFETY: `config_envoy` is valid during the hook.
                unsafe {
                    envoy_dynamic_module_callback_http_filter_config_increment_counter(
                        config_envoy,
                        id,
                        std::ptr::null_mut(),
                        0,
                        n,
                    );
                }
            }
        }
        let generation = config.filter.generation();
        if ids.reported.swap(generation, Ordering::Relaxed) != generation {
            for (gauge, value) in config.filter.gauges() {
                if let Some((_, id)) = ids.gauges.iter().find(|(g, _)| *g == gauge) {
                    // SAFETY: `config_envoy` is valid during the hook.
                    unsafe {
                        envoy_dynamic_module_callback_http_filter_config_set_gauge(
                            config_envoy,
                            *id,
                            std::ptr::null_mut(),
                            0,
                            value,
                        );
                    }
                }
            }
        }
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: ConfigEnvoy,
    _config: ConfigModule,
    _callout_id: u64,
    _result: u32,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _body: *const EnvoyBuffer,
    _body_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _config_envoy: ConfigEnvoy,
    _config: ConfigModule,
    _stream_id: u64,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _config_envoy: ConfigEnvoy,
    _config: ConfigModule,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _config_envoy: ConfigEnvoy,
    _config: ConfigModule,
    _stream_id: u64,
    _trailers: *const EnvoyHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _config_envoy: ConfigEnvoy,
    _config: ConfigModule,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _config_envoy: ConfigEnvoy,
    _config: ConfigModule,
    _stream_id: u64,
    _reason: u32,
) {
}
