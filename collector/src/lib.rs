//! The collector's parts, as a library so the `flowguard` binary and the fuzz targets
//! share them: stored telemetry, fleet learning, the gRPC services and the tools.
#![forbid(unsafe_code)]

pub mod access_log;
#[cfg(feature = "server")]
pub mod backend;
#[cfg(feature = "server")]
pub mod console;
pub mod fleet;
pub mod graph;
#[cfg(feature = "server")]
pub mod openapi;
#[cfg(feature = "server")]
pub mod pg;
pub mod replay;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod sessions;
pub mod store;
