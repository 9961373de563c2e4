//! Clients of the library API: readers as its front end would drive them, and attacks.

use crate::library::{returning_readers, BOOKS, DECLINED_CARD};
use crate::traffic::{Client, Reply};
use serde_json::{json, Value};

/// Where the test harness's Envoy takes the client address from.
pub const CLIENT_IP: &str = "x-client-ip";

/// The filter configuration for the library, as its operator would write it. Defaults
/// everywhere a user would leave them: the session sources (a cookie, a bearer token, the
/// client address as a weak fallback), the evidence a rule needs (0.98 at 0.99), the
/// identifier inference. Set: the learning volume, where the login answer hands out the
/// token (so a reader's flow continues from address to token), the retired prefix, and
/// how this API says "failed" in a 200 (its login and its card payments).
pub const CONFIG: &str = r#"{"mode":"enforce",
  "learning":{"min_sessions":380,"min_requests":2000,"tick_ms":100},
  "session":{"handover":{"json_field":"auth_token","templates":["POST /api/v2/users/login"]}},
  "endpoints":{"deprecated":["/api/v1/"],
    "failure":{"json":{"status":["fail","declined"]},"auth":["POST /api/v2/users/login"]}}}"#;

/// One reader: their own address, and the token once logged in.
pub struct Reader<'c> {
    client: &'c Client,
    ip: String,
    token: Option<String>,
    /// Every answer: (method, path, status, blocked by flowguard).
    pub calls: Vec<(String, String, u16, bool)>,
    /// Requests the upstream saw flagged (`x-flowguard-verdict: flag; ...`).
    pub flagged: usize,
}

impl<'c> Reader<'c> {
    pub fn new(client: &'c Client, ip: &str) -> Reader<'c> {
        Reader {
            client,
            ip: ip.to_owned(),
            token: None,
            calls: Vec::new(),
            flagged: 0,
        }
    }

    pub fn call(&mut self, method: &'static str, path: &str, body: Option<Value>) -> Reply {
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![(CLIENT_IP, self.ip.as_str())];
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        let reply = self.client.send(method, path, &headers, body.as_ref());
        let blocked = is_block(&reply);
        self.flagged += usize::from(
            reply
                .upstream_verdict()
                .is_some_and(|v| v.starts_with("flag")),
        );
        self.calls
            .push((method.to_owned(), path.to_owned(), reply.status, blocked));
        reply
    }

    /// Whether flowguard refused any of this reader's calls.
    pub fn was_blocked(&self) -> bool {
        self.calls.iter().any(|c| c.3)
    }

    pub fn register(&mut self, name: &str) -> Reply {
        self.call(
            "POST",
            "/api/v2/users/register",
            Some(json!({"username": name, "password": "secret"})),
        )
    }

    pub fn login(&mut self, name: &str, password: &str) -> Reply {
        let reply = self.call(
            "POST",
            "/api/v2/users/login",
            Some(json!({"username": name, "password": password})),
        );
        if let Some(t) = serde_json::from_str::<Value>(&reply.body)
            .ok()
            .and_then(|v| v["auth_token"].as_str().map(str::to_owned))
        {
            self.token = Some(t);
        }
        reply
    }

    /// Borrows a book; the loan id, or 0 if refused.
    pub fn borrow(&mut self, slug: &str) -> u64 {
        let reply = self.call("POST", "/api/v2/loans", Some(json!({"book": slug})));
        serde_json::from_str::<Value>(&reply.body)
            .ok()
            .and_then(|v| v["id"].as_u64())
            .unwrap_or(0)
    }

    pub fn deposit(&mut self, loan: u64, card: &str) -> Reply {
        let path = format!("/api/v2/loans/{loan}/deposit");
        self.call("POST", &path, Some(json!({"card": card})))
    }

    pub fn pickup(&mut self, loan: u64) -> Reply {
        self.call("POST", &format!("/api/v2/loans/{loan}/pickup"), None)
    }
}

/// flowguard's own refusal (not the API's 401/402/409): its JSON body.
pub fn is_block(reply: &Reply) -> bool {
    matches!(reply.status, 403 | 429) && reply.body.contains("request blocked")
}

/// A generator of reader names: first and last names, letters only, as people pick them.
pub fn new_name(rng: &mut fastrand::Rng) -> String {
    const FIRST: [&str; 16] = [
        "amelia", "bruno", "chiara", "dmitri", "elena", "farid", "greta", "hugo", "ines", "jonas",
        "kaito", "lena", "mateo", "nora", "oskar", "priya",
    ];
    const LAST: [&str; 16] = [
        "brook",
        "castell",
        "dunmore",
        "everly",
        "fairweather",
        "garrow",
        "holm",
        "iverson",
        "jansen",
        "kowal",
        "lindqvist",
        "moreau",
        "novak",
        "okafor",
        "pereira",
        "quill",
    ];
    let suffix: String = (0..3).map(|_| rng.lowercase()).collect();
    format!(
        "{}_{}_{suffix}",
        FIRST[rng.usize(..FIRST.len())],
        LAST[rng.usize(..LAST.len())]
    )
}

/// One normal reader's visit: a new reader registers (60 %), a returning one only logs
/// in; one in ten mistypes the password first. Then, each optional: the catalogue (70 %),
/// one to three books (60 %), their profile (50 %), a new e-mail (30 %); one to three
/// loans, each with a deposit (one card in ten declined, then another), picked up (80 %)
/// and returned (half of those); a look at a loan (40 %).
pub fn normal_visit(r: &mut Reader, rng: &mut fastrand::Rng) {
    let name = if rng.u8(..10) < 6 {
        let name = new_name(rng);
        r.register(&name);
        name
    } else {
        let readers = returning_readers();
        readers[rng.usize(..readers.len())].clone()
    };
    if rng.u8(..10) == 0 {
        r.login(&name, "wrong");
    }
    r.login(&name, "secret");
    if rng.u8(..10) < 7 {
        r.call("GET", "/api/v2/books", None);
    }
    if rng.u8(..10) < 6 {
        for _ in 0..rng.usize(1..4) {
            r.call(
                "GET",
                &format!("/api/v2/books/{}", BOOKS[rng.usize(..BOOKS.len())]),
                None,
            );
        }
    }
    if rng.bool() {
        r.call("GET", &format!("/api/v2/users/{name}"), None);
    }
    if rng.u8(..10) < 3 {
        r.call(
            "PUT",
            &format!("/api/v2/users/{name}/email"),
            Some(json!({"email": "new@mail.example"})),
        );
    }
    let mut last = 0;
    for _ in 0..rng.usize(1..4) {
        let loan = r.borrow(BOOKS[rng.usize(..BOOKS.len())]);
        if rng.u8(..10) == 0 {
            r.deposit(loan, DECLINED_CARD);
        }
        r.deposit(loan, "4111111111111111");
        if rng.u8(..10) < 8 {
            r.pickup(loan);
            if rng.bool() {
                r.call("POST", &format!("/api/v2/loans/{loan}/return"), None);
            }
        }
        last = loan;
    }
    if rng.u8(..10) < 4 {
        r.call("GET", &format!("/api/v2/loans/{last}"), None);
    }
}

/// A distinct client address for reader `i`.
pub fn address(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
}

/// The three shared addresses (a carrier's or an office's NAT) behind which a fifth of
/// all readers come, in learning and afterwards alike.
pub const NAT_ADDRESSES: [&str; 3] = ["192.0.2.1", "192.0.2.2", "192.0.2.3"];

/// Reader `i`'s client address: every fifth reader is behind one of [`NAT_ADDRESSES`].
pub fn customer_address(i: usize) -> String {
    if i.is_multiple_of(5) {
        NAT_ADDRESSES[(i / 5) % NAT_ADDRESSES.len()].to_owned()
    } else {
        address(i)
    }
}

/// The library's attacks; each returns the answers of its decisive calls.
pub mod attacks {
    use super::*;

    /// Picks a loan up without paying its deposit.
    pub fn pickup_without_deposit(r: &mut Reader, rng: &mut fastrand::Rng) -> Vec<Reply> {
        let name = new_name(rng);
        r.register(&name);
        r.login(&name, "secret");
        let loan = r.borrow(BOOKS[0]);
        vec![r.pickup(loan)]
    }

    /// Deposit once, pick up many: one loan paid and picked up honestly, then a second
    /// picked up without its deposit (the first deposit must not unlock it).
    pub fn deposit_once_pickup_many(r: &mut Reader, rng: &mut fastrand::Rng) -> Vec<Reply> {
        let name = new_name(rng);
        r.register(&name);
        r.login(&name, "secret");
        let paid = r.borrow(BOOKS[2]);
        r.deposit(paid, "4111111111111111");
        r.pickup(paid);
        let unpaid = r.borrow(BOOKS[3]);
        vec![r.pickup(unpaid)]
    }

    /// Pays with a declined card, then picks up anyway.
    pub fn pickup_after_declined_deposit(r: &mut Reader, rng: &mut fastrand::Rng) -> Vec<Reply> {
        let name = new_name(rng);
        r.register(&name);
        r.login(&name, "secret");
        let loan = r.borrow(BOOKS[1]);
        r.deposit(loan, DECLINED_CARD);
        vec![r.pickup(loan)]
    }

    /// A logged-in reader walks loan ids 1..=n (broken object-level authorisation).
    pub fn walk_loans(r: &mut Reader, n: u64) -> Vec<Reply> {
        r.login("reader_a", "secret");
        (1..=n)
            .map(|id| r.call("GET", &format!("/api/v2/loans/{id}"), None))
            .collect()
    }

    /// Scrapes the catalogue as fast as it can.
    pub fn flood_books(r: &mut Reader, n: usize) -> Vec<Reply> {
        r.login("reader_b", "secret");
        (0..n)
            .map(|_| r.call("GET", "/api/v2/books", None))
            .collect()
    }

    /// A login brute force from one address: `n` wrong passwords for one reader, at full
    /// speed (the library answers each with 200 `{"status": "fail"}`).
    pub fn brute_force(r: &mut Reader, n: usize) -> Vec<Reply> {
        (0..n)
            .map(|i| r.login("reader_a", &format!("guess-{i}")))
            .collect()
    }

    /// A brute force from a warmed address: first `accounts` throwaway accounts registered
    /// and logged in from it (each login's token is a session the address carries, to
    /// pass for a NAT and widen its anonymous share), then `n` wrong passwords for one
    /// reader without a token. Returns the brute force's answers.
    pub fn warmed_brute_force(client: &Client, ip: &str, accounts: usize, n: usize) -> Vec<Reply> {
        for i in 0..accounts {
            let mut throwaway = Reader::new(client, ip);
            throwaway.register(&format!("warm{i:04}"));
            throwaway.login(&format!("warm{i:04}"), "secret");
            throwaway.call("GET", "/api/v2/books", None);
        }
        brute_force(&mut Reader::new(client, ip), n)
    }

    /// A registration flood from one address: `n` new accounts.
    pub fn registration_flood(r: &mut Reader, n: usize) -> Vec<Reply> {
        (0..n).map(|i| r.register(&format!("bot{i:05}"))).collect()
    }

    /// Credential stuffing from one address: `n` logins of other readers' names.
    pub fn stuffing(r: &mut Reader, n: usize) -> Vec<Reply> {
        let readers = returning_readers();
        (0..n)
            .map(|i| r.login(&readers[i % readers.len()], "hunter2"))
            .collect()
    }
}
