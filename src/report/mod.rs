//! A finished batch for people who would rather look than read: the figures
//! of one night ([`Night`]), gathered from the audit database alone, drawn
//! as one self-contained HTML page ([`page`]) or written for a scheduler in
//! the Prometheus text format ([`metrics`]).
//!
//! Everything is aggregated per second by SQLite (and drawn per a few
//! seconds on a long night: at most [`MAX_BINS`] bins a chart), never one
//! element per row, so a night of a million rows draws a page of the same
//! size as a short one. A call's time on the wire is counted from the
//! start of the second it was sent in.

pub mod metrics;
pub mod page;

use crate::audit::report::{self, Detail};
use crate::audit::timeline::{self, Held, Sample};
use crate::audit::{Db, Tally};
use crate::edit::Api;

/// The most bins (bars) a timeline has; a longer night's bins are wider.
pub const MAX_BINS: i64 = 1200;

/// What one batch did, as the page and the metrics show it.
#[derive(Debug)]
pub struct Night {
    pub detail: Detail,
    /// Where every timeline starts: the first call or sample (ms since 1970).
    pub origin_ms: i64,
    /// A bin's width, in seconds.
    pub bin_seconds: i64,
    /// Each API that made a call, in `Api::ALL` order.
    pub apis: Vec<ApiNight>,
}

/// One API over the night.
#[derive(Debug)]
pub struct ApiNight {
    pub api: Api,
    pub counts: Tally,
    pub bins: Vec<Bin>,
    pub samples: Vec<Sample>,
    /// Spans held back (ms since 1970, from and to), from the samples.
    pub held: Vec<(i64, i64, Held)>,
    pub latency: Latency,
    /// Answers by HTTP status (`None`: no answer), most first.
    pub responses: Vec<(Option<u16>, u64)>,
    /// What held it back most, in the words of `convoy status NAME`.
    pub bound: Option<String>,
}

/// One bin of a timeline: calls sent in it, by how they were answered, and
/// the calls on the wire on average over it.
#[derive(Debug, Clone, Default)]
pub struct Bin {
    pub sent: u64,
    pub limited: u64,
    /// Answered with another failure, or not answered at all.
    pub failed: u64,
    pub in_flight: f64,
}

/// Time on the wire of one API's answered calls.
#[derive(Debug, Default)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: u64,
    pub p90_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    /// `(up to ms, calls)`: calls that took at most this (and more than the bin before).
    pub histogram: Vec<(u64, u64)>,
}

/// The upper edges of the latency histogram's bins, in milliseconds.
const LATENCY_EDGES: [u64; 16] = [
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    30_000,
    60_000,
    u64::MAX,
];

/// Gathers batch `id`'s night; `None` when there is no such batch. Its
/// parts are read side by side (SQLite reads on several connections).
pub async fn night(db: &Db, id: &str) -> anyhow::Result<Option<Night>> {
    let (detail, samples, calls, latencies) = tokio::try_join!(
        report::detail_with(db, id, false),
        timeline::samples(db, id),
        timeline::calls(db, id),
        timeline::latencies(db, id),
    )?;
    let Some(detail) = detail else {
        return Ok(None);
    };
    // Every timeline starts at the first call's (or sample's) whole second.
    let first = calls
        .iter()
        .map(|c| c.second * 1000)
        .chain(samples.iter().map(|s| s.at_ms))
        .min()
        .unwrap_or(0);
    let origin_ms = first.div_euclid(1000) * 1000;
    let end_ms = calls
        .iter()
        .map(|c| (c.second + c.wire_seconds + 1) * 1000)
        .chain(samples.iter().map(|s| s.at_ms))
        .max()
        .unwrap_or(origin_ms);
    let span_s = (end_ms - origin_ms) / 1000 + 1;
    let bin_seconds = ((span_s + MAX_BINS - 1) / MAX_BINS).max(1);
    let bins_n = (span_s + bin_seconds - 1) / bin_seconds;
    let bin_ms = bin_seconds * 1000;
    let pacing = detail.pacing.as_ref().and_then(|p| p.as_array());
    let mut apis = Vec::new();
    for api in Api::ALL {
        let samples: Vec<Sample> = samples.iter().filter(|s| s.api == api).cloned().collect();
        let mine: Vec<&timeline::Calls> = calls.iter().filter(|c| c.api == api).collect();
        if mine.is_empty() && samples.is_empty() {
            continue;
        }
        let mut bins = vec![Bin::default(); bins_n as usize];
        let mut responses: std::collections::BTreeMap<Option<u16>, u64> = Default::default();
        for c in mine {
            let from = c.second * 1000 - origin_ms;
            let i = (from / bin_ms) as usize;
            let Some(bin) = bins.get_mut(i) else { continue };
            bin.sent += c.count;
            *responses.entry(c.http_status).or_default() += c.count;
            match c.http_status {
                Some(429) => bin.limited += c.count,
                Some(200..=299) => {}
                _ => bin.failed += c.count,
            }
            // Their time on the wire, from the second they were sent in,
            // spread over the bins it spans.
            let (mut at, to) = (from, from + c.wire_ms / c.count.max(1) as i64);
            while at < to {
                let j = (at / bin_ms) as usize;
                let part = to.min((j as i64 + 1) * bin_ms) - at;
                if let Some(b) = bins.get_mut(j) {
                    b.in_flight += part as f64 * c.count as f64 / bin_ms as f64;
                }
                at += part;
            }
        }
        let mut responses: Vec<(Option<u16>, u64)> = responses.into_iter().collect();
        responses.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let bound = pacing.and_then(|p| {
            p.iter()
                .find(|l| l["api"] == api.name())
                .and_then(|l| l["bound"].as_str())
                .map(str::to_owned)
        });
        let mut counts = Tally::default();
        for line in detail
            .by_op
            .iter()
            .filter(|l| l.api.as_deref() == Some(api.name()))
        {
            counts.merge(&line.counts);
        }
        let durations: Vec<(u64, u64)> = latencies
            .iter()
            .filter(|l| l.0 == api)
            .map(|l| (l.1, l.2))
            .collect();
        apis.push(ApiNight {
            api,
            counts,
            bins,
            held: held_spans(&samples),
            samples,
            latency: latency(durations),
            responses,
            bound,
        });
    }
    Ok(Some(Night {
        detail,
        origin_ms,
        bin_seconds,
        apis,
    }))
}

/// Spans of consecutive samples that were held back, each to the next sample.
fn held_spans(samples: &[Sample]) -> Vec<(i64, i64, Held)> {
    let mut spans: Vec<(i64, i64, Held)> = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        if s.held == Held::No {
            continue;
        }
        let to = samples.get(i + 1).map_or(s.at_ms + 1000, |n| n.at_ms);
        match spans.last_mut() {
            Some(last) if last.2 == s.held && last.1 == s.at_ms => last.1 = to,
            _ => spans.push((s.at_ms, to, s.held)),
        }
    }
    spans
}

/// Percentiles and a histogram from `(milliseconds, calls)` pairs.
fn latency(mut d: Vec<(u64, u64)>) -> Latency {
    let count: u64 = d.iter().map(|x| x.1).sum();
    if count == 0 {
        return Latency::default();
    }
    d.sort_unstable();
    // The value at rank `q` of the calls, counting through the pairs.
    let at = |q: f64| {
        let rank = ((count - 1) as f64 * q).round() as u64;
        let mut seen = 0;
        for (ms, n) in &d {
            seen += n;
            if seen > rank {
                return *ms;
            }
        }
        d.last().map_or(0, |x| x.0)
    };
    let mut histogram: Vec<(u64, u64)> = LATENCY_EDGES.iter().map(|e| (*e, 0)).collect();
    let mut k = 0;
    for (ms, n) in &d {
        while *ms > histogram[k].0 {
            k += 1;
        }
        histogram[k].1 += n;
    }
    // Leave out the empty bins above the slowest call.
    while histogram.len() > 1 && histogram.last().is_some_and(|b| b.1 == 0) {
        histogram.pop();
    }
    Latency {
        count,
        p50_ms: at(0.5),
        p90_ms: at(0.9),
        p99_ms: at(0.99),
        max_ms: d.last().map_or(0, |x| x.0),
        histogram,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_and_histogram() {
        let l = latency((1..=100).map(|ms| (ms, 1)).collect());
        assert_eq!((l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms), (51, 90, 99, 100));
        assert_eq!(l.histogram.iter().map(|b| b.1).sum::<u64>(), 100);
        assert_eq!(l.histogram.last(), Some(&(100, 50)));
        // The same calls counted in pairs of equal times.
        let pairs = latency(vec![(30, 60), (10, 30), (500, 10)]);
        assert_eq!(
            (pairs.count, pairs.p50_ms, pairs.p90_ms, pairs.max_ms),
            (100, 30, 30, 500)
        );
    }

    #[test]
    fn held_samples_join_into_spans() {
        let s = |at_ms, held| Sample {
            api: Api::Attention,
            at_ms,
            pace: None,
            learned: None,
            in_flight: 0,
            held,
        };
        let samples = [
            s(0, Held::No),
            s(1000, Held::Paused),
            s(2000, Held::Paused),
            s(3000, Held::No),
            s(4000, Held::Down),
        ];
        assert_eq!(
            held_spans(&samples),
            vec![(1000, 3000, Held::Paused), (4000, 5000, Held::Down)]
        );
    }
}
