//! Who may read and who may decide.
//!
//! Reading needs no credentials only when the console listens on loopback; anything else
//! needs a login with the configured token, and decisions always do (without a token
//! configured they are refused). A login is a random id in an `HttpOnly`,
//! `SameSite=Strict` cookie, with its own CSRF token that every form carries; every POST
//! is also refused unless its `Origin` (or, without one, its `Referer`) names the host it
//! was sent to.

use super::render::Viewer;
use axum::http::HeaderMap;
use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;

/// The login cookie's name.
pub const COOKIE: &str = "fg_console";
/// How long a login lasts.
pub const LOGIN_TTL_MS: u64 = 8 * 3600 * 1000;
/// Logins held at most (expired ones are dropped first).
const MAX_LOGINS: usize = 1024;

struct Login {
    who: String,
    csrf: String,
    expires_ms: u64,
}

pub struct Access {
    token: Option<String>,
    loopback: bool,
    logins: Mutex<HashMap<String, Login>>,
}

/// What a POST does: changes state (a decision, logging out), or computes only (a
/// what-if replay, which a read-only viewer on loopback may run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Post {
    Decide,
    Compute,
}

/// Random bytes from the kernel, as hex.
pub fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("no randomness for a login: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Equality whose time does not depend on where the first difference is.
pub fn constant_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The login id in the request's cookie, if any.
fn cookie_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE && !v.is_empty()).then(|| v.to_owned())
        })
}

/// The `host[:port]` of a URL (`scheme://host[:port]/...`).
fn authority(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|a| !a.is_empty())
}

/// Whether the request came from a page of this console: its `Origin` (or `Referer`)
/// names the `Host` it was sent to.
pub fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    let host = header(headers, "host").ok_or("refused: the request names no Host")?;
    let from = match header(headers, "origin").filter(|o| *o != "null") {
        Some(origin) => authority(origin),
        None => header(headers, "referer").and_then(authority),
    };
    match from {
        Some(a) if a.eq_ignore_ascii_case(host) => Ok(()),
        Some(a) => Err(format!(
            "refused: a form sent from {a} to {host} (cross-site request)"
        )),
        None => Err("refused: the request carries neither Origin nor Referer".into()),
    }
}

impl Access {
    /// `token`: the configured console token (empty counts as none); `loopback`: whether
    /// the console listens on a loopback address only.
    pub fn new(token: Option<String>, loopback: bool) -> Access {
        Access {
            token: token.filter(|t| !t.is_empty()),
            loopback,
            logins: Mutex::new(HashMap::new()),
        }
    }

    pub fn token_configured(&self) -> bool {
        self.token.is_some()
    }

    /// Who the request's cookie says is looking.
    pub fn viewer(&self, headers: &HeaderMap, now_ms: u64) -> Viewer {
        let mut v = Viewer {
            token_configured: self.token.is_some(),
            ..Viewer::default()
        };
        if let (Some(id), Ok(logins)) = (cookie_id(headers), self.logins.lock()) {
            if let Some(l) = logins.get(&id).filter(|l| l.expires_ms > now_ms) {
                v.who = Some(l.who.clone());
                v.csrf = Some(l.csrf.clone());
            }
        }
        v
    }

    /// Whether `viewer` may read the console. Anonymous reading on loopback also needs
    /// the request addressed to a loopback name: a page elsewhere whose name was made to
    /// resolve to 127.0.0.1 (DNS rebinding) reads nothing.
    pub fn may_read(&self, headers: &HeaderMap, viewer: &Viewer) -> Result<(), String> {
        if viewer.who.is_some() {
            Ok(())
        } else if self.loopback {
            let host = header(headers, "host").unwrap_or("");
            if is_loopback_host(host) {
                Ok(())
            } else {
                Err(format!("reading without a login answers requests to a loopback address only, not to {host:?}: log in with the console token"))
            }
        } else {
            Err(
                "this console listens beyond loopback: log in with the console token to read it"
                    .into(),
            )
        }
    }

    /// Logs in with `token` as `who`: the new login's id (the cookie's value).
    pub fn login(&self, token: &str, who: &str, now_ms: u64) -> Result<String, String> {
        let Some(expected) = &self.token else {
            return Err("no console token is configured (--console-token or FLOWGUARD_CONSOLE_TOKEN): there is nothing to log in with".into());
        };
        if !constant_eq(token, expected) {
            return Err("wrong token".into());
        }
        let who = who.trim();
        if who.is_empty() || who.len() > 64 || who.chars().any(char::is_control) {
            return Err(
                "give your name (1 to 64 characters): decisions are audited under it".into(),
            );
        }
        let id = random_hex(32)?;
        let csrf = random_hex(32)?;
        let mut logins = self.logins.lock().map_err(|_| "login table poisoned")?;
        logins.retain(|_, l| l.expires_ms > now_ms);
        if logins.len() >= MAX_LOGINS {
            return Err("too many open logins: try again later".into());
        }
        logins.insert(
            id.clone(),
            Login {
                who: who.to_owned(),
                csrf,
                expires_ms: now_ms + LOGIN_TTL_MS,
            },
        );
        Ok(id)
    }

    /// Ends the request's login.
    pub fn logout(&self, headers: &HeaderMap) {
        if let (Some(id), Ok(mut logins)) = (cookie_id(headers), self.logins.lock()) {
            logins.remove(&id);
        }
    }

    /// Whether a POST of `kind` by `viewer` with the form's `csrf` field may go on.
    pub fn check_post(
        &self,
        headers: &HeaderMap,
        viewer: &Viewer,
        csrf: Option<&str>,
        kind: Post,
    ) -> Result<(), String> {
        same_origin(headers)?;
        if kind == Post::Decide && self.token.is_none() {
            return Err("decisions are refused: no console token is configured (start `flowguard serve` with --console-token or FLOWGUARD_CONSOLE_TOKEN, then log in)".into());
        }
        match (&viewer.csrf, kind) {
            (Some(expected), _) => match csrf {
                Some(given) if constant_eq(given, expected) => Ok(()),
                _ => Err(
                    "refused: the form's CSRF token is missing or stale (reload the page)".into(),
                ),
            },
            (None, Post::Decide) => Err("log in with the console token to make decisions".into()),
            (None, Post::Compute) => self.may_read(headers, viewer),
        }
    }
}

/// Whether a `Host` header names this machine's loopback (`localhost`, `127.x.y.z`,
/// `[::1]`, with or without a port).
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The `Set-Cookie` value of a login.
pub fn login_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        LOGIN_TTL_MS / 1000
    )
}

/// The `Set-Cookie` value that ends a login.
pub fn logout_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                *k,
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
            );
        }
        h
    }

    #[test]
    fn reading_without_credentials_only_on_loopback() {
        let anyone = Viewer::default();
        let local = headers(&[("host", "127.0.0.1:8088")]);
        assert!(Access::new(None, true).may_read(&local, &anyone).is_ok());
        let rebound = headers(&[("host", "evil.example:8088")]);
        assert!(Access::new(None, true).may_read(&rebound, &anyone).is_err());
        assert!(Access::new(Some("t".into()), false)
            .may_read(&local, &anyone)
            .is_err());
        assert!(Access::new(None, false).may_read(&local, &anyone).is_err());
        for h in [
            "localhost",
            "localhost:1",
            "127.0.0.2:80",
            "[::1]:9",
            "[::1]",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["", "10.0.0.1:80", "localhost.evil.example", "[::2]:1"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn a_login_needs_the_token_and_a_name_and_sets_a_strict_cookie() {
        let a = Access::new(Some("s3cret".into()), false);
        assert_eq!(a.login("wrong", "ann", 0), Err("wrong token".into()));
        assert!(a.login("s3cret", " ", 0).is_err());
        let id = a.login("s3cret", "ann", 0).unwrap();
        let cookie = login_cookie(&id);
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        let h = headers(&[("cookie", &format!("other=1; {COOKIE}={id}"))]);
        let v = a.viewer(&h, 1);
        assert_eq!(v.who.as_deref(), Some("ann"));
        assert!(a.may_read(&h, &v).is_ok());
        assert!(a.viewer(&h, LOGIN_TTL_MS + 1).who.is_none(), "expired");
        a.logout(&h);
        assert!(a.viewer(&h, 1).who.is_none(), "logged out");
        assert!(
            Access::new(None, true).login("", "ann", 0).is_err(),
            "no token configured"
        );
    }

    #[test]
    fn a_post_needs_the_same_origin_the_csrf_token_and_for_decisions_a_login() {
        let a = Access::new(Some("s3cret".into()), true);
        let id = a.login("s3cret", "ann", 0).unwrap();
        let cookie = format!("{COOKIE}={id}");
        let ok = headers(&[
            ("host", "127.0.0.1:9000"),
            ("origin", "http://127.0.0.1:9000"),
            ("cookie", &cookie),
        ]);
        let v = a.viewer(&ok, 1);
        let csrf = v.csrf.clone().unwrap();
        assert!(a.check_post(&ok, &v, Some(&csrf), Post::Decide).is_ok());
        assert!(
            a.check_post(&ok, &v, Some("x"), Post::Decide).is_err(),
            "bad csrf"
        );
        assert!(
            a.check_post(&ok, &v, None, Post::Decide).is_err(),
            "no csrf"
        );
        let evil = headers(&[
            ("host", "127.0.0.1:9000"),
            ("origin", "http://evil.example"),
            ("cookie", &cookie),
        ]);
        assert!(a.check_post(&evil, &v, Some(&csrf), Post::Decide).is_err());
        let referer = headers(&[
            ("host", "127.0.0.1:9000"),
            ("referer", "http://127.0.0.1:9000/decisions?x=1"),
        ]);
        assert!(a
            .check_post(&referer, &v, Some(&csrf), Post::Decide)
            .is_ok());
        let neither = headers(&[("host", "127.0.0.1:9000")]);
        assert!(a
            .check_post(&neither, &v, Some(&csrf), Post::Decide)
            .is_err());
        let anyone = Viewer::default();
        assert!(
            a.check_post(&ok, &anyone, None, Post::Decide).is_err(),
            "not logged in"
        );
        assert!(
            a.check_post(&ok, &anyone, None, Post::Compute).is_ok(),
            "loopback what-if"
        );
        let no_token = Access::new(None, true);
        let e = no_token
            .check_post(&ok, &anyone, None, Post::Decide)
            .unwrap_err();
        assert!(e.contains("no console token is configured"), "{e}");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_eq("abc", "abc"));
        assert!(!constant_eq("abc", "abd") && !constant_eq("abc", "ab"));
        assert_eq!(random_hex(16).unwrap().len(), 32);
        assert_ne!(random_hex(16).unwrap(), random_hex(16).unwrap());
    }
}
