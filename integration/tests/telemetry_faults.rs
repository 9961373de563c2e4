//! Bad collectors must never disturb the filter: an unknown cluster, and policy answers
//! that are corrupt, oversized or lying about their version.

use flowguard_integration::envoy::{Envoy, EnvoyConfig};
use flowguard_integration::patience::eventually;
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{self, Client, Session};
use flowguard_proto::v1::policies_server::{Policies, PoliciesServer};
use flowguard_proto::v1::telemetry_server::{Telemetry, TelemetryServer};
use flowguard_proto::v1::{GetPolicyRequest, GetPolicyResponse, ReportRequest, ReportResponse};
use std::net::SocketAddr;
use tonic::{Request, Response, Status};

/// A real gRPC server whose policy answers are whatever a test wants.
#[derive(Clone)]
struct Liar {
    answer: GetPolicyResponse,
}

#[tonic::async_trait]
impl Policies for Liar {
    async fn get_policy(
        &self,
        _: Request<GetPolicyRequest>,
    ) -> Result<Response<GetPolicyResponse>, Status> {
        Ok(Response::new(self.answer.clone()))
    }
}

#[tonic::async_trait]
impl Telemetry for Liar {
    async fn report(&self, _: Request<ReportRequest>) -> Result<Response<ReportResponse>, Status> {
        Err(Status::unavailable("disk full"))
    }
}

fn serve(liar: Liar) -> (SocketAddr, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(PoliciesServer::new(liar.clone()).max_encoding_message_size(16 << 20))
            .add_service(TelemetryServer::new(liar))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr, rt)
}

const CONFIG: &str = r#"{"mode":"enforce","learning":{"min_sessions":40,"min_requests":200,"prerequisite_ratio":0.9,"confidence":0.9,"tick_ms":100},
    "collector":{"cluster":"flowguard_collector","sample_rate":1.0,"flush_interval_ms":100,"policy_interval_ms":200}}"#;

fn still_serving(envoy: &Envoy) {
    let client = Client::new(&envoy.url);
    traffic::play_normal(&client, 60);
    envoy
        .wait_for_model()
        .expect("the filter learned by itself");
    let mut attacker = Session::new(&client);
    assert_eq!(
        traffic::skip_payment(&mut attacker).status,
        403,
        "its own model still enforces"
    );
    assert!(!envoy.log().contains("panic"), "no panic in the VM");
}

#[test]
fn corrupt_oversized_and_lying_policies_are_refused_and_the_filter_carries_on() {
    let shop = ShopServer::start().expect("shop");
    let answers = [
        ("corrupt JSON", GetPolicyResponse { unchanged: false, version: 7, policy_json: "{\"version\":7,\"endpo".into() }),
        ("oversized", GetPolicyResponse { unchanged: false, version: 8, policy_json: "x".repeat(3 << 20) }),
        (
            "dangling prerequisite",
            GetPolicyResponse {
                unchanged: false,
                version: 9,
                policy_json: r#"{"version":9,"endpoints":[{"template":"GET /a","prerequisites":["GET /nowhere"]}]}"#.into(),
            },
        ),
        ("lying version", GetPolicyResponse { unchanged: false, version: 10, policy_json: r#"{"version":11,"endpoints":[]}"#.into() }),
    ];
    for (what, answer) in answers {
        let (addr, _rt) = serve(Liar { answer });
        let mut cfg = EnvoyConfig::new(CONFIG, shop.addr);
        cfg.collector = Some(addr);
        let envoy = Envoy::start(&cfg).expect("Envoy starts");
        eventually(what, || {
            (envoy.counter("flowguard.policy.refused") > 0).then_some(())
        })
        .unwrap_or_else(|e| panic!("{what}: {e}\n{}", envoy.log()));
        still_serving(&envoy);
        assert_eq!(
            envoy.counter("flowguard.policy.updates"),
            0,
            "{what} was never installed"
        );
        assert!(envoy.counter("flowguard.policy.version") < 7, "{what}");
        assert!(
            envoy.counter("flowguard.telemetry.failed") > 0,
            "unstored batches are counted as failed"
        );
    }
}

#[test]
fn an_unknown_collector_cluster_is_counted_not_fatal() {
    let shop = ShopServer::start().expect("shop");
    let json = CONFIG.replace("flowguard_collector", "no_such_cluster");
    let envoy = Envoy::start(&EnvoyConfig::new(&json, shop.addr)).expect("Envoy starts");
    still_serving(&envoy);
    eventually("failures counted", || {
        (envoy.counter("flowguard.telemetry.failed") > 0
            && envoy.counter("flowguard.policy.poll_failed") > 0)
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
}
