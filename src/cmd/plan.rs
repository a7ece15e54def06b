//! `convoy plan SOURCE`: validate every row as `run` does, read the live
//! state of every conversation the batch touches (one GET each, through the
//! lanes), replay the rows on it, and record and show what each would
//! change. Sends no write; `convoy apply NAME` sends the plan.

use super::args::{BatchOutput, ExecArgs, InputArgs};
use super::run::{NewBatch, Started, check_name, start};
use super::{Global, exit, usage};
use crate::audit::report::{self, PlanRow};
use crate::audit::{self, BatchStatus};
use crate::options::Live;
use crate::source::{self, Source};
use crate::text::shell_quote;
use crate::{live, send};
use clap::Args;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub src: super::args::SourceArgs,

    #[command(flatten)]
    pub input: InputArgs,

    #[command(flatten)]
    pub exec: ExecArgs,

    #[command(flatten)]
    pub out: BatchOutput,
}

/// How many conversations the terminal diff shows before "... and N more".
const SHOWN: usize = 20;

pub async fn run(g: &Global, a: PlanArgs) -> Result<ExitCode, super::Error> {
    if a.out.json {
        crate::output::text_to_stderr();
    }
    a.exec
        .refuse_live_flags("plan reads every conversation and judges every row")?;
    if a.exec.limit.is_some() {
        return Err(usage(
            "plan judges every row; --limit belongs to run, resume and apply",
        ));
    }
    let mut options = super::args::resolve(&a.exec, &a.input, None).map_err(usage)?;
    options.live = Live::Plan;
    let source = Source::from_arg(&a.src.source, a.src.table.as_deref()).map_err(usage)?;
    check_name(a.src.batch.as_deref())?;
    let (sandbox, endpoints) = super::endpoints(&options).await?;
    let reader = source::open(&source, options.default_op(), options.csv_format())
        .await
        .map_err(usage)?;
    for w in &reader.columns.warnings {
        crate::errln!("warning: {w}");
    }
    let new = NewBatch {
        batch: a.src.batch.as_deref(),
        min_free: a.exec.min_free,
    };
    let started = start(
        g,
        &new,
        &source,
        reader,
        &options,
        &endpoints,
        BatchStatus::Planned,
    )
    .await?;
    let Started {
        db,
        name,
        claim: _claim,
        plan,
        cancel,
        ..
    } = match started {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let q = shell_quote(&name);
    if let Err(e) = endpoints.require(plan.per_api) {
        audit::set_status(&db, &name, BatchStatus::Failed).await?;
        crate::errln!("error: {e}");
        crate::errln!("nothing was read; once it is set, plan again");
        return Ok(ExitCode::from(exit::USAGE));
    }
    let to_judge = audit::count_sendable(&db, &name, 1).await?;
    let b = send::Batch {
        db: &db,
        id: &name,
        pass: 1,
        options: &options,
        endpoints: &endpoints,
    };
    let report = match send::phase(&b, cancel, g.quiet, to_judge).await {
        Ok(r) => r,
        Err(e) => {
            let _ = audit::set_status(&db, &name, BatchStatus::Interrupted).await;
            return Err(super::Error::StoppedEarly(send::StoppedEarly(e)));
        }
    };
    if report.interrupted || !report.stops.is_empty() {
        audit::set_status(&db, &name, BatchStatus::Interrupted).await?;
        for stop in &report.stops {
            crate::errln!(
                "the {} API was stopped while reading: {:?}",
                stop.api,
                stop.why
            );
        }
        crate::errln!(
            "the plan is incomplete: rows not judged stay pending. Plan again, or `convoy resume {q}` sends them unjudged"
        );
        return Ok(ExitCode::from(if report.interrupted {
            exit::INTERRUPTED
        } else {
            exit::STOPPED
        }));
    }
    // Its `finished_at` says when it was judged (`apply` warns when that is long ago).
    audit::set_status(&db, &name, BatchStatus::Planned).await?;
    let summary = show(&db, &name, a.out.json, sandbox.is_some()).await?;
    if !a.out.json {
        crate::outln!(
            "nothing was sent; `convoy apply {q}` sends the {} row(s) that change something",
            summary.change
        );
    }
    Ok(ExitCode::from(if summary.fail + summary.invalid > 0 {
        exit::ROWS_FAILED
    } else {
        exit::OK
    }))
}

/// What a plan found, in counts.
#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    /// Rows that change something.
    change: u64,
    /// Rows that change nothing (`skipped`).
    unchanged: u64,
    /// Rows that would fail (their conversation is unknown, or could not be read).
    fail: u64,
    invalid: u64,
    /// Conversations read.
    conversations_read: u64,
}

/// Prints the plan: a summary, then a compact diff per conversation (or
/// the whole plan as JSON).
async fn show(
    db: &audit::Db,
    name: &str,
    json: bool,
    on_sandbox: bool,
) -> Result<Summary, super::Error> {
    let mut sum = Summary {
        conversations_read: report::live_counts(db, name).await?.pre_images,
        ..Summary::default()
    };
    // Counted first, so the summary comes before the diff.
    report::plan_rows(db, name, |r| {
        match (r.status.as_str(), &r.error) {
            ("skipped", _) => sum.unchanged += 1,
            ("invalid", _) => sum.invalid += 1,
            (_, Some(_)) => sum.fail += 1,
            _ => sum.change += 1,
        }
        Ok(())
    })
    .await?;
    if json {
        let mut rows = Vec::new();
        report::plan_rows(db, name, |r| {
            rows.push(r);
            Ok(())
        })
        .await?;
        crate::output::json(&serde_json::json!({
            "batch": name,
            "status": "planned",
            "summary": sum,
            "rows": rows,
        }))?;
        return Ok(sum);
    }
    crate::outln!(
        "plan {name}{}: {} row(s) change something, {} change nothing (skipped), {} would fail, {} invalid; {} conversation(s) read",
        if on_sandbox {
            " against the sandbox"
        } else {
            ""
        },
        sum.change,
        sum.unchanged,
        sum.fail,
        sum.invalid,
        sum.conversations_read
    );
    let mut shown = 0usize;
    let mut more = 0usize;
    let mut current: Option<(Option<String>, Option<String>)> = None;
    report::plan_rows(db, name, |r| {
        let key = (r.api.clone(), r.conversation_id.clone());
        if current.as_ref() != Some(&key) {
            current = Some(key);
            if shown == SHOWN {
                more += 1;
                return Ok(());
            }
            shown += 1;
            crate::outln!(
                "{} {}{}",
                r.api.as_deref().unwrap_or("?"),
                r.conversation_id
                    .as_deref()
                    .unwrap_or("(no conversation_id)"),
                r.agent_id
                    .as_deref()
                    .map(|a| format!(" (agent {a})"))
                    .unwrap_or_default()
            );
        } else if shown == SHOWN && more > 0 {
            return Ok(());
        }
        show_row(&r);
        Ok(())
    })
    .await?;
    if more > 0 {
        crate::outln!(
            "... and {more} more conversation(s) (`convoy plan ... --json` or the audit table show them all)"
        );
    }
    Ok(sum)
}

fn show_row(r: &PlanRow) {
    let op =
        r.op.as_deref()
            .map(|o| o.split_once('.').map_or(o, |(_, name)| name))
            .unwrap_or("?");
    let head = format!("  row {} {op}", r.row_number);
    let changes: Option<serde_json::Value> = r
        .changes
        .as_deref()
        .and_then(|c| serde_json::from_str(c).ok());
    match (r.status.as_str(), &changes, &r.error) {
        ("skipped", _, Some(why)) => crate::outln!("{head}: {why}"),
        (_, Some(serde_json::Value::Object(c)), _) => {
            for (i, line) in live::describe(c).into_iter().enumerate() {
                if i == 0 {
                    crate::outln!("{head}: {line}");
                } else {
                    crate::outln!("  {:width$}  {line}", "", width = head.len() - 2);
                }
            }
        }
        (status, _, Some(e)) => crate::outln!("{head}: {status}: {e}"),
        (status, _, None) => crate::outln!("{head}: {status}"),
    }
}
