//! The flags `run` and `resume` share, as clap defines them, and their
//! resolution into the plain `Options` a batch records: flags over a
//! resumed batch's recorded options over defaults. Nothing below the
//! commands sees a clap type.

use crate::call::{AuthScheme, ConfigError, DEFAULT_ATTENTION_URL, DEFAULT_VG_URL};
use crate::edit::Op;
use crate::options::{Live, Options};
use crate::pacer::RateSpec;
use crate::text::{parse_duration, parse_size};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// `--db`, for the commands that read or write the audit database.
#[derive(Debug, Args, Clone, Default)]
pub struct DbArg {
    /// The audit database, created and migrated when missing [env: CONVOY_DB] [default: convoy.db]
    #[arg(long, value_name = "PATH", help_heading = "Audit and output")]
    pub db: Option<PathBuf>,
}

/// What a new batch reads, and its name: `run` and `plan`.
#[derive(Debug, Args, Clone)]
pub struct SourceArgs {
    /// A .csv file, - for CSV on stdin, or a SQLite file (see --table).
    pub source: String,

    /// The batch name [default: the source's stem and a UTC timestamp]
    #[arg(long)]
    pub batch: Option<String>,

    /// The table of a SQLite source [default: edits]
    #[arg(long)]
    pub table: Option<String>,
}

/// What `run` and `resume` print, and where the database is.
#[derive(Debug, Args, Clone, Default)]
pub struct BatchOutput {
    /// Print the finished batch as `convoy status NAME --json` does, and nothing else on stdout.
    #[arg(long, help_heading = "Audit and output")]
    pub json: bool,

    #[command(flatten)]
    pub db: DbArg,

    #[command(flatten)]
    pub quiet: QuietArg,
}

/// `--metrics FILE`, for the commands that send a batch.
#[derive(Debug, Args, Clone, Default)]
pub struct MetricsArg {
    /// Write the finished batch's figures to FILE in the Prometheus text format, for node_exporter's textfile collector (written to FILE.tmp, then renamed)
    #[arg(long, value_name = "FILE", help_heading = "Audit and output")]
    pub metrics: Option<std::path::PathBuf>,
}

/// `--quiet`, for the commands that show progress.
#[derive(Debug, Args, Clone, Default)]
pub struct QuietArg {
    /// No progress bar or progress lines (the summary and errors still print).
    #[arg(long, short, help_heading = "Audit and output")]
    pub quiet: bool,
}

/// How calls are made: shared by `run` and `resume`.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Sending")]
pub struct ExecArgs {
    /// Send only the first N sendable rows (a canary); the rest stay pending for `convoy resume`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,

    /// Calls in flight per API: auto (sized from each API's latency and pace), or N as a hard cap [default: auto]
    #[arg(long, value_parser = parse_concurrency)]
    pub concurrency: Option<Concurrency>,

    /// Attention pace: N/s, N/min, N/h, 0 (unlimited), auto, or auto:N/s (auto with a ceiling) [default: auto]
    #[arg(long, env = "CONVOY_ATTENTION_RATE", help_heading = "Pacing")]
    pub attention_rate: Option<RateSpec>,

    /// VG pace, as --attention-rate [default: auto]
    #[arg(long, env = "CONVOY_VG_RATE", help_heading = "Pacing")]
    pub vg_rate: Option<RateSpec>,

    /// Stop an API when this share of its last --breaker-window answered rows failed the same way (0 turns the breaker off) [default: 0.8]
    #[arg(long, value_name = "SHARE", value_parser = parse_share)]
    pub max_failure_rate: Option<f64>,

    /// How many recent answered rows the circuit breaker looks at [default: 100]
    #[arg(long, value_name = "ROWS", value_parser = clap::value_parser!(u32).range(10..=100_000))]
    pub breaker_window: Option<u32>,

    /// How long an API may be down (nearly every call failing on the wire) before the batch stops waiting for it; rows spend no attempts meanwhile [default: 15m]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub outage_wait: Option<Duration>,

    /// Attempts per row in all, retries included [default: 5]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: Option<u32>,

    /// Per-request timeout, like 30s, 500ms or 2m [default: 30s]
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// Attention base URL [default: https://api.attention.tech/v2]
    #[allow(rustdoc::bare_urls)] // clap's help text, not a doc page
    #[arg(long, env = "ATTENTION_BASE_URL", help_heading = "Endpoints")]
    pub attention_url: Option<String>,

    /// VG base URL (picks the region) [default: https://eu-cloudflare.vg-stuff.com]
    #[allow(rustdoc::bare_urls)] // clap's help text, not a doc page
    #[arg(long, env = "VG_BASE_URL", help_heading = "Endpoints")]
    pub vg_url: Option<String>,

    /// How the Attention key is sent: raw (`Authorization: <key>`) or bearer [default: raw]
    #[arg(
        long,
        env = "ATTENTION_AUTH_SCHEME",
        value_enum,
        help_heading = "Endpoints"
    )]
    pub attention_auth_scheme: Option<AuthScheme>,

    /// Refuse to start with less than this free beside the audit database, like 256MB or 2GB (0: no check) [default: 256MB]
    #[arg(long, value_parser = parse_size, value_name = "SIZE", help_heading = "Audit and output")]
    pub min_free: Option<u64>,

    /// Run against an in-process sandbox of both APIs: no keys, no network.
    #[arg(long, help_heading = "Endpoints")]
    pub sandbox: bool,

    /// Read each conversation just before its first edit and send only the rows that change something (the others are `skipped`).
    #[arg(long, help_heading = "Live state", conflicts_with_all = ["changed_only", "capture_before"])]
    pub skip_unchanged: bool,

    /// Skip a row whose exact call (method, URL, body) is the last that succeeded on its conversation in this audit database; no reads. Cannot see edits made in the app since.
    #[arg(long, help_heading = "Live state", conflicts_with = "capture_before")]
    pub changed_only: bool,

    /// Read each conversation just before its first edit and record it (its pre-image), so that `convoy undo` can put it back. One GET per conversation.
    #[arg(long, help_heading = "Live state")]
    pub capture_before: bool,
}

impl ExecArgs {
    /// `plan`, `apply` and `undo` judge rows their own way: the live-state
    /// flags of `run` and `resume` are refused there, saying why.
    pub fn refuse_live_flags(&self, why: &str) -> Result<(), super::Error> {
        if self.skip_unchanged || self.changed_only || self.capture_before {
            return Err(super::usage(format_args!(
                "{why}; --skip-unchanged, --changed-only and --capture-before belong to run and resume"
            )));
        }
        Ok(())
    }
}

/// How rows are read: shared by `run` and `resume`.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Input")]
pub struct InputArgs {
    /// The op of every row, for a source without an `op` column (a row's own op wins).
    #[arg(long, value_parser = parse_op)]
    pub op: Option<Op>,

    /// Send nothing at all if any row is invalid (exit 3).
    #[arg(long)]
    pub strict: bool,

    /// The CSV delimiter: one character like ';', or tab [default: found from the header line]
    #[arg(long, value_parser = crate::source::parse_delimiter)]
    pub delimiter: Option<u8>,

    /// The CSV file's encoding, like windows-1252 or latin1 (Excel's CSV export) [default: utf-8]
    #[arg(long, value_parser = crate::source::parse_encoding)]
    pub encoding: Option<&'static encoding_rs::Encoding>,

    /// Send a row even when a later edit of its conversation already succeeded (by default such a row is held, so a fix never undoes a newer edit).
    #[arg(long)]
    pub send_older_edits: bool,
}

/// A share from 0 to 1.
fn parse_share(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|p| (0.0..=1.0).contains(p))
        .ok_or_else(|| format!("{s:?}: give a share from 0 to 1, like 0.8 (0 turns it off)"))
}

/// `--concurrency`: `auto`, or a hard cap per API.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Concurrency {
    Auto,
    Cap(u32),
}

fn parse_concurrency(s: &str) -> Result<Concurrency, String> {
    if s.trim() == "auto" {
        return Ok(Concurrency::Auto);
    }
    match s.trim().parse::<u32>() {
        Ok(n @ 1..=1024) => Ok(Concurrency::Cap(n)),
        _ => Err(format!(
            "{s:?} is not a concurrency; write auto, or a number from 1 to 1024"
        )),
    }
}

fn parse_op(s: &str) -> Result<Op, String> {
    Op::parse(s).ok_or_else(|| {
        let hint = crate::edit::did_you_mean(s, Op::ALL.iter().map(|o| o.name()))
            .map(|n| format!(" (did you mean {n}?)"))
            .unwrap_or_default();
        format!(
            "unknown op {s:?}{hint}; known ops: {}",
            Op::ALL.map(Op::name).join(", ")
        )
    })
}

/// Flags over `recorded` (a resumed batch's options) over defaults.
pub fn resolve(
    exec: &ExecArgs,
    input: &InputArgs,
    recorded: Option<&Options>,
) -> Result<Options, ConfigError> {
    let rate = |flag: &Option<RateSpec>, old: Option<&RateSpec>| -> RateSpec {
        flag.or(old.copied())
            .unwrap_or(RateSpec::Auto { ceiling: None })
    };
    let o = Options {
        concurrency: match exec.concurrency {
            Some(Concurrency::Auto) => None,
            Some(Concurrency::Cap(n)) => Some(n),
            None => recorded.and_then(|r| r.concurrency),
        },
        attention_rate: rate(&exec.attention_rate, recorded.map(|r| &r.attention_rate)),
        vg_rate: rate(&exec.vg_rate, recorded.map(|r| &r.vg_rate)),
        max_attempts: exec
            .max_attempts
            .or(recorded.map(|r| r.max_attempts))
            .unwrap_or(5),
        timeout_ms: exec
            .timeout
            .map(|t| t.as_millis() as u64)
            .or(recorded.map(|r| r.timeout_ms))
            .unwrap_or(30_000),
        attention_url: exec
            .attention_url
            .clone()
            .or(recorded.map(|r| r.attention_url.clone()))
            .unwrap_or_else(|| DEFAULT_ATTENTION_URL.into()),
        vg_url: exec
            .vg_url
            .clone()
            .or(recorded.map(|r| r.vg_url.clone()))
            .unwrap_or_else(|| DEFAULT_VG_URL.into()),
        attention_auth_scheme: exec
            .attention_auth_scheme
            .or(recorded.map(|r| r.attention_auth_scheme))
            .unwrap_or(AuthScheme::Raw),
        op: input
            .op
            .map(|o| o.name().to_owned())
            .or(recorded.and_then(|r| r.op.clone())),
        strict: input.strict || recorded.is_some_and(|r| r.strict),
        sandbox: exec.sandbox || recorded.is_some_and(|r| r.sandbox),
        breaker_share: exec
            .max_failure_rate
            .or(recorded.map(|r| r.breaker_share))
            .unwrap_or(0.8),
        breaker_window: exec
            .breaker_window
            .map(|n| n as usize)
            .or(recorded.map(|r| r.breaker_window))
            .unwrap_or(100),
        outage_wait_ms: exec
            .outage_wait
            .map(|d| d.as_millis() as u64)
            .or(recorded.map(|r| r.outage_wait_ms))
            .unwrap_or(15 * 60 * 1000),
        // Never inherited: each pass says it again.
        send_older_edits: input.send_older_edits,
        limit: exec.limit,
        delimiter: input
            .delimiter
            .map(char::from)
            .or(recorded.and_then(|r| r.delimiter)),
        encoding: input
            .encoding
            .map(|e| e.name().to_owned())
            .or(recorded.and_then(|r| r.encoding.clone())),
        live: if exec.skip_unchanged {
            Live::SkipUnchanged
        } else if exec.capture_before {
            Live::CaptureBefore
        } else {
            recorded.map_or(Live::Off, |r| r.live)
        },
        changed_only: exec.changed_only || recorded.is_some_and(|r| r.changed_only),
    };
    o.check()?;
    Ok(o)
}
