//! Reading the audit database back for people and scripts: the batch list,
//! one batch in detail with its failures grouped into clusters, and the
//! failed rows exported as CSV in the source's own format.

use crate::audit::Db;
use crate::audit::Tally;
use serde::Serialize;
use std::collections::HashMap;

/// One batch in the list.
#[derive(Debug, Clone, Serialize)]
pub struct BatchLine {
    pub batch: String,
    /// `running`, `completed`, `failed` or `interrupted`.
    pub status: String,
    /// True when `running` but its process is gone: resumable.
    pub stale: bool,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// From creation to the end of its last pass (or now, while running).
    pub duration_seconds: f64,
    /// Time spent sending, over all passes.
    pub send_seconds: f64,
    /// Rows that reached an answer (succeeded or failed) per second of sending.
    pub rate_per_second: f64,
    pub counts: Tally,
    /// What `convoy prune` removed: `bulk` (responses, source rows, pre-images) or `rows`.
    pub pruned: Option<String>,
}

/// Every batch, newest first (one query over the status index).
pub async fn batches(db: &Db, only: Option<&str>) -> anyhow::Result<Vec<BatchLine>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: String,
        status: String,
        created_at: String,
        finished_at: Option<String>,
        send_seconds: f64,
        first_sent: Option<String>,
        last_answer: Option<String>,
        pruned: Option<String>,
    }
    // The rows' own times are read only for a batch with no sending time recorded.
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, status, created_at, finished_at, send_seconds, pruned, \
           CASE WHEN send_seconds = 0 THEN (SELECT min(started_at) FROM audit WHERE batch_id = b.id) END AS first_sent, \
           CASE WHEN send_seconds = 0 THEN (SELECT max(finished_at) FROM audit WHERE batch_id = b.id) END AS last_answer \
         FROM batches b WHERE ?1 IS NULL OR id = ?1 ORDER BY created_at DESC, id",
    )
    .bind(only)
    .fetch_all(&db.pool)
    .await?;
    let counts: Vec<(String, String, i64)> = match only {
        Some(id) => {
            sqlx::query_as("SELECT batch_id, status, count(*) FROM audit WHERE batch_id = ?1 GROUP BY batch_id, status")
                .bind(id)
                .fetch_all(&db.pool)
                .await?
        }
        None => {
            sqlx::query_as(
                "SELECT b.id, a.status, a.n FROM (SELECT batch_no, status, count(*) AS n FROM audit_rows \
                 GROUP BY batch_no, status) a JOIN batches b ON b.no = a.batch_no",
            )
                .fetch_all(&db.pool)
                .await?
        }
    };
    let mut tallies: HashMap<String, Tally> = HashMap::new();
    for (batch, status, n) in counts {
        tallies
            .entry(batch)
            .or_default()
            .add_text(&status, n as u64);
    }
    let now = chrono::Utc::now();
    Ok(rows
        .into_iter()
        .map(|r| {
            let counts = tallies.remove(&r.id).unwrap_or_default();
            let start = parse_time(&r.created_at);
            let end = r
                .finished_at
                .as_deref()
                .map(parse_time)
                .unwrap_or(Some(now));
            let duration_seconds = match (start, end) {
                (Some(s), Some(e)) => ((e - s).num_milliseconds() as f64 / 1000.0).max(0.0),
                _ => 0.0,
            };
            let answered = (counts.succeeded + counts.failed) as f64;
            // A batch whose process died never recorded its sending time:
            // the span of its rows' own times stands in.
            let send_seconds = if r.send_seconds > 0.0 {
                r.send_seconds
            } else {
                match (
                    r.first_sent.as_deref().and_then(parse_time),
                    r.last_answer.as_deref().and_then(parse_time),
                ) {
                    (Some(s), Some(e)) => ((e - s).num_milliseconds() as f64 / 1000.0).max(0.0),
                    _ => 0.0,
                }
            };
            BatchLine {
                stale: r.status == "running" && !db.batch_is_held(&r.id),
                rate_per_second: if send_seconds > 0.0 {
                    answered / send_seconds
                } else {
                    0.0
                },
                batch: r.id,
                status: r.status,
                created_at: r.created_at,
                finished_at: r.finished_at,
                duration_seconds,
                send_seconds,
                counts,
                pruned: r.pruned,
            }
        })
        .collect())
}

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Rows of one batch by API and op.
#[derive(Debug, Clone, Serialize)]
pub struct OpLine {
    pub api: Option<String>,
    pub op: Option<String>,
    pub counts: Tally,
}

/// HTTP attempts of one batch.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Attempts {
    pub total: u64,
    /// Attempts beyond each row's first.
    pub retries: u64,
    /// Attempts per answer: an HTTP status, or `none` (timeout, connection error).
    pub by_status: Vec<(String, u64)>,
    pub by_api: Vec<(String, u64)>,
}

/// Failed and invalid rows that share an API, HTTP status and error (ids and numbers masked).
#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    /// 1-based, largest first: what `convoy failures --cluster N` takes.
    pub cluster: usize,
    pub count: u64,
    pub status: String,
    pub api: Option<String>,
    pub http_status: Option<i64>,
    pub error: String,
    pub example_row: String,
    pub example_error: String,
}

/// One batch in detail.
#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    #[serde(flatten)]
    pub line: BatchLine,
    pub source: String,
    pub passes: i64,
    pub by_op: Vec<OpLine>,
    pub attempts: Attempts,
    pub clusters: Vec<Cluster>,
    /// The pace `auto` learned, per API and base URL.
    pub learned_rates: Vec<LearnedRate>,
    /// Rows that succeeded although the API's body was not JSON (an HTML page, say).
    pub not_json: u64,
    /// What the batch did with live state (section 8).
    pub live: LiveCounts,
    /// What bounded each API in the last pass: one object per API (`calls`,
    /// `calls_per_second`, `pace_per_second`, `pace_kind`, `rate_limited`,
    /// `paused_seconds`, `in_flight_budget`, `max_in_flight`, `latency_ms`,
    /// `bound`).
    pub pacing: Option<serde_json::Value>,
    /// The exit code of the batch's last run, resume or apply (`null` before
    /// convoy recorded it, or while it runs).
    pub exit_code: Option<i64>,
}

/// A batch's reads of live state and what they decided.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveCounts {
    /// Conversations read before the batch first touched them.
    pub pre_images: u64,
    /// Reads of every purpose (`pre_image`, `state`, `verify`, `check`).
    pub reads: u64,
    /// Rows judged to change nothing (`skipped`).
    pub unchanged: u64,
    /// Rows left in flight by a crash that a read showed had landed.
    pub verified_by_read: u64,
}

/// A batch's live-state counts.
pub async fn live_counts(db: &Db, id: &str) -> anyhow::Result<LiveCounts> {
    let (pre_images, reads): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE purpose = 'pre_image'), count(*) FROM reads WHERE batch_id = ?1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await?;
    let (unchanged, verified): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'skipped'), \
                count(*) FILTER (WHERE status = 'succeeded' AND error LIKE 'verified by a read%') \
         FROM audit WHERE batch_id = ?1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await?;
    Ok(LiveCounts {
        pre_images: pre_images as u64,
        reads: reads as u64,
        unchanged: unchanged as u64,
        verified_by_read: verified as u64,
    })
}

/// An undo batch's conflicts: `(api, conversation_id, error)` of each row
/// left alone because its conversation changed since the undone batch.
pub async fn conflicts(db: &Db, id: &str) -> anyhow::Result<Vec<(String, String, String)>> {
    Ok(sqlx::query_as(
        "SELECT api, conversation_id, error FROM audit WHERE batch_id = ?1 AND status = 'skipped' \
         AND error LIKE 'conflict:%' ORDER BY row_number",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await?)
}

/// One row of a plan, as `convoy plan` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PlanRow {
    pub row_number: i64,
    pub row_key: String,
    pub api: Option<String>,
    pub op: Option<String>,
    pub conversation_id: Option<String>,
    pub agent_id: Option<String>,
    /// `pending` (changes something, or would fail: see `error`), `skipped`, `invalid`.
    pub status: String,
    pub error: Option<String>,
    /// Field by field: `{"labels": {"before": ..., "after": ...}}` (JSON text,
    /// printed by `--json` as JSON).
    #[serde(serialize_with = "as_json")]
    pub changes: Option<String>,
}

fn as_json<S: serde::Serializer>(text: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    let v: Option<serde_json::Value> = text.as_deref().and_then(|t| serde_json::from_str(t).ok());
    v.serialize(s)
}

/// Every row of a batch, conversation by conversation (in source order
/// within each), handed to `each` one at a time.
pub async fn plan_rows(
    db: &Db,
    id: &str,
    mut each: impl FnMut(PlanRow) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use futures::TryStreamExt;
    let mut rows = sqlx::query_as::<_, PlanRow>(
        "SELECT row_number, row_key, api, op, conversation_id, agent_id, status, error, changes \
         FROM audit WHERE batch_id = ?1 ORDER BY api, conversation_id, row_number",
    )
    .bind(id)
    .fetch(&db.pool);
    while let Some(row) = rows.try_next().await? {
        each(row)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LearnedRate {
    pub api: String,
    pub base_url: String,
    pub rate_per_sec: Option<f64>,
    /// The API's cap on concurrent calls, when one was found.
    pub in_flight: Option<i64>,
    /// The calls one of its long windows accepts, when one ran out.
    pub window_quota: Option<i64>,
    pub updated_at: String,
}

pub async fn learned_rates(db: &Db) -> anyhow::Result<Vec<LearnedRate>> {
    Ok(sqlx::query_as(
        "SELECT api, base_url, rate_per_sec, in_flight, window_quota, updated_at FROM learned_rates ORDER BY api, base_url",
    )
    .fetch_all(&db.pool)
    .await?)
}

pub async fn detail(db: &Db, id: &str) -> anyhow::Result<Option<Detail>> {
    detail_with(db, id, true).await
}

/// [`detail`], with its `attempts` and `not_json` counted only when `full`
/// (a page does not show them; on a batch of a million rows they are a
/// second and a half of the time).
pub async fn detail_with(db: &Db, id: &str, full: bool) -> anyhow::Result<Option<Detail>> {
    let Some(line) = batches(db, Some(id)).await?.pop() else {
        return Ok(None);
    };
    let (source, passes, exit_code): (String, i64, Option<i64>) = sqlx::query_as(
        "SELECT source || CASE WHEN source_table IS NULL THEN '' ELSE ' (table ' || source_table || ')' END, passes, exit_code \
         FROM batches WHERE id = ?1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await?;
    let ops: Vec<(Option<String>, Option<String>, String, i64)> = sqlx::query_as(
        "SELECT api, op, status, count(*) FROM audit WHERE batch_id = ?1 GROUP BY api, op, status ORDER BY api, op",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await?;
    let mut by_op: Vec<OpLine> = Vec::new();
    for (api, op, status, n) in ops {
        match by_op.last_mut() {
            Some(l) if l.api == api && l.op == op => l.counts.add_text(&status, n as u64),
            _ => {
                let mut counts = Tally::default();
                counts.add_text(&status, n as u64);
                by_op.push(OpLine { api, op, counts });
            }
        }
    }
    let attempts = match full {
        true => attempts_of(db, id).await?,
        false => Attempts::default(),
    };
    Ok(Some(Detail {
        line,
        source,
        passes,
        by_op,
        attempts,
        clusters: clusters(db, id).await?,
        learned_rates: learned_rates(db).await?,
        not_json: if full { not_json(db, id).await? } else { 0 },
        live: live_counts(db, id).await?,
        pacing: sqlx::query_scalar::<_, Option<String>>("SELECT pacing FROM batches WHERE id = ?1")
            .bind(id)
            .fetch_one(&db.pool)
            .await?
            .and_then(|p| serde_json::from_str(&p).ok()),
        exit_code,
    }))
}

/// A batch's HTTP attempts: in all, retries, by answer and by API.
async fn attempts_of(db: &Db, id: &str) -> anyhow::Result<Attempts> {
    let by_status: Vec<(Option<i64>, i64)> = sqlx::query_as(
        "SELECT http_status, count(*) FROM attempts WHERE batch_id = ?1 GROUP BY http_status ORDER BY count(*) DESC",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await?;
    let by_api: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT a.api, count(*) FROM attempts t JOIN audit a ON a.batch_id = t.batch_id AND a.row_key = t.row_key \
         WHERE t.batch_id = ?1 GROUP BY a.api ORDER BY a.api",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await?;
    let (rows_tried,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM audit WHERE batch_id = ?1 AND attempts > 0")
            .bind(id)
            .fetch_one(&db.pool)
            .await?;
    let total: u64 = by_status.iter().map(|(_, n)| *n as u64).sum();
    Ok(Attempts {
        total,
        retries: total.saturating_sub(rows_tried as u64),
        by_status: by_status
            .into_iter()
            .map(|(s, n)| (s.map_or("none".to_owned(), |s| s.to_string()), n as u64))
            .collect(),
        by_api: by_api
            .into_iter()
            .map(|(a, n)| (a.unwrap_or_default(), n as u64))
            .collect(),
    })
}

/// Rows of a batch that succeeded with a body that is not JSON.
pub async fn not_json(db: &Db, id: &str) -> anyhow::Result<u64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM audit WHERE batch_id = ?1 AND status = 'succeeded' AND error LIKE '%body is not JSON%'",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await?;
    Ok(n as u64)
}

/// A row that has not succeeded, as the reports read it.
#[derive(sqlx::FromRow)]
struct Unfinished {
    row_key: String,
    row_number: i64,
    status: String,
    api: Option<String>,
    http_status: Option<i64>,
    error: Option<String>,
    source_row: Option<String>,
}

/// The batch's rows with one of `statuses`, in source order.
async fn unfinished(db: &Db, id: &str, statuses: &'static str) -> anyhow::Result<Vec<Unfinished>> {
    let sql = format!(
        "SELECT row_key, row_number, status, api, http_status, error, source_row FROM audit \
         WHERE batch_id = ?1 AND status IN {statuses} ORDER BY row_number"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_all(&db.pool)
        .await?)
}

/// The batch's failed and invalid rows, grouped; largest first.
pub async fn clusters(db: &Db, id: &str) -> anyhow::Result<Vec<Cluster>> {
    let rows = unfinished(db, id, "('failed', 'invalid', 'held')").await?;
    let mut groups: Vec<Cluster> = Vec::new();
    let mut index: HashMap<(String, Option<String>, Option<i64>, String), usize> = HashMap::new();
    for Unfinished {
        row_key,
        status,
        api,
        http_status,
        error,
        ..
    } in rows
    {
        let error = error.unwrap_or_default();
        let masked = crate::text::mask(&error);
        let key = (status.clone(), api.clone(), http_status, masked.clone());
        match index.get(&key) {
            Some(i) => groups[*i].count += 1,
            None => {
                index.insert(key, groups.len());
                groups.push(Cluster {
                    cluster: 0,
                    count: 1,
                    status,
                    api,
                    http_status,
                    error: masked,
                    example_row: row_key,
                    example_error: error,
                });
            }
        }
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.count));
    for (i, g) in groups.iter_mut().enumerate() {
        g.cluster = i + 1;
    }
    Ok(groups)
}

/// The columns an export adds after the source's own: why the row is there,
/// and where it came from (`run` uses those two to keep edits in order).
const EXPORT_ONLY: [&str; 5] = ["status", "http_status", "error", "from_batch", "from_row"];

/// Writes the batch's failed, invalid and not-yet-sent rows (all of one
/// cluster with `cluster`) as CSV: the source's columns as it had them, then
/// `status`, `http_status`, `error`. Returns the number of rows written.
pub async fn export_failures(
    db: &Db,
    id: &str,
    cluster: Option<&Cluster>,
    out: impl std::io::Write,
) -> anyhow::Result<u64> {
    let (columns,): (String,) = sqlx::query_as("SELECT columns FROM batches WHERE id = ?1")
        .bind(id)
        .fetch_one(&db.pool)
        .await?;
    let columns: Vec<String> = serde_json::from_str(&columns)?;
    let columns: Vec<String> = columns
        .into_iter()
        .filter(|c| !EXPORT_ONLY.contains(&c.as_str()))
        .collect();
    let mut w = csv::Writer::from_writer(out);
    let mut header = columns.clone();
    header.extend(EXPORT_ONLY.map(String::from));
    w.write_record(&header)?;
    let statuses = match cluster {
        Some(_) => "('failed', 'invalid', 'held')",
        None => "('failed', 'invalid', 'held', 'pending', 'in_flight')",
    };
    let rows = unfinished(db, id, statuses).await?;
    // A plan's pending rows are what `apply` sends, not failures: only
    // those that would fail (an `error` says why) are exported.
    let planned: bool = sqlx::query_scalar("SELECT status = 'planned' FROM batches WHERE id = ?1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?
        .unwrap_or(false);
    let mut n = 0;
    for Unfinished {
        row_number,
        status,
        api,
        http_status,
        error,
        source_row,
        ..
    } in rows
    {
        if planned && status == "pending" && error.is_none() {
            continue;
        }
        if let Some(c) = cluster
            && (c.status != status
                || c.api != api
                || c.http_status != http_status
                || c.error != crate::text::mask(error.as_deref().unwrap_or("")))
        {
            continue;
        }
        let cells: serde_json::Map<String, serde_json::Value> = source_row
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let mut record: Vec<String> = columns
            .iter()
            .map(|c| {
                cells
                    .get(c)
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        record.push(status);
        record.push(http_status.map(|s| s.to_string()).unwrap_or_default());
        record.push(error.unwrap_or_default());
        // Where the row first came from (kept through an export of an export).
        let origin = |k: &str| cells.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        record.push(origin("from_batch").unwrap_or_else(|| id.to_owned()));
        record.push(origin("from_row").unwrap_or_else(|| row_number.to_string()));
        w.write_record(&record)?;
        n += 1;
    }
    w.flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use crate::text::mask;

    #[test]
    fn masking_groups_like_errors() {
        assert_eq!(
            mask("HTTP 404 Not Found: conversation \"missing-1\" not found"),
            mask("HTTP 404 Not Found: conversation \"missing-77\" not found")
        );
        assert_eq!(
            mask("row 3 (row_id n-003), column skip_analysis: \"maybe\" is not a boolean"),
            "row # (row_id #), column skip_analysis: \"…\" is not a boolean"
        );
        // A field's name stays a name.
        assert_eq!(
            mask("field ratingFrom5 must be a number, not a string"),
            "field ratingFrom5 must be a number, not a string"
        );
        assert_ne!(
            mask("timed out after 30s"),
            mask("connection failed: refused")
        );
    }
}
