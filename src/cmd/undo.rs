//! `convoy undo NAME`: build a new batch (by default `undo-NAME`) that puts
//! back what batch NAME changed, where the APIs allow it, and send it as an
//! ordinary batch. Each conversation is read first and left alone when it
//! no longer holds what NAME left there (unless `--force`).

use super::args::{BatchOutput, ExecArgs, InputArgs};
use super::{Global, exit, send_batch, usage};
use crate::audit::{self, BatchStatus, Origin};
use crate::options::{Live, Options};
use crate::plan::PlanSummary;
use crate::text::shell_quote;
use crate::{send, undo};
use clap::Args;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct UndoArgs {
    /// The batch to undo.
    pub batch: String,

    /// The undo batch's name [default: undo-NAME]
    #[arg(long = "batch", value_name = "UNDO")]
    pub undo_batch: Option<String>,

    /// Print the undo plan and what cannot be undone; send and record nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Undo a conversation even when it changed since the batch (by default it is left alone as a conflict).
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub exec: ExecArgs,

    #[command(flatten)]
    pub out: BatchOutput,

    #[command(flatten)]
    pub metrics: super::args::MetricsArg,
}

/// How many lines of each list are printed before "... and N more".
const SHOWN: usize = 20;

pub async fn run(g: &Global, a: UndoArgs) -> Result<ExitCode, super::Error> {
    if a.out.json {
        crate::output::text_to_stderr();
    }
    a.exec
        .refuse_live_flags("undo reads each conversation before undoing it")?;
    let db = super::open_existing(g).await?;
    let Some(rec) = audit::load::<Options>(&db, &a.batch).await? else {
        return Err(usage(format_args!(
            "no batch {:?} in {}; `convoy status` lists them",
            a.batch,
            g.db.display()
        )));
    };
    if db.batch_is_held(&rec.id) {
        return Err(usage(format_args!(
            "batch {:?} is being sent by another convoy process; undo it once that ends",
            rec.id
        )));
    }
    let name = a
        .undo_batch
        .clone()
        .unwrap_or_else(|| format!("undo-{}", rec.id));
    super::run::check_name(Some(&name))?;
    let mut options =
        super::args::resolve(&a.exec, &InputArgs::default(), Some(&rec.options)).map_err(usage)?;
    options.live = Live::Undo { force: a.force };
    options.limit = a.exec.limit;
    let (sandbox, endpoints) = super::endpoints(&options).await?;
    let built = undo::build(&db, &rec.id, &endpoints).await?;
    let calls = built
        .rows
        .iter()
        .filter(|(r, _)| r.method.is_some())
        .count();
    let q = shell_quote(&name);

    if a.dry_run {
        crate::outln!(
            "undo of {}: {} conversation(s) changed; {calls} call(s) would put fields back; {} field(s) cannot be undone",
            rec.id,
            built.conversations,
            built.irreversible.len()
        );
        for (r, changes) in built
            .rows
            .iter()
            .filter(|(r, _)| r.method.is_some())
            .take(SHOWN)
        {
            let diff = changes
                .as_deref()
                .and_then(|c| serde_json::from_str(c).ok())
                .map(|c| crate::live::describe(&c).join("; "))
                .unwrap_or_default();
            crate::outln!(
                "  {} {}: {diff}",
                r.api.map_or("?", |a| a.name()),
                r.conversation_id.as_deref().unwrap_or("?")
            );
        }
        if calls > SHOWN {
            crate::outln!("  ... and {} more", calls - SHOWN);
        }
        show_irreversible(&built.irreversible);
        crate::outln!(
            "dry run: nothing was sent or recorded; each conversation is read before it is undone"
        );
        return Ok(ExitCode::from(exit::OK));
    }

    if let Err(e) = super::check_free_space(&g.db, a.exec.min_free) {
        return Err(usage(e));
    }
    let _claim = db.lock_batch(&name)?;
    let origin = Origin {
        location: format!("undo of {}", rec.id),
        kind: "undo",
        table: None,
    };
    let columns: Vec<String> = undo::COLUMNS.iter().map(|c| (*c).to_owned()).collect();
    if !audit::create_from(
        &db,
        &name,
        &origin,
        &columns,
        &options,
        BatchStatus::Running,
    )
    .await?
    {
        return Err(usage(format_args!(
            "batch {name:?} already exists in {}; to continue it: convoy resume {q}; or name another with --batch",
            g.db.display()
        )));
    }
    audit::insert_built(&db, &name, &built.rows).await?;
    let mut plan = PlanSummary {
        rows: built.rows.len() as u64,
        ..PlanSummary::default()
    };
    for (r, _) in built.rows.iter().filter(|(r, _)| r.method.is_some()) {
        if let Some(api) = r.api {
            plan.per_api[api as usize] += 1;
        }
    }
    let cancel = CancellationToken::new();
    super::on_signals(cancel.clone(), name.clone());
    let b = send::Batch {
        db: &db,
        id: &name,
        pass: 1,
        options: &options,
        endpoints: &endpoints,
    };
    let code = send_batch(g, &b, &plan, sandbox.is_some(), false, cancel).await?;
    show_irreversible(&built.irreversible);
    let conflicts = audit::report::conflicts(&db, &name).await?;
    if !conflicts.is_empty() {
        crate::outln!(
            "{} conversation(s) changed since {} and were left alone (--force undoes them anyway):",
            conflicts.len(),
            rec.id
        );
        for (api, conversation_id, error) in conflicts.iter().take(SHOWN) {
            crate::outln!("  {api} {conversation_id}: {error}");
        }
        if conflicts.len() > SHOWN {
            crate::outln!(
                "  ... and {} more (`convoy status {q}`)",
                conflicts.len() - SHOWN
            );
        }
    }
    let code = if code == exit::OK && !conflicts.is_empty() {
        exit::ROWS_FAILED
    } else {
        code
    };
    super::batch_done(&a.out, &a.metrics, &db, &name, code).await
}

fn show_irreversible(list: &[undo::Irreversible]) {
    if list.is_empty() {
        return;
    }
    crate::outln!("cannot be undone ({}):", list.len());
    for i in list.iter().take(SHOWN) {
        crate::outln!("  {} {} {}: {}", i.api, i.conversation_id, i.field, i.why);
    }
    if list.len() > SHOWN {
        crate::outln!(
            "  ... and {} more (the undo batch's skipped rows list them all)",
            list.len() - SHOWN
        );
    }
}
