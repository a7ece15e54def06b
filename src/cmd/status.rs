//! `convoy status [NAME] [--json]`: every batch, newest first, one line each;
//! or one batch in detail, failures grouped into clusters.

use super::{Global, usage};
use crate::audit::prune;
use crate::audit::report::{self, BatchLine};
use crate::text::show_duration;
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One batch to show in detail.
    pub batch: Option<String>,

    /// Print JSON (documented in the README) instead of text.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub db: super::args::DbArg,
}

pub async fn run(g: &Global, a: StatusArgs) -> Result<ExitCode, super::Error> {
    let db = super::open_existing(g).await?;
    match &a.batch {
        None => {
            let lines = report::batches(&db, None).await?;
            let size = prune::size(&db).await?;
            let month = prune::cutoff(Duration::from_secs(30 * 86_400));
            let prunable = prune::estimate(&db, &month).await?;
            if a.json {
                crate::output::json(&serde_json::json!({
                    "batches": lines,
                    "database": {
                        "bytes": size.bytes + size.wal_bytes,
                        "free_bytes": size.free_bytes,
                        "prune_30d_frees_about_bytes": prunable,
                    },
                }))?;
            } else {
                print_list(&lines);
                let mb = |b: u64| format!("{:.1} MB", b as f64 / (1 << 20) as f64);
                crate::outln!(
                    "audit database {}: {}{}",
                    g.db.display(),
                    mb(size.bytes + size.wal_bytes),
                    if prunable > 0 {
                        format!(
                            "; `convoy prune --before 30d` would free about {} (the bulk of completed batches older than 30 days)",
                            mb(prunable)
                        )
                    } else {
                        String::new()
                    }
                );
            }
        }
        Some(name) => {
            let Some(d) = report::detail(&db, name).await? else {
                return Err(usage(format_args!(
                    "no batch {name:?} in {}; `convoy status` lists them",
                    g.db.display()
                )));
            };
            if a.json {
                crate::output::json(&d)?;
            } else {
                print_detail(&d);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status_word(l: &BatchLine) -> String {
    if let Some(p) = &l.pruned {
        return format!("{} (pruned: {p})", l.status);
    }
    if l.stale {
        "running?".into()
    } else {
        l.status.clone()
    }
}

fn print_list(lines: &[BatchLine]) {
    if lines.is_empty() {
        crate::outln!("no batches yet");
        return;
    }
    let header = [
        "BATCH",
        "STATUS",
        "STARTED (UTC)",
        "DURATION",
        "ROWS",
        "SUCCEEDED",
        "FAILED",
        "INVALID",
        "PENDING",
        "RATE",
    ];
    let rows: Vec<[String; 10]> = lines
        .iter()
        .map(|l| {
            [
                l.batch.clone(),
                status_word(l),
                l.created_at.replace('T', " ").chars().take(19).collect(),
                show_duration(Duration::from_secs_f64(l.duration_seconds)),
                l.counts.rows.to_string(),
                l.counts.succeeded.to_string(),
                l.counts.failed.to_string(),
                l.counts.invalid.to_string(),
                (l.counts.pending + l.counts.in_flight).to_string(),
                format!("{:.1}/s", l.rate_per_second),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i >= 4 {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        crate::outln!("{}", parts.join("  ").trim_end());
    };
    line(&header.map(String::from));
    for r in &rows {
        line(r);
    }
    if lines.iter().any(|l| l.stale) {
        crate::outln!(
            "running? = recorded as running but its process is gone (a crash): `convoy resume NAME` finishes it"
        );
    }
}

fn print_detail(d: &report::Detail) {
    let l = &d.line;
    let c = &l.counts;
    crate::outln!("batch {} ({})", l.batch, status_word(l));
    crate::outln!("  source     {}", d.source);
    crate::outln!(
        "  started    {}{}",
        l.created_at,
        l.finished_at
            .as_deref()
            .map(|f| format!(", finished {f}"))
            .unwrap_or_default()
    );
    crate::outln!(
        "  duration   {}, of which sending {} over {} pass(es)",
        show_duration(Duration::from_secs_f64(l.duration_seconds)),
        show_duration(Duration::from_secs_f64(l.send_seconds)),
        d.passes
    );
    let mut more = String::new();
    if c.in_flight > 0 {
        more += &format!(", {} in flight (outcome unknown)", c.in_flight);
    }
    if c.held > 0 {
        more += &format!(", {} held (older than an edit that succeeded)", c.held);
    }
    if c.skipped > 0 {
        more += &format!(", {} skipped (never sent; their error says why)", c.skipped);
    }
    crate::outln!(
        "  rows       {}: {} succeeded, {} failed, {} invalid, {} pending{more}",
        c.rows,
        c.succeeded,
        c.failed,
        c.invalid,
        c.pending,
    );
    let lv = &d.live;
    if lv.reads > 0 || lv.unchanged > 0 {
        crate::outln!(
            "  live       {} conversation(s) read first (pre-images), {} read(s) in all; {} row(s) skipped{}",
            lv.pre_images,
            lv.reads,
            lv.unchanged,
            if lv.verified_by_read > 0 {
                format!(
                    "; {} in-doubt row(s) verified by a read, not sent again",
                    lv.verified_by_read
                )
            } else {
                String::new()
            }
        );
    }
    crate::outln!("  rate       {:.1} rows/s while sending", l.rate_per_second);
    let lanes: Vec<&serde_json::Value> = d
        .pacing
        .as_ref()
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter(|p| p["calls"].as_u64().unwrap_or(0) > 0)
        .collect();
    if !lanes.is_empty() {
        crate::outln!("  by API (last pass): what held each one back");
    }
    for p in lanes {
        let pace = match p["pace_per_second"].as_f64() {
            Some(r) => format!("paced {r:.1}/s {}", p["pace_kind"].as_str().unwrap_or("")),
            None => "unpaced".to_owned(),
        };
        crate::outln!(
            "    {:<9} {} calls at {:.1}/s, {pace}; {} 429s, paused {:.1}s; up to {} in flight (budget {}), {:.0} ms on the wire; bound by {}",
            p["api"].as_str().unwrap_or("?"),
            p["calls"],
            p["calls_per_second"].as_f64().unwrap_or(0.0),
            p["rate_limited"],
            p["paused_seconds"].as_f64().unwrap_or(0.0),
            p["max_in_flight"],
            p["in_flight_budget"],
            p["latency_ms"].as_f64().unwrap_or(0.0),
            p["bound"].as_str().unwrap_or("?"),
        );
    }
    crate::outln!("  by op");
    for o in &d.by_op {
        let c = &o.counts;
        crate::outln!(
            "    {:<22} {:>7} {}: {} succeeded, {} failed, {} invalid, {} pending",
            o.op.as_deref().unwrap_or("(unknown op)"),
            c.rows,
            if c.rows == 1 { "row " } else { "rows" },
            c.succeeded,
            c.failed,
            c.invalid,
            c.pending + c.in_flight
        );
    }
    let a = &d.attempts;
    let by_status: Vec<String> = a
        .by_status
        .iter()
        .map(|(s, n)| format!("{s} x{n}"))
        .collect();
    let by_api: Vec<String> = a.by_api.iter().map(|(s, n)| format!("{s} {n}")).collect();
    crate::outln!(
        "  attempts   {} ({} retries){}{}",
        a.total,
        a.retries,
        if by_status.is_empty() {
            String::new()
        } else {
            format!(": {}", by_status.join(", "))
        },
        if by_api.is_empty() {
            String::new()
        } else {
            format!("; by API: {}", by_api.join(", "))
        }
    );
    if d.clusters.is_empty() {
        crate::outln!("  failures   none");
    } else {
        crate::outln!(
            "  failures   largest first; `convoy failures {} --cluster N` exports one",
            crate::text::shell_quote(&l.batch)
        );
        for k in &d.clusters {
            let what = format!(
                "{}{}{}",
                k.status,
                k.api
                    .as_deref()
                    .map(|a| format!(" {a}"))
                    .unwrap_or_default(),
                k.http_status
                    .map(|s| format!(" HTTP {s}"))
                    .unwrap_or_default(),
            );
            if k.count == 1 {
                // One row: its own error says it all.
                crate::outln!(
                    "    #{:<3} {:>6} x {what}: row {}: {}",
                    k.cluster,
                    1,
                    k.example_row,
                    k.example_error
                );
                continue;
            }
            crate::outln!("    #{:<3} {:>6} x {what}: {}", k.cluster, k.count, k.error);
            crate::outln!("           e.g. row {}: {}", k.example_row, k.example_error);
        }
    }
    if d.not_json > 0 {
        crate::outln!(
            "  warning    {} succeeded row(s) got an answer whose body is not JSON (an HTML page?); their response column holds it",
            d.not_json
        );
    }
    for r in &d.learned_rates {
        let mut what = Vec::new();
        if let Some(rate) = r.rate_per_sec {
            what.push(format!("{rate:.1}/s"));
        }
        if let Some(k) = r.in_flight {
            what.push(format!("at most {k} calls at once"));
        }
        if let Some(q) = r.window_quota {
            what.push(format!("{q} calls a window"));
        }
        crate::outln!(
            "  learned    {} {} at {} ({})",
            r.api,
            what.join(", "),
            r.base_url,
            r.updated_at
        );
    }
}
