//! Render helpers: escaping, times, and the page every view is drawn in (inline CSS, no
//! script, nothing fetched from elsewhere: the console works offline).

use std::fmt::Write;

/// Text made safe for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A query-string component, percent-encoded.
pub fn url_part(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Milliseconds since the epoch as `YYYY-MM-DD hh:mm:ss UTC`.
pub fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// How long before `now_ms` `ms` was, in words.
pub fn ago(now_ms: u64, ms: u64) -> String {
    let s = now_ms.saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// Who is looking, as the page header shows it.
#[derive(Clone, Debug, Default)]
pub struct Viewer {
    /// The name given at login, when logged in.
    pub who: Option<String>,
    /// The login's CSRF token, put in every form.
    pub csrf: Option<String>,
    /// Whether decisions can be made at all (a token is configured).
    pub token_configured: bool,
}

impl Viewer {
    /// The hidden CSRF field of a form (empty when not logged in).
    pub fn csrf_field(&self) -> String {
        self.csrf.as_deref().map_or(String::new(), |c| {
            format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(c))
        })
    }
}

const NAV: [(&str, &str); 6] = [
    ("/", "Fleet"),
    ("/api", "Learned API"),
    ("/graph", "Flow graph"),
    ("/events", "Blocks and flags"),
    ("/whatif", "What-if"),
    ("/decisions", "Decisions"),
];

const STYLE: &str = "body{font-family:sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f2d3d;color:#fff;padding:8px 16px;display:flex;gap:18px;align-items:center;flex-wrap:wrap}
header a{color:#cfe3ff;text-decoration:none}header a.on{color:#fff;font-weight:bold;border-bottom:2px solid #fff}
header .who{margin-left:auto;font-size:13px}header form{display:inline}
main{padding:12px 20px}h1{font-size:20px}h2{font-size:16px;margin-top:22px}
table{border-collapse:collapse;background:#fff;margin:6px 0 14px}td,th{border:1px solid #ddd;padding:4px 8px;font-size:13px;vertical-align:top;text-align:left}
th{background:#eef2f6}code,.mono{font-family:monospace}.note{color:#666;font-size:13px}
.block{color:#b03020;font-weight:bold}.flag{color:#9a6a00;font-weight:bold}.ok{color:#2c7a2c}
.err{background:#fdecea;border:1px solid #c0392b;padding:8px 12px}.done{background:#eaf7ea;border:1px solid #2c7a2c;padding:8px 12px}
form.inline{display:inline}input,select,textarea,button{font-size:13px}textarea{width:100%;font-family:monospace}
.graph{overflow:auto;background:#fff;border:1px solid #ddd}pre{white-space:pre-wrap;background:#fff;border:1px solid #ddd;padding:6px;font-size:12px}";

/// A whole page: header with the navigation and who is logged in, then `body`.
pub fn page(title: &str, active: &str, viewer: &Viewer, body: &str) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{} · flowguard console</title><style>{STYLE}</style></head><body><header><strong>flowguard</strong>"#,
        esc(title)
    );
    for (href, name) in NAV {
        let on = if href == active { r#" class="on""# } else { "" };
        let _ = write!(out, r#"<a href="{href}"{on}>{name}</a>"#);
    }
    match &viewer.who {
        Some(who) => {
            let _ = write!(
                out,
                r#"<span class="who">signed in as <b id="who">{}</b> <form method="post" action="/logout">{}<button>Log out</button></form></span>"#,
                esc(who),
                viewer.csrf_field()
            );
        }
        None => {
            let _ = write!(
                out,
                r#"<span class="who">read-only · <a href="/login">Log in</a></span>"#
            );
        }
    }
    let _ = write!(
        out,
        "</header><main><h1>{}</h1>{body}</main></body></html>",
        esc(title)
    );
    out
}

/// A table from a header row and rows of already-escaped HTML cells.
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr>");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{c}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    out
}

/// A verdict number as stored (proto `Verdict`), in words with its class.
pub fn verdict(v: i32) -> String {
    match v {
        4 => r#"<span class="block">block</span>"#.into(),
        3 => r#"<span class="flag">flag</span>"#.into(),
        2 => r#"<span class="ok">allow</span>"#.into(),
        1 => "learning".into(),
        _ => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<script>"x"&'y'</script>"#),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(url_part("POST /a/{id}"), "POST%20%2Fa%2F%7Bid%7D");
    }

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(time(1_796_215_367_000), "2026-12-02 12:42:47 UTC");
        assert_eq!(time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(ago(10_000, 5_000), "5 s ago");
    }

    #[test]
    fn a_page_escapes_who_and_carries_the_csrf_token() {
        let v = Viewer {
            who: Some("<b>eve</b>".into()),
            csrf: Some("abc".into()),
            token_configured: true,
        };
        let html = page("Fleet", "/", &v, "<p>x</p>");
        assert!(html.contains("&lt;b&gt;eve&lt;/b&gt;") && !html.contains("<b>eve</b>"));
        assert!(html.contains(r#"name="csrf" value="abc""#));
        assert!(!html.contains("<script"), "no script");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "nothing fetched"
        );
    }
}
