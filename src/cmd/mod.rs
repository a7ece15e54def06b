//! One module per command, each owning its `Args` and a `run`; what they
//! share is here: the error model and exit codes ([`Error`], [`exit`]),
//! signals, the free-space check, and the send phase's ending (summary,
//! `--json`, exit code).

pub mod apply;
pub mod args;
pub mod completions;
pub mod failures;
pub mod plan;
pub mod prune;
pub mod report;
pub mod resume;
pub mod run;
pub mod sandbox;
pub mod status;
pub mod undo;

use crate::call::{ConfigError, Endpoints};
use crate::plan::PlanSummary;
use crate::sandbox::Sandbox;
use crate::send::Batch;
use crate::text::shell_quote;
use crate::{audit, send};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Flags every command takes.
pub struct Global {
    pub db: PathBuf,
    pub quiet: bool,
}

/// Exit codes (contract section 6).
pub mod exit {
    pub const OK: u8 = 0;
    pub const ROWS_FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const STOPPED: u8 = 3;
    pub const INTERRUPTED: u8 = 130;
}

/// The free space a batch needs beside its audit database, unless
/// `--min-free` says otherwise: the database and its write-ahead log grow
/// by a few KB per row while sending (a 5,000-row night peaked at 88 MB of
/// WAL beside a 33 MB database).
pub const MIN_FREE: u64 = 256 << 20;

/// Refuses to start a batch on a nearly full disk: better nothing sent than
/// an audit that cannot record what was sent.
pub fn check_free_space(db: &std::path::Path, min: Option<u64>) -> Result<(), String> {
    let min = min.unwrap_or(MIN_FREE);
    match crate::audit::free_space(db) {
        Some(free) if free < min => Err(format!(
            "only {} MB free beside the audit database {}; a batch needs at least {} MB (--min-free). Free some space, or pass --db on another disk; nothing was sent",
            free >> 20,
            db.display(),
            min >> 20
        )),
        _ => Ok(()),
    }
}

/// What a command fails with. `main` turns each into its exit code, in one
/// place ([`Error::exit_code`]); a batch that ran to its end is never an
/// error, whatever its rows did (its exit code says that).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A usage, configuration or source problem, found before anything was sent.
    #[error("{0}")]
    Usage(String),
    /// The audit database failed after sending began.
    #[error(transparent)]
    StoppedEarly(#[from] send::StoppedEarly),
    /// Anything else (the audit database could not be opened, say); nothing was sent.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<audit::ClaimError> for Error {
    fn from(e: audit::ClaimError) -> Error {
        match e {
            audit::ClaimError::Busy(_) => usage(e),
            audit::ClaimError::Lock(e) => Error::Other(e),
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        usage(e)
    }
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Other(_) => exit::USAGE,
            Error::StoppedEarly(_) => exit::STOPPED,
        }
    }
}

/// Opens the audit database of a command that reads what batches left
/// (everything but `run` and `plan`): a missing one is a usage error, never
/// silently created.
pub async fn open_existing(g: &Global) -> Result<audit::Db, Error> {
    if !g.db.exists() {
        return Err(usage(format_args!(
            "no audit database at {}; run a batch first, or pass --db",
            g.db.display()
        )));
    }
    open(g).await
}

/// Opens (creating or upgrading) the audit database, saying so first when
/// the upgrade rewrites its rows.
pub async fn open(g: &Global) -> Result<audit::Db, Error> {
    Ok(audit::Db::open_with(&g.db, || {
        crate::errln!(
            "note: upgrading the audit database {} to narrow rows: a one-time rewrite of its rows (seconds per GB); nothing is lost",
            g.db.display()
        );
    })
    .await?)
}

/// A usage, configuration or source error: exit 2, nothing sent.
pub fn usage(msg: impl std::fmt::Display) -> Error {
    Error::Usage(msg.to_string())
}

/// The endpoints to use: an in-process sandbox's with `--sandbox` (kept
/// alive by the returned handle), else the options' and the environment's.
pub async fn endpoints(
    options: &crate::options::Options,
) -> Result<(Option<Sandbox>, Endpoints), Error> {
    if options.sandbox {
        let sb = Sandbox::start_in_process().await?;
        let e = sb.endpoints(options.attention_auth_scheme);
        return Ok((Some(sb), e));
    }
    let e = Endpoints::from_env(
        &options.attention_url,
        &options.vg_url,
        options.attention_auth_scheme,
    )?;
    Ok((None, e))
}

/// First Ctrl-C or SIGTERM: cancel (calls in flight finish). Second: exit at once.
/// The handlers are registered before this returns, so no signal after it
/// meets the default action (which would kill the process unrecorded).
pub fn on_signals(cancel: CancellationToken, batch_id: String) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        crate::errln!(
            "\ninterrupted: letting the calls in flight finish, then stopping (signal again to exit at once)"
        );
        cancel.cancel();
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let q = shell_quote(&batch_id);
        crate::errln!("exiting at once; `convoy resume {q}` continues the batch");
        std::process::exit(i32::from(exit::INTERRUPTED));
    });
}

/// After a batch's run, resume or apply: its exit code recorded, `--json`
/// (the finished batch, as `convoy status NAME --json` prints it) and
/// `--metrics FILE`. A metrics file that cannot be written is said on
/// stderr; the batch's own exit code stands.
pub async fn batch_done(
    out: &args::BatchOutput,
    metrics: &args::MetricsArg,
    db: &audit::Db,
    id: &str,
    code: u8,
) -> Result<ExitCode, Error> {
    audit::set_exit_code(db, id, code).await?;
    if out.json
        && let Some(detail) = crate::audit::report::detail(db, id).await?
    {
        crate::output::json(&detail)?;
    }
    if let Some(path) = &metrics.metrics
        && let Some(night) = crate::report::night(db, id).await?
    {
        let last = audit::last_completed_ms(db).await?;
        let text = crate::report::metrics::text(&night, last);
        if let Err(e) = crate::report::metrics::write(path, &text) {
            crate::errln!("error: cannot write --metrics {}: {e}", path.display());
        }
    }
    Ok(ExitCode::from(code))
}

/// A signal came while the rows were being read: what was planned is kept,
/// the batch is `interrupted`, exit 130.
pub async fn interrupted_while_planning(
    db: &crate::audit::Db,
    batch_id: &str,
    plan: &PlanSummary,
    from_stdin: bool,
) -> Result<ExitCode, Error> {
    let q = shell_quote(batch_id);
    audit::set_status(db, batch_id, audit::BatchStatus::Interrupted).await?;
    crate::outln!(
        "batch {batch_id} interrupted while reading the source: {} row(s) planned, nothing sent",
        plan.rows
    );
    if from_stdin {
        crate::outln!(
            "the rest of stdin was not read: `convoy resume {q}` sends the rows planned, then run the rest as a new batch"
        );
    } else {
        crate::outln!("`convoy resume {q}` reads the source again and sends the batch");
    }
    Ok(ExitCode::from(exit::INTERRUPTED))
}

/// After the plan phase: check credentials and `--strict`, send, record the
/// batch's end, print the summary, and choose the exit code.
pub async fn send_batch(
    g: &Global,
    b: &Batch<'_>,
    plan: &PlanSummary,
    on_sandbox: bool,
    check_order: bool,
    cancel: CancellationToken,
) -> Result<u8, Error> {
    let Batch {
        db,
        id: batch_id,
        pass,
        options,
        endpoints,
    } = *b;
    let q = shell_quote(batch_id);
    let held = if check_order && !options.send_older_edits {
        crate::audit::hold_older_edits(db, batch_id, pass).await?
    } else {
        0
    };
    if options.changed_only {
        let skipped = crate::audit::skip_repeated_calls(db, batch_id, pass).await?;
        if skipped > 0 {
            crate::errln!(
                "--changed-only: {skipped} row(s) repeat the last call that succeeded on their conversation and are skipped"
            );
        }
    }
    let to_send = crate::audit::count_sendable(db, batch_id, pass).await?;
    if let Err(ConfigError(e)) = endpoints.require(plan.per_api) {
        audit::set_status(db, batch_id, audit::BatchStatus::Failed).await?;
        crate::errln!("error: {e}");
        crate::errln!("nothing was sent; once it is set, `convoy resume {q}` sends the batch");
        return Ok(exit::USAGE);
    }
    if options.strict && plan.invalid > 0 {
        audit::set_status(db, batch_id, audit::BatchStatus::Failed).await?;
        crate::errln!(
            "--strict: {} invalid row(s), so nothing was sent; fix them (`convoy failures {q}`) and `convoy resume {q}`",
            plan.invalid
        );
        return Ok(exit::STOPPED);
    }
    // From here on calls have gone out: a failure is "stopped early" (exit 3), never 2.
    let report = match send::phase(b, cancel, g.quiet, to_send).await {
        Ok(r) => r,
        Err(e) => {
            let marked = audit::set_status(db, batch_id, audit::BatchStatus::Interrupted)
                .await
                .is_ok();
            crate::errln!("error: {e:#}");
            crate::errln!(
                "stopped sending; calls already answered may not be recorded.{} Once the cause is fixed, `convoy resume {q}` sends the rest",
                if marked {
                    " The batch is marked interrupted."
                } else {
                    ""
                }
            );
            return Ok(exit::STOPPED);
        }
    };
    finish(b, &report, held, on_sandbox)
        .await
        .map_err(|e| Error::StoppedEarly(send::StoppedEarly(e)))
}

/// After the send phase: record the batch's end, print the summary, choose the exit code.
async fn finish(
    b: &Batch<'_>,
    report: &send::ExecReport,
    held: u64,
    on_sandbox: bool,
) -> anyhow::Result<u8> {
    let Batch {
        db,
        id: batch_id,
        options,
        ..
    } = *b;
    let q = shell_quote(batch_id);
    let tally = audit::tally(db, batch_id).await?;
    // A canary (`--limit`) whose rows all succeeded: the rest wait for `resume`.
    let canary_passed = options.limit.is_some()
        && report.stops.is_empty()
        && tally.failed + tally.invalid + tally.held + tally.in_flight == 0
        && tally.pending > 0;
    let status = if report.interrupted || canary_passed {
        audit::BatchStatus::Interrupted
    } else if tally.succeeded + tally.skipped == tally.rows {
        audit::BatchStatus::Completed
    } else {
        audit::BatchStatus::Failed
    };
    audit::set_status(db, batch_id, status).await?;
    audit::add_send_time(db, batch_id, report.elapsed).await?;

    let secs = report.elapsed.as_secs_f64();
    let sent = report
        .counters
        .done
        .load(std::sync::atomic::Ordering::Relaxed);
    crate::outln!(
        "batch {batch_id} {status} in {}{}: {} rows, {} succeeded, {}{} failed, {} invalid, {}{} pending ({:.1} rows/s this run)",
        crate::text::show_duration(report.elapsed),
        if on_sandbox {
            " against the sandbox"
        } else {
            ""
        },
        tally.rows,
        tally.succeeded,
        if tally.skipped > 0 {
            format!("{} skipped, ", tally.skipped)
        } else {
            String::new()
        },
        tally.failed,
        tally.invalid,
        if tally.held > 0 {
            format!("{} held, ", tally.held)
        } else {
            String::new()
        },
        tally.pending + tally.in_flight,
        sent as f64 / secs.max(0.001),
    );
    for stop in &report.stops {
        let left = crate::audit::unsent_for_api(db, batch_id, stop.api).await?;
        match &stop.why {
            send::StopReason::Auth(code) => crate::outln!(
                "stopped the {} API after HTTP {code}: its key was rejected; {left} of its row(s) left pending. Fix the key, then `convoy resume {q}`",
                stop.api
            ),
            send::StopReason::Outage(down_for) => crate::outln!(
                "stopped the {} API: it was down for {} (longer than --outage-wait); {left} of its row(s) left pending. `convoy resume {q}` sends them once it is back",
                stop.api,
                crate::text::show_duration(*down_for)
            ),
            send::StopReason::Breaker {
                count,
                window,
                error,
            } => crate::outln!(
                "stopped the {} API: the circuit breaker tripped, {count} of its last {window} answered rows failed the same way ({error}); {left} of its row(s) left pending. Fix the cause (`convoy status {q}`), then `convoy resume {q}`",
                stop.api
            ),
        }
    }
    for (api, down_for) in &report.outages {
        crate::errln!(
            "note: the {api} API was down for {} in all; its rows waited without spending attempts",
            crate::text::show_duration(*down_for)
        );
    }
    let not_json = crate::audit::report::not_json(db, batch_id).await?;
    if not_json > 0 {
        crate::errln!(
            "warning: {not_json} row(s) succeeded, but the API answered with a body that is not JSON (an HTML page?); `convoy status {q}` counts them"
        );
    }
    if held > 0 {
        crate::outln!(
            "held {held} row(s): a later edit of the same conversation already succeeded, so sending them would undo it; `convoy resume {q} --send-older-edits` sends them anyway"
        );
    }
    if canary_passed && !report.interrupted {
        crate::outln!(
            "canary: the first {} row(s) were sent and succeeded; `convoy resume {q}` sends the other {}",
            report
                .counters
                .done
                .load(std::sync::atomic::Ordering::Relaxed),
            tally.pending
        );
        return Ok(exit::OK);
    }
    if report.interrupted {
        crate::outln!("interrupted: `convoy resume {q}` sends the rest");
        return Ok(exit::INTERRUPTED);
    }
    if !report.stops.is_empty() {
        return Ok(exit::STOPPED);
    }
    if tally.unfinished() > 0 {
        crate::outln!(
            "next: `convoy failures {q} --output fix.csv` to fix them, or `convoy status {q}`"
        );
        return Ok(exit::ROWS_FAILED);
    }
    Ok(exit::OK)
}
