//! The batch records (`batches`): creating, loading and finishing a batch,
//! its passes, its status and its counts ([`Tally`]).

use super::{Db, RowStatus, now};
use serde::Serialize;
use std::time::Duration;

/// Rows per status in a batch.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Tally {
    pub rows: u64,
    pub pending: u64,
    pub in_flight: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub invalid: u64,
    pub held: u64,
    pub skipped: u64,
}

impl Tally {
    pub fn add(&mut self, status: RowStatus, n: u64) {
        self.rows += n;
        let count = match status {
            RowStatus::Pending => &mut self.pending,
            RowStatus::InFlight => &mut self.in_flight,
            RowStatus::Succeeded => &mut self.succeeded,
            RowStatus::Failed => &mut self.failed,
            RowStatus::Invalid => &mut self.invalid,
            RowStatus::Held => &mut self.held,
            RowStatus::Skipped => &mut self.skipped,
        };
        *count += n;
    }

    /// Adds `n` rows of a status read from the database.
    pub fn add_text(&mut self, status: &str, n: u64) {
        // The schema's CHECK admits no other status.
        self.add(RowStatus::parse(status).unwrap_or(RowStatus::Invalid), n);
    }

    /// The rows of one status.
    pub fn get(&self, status: RowStatus) -> u64 {
        match status {
            RowStatus::Pending => self.pending,
            RowStatus::InFlight => self.in_flight,
            RowStatus::Succeeded => self.succeeded,
            RowStatus::Failed => self.failed,
            RowStatus::Invalid => self.invalid,
            RowStatus::Held => self.held,
            RowStatus::Skipped => self.skipped,
        }
    }

    /// Adds another tally's rows to this one.
    pub fn merge(&mut self, o: &Tally) {
        for status in RowStatus::ALL {
            self.add(status, o.get(status));
        }
    }

    /// Rows that did not end as the user wanted: failed, invalid, held or still to send.
    pub fn unfinished(&self) -> u64 {
        self.failed + self.invalid + self.held + self.pending + self.in_flight
    }
}

/// Records a new batch read from `source`; `false` when the name is taken.
pub async fn create(
    db: &Db,
    id: &str,
    source: &crate::source::Source,
    columns: &[String],
    options: &impl Serialize,
    status: BatchStatus,
) -> anyhow::Result<bool> {
    let origin = Origin {
        location: source.location(),
        kind: source.kind(),
        table: source.table(),
    };
    create_from(db, id, &origin, columns, options, status).await
}

/// Where a batch's rows came from, as `batches` records it.
pub struct Origin<'a> {
    pub location: String,
    /// `csv`, `stdin`, `sqlite`, or `undo` (built by `convoy undo`).
    pub kind: &'static str,
    pub table: Option<&'a str>,
}

/// Records a new batch; `false` when the name is taken.
pub async fn create_from(
    db: &Db,
    id: &str,
    origin: &Origin<'_>,
    columns: &[String],
    options: &impl Serialize,
    status: BatchStatus,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO batches (id, source, source_kind, source_table, columns, status, created_at, options, pid) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?9, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(&origin.location)
    .bind(origin.kind)
    .bind(origin.table)
    .bind(serde_json::to_string(columns)?)
    .bind(now())
    .bind(serde_json::to_string(options)?)
    .bind(i64::from(std::process::id()))
    .bind(status.as_str())
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes a batch that never sent anything (its source turned out unreadable).
pub async fn discard(db: &Db, id: &str) -> anyhow::Result<()> {
    let mut tx = db.pool.begin().await?;
    for sql in [
        "DELETE FROM audit_rows WHERE batch_no = (SELECT no FROM batches WHERE id = ?1)",
        "DELETE FROM reads WHERE batch_id = ?1",
        "DELETE FROM batches WHERE id = ?1",
    ] {
        sqlx::query(sql).bind(id).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub async fn set_status(db: &Db, id: &str, status: BatchStatus) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE batches SET status = ?2, finished_at = CASE WHEN ?2 = 'running' THEN NULL ELSE ?3 END WHERE id = ?1",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(now())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// What bounded each API in the batch's last pass (JSON), for `status NAME`.
pub async fn record_pacing(db: &Db, id: &str, pacing: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE batches SET pacing = ?2 WHERE id = ?1")
        .bind(id)
        .bind(pacing)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Adds a pass's sending time to the batch (its achieved rate is rows over this).
pub async fn add_send_time(db: &Db, id: &str, elapsed: Duration) -> anyhow::Result<()> {
    sqlx::query("UPDATE batches SET send_seconds = send_seconds + ?2 WHERE id = ?1")
        .bind(id)
        .bind(elapsed.as_secs_f64())
        .execute(&db.pool)
        .await?;
    Ok(())
}

pub async fn tally(db: &Db, id: &str) -> anyhow::Result<Tally> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as(
            "SELECT status, count(*) FROM audit_rows WHERE batch_no = (SELECT no FROM batches WHERE id = ?1) GROUP BY status",
        )
            .bind(id)
            .fetch_all(&db.pool)
            .await?;
    let mut t = Tally::default();
    for (status, n) in rows {
        t.add_text(&status, n as u64);
    }
    Ok(t)
}

/// A batch as recorded.
#[derive(Debug, Clone)]
pub struct BatchRecord<O> {
    pub id: String,
    pub source: String,
    pub source_kind: String,
    pub source_table: Option<String>,
    pub status: String,
    pub options: O,
    pub pid: Option<i64>,
    pub passes: i64,
    /// When the last pass ended (for a plan: when it was judged).
    pub finished_at: Option<String>,
}

/// A batch as recorded, its options read as `O` (the commands' `Options`).
pub async fn load<O: serde::de::DeserializeOwned>(
    db: &Db,
    id: &str,
) -> anyhow::Result<Option<BatchRecord<O>>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: String,
        source: String,
        source_kind: String,
        source_table: Option<String>,
        status: String,
        options: String,
        pid: Option<i64>,
        passes: i64,
        finished_at: Option<String>,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, source, source_kind, source_table, status, options, pid, passes, finished_at FROM batches WHERE id = ?1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let options = serde_json::from_str(&r.options).map_err(|e| {
        anyhow::anyhow!("batch {}: its recorded options are unreadable ({e})", r.id)
    })?;
    Ok(Some(BatchRecord {
        id: r.id,
        source: r.source,
        source_kind: r.source_kind,
        source_table: r.source_table,
        status: r.status,
        options,
        pid: r.pid,
        passes: r.passes,
        finished_at: r.finished_at,
    }))
}

/// Starts a new pass of a recorded batch: `running`, this process, the new options.
pub async fn begin_pass(db: &Db, id: &str, options: &impl Serialize) -> anyhow::Result<i64> {
    let (pass,): (i64,) = sqlx::query_as(
        "UPDATE batches SET passes = passes + 1, status = 'running', finished_at = NULL, exit_code = NULL, pid = ?2, options = ?3 \
         WHERE id = ?1 RETURNING passes",
    )
    .bind(id)
    .bind(i64::from(std::process::id()))
    .bind(serde_json::to_string(options)?)
    .fetch_one(&db.pool)
    .await?;
    Ok(pass)
}

/// Status of a batch (`batches.status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// Made by `convoy plan`: judged against live state, nothing sent yet.
    Planned,
    Running,
    Completed,
    Failed,
    Interrupted,
}

impl std::fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Planned => "planned",
            BatchStatus::Running => "running",
            BatchStatus::Completed => "completed",
            BatchStatus::Failed => "failed",
            BatchStatus::Interrupted => "interrupted",
        }
    }
}

/// Whether a batch of this name is recorded.
pub async fn batch_exists(db: &Db, id: &str) -> anyhow::Result<bool> {
    let n: Option<i64> = sqlx::query_scalar("SELECT 1 FROM batches WHERE id = ?1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(n.is_some())
}

/// The newest batch's name (as `convoy status` lists them, newest first).
pub async fn latest_batch(db: &Db) -> anyhow::Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM batches ORDER BY created_at DESC, id LIMIT 1")
            .fetch_optional(&db.pool)
            .await?,
    )
}

/// The exit code of the batch's last run, resume or apply.
pub async fn set_exit_code(db: &Db, id: &str, code: u8) -> anyhow::Result<()> {
    sqlx::query("UPDATE batches SET exit_code = ?2 WHERE id = ?1")
        .bind(id)
        .bind(i64::from(code))
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// When the latest batch that completed (every row succeeded or skipped)
/// finished, in milliseconds since 1970.
pub async fn last_completed_ms(db: &Db) -> anyhow::Result<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT CAST(round((julianday(max(finished_at)) - 2440587.5) * 86400000.0) AS INTEGER) \
         FROM batches WHERE status = 'completed'",
    )
    .fetch_one(&db.pool)
    .await?)
}
