//! The operator's console (`flowguard serve --console ADDR`): server-rendered pages over
//! the collector's store (fleet, learned API, flow graph, blocks and flags, sessions,
//! what-if replays) and the decisions that become policy versions, with their audit
//! trail. Off unless asked; same process and runtime as the gRPC services.

pub mod access;
pub mod decisions;
pub mod graph;
pub mod pages;
pub mod render;
pub mod server;

pub use server::{router, Console};
