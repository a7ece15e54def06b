//! `convoy status [NAME]`: all batches, newest first, or one batch in detail.

use super::Global;
use crate::audit::Db;
use crate::batch;
use clap::Args;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One batch to show in detail.
    pub batch: Option<String>,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(g: &Global, a: StatusArgs) -> anyhow::Result<ExitCode> {
    if !g.db.exists() {
        return Ok(super::usage(format_args!(
            "no audit database at {}; run a batch first, or pass --db",
            g.db.display()
        )));
    }
    let db = Db::open(&g.db).await?;
    let batches: Vec<(String, String, String, Option<String>)> = match &a.batch {
        Some(name) => {
            sqlx::query_as("SELECT id, status, created_at, finished_at FROM batches WHERE id = ?1")
                .bind(name)
                .fetch_all(&db.pool)
                .await?
        }
        None => sqlx::query_as(
            "SELECT id, status, created_at, finished_at FROM batches ORDER BY created_at DESC, id",
        )
        .fetch_all(&db.pool)
        .await?,
    };
    if let (Some(name), true) = (&a.batch, batches.is_empty()) {
        return Ok(super::usage(format_args!(
            "no batch {name:?} in {}",
            g.db.display()
        )));
    }
    let mut out = Vec::new();
    for (id, status, created, finished) in batches {
        let t = batch::tally(&db, &id).await?;
        out.push(serde_json::json!({
            "batch": id, "status": status, "created_at": created, "finished_at": finished, "counts": t,
        }));
        if !a.json {
            println!(
                "{id}  {status:<11} {created}  rows {}  succeeded {}  failed {}  invalid {}  pending {}",
                t.rows,
                t.succeeded,
                t.failed,
                t.invalid,
                t.pending + t.in_flight
            );
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}
