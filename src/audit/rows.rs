//! A batch's rows (`audit_rows`): planning them in ([`insert_planned`],
//! [`SeenKeys`]), reconciling a resumed batch with its source, holding older
//! edits, and reading back the rows to send, a page at a time.

use super::{Db, now_ms, placeholders};
use crate::edit::Api;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, SqliteConnection};

/// Status of an audit row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowStatus {
    Pending,
    InFlight,
    Succeeded,
    Failed,
    Invalid,
    /// Not sent: a later edit of the same conversation already succeeded.
    Held,
    /// Not sent: judged to change nothing.
    Skipped,
}

/// The rows a pass still sends: `audit.status IN SENDABLE`.
pub const SENDABLE: &str = "('pending', 'in_flight', 'failed')";

impl RowStatus {
    pub const ALL: [RowStatus; 7] = [
        RowStatus::Pending,
        RowStatus::InFlight,
        RowStatus::Succeeded,
        RowStatus::Failed,
        RowStatus::Invalid,
        RowStatus::Held,
        RowStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RowStatus::Pending => "pending",
            RowStatus::InFlight => "in_flight",
            RowStatus::Succeeded => "succeeded",
            RowStatus::Failed => "failed",
            RowStatus::Invalid => "invalid",
            RowStatus::Held => "held",
            RowStatus::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<RowStatus> {
        RowStatus::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A row as planned before anything is sent.
#[derive(Clone, Debug)]
pub struct PlannedRow {
    pub row_key: String,
    pub row_number: u64,
    pub row_hash: String,
    pub op: Option<&'static str>,
    pub api: Option<Api>,
    pub conversation_id: Option<String>,
    pub agent_id: Option<String>,
    pub method: Option<&'static str>,
    pub url: Option<String>,
    pub request_body: Option<String>,
    pub status: RowStatus,
    pub error: Option<String>,
    pub source_row: String,
}

/// Two rows share a `row_id`.
#[derive(Debug, thiserror::Error)]
#[error(
    "row {row_number}: row_id {row_key:?} is already used by row {first_row_number}; row_id must be unique in the source"
)]
pub struct DuplicateKey {
    pub row_key: String,
    pub row_number: u64,
    pub first_row_number: u64,
}

const PLANNED_COLUMNS: usize = 16;

/// Bytes a planned row reserves for what it gains when it is marked and
/// answered (`audit_rows.reserved`, let go at the mark): its times, HTTP
/// status and response number, about 20 bytes. The plan packs rows into
/// full pages; without the reserve, each page split in two as its rows
/// grew, leaving a sixth of the table empty.
const RESERVED: usize = 24;

const INSERT_CHUNK: usize = 64;

/// The statement for `rows` planned rows. `upsert`: a row already recorded
/// is re-planned in place, keeping its attempts and last answer.
fn planned_sql(rows: usize, upsert: bool) -> String {
    let mut sql = format!(
        "INSERT INTO audit_rows (batch_no, row_key, row_number, row_hash, op, api, conversation_id, agent_id, \
         method, url, request_body, status, error, source_row, pass, reserved) VALUES {}",
        placeholders(rows, PLANNED_COLUMNS)
    );
    if upsert {
        sql.push_str(
            " ON CONFLICT (batch_no, row_key) DO UPDATE SET row_number = excluded.row_number, \
             row_hash = excluded.row_hash, op = excluded.op, api = excluded.api, \
             conversation_id = excluded.conversation_id, agent_id = excluded.agent_id, method = excluded.method, \
             url = excluded.url, request_body = excluded.request_body, \
             status = CASE WHEN audit_rows.status = 'in_flight' AND excluded.status = 'pending' THEN 'in_flight' ELSE excluded.status END, \
             error = COALESCE(excluded.error, audit_rows.error), source_row = excluded.source_row, pass = excluded.pass",
        );
    }
    sql
}

/// Inserts planned rows in one transaction (their keys were checked by [`SeenKeys`]).
pub async fn insert_planned(db: &Db, batch_id: &str, rows: &[PlannedRow]) -> anyhow::Result<()> {
    Ok(write_planned(db, batch_id, 1, rows, false).await?)
}

/// Why keys could not be added: a repeated `row_id`, or the database.
#[derive(Debug, thiserror::Error)]
pub enum SeenError {
    #[error(transparent)]
    Duplicate(#[from] DuplicateKey),
    #[error(transparent)]
    Db(#[from] anyhow::Error),
}

/// The one place a repeated `row_id` is caught, for the plan phase, a
/// resume's reconciliation and `--dry-run` alike: the keys seen so far live
/// in a temporary table of a connection of their own (on disk beside the
/// audit database, or in memory for a dry run), so memory stays flat
/// however many rows the source has.
pub struct SeenKeys {
    conn: SqliteConnection,
}

impl SeenKeys {
    /// Keys kept beside the audit database.
    pub async fn beside(db: &Db) -> anyhow::Result<SeenKeys> {
        Self::on(db.pool.acquire().await?.detach()).await
    }

    /// Keys kept in an in-memory database (`--dry-run` writes nothing).
    pub async fn in_memory() -> anyhow::Result<SeenKeys> {
        let conn = SqliteConnectOptions::new()
            .filename(":memory:")
            .connect()
            .await?;
        Self::on(conn).await
    }

    async fn on(mut conn: SqliteConnection) -> anyhow::Result<SeenKeys> {
        sqlx::query(
            "CREATE TEMP TABLE IF NOT EXISTS seen_keys (row_key TEXT PRIMARY KEY, row_number INTEGER)",
        )
        .execute(&mut conn)
        .await?;
        sqlx::query("DELETE FROM seen_keys")
            .execute(&mut conn)
            .await?;
        Ok(SeenKeys { conn })
    }

    /// Adds `(key, row number)` pairs, in source order; the first key seen
    /// before (in this call or an earlier one) is the error.
    pub async fn add(&mut self, keys: &[(&str, u64)]) -> Result<(), SeenError> {
        // The first row (in source order) whose key came before: within
        // these keys, or in an earlier call, whichever row comes first.
        let mut here = std::collections::HashMap::new();
        let mut repeated = None;
        for (k, n) in keys {
            if let Some(first) = here.insert(*k, *n) {
                repeated = Some(DuplicateKey {
                    row_key: (*k).to_owned(),
                    row_number: *n,
                    first_row_number: first,
                });
                break;
            }
        }
        let json = serde_json::to_string(keys).map_err(anyhow::Error::from)?;
        let earlier: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT s.row_key, s.row_number, j.value ->> 1 AS at FROM json_each(?1) j \
             JOIN seen_keys s ON s.row_key = j.value ->> 0 ORDER BY at LIMIT 1",
        )
        .bind(&json)
        .fetch_optional(&mut self.conn)
        .await
        .map_err(anyhow::Error::from)?;
        if let Some((k, first, at)) = earlier
            && repeated.as_ref().is_none_or(|d| (at as u64) < d.row_number)
        {
            repeated = Some(DuplicateKey {
                row_key: k,
                row_number: at as u64,
                first_row_number: first as u64,
            });
        }
        if let Some(d) = repeated {
            return Err(d.into());
        }
        sqlx::query("INSERT INTO seen_keys SELECT value ->> 0, value ->> 1 FROM json_each(?1)")
            .bind(&json)
            .execute(&mut self.conn)
            .await
            .map_err(anyhow::Error::from)?;
        Ok(())
    }
}

/// The recorded status and content hash of each of `keys` in a batch.
pub async fn recorded_states(
    db: &Db,
    batch_id: &str,
    keys: &[String],
) -> anyhow::Result<std::collections::HashMap<String, (String, String)>> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT row_key, status, row_hash FROM audit_rows WHERE batch_no = (SELECT no FROM batches WHERE id = ?1) AND row_key IN (SELECT value FROM json_each(?2))",
    )
    .bind(batch_id)
    .bind(serde_json::to_string(keys)?)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(|(k, s, h)| (k, (s, h))).collect())
}

/// Unfinished rows of earlier passes that this pass did not find in the source.
pub async fn left_behind(db: &Db, batch_id: &str, pass: i64) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT row_key FROM audit_rows WHERE batch_no = (SELECT no FROM batches WHERE id = ?1) AND pass < ?2 AND status NOT IN ('succeeded', 'skipped') ORDER BY row_number",
    )
    .bind(batch_id)
    .bind(pass)
    .fetch_all(&db.pool)
    .await?)
}

/// Moves every unfinished row into pass `pass` as recorded (a source that
/// cannot be read again); held rows are judged again. Returns the rows per
/// API and status.
pub async fn carry_over(
    db: &Db,
    batch_id: &str,
    pass: i64,
) -> anyhow::Result<Vec<(Option<String>, String, i64)>> {
    sqlx::query(
        "UPDATE audit_rows SET pass = ?2, status = CASE status WHEN 'held' THEN 'pending' ELSE status END \
         WHERE batch_no = (SELECT no FROM batches WHERE id = ?1) AND status IN ('pending', 'in_flight', 'failed', 'held')",
    )
    .bind(batch_id)
    .bind(pass)
    .execute(&db.pool)
    .await?;
    Ok(sqlx::query_as(
        "SELECT api, status, count(*) FROM audit_rows WHERE batch_no = (SELECT no FROM batches WHERE id = ?1) \
         GROUP BY api, status",
    )
    .bind(batch_id)
    .fetch_all(&db.pool)
    .await?)
}

/// Writes planned rows for a resume's `pass`, re-planning those already recorded.
pub async fn upsert_planned(
    db: &Db,
    batch_id: &str,
    pass: i64,
    rows: &[PlannedRow],
) -> anyhow::Result<()> {
    Ok(write_planned(db, batch_id, pass, rows, true).await?)
}

async fn write_planned(
    db: &Db,
    batch_id: &str,
    pass: i64,
    rows: &[PlannedRow],
    upsert: bool,
) -> sqlx::Result<()> {
    // Read before the transaction: a read first would make its first write
    // fail (SQLITE_BUSY_SNAPSHOT) if another process wrote in between.
    let batch_no: i64 = sqlx::query_scalar("SELECT no FROM batches WHERE id = ?1")
        .bind(batch_id)
        .fetch_one(&db.pool)
        .await?;
    let mut tx = db.pool.begin().await?;
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(planned_sql(chunk.len(), upsert)));
        for r in chunk {
            q = q
                .bind(batch_no)
                .bind(&r.row_key)
                .bind(r.row_number as i64)
                .bind(&r.row_hash)
                .bind(r.op)
                .bind(r.api.map(Api::name))
                .bind(&r.conversation_id)
                .bind(&r.agent_id)
                .bind(r.method)
                .bind(&r.url)
                .bind(&r.request_body)
                .bind(r.status.as_str())
                .bind(&r.error)
                .bind(&r.source_row)
                .bind(pass)
                .bind(&[0u8; RESERVED][..]);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Holds back (`held`) every sendable row of this pass that is older than an
/// edit of the same conversation that already succeeded, so that a fixed row
/// never undoes a newer edit. A row is older when it came (itself, or through the
/// `from_batch`/`from_row` columns of a `convoy failures` export) from an
/// earlier row of the same batch, or from a batch created before the one
/// that made the newer edit. Its error names that edit; the next pass
/// judges it again.
/// Returns how many rows were held.
pub async fn hold_older_edits(db: &Db, batch_id: &str, pass: i64) -> anyhow::Result<u64> {
    let held = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH origin AS ( \
           SELECT a.rowid AS id, a.api, a.conversation_id, \
                  COALESCE(a.source_row ->> 'from_batch', ?1) AS batch, \
                  COALESCE(CAST(a.source_row ->> 'from_row' AS INTEGER), a.row_number) AS row_number \
           FROM audit_rows a WHERE a.batch_no = (SELECT no FROM batches WHERE id = ?1) AND a.pass = ?2 \
             AND a.status IN {SENDABLE} AND a.conversation_id IS NOT NULL), \
         held AS ( \
           SELECT o.id, (SELECT 'batch ' || nb.id || ', row ' || n.row_number FROM audit_rows n \
                  JOIN batches nb ON nb.no = n.batch_no \
                  WHERE n.conversation_id = o.conversation_id AND n.api = o.api AND n.status = 'succeeded' \
                    AND ((nb.id = o.batch AND n.row_number > o.row_number) \
                         OR nb.created_at > (SELECT created_at FROM batches WHERE id = o.batch)) \
                  ORDER BY nb.created_at DESC, n.row_number DESC LIMIT 1) AS newer \
           FROM origin o) \
         UPDATE audit_rows SET status = 'held', http_status = NULL, finished_ms = ?3, reserved = NULL, \
           error = 'held: a later edit of this conversation already succeeded (' || held.newer || \
                   '); sending this older one would undo it. --send-older-edits sends it anyway' \
         FROM held WHERE audit_rows.rowid = held.id AND held.newer IS NOT NULL"
    )))
    .bind(batch_id)
    .bind(pass)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(held.rows_affected())
}

/// `--changed-only`: skips every sendable row of the pass whose exact call
/// (method, URL, body) is, without reading anything:
/// - the last call that succeeded on its conversation before it: the
///   batch's previous row of that conversation, or else the newest
///   succeeded row of another batch in this database (repeating a call
///   right after itself changes nothing); or
/// - part of a conversation whose whole sequence of calls in this batch is
///   exactly the sequence the last batch to touch it made, every one of
///   which succeeded (or was skipped): the same file run twice sends
///   nothing the second time.
///
/// An edit made in the app since is not seen. Returns how many were skipped.
pub async fn skip_repeated_calls(db: &Db, batch_id: &str, pass: i64) -> anyhow::Result<u64> {
    const CALL: &str = "method || ' ' || url || ' ' || COALESCE(request_body, '')";
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH me AS (SELECT no FROM batches WHERE id = ?1), \
         mine AS MATERIALIZED ( \
           SELECT rowid AS id, api, conversation_id, row_number, status, pass, {CALL} AS call, \
                  lag({CALL}) OVER w AS prev_call, lag(row_number) OVER w AS prev_row \
           FROM audit_rows WHERE batch_no = (SELECT no FROM me) AND method IS NOT NULL AND conversation_id IS NOT NULL \
           WINDOW w AS (PARTITION BY api, conversation_id ORDER BY row_number)), \
         conv AS ( \
           SELECT api, conversation_id, group_concat(call, char(10) ORDER BY row_number) AS seq, \
             (SELECT n.batch_no FROM audit_rows n JOIN batches nb ON nb.no = n.batch_no \
              WHERE n.api = m.api AND n.conversation_id = m.conversation_id AND n.batch_no != (SELECT no FROM me) \
                AND n.status IN ('succeeded', 'skipped') ORDER BY nb.created_at DESC LIMIT 1) AS last_batch \
           FROM mine m GROUP BY api, conversation_id), \
         same AS ( \
           SELECT c.api, c.conversation_id, c.last_batch FROM conv c WHERE c.last_batch IS NOT NULL \
             AND c.seq = (SELECT group_concat(n.{CALL}, char(10) ORDER BY n.row_number) FROM audit_rows n \
                          WHERE n.batch_no = c.last_batch AND n.api = c.api AND n.conversation_id = c.conversation_id \
                            AND n.method IS NOT NULL) \
             AND NOT EXISTS (SELECT 1 FROM audit_rows n WHERE n.batch_no = c.last_batch AND n.api = c.api \
                             AND n.conversation_id = c.conversation_id AND n.method IS NOT NULL \
                             AND n.status NOT IN ('succeeded', 'skipped'))), \
         judged AS ( \
           SELECT m.id, \
             CASE WHEN s.last_batch IS NOT NULL THEN \
               'no change: this conversation gets exactly the calls batch ' || (SELECT id FROM batches WHERE no = s.last_batch) \
               || ' made, and they succeeded' \
             WHEN m.prev_row IS NOT NULL THEN \
               CASE WHEN m.prev_call = m.call THEN 'no change: the same call as row ' || m.prev_row || ' of this batch, just before it' END \
             ELSE (SELECT 'no change: the same call was the last to succeed on this conversation (batch ' \
                          || (SELECT id FROM batches WHERE no = n.batch_no) || ', row ' || n.row_number || ')' \
                   FROM (SELECT n.batch_no, n.row_number, n.{CALL} AS call FROM audit_rows n \
                         WHERE n.api = m.api AND n.conversation_id = m.conversation_id AND n.status = 'succeeded' \
                           AND n.batch_no != (SELECT no FROM me) ORDER BY n.finished_ms DESC, n.rowid DESC LIMIT 1) n \
                   WHERE n.call = m.call) END AS why \
           FROM mine m LEFT JOIN same s ON s.api = m.api AND s.conversation_id = m.conversation_id \
           WHERE m.pass = ?2 AND m.status IN {SENDABLE}) \
         UPDATE audit_rows SET status = 'skipped', finished_ms = ?3, reserved = NULL, error = judged.why || '; --changed-only' \
         FROM judged WHERE audit_rows.rowid = judged.id AND judged.why IS NOT NULL"
    )))
    .bind(batch_id)
    .bind(pass)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected())
}

const DAMAGED: &str = "not sent: its recorded call is damaged in the audit database (api, method, url or conversation_id); run the row again from its source";

/// Fails every row of the pass whose recorded call cannot be sent (its api,
/// method, url or conversation is missing or unknown), saying so: one
/// damaged row must never stop the rest. Returns how many.
pub async fn fail_damaged(db: &Db, batch_id: &str, pass: i64) -> anyhow::Result<u64> {
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE audit_rows SET status = 'failed', finished_ms = ?3, reserved = NULL, error = ?4 \
         WHERE batch_no = (SELECT no FROM batches WHERE id = ?1) AND pass = ?2 AND status IN {SENDABLE} \
         AND (api IS NULL OR api NOT IN ('attention', 'vg') OR method IS NULL OR url IS NULL OR conversation_id IS NULL)"
    )))
    .bind(batch_id)
    .bind(pass)
    .bind(now_ms())
    .bind(DAMAGED)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected())
}

/// One row the send phase could not read back: failed, never sent.
pub async fn mark_unreadable(db: &Db, rowid: i64) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE audit_rows SET status = 'failed', finished_ms = ?2, reserved = NULL, error = ?3 WHERE rowid = ?1",
    )
    .bind(rowid)
    .bind(now_ms())
    .bind(DAMAGED)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Rows this pass of a batch will send.
pub async fn count_sendable(db: &Db, batch_id: &str, pass: i64) -> anyhow::Result<u64> {
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM audit_rows WHERE batch_no = (SELECT no FROM batches WHERE id = ?1) \
         AND pass = ?2 AND status IN {SENDABLE}"
    )))
    .bind(batch_id)
    .bind(pass)
    .fetch_one(&db.pool)
    .await?;
    Ok(n as u64)
}

/// Rows of one API in a batch that are still to send (`pending` or `in_flight`).
pub async fn unsent_for_api(db: &Db, batch_id: &str, api: Api) -> anyhow::Result<u64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM audit_rows WHERE batch_no = (SELECT no FROM batches WHERE id = ?1) AND api = ?2 \
         AND status IN ('pending', 'in_flight')",
    )
    .bind(batch_id)
    .bind(api.name())
    .fetch_one(&db.pool)
    .await?;
    Ok(n as u64)
}

/// One row to send, as recorded (any column may be damaged: the sender checks).
#[derive(Debug, sqlx::FromRow)]
pub struct Sendable {
    #[sqlx(rename = "rowid")]
    pub id: i64,
    pub row_key: String,
    pub row_number: i64,
    pub api: Option<String>,
    pub method: Option<String>,
    pub url: Option<String>,
    pub request_body: Option<String>,
    pub conversation_id: Option<String>,
    pub attempts: i64,
    pub status: String,
    pub op: Option<String>,
    pub agent_id: Option<String>,
    /// What the row changes, as judged before (an undo row: what it puts back, and from what).
    pub changes: Option<String>,
    /// Whether the batch already holds a pre-image of the row's conversation.
    pub pre_image: bool,
    /// A row in flight (outcome unknown): its conversation's latest snapshot.
    pub before: Option<String>,
}

/// The next page of one API's rows to send in this pass, in source order,
/// after `(row_number, rowid)` (short reads, so the writer's checkpoints are
/// never held back).
pub async fn sendable_page(
    db: &Db,
    batch_id: &str,
    pass: i64,
    api: Api,
    after: (i64, i64),
    until: Option<i64>,
    limit: usize,
) -> anyhow::Result<Vec<Sendable>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT rowid, row_key, row_number, api, method, url, request_body, conversation_id, attempts, \
         status, op, agent_id, changes, \
         EXISTS (SELECT 1 FROM reads r WHERE r.batch_id = ?1 AND r.api = a.api \
                 AND r.conversation_id = a.conversation_id AND r.purpose = 'pre_image') AS pre_image, \
         CASE WHEN status = 'in_flight' THEN (SELECT snapshot FROM conversations c \
              WHERE c.api = a.api AND c.conversation_id = a.conversation_id) END AS before \
         FROM audit_rows a WHERE batch_no = (SELECT no FROM batches WHERE id = ?1) AND pass = ?2 AND status IN {SENDABLE} AND api = ?6 \
         AND (row_number, rowid) > (?3, ?4) AND (?7 IS NULL OR row_number <= ?7) \
         ORDER BY row_number, rowid LIMIT ?5"
    )))
    .bind(batch_id)
    .bind(pass)
    .bind(after.0)
    .bind(after.1)
    .bind(limit as i64)
    .bind(api.name())
    .bind(until)
    .fetch_all(&db.pool)
    .await?)
}

/// A row of a batch that succeeded, beside its conversation's pre-image:
/// what `undo` builds from.
#[derive(Debug, sqlx::FromRow)]
pub struct Undone {
    pub api: String,
    pub conversation_id: String,
    pub agent_id: Option<String>,
    pub op: Option<String>,
    pub request_body: Option<String>,
    /// The conversation just before the batch first touched it (JSON), when read.
    pub pre_image: Option<String>,
}

/// Every row of `batch_id` that succeeded, conversation by conversation
/// (source order within each), handed to `each` one at a time.
pub async fn undo_inputs(
    db: &Db,
    batch_id: &str,
    mut each: impl FnMut(Undone) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use futures::TryStreamExt;
    let mut rows = sqlx::query_as::<_, Undone>(
        "SELECT a.api, a.conversation_id, a.agent_id, a.op, a.request_body, r.state AS pre_image \
         FROM audit_rows a LEFT JOIN reads r ON r.batch_id = ?1 AND r.api = a.api \
              AND r.conversation_id = a.conversation_id AND r.purpose = 'pre_image' \
         WHERE a.batch_no = (SELECT no FROM batches WHERE id = ?1) AND a.status = 'succeeded' AND a.api IS NOT NULL AND a.conversation_id IS NOT NULL \
         ORDER BY a.api, a.conversation_id, a.row_number",
    )
    .bind(batch_id)
    .fetch(&db.pool);
    while let Some(r) = rows.try_next().await? {
        each(r)?;
    }
    Ok(())
}

/// Records rows built rather than read (an undo batch), each with its changes.
pub async fn insert_built(
    db: &Db,
    batch_id: &str,
    rows: &[(PlannedRow, Option<String>)],
) -> anyhow::Result<()> {
    let planned: Vec<PlannedRow> = rows.iter().map(|(r, _)| r.clone()).collect();
    insert_planned(db, batch_id, &planned).await?;
    let mut tx = db.pool.begin().await?;
    for (r, changes) in rows.iter().filter(|(_, c)| c.is_some()) {
        sqlx::query(
            "UPDATE audit_rows SET changes = ?3 WHERE batch_no = (SELECT no FROM batches WHERE id = ?1) AND row_key = ?2",
        )
            .bind(batch_id)
            .bind(&r.row_key)
            .bind(changes)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// One row of a conversation still to send, for judging its rows together.
#[derive(Debug, sqlx::FromRow)]
pub struct ConversationRow {
    #[sqlx(rename = "rowid")]
    pub id: i64,
    pub row_number: i64,
    pub op: Option<String>,
    pub request_body: Option<String>,
}

/// A conversation's rows this pass of a batch still sends, in source order.
pub async fn conversation_rows(
    db: &Db,
    batch_id: &str,
    pass: i64,
    api: Api,
    conversation_id: &str,
) -> anyhow::Result<Vec<ConversationRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT rowid, row_number, op, request_body FROM audit_rows \
         WHERE batch_no = (SELECT no FROM batches WHERE id = ?1) AND api = ?2 AND conversation_id = ?3 AND pass = ?4 AND status IN {SENDABLE} \
         ORDER BY row_number"
    )))
    .bind(batch_id)
    .bind(api.name())
    .bind(conversation_id)
    .bind(pass)
    .fetch_all(&db.pool)
    .await?)
}

/// The row number of the `n`th row this pass sends, in source order (`None`: fewer rows).
pub async fn nth_sendable(
    db: &Db,
    batch_id: &str,
    pass: i64,
    n: u64,
) -> anyhow::Result<Option<i64>> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT row_number FROM audit_rows WHERE batch_no = (SELECT no FROM batches WHERE id = ?1) AND pass = ?2 AND status IN {SENDABLE} \
         AND api IS NOT NULL ORDER BY row_number, rowid LIMIT 1 OFFSET ?3"
    )))
    .bind(batch_id)
    .bind(pass)
    .bind(n.saturating_sub(1) as i64)
    .fetch_optional(&db.pool)
    .await?)
}
