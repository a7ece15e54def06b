//! `convoy run SOURCE`: plan every row into a new batch, then send.

use super::args::{ExecArgs, InputArgs};
use super::{Global, send_batch, usage};
use crate::audit::{self, Db};
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
    /// A .csv file, - for CSV on stdin, or a SQLite file (see --table).
    pub source: String,

    /// The batch name [default: the source's stem and a UTC timestamp]
    #[arg(long)]
    pub batch: Option<String>,

    /// The table of a SQLite source [default: edits]
    #[arg(long)]
    pub table: Option<String>,

    /// Validate and print each call that would be sent (method, URL, body); send nothing, write nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub input: InputArgs,

    #[command(flatten)]
    pub exec: ExecArgs,

    #[command(flatten)]
    pub out: super::args::BatchOutput,
}

pub async fn run(g: &Global, a: RunArgs) -> Result<ExitCode, super::Error> {
    if a.out.json {
        crate::output::text_to_stderr();
    }
    let options = match super::args::resolve(&a.exec, &a.input, None) {
        Ok(o) => o,
        Err(e) => return Err(usage(e)),
    };
    let source = match Source::from_arg(&a.source, a.table.as_deref()) {
        Ok(s) => s,
        Err(e) => return Err(usage(e)),
    };
    if let Some(name) = &a.batch
        && (name.trim().is_empty() || name.len() > 200)
    {
        return Err(usage("--batch: give a name of 1 to 200 characters"));
    }
    let (sandbox, endpoints) = super::endpoints(&options).await?;
    let reader = match source::open(&source, options.default_op(), options.csv_format()).await {
        Ok(r) => r,
        Err(e) => return Err(usage(e)),
    };
    for w in &reader.columns.warnings {
        eprintln!("warning: {w}");
    }
    if a.dry_run {
        return dry_run(reader, &endpoints).await;
    }

    if let Err(e) = super::check_free_space(&g.db, a.exec.min_free) {
        return Err(usage(e));
    }
    let db = Db::open(&g.db).await?;
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
    let candidates: Vec<String> = match &a.batch {
        Some(name) => vec![name.clone()],
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
        if audit::create(&db, name, &source, &reader.columns.names, &options).await? {
            claimed = Some((name.clone(), claim));
            break;
        }
    }
    let Some((name, _claim)) = claimed else {
        let name = &candidates[0];
        return Err(usage(format_args!(
            "batch {name:?} already exists in {}; to continue it: convoy resume {}",
            g.db.display(),
            crate::text::shell_quote(name)
        )));
    };
    let columns = reader.columns.names.clone();
    let cancel = CancellationToken::new();
    super::on_signals(cancel.clone(), name.clone());
    let progress = Progress::planning(g.quiet, &format!("batch {name}"));
    let planned = plan::plan(&db, &name, reader, &endpoints, &progress, &cancel).await;
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
        return super::interrupted_while_planning(&db, &name, &plan, source == Source::Stdin).await;
    }
    if plan.rows == 0 {
        eprintln!("note: the source has a header but no rows");
    }
    let b = send::Batch {
        db: &db,
        id: &name,
        pass: 1,
        options: &options,
        endpoints: &endpoints,
    };
    // Rows from a `convoy failures` export must not undo newer edits.
    let from_export = columns.iter().any(|c| c == "from_batch");
    let code = send_batch(g, &b, &plan, sandbox.is_some(), from_export, cancel).await?;
    super::print_json(a.out.json, &db, &name).await?;
    Ok(code)
}

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
    while let Some(row) = reader.rows.recv().await {
        let row = match row {
            Ok(r) => r,
            Err(e) => return Err(usage(e)),
        };
        let (planned, warnings) = plan::plan_row(&reader.columns, &row, endpoints);
        match seen.add(&[(planned.row_key.as_str(), row.number)]).await {
            Ok(()) => {}
            Err(crate::audit::SeenError::Duplicate(dup)) => return Err(usage(dup)),
            Err(crate::audit::SeenError::Db(e)) => return Err(e.into()),
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
    drop(out);
    if let Err(e) = endpoints.require(per_api) {
        eprintln!("warning: {e}; a real run would stop here");
    }
    eprintln!(
        "dry run: {calls} call(s) would be sent, {invalid} row(s) invalid; nothing was sent or written"
    );
    Ok(ExitCode::from(if invalid > 0 {
        super::exit::ROWS_FAILED
    } else {
        super::exit::OK
    }))
}
