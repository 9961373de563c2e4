//! flowguard's wire messages: telemetry batches and policy distribution
//! (`proto/flowguard/v1`). With the `grpc` feature, the tonic services too.
#![forbid(unsafe_code)]
#![allow(clippy::all, clippy::pedantic)] // generated code

/// `flowguard.v1`.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/flowguard.v1.rs"));
}

pub use prost::Message;

/// Full gRPC method paths, as Envoy's gRPC callout names them (service, method).
pub const TELEMETRY_SERVICE: &str = "flowguard.v1.Telemetry";
pub const REPORT_METHOD: &str = "Report";
pub const POLICIES_SERVICE: &str = "flowguard.v1.Policies";
pub const GET_POLICY_METHOD: &str = "GetPolicy";
