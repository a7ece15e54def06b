//! The single writer of a running batch: `in_flight` marks and reads
//! first, in their own short commits (a call waits for them), then
//! attempts and outcomes in group commits, from a bounded channel so that a
//! database slower than the API slows the senders instead of piling
//! responses up in memory. Checkpoints run beside it.

use super::{Db, RowStatus, now, now_ms, placeholders};
use crate::edit::Api;
use anyhow::Context;
use sqlx::{Connection, SqliteConnection};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// One HTTP attempt, for the `attempts` table.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub row_key: Arc<str>,
    pub attempt: u32,
    /// Milliseconds since 1970 (UTC).
    pub started_ms: i64,
    pub duration_ms: u64,
    pub http_status: Option<u16>,
    pub error: Option<String>,
}

/// The row's response holds its conversation's snapshot (`audit.holds_snapshot`):
/// the newest such row is what the `conversations` view shows.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub api: Api,
    pub conversation_id: Arc<str>,
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
    pub response: Option<Arc<str>>,
    pub snapshot: Option<Snapshot>,
    /// What the row changes (JSON), when it was judged against live state.
    pub changes: Option<String>,
}

/// One read of a conversation, for the `reads` table.
#[derive(Clone, Debug)]
pub struct ReadRecord {
    pub api: Api,
    pub conversation_id: Arc<str>,
    pub agent_id: Option<String>,
    /// `pre_image`, `state`, `verify` or `check`.
    pub purpose: &'static str,
    pub row_key: Arc<str>,
    pub url: String,
    pub attempts: u32,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    /// The conversation as read (JSON), when it was.
    pub state: Option<String>,
}

enum Event {
    InFlight {
        id: i64,
        ack: oneshot::Sender<()>,
    },
    Unmark {
        id: i64,
        ack: oneshot::Sender<()>,
    },
    Read {
        read: ReadRecord,
        ack: oneshot::Sender<()>,
    },
    Attempt(AttemptRecord),
    Finished(Outcome),
    Flush(oneshot::Sender<()>),
}

/// The one writer of a running batch. Cloneable handle; the task ends when
/// every handle is dropped.
#[derive(Clone)]
pub struct Writer {
    /// Marks and reads: a call waits for them, so they are never queued
    /// behind outcomes.
    urgent: mpsc::Sender<Event>,
    /// Attempts, outcomes and flushes, in order. Bounded: when the database
    /// cannot keep up, the senders wait (and so sending slows), rather than
    /// responses piling up in memory.
    bulk: mpsc::Sender<Event>,
}

/// The most events one transaction takes.
const GROUP: usize = 4096;
/// Attempts and outcomes waiting for the writer: in the channel, and taken
/// from it (each outcome may hold a response of a few KB).
const BULK: usize = 512;

impl Writer {
    pub async fn start(
        db: &Db,
        batch_id: &str,
    ) -> anyhow::Result<(Writer, tokio::task::JoinHandle<anyhow::Result<usize>>)> {
        let mut conn = db.pool.acquire().await?.detach();
        // Checkpoints run beside the writer (below), never inside its commits,
        // so marking a row in_flight never waits for a WAL copy and fsync.
        sqlx::query("PRAGMA wal_autocheckpoint = 0")
            .execute(&mut conn)
            .await?;
        let (urgent, urgent_rx) = mpsc::channel(GROUP);
        let (bulk, bulk_rx) = mpsc::channel(BULK);
        // Attempts name the batch by its number (`batches.no`).
        let batch_no: Option<i64> = sqlx::query_scalar("SELECT no FROM batches WHERE id = ?1")
            .bind(batch_id)
            .fetch_optional(&mut conn)
            .await?;
        let batch = (batch_id.to_owned(), batch_no);
        let (stop, stopped) = oneshot::channel();
        let checkpointer = tokio::spawn(checkpoint_loop(db.clone(), stopped));
        let task = tokio::spawn(async move {
            let result = write_loop(conn, batch, urgent_rx, bulk_rx).await;
            // Let a checkpoint under way finish: aborted, it would still run
            // on its connection, and the final truncation of the WAL, finding
            // another checkpoint running, would give up and leave it full.
            let _ = stop.send(());
            let _ = checkpointer.await;
            result
        });
        Ok((Writer { urgent, bulk }, task))
    }

    /// Marks the row `in_flight` and returns once that is committed. An
    /// error means the mark could not be recorded: the call must not be sent.
    pub async fn in_flight(&self, id: i64) -> Result<(), WriterGone> {
        self.committed(|ack| Event::InFlight { id, ack }).await
    }

    /// Takes back a row's `in_flight` mark before its call went out (a pause
    /// began meanwhile), and returns once that is committed.
    pub async fn unmark(&self, id: i64) -> Result<(), WriterGone> {
        self.committed(|ack| Event::Unmark { id, ack }).await
    }

    /// Sends an event a call waits for, and returns once it is committed.
    async fn committed(
        &self,
        event: impl FnOnce(oneshot::Sender<()>) -> Event,
    ) -> Result<(), WriterGone> {
        let (ack, done) = oneshot::channel();
        self.urgent.send(event(ack)).await.map_err(|_| WriterGone)?;
        done.await.map_err(|_| WriterGone)
    }

    /// Records a read and returns once it is committed (a pre-image is
    /// durable before the edit it precedes goes out).
    pub async fn read(&self, read: ReadRecord) -> Result<(), WriterGone> {
        self.committed(|ack| Event::Read { read, ack }).await
    }

    pub async fn attempt(&self, a: AttemptRecord) -> Result<(), WriterGone> {
        self.bulk
            .send(Event::Attempt(a))
            .await
            .map_err(|_| WriterGone)
    }

    pub async fn finished(&self, o: Outcome) -> Result<(), WriterGone> {
        self.bulk
            .send(Event::Finished(o))
            .await
            .map_err(|_| WriterGone)
    }

    /// Returns once everything sent before it is committed.
    pub async fn flush(&self) -> Result<(), WriterGone> {
        let (ack, done) = oneshot::channel();
        self.bulk
            .send(Event::Flush(ack))
            .await
            .map_err(|_| WriterGone)?;
        done.await.map_err(|_| WriterGone)
    }
}

/// The audit writer has stopped (its database failed); nothing more can be recorded.
#[derive(Debug, thiserror::Error)]
#[error("the audit database writer has stopped")]
pub struct WriterGone;

async fn write_loop(
    mut conn: SqliteConnection,
    (batch_id, batch_no): (String, Option<i64>),
    mut urgent: mpsc::Receiver<Event>,
    mut bulk: mpsc::Receiver<Event>,
) -> anyhow::Result<usize> {
    /// Outcome-side events written per transaction, so a mark never waits long.
    const CHUNK: usize = 128;
    // (row, `in_flight` or back to `pending`, who waits for it)
    let mut marks: Vec<Mark> = Vec::new();
    let mut reads: Vec<(ReadRecord, oneshot::Sender<()>)> = Vec::new();
    // Attempts, outcomes and flushes, in arrival order.
    let mut queue: VecDeque<Queued> = VecDeque::new();
    let (mut urgent_open, mut bulk_open) = (true, true);
    // The most attempts and outcomes held at once (returned, for tests).
    let mut peak = 0;
    while urgent_open || bulk_open || !marks.is_empty() || !reads.is_empty() || !queue.is_empty() {
        if marks.is_empty() && reads.is_empty() && queue.is_empty() {
            tokio::select! {
                biased;
                e = urgent.recv(), if urgent_open => match e {
                    Some(e) => sort(e, &mut marks, &mut reads, &mut queue),
                    None => urgent_open = false,
                },
                e = bulk.recv(), if bulk_open => match e {
                    Some(e) => sort(e, &mut marks, &mut reads, &mut queue),
                    None => bulk_open = false,
                },
                else => break,
            }
        }
        while let Ok(e) = urgent.try_recv() {
            sort(e, &mut marks, &mut reads, &mut queue);
        }
        while queue.len() < BULK {
            match bulk.try_recv() {
                Ok(e) => sort(e, &mut marks, &mut reads, &mut queue),
                Err(_) => break,
            }
        }
        peak = peak.max(queue.len());
        let (at, at_ms) = (now(), now_ms());
        // Calls wait for their marks: those go first, in a short transaction of their own.
        // (A row's outcome never precedes its own mark, which it waited for.)
        if !marks.is_empty() || !reads.is_empty() {
            let ids = |in_flight: bool| -> Vec<i64> {
                marks
                    .iter()
                    .filter(|m| m.1 == in_flight)
                    .map(|m| m.0)
                    .collect()
            };
            let (marked, unmarked) = (ids(true), ids(false));
            let mark = sqlx::query(
                "UPDATE audit_rows SET status = 'in_flight', started_ms = COALESCE(started_ms, ?1), finished_ms = NULL, reserved = NULL \
                 WHERE rowid IN (SELECT value FROM json_each(?2))",
            )
            .bind(at_ms)
            .bind(serde_json::to_string(&marked)?);
            if reads.is_empty() && unmarked.is_empty() {
                // One statement commits by itself: one round trip to the
                // connection's thread instead of three.
                mark.execute(&mut conn)
                    .await
                    .context("audit database: mark rows in flight")?;
            } else {
                let mut tx = conn.begin().await.context("audit database: begin")?;
                for (r, _) in &reads {
                    write_read(&mut tx, &batch_id, &at, r)
                        .await
                        .context("audit database: record a read")?;
                }
                if !marked.is_empty() {
                    mark.execute(&mut *tx)
                        .await
                        .context("audit database: mark rows in flight")?;
                }
                if !unmarked.is_empty() {
                    sqlx::query(
                        "UPDATE audit_rows SET status = 'pending' \
                         WHERE rowid IN (SELECT value FROM json_each(?1)) AND status = 'in_flight'",
                    )
                    .bind(serde_json::to_string(&unmarked)?)
                    .execute(&mut *tx)
                    .await
                    .context("audit database: take back in_flight marks")?;
                }
                tx.commit().await.context("audit database: commit")?;
            }
            for (_, _, ack) in marks.drain(..) {
                let _ = ack.send(());
            }
            for (_, ack) in reads.drain(..) {
                let _ = ack.send(());
            }
            continue;
        }
        let (mut attempts, mut outcomes, mut flushed) = (Vec::new(), Vec::new(), Vec::new());
        for e in queue.drain(..queue.len().min(CHUNK)) {
            match e {
                Queued::Attempt(a) => attempts.push(a),
                Queued::Finished(o) => outcomes.push(o),
                Queued::Flush(ack) => flushed.push(ack),
            }
        }
        if !attempts.is_empty() || !outcomes.is_empty() {
            // IMMEDIATE: the outcomes begin by reading the last response's
            // number, and a read that turns into a write fails if another
            // process wrote in between (SQLITE_BUSY_SNAPSHOT).
            let mut tx = conn
                .begin_with("BEGIN IMMEDIATE")
                .await
                .context("audit database: begin")?;
            write_attempts(&mut tx, batch_no, &attempts)
                .await
                .context("audit database: record attempts")?;
            write_outcomes(&mut tx, at_ms, &outcomes)
                .await
                .context("audit database: record outcomes")?;
            tx.commit().await.context("audit database: commit")?;
        }
        for ack in flushed {
            let _ = ack.send(());
        }
    }
    Ok(peak)
}

/// A row to mark `in_flight` (true) or back `pending`, and who waits for it.
type Mark = (i64, bool, oneshot::Sender<()>);

/// What waits behind the marks, in arrival order.
enum Queued {
    Attempt(AttemptRecord),
    Finished(Outcome),
    Flush(oneshot::Sender<()>),
}

fn sort(
    e: Event,
    marks: &mut Vec<Mark>,
    reads: &mut Vec<(ReadRecord, oneshot::Sender<()>)>,
    queue: &mut VecDeque<Queued>,
) {
    match e {
        Event::InFlight { id, ack } => marks.push((id, true, ack)),
        Event::Unmark { id, ack } => marks.push((id, false, ack)),
        Event::Read { read, ack } => reads.push((read, ack)),
        Event::Attempt(a) => queue.push_back(Queued::Attempt(a)),
        Event::Finished(o) => queue.push_back(Queued::Finished(o)),
        Event::Flush(ack) => queue.push_back(Queued::Flush(ack)),
    }
}

/// Copies the WAL into the database every second from another connection
/// (a passive checkpoint never blocks the writer). A passive checkpoint can
/// never catch up with a WAL that is written all the time, so once the WAL
/// passes [`WAL_RESTART_FRAMES`] a RESTART checkpoint copies the little that
/// is left and makes the next write start the WAL from the beginning: the
/// WAL (and the memory its index maps) stays bounded however long the batch.
async fn checkpoint_loop(db: Db, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = &mut stop => return,
        }
        let passive: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&db.pool)
            .await;
        if let Ok((_, frames, _)) = passive
            && frames > WAL_RESTART_FRAMES
        {
            let _ = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                .execute(&db.pool)
                .await;
        }
    }
}

/// 4,096 pages of 16 KiB ([`PAGE_SIZE`]): 64 MiB of WAL.
const WAL_RESTART_FRAMES: i64 = 4_096;

/// Splits `n` rows into statement sizes from a small fixed set, so each
/// multi-row statement is prepared once and then reused from the cache.
fn chunk_sizes(mut n: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        let size = [64, 16, 4, 1].into_iter().find(|s| *s <= n)?;
        n -= size;
        Some(size)
    })
}

/// A pre-image is kept once per batch and conversation: the first read wins.
async fn write_read(
    tx: &mut SqliteConnection,
    batch_id: &str,
    at: &str,
    r: &ReadRecord,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO reads (batch_id, api, conversation_id, agent_id, purpose, row_key, url, attempts, http_status, error, state, read_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) ON CONFLICT DO NOTHING",
    )
    .bind(batch_id)
    .bind(r.api.name())
    .bind(&*r.conversation_id)
    .bind(&r.agent_id)
    .bind(r.purpose)
    .bind(&*r.row_key)
    .bind(&r.url)
    .bind(r.attempts as i64)
    .bind(r.http_status.map(i64::from))
    .bind(&r.error)
    .bind(&r.state)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn write_attempts(
    tx: &mut SqliteConnection,
    batch_no: Option<i64>,
    attempts: &[AttemptRecord],
) -> sqlx::Result<()> {
    let mut rest = attempts;
    for size in chunk_sizes(attempts.len()) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let sql = format!(
            "INSERT OR REPLACE INTO audit_attempts (batch_no, row_key, attempt, started_ms, duration_ms, http_status, error) VALUES {}",
            placeholders(size, 7)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in chunk {
            q = q
                .bind(batch_no)
                .bind(&*a.row_key)
                .bind(a.attempt as i64)
                .bind(a.started_ms)
                .bind(a.duration_ms as i64)
                .bind(a.http_status.map(i64::from))
                .bind(&a.error);
        }
        q.execute(&mut *tx).await?;
    }
    Ok(())
}

/// Responses are appended to `responses` (numbered after the last one: this
/// transaction holds the database's write lock), then each row is updated
/// to point at its own; the row's earlier response, if any, goes with it
/// (a trigger).
async fn write_outcomes(
    tx: &mut SqliteConnection,
    at_ms: i64,
    outcomes: &[Outcome],
) -> sqlx::Result<()> {
    let (last,): (i64,) = sqlx::query_as("SELECT COALESCE(max(id), 0) FROM responses")
        .fetch_one(&mut *tx)
        .await?;
    let mut next = last;
    let response_ids: Vec<Option<i64>> = outcomes
        .iter()
        .map(|o| {
            o.response.as_ref().map(|_| {
                next += 1;
                next
            })
        })
        .collect();
    let bodies: Vec<(i64, &str)> = outcomes
        .iter()
        .zip(&response_ids)
        .filter_map(|(o, id)| Some(((*id)?, o.response.as_deref()?)))
        .collect();
    let mut rest = &bodies[..];
    for size in chunk_sizes(bodies.len()) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let sql = format!(
            "INSERT INTO responses (id, body) VALUES {}",
            placeholders(size, 2)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, body) in chunk {
            q = q.bind(id).bind(body);
        }
        q.execute(&mut *tx).await?;
    }
    let rows: Vec<(&Outcome, Option<i64>)> = outcomes.iter().zip(response_ids).collect();
    let mut rest = &rows[..];
    for size in chunk_sizes(rows.len()) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        // column1 = rowid, then status, attempts, http_status, error, response_id, changes, holds_snapshot.
        let sql = format!(
            "UPDATE audit_rows SET status = v.column2, attempts = v.column3, http_status = v.column4, error = v.column5, \
             response_id = v.column6, changes = COALESCE(v.column7, audit_rows.changes), holds_snapshot = v.column8, \
             finished_ms = CASE WHEN v.column2 = 'pending' THEN NULL ELSE ? END \
             FROM (VALUES {}) AS v WHERE audit_rows.rowid = v.column1",
            placeholders(size, 8)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(at_ms);
        for (o, response_id) in chunk {
            q = q
                .bind(o.id)
                .bind(o.status.as_str())
                .bind(o.attempts as i64)
                .bind(o.http_status.map(i64::from))
                .bind(&o.error)
                .bind(response_id)
                .bind(o.changes.as_deref())
                .bind(o.snapshot.as_ref().map(|_| 1i64));
        }
        q.execute(&mut *tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer once took every queued outcome off its channel whatever
    /// its backlog, so a database slower than the API piled responses up in
    /// memory (298 MB of RSS at 200,000 rows). Now it holds a bounded number,
    /// and a sender faster than the database waits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outcomes_faster_than_the_database_wait_instead_of_piling_up() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("a.db")).await.unwrap();
        let (writer, task) = Writer::start(&db, "b").await.unwrap();
        for i in 0..20_000 {
            let o = Outcome {
                id: i,
                row_key: Arc::from(i.to_string()),
                status: RowStatus::Succeeded,
                attempts: 1,
                http_status: Some(200),
                error: None,
                response: Some(Arc::from("x".repeat(2_000))),
                snapshot: None,
                changes: None,
            };
            writer.finished(o).await.unwrap();
        }
        drop(writer);
        let peak = task.await.unwrap().unwrap();
        assert!(peak <= BULK, "the writer held {peak} outcomes at once");
    }
}
