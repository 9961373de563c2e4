//! The flow graph drawn in the page, on the collector's one layout (`crate::graph`): each
//! box as wide as its label (in a monospace font, so a label's width is known here), so
//! no two labels overlap however many endpoints there are. Transition counts are in each
//! arrow's tooltip, not on the canvas. Prerequisites (learned, pinned by an operator) are
//! red; the flag tier amber.

use super::render::esc;
use crate::graph::{Layout, Spacing};
use flowguard_engine::policy::{Policy, START};
use std::collections::HashSet;
use std::fmt::Write;

/// Width of one character of the 12 px monospace labels, with a margin (DejaVu Sans
/// Mono and Liberation Mono are 7.2 px).
pub const CHAR_W: f64 = 7.6;
const SUB_CHAR_W: f64 = 6.4;
const PAD: f64 = 10.0;
const BOX_H: f64 = 28.0;
const ROW: f64 = 58.0;
const GAP: f64 = 90.0;
const TOP: f64 = 40.0;

/// A label's box on the canvas: (x, y, width, height).
pub type LabelBox = (f64, f64, f64, f64);

/// Where each text goes: the SVG and every label's box (for the overlap test).
pub struct Drawn {
    pub svg: String,
    pub labels: Vec<LabelBox>,
}

/// The prerequisites an operator pinned on `template`, and those they forgot.
fn pinned_forgotten<'a>(policy: &'a Policy, template: &str) -> (&'a [String], &'a [String]) {
    policy
        .decisions
        .endpoint(template)
        .map_or((&[], &[]), |d| (&d.pin, &d.forget))
}

/// Draws `policy` with its operator's decisions (pins drawn as prerequisites, forgotten
/// ones left out).
pub fn draw(policy: &Policy) -> Drawn {
    let label = |i: usize| -> String {
        match i.checked_sub(1).and_then(|k| policy.endpoints.get(k)) {
            Some(e) => e.template.clone(),
            None => "session start".to_owned(),
        }
    };
    let sub = |i: usize| -> Option<String> {
        let e = policy.endpoints.get(i.checked_sub(1)?)?;
        let rate = e
            .rate
            .map(|l| format!("≤{}/{}s p99 {}", l.limit, policy.window_s, l.p99));
        let ids = e.distinct_ids.map(|l| format!("ids ≤{}", l.limit));
        let parts: Vec<String> = [rate, ids].into_iter().flatten().collect();
        (!parts.is_empty()).then(|| parts.join(" · "))
    };
    let width_of = |i: usize| {
        let main = label(i).chars().count() as f64 * CHAR_W;
        let small = sub(i).map_or(0.0, |s| s.chars().count() as f64 * SUB_CHAR_W);
        main.max(small) + 2.0 * PAD
    };
    let layout = Layout::new(
        policy,
        width_of,
        Spacing {
            left: 20.0,
            top: TOP,
            gap: GAP,
            row: ROW,
        },
    );
    let (depth, col_w, pos) = (&layout.depth, &layout.col_w, &layout.pos);
    let width = layout.right() + 20.0;
    let height = TOP + layout.rows as f64 * ROW + 10.0;

    // Prerequisites as enforced: learned ones not forgotten, and pinned ones.
    let mut required: Vec<(usize, usize, &'static str)> = Vec::new();
    let mut guarded = HashSet::new();
    let endpoint = |t: &str| policy.endpoints.iter().find(|e| e.template == t);
    for (k, e) in policy.endpoints.iter().enumerate() {
        let (pinned, forgotten) = pinned_forgotten(policy, &e.template);
        // Only direct prerequisites: "confirm needs pay" says enough when pay needs the
        // order (the learned API page lists them all).
        let implied = |p: &String| {
            e.all_prerequisites().any(|q| {
                q != p && endpoint(q).is_some_and(|qe| qe.all_prerequisites().any(|r| r == p))
            })
        };
        let tiers = [
            (
                e.all_prerequisites()
                    .filter(|p| !implied(p))
                    .cloned()
                    .collect::<Vec<_>>(),
                "req",
            ),
            (pinned.to_vec(), "pin"),
            (
                e.flag_prerequisites
                    .iter()
                    .chain(&e.flag_bound_prerequisites)
                    .cloned()
                    .collect(),
                "flagreq",
            ),
        ];
        for (prereqs, class) in tiers {
            for p in prereqs.iter().filter(|p| !forgotten.contains(p)) {
                if let Some(a) = layout.node(p) {
                    required.push((a, k + 1, class));
                    if class != "flagreq" {
                        guarded.insert(k + 1);
                    }
                }
            }
        }
    }

    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" id="flow" width="{width:.0}" height="{height:.0}" font-family="monospace" font-size="12"><defs><marker id="a" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#999"/></marker><marker id="r" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#c0392b"/></marker><marker id="f" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#d68910"/></marker></defs>"##
    );
    let anchor = |a: usize, b: usize| {
        let (ax, ay) = pos[a];
        let (bx, by) = pos[b];
        let (aw, bw) = (col_w[depth[a]], col_w[depth[b]]);
        let _ = bw;
        let (x1, y1) = (ax + width_of(a).min(aw), ay + BOX_H / 2.0);
        let (x2, y2) = if depth[b] > depth[a] {
            (bx, by + BOX_H / 2.0)
        } else {
            // Back or same-column edges enter at the top of the box.
            (bx + 12.0, by)
        };
        (x1, y1, x2, y2)
    };
    for t in &policy.transitions {
        if let (Some(a), Some(b)) = (layout.node(&t.from), layout.node(&t.to)) {
            let (x1, y1, x2, y2) = anchor(a, b);
            let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0 - 16.0);
            let _ = write!(
                svg,
                r##"<path class="t" d="M{x1:.1},{y1:.1} Q{cx:.1},{cy:.1} {x2:.1},{y2:.1}" fill="none" stroke="#bbb" marker-end="url(#a)"><title>{} → {}: {} sessions</title></path>"##,
                esc(&label(a)),
                esc(&label(b)),
                t.count
            );
        }
    }
    for (a, b, class) in &required {
        let (x1, y1, x2, y2) = anchor(*a, *b);
        let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0 + 18.0);
        let (stroke, marker, dash, what) = match *class {
            "req" => ("#c0392b", "r", "", "must succeed first (blocks)"),
            "pin" => (
                "#c0392b",
                "r",
                r#" stroke-dasharray="2 3""#,
                "pinned by an operator (blocks)",
            ),
            _ => (
                "#d68910",
                "f",
                r#" stroke-dasharray="6 4""#,
                "some evidence (flags)",
            ),
        };
        let _ = write!(
            svg,
            r##"<path class="{class}" d="M{x1:.1},{y1:.1} Q{cx:.1},{cy:.1} {x2:.1},{y2:.1}" fill="none" stroke="{stroke}" stroke-width="1.6"{dash} marker-end="url(#{marker})"><title>{} before {}: {what}</title></path>"##,
            esc(&label(*a)),
            esc(&label(*b))
        );
    }
    let mut labels = Vec::new();
    for (i, &(x, y)) in pos.iter().enumerate() {
        let w = width_of(i);
        let (fill, stroke) = match (i, guarded.contains(&i)) {
            (0, _) => ("#eef", "#557"),
            (_, true) => ("#fdecea", "#c0392b"),
            _ => ("#fff", "#888"),
        };
        let text = label(i);
        let deprecated = i > 0 && policy.endpoints.get(i - 1).is_some_and(|e| e.deprecated);
        let _ = write!(
            svg,
            r#"<g class="node"><rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{BOX_H}" rx="5" fill="{fill}" stroke="{stroke}"{}/><text class="label" x="{:.1}" y="{:.1}">{}</text>"#,
            if deprecated {
                r#" stroke-dasharray="3 2""#
            } else {
                ""
            },
            x + PAD,
            y + 18.0,
            esc(&text)
        );
        labels.push((x + PAD, y + 6.0, text.chars().count() as f64 * CHAR_W, 14.0));
        if let Some(s) = sub(i) {
            let _ = write!(
                svg,
                r##"<text class="label sub" x="{:.1}" y="{:.1}" font-size="10" fill="#666">{}</text>"##,
                x + PAD,
                y + BOX_H + 12.0,
                esc(&s)
            );
            labels.push((
                x + PAD,
                y + BOX_H + 3.0,
                s.chars().count() as f64 * SUB_CHAR_W,
                12.0,
            ));
        }
        svg.push_str("</g>");
    }
    svg.push_str("</svg>");
    Drawn { svg, labels }
}

/// Whether two boxes overlap (touching is not overlapping).
pub fn intersect(a: &LabelBox, b: &LabelBox) -> bool {
    a.0 < b.0 + b.2 && b.0 < a.0 + a.2 && a.1 < b.1 + b.3 && b.1 < a.1 + a.3
}

/// The graph in Graphviz DOT: prerequisites red, flag tier amber, counts as labels.
pub fn dot(policy: &Policy) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = String::from(
        "digraph flowguard {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
    );
    let _ = writeln!(
        out,
        "  {} [label=\"session start\", style=filled, fillcolor=\"#eeeeff\"];",
        q(START)
    );
    for e in &policy.endpoints {
        let guarded = e.all_prerequisites().next().is_some()
            || !pinned_forgotten(policy, &e.template).0.is_empty();
        let _ = writeln!(
            out,
            "  {}{};",
            q(&e.template),
            if guarded {
                " [color=\"#c0392b\", style=filled, fillcolor=\"#fdecea\"]"
            } else {
                ""
            }
        );
    }
    for t in &policy.transitions {
        let _ = writeln!(
            out,
            "  {} -> {} [label=\"{}\", color=\"#999999\"];",
            q(&t.from),
            q(&t.to),
            t.count
        );
    }
    for e in &policy.endpoints {
        let (pinned, forgotten) = pinned_forgotten(policy, &e.template);
        for p in e.all_prerequisites().filter(|p| !forgotten.contains(p)) {
            let _ = writeln!(
                out,
                "  {} -> {} [color=\"#c0392b\", penwidth=2, label=\"required\"];",
                q(p),
                q(&e.template)
            );
        }
        for p in pinned {
            let _ = writeln!(
                out,
                "  {} -> {} [color=\"#c0392b\", style=dotted, penwidth=2, label=\"pinned\"];",
                q(p),
                q(&e.template)
            );
        }
        for p in e
            .flag_prerequisites
            .iter()
            .chain(&e.flag_bound_prerequisites)
            .filter(|p| !forgotten.contains(p))
        {
            let _ = writeln!(
                out,
                "  {} -> {} [color=\"#d68910\", style=dashed, label=\"flags\"];",
                q(p),
                q(&e.template)
            );
        }
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowguard_engine::policy::{EndpointDecisions, EndpointPolicy, Limit, Transition};

    /// 40 endpoints: a login, 13 three-step flows of growing path length, deep and wide.
    pub fn forty() -> Policy {
        let mut endpoints = vec![EndpointPolicy {
            template: "POST /api/login".into(),
            ..Default::default()
        }];
        let mut transitions = vec![Transition {
            from: START.into(),
            to: "POST /api/login".into(),
            count: 500,
        }];
        for f in 0..13 {
            let base = format!(
                "/api/v2/{}/resources-{f}/{{id}}",
                "segment".repeat(1 + f % 4)
            );
            let steps = [
                format!("GET {base}"),
                format!("POST {base}/reserve"),
                format!("POST {base}/checkout/confirm"),
            ];
            for (k, s) in steps.iter().enumerate() {
                endpoints.push(EndpointPolicy {
                    template: s.clone(),
                    prerequisites: if k > 0 {
                        vec![steps[k - 1].clone()]
                    } else {
                        vec![]
                    },
                    flag_prerequisites: if k == 2 {
                        vec!["POST /api/login".into()]
                    } else {
                        vec![]
                    },
                    rate: Some(Limit {
                        limit: 12,
                        p50: 1,
                        p90: 3,
                        p99: 6,
                        bound: 8,
                        units: 400,
                    }),
                    ..Default::default()
                });
                let from = if k == 0 {
                    "POST /api/login".to_owned()
                } else {
                    steps[k - 1].clone()
                };
                transitions.push(Transition {
                    from,
                    to: s.clone(),
                    count: 40 + f as u64,
                });
            }
            transitions.push(Transition {
                from: steps[2].clone(),
                to: "POST /api/login".into(),
                count: 3,
            });
        }
        Policy {
            version: 9,
            window_s: 10,
            endpoints,
            transitions,
            ..Default::default()
        }
    }

    #[test]
    fn forty_endpoints_are_drawn_with_no_label_over_another() {
        let p = forty();
        assert_eq!(p.endpoints.len(), 40);
        let drawn = draw(&p);
        assert_eq!(drawn.svg.matches("<rect").count(), 41);
        assert_eq!(
            drawn.labels.len(),
            41 + 39,
            "every endpoint, and the limits of the 39 with any"
        );
        for (i, a) in drawn.labels.iter().enumerate() {
            for b in &drawn.labels[i + 1..] {
                assert!(!intersect(a, b), "labels overlap: {a:?} {b:?}");
            }
        }
        assert_eq!(drawn.svg.matches(r#"class="req""#).count(), 26);
        assert_eq!(drawn.svg.matches(r#"class="flagreq""#).count(), 13);
    }

    #[test]
    fn decisions_pin_and_forget_and_names_are_escaped() {
        let mut p = forty();
        p.endpoints[0].template = "POST /api/<login>".into();
        p.transitions[0].to = "POST /api/<login>".into();
        // A decision on a template the policy no longer has is drawn as nothing.
        p.decisions
            .endpoints
            .insert("POST /api/login".into(), Default::default());
        let svg = draw(&p).svg;
        assert!(svg.contains("POST /api/&lt;login&gt;") && !svg.contains("<login>"));
        let a = p.endpoints[1].template.clone();
        let b = p.endpoints[2].template.clone();
        let c = p.endpoints[3].template.clone();
        let forget = EndpointDecisions {
            forget: vec![a.clone()],
            ..Default::default()
        };
        let pin = EndpointDecisions {
            pin: vec![a],
            ..Default::default()
        };
        p.decisions.endpoints = [(b, forget), (c, pin)].into();
        let drawn = draw(&p).svg;
        assert_eq!(drawn.matches(r#"class="req""#).count(), 25, "one forgotten");
        assert_eq!(drawn.matches(r#"class="pin""#).count(), 1, "one pinned");
        let dot = dot(&p);
        assert!(dot.starts_with("digraph") && dot.contains("pinned") && dot.contains("\"^\""));
    }
}
