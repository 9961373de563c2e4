//! The routes: each reads what its page needs from the backend, checks access, and
//! answers HTML (or a download). Bad input of any kind is an error page, never a panic.

use super::access::{self, Access, Post};
use super::decisions;
use super::pages;
use super::render::{esc, page, Viewer};
use crate::backend::Backend;
use crate::replay;
use crate::service::{now_ms, Current};
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use flowguard_engine::config::Settings;
use flowguard_engine::model::Model;
use flowguard_engine::policy::Policy;
use std::collections::HashMap;
use std::sync::Arc;

/// What the console serves from.
pub struct Console {
    pub backend: Backend,
    /// The policy the gRPC service serves: a decision replaces it at once.
    pub current: Current,
    /// The collector's settings (`--config`): the what-if replay runs with them.
    pub settings: Settings,
    pub access: Access,
}

type Shared = Arc<Console>;
type Params = Query<HashMap<String, String>>;

/// Sessions whose last steps the list of blocks and flags shows inline.
const HISTORIES: usize = 60;

/// The console's routes.
pub fn router(console: Shared) -> Router {
    Router::new()
        .route("/", get(fleet))
        .route("/api", get(api))
        .route("/graph", get(graph))
        .route("/graph.dot", get(graph_dot))
        .route("/policy.json", get(policy_json))
        .route("/events", get(events))
        .route("/session/{id}", get(session))
        .route("/request", get(request))
        .route("/whatif", get(whatif_form).post(whatif_run))
        .route("/decisions", get(decisions_page).post(decide))
        .route("/login", get(login_form).post(login))
        .route("/logout", axum::routing::post(logout))
        .fallback(not_found)
        .with_state(console)
}

fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, "content-security-policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'");
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "same-origin");
    set(h, "cache-control", "no-store");
    r
}

fn html(status: StatusCode, body: String) -> Response {
    secure(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
    )
}

fn error(status: StatusCode, viewer: &Viewer, message: &str) -> Response {
    html(
        status,
        page(
            "Error",
            "",
            viewer,
            &format!(r#"<p class="err" id="error">{}</p>"#, esc(message)),
        ),
    )
}

/// The viewer, if they may read; else the refusal.
fn reader(c: &Console, headers: &HeaderMap) -> Result<Viewer, Box<Response>> {
    let v = c.access.viewer(headers, now_ms());
    match c.access.may_read(headers, &v) {
        Ok(()) => Ok(v),
        Err(m) => Err(Box::new(secure(
            (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                page("Log in", "", &v, &pages::login(Some(&m))),
            )
                .into_response(),
        ))),
    }
}

fn failed(v: &Viewer, what: &str, e: impl std::fmt::Display) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        v,
        &format!("{what}: {e}"),
    )
}

/// The newest policy (its decisions included); `Ok(None)` before any.
async fn latest(c: &Console) -> Result<Option<Policy>, String> {
    let Some((_, json)) = c.backend.latest_row().await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    Policy::from_json(json.as_bytes())
        .map(Some)
        .map_err(|e| format!("the stored policy: {e}"))
}

async fn with_policy(c: &Console, v: &Viewer) -> Result<Policy, Box<Response>> {
    match latest(c).await {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(Box::new(html(
            StatusCode::OK,
            page(
                "No policy yet",
                "",
                v,
                r#"<p id="nopolicy">No policy has been learned yet: the collector learns one when enough traffic is stored (see <a href="/">Fleet</a>).</p>"#,
            ),
        ))),
        Err(e) => Err(Box::new(failed(v, "reading the policy", e))),
    }
}

async fn fleet(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let v = match reader(&c, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let now = now_ms();
    let recent_s = 60;
    let nodes = c.backend.nodes(now.saturating_sub(recent_s * 1000)).await;
    let stats = c.backend.stats().await;
    let served = c
        .current
        .read()
        .ok()
        .and_then(|c| c.as_ref().map(|(v, _)| *v));
    match (nodes, stats) {
        (Ok(nodes), Ok(stats)) => html(
            StatusCode::OK,
            page(
                "Fleet",
                "/",
                &v,
                &pages::fleet(&nodes, stats, served, recent_s, now),
            ),
        ),
        (Err(e), _) | (_, Err(e)) => failed(&v, "reading the store", e),
    }
}

async fn api(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let v = match reader(&c, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let policy = match with_policy(&c, &v).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let seen = match c.backend.templates_seen().await {
        Ok(s) => s,
        Err(e) => return failed(&v, "reading the store", e),
    };
    let model = Model::compile(&policy, &c.settings).ok();
    html(
        StatusCode::OK,
        page(
            "Learned API",
            "/api",
            &v,
            &pages::api(&policy, model.as_ref(), &seen, now_ms()),
        ),
    )
}

async fn graph(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let v = match reader(&c, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match with_policy(&c, &v).await {
        Ok(policy) => html(
            StatusCode::OK,
            page("Flow graph", "/graph", &v, &pages::graph_page(&policy)),
        ),
        Err(r) => *r,
    }
}

async fn graph_dot(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let v = match reader(&c, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match with_policy(&c, &v).await {
        Ok(policy) => secure(
            (
                [
                    (header::CONTENT_TYPE, "text/vnd.graphviz; charset=utf-8"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"flowguard.dot\"",
                    ),
                ],
                super::graph::dot(&policy),
            )
                .into_response(),
        ),
        Err(r) => *r,
    }
}

async fn policy_json(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let v = match reader(&c, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match with_policy(&c, &v).await {
        Ok(policy) => secure(
            (
                [(header::CONTENT_TYPE, "application/json")],
                policy.to_json_pretty(),
            )
                .into_response(),
        ),
        Err(r) => *r,
    }
}

async fn events(State(c): State<Shared>, headers: HeaderMap, Query(q): Params) -> Response {
    let v = match reader(&c, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let pick = |k: &str| q.get(k).map(|s| s.trim().to_owned()).unwrap_or_default();
    let (rule, endpoint) = (pick("rule"), pick("endpoint"));
    if rule.len() > 64 || endpoint.len() > 512 {
        return error(StatusCode::BAD_REQUEST, &v, "the filter is too long");
    }
    let rows = match c.backend.verdict_events(0, &endpoint, &rule).await {
        Ok(r) => r,
        Err(e) => return failed(&v, "reading the store", e),
    };
    let mut histories = HashMap::new();
    for e in &rows {
        if histories.len() >= HISTORIES {
            break;
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = histories.entry(e.session) {
            match c.backend.session_history(e.session).await {
                Ok(h) => {
                    slot.insert(h);
                }
                Err(err) => return failed(&v, "reading the store", err),
            }
        }
    }
    let mut templates: Vec<String> = match c.backend.templates_seen().await {
        Ok(s) => s.into_iter().map(|(t, _, _)| t).collect(),
        Err(e) => return failed(&v, "reading the store", e),
    };
    templates.sort();
    html(
        StatusCode::OK,
        page(
            "Recent blocks and flags",
            "/events",
            &v,
            &pages::events(&rows, &histories, &templates, &rule, &endpoint),
        ),
    )
}

async fn session(State(c): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let v = match reader(&c, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Ok(session) = u64::from_str_radix(id.trim(), 16) else {
        return error(
            StatusCode::BAD_REQUEST,
            &v,
            &format!("{id:?} is not a session fingerprint (16 hexadecimal digits)"),
        );
    };
    match c.backend.session_history(session).await {
        Ok(h) => html(
            StatusCode::OK,
            page(
                &format!("Session {session:016x}"),
                "/events",
                &v,
                &pages::session(session, &h),
            ),
        ),
        Err(e) => failed(&v, "reading the store", e),
    }
}

/// The search by `x-request-id`: `?id=` exactly (surrounding blanks aside).
async fn request(State(c): State<Shared>, headers: HeaderMap, Query(q): Params) -> Response {
    let v = match reader(&c, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let id = q.get("id").map_or("", |s| s.trim());
    let title = "Find a request";
    if id.is_empty() {
        return html(
            StatusCode::OK,
            page(title, "/events", &v, &pages::request_form("")),
        );
    }
    if !flowguard_engine::exchange::is_safe_id(id) {
        let shown: String = id.chars().take(140).collect();
        return html(
            StatusCode::BAD_REQUEST,
            page(
                title,
                "/events",
                &v,
                &format!(
                    r#"<p class="err" id="error">{}</p>{}"#,
                    esc(&format!("{shown:?} is not an x-request-id the collector stores: letters, digits, '-' and '_', at most 128 of them")),
                    pages::request_form("")
                ),
            ),
        );
    }
    match c.backend.request_events(id).await {
        Ok(found) => html(
            StatusCode::OK,
            page(title, "/events", &v, &pages::request(id, &found)),
        ),
        Err(e) => failed(&v, "reading the store", e),
    }
}

async fn whatif_form(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let v = match reader(&c, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    html(
        StatusCode::OK,
        page(
            "What-if",
            "/whatif",
            &v,
            &pages::whatif_form(&v, "hour", ""),
        ),
    )
}

/// The window's start for `window` (hour, day, all).
fn since(window: &str, now: u64) -> Result<u64, String> {
    match window {
        "hour" => Ok(now.saturating_sub(3_600_000)),
        "day" => Ok(now.saturating_sub(86_400_000)),
        "all" => Ok(0),
        w => Err(format!("unknown window {w:?}: hour, day or all")),
    }
}

fn replay_with(
    policy: &Policy,
    settings: &Settings,
    events: &[crate::store::StoredEvent],
) -> Result<replay::Report, String> {
    let model = Model::compile(policy, settings)
        .map_err(|e| format!("the engine cannot compile the candidate: {e}"))?;
    let mut obs: Vec<_> = events.iter().map(|e| e.observation.clone()).collect();
    Ok(replay::replay(&model, settings, &mut obs))
}

async fn whatif_run(
    State(c): State<Shared>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let v = c.access.viewer(&headers, now_ms());
    let Ok(Form(form)) = form else {
        return error(StatusCode::BAD_REQUEST, &v, "the form could not be read");
    };
    if let Err(m) = c.access.check_post(
        &headers,
        &v,
        form.get("csrf").map(String::as_str),
        Post::Compute,
    ) {
        return error(StatusCode::FORBIDDEN, &v, &m);
    }
    let window = form.get("window").map_or("hour", String::as_str).to_owned();
    let pasted = form
        .get("policy")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let show_error = |m: String| {
        html(
            StatusCode::BAD_REQUEST,
            page(
                "What-if",
                "/whatif",
                &v,
                &format!(
                    r#"<p class="err" id="error">{}</p>{}"#,
                    esc(&m),
                    pages::whatif_form(&v, &window, &pasted)
                ),
            ),
        )
    };
    let now = now_ms();
    let start = match since(&window, now) {
        Ok(s) => s,
        Err(m) => return show_error(m),
    };
    let latest = match latest(&c).await {
        Ok(l) => l,
        Err(e) => return failed(&v, "reading the policy", e),
    };
    let candidate = if pasted.is_empty() {
        let Some(stored) = &latest else {
            return show_error("no policy has been learned yet: paste one to replay".into());
        };
        let mut policy = stored.clone();
        for (key, action) in &form {
            let (Some(rule), false) = (key.strip_prefix("rule:"), action.is_empty()) else {
                continue;
            };
            let change = decisions::parse(
                &[
                    ("kind", "rule"),
                    ("rule", rule),
                    ("action", action.as_str()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            );
            if let Err(m) = change.and_then(|ch| decisions::apply_to(&mut policy, &ch)) {
                return show_error(m);
            }
        }
        match decisions::checked(policy) {
            Ok(p) => p,
            Err(m) => return show_error(m),
        }
    } else {
        if pasted.len() > 1 << 20 {
            return show_error("the pasted policy is over 1 MiB".into());
        }
        match Policy::from_json(pasted.as_bytes()) {
            Ok(p) => p,
            Err(e) => return show_error(format!("the pasted policy is refused: {e}")),
        }
    };
    let events = match c.backend.events_since(start).await {
        Ok(e) => e,
        Err(e) => return failed(&v, "reading the store", e),
    };
    let settings = c.settings.clone();
    let in_force = latest;
    let outcome = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let report = replay_with(&candidate, &settings, &events)?;
        let current = match &in_force {
            Some(p) => Some(replay_with(p, &settings, &events)?),
            None => None,
        };
        Ok((report, current, in_force.map_or(0, |p| p.version)))
    })
    .await;
    match outcome {
        Ok(Ok((report, current, version))) => html(
            StatusCode::OK,
            page(
                "What-if",
                "/whatif",
                &v,
                &format!(
                    "{}{}",
                    pages::whatif_result(&report, current.as_ref(), &window, version),
                    pages::whatif_form(&v, &window, &pasted)
                ),
            ),
        ),
        Ok(Err(m)) => show_error(m),
        Err(e) => failed(&v, "the replay", e),
    }
}

async fn decisions_page(State(c): State<Shared>, headers: HeaderMap, Query(q): Params) -> Response {
    let v = match reader(&c, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let policy = match with_policy(&c, &v).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let audit = match c.backend.audit(100).await {
        Ok(a) => a,
        Err(e) => return failed(&v, "reading the audit trail", e),
    };
    let stored = q
        .get("stored")
        .filter(|s| s.len() < 24 && s.bytes().all(|b| b.is_ascii_digit()));
    html(
        StatusCode::OK,
        page(
            "Decisions",
            "/decisions",
            &v,
            &pages::decisions(
                &policy,
                &c.settings.rules,
                &v,
                &audit,
                stored.map(String::as_str),
            ),
        ),
    )
}

async fn decide(
    State(c): State<Shared>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let v = c.access.viewer(&headers, now_ms());
    let Ok(Form(form)) = form else {
        return error(StatusCode::BAD_REQUEST, &v, "the form could not be read");
    };
    if let Err(m) = c.access.check_post(
        &headers,
        &v,
        form.get("csrf").map(String::as_str),
        Post::Decide,
    ) {
        return error(StatusCode::FORBIDDEN, &v, &m);
    }
    let change = match decisions::parse(&form) {
        Ok(ch) => ch,
        Err(m) => return error(StatusCode::BAD_REQUEST, &v, &m),
    };
    let who = v.who.clone().unwrap_or_default();
    let stored = c
        .backend
        .decide(&who, now_ms(), move |latest| {
            decisions::decide(latest, &change)
        })
        .await;
    match stored {
        Ok(Ok(d)) => {
            eprintln!(
                "flowguard console: {who} stored policy version {}: {}",
                d.version, d.summary
            );
            if let Ok(mut current) = c.current.write() {
                *current = Some((d.version, d.json));
            }
            secure(
                (
                    StatusCode::SEE_OTHER,
                    [(header::LOCATION, format!("/decisions?stored={}", d.version))],
                )
                    .into_response(),
            )
        }
        Ok(Err(m)) => error(StatusCode::BAD_REQUEST, &v, &m),
        Err(e) => failed(&v, "storing the decision", e),
    }
}

async fn login_form(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let v = c.access.viewer(&headers, now_ms());
    let note = (!c.access.token_configured()).then_some(
        "No console token is configured: there is nothing to log in with, and decisions are refused.",
    );
    html(StatusCode::OK, page("Log in", "", &v, &pages::login(note)))
}

async fn login(
    State(c): State<Shared>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let v = c.access.viewer(&headers, now_ms());
    let Ok(Form(form)) = form else {
        return error(StatusCode::BAD_REQUEST, &v, "the form could not be read");
    };
    if let Err(m) = access::same_origin(&headers) {
        return error(StatusCode::FORBIDDEN, &v, &m);
    }
    let get = |k: &str| form.get(k).map_or("", String::as_str);
    match c.access.login(get("token"), get("who"), now_ms()) {
        Ok(id) => secure(
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/".to_owned()),
                    (header::SET_COOKIE, access::login_cookie(&id)),
                ],
            )
                .into_response(),
        ),
        Err(m) => {
            // A wrong guess costs the guesser time.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            html(
                StatusCode::UNAUTHORIZED,
                page("Log in", "", &v, &pages::login(Some(&m))),
            )
        }
    }
}

async fn logout(
    State(c): State<Shared>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let v = c.access.viewer(&headers, now_ms());
    let csrf = form.ok().and_then(|Form(f)| f.get("csrf").cloned());
    if v.who.is_some() {
        if let Err(m) = c
            .access
            .check_post(&headers, &v, csrf.as_deref(), Post::Compute)
        {
            return error(StatusCode::FORBIDDEN, &v, &m);
        }
        c.access.logout(&headers);
    }
    secure(
        (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/".to_owned()),
                (header::SET_COOKIE, access::logout_cookie()),
            ],
        )
            .into_response(),
    )
}

async fn not_found(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let v = c.access.viewer(&headers, now_ms());
    error(StatusCode::NOT_FOUND, &v, "no such page")
}
