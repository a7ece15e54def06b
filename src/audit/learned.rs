//! What `auto` learned of each API at each base URL (`learned_rates`),
//! remembered from one night to the next.

use super::{Db, now};
use crate::edit::Api;

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
