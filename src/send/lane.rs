//! One API's lane ([`ApiLane`]): its pacer, key, in-flight budget and the
//! counts of what bounded it; [`OnWire`] counts a call from its send to its
//! answer.

use super::health::{Breaker, Outage};
use crate::call::Endpoint;
use crate::pacer::Pacer;
use reqwest::header::HeaderValue;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What one API needs at run time. Each API is sent by its own loop with its
/// own reader, in-flight budget and pacer, so a slow, paused or stopped API
/// never holds a slot the other API needs.
pub struct ApiLane {
    pub pacer: Arc<Pacer>,
    pub(super) auth: Option<HeaderValue>,
    pub(super) stopped: AtomicBool,
    /// The calls' time on the wire, smoothed (EWMA), in microseconds; 0 before the first.
    pub(super) latency_us: AtomicU64,
    /// The fastest answer so far, in microseconds (`u64::MAX` before the first).
    pub(super) fastest_us: AtomicU64,
    /// Calls answered without queueing so far (slow start of the in-flight
    /// budget while unpaced: one more per four of them, since every call on
    /// the wire when the first 429 comes draws one too).
    pub(super) uncrowded: AtomicU64,
    /// Rows of this lane being worked on now (waiting for the pace, or on
    /// the wire); a row sleeping in its retry backoff does not count.
    pub(super) running: AtomicU64,
    /// Calls of this lane on the wire now: sent and not yet answered; and
    /// a wake-up when one is answered, for calls held by the API's cap.
    pub(super) on_wire: AtomicU64,
    pub(super) wire_freed: tokio::sync::Notify,
    /// Wakes the lane's loop when a row frees its slot for a backoff.
    pub(super) freed: tokio::sync::Notify,
    pub(super) breaker: Mutex<Breaker>,
    pub(super) outage: Mutex<Outage>,
    /// While the API is down, one row at a time probes it.
    pub(super) probe: tokio::sync::Semaphore,
    /// What bounded the lane, for `status NAME`: calls sent, 429s (and
    /// spent quotas), calls sent with the in-flight budget full, the most
    /// rows at once.
    pub(super) calls: AtomicU64,
    pub(super) limited: AtomicU64,
    pub(super) full_sends: AtomicU64,
    pub(super) max_running: AtomicU64,
}

/// What bounded one API in a pass, as `batches.pacing` records it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LanePacing {
    pub api: &'static str,
    /// Calls sent (reads too) and their rate over the pass.
    pub calls: u64,
    pub calls_per_second: f64,
    /// The pace at the end, and where it came from (`auto`, `fixed`, `unlimited`).
    pub pace_per_second: Option<f64>,
    pub pace_kind: &'static str,
    /// 429s drawn (and answers saying the quota is spent).
    pub rate_limited: u64,
    /// Time every call waited for a `Retry-After`, a spent quota or an outage probe.
    pub paused_seconds: f64,
    /// The in-flight budget at the end, and the most rows worked on at once.
    pub in_flight_budget: usize,
    pub max_in_flight: u64,
    /// Smoothed time on the wire at the end.
    pub latency_ms: f64,
    /// The one thing that held the API back most, in words.
    pub bound: String,
}

/// `--concurrency auto`: the fewest calls in flight a lane keeps, the budget
/// it starts with before any answer, and the most it ever has.
pub(super) const AUTO_MIN_IN_FLIGHT: usize = 4;

pub(super) const AUTO_START_IN_FLIGHT: usize = 16;

pub const AUTO_MAX_IN_FLIGHT: usize = 256;

/// Headroom over Little's law (pace × latency), for jitter on the wire.
pub(super) const IN_FLIGHT_HEADROOM: f64 = 1.5;

impl ApiLane {
    pub fn new(endpoint: &Endpoint, pacer: Arc<Pacer>) -> ApiLane {
        let auth = endpoint.authorization().and_then(|a| {
            let mut v = HeaderValue::from_str(&a).ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        ApiLane {
            pacer,
            auth,
            stopped: AtomicBool::new(false),
            latency_us: AtomicU64::new(0),
            fastest_us: AtomicU64::new(u64::MAX),
            uncrowded: AtomicU64::new(0),
            running: AtomicU64::new(0),
            on_wire: AtomicU64::new(0),
            wire_freed: tokio::sync::Notify::new(),
            freed: tokio::sync::Notify::new(),
            breaker: Mutex::new(Breaker::default()),
            outage: Mutex::new(Outage::new()),
            probe: tokio::sync::Semaphore::new(1),
            calls: AtomicU64::new(0),
            limited: AtomicU64::new(0),
            full_sends: AtomicU64::new(0),
            max_running: AtomicU64::new(0),
        }
    }

    pub(super) fn outage(&self) -> std::sync::MutexGuard<'_, Outage> {
        self.outage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long the API was down in this batch.
    pub fn down_for(&self) -> Duration {
        let o = self.outage();
        o.total + o.down.map_or(Duration::ZERO, |(since, _)| since.elapsed())
    }

    /// How many calls this lane may have in flight now. A hard `cap` wins.
    /// Unpaced, the first call goes alone: its answer may state the limit.
    /// Otherwise Little's law: a pace of R calls/s with L s on the wire needs
    /// R × L in flight (plus headroom). Unpaced (no 429 yet), the budget
    /// grows from 16 by one per four answers, as TCP's slow start does, so a
    /// far API is never held to a fixed few calls in flight; answers that
    /// waited in a queue do not grow it (as TCP Vegas reads a longer round
    /// trip).
    pub fn in_flight_limit(&self, cap: Option<usize>) -> usize {
        let found = self.pacer.cap().unwrap_or(usize::MAX);
        if let Some(cap) = cap {
            return cap.min(found).max(1);
        }
        self.auto_in_flight().min(found)
    }

    pub(super) fn auto_in_flight(&self) -> usize {
        let latency = self.latency_us.load(Relaxed) as f64 / 1e6;
        match self.pacer.rate() {
            Some(rate) if latency > 0.0 => {
                let need = (rate * latency * IN_FLIGHT_HEADROOM).ceil() as usize + 2;
                need.clamp(AUTO_MIN_IN_FLIGHT, AUTO_MAX_IN_FLIGHT)
            }
            // Unpaced, before any answer: one call, whose answer may state
            // the API's limit (`RateLimit-Policy`) before a burst overruns it.
            None if latency == 0.0 => 1,
            _ => (AUTO_START_IN_FLIGHT + self.uncrowded.load(Relaxed) as usize / 4)
                .min(AUTO_MAX_IN_FLIGHT),
        }
    }

    pub(super) fn observe(&self, took: Duration) {
        let us = took.as_micros().min(u128::from(u32::MAX)) as u64;
        // EWMA with weight 1/8 (as TCP's SRTT); the first answer sets it.
        let _ = self.latency_us.fetch_update(Relaxed, Relaxed, |old| {
            Some(if old == 0 {
                us.max(1)
            } else {
                (old * 7 + us) / 8
            })
        });
        // An answer that took more than twice the fastest (and a
        // millisecond) waited in a queue, the API's or the machine's: more
        // calls on the wire would only lengthen it, and every one of them
        // draws a 429 when a window's quota runs out (at 0 ms, the calls
        // of a 10 s window's unpaced start grew to ~200 on the wire).
        let fastest = self.fastest_us.fetch_min(us, Relaxed).min(us);
        if us <= fastest.saturating_mul(2) + 1_000 {
            self.uncrowded.fetch_add(1, Relaxed);
        }
    }
}

/// One call on the wire: counted from its send to its answer (or until it
/// is dropped), so the count stays true if the call is cancelled.
pub(super) struct OnWire<'a> {
    pub(super) lane: &'a ApiLane,
    /// Calls on the wire when this one was sent, itself included.
    pub(super) at_send: usize,
}

impl OnWire<'_> {
    /// The call was answered: how many were on the wire when it was sent.
    pub(super) fn leave(self) -> usize {
        self.at_send
    }
}

impl Drop for OnWire<'_> {
    fn drop(&mut self) {
        self.lane.on_wire.fetch_sub(1, Relaxed);
        self.lane.wire_freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::Api;
    use crate::pacer::{RateSpec, Remembered};

    fn lane() -> ApiLane {
        let endpoint = Endpoint {
            api: Api::Vg,
            base: "http://127.0.0.1:1".to_owned(),
            secret: None,
            scheme: crate::call::AuthScheme::Bearer,
        };
        let pacer = Pacer::new(RateSpec::Auto { ceiling: None }, Remembered::default());
        ApiLane::new(&endpoint, Arc::new(pacer))
    }

    /// Unpaced, the budget grows with answers from a far API, and stops
    /// growing when answers wait in a queue: at 0 ms a 10 s window's unpaced
    /// start had ~200 calls on the wire when its quota ran out, and each
    /// drew a 429 (8–10% of the first night's calls).
    #[test]
    fn the_unpaced_budget_grows_only_while_answers_do_not_queue() {
        let far = lane();
        for i in 0..1000u64 {
            far.observe(Duration::from_millis(100 + i % 100));
        }
        assert_eq!(far.in_flight_limit(None), AUTO_MAX_IN_FLIGHT);

        let near = lane();
        for _ in 0..20 {
            near.observe(Duration::from_micros(300));
        }
        let before = near.in_flight_limit(None);
        assert_eq!(before, AUTO_START_IN_FLIGHT + 5);
        // The answers now wait behind each other: 5 ms, then 40 ms.
        for i in 0..400u64 {
            near.observe(Duration::from_millis(5 + i / 10));
        }
        assert_eq!(near.in_flight_limit(None), before);
    }
}
