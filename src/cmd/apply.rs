//! `convoy apply NAME`: send a planned batch, every row that changes
//! something, in order, with everything `run` does (audit, resume, signals,
//! exit codes). Rows the plan marked `skipped` are never sent.

use super::args::{BatchOutput, ExecArgs};
use super::{Global, send_batch, usage};
use crate::audit::{self, BatchStatus};
use crate::options::{Live, Options};
use crate::send;
use crate::text::shell_quote;
use clap::Args;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The planned batch to send (`convoy plan` printed its name).
    pub batch: String,

    #[command(flatten)]
    pub exec: ExecArgs,

    #[command(flatten)]
    pub out: BatchOutput,

    #[command(flatten)]
    pub metrics: super::args::MetricsArg,
}

/// A plan older than this is applied with a warning.
const STALE: std::time::Duration = std::time::Duration::from_secs(3600);

pub async fn run(g: &Global, a: ApplyArgs) -> Result<ExitCode, super::Error> {
    if a.out.json {
        crate::output::text_to_stderr();
    }
    a.exec
        .refuse_live_flags("apply sends what the plan judged")?;
    if let Err(e) = super::check_free_space(&g.db, a.exec.min_free) {
        return Err(usage(e));
    }
    let db = super::open_existing(g).await?;
    let q = shell_quote(&a.batch);
    let missing = || {
        usage(format_args!(
            "no batch {:?} in {}; `convoy status` lists them",
            a.batch,
            g.db.display()
        ))
    };
    if audit::load::<Options>(&db, &a.batch).await?.is_none() {
        return Err(missing());
    }
    let _claim = db.lock_batch(&a.batch)?;
    // Read under the claim: another process may have just applied it.
    let rec = audit::load::<Options>(&db, &a.batch)
        .await?
        .ok_or_else(missing)?;
    if rec.status != BatchStatus::Planned.as_str() {
        return Err(usage(format_args!(
            "batch {:?} is {}, not planned; `convoy resume {q}` continues it",
            rec.id, rec.status
        )));
    }
    if let Some(age) = rec
        .finished_at
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .and_then(|t| (chrono::Utc::now() - t.to_utc()).to_std().ok())
        .filter(|age| *age > STALE)
    {
        crate::errln!(
            "warning: this plan was judged {} ago; the conversations may have changed since (`convoy plan` again shows the night as it is now)",
            crate::text::show_duration(age)
        );
    }
    let input = super::args::InputArgs::default();
    let mut options = super::args::resolve(&a.exec, &input, Some(&rec.options)).map_err(usage)?;
    // The plan judged every row: they are sent as judged.
    options.live = Live::Off;
    let (sandbox, endpoints) = super::endpoints(&options).await?;
    let pass = audit::begin_pass(&db, &rec.id, &options).await?;
    let plan = crate::plan::carry_over(&db, &rec.id, pass).await?;
    let cancel = CancellationToken::new();
    super::on_signals(cancel.clone(), rec.id.clone());
    let b = send::Batch {
        db: &db,
        id: &rec.id,
        pass,
        options: &options,
        endpoints: &endpoints,
    };
    let code = send_batch(g, &b, &plan, sandbox.is_some(), true, cancel).await?;
    super::batch_done(&a.out, &a.metrics, &db, &rec.id, code).await
}
