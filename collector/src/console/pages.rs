//! The pages' bodies, from data the routes read: pure functions, tested without a server.

use super::decisions::{self, action_name, ACTIONS};
use super::graph;
use super::render::{ago, esc, table, time, url_part, verdict, Viewer};
use crate::replay::Report;
#[cfg(test)]
use crate::store::WorkerRow;
use crate::store::{AuditRow, EventRow, NodeRow, TemplateSeen};
use flowguard_engine::model::Model;
use flowguard_engine::policy::{Limit, Policy};
use flowguard_engine::rule::Rule;
use std::fmt::Write;

/// A node is called silent after this long without a batch.
pub const SILENT_MS: u64 = 120_000;

/// The version cell of a node or worker: the version it runs, flagged when the store
/// holds a newer one.
fn running(version: u64, newest: u64, node: &str, class: &str) -> String {
    let mut out = format!(
        r#"<b class="{class}" data-node="{}">{}</b>"#,
        esc(node),
        if version == 0 {
            "none".to_owned()
        } else {
            version.to_string()
        }
    );
    if version == 0 {
        out.push_str(" <span class=note>(learning: no model yet)</span>");
    }
    if version < newest {
        out.push_str(r#" <span class="block behind">policy not installed yet</span>"#);
    }
    out
}

/// The mode cell: as the proxy reported it ('-' from a proxy too old to say).
fn mode(mode: &str, node: &str, class: &str) -> String {
    let shown = if mode.is_empty() { "-" } else { mode };
    let style = match mode {
        "enforce" => "block",
        "monitor" => "flag",
        _ => "note",
    };
    format!(
        r#"<span class="{class} {style}" data-node="{}">{}</span>"#,
        esc(node),
        esc(shown)
    )
}

/// The fleet: every proxy that reported, the version and mode each runs, and what the
/// collector serves.
pub fn fleet(
    nodes: &[NodeRow],
    stats: (u64, u64, u64),
    served: Option<u64>,
    recent_s: u64,
    now_ms: u64,
) -> String {
    let mut out = String::new();
    let (events, dropped, newest) = stats;
    let behind = nodes
        .iter()
        .filter(|n| n.newest().is_some_and(|w| w.policy_version < newest))
        .count();
    let _ = write!(
        out,
        r#"<p>Proxies that reported: {} · {events} events stored · {dropped} events dropped by filters (as they reported) · the collector serves policy version <b id="served">{}</b> (newest stored: <b id="newest">{newest}</b>) · proxies behind it: <b id="behind">{behind}</b>.</p>"#,
        nodes.len(),
        served.map_or("none yet".to_owned(), |v| v.to_string())
    );
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let silent = now_ms.saturating_sub(n.last_ms) > SILENT_MS;
            let (version, mode_cell) = match n.newest() {
                Some(w) => (
                    running(w.policy_version, newest, &n.node, "node-version"),
                    mode(&w.mode, &n.node, "node-mode"),
                ),
                None => ("-".into(), "-".into()),
            };
            vec![
                format!("<b>{}</b>", esc(&n.node)),
                version,
                mode_cell,
                n.workers.to_string(),
                format!(
                    "{} ({})",
                    time(n.last_ms),
                    if silent {
                        format!(
                            r#"<span class="block">silent, {}</span>"#,
                            ago(now_ms, n.last_ms)
                        )
                    } else {
                        ago(now_ms, n.last_ms)
                    }
                ),
                format!("{:.1}", n.recent_events as f64 / recent_s.max(1) as f64),
                n.events.to_string(),
                if n.dropped > 0 {
                    format!(r#"<span class="block">{}</span>"#, n.dropped)
                } else {
                    "0".into()
                },
                n.batches.to_string(),
                time(n.first_ms),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "node",
            "policy version it runs",
            "mode",
            "workers reporting",
            "last report",
            &format!("events/s (last {recent_s} s)"),
            "events",
            "events dropped",
            "batches",
            "first report",
        ],
        &rows,
    ));
    out.push_str("<h2>Workers</h2>");
    let workers: Vec<Vec<String>> = nodes
        .iter()
        .flat_map(|n| {
            n.latest.iter().map(move |w| {
                vec![
                    esc(&n.node),
                    w.worker.to_string(),
                    running(w.policy_version, newest, &n.node, "worker-version"),
                    mode(&w.mode, &n.node, "worker-mode"),
                    format!("{} ({})", time(w.last_ms), ago(now_ms, w.last_ms)),
                ]
            })
        })
        .collect();
    out.push_str(&table(
        &[
            "node",
            "worker",
            "policy version it runs",
            "mode",
            "latest batch",
        ],
        &workers,
    ));
    let _ = write!(
        out,
        r#"<p class="note">Each worker says in every batch it sends the policy version its model runs (none while it is still learning) and its mode (learn, monitor or enforce); a node's are those of its latest batch. A worker sends a batch only when it has events, so an idle worker's row can be old. A proxy polls the collector and installs the version served (version {}) unless its own configuration pins a policy: one behind the newest stored version is marked <span class="block">policy not installed yet</span> (just after a new version, until its next poll and batch; if it stays, the proxy cannot reach the collector or pins its own policy). Its Envoy gauge <code>flowguard.policy.version</code> says the same.</p>"#,
        served.map_or("none".to_owned(), |v| v.to_string())
    );
    out
}

fn limit(l: Option<Limit>, window_s: u32, units: &str) -> String {
    l.map_or("-".to_owned(), |l| {
        format!(
            "<b>{}</b>/{window_s}s<br><span class=note>p50 {} · p90 {} · p99 {} · bound {} · from {} {units}</span>",
            l.limit, l.p50, l.p90, l.p99, l.bound, l.units
        )
    })
}

fn names(list: &[String]) -> String {
    if list.is_empty() {
        "-".into()
    } else {
        list.iter()
            .map(|p| format!("<code>{}</code>", esc(p)))
            .collect::<Vec<_>>()
            .join("<br>")
    }
}

fn endpoint_decisions(policy: &Policy, template: &str) -> String {
    match policy.decisions.endpoint(template) {
        Some(d) => format!("<code>{}</code>", esc(&decisions::shown(d))),
        None => "-".into(),
    }
}

/// The learned API: endpoints with their evidence, order rules, limits and decisions;
/// then what stored traffic shows beyond the policy.
pub fn api(policy: &Policy, model: Option<&Model>, seen: &[TemplateSeen], now_ms: u64) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<p>Policy version <b>{}</b>: {} endpoints learned from {} sessions and {} requests; limits per {} s window. <a href="/policy.json">policy JSON</a></p>"#,
        policy.version,
        policy.endpoints.len(),
        policy.learned_from.sessions,
        policy.learned_from.requests,
        policy.window_s
    );
    let rows: Vec<Vec<String>> = policy
        .endpoints
        .iter()
        .map(|e| {
            let evidence = e
                .evidence
                .as_ref()
                .map_or("-".to_owned(), |ev| esc(&ev.describe()));
            let mut flags = Vec::new();
            if e.entry {
                flags.push("entry");
            }
            if e.deprecated {
                flags.push("<span class=flag>deprecated</span>");
            }
            if e.open_transitions {
                flags.push("open transitions");
            }
            let address = if e.address_rate.is_some() || e.address_distinct_ids.is_some() {
                format!(
                    "rate {}<br>ids {}",
                    limit(e.address_rate, policy.window_s, "addresses"),
                    limit(e.address_distinct_ids, policy.window_s, "addresses")
                )
            } else {
                "-".into()
            };
            vec![
                format!(
                    r#"<code class="endpoint">{}</code><br><span class=note>{}</span>"#,
                    esc(&e.template),
                    flags.join(" · ")
                ),
                e.sessions.to_string(),
                evidence,
                names(&e.prerequisites),
                names(&e.bound_prerequisites),
                names(
                    &[
                        e.flag_prerequisites.clone(),
                        e.flag_bound_prerequisites
                            .iter()
                            .map(|p| format!("{p} (same object)"))
                            .collect(),
                    ]
                    .concat(),
                ),
                limit(e.rate, policy.window_s, "sessions"),
                limit(e.distinct_ids, policy.window_s, "sessions"),
                address,
                endpoint_decisions(policy, &e.template),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "endpoint",
            "sessions",
            "evidence",
            "prerequisites (session-wide, block)",
            "prerequisites (same object, block)",
            "flag tier",
            "rate / session",
            "distinct ids / session",
            "anonymous, per address",
            "operator decisions",
        ],
        &rows,
    ));
    out.push_str("<h2>Session-wide limits</h2>");
    out.push_str(&table(
        &["limit", "value"],
        &[
            vec![
                "requests per session (all endpoints)".into(),
                limit(policy.session_rate, policy.window_s, "sessions"),
            ],
            vec![
                "401/403 per session".into(),
                limit(policy.auth_failures, policy.window_s, "sessions"),
            ],
            vec![
                "401/403 per client address".into(),
                limit(policy.address_auth_failures, policy.window_s, "addresses"),
            ],
        ],
    ));
    let known = |t: &str| policy.endpoint(t).is_some();
    let deprecated: Vec<Vec<String>> = seen
        .iter()
        .filter(|(t, _, _)| {
            policy.endpoint(t).is_some_and(|e| e.deprecated)
                || (!known(t) && model.is_some_and(|m| m.matches_deprecated(t)))
        })
        .map(|(t, n, last)| {
            vec![
                format!("<code>{}</code>", esc(t)),
                n.to_string(),
                ago(now_ms, *last),
            ]
        })
        .collect();
    let unknown: Vec<Vec<String>> = seen
        .iter()
        .filter(|(t, _, _)| !known(t) && !model.is_some_and(|m| m.matches_deprecated(t)))
        .map(|(t, n, last)| {
            vec![
                format!(r#"<code class="unknown">{}</code>"#, esc(t)),
                n.to_string(),
                ago(now_ms, *last),
            ]
        })
        .collect();
    let _ = write!(
        out,
        "<h2>Deprecated endpoints seen in stored traffic ({})</h2>",
        deprecated.len()
    );
    out.push_str(&table(
        &["endpoint", "requests stored", "last seen"],
        &deprecated,
    ));
    let _ = write!(out, "<h2>Unknown endpoints seen in stored traffic ({})</h2><p class=note>Templates in stored events that the policy does not know (shadow APIs, or endpoints too new or too rare to learn).</p>", unknown.len());
    out.push_str(&table(
        &["endpoint", "requests stored", "last seen"],
        &unknown,
    ));
    out
}

/// The flow graph page.
pub fn graph_page(policy: &Policy) -> String {
    let drawn = graph::draw(policy);
    format!(
        r#"<p>Policy version {} · {} endpoints. <span class="block">Red</span>: prerequisites that block (dotted: pinned by an operator); <span class="flag">amber dashed</span>: the flag tier; grey: learned transitions (hover for counts). <a href="/graph.dot" download="flowguard.dot">DOT for Graphviz</a> · <a href="/policy.json">policy JSON</a></p><div class="graph">{}</div>"#,
        policy.version,
        policy.endpoints.len(),
        drawn.svg
    )
}

/// The session's last steps up to (and including) `at_ms`, oldest first, at most `n`.
pub fn last_steps(history: &[EventRow], at_ms: u64, n: usize) -> String {
    let mut steps: Vec<String> = history
        .iter()
        .filter(|e| e.time_ms <= at_ms)
        .take(n)
        .map(|e| format!("{} {}", esc(&e.template), e.status))
        .collect();
    steps.reverse();
    steps.join(" → ")
}

/// The recent blocks and flags, filtered; `histories`: each listed session's events.
pub fn events(
    rows: &[EventRow],
    histories: &std::collections::HashMap<u64, Vec<EventRow>>,
    templates: &[String],
    rule: &str,
    endpoint: &str,
) -> String {
    let mut out = String::from(
        r#"<form method="get" action="/events">Rule <select name="rule"><option value="">any</option>"#,
    );
    for r in Rule::ALL {
        let sel = if r.id() == rule { " selected" } else { "" };
        let _ = write!(out, r#"<option{sel}>{}</option>"#, r.id());
    }
    out.push_str(r#"</select> Endpoint <select name="endpoint"><option value="">any</option>"#);
    for t in templates {
        let sel = if t == endpoint { " selected" } else { "" };
        let _ = write!(out, r#"<option{sel} value="{0}">{0}</option>"#, esc(t));
    }
    out.push_str(r#"</select> <button>Filter</button></form>"#);
    out.push_str(&request_form(""));
    let _ = write!(
        out,
        r#"<p>{} blocks and flags (newest first, at most {}).</p>"#,
        rows.len(),
        crate::store::LIST_ROWS
    );
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|e| {
            let hex = format!("{:016x}", e.session);
            let steps = histories.get(&e.session).map_or_else(
                || format!(r#"<a href="/session/{hex}">see the session</a>"#),
                |h| last_steps(h, e.time_ms, 6),
            );
            vec![
                time(e.time_ms),
                verdict(e.verdict),
                e.rules
                    .split(',')
                    .map(|r| format!("<code>{}</code>", esc(r)))
                    .collect::<Vec<_>>()
                    .join(" "),
                format!("<code>{}</code>", esc(&e.template)),
                e.status.to_string(),
                format!(r#"<a class="session" href="/session/{hex}">{hex}</a>"#),
                steps,
                esc(&e.node),
                request_id(&e.request_id),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "time",
            "verdict",
            "rules",
            "endpoint",
            "status",
            "session",
            "last steps",
            "node",
            "x-request-id",
        ],
        &table_rows,
    ));
    out
}

/// One session: every stored event, newest first.
pub fn session(session: u64, history: &[EventRow]) -> String {
    let blocks = history.iter().filter(|e| e.verdict == 4).count();
    let flags = history.iter().filter(|e| e.verdict == 3).count();
    let mut out = format!(
        r#"<p>Session fingerprint <code>{session:016x}</code> (a keyed hash of the session id: never the id itself) · {} events stored · {blocks} blocked · {flags} flagged. Stored events are the sampled ones and those a rule fired on or a rule waits for.</p>"#,
        history.len()
    );
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|e| {
            vec![
                time(e.time_ms),
                format!("<code>{}</code>", esc(&e.template)),
                e.status.to_string(),
                verdict(e.verdict),
                esc(&e.rules),
                if e.ids == 0 {
                    "-".into()
                } else {
                    format!("{:x}", e.ids)
                },
                esc(&e.node),
                request_id(&e.request_id),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "time",
            "endpoint",
            "status",
            "verdict",
            "rules",
            "object (hash)",
            "node",
            "x-request-id",
        ],
        &rows,
    ));
    out
}

/// An event's `x-request-id` cell: the id, linked to its search ('-' when none).
pub fn request_id(id: &str) -> String {
    if id.is_empty() {
        "-".into()
    } else {
        format!(
            r#"<a class="request-id" href="/request?id={}"><code>{}</code></a>"#,
            url_part(id),
            esc(id)
        )
    }
}

/// The search by `x-request-id`: one field, an exact match.
pub fn request_form(id: &str) -> String {
    format!(
        r#"<form method="get" action="/request" id="request-search"><p>Find a request by its <code>x-request-id</code> (exact, as a customer quotes it from a blocked answer) <input name="id" id="request-input" maxlength="128" size="40" value="{}"> <button id="request-find">Find</button></p></form>"#,
        esc(id)
    )
}

/// What the search by `x-request-id` found: each event (normally one), its session linked.
pub fn request(id: &str, found: &[EventRow]) -> String {
    let mut out = request_form(id);
    if found.is_empty() {
        let _ = write!(
            out,
            r#"<p id="request-none">No stored event has x-request-id <code>{}</code>. The collector keeps it for requests a rule fired on (flagged or blocked), when the id was plain (letters, digits, '-' and '_', at most 128).</p>"#,
            esc(id)
        );
        return out;
    }
    let _ = write!(
        out,
        r#"<p id="request-found">{} stored event{} with x-request-id <code>{}</code>:</p>"#,
        found.len(),
        if found.len() == 1 { "" } else { "s" },
        esc(id)
    );
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|e| {
            let hex = format!("{:016x}", e.session);
            vec![
                time(e.time_ms),
                verdict(e.verdict),
                e.rules
                    .split(',')
                    .map(|r| format!("<code>{}</code>", esc(r)))
                    .collect::<Vec<_>>()
                    .join(" "),
                format!("<code>{}</code>", esc(&e.template)),
                e.status.to_string(),
                format!(r#"<a class="session" href="/session/{hex}">{hex}</a>"#),
                esc(&e.node),
                request_id(&e.request_id),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "time",
            "verdict",
            "rules",
            "endpoint",
            "status",
            "session (its page)",
            "node",
            "x-request-id",
        ],
        &rows,
    ));
    out
}

/// The what-if form: a window, rule actions to try, or a pasted policy.
pub fn whatif_form(viewer: &Viewer, window: &str, pasted: &str) -> String {
    let mut out = format!(
        r#"<form method="post" action="/whatif" id="whatif">{}<p>Replay stored traffic of the last <select name="window">"#,
        viewer.csrf_field()
    );
    for (v, name) in [
        ("hour", "hour"),
        ("day", "day"),
        ("all", "everything stored"),
    ] {
        let sel = if v == window { " selected" } else { "" };
        let _ = write!(out, r#"<option value="{v}"{sel}>{name}</option>"#);
    }
    out.push_str("</select> through a candidate policy: the newest with these rule actions,</p>");
    let mut rows = Vec::new();
    for r in Rule::ALL {
        let mut sel = format!(
            r#"<select name="rule:{}"><option value="">as decided now</option>"#,
            r.id()
        );
        for a in ACTIONS.map(action_name) {
            let _ = write!(sel, r#"<option value="{a}">{a}</option>"#);
        }
        sel.push_str("</select>");
        rows.push(vec![format!("<code>{}</code>", r.id()), sel]);
    }
    out.push_str(&table(&["rule", "action everywhere"], &rows));
    let _ = write!(
        out,
        r#"<p>or this policy JSON (replaces the above when given):</p><textarea name="policy" rows="6">{}</textarea><p><button id="run">Replay</button></p></form>"#,
        esc(pasted)
    );
    out
}

/// What the replay found, beside what the policy in force finds on the same traffic.
pub fn whatif_result(
    candidate: &Report,
    current: Option<&Report>,
    window: &str,
    version: u64,
) -> String {
    let mut out = format!(
        r#"<div class="done" id="verdict"><b>enforce would have blocked {} sessions</b> ({} requests) and flagged {} requests, of {} requests in {} sessions of the last {window}."#,
        candidate.blocked_sessions,
        candidate.blocked,
        candidate.flagged,
        candidate.requests,
        candidate.sessions
    );
    if let Some(c) = current {
        let _ = write!(out, " The policy in force (version {version}) blocks {} sessions ({} requests) and flags {} requests on the same traffic.", c.blocked_sessions, c.blocked, c.flagged);
    }
    out.push_str("</div>");
    let rules: Vec<Vec<String>> = Rule::ALL
        .iter()
        .filter_map(|r| {
            let n = candidate.by_rule.get(r.id())?;
            Some(vec![
                format!("<code>{}</code>", r.id()),
                n.to_string(),
                current
                    .and_then(|c| c.by_rule.get(r.id()))
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
            ])
        })
        .collect();
    out.push_str("<h2>Rules that fired</h2>");
    out.push_str(&table(&["rule", "candidate", "in force"], &rules));
    let _ = write!(
        out,
        "<h2>These sessions would have been blocked ({} listed)</h2>",
        candidate.blocked_list.len()
    );
    let rows: Vec<Vec<String>> = candidate
        .blocked_list
        .iter()
        .map(|(s, t, r)| {
            let hex = format!("{s:016x}");
            vec![
                format!(r#"<a href="/session/{hex}">{hex}</a>"#),
                format!("<code>{}</code>", esc(t)),
                esc(r),
            ]
        })
        .collect();
    out.push_str(&table(
        &["session", "first blocked request", "rules"],
        &rows,
    ));
    out
}

/// The decisions page: what is decided, the forms, and the audit trail.
pub fn decisions(
    policy: &Policy,
    configured: &flowguard_engine::config::RuleActions,
    viewer: &Viewer,
    audit: &[AuditRow],
    stored: Option<&str>,
) -> String {
    let mut out = String::new();
    if let Some(v) = stored {
        let _ = write!(
            out,
            r#"<p class="done" id="stored">Stored policy version <b>{}</b>: the fleet installs it at its next poll.</p>"#,
            esc(v)
        );
    }
    if !viewer.token_configured {
        out.push_str(r#"<p class="err">Decisions are refused: no console token is configured. Start <code>flowguard serve</code> with <code>--console-token</code> (or <code>FLOWGUARD_CONSOLE_TOKEN</code>) and log in.</p>"#);
    } else if viewer.who.is_none() {
        out.push_str(r#"<p class="err">Read-only: <a href="/login">log in</a> with the console token to make decisions.</p>"#);
    }
    let _ = write!(
        out,
        r#"<p>Policy version <b id="version">{}</b>. Each decision stores a new version with the policy's <code>decisions</code> updated (nothing learned changes); learning carries decisions into every later version. Decided now: <code id="decided">{}</code></p>"#,
        policy.version,
        esc(&decisions::shown(&policy.decisions))
    );
    let csrf = viewer.csrf_field();
    out.push_str("<h2>Rules, for every endpoint</h2><p class=note>\"As configured\": the collector's <code>--config</code>; a proxy's own plugin configuration may say otherwise, and a decision overrides both.</p>");
    let mut rows = Vec::new();
    for r in Rule::ALL {
        let now = policy.decisions.rules.get(r.id()).copied();
        let mut form = format!(
            r#"<form method="post" action="/decisions" class="inline" data-rule="{0}">{csrf}<input type="hidden" name="kind" value="rule"><input type="hidden" name="rule" value="{0}"><select name="action"><option value="default">as configured</option>"#,
            r.id()
        );
        for a in ACTIONS {
            let sel = if now == Some(a) { " selected" } else { "" };
            let a = action_name(a);
            let _ = write!(form, r#"<option value="{a}"{sel}>{a}</option>"#);
        }
        form.push_str("</select> <button>Decide</button></form>");
        rows.push(vec![
            format!("<code>{}</code>", r.id()),
            now.map_or_else(
                || format!("as configured: {}", action_name(configured.get(r))),
                |a| action_name(a).to_owned(),
            ),
            form,
        ]);
    }
    out.push_str(&table(&["rule", "decided", "set"], &rows));
    let options = |name: &str| {
        let mut s = format!(r#"<select name="{name}">"#);
        for e in &policy.endpoints {
            let _ = write!(s, r#"<option value="{0}">{0}</option>"#, esc(&e.template));
        }
        s.push_str("</select>");
        s
    };
    let mut rule_select = String::from(r#"<select name="rule">"#);
    for r in Rule::ALL {
        let _ = write!(rule_select, "<option>{}</option>", r.id());
    }
    rule_select.push_str("</select>");
    let _ = write!(
        out,
        r#"<h2>A rule on one endpoint</h2><form method="post" action="/decisions" id="endpoint-rule">{csrf}<input type="hidden" name="kind" value="rule">{} {rule_select} <select name="action"><option value="default">as decided for every endpoint</option><option>off</option><option>flag</option><option>block</option></select> <button>Decide</button></form>
<h2>Pin or forget a prerequisite</h2><form method="post" action="/decisions" id="prerequisite">{csrf}{} <select name="kind"><option value="pin">must follow (pin)</option><option value="unpin">unpin</option><option value="forget">need not follow (forget)</option><option value="unforget">stop forgetting</option></select> {} <button>Decide</button></form>
<h2>Loosen a rate limit</h2><form method="post" action="/decisions" id="limit">{csrf}<input type="hidden" name="kind" value="limit">{} at least <input name="limit" type="number" min="1" max="1000000" placeholder="as learned"> requests per session and window <button>Decide</button></form>"#,
        options("endpoint"),
        options("endpoint"),
        options("prerequisite"),
        options("endpoint"),
    );
    out.push_str("<h2>Audit trail</h2>");
    let rows: Vec<Vec<String>> = audit
        .iter()
        .map(|a| {
            vec![
                time(a.time_ms),
                esc(&a.who),
                a.version.to_string(),
                esc(&a.summary),
                format!(
                    "before: <code>{}</code><br>after: <code>{}</code><details><summary>whole policies</summary><pre>{}</pre><pre>{}</pre></details>",
                    esc(&audited(&a.before)),
                    esc(&audited(&a.after)),
                    esc(&a.before),
                    esc(&a.after)
                ),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "when",
            "who",
            "version",
            "decision",
            "decisions before → after",
        ],
        &rows,
    ));
    out
}

/// The decisions of an audited policy as shown, or why they cannot be read.
fn audited(policy_json: &str) -> String {
    decisions::of(policy_json).map_or_else(|e| e, |d| decisions::shown(&d))
}

/// The login form.
pub fn login(message: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(m) = message {
        let _ = write!(out, r#"<p class="err">{}</p>"#, esc(m));
    }
    out.push_str(r#"<form method="post" action="/login" id="login"><p>Your name (decisions are audited under it) <input name="who" id="who-input" maxlength="64" required></p><p>Console token <input name="token" id="token-input" type="password" required></p><p><button id="login-button">Log in</button></p></form><p class=note>The token is the one given to <code>flowguard serve --console-token</code> (or <code>FLOWGUARD_CONSOLE_TOKEN</code>).</p>"#);
    out
}

/// Where a page links a template for filtering.
pub fn events_link(template: &str) -> String {
    format!("/events?endpoint={}", url_part(template))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowguard_engine::policy::EndpointPolicy;
    use flowguard_engine::rule::Action;

    fn row(t: u64, template: &str, status: u16, verdict: i32) -> EventRow {
        EventRow {
            node: "edge<1>".into(),
            time_ms: t,
            session: 0xabc,
            template: template.into(),
            status,
            verdict,
            rules: if verdict == 4 {
                "order.missing_prerequisite".into()
            } else {
                String::new()
            },
            ids: 0,
            request_id: if verdict == 4 {
                "req-<9>".into()
            } else {
                String::new()
            },
        }
    }

    #[test]
    fn the_fleet_shows_each_nodes_version_and_mode_and_who_is_behind() {
        let worker = |worker: u64, last_ms: u64, policy_version: u64, mode: &str| WorkerRow {
            worker,
            last_ms,
            policy_version,
            mode: mode.into(),
        };
        let n = NodeRow {
            node: "<edge>".into(),
            workers: 2,
            batches: 5,
            first_ms: 0,
            last_ms: 1_000,
            events: 90,
            recent_events: 60,
            dropped: 3,
            latest: vec![worker(0, 900, 6, "monitor"), worker(1, 1_000, 7, "enforce")],
        };
        let old = NodeRow {
            node: "old".into(),
            latest: vec![worker(0, 1_000, 0, "")],
            ..n.clone()
        };
        let html = fleet(&[n, old], (90, 3, 7), Some(7), 60, 400_000);
        assert!(html.contains("&lt;edge&gt;") && !html.contains("<edge>"));
        assert!(html.contains("silent") && html.contains(">1.0<"));
        assert!(
            html.contains(r#"<b class="node-version" data-node="&lt;edge&gt;">7</b></td>"#),
            "the latest batch's version, not behind: {html}"
        );
        assert!(html
            .contains(r#"<span class="node-mode block" data-node="&lt;edge&gt;">enforce</span>"#));
        assert!(html.contains(r#"<b class="worker-version" data-node="&lt;edge&gt;">6</b> <span class="block behind">policy not installed yet</span>"#));
        assert!(html.contains(r#"<b class="node-version" data-node="old">none</b> <span class=note>(learning: no model yet)</span> <span class="block behind">policy not installed yet</span>"#));
        assert!(html.contains(r#"<span class="node-mode note" data-node="old">-</span>"#));
        assert!(html.contains(r#"proxies behind it: <b id="behind">1</b>"#));
        assert!(!html.contains("not known") && !html.contains("unavailable"));
    }

    #[test]
    fn request_ids_are_shown_linked_and_found() {
        let h = vec![row(30, "POST /c", 403, 4), row(20, "POST /b", 200, 2)];
        let listed = session(0xabc, &h);
        assert!(listed.contains(
            r#"<a class="request-id" href="/request?id=req-%3C9%3E"><code>req-&lt;9&gt;</code></a>"#
        ));
        assert!(listed.contains("<td>-</td>"), "none shown as -");
        let found = request("req-1", &h[..1]);
        assert!(found.contains(r#"id="request-found">1 stored event with"#));
        assert!(found.contains(r#"<a class="session" href="/session/0000000000000abc">"#));
        assert!(found.contains(r#"value="req-1""#), "the form keeps the id");
        assert!(request("req-2", &[]).contains(r#"id="request-none""#));
    }

    #[test]
    fn last_steps_end_at_the_event_oldest_first() {
        let h = vec![
            row(30, "POST /c", 403, 4),
            row(20, "POST /b", 200, 2),
            row(10, "GET /a", 200, 2),
        ];
        assert_eq!(last_steps(&h, 20, 5), "GET /a 200 → POST /b 200");
        assert_eq!(last_steps(&h, 30, 2), "POST /b 200 → POST /c 403");
        let html = events(
            &h[..1],
            &[(0xabc, h.clone())].into_iter().collect(),
            &["POST /c".into()],
            "",
            "POST /c",
        );
        assert!(html.contains("/session/0000000000000abc") && html.contains("req-&lt;9&gt;"));
        assert!(html.contains(r#"id="request-search""#) && !html.contains("unavailable"));
        assert!(html.contains(r#"<option selected value="POST /c">"#));
    }

    #[test]
    fn the_api_lists_unknown_templates_seen_and_the_decisions_form_escapes() {
        let mut p = Policy {
            version: 4,
            window_s: 10,
            endpoints: vec![EndpointPolicy {
                template: "GET /a".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let seen = vec![("GET /a".to_owned(), 5, 0), ("GET /<x>".to_owned(), 2, 0)];
        let html = api(&p, None, &seen, 0);
        assert!(html.contains(r#"<code class="unknown">GET /&lt;x&gt;</code>"#));
        assert!(html.contains("Unknown endpoints seen in stored traffic (1)"));
        let v = Viewer {
            who: None,
            csrf: None,
            token_configured: false,
        };
        p.decisions
            .rules
            .insert(Rule::RateSession.id().into(), Action::Off);
        let d = decisions(&p, &Default::default(), &v, &[], None);
        assert!(d.contains("no console token is configured"));
        assert!(d.contains(r#"<option value="off" selected>off</option>"#));
    }
}
