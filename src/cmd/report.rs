//! `convoy report [NAME] [--output FILE]`: one batch (the latest unless
//! named) as one self-contained HTML page, drawn from the audit database.

use super::{Global, exit, usage};
use crate::report;
use crate::text::shell_quote;
use clap::Args;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The batch to draw [default: the latest].
    pub batch: Option<String>,

    /// Write the page to FILE instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,

    #[command(flatten)]
    pub db: super::args::DbArg,
}

pub async fn run(g: &Global, a: ReportArgs) -> Result<ExitCode, super::Error> {
    let db = super::open_existing(g).await?;
    let name = match a.batch {
        Some(n) => n,
        None => crate::audit::latest_batch(&db)
            .await?
            .ok_or_else(|| usage("the audit database holds no batch yet; run one first"))?,
    };
    let q = shell_quote(&name);
    if a.output.is_none() && std::io::stdout().is_terminal() {
        crate::errln!(
            "the report is an HTML page; save it with `convoy report {q} > night.html` or `convoy report {q} --output night.html`, then open it in a browser. Nothing written"
        );
        return Ok(ExitCode::from(exit::USAGE));
    }
    db.map_for_reading().await;
    let night = report::night(&db, &name)
        .await?
        .ok_or_else(|| usage(format!("no batch named {q}; `convoy status` lists them")))?;
    let page = report::page::render(&night);
    match a.output {
        Some(path) => {
            std::fs::write(&path, &page).map_err(|e| {
                usage(format!(
                    "cannot write the report to {}: {e}",
                    path.display()
                ))
            })?;
            crate::errln!(
                "wrote the report of batch {name} to {} ({} KB)",
                path.display(),
                page.len().div_ceil(1024)
            );
        }
        None => {
            let mut out = crate::output::Stdout;
            let _ = out.write_all(page.as_bytes());
            let _ = out.flush();
        }
    }
    Ok(ExitCode::from(if crate::output::failed() {
        exit::USAGE
    } else {
        exit::OK
    }))
}
