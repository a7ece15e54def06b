//! The audit database, and every query of it. One struct, [`Db`], owns it:
//! it creates the file (owner-only, 0600) under a lock beside it (two
//! processes may open a new database at once), refuses a SQLite file that
//! is not a convoy database, sets WAL and `synchronous=NORMAL`, and runs the
//! migrations in `migrations/`. It also owns:
//! - batch claims: an OS file lock per batch in `<db>.locks/` ([`Db::lock_batch`]);
//! - `batches`: the batch records, their passes, status and counts;
//! - `rows`: a batch's rows planned in, reconciled on resume, held, and read
//!   back to send; [`SeenKeys`], the one place a repeated `row_id` is caught;
//! - `learned`: what `auto` learned of each API, for the next night;
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

mod batches;
mod learned;
pub mod prune;
pub mod report;
mod rows;
pub mod timeline;
mod writer;

pub use batches::*;
pub use learned::*;
pub use rows::*;
pub use writer::{AttemptRecord, Outcome, ReadRecord, Snapshot, Writer, WriterGone};

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection, SqlitePool};
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
/// Connections in the pool: the writer's, and readers beside it.
const CONNECTIONS: u32 = 4;

impl Db {
    /// Opens (creating and migrating) the audit database. Two processes
    /// opening one new database at once would both create its tables, so
    /// the whole opening runs under a lock file beside it, one process at a
    /// time; and a SQLite file that is not a convoy audit database is
    /// refused before anything is written to it.
    pub async fn open(path: &Path) -> anyhow::Result<Db> {
        Db::open_with(path, || {}).await
    }

    /// Lets every connection read the file through memory-mapped I/O (up
    /// to 256 MB of it), for a command that only reads much of it (a report
    /// of a large batch: a third of the time, and most of the system time,
    /// went to reading pages otherwise). Its pages then count in the
    /// process's resident memory, so batches never use it.
    pub async fn map_for_reading(&self) {
        let mut held = Vec::new();
        for _ in 0..CONNECTIONS {
            if let Ok(mut c) = self.pool.acquire().await {
                let _ = sqlx::query("PRAGMA mmap_size = 268435456")
                    .execute(&mut *c)
                    .await;
                held.push(c);
            }
        }
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
            .max_connections(CONNECTIONS)
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

/// Gives the write-ahead log's disk space back once a batch's writing is done.
pub async fn truncate_wal(db: &Db) {
    let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&db.pool)
        .await;
}

/// `(?,?,?),(?,?,?)...`: `rows` groups of `cols` placeholders.
fn placeholders(rows: usize, cols: usize) -> String {
    let one = format!("({})", vec!["?"; cols].join(","));
    vec![one; rows].join(",")
}
