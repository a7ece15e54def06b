//! The audit database: one struct, [`Db`], owns it. It creates the file
//! (owner-only, 0600), sets WAL and `synchronous=NORMAL`, and runs the
//! migrations in `migrations/`. Every write during a batch goes through one
//! [`Recorder`] task that groups whatever has queued into one transaction, so
//! there is never one fsync per row, and a row is marked `in_flight` (and that
//! committed) before its call goes on the wire.

use crate::edit::Api;
use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection, SqlitePool};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Now, as UTC RFC 3339 text with milliseconds.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(Clone, Debug)]
pub struct Db {
    pub pool: SqlitePool,
}

impl Db {
    pub async fn open(path: &Path) -> anyhow::Result<Db> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "cannot create the directory of the audit database {}",
                    path.display()
                )
            })?;
        }
        create_private(path)
            .with_context(|| format!("cannot create the audit database {}", path.display()))?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .pragma("foreign_keys", "OFF");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open the audit database {}", path.display()))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .with_context(|| format!("cannot migrate the audit database {}", path.display()))?;
        Ok(Db { pool })
    }
}

/// Creates the database file owner-only before SQLite does (SQLite gives its
/// `-wal` and `-shm` files the same permissions).
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Status of an audit row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowStatus {
    Pending,
    InFlight,
    Succeeded,
    Failed,
    Invalid,
}

impl RowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RowStatus::Pending => "pending",
            RowStatus::InFlight => "in_flight",
            RowStatus::Succeeded => "succeeded",
            RowStatus::Failed => "failed",
            RowStatus::Invalid => "invalid",
        }
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

const PLANNED_COLUMNS: usize = 14;
const INSERT_CHUNK: usize = 64;

fn insert_sql(rows: usize) -> String {
    let one = format!("({})", vec!["?"; PLANNED_COLUMNS].join(","));
    format!(
        "INSERT INTO audit (batch_id, row_key, row_number, row_hash, op, api, conversation_id, agent_id, \
         method, url, request_body, status, error, source_row) VALUES {}",
        vec![one; rows].join(",")
    )
}

/// Inserts planned rows in one transaction; a repeated key fails the whole
/// call with the two row numbers.
pub async fn insert_planned(
    db: &Db,
    batch_id: &str,
    rows: &[PlannedRow],
) -> anyhow::Result<Result<(), DuplicateKey>> {
    let mut tx = db.pool.begin().await?;
    for chunk in rows.chunks(INSERT_CHUNK) {
        let sql = insert_sql(chunk.len());
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            q = q
                .bind(batch_id)
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
                .bind(&r.source_row);
        }
        if let Err(e) = q.execute(&mut *tx).await {
            let unique = e
                .as_database_error()
                .is_some_and(|d| d.kind() == sqlx::error::ErrorKind::UniqueViolation);
            if !unique {
                return Err(e.into());
            }
            drop(tx);
            return Ok(Err(find_duplicate(db, batch_id, chunk).await?));
        }
    }
    tx.commit().await?;
    Ok(Ok(()))
}

async fn find_duplicate(
    db: &Db,
    batch_id: &str,
    chunk: &[PlannedRow],
) -> anyhow::Result<DuplicateKey> {
    let mut seen = std::collections::HashMap::new();
    for r in chunk {
        let earlier: Option<i64> =
            sqlx::query_scalar("SELECT row_number FROM audit WHERE batch_id = ?1 AND row_key = ?2")
                .bind(batch_id)
                .bind(&r.row_key)
                .fetch_optional(&db.pool)
                .await?;
        let first = earlier
            .map(|n| n as u64)
            .or_else(|| seen.get(&r.row_key).copied());
        if let Some(first_row_number) = first {
            return Ok(DuplicateKey {
                row_key: r.row_key.clone(),
                row_number: r.row_number,
                first_row_number,
            });
        }
        seen.insert(r.row_key.clone(), r.row_number);
    }
    anyhow::bail!("a row_id is repeated in the source, but it could not be pinned down")
}

/// One HTTP attempt, for the `attempts` table.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub row_key: Arc<str>,
    pub attempt: u32,
    pub started_at: String,
    pub duration_ms: u64,
    pub http_status: Option<u16>,
    pub error: Option<String>,
}

/// A conversation snapshot the API returned.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub api: Api,
    pub conversation_id: Arc<str>,
    pub json: String,
}

/// The end of one row's work in this run.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub id: i64,
    pub row_key: Arc<str>,
    /// `Succeeded`, `Failed`, or back to `Pending` (stopped before an answer counted).
    pub status: RowStatus,
    pub attempts: u32,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub response: Option<String>,
    pub snapshot: Option<Snapshot>,
}

enum Event {
    InFlight { id: i64, ack: oneshot::Sender<()> },
    Attempt(AttemptRecord),
    Finished(Outcome),
    Flush(oneshot::Sender<()>),
}

/// The one writer of a running batch. Cloneable handle; the task ends when
/// every handle is dropped.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Event>,
}

/// The most events one transaction takes.
const GROUP: usize = 4096;

impl Recorder {
    pub async fn start(
        db: &Db,
        batch_id: &str,
    ) -> anyhow::Result<(Recorder, tokio::task::JoinHandle<anyhow::Result<()>>)> {
        let conn = db.pool.acquire().await?.detach();
        let (tx, rx) = mpsc::channel(GROUP);
        let batch_id = batch_id.to_owned();
        let task = tokio::spawn(write_loop(conn, batch_id, rx));
        Ok((Recorder { tx }, task))
    }

    /// Marks the row `in_flight` and returns once that is committed. An
    /// error means the mark could not be recorded: the call must not be sent.
    pub async fn in_flight(&self, id: i64) -> Result<(), RecorderGone> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Event::InFlight { id, ack })
            .await
            .map_err(|_| RecorderGone)?;
        done.await.map_err(|_| RecorderGone)
    }

    pub async fn attempt(&self, a: AttemptRecord) -> Result<(), RecorderGone> {
        self.tx
            .send(Event::Attempt(a))
            .await
            .map_err(|_| RecorderGone)
    }

    pub async fn finished(&self, o: Outcome) -> Result<(), RecorderGone> {
        self.tx
            .send(Event::Finished(o))
            .await
            .map_err(|_| RecorderGone)
    }

    /// Returns once everything sent before it is committed.
    pub async fn flush(&self) -> Result<(), RecorderGone> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Event::Flush(ack))
            .await
            .map_err(|_| RecorderGone)?;
        done.await.map_err(|_| RecorderGone)
    }
}

/// The audit writer has stopped (its database failed); nothing more can be recorded.
#[derive(Debug, thiserror::Error)]
#[error("the audit database writer has stopped")]
pub struct RecorderGone;

async fn write_loop(
    mut conn: SqliteConnection,
    batch_id: String,
    mut rx: mpsc::Receiver<Event>,
) -> anyhow::Result<()> {
    let mut events = Vec::with_capacity(GROUP);
    while rx.recv_many(&mut events, GROUP).await > 0 {
        let mut acks = Vec::new();
        let mut in_flight = Vec::new();
        let at = now();
        let mut tx = conn.begin().await.context("audit database: begin")?;
        for e in events.drain(..) {
            match e {
                Event::InFlight { id, ack } => {
                    in_flight.push(id);
                    acks.push(ack);
                }
                Event::Flush(ack) => acks.push(ack),
                Event::Attempt(a) => {
                    sqlx::query(
                        "INSERT OR REPLACE INTO attempts (batch_id, row_key, attempt, started_at, duration_ms, http_status, error) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .bind(&batch_id)
                    .bind(&*a.row_key)
                    .bind(a.attempt as i64)
                    .bind(&a.started_at)
                    .bind(a.duration_ms as i64)
                    .bind(a.http_status.map(i64::from))
                    .bind(&a.error)
                    .execute(&mut *tx)
                    .await
                    .context("audit database: record an attempt")?;
                }
                Event::Finished(o) => {
                    sqlx::query(
                        "UPDATE audit SET status = ?1, attempts = ?2, http_status = ?3, error = ?4, response = ?5, \
                         finished_at = CASE WHEN ?1 = 'pending' THEN NULL ELSE ?6 END WHERE rowid = ?7",
                    )
                    .bind(o.status.as_str())
                    .bind(o.attempts as i64)
                    .bind(o.http_status.map(i64::from))
                    .bind(&o.error)
                    .bind(&o.response)
                    .bind(&at)
                    .bind(o.id)
                    .execute(&mut *tx)
                    .await
                    .context("audit database: record an outcome")?;
                    if let Some(s) = o.snapshot {
                        sqlx::query(
                            "INSERT INTO conversations (api, conversation_id, snapshot, batch_id, row_key, updated_at) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (api, conversation_id) DO UPDATE SET \
                             snapshot = excluded.snapshot, batch_id = excluded.batch_id, row_key = excluded.row_key, \
                             updated_at = excluded.updated_at",
                        )
                        .bind(s.api.name())
                        .bind(&*s.conversation_id)
                        .bind(&s.json)
                        .bind(&batch_id)
                        .bind(&*o.row_key)
                        .bind(&at)
                        .execute(&mut *tx)
                        .await
                        .context("audit database: record a snapshot")?;
                    }
                }
            }
        }
        if !in_flight.is_empty() {
            let ids = serde_json::to_string(&in_flight)?;
            sqlx::query(
                "UPDATE audit SET status = 'in_flight', started_at = COALESCE(started_at, ?1), finished_at = NULL \
                 WHERE rowid IN (SELECT value FROM json_each(?2))",
            )
            .bind(&at)
            .bind(ids)
            .execute(&mut *tx)
            .await
            .context("audit database: mark rows in flight")?;
        }
        tx.commit().await.context("audit database: commit")?;
        for ack in acks {
            let _ = ack.send(());
        }
    }
    Ok(())
}
