//! Which session a request belongs to, through a real Envoy: a JWT's claim keeps a user's
//! refreshed tokens one session, and `Authorization: Token` is read as Bearer is.

use base64::Engine;
use flowguard_integration::envoy::{Envoy, EnvoyConfig};
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::Client;

fn jwt(payload: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.c2ln",
        b64.encode(r#"{"alg":"RS256"}"#),
        b64.encode(payload)
    )
}

/// The session id the upstream was told (`x-flowguard-session`).
fn session_seen(client: &Client, authorization: &str) -> String {
    let reply = client.send(
        "GET",
        "/api/menu",
        &[("authorization", authorization)],
        None,
    );
    reply
        .upstream
        .split(" | ")
        .find_map(|h| h.strip_prefix("x-flowguard-session="))
        .unwrap_or_else(|| panic!("no session header: {:?}", reply.upstream))
        .to_owned()
}

#[test]
fn refreshed_jwts_of_one_user_stay_one_session() {
    let shop = ShopServer::start().expect("shop");
    let config = r#"{"mode":"monitor","session":{"sources":[{"jwt_claim":"sub"},"address"]},
                     "learning":{"min_sessions":1000000}}"#;
    let envoy = Envoy::start(&EnvoyConfig::new(config, shop.addr)).expect("Envoy");
    let client = Client::new(&envoy.url);
    let first = session_seen(
        &client,
        &format!("Bearer {}", jwt(r#"{"sub":"alice","iat":1}"#)),
    );
    let refreshed = session_seen(
        &client,
        &format!("Token {}", jwt(r#"{"iat":2,"exp":9,"sub":"alice"}"#)),
    );
    let other = session_seen(
        &client,
        &format!("Bearer {}", jwt(r#"{"sub":"bob","iat":1}"#)),
    );
    assert_eq!(first, refreshed, "a refreshed token is the same session");
    assert_ne!(first, other, "another user is another session");
    // Not a JWT: the next source (the client address) names the session.
    let fallback = session_seen(&client, "Bearer opaque-token");
    assert_ne!(fallback, first);
}

#[test]
fn token_and_bearer_schemes_are_one_session() {
    let shop = ShopServer::start().expect("shop");
    let config = r#"{"mode":"monitor","session":{"sources":[{"authorization":["Bearer","Token"]}]},
                     "learning":{"min_sessions":1000000}}"#;
    let envoy = Envoy::start(&EnvoyConfig::new(config, shop.addr)).expect("Envoy");
    let client = Client::new(&envoy.url);
    assert_eq!(
        session_seen(&client, "Token abcdef0123456789"),
        session_seen(&client, "Bearer abcdef0123456789")
    );
}
