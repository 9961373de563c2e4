//! flowguard's integration harness: the demo shop, the traffic generator, and helpers
//! that start a real Envoy with the real filter on free loopback ports.
#![forbid(unsafe_code)]

pub mod browser;
pub mod collector;
pub mod envoy;
pub mod lds;
pub mod library;
pub mod library_traffic;
pub mod native_envoy;
pub mod oci;
pub mod patience;
pub mod pki;
pub mod postgres;
pub mod shop;
pub mod shop_server;
pub mod traffic;
pub mod world;
