//! A policy's flow graph: its layout, which the console's page (`console::graph`) and
//! `flowguard policy graph` both draw on, and the latter's standalone SVG. Endpoints sit
//! in columns by their distance from the session start over learned transitions, one row
//! each, every column as wide as its widest box, so no two boxes overlap.

use flowguard_engine::policy::{Policy, START};
use std::collections::{HashMap, VecDeque};
use std::fmt::Write;

/// The spacing of a layout, in px.
#[derive(Clone, Copy, Debug)]
pub struct Spacing {
    /// The first column's left edge.
    pub left: f64,
    /// The first row's top edge.
    pub top: f64,
    /// Between a column's right edge and the next one's left.
    pub gap: f64,
    /// From one row's top edge to the next one's.
    pub row: f64,
}

/// Where each node of a policy's graph sits. Node 0 is the session start, node `i` the
/// endpoint `i - 1` of the policy.
pub struct Layout<'p> {
    /// Each node's name: `^`, then the templates.
    pub names: Vec<&'p str>,
    index: HashMap<&'p str, usize>,
    /// Each node's column.
    pub depth: Vec<usize>,
    /// The deepest column the transitions reach from the start: the endpoints they never
    /// reach are in the column after it.
    pub reached: usize,
    /// Each column's width (its widest node).
    pub col_w: Vec<f64>,
    /// Each column's left edge.
    pub col_x: Vec<f64>,
    /// Each node's top-left corner.
    pub pos: Vec<(f64, f64)>,
    /// The most nodes in one column.
    pub rows: usize,
}

impl<'p> Layout<'p> {
    /// Lays `policy` out with node `i` `width(i)` wide.
    pub fn new(policy: &'p Policy, width: impl Fn(usize) -> f64, spacing: Spacing) -> Self {
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
        let reached = depth
            .iter()
            .filter(|d| **d != usize::MAX)
            .max()
            .copied()
            .unwrap_or(0);
        for d in depth.iter_mut().filter(|d| **d == usize::MAX) {
            *d = reached + 1;
        }
        let columns = depth.iter().max().copied().unwrap_or(0) + 1;
        let mut col_w = vec![0.0f64; columns];
        let mut rows = vec![0usize; columns];
        let mut row_of = vec![0usize; names.len()];
        for i in 0..names.len() {
            col_w[depth[i]] = col_w[depth[i]].max(width(i));
            row_of[i] = rows[depth[i]];
            rows[depth[i]] += 1;
        }
        let mut col_x = vec![spacing.left; columns];
        for c in 1..columns {
            col_x[c] = col_x[c - 1] + col_w[c - 1] + spacing.gap;
        }
        let pos = (0..names.len())
            .map(|i| {
                (
                    col_x[depth[i]],
                    spacing.top + row_of[i] as f64 * spacing.row,
                )
            })
            .collect();
        Layout {
            names,
            index,
            depth,
            reached,
            col_w,
            col_x,
            pos,
            rows: rows.iter().max().copied().unwrap_or(1),
        }
    }

    /// The node of `name` (`^` or a template).
    pub fn node(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The last column's right edge.
    pub fn right(&self) -> f64 {
        self.col_x.last().copied().unwrap_or(0.0) + self.col_w.last().copied().unwrap_or(0.0)
    }
}

/// `flowguard policy graph` draws every box one size, a column every `COL` px (the
/// console sizes each box to its label).
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

/// Renders `policy` as a standalone SVG document (`flowguard policy graph`).
pub fn render(policy: &Policy) -> String {
    let layout = Layout::new(
        policy,
        |_| BOX_W,
        Spacing {
            left: 40.0,
            top: 60.0,
            gap: COL - BOX_W,
            row: ROW,
        },
    );
    let pos = &layout.pos;
    // A spare column on the right (the title and the legend need the room).
    let width = 80.0 + (layout.reached + 2) as f64 * COL;
    let height = 120.0 + layout.rows as f64 * ROW;

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
        if let (Some(a), Some(b)) = (layout.node(&t.from), layout.node(&t.to)) {
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
            if let (Some(a), Some(b)) = (layout.node(p), layout.node(&e.template)) {
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
    for (i, name) in layout.names.iter().enumerate() {
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
    fn columns_follow_the_distance_from_the_start_and_fit_their_widest_box() {
        let endpoint = |t: &str| EndpointPolicy {
            template: t.into(),
            ..Default::default()
        };
        let step = |from: &str, to: &str| Transition {
            from: from.into(),
            to: to.into(),
            count: 1,
        };
        let p = Policy {
            version: 1,
            window_s: 10,
            endpoints: ["GET /a", "GET /b", "GET /never", "GET /d"]
                .map(endpoint)
                .into(),
            transitions: vec![
                step(START, "GET /a"),
                step("GET /a", "GET /b"),
                step("GET /b", "GET /a"),
                step(START, "GET /d"),
            ],
            ..Default::default()
        };
        let spacing = Spacing {
            left: 5.0,
            top: 7.0,
            gap: 3.0,
            row: 11.0,
        };
        let l = Layout::new(&p, |i| 10.0 * (i + 1) as f64, spacing);
        assert_eq!(l.depth, [0, 1, 2, 3, 1], "unreached: after the deepest");
        assert_eq!(l.reached, 2);
        assert_eq!(l.col_w, [10.0, 50.0, 30.0, 40.0], "the widest in each");
        assert_eq!(l.col_x, [5.0, 18.0, 71.0, 104.0]);
        assert_eq!(
            l.pos,
            [
                (5.0, 7.0),
                (18.0, 7.0),
                (71.0, 7.0),
                (104.0, 7.0),
                (18.0, 18.0)
            ],
            "one row per node in its column"
        );
        assert_eq!((l.rows, l.right()), (2, 144.0));
        assert_eq!(
            (l.node(START), l.node("GET /d"), l.node("GET /x")),
            (Some(0), Some(4), None)
        );
    }

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
