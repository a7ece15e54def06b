//! Pacing the calls to one API. Every call awaits [`Pacer::acquire`] first.
//!
//! - A fixed rate hands out evenly spaced start slots (never a burst, so never
//!   above the limit in any one-second window).
//! - `Retry-After` [pauses](Pacer::pause_until) the whole API; when the pause
//!   ends, calls resume at the paced rate, not as one burst of all that waited.
//! - `auto` starts unpaced (or at the rate remembered from the last run), and
//!   on the first 429 drops to the rate the API was actually accepting; it then
//!   probes upward slowly, holding just under the highest rate that drew no 429.
//!
//! Hand-rolled rather than governor: it must change its rate at run time,
//! wait in FIFO order, and run on tokio's clock so tests can pause time.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// `--attention-rate` / `--vg-rate`: `N/s`, `N/min`, `N/h`, `0` (unlimited),
/// `auto`, or `auto:N/s` (auto with a ceiling).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum RateSpec {
    Unlimited,
    Fixed(f64),
    Auto { ceiling: Option<f64> },
}

impl FromStr for RateSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "0" {
            return Ok(RateSpec::Unlimited);
        }
        if s == "auto" {
            return Ok(RateSpec::Auto { ceiling: None });
        }
        if let Some(c) = s.strip_prefix("auto:") {
            return Ok(RateSpec::Auto {
                ceiling: Some(per_second(c)?),
            });
        }
        Ok(RateSpec::Fixed(per_second(s)?))
    }
}

fn per_second(s: &str) -> Result<f64, String> {
    let bad = || format!("{s:?} is not a rate; write N/s, N/min or N/h (0 = unlimited), or auto");
    let (n, unit) = s.split_once('/').ok_or_else(bad)?;
    let n: f64 = n.trim().parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" | "hour" => 3600.0,
        _ => return Err(bad()),
    };
    if !(n.is_finite() && n > 0.0) {
        return Err(bad());
    }
    Ok(n / secs)
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateSpec::Unlimited => f.write_str("0"),
            RateSpec::Fixed(r) => write!(f, "{r}/s"),
            RateSpec::Auto { ceiling: None } => f.write_str("auto"),
            RateSpec::Auto { ceiling: Some(c) } => write!(f, "auto:{c}/s"),
        }
    }
}

/// The slowest `auto` ever goes, in calls per second.
const AUTO_FLOOR: f64 = 0.5;

/// The `auto` controller: pure logic on explicit instants, so it is tested without clocks.
#[derive(Debug)]
pub struct Auto {
    ceiling: Option<f64>,
    /// `None`: not paced (no 429 seen yet and nothing remembered).
    rate: Option<f64>,
    /// The rate at which the API last answered 429.
    limit_seen: Option<f64>,
    last_cut: Option<Instant>,
    last_raise: Instant,
    /// Successes per 100 ms, for the last second.
    buckets: [u32; 10],
    bucket_at: Instant,
}

impl Auto {
    pub fn new(ceiling: Option<f64>, remembered: Option<f64>, now: Instant) -> Auto {
        Auto {
            ceiling,
            rate: remembered.map(|r| clamp(r, ceiling)),
            limit_seen: None,
            last_cut: None,
            last_raise: now,
            buckets: [0; 10],
            bucket_at: now,
        }
    }

    pub fn rate(&self) -> Option<f64> {
        self.rate.or(self.ceiling)
    }

    fn roll(&mut self, now: Instant) {
        let steps = (now.saturating_duration_since(self.bucket_at).as_millis() / 100) as usize;
        if steps > 0 {
            let n = steps.min(10);
            self.buckets.rotate_left(n);
            self.buckets[10 - n..].fill(0);
            self.bucket_at += Duration::from_millis(100 * steps as u64);
        }
    }

    /// Calls the API accepted in the last second.
    fn accepted(&mut self, now: Instant) -> f64 {
        self.roll(now);
        f64::from(self.buckets.iter().sum::<u32>())
    }

    pub fn on_success(&mut self, now: Instant) {
        self.roll(now);
        self.buckets[9] += 1;
        let Some(rate) = self.rate else { return };
        // Probe upward once a second: briskly while well under the rate that
        // drew a 429, then by a hair, so 429s stay rare.
        if now.saturating_duration_since(self.last_raise) >= Duration::from_secs(1)
            && self
                .last_cut
                .is_none_or(|c| now.saturating_duration_since(c) >= Duration::from_secs(2))
        {
            self.last_raise = now;
            let step = match self.limit_seen {
                Some(limit) if rate >= 0.9 * limit => rate * 0.004,
                Some(_) => rate * 0.03,
                None => rate * 0.10,
            };
            self.rate = Some(clamp(rate + step.max(0.05), self.ceiling));
        }
    }

    pub fn on_429(&mut self, now: Instant) {
        // One cut per episode: the 429s that answer calls already on the wire don't cut again.
        if self
            .last_cut
            .is_some_and(|c| now.saturating_duration_since(c) < Duration::from_millis(1000))
        {
            return;
        }
        let accepted = self.accepted(now);
        let current = self.rate.unwrap_or(f64::INFINITY);
        self.limit_seen = Some(current.min(accepted.max(AUTO_FLOOR) * 1.05));
        let next = if self.rate.is_none() || accepted < current {
            // What the API really accepted is the best guess of its limit.
            (accepted * 0.95).min(current * 0.9)
        } else {
            current * 0.9
        };
        self.rate = Some(clamp(next, self.ceiling));
        self.last_cut = Some(now);
        self.last_raise = now;
    }
}

fn clamp(r: f64, ceiling: Option<f64>) -> f64 {
    let r = r.max(AUTO_FLOOR);
    ceiling.map_or(r, |c| r.min(c))
}

#[derive(Debug)]
struct State {
    next: Instant,
    paused_until: Option<Instant>,
    fixed: Option<f64>,
    auto: Option<Auto>,
}

/// A fixed rate is paced this much under its limit: the slack (10 ms in any
/// one-second window) absorbs the jitter between a call's slot and the wire,
/// so the API never sees more than the limit in any second.
const FIXED_MARGIN: f64 = 0.99;

impl State {
    fn interval(&self) -> Option<Duration> {
        let rate = match &self.auto {
            Some(a) => a.rate(),
            None => self.fixed.map(|r| r * FIXED_MARGIN),
        }?;
        Some(Duration::from_secs_f64(1.0 / rate))
    }
}

/// One API's pace. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<State>,
}

impl Pacer {
    /// `remembered`: the rate `auto` learned on an earlier run, if any.
    pub fn new(spec: RateSpec, remembered: Option<f64>) -> Pacer {
        let now = Instant::now();
        let (fixed, auto) = match spec {
            RateSpec::Unlimited => (None, None),
            RateSpec::Fixed(r) => (Some(r), None),
            RateSpec::Auto { ceiling } => (None, Some(Auto::new(ceiling, remembered, now))),
        };
        Pacer {
            state: Mutex::new(State {
                next: now,
                paused_until: None,
                fixed,
                auto,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for this call's start slot. Cancel-safe: dropping it gives up the slot.
    pub async fn acquire(&self) {
        loop {
            let slot = {
                let mut s = self.lock();
                let now = Instant::now();
                let mut slot = now.max(s.paused_until.unwrap_or(now));
                if let Some(iv) = s.interval() {
                    slot = slot.max(s.next);
                    s.next = slot + iv;
                }
                slot
            };
            tokio::time::sleep_until(slot).await;
            // A pause that began while we waited for our slot holds us too.
            let paused = self.lock().paused_until.is_some_and(|p| p > Instant::now());
            if !paused {
                return;
            }
        }
    }

    /// Holds every call to this API until `until` (a `Retry-After`).
    pub fn pause_until(&self, until: Instant) {
        let mut s = self.lock();
        if s.paused_until.is_none_or(|p| p < until) {
            s.paused_until = Some(until);
        }
        s.next = s.next.max(until);
    }

    pub fn on_success(&self) {
        if let Some(a) = self.lock().auto.as_mut() {
            a.on_success(Instant::now());
        }
    }

    pub fn on_429(&self) {
        let mut s = self.lock();
        if let Some(a) = s.auto.as_mut() {
            a.on_429(Instant::now());
            // Slots already handed out at the old pace are respaced from now on.
            let now = Instant::now();
            s.next = s.next.min(now + s.interval().unwrap_or_default()).max(now);
        }
    }

    /// The current pace in calls per second; `None` when unpaced.
    pub fn rate(&self) -> Option<f64> {
        let s = self.lock();
        match &s.auto {
            Some(a) => a.rate(),
            None => s.fixed,
        }
    }

    /// The rate worth remembering for the next run (auto only, once it has learned one).
    pub fn learned(&self) -> Option<f64> {
        self.lock().auto.as_ref().and_then(|a| a.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_specs_parse() {
        assert_eq!("50/s".parse::<RateSpec>().unwrap(), RateSpec::Fixed(50.0));
        assert_eq!("120/min".parse::<RateSpec>().unwrap(), RateSpec::Fixed(2.0));
        assert_eq!("3600/h".parse::<RateSpec>().unwrap(), RateSpec::Fixed(1.0));
        assert_eq!("0".parse::<RateSpec>().unwrap(), RateSpec::Unlimited);
        assert_eq!(
            "auto".parse::<RateSpec>().unwrap(),
            RateSpec::Auto { ceiling: None }
        );
        assert_eq!(
            "auto:100/s".parse::<RateSpec>().unwrap(),
            RateSpec::Auto {
                ceiling: Some(100.0)
            }
        );
        for bad in ["50", "x/s", "-1/s", "5/day", "0/s", "NaN/s"] {
            assert!(bad.parse::<RateSpec>().is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_rate_spaces_calls_evenly() {
        let p = Pacer::new(RateSpec::Fixed(50.0), None);
        let t0 = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..101 {
            p.acquire().await;
            starts.push(Instant::now() - t0);
        }
        assert_eq!(starts[0], Duration::ZERO);
        // 1% under the limit: 100 intervals take 2.02 s, not 2 s.
        let took = starts[100].as_secs_f64();
        assert!((2.0..=2.03).contains(&took), "{took}");
        // No one-second window holds more than 50 starts, even with 9 ms of jitter.
        for (i, s) in starts.iter().enumerate() {
            let in_window = starts[i..]
                .iter()
                .take_while(|t| **t < *s + Duration::from_millis(1009))
                .count();
            assert!(
                in_window <= 50,
                "{in_window} starts in the second after {s:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_everyone_then_resumes_at_pace() {
        let p = std::sync::Arc::new(Pacer::new(RateSpec::Fixed(10.0), None));
        let t0 = Instant::now();
        p.pause_until(t0 + Duration::from_secs(5));
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                p.acquire().await;
                Instant::now() - t0
            }));
        }
        let mut starts = Vec::new();
        for t in tasks {
            starts.push(t.await.unwrap());
        }
        starts.sort();
        assert_eq!(starts[0], Duration::from_secs(5));
        let last = starts[4].as_secs_f64();
        assert!(
            (5.4..5.41).contains(&last),
            "resumed as a burst: {starts:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn auto_settles_just_under_the_accepted_rate() {
        // Simulate an API that accepts 50 calls/s: the controller is fed one
        // success per accepted call and a 429 when it asks for more.
        let t0 = Instant::now();
        let mut a = Auto::new(None, None, t0);
        let mut now = t0;
        let mut sent = 0u32;
        let mut rejected = 0u32;
        let mut window: std::collections::VecDeque<Instant> = Default::default();
        let step = Duration::from_millis(2);
        let mut next_send = t0;
        while now < t0 + Duration::from_secs(60) {
            if now >= next_send {
                while window
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
                {
                    window.pop_front();
                }
                sent += 1;
                if window.len() < 50 {
                    window.push_back(now);
                    a.on_success(now);
                } else {
                    rejected += 1;
                    a.on_429(now);
                }
                next_send = match a.rate() {
                    Some(r) => next_send + Duration::from_secs_f64(1.0 / r),
                    None => now + Duration::from_millis(4), // "unlimited": as fast as the client goes
                };
            }
            now += step;
        }
        let rate = a.rate().unwrap();
        assert!((44.0..=51.0).contains(&rate), "settled at {rate}");
        assert!(
            f64::from(rejected) / f64::from(sent) < 0.03,
            "{rejected} of {sent} rejected"
        );
    }
}
