//! flowguard's wire messages: telemetry batches, policy distribution and fleet session
//! questions (`proto/flowguard/v1`). With the `grpc` feature, the tonic services too.
#![forbid(unsafe_code)]
#![allow(clippy::all, clippy::pedantic)] // generated code
#![cfg_attr(test, allow(clippy::unwrap_used))]

/// `flowguard.v1`.
pub mod v1 {
    // Generated from flowguard/v1/*.proto; tests/generated.rs keeps it current.
    include!("flowguard.v1.rs");
}

pub use prost::Message;

/// The wire form of the engine's telemetry event: every host reports it this way.
#[cfg(feature = "engine")]
impl From<flowguard_engine::telemetry::Event> for v1::Event {
    fn from(e: flowguard_engine::telemetry::Event) -> v1::Event {
        use flowguard_engine::verdict::Outcome;
        let verdict = match e.outcome {
            None => v1::Verdict::Learning,
            Some(Outcome::Allow) => v1::Verdict::Allow,
            Some(Outcome::Flag) => v1::Verdict::Flag,
            Some(Outcome::Block { .. }) => v1::Verdict::Block,
        };
        v1::Event {
            time_ms: e.time_ms,
            session: e.session,
            template: e.template,
            status: e.status.into(),
            verdict: verdict.into(),
            rules: e.rules.iter().map(|r| r.id().to_owned()).collect(),
            latency_us: e.latency_us,
            summary: e.summary,
            ids: e.ids.unwrap_or(0),
            weak_session: e.weak_session,
            request_id: e.request_id.unwrap_or_default(),
        }
    }
}

/// Full gRPC method paths, as Envoy's gRPC callout names them (service, method).
pub const TELEMETRY_SERVICE: &str = "flowguard.v1.Telemetry";
pub const REPORT_METHOD: &str = "Report";
pub const POLICIES_SERVICE: &str = "flowguard.v1.Policies";
pub const GET_POLICY_METHOD: &str = "GetPolicy";
pub const SESSIONS_SERVICE: &str = "flowguard.v1.Sessions";
pub const COMPLETED_METHOD: &str = "Completed";

/// `envoy.config.core.v3.GrpcService { envoy_grpc: { cluster_name } }`, serialized: how a
/// filter names the cluster of a gRPC callout. Named this way, Envoy checks the cluster
/// when the call starts and reports a missing one as gRPC status 14 in the callback,
/// rather than refusing the dispatch with a status the proxy-wasm SDK's wrapper would turn
/// into a panic. Hand-encoded: two nested length-delimited field 1s.
pub fn envoy_grpc_service(cluster: &str) -> Vec<u8> {
    let mut inner = Vec::with_capacity(cluster.len() + 6);
    prost::encoding::string::encode(1, &cluster.to_owned(), &mut inner);
    let mut out = Vec::with_capacity(inner.len() + 6);
    prost::encoding::bytes::encode(1, &inner, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct EnvoyGrpc {
        #[prost(string, tag = "1")]
        cluster_name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct GrpcService {
        #[prost(message, optional, tag = "1")]
        envoy_grpc: Option<EnvoyGrpc>,
    }

    #[test]
    fn grpc_service_names_the_cluster() {
        let bytes = envoy_grpc_service("outbound|50051||collector.flowguard.svc.cluster.local");
        let decoded = GrpcService::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            decoded.envoy_grpc.unwrap().cluster_name,
            "outbound|50051||collector.flowguard.svc.cluster.local"
        );
        assert!(
            std::str::from_utf8(&bytes).is_ok(),
            "short names stay ASCII (the SDK takes &str)"
        );
    }

    #[cfg(feature = "engine")]
    #[test]
    fn an_engine_event_keeps_everything_on_the_wire() {
        use flowguard_engine::rule::{Rule, RuleSet};
        use flowguard_engine::telemetry::Event;
        use flowguard_engine::verdict::Outcome;
        let mut rules = RuleSet::EMPTY;
        rules.insert(Rule::MissingPrerequisite);
        let event = Event {
            time_ms: 1,
            session: u64::MAX,
            template: "POST /api/orders/{id}/confirm".into(),
            status: 403,
            outcome: Some(Outcome::Block { status: 403 }),
            rules,
            latency_us: 12,
            summary: false,
            ids: Some(9),
            weak_session: true,
            prompt: false,
            request_id: Some("req-7".into()),
        };
        let wire = v1::Event::from(event.clone());
        assert_eq!(wire.verdict, i32::from(v1::Verdict::Block));
        assert_eq!(wire.rules, ["order.missing_prerequisite"]);
        assert_eq!((wire.ids, wire.request_id.as_str()), (9, "req-7"));
        let learning = v1::Event::from(Event {
            outcome: None,
            ids: None,
            request_id: None,
            ..event
        });
        assert_eq!(learning.verdict, i32::from(v1::Verdict::Learning));
        assert_eq!((learning.ids, learning.request_id.as_str()), (0, ""));
    }

    #[test]
    fn batches_round_trip_and_garbage_is_an_error() {
        let batch = v1::ReportRequest {
            node: "edge".into(),
            batch_id: 7,
            worker: 3,
            dropped: 2,
            events: vec![v1::Event {
                time_ms: 1,
                session: u64::MAX,
                template: "POST /api/orders/{id}/confirm".into(),
                status: 403,
                verdict: v1::Verdict::Block.into(),
                rules: vec!["order.missing_prerequisite".into()],
                latency_us: 12,
                summary: false,
                ids: 9,
                weak_session: true,
                request_id: "req-7".into(),
            }],
            policy_version: 4,
            mode: "enforce".into(),
        };
        assert_eq!(
            v1::ReportRequest::decode(batch.encode_to_vec().as_slice()).unwrap(),
            batch
        );
        assert!(v1::GetPolicyResponse::decode(&[0xff, 0xff, 0xff][..]).is_err());
    }
}
