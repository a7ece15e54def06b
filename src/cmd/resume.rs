//! `convoy resume NAME`: continue a batch, sending every row that has not succeeded.

use super::Global;
use crate::cli::{ExecArgs, InputArgs};
use clap::Args;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The batch to continue.
    pub batch: String,

    #[command(flatten)]
    pub input: InputArgs,

    #[command(flatten)]
    pub exec: ExecArgs,
}

pub async fn run(_g: &Global, a: ResumeArgs) -> anyhow::Result<ExitCode> {
    Ok(super::usage(format_args!(
        "resume is not built yet (batch {})",
        a.batch
    )))
}
