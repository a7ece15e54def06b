//! The command line: clap definitions (their doc comments are the help) and
//! dispatch to one module per command under `cmd/`.

use crate::cmd::args::DbArg;
use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Batch imports of conversation edits into the Attention and VG APIs, audited in SQLite.
#[derive(Debug, Parser)]
#[command(name = "convoy", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// The audit database (also after the command) [env: CONVOY_DB] [default: convoy.db]
    #[arg(long)]
    pub db: Option<PathBuf>,

    /// No progress bar or progress lines (also after run and resume).
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a batch: validate every row, then send each as one API call.
    Run(crate::cmd::run::RunArgs),
    /// Continue a batch: send every row that has not succeeded.
    Resume(crate::cmd::resume::ResumeArgs),
    /// Read the live state of every conversation a source touches and show what each row would change; sends no write.
    Plan(crate::cmd::plan::PlanArgs),
    /// Send a planned batch: every row that changes something.
    Apply(crate::cmd::apply::ApplyArgs),
    /// Put back what a batch changed, where the APIs allow it (a new batch, undo-NAME).
    Undo(crate::cmd::undo::UndoArgs),
    /// Show all batches, or one batch in detail.
    Status(crate::cmd::status::StatusArgs),
    /// Draw a batch (the latest by default) as one self-contained HTML page.
    Report(crate::cmd::report::ReportArgs),
    /// Remove old batches' bulk (or rows) from the audit database and give the space back.
    Prune(crate::cmd::prune::PruneArgs),
    /// Export a batch's failed, invalid and pending rows as CSV, ready to fix and run again.
    Failures(crate::cmd::failures::FailuresArgs),
    /// Serve a local simulator of both APIs.
    Sandbox(crate::cmd::sandbox::SandboxArgs),
    /// Print shell completions (bash, zsh, fish, ...) to stdout.
    Completions(crate::cmd::completions::CompletionsArgs),
    /// Print the man page (roff) to stdout.
    Man,
}

pub async fn dispatch(cli: Cli) -> Result<ExitCode, crate::cmd::Error> {
    let Cli { command, db, quiet } = cli;
    // After the command wins over before it, then CONVOY_DB, then the default.
    let global = |sub: &DbArg, sub_quiet: bool| crate::cmd::Global {
        db: sub
            .db
            .clone()
            .or_else(|| db.clone())
            .or_else(|| std::env::var_os("CONVOY_DB").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("convoy.db")),
        quiet: quiet || sub_quiet,
    };
    match command {
        Command::Run(a) => crate::cmd::run::run(&global(&a.out.db, a.out.quiet.quiet), a).await,
        Command::Resume(a) => {
            crate::cmd::resume::run(&global(&a.out.db, a.out.quiet.quiet), a).await
        }
        Command::Plan(a) => crate::cmd::plan::run(&global(&a.out.db, a.out.quiet.quiet), a).await,
        Command::Apply(a) => crate::cmd::apply::run(&global(&a.out.db, a.out.quiet.quiet), a).await,
        Command::Undo(a) => crate::cmd::undo::run(&global(&a.out.db, a.out.quiet.quiet), a).await,
        Command::Status(a) => crate::cmd::status::run(&global(&a.db, false), a).await,
        Command::Report(a) => crate::cmd::report::run(&global(&a.db, false), a).await,
        Command::Prune(a) => crate::cmd::prune::run(&global(&a.db, false), a).await,
        Command::Failures(a) => crate::cmd::failures::run(&global(&a.db, false), a).await,
        Command::Sandbox(a) => crate::cmd::sandbox::run(a).await,
        Command::Completions(a) => crate::cmd::completions::completions(a, Cli::command()),
        Command::Man => crate::cmd::completions::man(Cli::command()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
