//! A test's world: the demo shop, a real Envoy with flowguard in front of it, and a
//! client, after the filter has learned from normal traffic.

use crate::envoy::{Envoy, EnvoyConfig};
use crate::shop_server::ShopServer;
use crate::traffic::{self, Client};

pub struct World {
    pub envoy: Envoy,
    pub client: Client,
    pub shop: ShopServer,
}

impl World {
    /// Starts the shop and Envoy with `filter_json` on `concurrency` workers.
    pub fn start(filter_json: &str, concurrency: u32) -> World {
        let shop = ShopServer::start().expect("shop starts");
        let mut cfg = EnvoyConfig::new(filter_json, shop.addr);
        cfg.concurrency = concurrency;
        let envoy = Envoy::start(&cfg).unwrap_or_else(|e| panic!("Envoy starts: {e}"));
        let client = Client::new(&envoy.url);
        World {
            envoy,
            client,
            shop,
        }
    }

    /// Starts, plays `sessions` normal sessions and waits for the learned model.
    pub fn learned(filter_json: &str, concurrency: u32, sessions: usize) -> World {
        let world = World::start(filter_json, concurrency);
        traffic::play_normal(&world.client, sessions);
        world
            .envoy
            .wait_for_model()
            .unwrap_or_else(|e| panic!("{e}\n{}", world.envoy.log()));
        world
    }
}

/// A filter configuration that learns within a test's worth of traffic. Tests learn from
/// tens of sessions, so they ask for less evidence than the defaults (0.98 at 0.99, 228
/// sessions per prerequisite): 0.9 at 0.9 takes 22 sessions without a violation.
pub fn quick_learning(mode: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(",{extra}")
    };
    format!(
        r#"{{"mode":"{mode}","learning":{{"min_sessions":60,"min_requests":300,"min_support":5,"prerequisite_ratio":0.9,"confidence":0.9,"tick_ms":100}},
            "session":{{"capacity":4096}}{extra}}}"#
    )
}
