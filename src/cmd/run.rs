//! `convoy run SOURCE`: plan every row into a new batch, then send.

use super::args::{ExecArgs, InputArgs};
use super::{Global, send_batch, usage};
use crate::audit::{self, BatchStatus, Db};
use crate::call::Endpoints;
use crate::plan::{self, PlanError};
use crate::progress::Progress;
use crate::send;
use crate::source::{self, Source};
use clap::Args;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub src: super::args::SourceArgs,

    /// Validate and print each call that would be sent (method, URL, body); send nothing, write nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub input: InputArgs,

    #[command(flatten)]
    pub exec: ExecArgs,

    #[command(flatten)]
    pub out: super::args::BatchOutput,

    #[command(flatten)]
    pub metrics: super::args::MetricsArg,
}

pub async fn run(g: &Global, a: RunArgs) -> Result<ExitCode, super::Error> {
    if a.out.json {
        crate::output::text_to_stderr();
    }
    let options = match super::args::resolve(&a.exec, &a.input, None) {
        Ok(o) => o,
        Err(e) => return Err(usage(e)),
    };
    let source = match Source::from_arg(&a.src.source, a.src.table.as_deref()) {
        Ok(s) => s,
        Err(e) => return Err(usage(e)),
    };
    check_name(a.src.batch.as_deref())?;
    let (sandbox, endpoints) = super::endpoints(&options).await?;
    let reader = match source::open(&source, options.default_op(), options.csv_format()).await {
        Ok(r) => r,
        Err(e) => return Err(usage(e)),
    };
    for w in &reader.columns.warnings {
        crate::errln!("warning: {w}");
    }
    if a.dry_run {
        return dry_run(reader, &endpoints).await;
    }

    let Started {
        db,
        name,
        claim: _claim,
        plan,
        cancel,
        from_export,
    } = match start(
        g,
        &NewBatch {
            batch: a.src.batch.as_deref(),
            min_free: a.exec.min_free,
        },
        &source,
        reader,
        &options,
        &endpoints,
        BatchStatus::Running,
    )
    .await?
    {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let b = send::Batch {
        db: &db,
        id: &name,
        pass: 1,
        options: &options,
        endpoints: &endpoints,
    };
    let code = send_batch(g, &b, &plan, sandbox.is_some(), from_export, cancel).await?;
    super::batch_done(&a.out, &a.metrics, &db, &name, code).await
}

/// `--batch NAME`: 1 to 200 characters.
pub fn check_name(name: Option<&str>) -> Result<(), super::Error> {
    match name {
        Some(n) if n.trim().is_empty() || n.len() > 200 => {
            Err(usage("--batch: give a name of 1 to 200 characters"))
        }
        _ => Ok(()),
    }
}

/// What names and guards a new batch.
pub struct NewBatch<'a> {
    pub batch: Option<&'a str>,
    pub min_free: Option<u64>,
}

/// A batch recorded and its rows planned, ready to send (or to judge).
pub struct Started {
    pub db: Db,
    pub name: String,
    /// Held until the process ends: no other process sends the batch meanwhile.
    pub claim: audit::BatchLock,
    pub plan: plan::PlanSummary,
    pub cancel: CancellationToken,
    /// Rows from a `convoy failures` export (which must not undo newer edits).
    pub from_export: bool,
}

/// Records a new batch (`run` and `plan`): claims a name, then reads and
/// validates every row into it. `Err(code)` when a signal came while reading.
pub async fn start(
    g: &Global,
    a: &NewBatch<'_>,
    source: &Source,
    reader: source::Reader,
    options: &crate::options::Options,
    endpoints: &Endpoints,
    status: BatchStatus,
) -> Result<Result<Started, ExitCode>, super::Error> {
    if let Err(e) = super::check_free_space(&g.db, a.min_free) {
        return Err(usage(e));
    }
    let db = super::open(g).await?;
    // One shell word: spaces and the like in a file name become dashes.
    let stem: String = source
        .stem()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let stamp = format!("{}-{}", stem, chrono::Utc::now().format("%Y%m%dT%H%M%SZ"));
    // A name given with --batch is refused when taken; a default one taken
    // (two runs of one file within a second) gets -2, -3, ...
    let candidates: Vec<String> = match a.batch {
        Some(name) => vec![name.to_owned()],
        None => std::iter::once(stamp.clone())
            .chain((2..100).map(|n| format!("{stamp}-{n}")))
            .collect(),
    };
    let mut claimed = None;
    for name in &candidates {
        // Held until this process ends: a `resume` of this batch meanwhile refuses.
        let claim = match db.lock_batch(name) {
            Err(crate::audit::ClaimError::Busy(_)) if a.batch.is_none() => continue,
            other => other?,
        };
        if audit::create(&db, name, source, &reader.columns.names, options, status).await? {
            claimed = Some((name.clone(), claim));
            break;
        }
    }
    let Some((name, claim)) = claimed else {
        let name = &candidates[0];
        return Err(usage(format_args!(
            "batch {name:?} already exists in {}; to continue it: convoy resume {}",
            g.db.display(),
            crate::text::shell_quote(name)
        )));
    };
    let from_export = reader.columns.names.iter().any(|c| c == "from_batch");
    let cancel = CancellationToken::new();
    super::on_signals(cancel.clone(), name.clone());
    let progress = Progress::planning(g.quiet, &format!("batch {name}"));
    let planned = plan::plan(&db, &name, reader, endpoints, &progress, &cancel).await;
    progress.finish();
    let plan = match planned {
        Ok(p) => p,
        Err(PlanError::Db(e)) => return Err(e.into()),
        Err(e) => {
            audit::discard(&db, &name).await?;
            return Err(usage(format_args!("{e}; nothing was sent")));
        }
    };
    if cancel.is_cancelled() {
        let code =
            super::interrupted_while_planning(&db, &name, &plan, *source == Source::Stdin).await?;
        return Ok(Err(code));
    }
    if plan.rows == 0 {
        crate::errln!("note: the source has a header but no rows");
    }
    Ok(Ok(Started {
        db,
        name,
        claim,
        plan,
        cancel,
        from_export,
    }))
}

/// Rows `--dry-run` checks for repeated keys at once.
const DRY_RUN_CHUNK: usize = 1024;

/// `--dry-run`: every row validated and its call printed; no database, no network.
async fn dry_run(
    mut reader: source::Reader,
    endpoints: &Endpoints,
) -> Result<ExitCode, super::Error> {
    let mut seen = crate::audit::SeenKeys::in_memory().await?;
    let (mut calls, mut invalid) = (0u64, 0u64);
    let mut per_api = [0u64; 2];
    let progress = Progress::none();
    let mut out = std::io::BufWriter::new(crate::output::Stdout);
    // Rows are checked for repeated keys a chunk at a time (one query per
    // chunk, not per row: a million rows took 116 s), then printed in
    // order. A repeated key or an unreadable row is the error once the rows
    // before it are printed.
    let mut chunk = Vec::with_capacity(DRY_RUN_CHUNK);
    let (mut rows_done, mut unreadable) = (false, None);
    while !rows_done {
        while chunk.len() < DRY_RUN_CHUNK {
            match reader.rows.recv().await {
                Some(Ok(row)) => {
                    let (planned, warnings) = plan::plan_row(&reader.columns, &row, endpoints);
                    chunk.push((row.number, planned, warnings));
                }
                Some(Err(e)) => {
                    // The rows before it are printed first.
                    (rows_done, unreadable) = (true, Some(e));
                    break;
                }
                None => {
                    rows_done = true;
                    break;
                }
            }
        }
        let keys: Vec<(&str, u64)> = chunk
            .iter()
            .map(|(n, p, _)| (p.row_key.as_str(), *n))
            .collect();
        let repeated = match seen.add(&keys).await {
            Ok(()) => None,
            Err(crate::audit::SeenError::Duplicate(dup)) => Some(dup),
            Err(crate::audit::SeenError::Db(e)) => return Err(e.into()),
        };
        for (number, planned, warnings) in chunk.drain(..) {
            if repeated.as_ref().is_some_and(|d| number >= d.row_number) {
                break;
            }
            for w in warnings {
                progress.println(&format!("warning: {w}"));
            }
            match (planned.method, planned.url) {
                (Some(m), Some(u)) => {
                    calls += 1;
                    if let Some(api) = planned.api {
                        per_api[api as usize] += 1;
                    }
                    use std::io::Write;
                    writeln!(
                        out,
                        "{m} {u}{}",
                        planned
                            .request_body
                            .map(|b| format!(" {b}"))
                            .unwrap_or_default()
                    )
                    .map_err(anyhow::Error::from)?;
                }
                _ => {
                    invalid += 1;
                    progress.println(&format!("invalid: {}", planned.error.unwrap_or_default()));
                }
            }
        }
        if let Some(dup) = repeated {
            drop(out);
            return Err(usage(dup));
        }
    }
    if let Some(e) = unreadable {
        drop(out);
        return Err(usage(e));
    }
    drop(out);
    if let Err(e) = endpoints.require(per_api) {
        crate::errln!("warning: {e}; a real run would stop here");
    }
    crate::errln!(
        "dry run: {calls} call(s) would be sent, {invalid} row(s) invalid; nothing was sent or written"
    );
    Ok(ExitCode::from(if invalid > 0 {
        super::exit::ROWS_FAILED
    } else {
        super::exit::OK
    }))
}
