//! `convoy resume NAME`: continue a batch from its recorded source, sending
//! every row that has not succeeded, and never a row that has.

use super::args::{ExecArgs, InputArgs};
use super::{Global, send_batch, usage};
use crate::audit;
use crate::plan::{self, PlanError};
use crate::progress::Progress;
use crate::send;
use crate::source::{self, Source};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The batch to continue.
    pub batch: String,

    #[command(flatten)]
    pub input: InputArgs,

    #[command(flatten)]
    pub exec: ExecArgs,

    #[command(flatten)]
    pub out: super::args::BatchOutput,

    #[command(flatten)]
    pub metrics: super::args::MetricsArg,
}

pub async fn run(g: &Global, a: ResumeArgs) -> Result<ExitCode, super::Error> {
    if a.out.json {
        crate::output::text_to_stderr();
    }
    if let Err(e) = super::check_free_space(&g.db, a.exec.min_free) {
        return Err(usage(e));
    }
    let db = super::open_existing(g).await?;
    let Some(rec) = audit::load::<crate::options::Options>(&db, &a.batch).await? else {
        return Err(usage(format_args!(
            "no batch {:?} in {}; `convoy status` lists them",
            a.batch,
            g.db.display()
        )));
    };
    // Held until this process ends: no other process can send the batch meanwhile.
    let _claim = db.lock_batch(&rec.id)?;
    // Read again under the claim: another process may have just finished a pass.
    let Some(rec) = audit::load::<crate::options::Options>(&db, &a.batch).await? else {
        return Err(usage(format_args!("batch {:?} is gone", a.batch)));
    };
    if rec.status == crate::audit::BatchStatus::Planned.as_str() {
        return Err(usage(format_args!(
            "batch {:?} is a plan that was never applied; `convoy apply {}` sends it",
            rec.id,
            crate::text::shell_quote(&rec.id)
        )));
    }
    let options = match super::args::resolve(&a.exec, &a.input, Some(&rec.options)) {
        Ok(o) => o,
        Err(e) => return Err(usage(e)),
    };
    let (sandbox, endpoints) = super::endpoints(&options).await?;
    let source = match rec.source_kind.as_str() {
        "stdin" | "undo" => None,
        "sqlite" => Some(Source::Sqlite {
            path: PathBuf::from(&rec.source),
            table: rec.source_table.clone().unwrap_or_else(|| "edits".into()),
        }),
        _ => Some(Source::Csv(PathBuf::from(&rec.source))),
    };
    let reader = match &source {
        Some(s) => match source::open(s, options.default_op(), options.csv_format()).await {
            Ok(r) => Some(r),
            Err(e) => {
                return Err(usage(format_args!(
                    "{e}; the batch was read from {s}, and is left as it was"
                )));
            }
        },
        None => None,
    };

    let pass = audit::begin_pass(&db, &rec.id, &options).await?;
    let cancel = CancellationToken::new();
    super::on_signals(cancel.clone(), rec.id.clone());
    let plan = match reader {
        None => {
            if rec.source_kind == "stdin" {
                crate::errln!(
                    "note: the batch was read from stdin, which cannot be read again; its unfinished rows are sent as recorded"
                );
            }
            plan::carry_over(&db, &rec.id, pass).await?
        }
        Some(reader) => {
            for w in &reader.columns.warnings {
                crate::errln!("warning: {w}");
            }
            let progress = Progress::planning(g.quiet, &format!("batch {}", rec.id));
            let found =
                plan::reconcile(&db, &rec.id, pass, reader, &endpoints, &progress, &cancel).await;
            progress.finish();
            match found {
                Ok(r) if cancel.is_cancelled() => {
                    return super::interrupted_while_planning(&db, &rec.id, &r.plan, false).await;
                }
                Ok(r) => {
                    if r.added > 0 {
                        crate::errln!(
                            "note: {} row(s) new in the source since the batch began are included",
                            r.added
                        );
                    }
                    if r.changed > 0 {
                        crate::errln!(
                            "note: {} unfinished row(s) changed in the source and were validated again",
                            r.changed
                        );
                    }
                    if r.changed_after_success > 0 {
                        crate::errln!(
                            "warning: {} row(s) changed in the source after they succeeded; they are not sent again",
                            r.changed_after_success
                        );
                    }
                    if r.gone_count > 0 {
                        crate::errln!(
                            "warning: {} unfinished row(s) of the batch are no longer in the source and are not sent: {}{}",
                            r.gone_count,
                            r.gone.join(", "),
                            if r.gone_count > r.gone.len() as u64 {
                                ", ..."
                            } else {
                                ""
                            }
                        );
                    }
                    r.plan
                }
                Err(PlanError::Db(e)) => return Err(e.into()),
                Err(e) => {
                    audit::set_status(&db, &rec.id, audit::BatchStatus::Failed).await?;
                    return Err(usage(format_args!("{e}; nothing was sent")));
                }
            }
        }
    };
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
