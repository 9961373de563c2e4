//! The demo shop: a small pizza-ordering API with the flaw flowguard exists for.
//!
//! `confirm` does not check that the order was paid: the shop trusts the client to call
//! its steps in order, as the real one did. Every `x-flowguard-*` header the shop
//! receives is echoed back in `x-upstream-flowguard`, so tests can see what reached it.
//! It also carries the other classic findings: a retired `/api/v1/` still answering, a
//! user listing that leaks e-mails and cards, and a forgotten internal export.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The card number the payment provider declines.
pub const DECLINED_CARD: &str = "4000000000000002";

#[derive(Default)]
struct Shop {
    next_id: AtomicU64,
    orders: Mutex<HashMap<u64, &'static str>>,
}

type S = State<Arc<Shop>>;

/// The shop's routes.
pub fn router() -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/api/login", post(login))
        .route("/api/auth/session", post(cookie_login))
        .route("/api/menu", get(menu))
        .route("/api/cart", get(|| async { Json(json!({"items": []})) }))
        .route(
            "/api/cart/items",
            post(|| async { (StatusCode::CREATED, Json(json!({"ok": true}))) }),
        )
        .route("/api/orders", post(create_order))
        .route("/api/orders/{id}", get(order_status))
        .route("/api/orders/{id}/pay", post(pay))
        .route("/api/orders/{id}/confirm", post(confirm))
        .route("/api/users/{id}", get(profile))
        .route("/api/users", get(list_users))
        .route("/api/v1/menu", get(menu))
        .route("/api/internal/export", get(export))
        .route("/api/catalog/{section}/items/{id}", get(catalog_item))
        .route("/api/reports/big", get(big_report))
        .layer(middleware::from_fn(echo_flowguard_headers))
        .with_state(Arc::new(Shop::default()))
}

/// Serves the shop on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router()).await
}

async fn echo_flowguard_headers(req: axum::extract::Request, next: Next) -> Response {
    let seen: Vec<String> = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-flowguard-"))
        .map(|(k, v)| format!("{}={}", k, v.to_str().unwrap_or("?")))
        .collect();
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&seen.join(" | ")) {
        resp.headers_mut().insert("x-upstream-flowguard", v);
    }
    resp
}

async fn login(body: Option<Json<Value>>) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    if body.get("password").and_then(Value::as_str) == Some("wrong") {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "bad credentials"})),
        )
            .into_response();
    }
    let user = body.get("user").and_then(Value::as_str).unwrap_or("guest");
    Json(json!({"user": user, "id": fastrand::u32(1..10_000)})).into_response()
}

/// A web login: the answer sets a fresh session cookie (the anonymous session's cookie is
/// replaced, as session-fixation defences do).
async fn cookie_login(body: Option<Json<Value>>) -> Response {
    let mut resp = login(body).await;
    if resp.status().is_success() {
        let cookie = format!("session=u{:016x}; Path=/; HttpOnly", fastrand::u64(..));
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().insert(axum::http::header::SET_COOKIE, v);
        }
    }
    resp
}

async fn menu() -> Json<Value> {
    Json(json!([
        {"id": 1, "name": "margherita", "price": 800},
        {"id": 2, "name": "diavola", "price": 950},
        {"id": 3, "name": "quattro formaggi", "price": 1050}
    ]))
}

async fn create_order(State(shop): S) -> Response {
    let id = shop.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    if let Ok(mut orders) = shop.orders.lock() {
        orders.insert(id, "created");
    }
    (StatusCode::CREATED, Json(json!({"id": id}))).into_response()
}

async fn pay(State(shop): S, Path(id): Path<u64>, body: Option<Json<Value>>) -> Response {
    let card = body
        .as_ref()
        .and_then(|Json(b)| b.get("card")?.as_str().map(str::to_owned));
    if card.as_deref() == Some(DECLINED_CARD) {
        return (
            StatusCode::PAYMENT_REQUIRED,
            Json(json!({"error": "card declined"})),
        )
            .into_response();
    }
    set_status(&shop, id, "paid");
    Json(json!({"id": id, "status": "paid"})).into_response()
}

/// The flaw: no check that the order was paid.
async fn confirm(State(shop): S, Path(id): Path<u64>) -> Response {
    set_status(&shop, id, "confirmed");
    Json(json!({"id": id, "status": "confirmed"})).into_response()
}

async fn order_status(State(shop): S, Path(id): Path<u64>) -> Response {
    let status = shop.orders.lock().ok().and_then(|o| o.get(&id).copied());
    match status {
        Some(s) => Json(json!({"id": id, "status": s})).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such order"})),
        )
            .into_response(),
    }
}

async fn profile(Path(id): Path<u64>, _headers: HeaderMap) -> Json<Value> {
    Json(json!({"id": id, "name": format!("user{id}"), "email": format!("user{id}@example.com")}))
}

/// A listing that leaks every user's e-mail and card: the sensitive-data finding.
async fn list_users() -> Json<Value> {
    Json(json!((1..=20)
        .map(|i| json!({
            "id": i,
            "name": format!("user{i}"),
            "email": format!("user{i}@example.com"),
            "card": "4111 1111 1111 1111",
        }))
        .collect::<Vec<_>>()))
}

/// A 5 MB JSON report with personal data at its end: too large for the body scanner.
async fn big_report() -> Response {
    let mut body = String::with_capacity(5 << 20);
    body.push_str("{\"rows\":[");
    while body.len() < 5 << 20 {
        body.push_str("{\"n\":1234567,\"v\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"},");
    }
    body.push_str("{\"email\":\"leak@example.com\"}]}");
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// A catalogue of many sections: the benchmark's wide API (60 endpoint templates).
async fn catalog_item(Path((section, id)): Path<(String, u64)>) -> Json<Value> {
    Json(json!({"section": section, "id": id, "price": 100 + id % 900}))
}

/// A forgotten internal endpoint nobody's front end calls: a shadow API.
async fn export() -> Json<Value> {
    Json(json!({"orders": [], "exported": true}))
}

fn set_status(shop: &Shop, id: u64, status: &'static str) {
    if let Ok(mut orders) = shop.orders.lock() {
        orders.insert(id, status);
    }
}
