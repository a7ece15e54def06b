//! Keeping the audit database for years: which batches `convoy prune` may
//! touch, removing their bulk (or their rows) in short transactions, and
//! giving the space back to the file system. Each conversation's latest
//! snapshot (the row the `conversations` view shows) is always kept.

use super::Db;
use anyhow::Context;

/// A batch as `prune` sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Candidate {
    pub id: String,
    pub status: String,
    pub created_at: String,
    pub rows: u64,
    /// Not `completed`: `resume` (or `apply`) would still send something.
    pub resumable: bool,
    /// What was pruned before, if anything.
    pub pruned: Option<String>,
}

/// Batches created before `before` (RFC 3339), or any when `None`, leaving
/// the newest `keep` batches out; newest first.
pub async fn candidates(
    db: &Db,
    before: Option<&str>,
    keep: Option<u64>,
) -> anyhow::Result<Vec<Candidate>> {
    let rows: Vec<(String, String, String, Option<String>, i64)> = sqlx::query_as(
        "SELECT b.id, b.status, b.created_at, b.pruned, \
                (SELECT count(*) FROM audit_rows a WHERE a.batch_no = b.no) \
         FROM batches b WHERE ?1 IS NULL OR b.created_at < ?1 \
         ORDER BY b.created_at DESC, b.id",
    )
    .bind(before)
    .fetch_all(&db.pool)
    .await?;
    let newest: Vec<String> =
        sqlx::query_scalar("SELECT id FROM batches ORDER BY created_at DESC, id LIMIT ?1")
            .bind(keep.map_or(0, |k| k as i64))
            .fetch_all(&db.pool)
            .await?;
    Ok(rows
        .into_iter()
        .filter(|(id, ..)| !newest.contains(id))
        .map(|(id, status, created_at, pruned, rows)| Candidate {
            resumable: status != "completed",
            id,
            status,
            created_at,
            rows: rows as u64,
            pruned,
        })
        .collect())
}

/// Rows changed per transaction: short, so a running batch's writer is
/// never held up for long, and the WAL stays small.
const CHUNK: i64 = 5_000;

/// Removes a batch's bulk: its responses (but each conversation's latest),
/// its source rows and its pre-images. Its rows, statuses, calls and
/// attempts stay. Returns the rows changed.
pub async fn strip(db: &Db, batch_id: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    loop {
        let done = sqlx::query(
            "UPDATE audit_rows SET response_id = NULL, source_row = NULL, holds_snapshot = NULL WHERE rowid IN ( \
               SELECT a.rowid FROM audit_rows a WHERE a.batch_no = (SELECT no FROM batches WHERE id = ?1) \
                 AND (a.response_id IS NOT NULL OR a.source_row IS NOT NULL) \
                 AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.batch_id = ?1 AND c.row_key = a.row_key) \
               LIMIT ?2)",
        )
        .bind(batch_id)
        .bind(CHUNK)
        .execute(&db.pool)
        .await
        .context("audit database: remove a batch's responses")?;
        total += done.rows_affected();
        if done.rows_affected() < CHUNK as u64 {
            break;
        }
        checkpoint(db).await;
    }
    sqlx::query("UPDATE reads SET state = NULL WHERE batch_id = ?1 AND state IS NOT NULL")
        .bind(batch_id)
        .execute(&db.pool)
        .await?;
    mark(db, batch_id, "bulk").await?;
    Ok(total)
}

/// Removes a batch's rows, attempts, reads and pacing samples (but the rows that hold a
/// conversation's latest snapshot); its line in `batches` stays, marked.
/// Returns the rows removed.
pub async fn remove(db: &Db, batch_id: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for sql in [
        "DELETE FROM audit_attempts WHERE (batch_no, row_key, attempt) IN \
           (SELECT batch_no, row_key, attempt FROM audit_attempts \
            WHERE batch_no = (SELECT no FROM batches WHERE id = ?1) LIMIT ?2)",
        "DELETE FROM reads WHERE rowid IN (SELECT rowid FROM reads WHERE batch_id = ?1 LIMIT ?2)",
        "DELETE FROM pacing_samples WHERE (batch_no, pass, api, at_ms) IN \
           (SELECT batch_no, pass, api, at_ms FROM pacing_samples \
            WHERE batch_no = (SELECT no FROM batches WHERE id = ?1) LIMIT ?2)",
        "DELETE FROM audit_rows WHERE rowid IN (SELECT a.rowid FROM audit_rows a \
           WHERE a.batch_no = (SELECT no FROM batches WHERE id = ?1) \
           AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.batch_id = ?1 AND c.row_key = a.row_key) LIMIT ?2)",
    ] {
        loop {
            let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(batch_id)
                .bind(CHUNK)
                .execute(&db.pool)
                .await
                .context("audit database: remove a batch's rows")?;
            if sql.starts_with("DELETE FROM audit_rows") {
                total += done.rows_affected();
            }
            if done.rows_affected() < CHUNK as u64 {
                break;
            }
            checkpoint(db).await;
        }
    }
    mark(db, batch_id, "rows").await?;
    Ok(total)
}

async fn mark(db: &Db, batch_id: &str, what: &str) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE batches SET pruned = CASE WHEN pruned = 'rows' THEN 'rows' ELSE ?2 END WHERE id = ?1",
    )
    .bind(batch_id)
    .bind(what)
    .execute(&db.pool)
    .await?;
    Ok(())
}

async fn checkpoint(db: &Db) {
    let _ = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .execute(&db.pool)
        .await;
}

/// The database's size on disk, and how much of it is free pages.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Size {
    pub bytes: u64,
    pub free_bytes: u64,
    pub wal_bytes: u64,
    /// Whether freed pages go back to the file system without a `VACUUM`.
    pub incremental: bool,
}

pub async fn size(db: &Db) -> anyhow::Result<Size> {
    let (pages, free, page_size, auto): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT * FROM pragma_page_count), (SELECT * FROM pragma_freelist_count), \
                (SELECT * FROM pragma_page_size), (SELECT * FROM pragma_auto_vacuum)",
    )
    .fetch_one(&db.pool)
    .await?;
    let mut wal = db.path.as_os_str().to_owned();
    wal.push("-wal");
    Ok(Size {
        bytes: (pages * page_size) as u64,
        free_bytes: (free * page_size) as u64,
        wal_bytes: std::fs::metadata(wal).map_or(0, |m| m.len()),
        incremental: auto == 2,
    })
}

/// Gives free pages back to the file system: an incremental vacuum where
/// the database allows it, else a `VACUUM` (which rewrites the whole file
/// and needs about its size free beside it).
pub async fn reclaim(db: &Db, size: Size) -> anyhow::Result<()> {
    let sql = if size.incremental {
        "PRAGMA incremental_vacuum"
    } else {
        "VACUUM"
    };
    let mut conn = db.pool.acquire().await?;
    sqlx::query(sql)
        .execute(&mut *conn)
        .await
        .with_context(|| format!("audit database: {sql}"))?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Roughly what stripping the completed batches created before `before`
/// would free: their share of the rows, times the database's size, less
/// what rows, indexes and attempts keep (about an eighth: ~330 of ~2,600
/// bytes per row).
pub async fn estimate(db: &Db, before: &str) -> anyhow::Result<u64> {
    let (old, all): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM audit_rows a JOIN batches b ON b.no = a.batch_no \
                 WHERE b.created_at < ?1 AND b.status = 'completed' AND b.pruned IS NULL), \
                (SELECT count(*) FROM audit_rows)",
    )
    .bind(before)
    .fetch_one(&db.pool)
    .await?;
    let size = size(db).await?;
    if all == 0 {
        return Ok(0);
    }
    Ok((size.bytes as f64 * old as f64 / all as f64 * 0.87) as u64)
}

/// The cut-off `age` ago, as RFC 3339 text (what `created_at` holds).
pub fn cutoff(age: std::time::Duration) -> String {
    let then = chrono::Utc::now()
        - chrono::Duration::from_std(age).unwrap_or_else(|_| chrono::Duration::days(36_500));
    then.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
