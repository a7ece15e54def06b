//! `convoy failures NAME`: the failed, invalid and pending rows as CSV in the
//! source's own format plus `status`, `http_status`, `error`, ready to fix
//! and feed back to `convoy run` (which ignores those three columns).

use super::{Global, usage};
use crate::audit::report;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct FailuresArgs {
    /// The batch.
    pub batch: String,

    /// Write to this file instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,

    /// Only the rows of this failure cluster (numbered by `convoy status NAME`).
    #[arg(long)]
    pub cluster: Option<usize>,

    #[command(flatten)]
    pub db: super::args::DbArg,
}

pub async fn run(g: &Global, a: FailuresArgs) -> Result<ExitCode, super::Error> {
    let db = super::open_existing(g).await?;
    if !crate::audit::batch_exists(&db, &a.batch).await? {
        return Err(usage(format_args!(
            "no batch {:?} in {}; `convoy status` lists them",
            a.batch,
            g.db.display()
        )));
    }
    let cluster = match a.cluster {
        None => None,
        Some(n) => {
            let all = report::clusters(&db, &a.batch).await?;
            match all.into_iter().find(|c| c.cluster == n) {
                Some(c) => Some(c),
                None => {
                    return Err(usage(format_args!(
                        "batch {} has no failure cluster #{n}; `convoy status {}` lists them",
                        a.batch,
                        crate::text::shell_quote(&a.batch)
                    )));
                }
            }
        }
    };
    match &a.output {
        Some(path) => {
            let file = std::fs::File::create(path)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            let n = report::export_failures(
                &db,
                &a.batch,
                cluster.as_ref(),
                std::io::BufWriter::new(file),
            )
            .await?;
            crate::errln!("wrote {n} row(s) to {}", path.display());
        }
        None => {
            report::export_failures(&db, &a.batch, cluster.as_ref(), crate::output::Stdout).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
