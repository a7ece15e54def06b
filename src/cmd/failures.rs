//! `convoy failures NAME`: the failed, invalid and pending rows as CSV.

use super::Global;
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
}

pub async fn run(_g: &Global, a: FailuresArgs) -> anyhow::Result<ExitCode> {
    Ok(super::usage(format_args!(
        "failures is not built yet (batch {})",
        a.batch
    )))
}
