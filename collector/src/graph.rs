//! `flowguard policy graph`: the learned call graph as SVG. Endpoints are laid out in
//! columns by their distance from the session start; transitions are grey arrows labelled
//! with their counts; prerequisites are red dashed arrows.

use flowguard_engine::policy::{Policy, START};
use std::collections::{HashMap, VecDeque};
use std::fmt::Write;

const COL: f64 = 300.0;
const ROW: f64 = 70.0;
const BOX_W: f64 = 240.0;
const BOX_H: f64 = 36.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders `policy` as a standalone SVG document.
pub fn render(policy: &Policy) -> String {
    let names: Vec<&str> = std::iter::once(START)
        .chain(policy.endpoints.iter().map(|e| e.template.as_str()))
        .collect();
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    // Columns: breadth-first distance from the start over learned transitions.
    let mut depth = vec![usize::MAX; names.len()];
    depth[0] = 0;
    let mut queue = VecDeque::from([0usize]);
    while let Some(n) = queue.pop_front() {
        for t in policy
            .transitions
            .iter()
            .filter(|t| index.get(t.from.as_str()) == Some(&n))
        {
            if let Some(&to) = index.get(t.to.as_str()) {
                if depth[to] == usize::MAX {
                    depth[to] = depth[n] + 1;
                    queue.push_back(to);
                }
            }
        }
    }
    let max_depth = depth
        .iter()
        .filter(|d| **d != usize::MAX)
        .max()
        .copied()
        .unwrap_or(0);
    for d in depth.iter_mut().filter(|d| **d == usize::MAX) {
        *d = max_depth + 1; // never reached from the start
    }
    let mut rows = vec![0usize; max_depth + 2];
    let pos: Vec<(f64, f64)> = depth
        .iter()
        .map(|d| {
            let r = rows[*d];
            rows[*d] += 1;
            (40.0 + *d as f64 * COL, 60.0 + r as f64 * ROW)
        })
        .collect();
    let width = 80.0 + (max_depth + 2) as f64 * COL;
    let height = 120.0 + rows.iter().max().copied().unwrap_or(1) as f64 * ROW;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<defs>
<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#888"/></marker>
<marker id="req" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#c0392b"/></marker>
</defs>
<text x="40" y="30" font-size="16" font-weight="bold">flowguard policy version {} ({} sessions, {} requests)</text>"##,
        policy.version, policy.learned_from.sessions, policy.learned_from.requests
    );
    let edge = |svg: &mut String, a: usize, b: usize, style: &str, label: &str| {
        let (ax, ay) = pos[a];
        let (bx, by) = pos[b];
        let (x1, y1) = (ax + BOX_W, ay + BOX_H / 2.0);
        let (x2, y2) = if b == a {
            (ax + BOX_W, ay)
        } else {
            (bx, by + BOX_H / 2.0)
        };
        let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0 - 20.0);
        let _ = writeln!(
            svg,
            r#"<path d="M{x1},{y1} Q{cx},{cy} {x2},{y2}" fill="none" {style}/>"#
        );
        if !label.is_empty() {
            let _ = writeln!(
                svg,
                r##"<text x="{cx}" y="{}" fill="#555">{label}</text>"##,
                cy + 8.0
            );
        }
    };
    for t in &policy.transitions {
        if let (Some(&a), Some(&b)) = (index.get(t.from.as_str()), index.get(t.to.as_str())) {
            edge(
                &mut svg,
                a,
                b,
                r##"stroke="#aaa" marker-end="url(#arrow)""##,
                &t.count.to_string(),
            );
        }
    }
    // Only direct prerequisites: "confirm needs pay" says enough when pay needs the order.
    let requires = |t: &str| policy.endpoints.iter().find(|e| e.template == t);
    for e in &policy.endpoints {
        let implied = |p: &String| {
            e.all_prerequisites().any(|q| {
                q != p && requires(q).is_some_and(|qe| qe.all_prerequisites().any(|r| r == p))
            })
        };
        for p in e.all_prerequisites().filter(|p| !implied(p)) {
            if let (Some(&a), Some(&b)) = (index.get(p.as_str()), index.get(e.template.as_str())) {
                edge(
                    &mut svg,
                    a,
                    b,
                    r##"stroke="#c0392b" stroke-dasharray="6 4" stroke-width="1.5" marker-end="url(#req)""##,
                    "",
                );
            }
        }
    }
    for (i, name) in names.iter().enumerate() {
        let (x, y) = pos[i];
        let endpoint = policy.endpoints.iter().find(|e| e.template == *name);
        let guarded = endpoint.is_some_and(|e| e.all_prerequisites().next().is_some());
        let (fill, stroke) = match (i, guarded) {
            (0, _) => ("#eef", "#557"),
            (_, true) => ("#fdecea", "#c0392b"),
            _ => ("#f4f4f4", "#777"),
        };
        let label = if i == 0 {
            "session start".to_owned()
        } else {
            escape(name)
        };
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{fill}" stroke="{stroke}"/><text x="{}" y="{}">{label}</text>"#,
            x + 8.0,
            y + 22.0
        );
        if let Some(l) = endpoint.and_then(|e| e.rate) {
            let _ = writeln!(
                svg,
                r##"<text x="{}" y="{}" font-size="10" fill="#777">≤ {}/window (p99 {})</text>"##,
                x + 8.0,
                y + BOX_H + 11.0,
                l.limit,
                l.p99
            );
        }
    }
    let _ = writeln!(
        svg,
        r##"<text x="40" y="{}" fill="#c0392b">red dashed: must have succeeded earlier in the session (order.missing_prerequisite)</text>
<text x="40" y="{}" fill="#777">grey: learned transitions with their counts</text>
</svg>"##,
        height - 36.0,
        height - 18.0
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowguard_engine::policy::{EndpointPolicy, Transition};

    #[test]
    fn draws_every_endpoint_transition_and_prerequisite() {
        let p = Policy {
            version: 3,
            window_s: 10,
            endpoints: vec![
                EndpointPolicy {
                    template: "POST /pay".into(),
                    ..Default::default()
                },
                EndpointPolicy {
                    template: "POST /a&b<c>".into(),
                    prerequisites: vec!["POST /pay".into()],
                    ..Default::default()
                },
            ],
            transitions: vec![
                Transition {
                    from: START.into(),
                    to: "POST /pay".into(),
                    count: 7,
                },
                Transition {
                    from: "POST /pay".into(),
                    to: "POST /a&b<c>".into(),
                    count: 5,
                },
            ],
            ..Default::default()
        };
        let svg = render(&p);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("POST /a&amp;b&lt;c&gt;"), "escaped");
        assert_eq!(svg.matches("<rect").count(), 3);
        assert_eq!(svg.matches("stroke-dasharray").count(), 1);
        assert!(svg.contains(">7<") && svg.contains(">5<"));
    }
}
