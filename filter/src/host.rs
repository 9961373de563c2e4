//! Every host call the filter makes, each returning a `Result`.
//!
//! The SDK's `hostcalls` panic on any status they do not expect (and its `get_map`
//! panics on a non-UTF-8 header value), and a panicked VM stays dead. So this module
//! declares the proxy-wasm ABI itself and turns every status into a value.
#![allow(unsafe_code)]

use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType};
use std::ptr::{null, null_mut};
use std::time::Duration;

/// A non-OK status from the host (proxy-wasm ABI numbering: 1 NotFound, 2 BadArgument,
/// 6 SerializationFailure, 8 CasMismatch, 9 InternalFailure, 10 Unimplemented).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostError(pub u32);

pub const CAS_MISMATCH: HostError = HostError(8);

pub type HostResult<T> = Result<T, HostError>;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer: u32,
        start: usize,
        max: usize,
        out_data: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, out_data: *mut *mut u8, out_size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        out_data: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        out_data: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        out_data: *mut *mut u8,
        out_size: *mut usize,
        out_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, out_id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_grpc_cancel(token: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
}

fn check(status: u32) -> HostResult<()> {
    match status {
        0 => Ok(()),
        other => Err(HostError(other)),
    }
}

/// Takes ownership of a buffer the host allocated through `proxy_on_memory_allocate`.
fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        return None;
    }
    // SAFETY: the host filled `size` bytes of a buffer it obtained from this module's
    // allocator (the SDK's `proxy_on_memory_allocate`, a `Vec<u8>` of that capacity).
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// Logs a message; a logging failure is ignored (there is nowhere else to report it).
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: pointer and length describe a live `&str`.
    let _ = unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> HostResult<u64> {
    let mut nanos = 0u64;
    // SAFETY: `nanos` is a valid out-pointer.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) })?;
    Ok(nanos / 1_000_000)
}

/// Wall-clock time in whole seconds since the Unix epoch.
pub fn now_secs() -> HostResult<u32> {
    Ok(u32::try_from(now_ms()? / 1000).unwrap_or(u32::MAX))
}

pub fn set_tick_period(period: Duration) -> HostResult<()> {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: plain value call.
    check(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

/// Bytes of a host buffer (plugin configuration, bodies).
pub fn buffer(kind: BufferType, start: usize, max: usize) -> HostResult<Option<Vec<u8>>> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: valid out-pointers.
    match unsafe { proxy_get_buffer_bytes(kind as u32, start, max, &mut data, &mut size) } {
        0 => Ok(owned(data, size)),
        1 => Ok(None),
        other => Err(HostError(other)),
    }
}

/// The serialized pairs of a header map (decode with `flowguard_engine::header_map`).
pub fn header_pairs(map: MapType) -> HostResult<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: valid out-pointers.
    check(unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) })?;
    Ok(owned(data, size).unwrap_or_default())
}

pub fn header(map: MapType, name: &str) -> HostResult<Option<Vec<u8>>> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: pointer/length of a live `&str`, valid out-pointers.
    match unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    } {
        0 => Ok(owned(data, size)),
        1 => Ok(None),
        other => Err(HostError(other)),
    }
}

/// Adds a header the map does not hold: cheaper for Envoy than a replace, which looks for
/// the name first (`bench --instructions`: 2,100 instructions less per header).
pub fn add_header(map: MapType, name: &str, value: &str) -> HostResult<()> {
    // SAFETY: pointers/lengths of live `&str`s.
    check(unsafe {
        proxy_add_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_header(map: MapType, name: &[u8]) -> HostResult<()> {
    // SAFETY: pointer/length of a live slice.
    check(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// A property such as `["source", "address"]`.
pub fn property(path: &[&str]) -> HostResult<Option<Vec<u8>>> {
    let joined = path.join("\0");
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: pointer/length of a live `String`, valid out-pointers.
    match unsafe { proxy_get_property(joined.as_ptr(), joined.len(), &mut data, &mut size) } {
        0 => Ok(owned(data, size)),
        1 => Ok(None),
        other => Err(HostError(other)),
    }
}

/// A shared-data value and its CAS token; `(None, 0)` when the key is absent.
pub fn shared_get(key: &str) -> HostResult<(Option<Vec<u8>>, u32)> {
    let (mut data, mut size, mut cas) = (null_mut(), 0usize, 0u32);
    // SAFETY: pointer/length of a live `&str`, valid out-pointers.
    match unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) }
    {
        0 => Ok((owned(data, size), cas)),
        1 => Ok((None, 0)),
        other => Err(HostError(other)),
    }
}

/// Sets a shared-data value if its CAS token is still `cas` (0: unconditionally).
pub fn shared_set(key: &str, value: &[u8], cas: u32) -> HostResult<()> {
    // SAFETY: pointers/lengths of live slices.
    check(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

/// Sends a local reply instead of forwarding the request.
pub fn send_response(status: u32, headers: &[(&str, &str)], body: &[u8]) -> HostResult<()> {
    let headers = flowguard_engine::header_map::encode_pairs(headers);
    let details = "flowguard_blocked";
    // SAFETY: pointers/lengths of live buffers.
    check(unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            if body.is_empty() {
                null()
            } else {
                body.as_ptr()
            },
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

pub fn define_metric(kind: MetricType, name: &str) -> HostResult<u32> {
    let mut id = 0u32;
    // SAFETY: pointer/length of a live `&str`, valid out-pointer.
    check(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Starts a gRPC callout to `upstream` (a serialized `GrpcService`); its answer comes to
/// the root context's `on_grpc_call_response` with the returned token.
///
/// The one host call not declared here: the SDK's wrapper also registers the token with
/// its dispatcher, which routes the answer to the root context, and that registry is not
/// public. Envoy answers this call with Ok, ParseFailure or InternalFailure only, all of
/// which the wrapper returns rather than panicking on.
pub fn dispatch_grpc_call(
    upstream: &str,
    service: &str,
    method: &str,
    metadata: Vec<(&str, &[u8])>,
    message: &[u8],
    timeout: Duration,
) -> HostResult<u32> {
    proxy_wasm::hostcalls::dispatch_grpc_call(
        upstream,
        service,
        method,
        metadata,
        Some(message),
        timeout,
    )
    .map_err(|status| HostError(status as u32))
}

/// Resumes a request paused in its headers phase (`Action::Pause`).
pub fn resume_request() -> HostResult<()> {
    // SAFETY: plain value call (0: the HTTP request stream).
    check(unsafe { proxy_continue_stream(0) })
}

/// Cancels a gRPC callout still in flight.
pub fn cancel_grpc_call(token: u32) -> HostResult<()> {
    // SAFETY: plain value call.
    check(unsafe { proxy_grpc_cancel(token) })
}

pub fn increment_metric(id: u32, by: i64) -> HostResult<()> {
    // SAFETY: plain value call.
    check(unsafe { proxy_increment_metric(id, by) })
}

pub fn record_metric(id: u32, value: u64) -> HostResult<()> {
    // SAFETY: plain value call.
    check(unsafe { proxy_record_metric(id, value) })
}

/// The engine's view of this host: Envoy's shared data and the downstream connection.
pub struct EnvoyHost;

impl flowguard_engine::store::Host for EnvoyHost {
    type Error = HostError;

    fn get(&mut self, key: &str) -> HostResult<(Option<Vec<u8>>, u32)> {
        shared_get(key)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> HostResult<bool> {
        match shared_set(key, value, cas) {
            Ok(()) => Ok(true),
            Err(CAS_MISMATCH) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn client_address(&mut self) -> HostResult<Option<Vec<u8>>> {
        property(&["source", "address"])
    }
}

/// A shared-data failure as a host status: every lost race is a CAS mismatch.
pub fn from_store(e: flowguard_engine::store::StoreError<HostError>) -> HostError {
    match e {
        flowguard_engine::store::StoreError::Host(e) => e,
        flowguard_engine::store::StoreError::Contended => CAS_MISMATCH,
    }
}
