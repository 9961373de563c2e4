//! The traffic generator: normal shop sessions and attack sessions, over real HTTP.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use ureq::Agent;

/// One answer, with what the tests and the demo look at.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// `x-flowguard-*` headers the upstream received (`x-upstream-flowguard`).
    pub upstream: String,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    /// The `set-cookie` header of the answer, if any.
    pub set_cookie: Option<String>,
}

impl Reply {
    /// The verdict the upstream saw in `x-flowguard-verdict`, if any.
    pub fn upstream_verdict(&self) -> Option<&str> {
        self.upstream
            .split(" | ")
            .find_map(|h| h.strip_prefix("x-flowguard-verdict="))
    }
}

/// An HTTP client of the proxy.
#[derive(Clone)]
pub struct Client {
    agent: Agent,
    base: String,
}

impl Client {
    /// A client reusing keep-alive connections to `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str) -> Client {
        Client::with_idle(base, 10)
    }

    /// A client that opens a new connection for every request.
    pub fn fresh_connections(base: &str) -> Client {
        Client::with_idle(base, 0)
    }

    fn with_idle(base: &str, idle: usize) -> Client {
        let agent = Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections(idle)
            .max_idle_connections_per_host(idle)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Client {
            agent,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// Sends one request with `headers`; transport errors come back as status 0.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Reply {
        let url = format!("{}{}", self.base, path);
        let result = match method {
            "GET" => {
                let mut req = self.agent.get(&url);
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.call()
            }
            _ => {
                let mut req = if method == "PUT" {
                    self.agent.put(&url)
                } else {
                    self.agent.post(&url)
                };
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                match body {
                    Some(b) => req.send_json(b),
                    None => req.send_empty(),
                }
            }
        };
        match result {
            Ok(mut resp) => {
                let header = |name: &str| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let upstream = header("x-upstream-flowguard").unwrap_or_default();
                let retry_after = header("retry-after");
                let content_type = header("content-type");
                let set_cookie = header("set-cookie");
                Reply {
                    status: resp.status().as_u16(),
                    body: resp.body_mut().read_to_string().unwrap_or_default(),
                    upstream,
                    retry_after,
                    content_type,
                    set_cookie,
                }
            }
            Err(e) => Reply {
                body: e.to_string(),
                ..Reply::default()
            },
        }
    }
}

/// One call of a session and its answer.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub reply: Reply,
}

/// A client session: a session cookie, as the shop's front end would hold.
pub struct Session<'c> {
    client: &'c Client,
    cookie: String,
    /// The client address header, for an Envoy that takes the address from it.
    address: Option<(&'static str, String)>,
    pub calls: Vec<Call>,
}

impl<'c> Session<'c> {
    pub fn new(client: &'c Client) -> Session<'c> {
        Session::with_id(client, &format!("s{:016x}", fastrand::u64(..)))
    }

    pub fn with_id(client: &'c Client, id: &str) -> Session<'c> {
        Session {
            client,
            cookie: format!("session={id}"),
            address: None,
            calls: Vec::new(),
        }
    }

    /// A new session whose requests say they come from `ip` in `header`.
    pub fn from_address(client: &'c Client, header: &'static str, ip: &str) -> Session<'c> {
        Session {
            address: Some((header, ip.to_owned())),
            ..Session::new(client)
        }
    }

    pub fn call(&mut self, method: &'static str, path: &str, body: Option<Value>) -> Reply {
        let mut headers = vec![("cookie", self.cookie.as_str())];
        if let Some((name, ip)) = &self.address {
            headers.push((name, ip));
        }
        let reply = self.client.send(method, path, &headers, body.as_ref());
        self.calls.push(Call {
            method,
            path: path.to_owned(),
            reply: reply.clone(),
        });
        reply
    }

    /// Logs in the way a web front end does: the answer sets a fresh session cookie (the
    /// shop's `/api/auth/session`), which this client uses from then on.
    pub fn cookie_login(&mut self) -> Reply {
        let reply = self.call(
            "POST",
            "/api/auth/session",
            Some(json!({"user": "alice", "password": "secret"})),
        );
        if let Some(c) = reply.set_cookie.as_deref() {
            self.cookie = c.split(';').next().unwrap_or(c).trim().to_owned();
        }
        reply
    }

    pub fn login(&mut self) -> Reply {
        self.call(
            "POST",
            "/api/login",
            Some(json!({"user": "alice", "password": "secret"})),
        )
    }

    pub fn menu(&mut self) -> Reply {
        self.call("GET", "/api/menu", None)
    }

    pub fn add_to_cart(&mut self, item: u32) -> Reply {
        self.call(
            "POST",
            "/api/cart/items",
            Some(json!({"item": item, "qty": 1})),
        )
    }

    /// Creates an order; its id, or 0 if the call was refused.
    pub fn create_order(&mut self) -> u64 {
        let reply = self.call("POST", "/api/orders", None);
        serde_json::from_str::<Value>(&reply.body)
            .ok()
            .and_then(|v| v.get("id")?.as_u64())
            .unwrap_or(0)
    }

    pub fn pay(&mut self, order: u64, card: &str) -> Reply {
        self.call(
            "POST",
            &format!("/api/orders/{order}/pay"),
            Some(json!({"card": card})),
        )
    }

    pub fn confirm(&mut self, order: u64) -> Reply {
        self.call("POST", &format!("/api/orders/{order}/confirm"), None)
    }

    pub fn order_status(&mut self, order: u64) -> Reply {
        self.call("GET", &format!("/api/orders/{order}"), None)
    }

    pub fn profile(&mut self, user: u32) -> Reply {
        self.call("GET", &format!("/api/users/{user}"), None)
    }

    /// Statuses of every call so far.
    pub fn statuses(&self) -> Vec<u16> {
        self.calls.iter().map(|c| c.reply.status).collect()
    }
}

pub const GOOD_CARD: &str = "4111111111111111";

/// A normal order: browse, fill the cart, pay (a declined card is retried), confirm.
/// One customer in ten mistypes the password first; one in six first looks up an order
/// of an earlier visit; one in six places a second order afterwards.
pub fn normal_order(s: &mut Session) -> Reply {
    if fastrand::u8(..10) == 0 {
        s.call(
            "POST",
            "/api/login",
            Some(json!({"user": "alice", "password": "wrong"})),
        );
    }
    s.login();
    if fastrand::u8(..6) == 0 {
        s.order_status(fastrand::u64(1..100));
    }
    let reply = one_order(s);
    if fastrand::u8(..6) == 0 {
        one_order(s);
    }
    reply
}

fn one_order(s: &mut Session) -> Reply {
    s.menu();
    for _ in 0..fastrand::usize(1..4) {
        s.add_to_cart(fastrand::u32(1..4));
    }
    if fastrand::bool() {
        s.call("GET", "/api/cart", None);
    }
    let order = s.create_order();
    if fastrand::u8(..4) == 0 {
        s.pay(order, crate::shop::DECLINED_CARD);
    }
    s.pay(order, GOOD_CARD);
    let reply = s.confirm(order);
    if fastrand::bool() {
        s.order_status(order);
        if fastrand::bool() {
            s.order_status(order);
        }
    }
    reply
}

/// A session that looks around and leaves.
pub fn browsing(s: &mut Session) {
    s.login();
    s.menu();
    if fastrand::bool() {
        s.add_to_cart(fastrand::u32(1..4));
    }
    if fastrand::bool() {
        s.profile(fastrand::u32(1..10_000));
    }
}

/// Plays `n` normal sessions: about one in four only browses.
pub fn play_normal(client: &Client, n: usize) {
    play_normal_as(n, |_| Session::new(client));
}

/// [`play_normal`], each customer from their own address `10.0.x.y` (`first` onwards)
/// in `header`, as behind a load balancer that says who the client is.
pub fn play_normal_from(client: &Client, n: usize, header: &'static str, first: usize) {
    play_normal_as(n, |i| {
        Session::from_address(client, header, &numbered_address(first + i))
    });
}

/// When dropped, raises the flag a background traffic thread polls: the traffic in a
/// thread scope stops however the scope ends (a failed assertion included: the scope
/// waits for its threads before the panic goes on).
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The `i`th customer address, `10.x.y.z`.
pub fn numbered_address(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
}

fn play_normal_as<'c>(n: usize, session: impl Fn(usize) -> Session<'c>) {
    for i in 0..n {
        let mut s = session(i);
        if i % 4 == 3 {
            browsing(&mut s);
        } else {
            normal_order(&mut s);
        }
    }
}

/// Pay once, confirm many: one honest order, then a second one confirmed unpaid (the
/// completed payment of the first must not unlock it). Returns the second confirm answer.
pub fn pay_once_confirm_many(s: &mut Session) -> Reply {
    s.login();
    s.menu();
    s.add_to_cart(1);
    let paid = s.create_order();
    s.pay(paid, GOOD_CARD);
    s.confirm(paid);
    s.add_to_cart(2);
    let unpaid = s.create_order();
    s.confirm(unpaid)
}

/// The pizza fraud: order and confirm without paying. Returns the confirm answer.
pub fn skip_payment(s: &mut Session) -> Reply {
    s.login();
    s.menu();
    s.add_to_cart(1);
    let order = s.create_order();
    s.confirm(order)
}

/// Pay with a declined card, then confirm anyway. Returns the confirm answer.
pub fn confirm_after_failed_payment(s: &mut Session) -> Reply {
    s.login();
    s.menu();
    s.add_to_cart(2);
    let order = s.create_order();
    s.pay(order, crate::shop::DECLINED_CARD);
    s.confirm(order)
}

/// One session calling one endpoint `n` times as fast as it can. Returns the statuses.
pub fn flood(s: &mut Session, n: usize) -> Vec<u16> {
    s.login();
    (0..n).map(|_| s.menu().status).collect()
}

/// A real customer who, after one normal order, walks order ids `1..=n` (broken
/// object-level authorisation, scraping). Returns the statuses of the walk.
pub fn enumerate_orders(s: &mut Session, n: u64) -> Vec<u16> {
    normal_order(s);
    (1..=n).map(|id| s.order_status(id).status).collect()
}

/// Credential stuffing: `n` login attempts, each from a fresh session cookie, all from
/// this client's address. Returns the statuses.
pub fn credential_stuffing(client: &Client, n: usize) -> Vec<u16> {
    credential_stuffing_as(n, || Session::new(client))
}

/// [`credential_stuffing`] from address `ip` in `header`.
pub fn credential_stuffing_from(
    client: &Client,
    n: usize,
    header: &'static str,
    ip: &str,
) -> Vec<u16> {
    credential_stuffing_as(n, || Session::from_address(client, header, ip))
}

fn credential_stuffing_as<'c>(n: usize, session: impl Fn() -> Session<'c>) -> Vec<u16> {
    (0..n)
        .map(|i| {
            let mut s = session();
            let body = json!({"user": format!("victim{i}"), "password": "wrong"});
            s.call("POST", "/api/login", Some(body)).status
        })
        .collect()
}
