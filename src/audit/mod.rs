//! The audit database, and every query of it. One struct, [`Db`], owns it:
//! it creates the file (owner-only, 0600) under a lock beside it (two
//! processes may open a new database at once), refuses a SQLite file that
//! is not a convoy database, sets WAL and `synchronous=NORMAL`, and runs the
//! migrations in `migrations/`. It also owns:
//! - batch claims: an OS file lock per batch in `<db>.locks/` ([`Db::lock_batch`]);
//! - the batch records, the rows to send, held rows, learned rates;
//! - [`SeenKeys`], the one place a repeated `row_id` is caught;
//! - the single [`Writer`] task (`writer`), which groups whatever has queued
//!   into one transaction (never one fsync per row) and commits a row's
//!   `in_flight` mark before its call goes on the wire;
//! - [`report`], reading it all back for people and scripts;
//! - [`prune`], removing old batches' bulk and giving the space back.
//!
//! People query the views `audit`, `attempts` and `conversations`; convoy
//! writes the tables under them (migration 0007): narrow rows in
//! `audit_rows` and `audit_attempts` that name their batch by
//! `batches.no` and keep times in integer milliseconds ([`now_ms`]), and
//! each response once in `responses`, appended as answers come.

use crate::edit::Api;
pub mod prune;
pub mod report;
mod writer;

pub use writer::{AttemptRecord, Outcome, ReadRecord, Snapshot, Writer, WriterGone};

use anyhow::Context;
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, SqliteConnection, SqlitePool};
use std::path::Path;
use std::time::Duration;

/// Now, as UTC RFC 3339 text with milliseconds.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Now, in milliseconds since 1970 (UTC): how the rows' own times are
/// stored (the `audit` and `attempts` views show them as [`now`] does).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Clone, Debug)]
pub struct Db {
    pub pool: SqlitePool,
    /// The database file: batch locks live beside it.
    path: std::path::PathBuf,
}

/// A batch claimed by this process: while it is held, no other convoy
/// process can run, resume or apply the batch. It is an OS file lock
/// (`flock`), so the kernel drops it when the process ends however it
/// ends: a crashed run never leaves a stale claim behind.
#[derive(Debug)]
pub struct BatchLock {
    _file: std::fs::File,
}

/// A batch could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another process holds it.
    #[error(
        "batch {0:?} is being sent by another convoy process right now; wait for it to finish (or stop it), then try again"
    )]
    Busy(String),
    /// The lock file could not be made or locked.
    #[error(transparent)]
    Lock(#[from] anyhow::Error),
}

/// The page size of a new audit database.
const PAGE_SIZE: u32 = 16 * 1024;

impl Db {
    /// Opens (creating and migrating) the audit database. Two processes
    /// opening one new database at once would both create its tables, so
    /// the whole opening runs under a lock file beside it, one process at a
    /// time; and a SQLite file that is not a convoy audit database is
    /// refused before anything is written to it.
    pub async fn open(path: &Path) -> anyhow::Result<Db> {
        Db::open_with(path, || {}).await
    }

    /// [`Db::open`], calling `before_rewrite` first when the upgrade is one
    /// that rewrites the database's rows (it takes a while when they are many).
    pub async fn open_with(path: &Path, before_rewrite: impl FnOnce()) -> anyhow::Result<Db> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "cannot create the directory of the audit database {}",
                    path.display()
                )
            })?;
        }
        let lock = lock_file(&locks_dir(path), "open.lock")?;
        let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
            .await?
            .context("cannot lock the audit database to open it")?;
        refuse_foreign(path).await?;
        let rewrites = upgrade_rewrites(path).await;
        if rewrites {
            before_rewrite();
        }
        create_private(path)
            .with_context(|| format!("cannot create the audit database {}", path.display()))?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            // A new database gets 16 KiB pages: a row with its ~2.5 KB
            // response fills a 4 KiB page only half, wasting the rest.
            .page_size(
                std::env::var("CONVOY_PAGE_SIZE")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(PAGE_SIZE),
            )
            // Space `convoy prune` frees goes back to the file system
            // without rewriting the whole file (a new database only).
            .auto_vacuum(sqlx::sqlite::SqliteAutoVacuum::Incremental)
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
        if rewrites {
            // The old tables' pages are free now: give them back (a database
            // made with incremental auto-vacuum) and empty the WAL, which
            // holds a copy of everything rewritten.
            let _ = sqlx::query("PRAGMA incremental_vacuum")
                .execute(&pool)
                .await;
            let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&pool)
                .await;
        }
        drop(lock);
        Ok(Db {
            pool,
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file name of `batch_id`: the hash of the name, so that any
    /// name makes a valid file name.
    fn lock_name(batch_id: &str) -> String {
        // FNV-1a: stable across versions and platforms (std's hasher is not).
        let hash = batch_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("{hash:016x}.lock")
    }

    /// Claims `batch_id` for this process, or says who has it.
    pub fn lock_batch(&self, batch_id: &str) -> Result<BatchLock, ClaimError> {
        let file = lock_file(&locks_dir(&self.path), &Self::lock_name(batch_id))?;
        match file.try_lock() {
            Ok(()) => Ok(BatchLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(ClaimError::Busy(batch_id.to_owned())),
            Err(std::fs::TryLockError::Error(e)) => Err(anyhow::Error::from(e)
                .context("cannot lock the batch")
                .into()),
        }
    }

    /// Whether some process holds `batch_id` now (a probe: taken and let go).
    pub fn batch_is_held(&self, batch_id: &str) -> bool {
        locks_dir(&self.path)
            .join(Self::lock_name(batch_id))
            .exists()
            && matches!(self.lock_batch(batch_id), Err(ClaimError::Busy(_)))
    }
}

/// Where the lock files of the database at `db` live: `<db>.locks/`.
fn locks_dir(db: &Path) -> std::path::PathBuf {
    let mut dir = db.as_os_str().to_owned();
    dir.push(".locks");
    dir.into()
}

/// A lock file `name` in `dir`, created when missing.
fn lock_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the lock directory {}", dir.display()))?;
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))
}

/// Whether opening the database at `path` will rewrite its rows: the
/// upgrade to narrow rows (migration 7) of a database that has some.
async fn upgrade_rewrites(path: &Path) -> bool {
    if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        return false;
    }
    let options = SqliteConnectOptions::new().filename(path).read_only(true);
    let Ok(mut conn) = SqliteConnection::connect_with(&options).await else {
        return false;
    };
    let rewrites: Result<bool, _> = sqlx::query_scalar(
        "SELECT (SELECT max(version) FROM _sqlx_migrations) < 7 AND EXISTS (SELECT 1 FROM audit)",
    )
    .fetch_one(&mut conn)
    .await;
    let _ = conn.close().await;
    rewrites.unwrap_or(false)
}

/// Refuses an existing SQLite file that is not a convoy audit database,
/// read-only, before anything (even the switch to WAL) is written to it.
async fn refuse_foreign(path: &Path) -> anyhow::Result<()> {
    if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        return Ok(());
    }
    let options = SqliteConnectOptions::new().filename(path).read_only(true);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .with_context(|| format!("cannot open the audit database {}", path.display()))?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .with_context(|| format!("{} is not a SQLite database", path.display()))?;
    let _ = conn.close().await;
    if !tables.is_empty() && !tables.iter().any(|t| t == "_sqlx_migrations") {
        anyhow::bail!(
            "{} is not a convoy audit database (it has the tables {}); nothing was written to it. Pass --db with another path",
            path.display(),
            tables.join(", ")
        );
    }
    Ok(())
}

/// Bytes free for this user on the filesystem that holds `path` (its
/// directory when the file does not exist yet); `None` where it cannot be told.
pub fn free_space(path: &Path) -> Option<u64> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d,
        None => Path::new("."),
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` is written by statvfs on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
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
    /// Not sent: a later edit of the same conversation already succeeded.
    Held,
    /// Not sent: judged to change nothing.
    Skipped,
}

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

    /// Rows that did not end as the user wanted: failed, invalid, held or still to send.
    pub fn unfinished(&self) -> u64 {
        self.failed + self.invalid + self.held + self.pending + self.in_flight
    }
}

// ---- The batches table.

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
        "UPDATE batches SET passes = passes + 1, status = 'running', finished_at = NULL, pid = ?2, options = ?3 \
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

/// What `auto` learned of an API at a base URL, as stored: its pace, its
/// cap on concurrent calls and its long windows' quota (the caller checks
/// each before use).
pub async fn learned(db: &Db, api: Api, base: &str) -> anyhow::Result<Learned> {
    let row: Option<Learned> = sqlx::query_as(
        "SELECT rate_per_sec, in_flight, window_quota FROM learned_rates WHERE api = ?1 AND base_url = ?2",
    )
    .bind(api.name())
    .bind(base)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.unwrap_or_default())
}

/// What `auto` learned of an API, as stored: pace, cap on concurrent
/// calls, long windows' quota.
pub type Learned = (Option<f64>, Option<i64>, Option<i64>);

/// Remembers what `auto` knows at the end of a run (what it started from
/// included), for the next run. A run that knows nothing leaves the row.
pub async fn remember(db: &Db, api: Api, base: &str, learned: Learned) -> anyhow::Result<()> {
    let (rate, in_flight, window_quota) = learned;
    if rate.is_none() && in_flight.is_none() && window_quota.is_none() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO learned_rates (api, base_url, rate_per_sec, in_flight, window_quota, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (api, base_url) DO UPDATE SET \
           rate_per_sec = excluded.rate_per_sec, in_flight = excluded.in_flight, \
           window_quota = excluded.window_quota, updated_at = excluded.updated_at",
    )
    .bind(api.name())
    .bind(base)
    .bind(rate)
    .bind(in_flight)
    .bind(window_quota)
    .bind(now())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Gives the write-ahead log's disk space back once a batch's writing is done.
pub async fn truncate_wal(db: &Db) {
    let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&db.pool)
        .await;
}

/// Whether a batch of this name is recorded.
pub async fn batch_exists(db: &Db, id: &str) -> anyhow::Result<bool> {
    let n: Option<i64> = sqlx::query_scalar("SELECT 1 FROM batches WHERE id = ?1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(n.is_some())
}

/// `(?,?,?),(?,?,?)...`: `rows` groups of `cols` placeholders.
fn placeholders(rows: usize, cols: usize) -> String {
    let one = format!("({})", vec!["?"; cols].join(","));
    vec![one; rows].join(",")
}
