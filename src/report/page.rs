//! `convoy report NAME`: one night as one self-contained HTML page (inline
//! CSS and SVG, no script, nothing fetched), written with `maud`, which
//! escapes every value it is given: an API's error text can never become
//! markup.
//!
//! The elements a test or a script may look for: `table #counts` (a row per
//! API, `data-api`, a cell per status, `data-status`), `svg.timeline` per
//! API (`data-origin-ms`, `data-bin-seconds`; a `line.m429` per bin with
//! 429s, `data-second` from the origin and `data-count`), `table #clusters`
//! and `code #resume-command`.

use super::{ApiNight, Night};
use crate::audit::timeline::Held;
use crate::audit::{RowStatus, Tally};
use crate::text::shell_quote;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use std::fmt::Write as _;

/// The most failure clusters listed; the rest are counted.
const CLUSTERS_SHOWN: usize = 30;

const CSS: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d2330;margin:0;background:#f6f7f9}
main{max-width:1000px;margin:0 auto;padding:16px 20px 40px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:17px;margin:26px 0 8px}h3{font-size:14px;margin:14px 0 6px;color:#4a5264}
.meta{color:#4a5264;margin:0 0 6px}.meta b{color:#1d2330}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;vertical-align:middle;margin-left:6px}
.completed{background:#d9f2e1;color:#17603a}.failed{background:#fbe0e0;color:#8c1d1d}.interrupted,.running,.planned{background:#fdf0d2;color:#7a5200}
section{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:4px 16px 14px;margin-top:14px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:right;padding:3px 8px;border-bottom:1px solid #eceef2}th{font-weight:600;color:#4a5264}
td.l,th.l{text-align:left}td.err{text-align:left;font-family:ui-monospace,monospace;font-size:12px;word-break:break-word}
tr.total td{font-weight:600}.zero{color:#b3b8c3}
code{font-family:ui-monospace,monospace;background:#eef0f4;padding:1px 5px;border-radius:4px}
.bound{margin:4px 0 8px}.bound b{color:#1d2330}
svg{display:block;width:100%;height:auto}svg text{font:11px system-ui,sans-serif;fill:#5a6275}
.grid{stroke:#eceef2}.axis{stroke:#9aa1b0}.sent{fill:#8fb3e8}.pace{fill:none;stroke:#1d4fa0;stroke-width:1.6}
.learned{fill:none;stroke:#17603a;stroke-width:1.4;stroke-dasharray:5 3}.inflight{fill:none;stroke:#6b3fa0;stroke-width:1.4}
.m429{stroke:#d0342c;stroke-width:2}.mfail{stroke:#e08a00;stroke-width:2}
.held-paused{fill:#fdf0d2}.held-down{fill:#fbe0e0}.held-stopped{fill:#e6e8ee}.hist{fill:#8fb3e8}
.legend span{margin-right:14px;white-space:nowrap}.sw{display:inline-block;width:12px;height:10px;margin-right:4px;vertical-align:-1px}
footer{color:#7a8193;font-size:12px;margin-top:20px}
";

/// The page for `night`.
pub fn render(night: &Night) -> String {
    let d = &night.detail;
    let name = &d.line.batch;
    let q = shell_quote(name);
    let status = d.line.status.as_str();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "convoy: " (name) }
                style { (PreEscaped(CSS)) }
            }
            body { main {
                h1 { "Batch " (name) span class={"badge " (status)} { (status) } }
                p.meta {
                    "source " b { (d.source) } " · started " b { (d.line.created_at) }
                    " · took " b { (show_seconds(d.line.duration_seconds)) }
                    " (sending " (show_seconds(d.line.send_seconds)) ", " (d.passes) " pass" @if d.passes != 1 { "es" } ")"
                    " · exit " b #exit-code { (d.exit_code.map_or("not recorded".to_owned(), |c| c.to_string())) }
                }
                section #outcome {
                    h2 { "Outcome" }
                    (counts_table(night))
                    h3 { "By op" }
                    (ops_table(night))
                }
                section #bounds {
                    h2 { "What bounded the run" }
                    @if night.apis.is_empty() { p { "No call was sent." } }
                    @for a in &night.apis {
                        p.bound { b { (a.api.name()) } ": " (a.bound.as_deref().unwrap_or("not recorded")) }
                    }
                }
                @for a in &night.apis {
                    section.api id={"api-" (a.api.name())} {
                        h2 { (a.api.name()) }
                        (timeline(night, a))
                        (in_flight(night, a))
                        (latency(a))
                    }
                }
                section #failures {
                    h2 { "Failures" }
                    (clusters(night))
                }
                section #resume {
                    h2 { "Left to resume" }
                    (resume(night, &q))
                }
                footer { "Drawn by convoy " (env!("CARGO_PKG_VERSION")) " from the audit database alone." }
            } }
        }
    }
    .into_string()
}

/// The statuses as the tables show them, left to right.
const STATUSES: [RowStatus; 7] = [
    RowStatus::Succeeded,
    RowStatus::Failed,
    RowStatus::Invalid,
    RowStatus::Held,
    RowStatus::Skipped,
    RowStatus::Pending,
    RowStatus::InFlight,
];

fn count_cells(t: &Tally) -> Markup {
    html! {
        td data-status="rows" { (t.rows) }
        @for s in STATUSES {
            @let n = t.get(s);
            td data-status=(s.as_str()) class=[(n == 0).then_some("zero")] { (n) }
        }
    }
}

fn counts_table(night: &Night) -> Markup {
    let d = &night.detail;
    // Rows with no API (an unknown op) are counted under none.
    let mut none = Tally::default();
    for l in d.by_op.iter().filter(|l| l.api.is_none()) {
        none.merge(&l.counts);
    }
    html! {
        table #counts {
            tr { th.l { "API" } th { "rows" } @for s in STATUSES { th { (s.as_str().replace('_', " ")) } } }
            @for a in &night.apis { tr data-api=(a.api.name()) { td.l { (a.api.name()) } (count_cells(&a.counts)) } }
            @if none.rows > 0 { tr data-api="none" { td.l { "no API (invalid op)" } (count_cells(&none)) } }
            tr.total data-api="all" { td.l { "all" } (count_cells(&d.line.counts)) }
        }
    }
}

fn ops_table(night: &Night) -> Markup {
    html! {
        table #ops {
            tr { th.l { "op" } th { "rows" } @for s in STATUSES { th { (s.as_str().replace('_', " ")) } } }
            @for l in &night.detail.by_op {
                tr data-op=(l.op.as_deref().unwrap_or("")) {
                    td.l { (l.op.as_deref().unwrap_or("(none)")) }
                    (count_cells(&l.counts))
                }
            }
        }
    }
}

const W: f64 = 960.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 14.0;
const PW: f64 = W - LEFT - RIGHT;

/// A chart `h` high: its plot's height, and where the plot's bottom is
/// (the time axis's labels go below it).
fn plot(h: f64) -> (f64, f64) {
    let ph = h - TOP - 26.0;
    (ph, TOP + ph)
}

/// Where second `t` (from the origin) is on a chart of `span` seconds.
fn x_of(t: f64, span: f64) -> f64 {
    LEFT + (t / span).clamp(0.0, 1.0) * PW
}

fn span_seconds(night: &Night, a: &ApiNight) -> f64 {
    (a.bins.len() as i64 * night.bin_seconds).max(1) as f64
}

/// Ticks along the time axis: about eight, at round steps.
fn time_axis(span: f64, top: f64, bottom: f64) -> Markup {
    let steps = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        10800.0, 21600.0, 43200.0, 86400.0,
    ];
    let step = steps
        .iter()
        .copied()
        .find(|s| span / s <= 8.0)
        .unwrap_or(86400.0);
    let ticks: Vec<f64> = (0..)
        .map(|i| i as f64 * step)
        .take_while(|t| *t <= span)
        .collect();
    html! {
        line.axis x1=(LEFT) x2=(LEFT + PW) y1=(bottom) y2=(bottom) {}
        @for t in ticks {
            @let x = x_of(t, span);
            line.grid x1=(fmt(x)) x2=(fmt(x)) y1=(top) y2=(bottom) {}
            text x=(fmt(x)) y=(bottom + 14.0) text-anchor="middle" { (clock(t)) }
        }
    }
}

fn timeline(night: &Night, a: &ApiNight) -> Markup {
    const H: f64 = 210.0;
    let (ph, bottom) = plot(H);
    let span = span_seconds(night, a);
    let w = night.bin_seconds as f64;
    let rate = |n: u64| n as f64 / w;
    let top_rate = a
        .bins
        .iter()
        .map(|b| rate(b.sent))
        .chain(a.samples.iter().filter_map(|s| s.pace))
        .chain(a.samples.iter().filter_map(|s| s.learned))
        .fold(1.0_f64, f64::max)
        * 1.1;
    let y = |v: f64| bottom - (v / top_rate).min(1.0) * ph;
    let t_of = |ms: i64| (ms - night.origin_ms) as f64 / 1000.0;
    let mut bars = String::new();
    for (i, b) in a.bins.iter().enumerate().filter(|(_, b)| b.sent > 0) {
        let (x0, x1) = (x_of(i as f64 * w, span), x_of((i + 1) as f64 * w, span));
        let _ = write!(
            bars,
            "M{} {}V{}H{}V{}Z",
            fmt(x0),
            fmt(bottom),
            fmt(y(rate(b.sent))),
            fmt(x1.max(x0 + 0.6)),
            fmt(bottom)
        );
    }
    let line = |value: &dyn Fn(&crate::audit::timeline::Sample) -> Option<f64>| {
        let mut d = String::new();
        let mut pen_down = false;
        for s in &a.samples {
            match value(s) {
                Some(v) => {
                    let cmd = if pen_down { 'L' } else { 'M' };
                    let _ = write!(d, "{cmd}{} {}", fmt(x_of(t_of(s.at_ms), span)), fmt(y(v)));
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        d
    };
    let pace = line(&|s| s.pace);
    let learned = line(&|s| s.learned);
    let marks = |pick: fn(&super::Bin) -> u64| -> Vec<(i64, u64, f64)> {
        a.bins
            .iter()
            .enumerate()
            .filter(|(_, b)| pick(b) > 0)
            .map(|(i, b)| {
                let second = i as i64 * night.bin_seconds;
                (second, pick(b), x_of((i as f64 + 0.5) * w, span))
            })
            .collect()
    };
    let limited = marks(|b| b.limited);
    let failed = marks(|b| b.failed);
    html! {
        h3 { "Calls per second sent, and the pace held" }
        svg.timeline viewBox={"0 0 " (W) " " (H)} role="img"
            data-api=(a.api.name()) data-origin-ms=(night.origin_ms) data-bin-seconds=(night.bin_seconds) {
            title { (a.api.name()) ": calls per second, 429s and failures, the pace held and the limit learned" }
            @for (from, to, held) in &a.held {
                @let (x0, x1) = (x_of(t_of(*from), span), x_of(t_of(*to), span));
                rect class=(held_class(*held)) x=(fmt(x0)) y=(TOP) width=(fmt((x1 - x0).max(1.0))) height=(ph) {
                    title { (held_words(*held)) " from " (clock(t_of(*from))) " to " (clock(t_of(*to))) }
                }
            }
            @for f in [0.5, 1.0] {
                line.grid x1=(LEFT) x2=(LEFT + PW) y1=(fmt(y(top_rate * f / 1.1))) y2=(fmt(y(top_rate * f / 1.1))) {}
                text x=(LEFT - 4.0) y=(fmt(y(top_rate * f / 1.1) + 4.0)) text-anchor="end" { (short(top_rate * f / 1.1)) "/s" }
            }
            (time_axis(span, TOP, bottom))
            path.sent d=(bars) {}
            @if !pace.is_empty() { path.pace d=(pace) {} }
            @if !learned.is_empty() { path.learned d=(learned) {} }
            @for (second, n, x) in &limited {
                line.m429 x1=(fmt(*x)) x2=(fmt(*x)) y1=(TOP - 10.0) y2=(TOP - 2.0) data-second=(second) data-count=(n) {
                    title { (n) " × 429 at " (clock(*second as f64)) }
                }
            }
            @for (second, n, x) in &failed {
                line.mfail x1=(fmt(*x)) x2=(fmt(*x)) y1=(bottom + 1.0) y2=(bottom + 7.0) data-second=(second) data-count=(n) {
                    title { (n) " failed at " (clock(*second as f64)) }
                }
            }
        }
        p.legend {
            span { i.sw style="background:#8fb3e8" {} "calls sent per second" }
            span { i.sw style="background:#1d4fa0;height:3px" {} "pace held" }
            span { i.sw style="background:#17603a;height:3px" {} "limit learned" }
            span { i.sw style="background:#d0342c;width:3px" {} "429s (top)" }
            span { i.sw style="background:#e08a00;width:3px" {} "other failures (bottom)" }
            span { i.sw style="background:#fdf0d2" {} "paused (Retry-After)" }
            span { i.sw style="background:#fbe0e0" {} "down (outage)" }
            span { i.sw style="background:#e6e8ee" {} "stopped" }
        }
    }
}

fn in_flight(night: &Night, a: &ApiNight) -> Markup {
    const H: f64 = 110.0;
    let (ph, bottom) = plot(H);
    let span = span_seconds(night, a);
    let w = night.bin_seconds as f64;
    let most = a.bins.iter().map(|b| b.in_flight).fold(1.0_f64, f64::max) * 1.1;
    let y = |v: f64| bottom - (v / most).min(1.0) * ph;
    let mut d = String::new();
    for (i, b) in a.bins.iter().enumerate() {
        let cmd = if i == 0 { 'M' } else { 'L' };
        let _ = write!(
            d,
            "{cmd}{} {}",
            fmt(x_of((i as f64 + 0.5) * w, span)),
            fmt(y(b.in_flight))
        );
    }
    html! {
        h3 { "Calls in flight (on average over each " (clock(w)) ")" }
        svg.flightchart viewBox={"0 0 " (W) " " (H)} role="img" data-api=(a.api.name()) {
            title { (a.api.name()) ": calls in flight" }
            line.grid x1=(LEFT) x2=(LEFT + PW) y1=(fmt(y(most / 1.1))) y2=(fmt(y(most / 1.1))) {}
            text x=(LEFT - 4.0) y=(fmt(y(most / 1.1) + 4.0)) text-anchor="end" { (short(most / 1.1)) }
            (time_axis(span, TOP, bottom))
            path.inflight d=(d) {}
        }
    }
}

fn latency(a: &ApiNight) -> Markup {
    let l = &a.latency;
    const H: f64 = 120.0;
    let (ph, bottom) = plot(H);
    let most = l.histogram.iter().map(|b| b.1).max().unwrap_or(1).max(1) as f64;
    let n = l.histogram.len().max(1) as f64;
    let bar = PW / n;
    let buckets: Vec<(u64, u64, u64)> = l
        .histogram
        .iter()
        .scan(0u64, |lo, (hi, count)| {
            let b = (*lo, *hi, *count);
            *lo = *hi;
            Some(b)
        })
        .collect();
    html! {
        h3 { "Time on the wire" }
        @if l.count == 0 {
            p { "No call was answered." }
        } @else {
            table.latency data-api=(a.api.name()) {
                tr { th.l { "answered calls" } th { "p50" } th { "p90" } th { "p99" } th { "slowest" } }
                tr {
                    td.l { (l.count) }
                    td data-q="p50" { (l.p50_ms) " ms" }
                    td data-q="p90" { (l.p90_ms) " ms" }
                    td data-q="p99" { (l.p99_ms) " ms" }
                    td data-q="max" { (l.max_ms) " ms" }
                }
            }
            svg.histogram viewBox={"0 0 " (W) " " (H)} role="img" data-api=(a.api.name()) {
                title { (a.api.name()) ": calls by time on the wire" }
                line.axis x1=(LEFT) x2=(LEFT + PW) y1=(bottom) y2=(bottom) {}
                @for (i, (lo, hi, count)) in buckets.iter().enumerate() {
                    @let h = *count as f64 / most * ph;
                    @let x = LEFT + i as f64 * bar;
                    rect.hist x=(fmt(x + 2.0)) y=(fmt(bottom - h)) width=(fmt(bar - 4.0)) height=(fmt(h)) {
                        title { (count) " calls of " (bucket(*lo, *hi)) }
                    }
                    text x=(fmt(x + bar / 2.0)) y=(bottom + 14.0) text-anchor="middle" { (bucket(*lo, *hi)) }
                    @if *count > 0 { text x=(fmt(x + bar / 2.0)) y=(fmt(bottom - h - 3.0)) text-anchor="middle" { (count) } }
                }
            }
        }
    }
}

fn clusters(night: &Night) -> Markup {
    let all = &night.detail.clusters;
    html! {
        @if all.is_empty() {
            p { "None." }
        } @else {
            table #clusters {
                tr { th { "#" } th { "rows" } th.l { "status" } th.l { "API" } th { "HTTP" } th.l { "error (ids and numbers masked)" } th.l { "example row" } }
                @for c in all.iter().take(CLUSTERS_SHOWN) {
                    tr.cluster data-cluster=(c.cluster) {
                        td { (c.cluster) }
                        td.count { (c.count) }
                        td.l.status { (c.status) }
                        td.l { (c.api.as_deref().unwrap_or("")) }
                        td { (c.http_status.map_or(String::new(), |s| s.to_string())) }
                        td.err { (c.error) }
                        td.l.example-row { code { (c.example_row) } }
                    }
                }
            }
            @if all.len() > CLUSTERS_SHOWN {
                p { (all.len() - CLUSTERS_SHOWN) " more clusters: " code { "convoy status " (shell_quote(&night.detail.line.batch)) } }
            }
        }
    }
}

fn resume(night: &Night, q: &str) -> Markup {
    let c = &night.detail.line.counts;
    let to_send = c.pending + c.in_flight + c.failed;
    html! {
        @if c.unfinished() == 0 {
            p { "Nothing: every row succeeded or was skipped." }
        } @else {
            table #left {
                tr { th.l { "rows" } th { "count" } th.l { "what resume does" } }
                tr data-status="pending" { td.l { "pending" } td { (c.pending) } td.l { "sends them" } }
                tr data-status="in_flight" { td.l { "in flight (outcome unknown)" } td { (c.in_flight) } td.l { "reads each conversation first; sends only what did not land" } }
                tr data-status="failed" { td.l { "failed" } td { (c.failed) } td.l { "sends them again" } }
                tr data-status="invalid" { td.l { "invalid" } td { (c.invalid) } td.l { "sends those valid in the source now" } }
                tr data-status="held" { td.l { "held" } td { (c.held) } td.l { "sends them only with --send-older-edits" } }
            }
            p { (to_send) " row(s) to send: " code #resume-command { "convoy resume " (q) } }
            p { "Or fix them first: " code #failures-command { "convoy failures " (q) " --output fix.csv" } }
        }
    }
}

fn held_class(h: Held) -> &'static str {
    match h {
        Held::Down => "held-down",
        Held::Stopped => "held-stopped",
        _ => "held-paused",
    }
}

fn held_words(h: Held) -> &'static str {
    match h {
        Held::Down => "down, probed",
        Held::Stopped => "stopped",
        _ => "paused (Retry-After)",
    }
}

/// A coordinate, to a tenth.
fn fmt(v: f64) -> String {
    format!("{:.1}", v)
}

/// A rate or count, short.
fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Seconds since the origin, as m:ss or h:mm:ss.
fn clock(t: f64) -> String {
    let s = t.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn show_seconds(s: f64) -> String {
    crate::text::show_duration(std::time::Duration::from_secs_f64(s.max(0.0)))
}

fn bucket(lo: u64, hi: u64) -> String {
    let ms = |v: u64| {
        if v >= 1000 {
            format!("{} s", v / 1000)
        } else {
            format!("{v} ms")
        }
    };
    if hi == u64::MAX {
        format!("> {}", ms(lo))
    } else {
        format!("≤ {}", ms(hi))
    }
}
