//! `convoy completions SHELL` and `convoy man`: shell completions and the
//! man page, generated from the clap definitions themselves (as ripgrep and
//! hyperfine do), so they never drift from the real flags.

use clap::Args;
use clap_complete::Shell;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    pub shell: Shell,
}

/// `cmd`: the whole command line, as the caller (the `cli` module) defines it.
pub fn completions(a: CompletionsArgs, mut cmd: clap::Command) -> Result<ExitCode, super::Error> {
    let mut out = crate::output::Stdout;
    clap_complete::generate(a.shell, &mut cmd, "convoy", &mut out);
    Ok(ExitCode::SUCCESS)
}

pub fn man(cmd: clap::Command) -> Result<ExitCode, super::Error> {
    let mut out = crate::output::Stdout;
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .map_err(anyhow::Error::from)?;
    Ok(ExitCode::SUCCESS)
}
