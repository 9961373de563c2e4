//! The second demo API, built unlike the shop on purpose: a lending library in the style
//! of small Flask and Express backends. Usernames and book slugs in paths, a variable
//! segment in the middle (`/users/{name}/email`), a version segment (`/api/v2`), register
//! then log in for a token answered in the body and sent back as a bearer token, optional
//! steps, several loans per session, and failures answered `200 {"status":"fail"}` (a
//! wrong password) or `200 {"status":"declined"}` (a card), as many such backends do. Its
//! flaws: `pickup` trusts the client to have paid
//! the deposit, any loan can be read by id, the retired `/api/v1/` still answers, and an
//! admin listing was left reachable.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The card the payment provider declines.
pub const DECLINED_CARD: &str = "4000000000000002";

/// The catalogue's slugs.
pub const BOOKS: [&str; 30] = [
    "the-silent-river",
    "a-winter-garden",
    "northern-lights",
    "paper-moons",
    "the-last-orchard",
    "salt-and-iron",
    "quiet-harbour",
    "glass-mountains",
    "the-cartographer",
    "wild-clover",
    "an-ember-sky",
    "the-long-road-home",
    "dust-and-roses",
    "hidden-valleys",
    "the-tin-soldier",
    "midnight-ferry",
    "copper-canyon",
    "the-lantern-keeper",
    "falling-leaves",
    "stone-circles",
    "the-blue-door",
    "river-of-stars",
    "broken-compass",
    "the-honey-thief",
    "winter-wolves",
    "the-clockmaker",
    "sea-of-reeds",
    "the-paper-crane",
    "amber-fields",
    "the-night-garden",
];

#[derive(Default)]
struct Library {
    users: Mutex<HashMap<String, String>>,
    tokens: Mutex<HashMap<String, String>>,
    next_loan: AtomicU64,
}

type S = State<Arc<Library>>;

/// The library's routes.
pub fn router() -> Router {
    let library = Arc::new(Library::default());
    if let Ok(mut users) = library.users.lock() {
        // Returning readers: accounts that exist before any test traffic.
        for name in returning_readers() {
            users.insert(name, "secret".to_owned());
        }
    }
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/api/v2/users/register", post(register))
        .route("/api/v2/users/login", post(login))
        .route("/api/v2/users/{name}", get(profile))
        .route("/api/v2/users/{name}/email", put(update_email))
        .route("/api/v2/books", get(books))
        .route("/api/v2/books/{slug}", get(book))
        .route("/api/v2/loans", post(borrow))
        .route("/api/v2/loans/{id}", get(loan))
        .route("/api/v2/loans/{id}/deposit", post(deposit))
        .route("/api/v2/loans/{id}/pickup", post(ok_loan))
        .route("/api/v2/loans/{id}/return", post(ok_loan))
        .route("/api/v1/books", get(books))
        .route("/api/v2/admin/users", get(admin_users))
        .with_state(library)
}

/// The readers who already have an account (`reader_a` … `reader_z`, `reader_aa` …).
pub fn returning_readers() -> Vec<String> {
    (0..200usize)
        .map(|i| {
            let a = (b'a' + (i % 26) as u8) as char;
            format!("reader_{}", a.to_string().repeat(1 + i / 26))
        })
        .collect()
}

async fn register(State(lib): S, Json(body): Json<Value>) -> Response {
    let name = body["username"].as_str().unwrap_or_default().to_owned();
    let password = body["password"].as_str().unwrap_or_default().to_owned();
    let Ok(mut users) = lib.users.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if name.is_empty() || users.contains_key(&name) {
        return (StatusCode::CONFLICT, Json(json!({"status": "fail"}))).into_response();
    }
    users.insert(name.clone(), password);
    (
        StatusCode::CREATED,
        Json(json!({"status": "success", "username": name})),
    )
        .into_response()
}

async fn login(State(lib): S, Json(body): Json<Value>) -> Response {
    let name = body["username"].as_str().unwrap_or_default();
    let password = body["password"].as_str().unwrap_or_default();
    let known = lib
        .users
        .lock()
        .map(|u| u.get(name).is_some_and(|p| p == password))
        .unwrap_or(false);
    if !known {
        // As many Flask backends do: a failed login is a 200 with an error in the body.
        return Json(json!({"status": "fail", "message": "Password is not correct."}))
            .into_response();
    }
    let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    if let Ok(mut tokens) = lib.tokens.lock() {
        tokens.insert(token.clone(), name.to_owned());
    }
    // The token twice: at the top (as Flask APIs do) and nested in the user (as
    // RealWorld's Conduit does), so a hand-over by either path can be tested.
    Json(json!({"status": "success", "auth_token": token, "user": {"username": name, "token": token}}))
        .into_response()
}

fn caller(lib: &Library, headers: &HeaderMap) -> Option<String> {
    let token = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    lib.tokens.lock().ok()?.get(token).cloned()
}

async fn profile(State(lib): S, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if caller(&lib, &headers).is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(json!({"username": name, "email": format!("{name}@mail.example")})).into_response()
}

async fn update_email(State(lib): S, Path(_name): Path<String>, headers: HeaderMap) -> Response {
    match caller(&lib, &headers) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn books() -> Json<Value> {
    Json(json!(BOOKS
        .iter()
        .map(|s| json!({"slug": s}))
        .collect::<Vec<_>>()))
}

async fn book(Path(slug): Path<String>) -> Response {
    if BOOKS.contains(&slug.as_str()) {
        Json(json!({"slug": slug, "available": true})).into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn borrow(State(lib): S, headers: HeaderMap) -> Response {
    if caller(&lib, &headers).is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let id = lib.next_loan.fetch_add(1, Ordering::Relaxed) + 1;
    (StatusCode::CREATED, Json(json!({"id": id}))).into_response()
}

async fn deposit(Path(id): Path<u64>, Json(body): Json<Value>) -> Response {
    if body["card"].as_str() == Some(DECLINED_CARD) {
        return (
            StatusCode::PAYMENT_REQUIRED,
            Json(json!({"status": "declined"})),
        )
            .into_response();
    }
    Json(json!({"id": id, "deposit": "paid"})).into_response()
}

/// The flaw: pickup and return trust the client to have paid the deposit.
async fn ok_loan(Path(id): Path<u64>) -> Json<Value> {
    Json(json!({"id": id, "status": "ok"}))
}

/// The other flaw: any loan can be read by its id.
async fn loan(Path(id): Path<u64>) -> Json<Value> {
    Json(json!({"id": id, "book": BOOKS[(id % 30) as usize]}))
}

async fn admin_users(State(lib): S) -> Json<Value> {
    let names: Vec<String> = lib
        .users
        .lock()
        .map(|u| u.keys().take(50).cloned().collect())
        .unwrap_or_default();
    Json(json!(names))
}
