//! `convoy prune`: remove old batches' bulk (responses, source rows,
//! pre-images) or their rows, never a running batch, never a resumable one
//! unless told, always keeping each conversation's latest snapshot; then
//! give the space back.

use super::{Global, exit, usage};
use crate::audit::{Db, prune};
use crate::text::parse_duration;
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Prune batches created longer ago than this, like 30d, 12h or 90d.
    #[arg(long, value_parser = parse_age, value_name = "AGE")]
    pub before: Option<Duration>,

    /// Never prune the newest N batches.
    #[arg(long, value_name = "N")]
    pub keep_batches: Option<u64>,

    /// Remove the batches' rows, attempts and reads too (their lines in `batches` stay), not only their bulk.
    #[arg(long)]
    pub rows: bool,

    /// Also prune batches that are not completed (resumable: failed, interrupted, planned). Their unfinished rows can then no longer be resumed from this database's responses.
    #[arg(long)]
    pub include_resumable: bool,

    /// Show what would be pruned; change nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub db: super::args::DbArg,
}

/// `30d`, `12h`, `90m`, `45s`, `500ms`: the durations convoy reads, plus days.
fn parse_age(s: &str) -> Result<Duration, String> {
    match s.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) => Ok(Duration::from_secs(days * 86_400)),
        _ => parse_duration(s)
            .map_err(|_| format!("{s:?} is not an age; write it like 30d, 12h or 90m")),
    }
}

pub async fn run(g: &Global, a: PruneArgs) -> Result<ExitCode, super::Error> {
    if a.before.is_none() && a.keep_batches.is_none() {
        return Err(usage(
            "say which batches: --before AGE (like 30d) and/or --keep-batches N",
        ));
    }
    let db = super::open_existing(g).await?;
    let cutoff = a.before.map(prune::cutoff);
    let all = prune::candidates(&db, cutoff.as_deref(), a.keep_batches).await?;
    let what = if a.rows { "rows" } else { "bulk" };
    let (mut chosen, mut passed) = (Vec::new(), Vec::new());
    for c in all {
        let done = c.pruned.as_deref() == Some("rows") || c.pruned.as_deref() == Some(what);
        if done {
            continue;
        }
        if db.batch_is_held(&c.id) {
            passed.push((c, "being sent by a convoy process now"));
        } else if c.resumable && !a.include_resumable {
            passed.push((c, "resumable (--include-resumable prunes it)"));
        } else {
            chosen.push(c);
        }
    }
    for (c, why) in &passed {
        crate::outln!("kept {} ({}, {}): {why}", c.id, c.status, c.created_at);
    }
    let before = prune::size(&db).await?;
    if a.dry_run {
        for c in &chosen {
            crate::outln!(
                "would prune the {what} of {} ({}, {}, {} rows)",
                c.id,
                c.status,
                c.created_at,
                c.rows
            );
        }
        crate::outln!(
            "dry run: {} batch(es) would be pruned; nothing was changed",
            chosen.len()
        );
        return Ok(ExitCode::from(exit::OK));
    }
    for c in &chosen {
        let n = if a.rows {
            prune::remove(&db, &c.id).await?
        } else {
            prune::strip(&db, &c.id).await?
        };
        crate::outln!(
            "pruned the {what} of {} ({}, {}): {n} row(s)",
            c.id,
            c.status,
            c.created_at
        );
    }
    if chosen.is_empty() {
        crate::outln!("nothing to prune");
        return Ok(ExitCode::from(exit::OK));
    }
    let any_running = any_batch_running(&db).await;
    if !before.incremental && any_running {
        crate::outln!(
            "not compacted: a batch is being sent now; the freed pages are reused by later writes (prune again later to give them back)"
        );
    } else {
        if !before.incremental {
            crate::errln!(
                "compacting the database (VACUUM): it rewrites the whole file, and needs about {} MB free beside it",
                before.bytes >> 20
            );
        }
        prune::reclaim(&db, prune::size(&db).await?).await?;
    }
    let after = prune::size(&db).await?;
    crate::outln!(
        "the audit database is {} MB (was {} MB)",
        (after.bytes + after.wal_bytes) >> 20,
        (before.bytes + before.wal_bytes) >> 20
    );
    Ok(ExitCode::from(exit::OK))
}

/// Whether any batch of the database is being sent now (a `VACUUM` would
/// wait for it, or fail).
async fn any_batch_running(db: &Db) -> bool {
    match prune::candidates(db, None, None).await {
        Ok(all) => all.iter().any(|c| db.batch_is_held(&c.id)),
        Err(_) => true,
    }
}
