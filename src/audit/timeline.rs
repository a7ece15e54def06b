//! A batch over time, for `convoy report`: every call's start, time on the
//! wire and answer, streamed (never held whole), and each API's pacing
//! sampled once a second while it was sent (`pacing_samples`).

use super::Db;
use crate::edit::Api;

/// One API's pacing at one moment of a pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub api: Api,
    /// Milliseconds since 1970.
    pub at_ms: i64,
    /// The pace held, in calls per second (`None`: unpaced).
    pub pace: Option<f64>,
    /// The limit `auto` has learned so far.
    pub learned: Option<f64>,
    /// Calls on the wire.
    pub in_flight: u32,
    pub held: Held,
}

/// Whether an API was held back at a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    No = 0,
    /// Paused by a `Retry-After` or a spent quota.
    Paused = 1,
    /// Down: nearly every call failed on the wire; probed.
    Down = 2,
    /// Stopped for the rest of the batch (a 401/403, the breaker, an outage too long).
    Stopped = 3,
}

impl Held {
    pub fn of(n: i64) -> Held {
        match n {
            1 => Held::Paused,
            2 => Held::Down,
            3 => Held::Stopped,
            _ => Held::No,
        }
    }
}

/// Records a pass's samples, in one transaction.
pub async fn record_samples(
    db: &Db,
    batch_id: &str,
    pass: i64,
    samples: &[Sample],
) -> anyhow::Result<()> {
    let mut tx = db.pool.begin().await?;
    for s in samples {
        sqlx::query(
            "INSERT OR REPLACE INTO pacing_samples (batch_no, pass, api, at_ms, pace, learned, in_flight, held) \
             VALUES ((SELECT no FROM batches WHERE id = ?1), ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(batch_id)
        .bind(pass)
        .bind(s.api.name())
        .bind(s.at_ms)
        .bind(s.pace)
        .bind(s.learned)
        .bind(i64::from(s.in_flight))
        .bind(s.held as i64)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Every sample of a batch, in time order.
pub async fn samples(db: &Db, batch_id: &str) -> anyhow::Result<Vec<Sample>> {
    /// `api, at_ms, pace, learned, in_flight, held`, as stored.
    type Row = (String, i64, Option<f64>, Option<f64>, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT api, at_ms, pace, learned, in_flight, held FROM pacing_samples \
         WHERE batch_no = (SELECT no FROM batches WHERE id = ?1) ORDER BY at_ms, api",
    )
    .bind(batch_id)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(api, at_ms, pace, learned, in_flight, held)| {
            Some(Sample {
                api: Api::parse(&api)?,
                at_ms,
                pace,
                learned,
                in_flight: u32::try_from(in_flight).unwrap_or(0),
                held: Held::of(held),
            })
        })
        .collect())
}

/// The attempts of a batch's rows that share an API, the second they were
/// sent in, their whole seconds on the wire and their answer: a night of a
/// million calls is a few thousand of these, summed by SQLite.
#[derive(Debug, Clone, Copy)]
pub struct Calls {
    pub api: Api,
    /// Seconds since 1970.
    pub second: i64,
    /// Whole seconds on the wire (each call's, rounded down).
    pub wire_seconds: i64,
    /// `None`: no answer (a timeout, a connection error).
    pub http_status: Option<u16>,
    pub count: u64,
    /// Their time on the wire, summed.
    pub wire_ms: i64,
}

/// A batch's attempts, grouped as [`Calls`].
pub async fn calls(db: &Db, batch_id: &str) -> anyhow::Result<Vec<Calls>> {
    /// `api, second, wire_seconds, http_status, count, wire_ms`, as summed.
    type Row = (Option<String>, i64, i64, Option<i64>, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT r.api, t.started_ms / 1000, COALESCE(t.duration_ms, 0) / 1000, t.http_status, \
                count(*), sum(COALESCE(t.duration_ms, 0)) \
         FROM audit_attempts t JOIN audit_rows r ON r.batch_no = t.batch_no AND r.row_key = t.row_key \
         WHERE t.batch_no = (SELECT no FROM batches WHERE id = ?1) GROUP BY 1, 2, 3, 4",
    )
    .bind(batch_id)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(api, second, wire_seconds, status, count, wire_ms)| {
            Some(Calls {
                api: Api::parse(api.as_deref()?)?,
                second,
                wire_seconds,
                http_status: status.and_then(|s| u16::try_from(s).ok()),
                count: count as u64,
                wire_ms,
            })
        })
        .collect())
}

/// How many of a batch's answered attempts took each whole number of
/// milliseconds, per API.
pub async fn latencies(db: &Db, batch_id: &str) -> anyhow::Result<Vec<(Api, u64, u64)>> {
    let rows: Vec<(Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT r.api, t.duration_ms, count(*) \
         FROM audit_attempts t JOIN audit_rows r ON r.batch_no = t.batch_no AND r.row_key = t.row_key \
         WHERE t.batch_no = (SELECT no FROM batches WHERE id = ?1) \
           AND t.http_status IS NOT NULL AND t.duration_ms IS NOT NULL GROUP BY 1, 2",
    )
    .bind(batch_id)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(api, ms, n)| Some((Api::parse(api.as_deref()?)?, ms.max(0) as u64, n as u64)))
        .collect())
}
