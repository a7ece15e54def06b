//! The command line: clap definitions (their doc comments are the help) and
//! dispatch to one module per command under `cmd/`.

use crate::call::AuthScheme;
use crate::edit::Op;
use crate::pacer::RateSpec;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Batch imports of conversation edits into the Attention and VG APIs, audited in SQLite.
#[derive(Debug, Parser)]
#[command(name = "convoy", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// The audit database (also after the command) [env: CONVOY_DB] [default: convoy.db]
    #[arg(long)]
    pub db: Option<PathBuf>,

    /// No progress bar or progress lines (also after run and resume).
    #[arg(long, short)]
    pub quiet: bool,
}

/// `--db`, for the commands that read or write the audit database.
#[derive(Debug, Args, Clone, Default)]
pub struct DbArg {
    /// The audit database, created and migrated when missing [env: CONVOY_DB] [default: convoy.db]
    #[arg(long, value_name = "PATH", help_heading = "Audit and output")]
    pub db: Option<PathBuf>,
}

/// `--quiet`, for the commands that show progress.
#[derive(Debug, Args, Clone, Default)]
pub struct QuietArg {
    /// No progress bar or progress lines (the summary and errors still print).
    #[arg(long, short, help_heading = "Audit and output")]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a batch: validate every row, then send each as one API call.
    Run(crate::cmd::run::RunArgs),
    /// Continue a batch: send every row that has not succeeded.
    Resume(crate::cmd::resume::ResumeArgs),
    /// Show all batches, or one batch in detail.
    Status(crate::cmd::status::StatusArgs),
    /// Export a batch's failed, invalid and pending rows as CSV, ready to fix and run again.
    Failures(crate::cmd::failures::FailuresArgs),
    /// Serve a local simulator of both APIs.
    Sandbox(crate::cmd::sandbox::SandboxArgs),
}

/// How calls are made: shared by `run` and `resume`.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Sending")]
pub struct ExecArgs {
    /// Calls in flight per API: auto (sized from each API's latency and pace), or N as a hard cap [default: auto]
    #[arg(long, value_parser = parse_concurrency)]
    pub concurrency: Option<Concurrency>,

    /// Attention pace: N/s, N/min, N/h, 0 (unlimited), auto, or auto:N/s (auto with a ceiling) [default: auto]
    #[arg(long, env = "CONVOY_ATTENTION_RATE", help_heading = "Pacing")]
    pub attention_rate: Option<RateSpec>,

    /// VG pace, as --attention-rate [default: auto]
    #[arg(long, env = "CONVOY_VG_RATE", help_heading = "Pacing")]
    pub vg_rate: Option<RateSpec>,

    /// Attempts per row in all, retries included [default: 5]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: Option<u32>,

    /// Per-request timeout, like 30s, 500ms or 2m [default: 30s]
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// Attention base URL [default: https://api.attention.tech/v2]
    #[arg(long, env = "ATTENTION_BASE_URL", help_heading = "Endpoints")]
    pub attention_url: Option<String>,

    /// VG base URL (picks the region) [default: https://eu-cloudflare.vg-stuff.com]
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

/// `256MB`, `2GB`, `512MiB`, `0`: a size in bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write 256MB or 2GB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?} is not a size; write 256MB or 2GB")),
    };
    Ok(n.saturating_mul(scale))
}

/// `30s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a duration; write 30s, 500ms or 2m");
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration as a person reads it: `250ms`, `30s`, `2m05s`, `1h02m`.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    if s < 60 {
        let tenths = (ms % 1000) / 100;
        return if tenths == 0 {
            format!("{s}s")
        } else {
            format!("{s}.{tenths}s")
        };
    }
    if s < 3600 {
        return format!("{}m{:02}s", s / 60, s % 60);
    }
    format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let Cli { command, db, quiet } = cli;
    // After the command wins over before it, then CONVOY_DB, then the default.
    let global = |sub: &DbArg, sub_quiet: bool| crate::cmd::Global {
        db: sub
            .db
            .clone()
            .or_else(|| db.clone())
            .or_else(|| std::env::var_os("CONVOY_DB").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("convoy.db")),
        quiet: quiet || sub_quiet,
    };
    match command {
        Command::Run(a) => crate::cmd::run::run(&global(&a.db, a.quiet.quiet), a).await,
        Command::Resume(a) => crate::cmd::resume::run(&global(&a.db, a.quiet.quiet), a).await,
        Command::Status(a) => crate::cmd::status::run(&global(&a.db, false), a).await,
        Command::Failures(a) => crate::cmd::failures::run(&global(&a.db, false), a).await,
        Command::Sandbox(a) => crate::cmd::sandbox::run(a).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert_eq!(show_duration(Duration::from_millis(125_000)), "2m05s");
    }
}
