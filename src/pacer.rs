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
/// How long a rate must run without a 429 to count as good.
const HELD: Duration = Duration::from_secs(5);
/// The most often the rate steps up.
const STEP: Duration = Duration::from_secs(1);
/// Held under the lowest rate that drew a 429 by this factor.
const UNDER: f64 = 0.97;
/// How long a rate holds before a small step up.
const SMALL_STEP: Duration = Duration::from_secs(1);
/// Slow start doubles the rate this often until the first overshoot.
const SLOW_START_STEP: Duration = Duration::from_millis(250);
/// In steady state, how long to trust the rate that drew a 429 before
/// probing above it again: rarely, since each probe costs a 429 (and its
/// `Retry-After` pause).
const PROBE_RARELY: Duration = Duration::from_secs(60);
/// After the API's limit dropped, how often to probe back toward the old rate.
const PROBE_OFTEN: Duration = Duration::from_secs(4);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No 429 yet: not paced at all.
    Unpaced,
    /// Doubling from what the API first accepted, until it answers 429.
    SlowStart,
    /// Holding just under the lowest rate that drew a 429, climbing carefully.
    Steady,
}

/// The `auto` controller: pure logic on explicit instants, so it is tested
/// without clocks. It holds close to the highest rate that drew no 429:
///
/// - unpaced until the first 429; then slow start from what the API
///   accepted, doubling every 250 ms;
/// - the first overshoot falls back to the last good rate, then climbs by
///   3% a second until a 429 pins the limit; it then holds at 97% of the
///   rate that drew it, and probes above only once a minute;
/// - a 429 at a rate that used to hold means the limit dropped: halve, find
///   the new limit with large steps, and probe back toward the old rate
///   every few seconds so a recovered limit is followed quickly.
#[derive(Debug)]
pub struct Auto {
    ceiling: Option<f64>,
    phase: Phase,
    rate: f64,
    /// The highest rate that ran [`HELD`] without a 429.
    good: Option<f64>,
    /// The lowest rate that drew a 429 (weak when it came from a slow-start doubling).
    bad: Option<(f64, bool)>,
    /// The good rate from before the limit dropped: where to return to.
    before_drop: Option<f64>,
    /// The rate before the last step up: where a failed step falls back to.
    prev: Option<f64>,
    /// Whether that step was a small one (3%).
    small_step: bool,
    /// The 429 episode before the last.
    last_episode: Option<Instant>,
    /// When probing above `bad` is due.
    probe_at: Option<Instant>,
    /// Since when the current rate has run without a 429.
    since: Instant,
    last_step: Instant,
    last_cut: Option<Instant>,
    /// Successes while unpaced: the first estimate of the limit.
    accepted: u32,
    /// Successes per 100 ms over the last second: what the API really accepts.
    window: [u32; 10],
    window_at: Instant,
    /// When slow start began.
    slow_start_at: Instant,
    /// The last slow-start level really reached.
    reached: Option<f64>,
    /// After slow start: the level to climb back to quickly.
    ramp_to: Option<f64>,
}

impl Auto {
    /// `remembered`: the good rate an earlier run learned; the run starts there and holds.
    pub fn new(ceiling: Option<f64>, remembered: Option<f64>, now: Instant) -> Auto {
        let mut a = Auto {
            ceiling,
            phase: Phase::Unpaced,
            rate: 0.0,
            good: None,
            bad: None,
            before_drop: None,
            prev: None,
            small_step: false,
            last_episode: None,
            probe_at: None,
            since: now,
            last_step: now,
            last_cut: None,
            accepted: 0,
            window: [0; 10],
            window_at: now,
            slow_start_at: now,
            reached: None,
            ramp_to: None,
        };
        if let Some(r) = remembered {
            a.phase = Phase::Steady;
            a.rate = clamp(r, ceiling);
            a.good = Some(a.rate);
            a.probe_at = Some(now + PROBE_RARELY);
        }
        a
    }

    /// The pace in calls per second; `None` while unpaced (and no ceiling).
    pub fn rate(&self) -> Option<f64> {
        match self.phase {
            Phase::Unpaced => self.ceiling,
            _ => Some(self.rate),
        }
    }

    /// The rate worth starting the next run at: the highest that held, else
    /// (a short run) the pace it settled on after its last 429.
    pub fn learned(&self) -> Option<f64> {
        match self.phase {
            Phase::Steady => self.good.or(Some(self.rate)),
            _ => None,
        }
    }

    fn roll(&mut self, now: Instant) {
        let steps = (now.saturating_duration_since(self.window_at).as_millis() / 100) as usize;
        if steps > 0 {
            let n = steps.min(10);
            self.window.rotate_left(n);
            self.window[10 - n..].fill(0);
            self.window_at += Duration::from_millis(100 * steps as u64);
        }
    }

    /// Calls per second the API accepted since `since` (at most the last second).
    fn accepted_rate(&mut self, now: Instant, since: Instant) -> f64 {
        self.roll(now);
        let span = now
            .saturating_duration_since(since)
            .as_secs_f64()
            .clamp(0.1, 1.0);
        let buckets = ((span * 10.0).ceil() as usize).clamp(1, 10);
        f64::from(self.window[10 - buckets..].iter().sum::<u32>()) / (buckets as f64 / 10.0)
    }

    pub fn on_success(&mut self, now: Instant) {
        self.roll(now);
        self.window[9] += 1;
        match self.phase {
            Phase::Unpaced => self.accepted = self.accepted.saturating_add(1),
            Phase::SlowStart => {
                // Double once this level is really being reached (slow-start
                // levels are never taken as good: they run too briefly for a
                // 429 to tell).
                if now.saturating_duration_since(self.last_step) >= SLOW_START_STEP
                    && self.accepted_rate(now, self.last_step) >= self.rate * 0.6
                {
                    self.reached = Some(self.rate);
                    self.set(self.rate * 2.0, now);
                }
            }
            Phase::Steady => self.climb(now),
        }
    }

    fn set(&mut self, rate: f64, now: Instant) {
        self.rate = clamp(rate, self.ceiling);
        self.last_step = now;
        self.since = now;
    }

    fn climb(&mut self, now: Instant) {
        let r = self.rate;
        if now.saturating_duration_since(self.since) >= HELD && self.good.is_none_or(|g| g < r) {
            self.good = Some(r);
            if self.bad.is_some_and(|(b, _)| b <= r) {
                self.bad = None;
            }
        }
        if self.before_drop.is_some_and(|d| r >= d * 0.97) {
            // Back where we were before the limit dropped.
            self.before_drop = None;
            self.probe_at = Some(now + PROBE_RARELY);
        }
        if now.saturating_duration_since(self.last_step) < STEP {
            return;
        }
        let due = self.probe_at.is_none_or(|p| now >= p);
        let under_bad = |t: f64| match self.bad {
            Some((b, _)) if !due => t.min(b * UNDER),
            _ => t,
        };
        if self.ramp_to.is_some_and(|t| r >= t * 0.97) {
            self.ramp_to = None;
        }
        // Where to head, and whether what is known allows large steps.
        let (target, large) = match (self.before_drop.or(self.ramp_to), self.bad) {
            (Some(d), _) => (under_bad(d), true),
            (None, Some((b, weak))) if !due => (b * UNDER, !weak),
            (None, _) if due => (f64::INFINITY, false),
            _ => (r, false),
        };
        // Small steps only from a rate that has held a while: a bucket's
        // slack can hide a small excess for seconds (a 429 right after the
        // next step then says so).
        let held = now.saturating_duration_since(self.since) >= SMALL_STEP;
        if target <= r * 1.0001 || (!large && !held) {
            return;
        }
        let step = if large {
            ((target - r) * 0.5).max(r * 0.03)
        } else {
            r * 0.03
        };
        self.prev = Some(r);
        self.small_step = !large;
        self.set((r + step.max(0.05)).min(target), now);
    }

    pub fn on_429(&mut self, now: Instant) {
        // One cut per episode: 429s answering calls already on the wire don't cut again.
        if self
            .last_cut
            .is_some_and(|c| now.saturating_duration_since(c) < Duration::from_millis(500))
        {
            return;
        }
        self.last_episode = self.last_cut;
        self.last_cut = Some(now);
        self.ramp_to = None;
        let r = self.rate;
        match self.phase {
            Phase::Unpaced => {
                self.phase = Phase::SlowStart;
                self.slow_start_at = now;
                self.set(f64::from(self.accepted.max(1)), now);
            }
            Phase::SlowStart => {
                // Overshot: what the API accepted lately (its limit, plus
                // whatever slack it allows) is the best estimate there is.
                self.phase = Phase::Steady;
                let accepted = self.accepted_rate(now, self.slow_start_at).min(r);
                self.bad = Some((r, true));
                // Restart from what was accepted (a second of slow start
                // underestimates it), then climb quickly back to the last
                // level slow start really reached.
                let back = self.reached.unwrap_or(accepted).min(accepted * 0.95);
                self.ramp_to = self.reached.filter(|r| *r > back);
                self.set(back, now);
                self.probe_at = Some(now + PROBE_RARELY);
            }
            Phase::Steady if self.good.is_some_and(|g| r <= g * 1.001) => {
                // A rate that had held drew a 429: the limit dropped (or the
                // rate was over it all along, hidden by the API's slack).
                self.before_drop = self
                    .before_drop
                    .into_iter()
                    .chain(self.good)
                    .reduce(f64::max);
                self.good = None;
                self.bad = Some((r, false));
                self.prev = None;
                self.set(r * 0.85, now);
                self.probe_at = Some(now + PROBE_OFTEN);
            }
            Phase::Steady => {
                let quick = now.saturating_duration_since(self.since) < HELD;
                let bound = match self.prev {
                    // A 429 right after a small step: the level before it was
                    // already over the limit, its excess hidden by the slack.
                    Some(p) if quick && self.small_step => p,
                    _ => r,
                };
                self.bad = Some((bound, false));
                // Two 429 episodes close together: the limit fell a long way.
                let fell = self
                    .last_episode
                    .is_some_and(|e| now.saturating_duration_since(e) < Duration::from_secs(3));
                let back = if fell {
                    r * 0.5
                } else {
                    self.prev
                        .or(self.good)
                        .filter(|b| *b < r)
                        .unwrap_or(r * 0.85)
                        .min(bound * 0.97)
                };
                self.prev = None;
                self.good = self.good.map(|g| g.min(back));
                self.set(back, now);
                let wait = if self.before_drop.is_some() {
                    PROBE_OFTEN
                } else {
                    PROBE_RARELY
                };
                self.probe_at = Some(now + wait);
            }
        }
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
    /// `auto` remembers what it learned; `0` (unlimited) reacts to 429s the same way but forgets.
    remember: bool,
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
        let (fixed, auto, remember) = match spec {
            RateSpec::Unlimited => (None, Some(Auto::new(None, None, now)), false),
            RateSpec::Fixed(r) => (Some(r), None, false),
            RateSpec::Auto { ceiling } => (None, Some(Auto::new(ceiling, remembered, now)), true),
        };
        Pacer {
            state: Mutex::new(State {
                next: now,
                paused_until: None,
                fixed,
                auto,
                remember,
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
        let s = self.lock();
        if !s.remember {
            return None;
        }
        s.auto.as_ref().and_then(Auto::learned)
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

    /// A simulated API like the sandbox's: GCRA with a tenth of a second of
    /// slack, answering 429 with `Retry-After: 1`. The client sends as its
    /// pacer allows (every 2 ms when unpaced). Returns (seconds, 429s, rate trace).
    fn simulate(
        a: &mut Auto,
        rows: usize,
        limit_at: impl Fn(f64) -> f64,
    ) -> (f64, usize, Vec<(f64, f64)>) {
        let t0 = Instant::now();
        let at = |t: f64| t0 + Duration::from_secs_f64(t);
        let (mut t, mut tat, mut paused_until) = (0.0f64, 0.0f64, 0.0f64);
        let (mut done, mut rejected) = (0, 0);
        let mut trace = Vec::new();
        while done < rows {
            let limit = limit_at(t);
            let interval = 1.0 / limit;
            let slack = interval * (limit * 0.1).max(1.0);
            let ahead = tat.max(t) - t;
            if ahead > slack {
                rejected += 1;
                paused_until = t + 1.0;
                a.on_429(at(t));
            } else {
                tat = tat.max(t) + interval;
                done += 1;
                a.on_success(at(t));
            }
            trace.push((t, a.rate().unwrap_or(f64::INFINITY)));
            let gap = a.rate().map_or(0.002, |r| 1.0 / r);
            t = (t + gap).max(paused_until);
        }
        (t, rejected, trace)
    }

    #[test]
    fn auto_finds_an_unpublished_limit_then_starts_there_next_time() {
        let t0 = Instant::now();
        let mut first = Auto::new(None, None, t0);
        let (secs, rejected, _) = simulate(&mut first, 2000, |_| 50.0);
        // The first run pays for discovery: the unpaced start's 429 and
        // the slow-start overshoot each cost a second of Retry-After.
        let achieved = 2000.0 / secs;
        assert!(achieved >= 43.0, "first run: {achieved:.1}/s");
        assert!(rejected <= 60, "first run: {rejected} 429s");

        let learned = first.learned().expect("a rate was learned");
        assert!((45.0..=50.5).contains(&learned), "learned {learned}");
        let mut second = Auto::new(None, Some(learned), t0);
        let (secs, rejected, _) = simulate(&mut second, 2000, |_| 50.0);
        let achieved = 2000.0 / secs;
        assert!(achieved >= 48.5, "second run: {achieved:.1}/s");
        assert!(rejected <= 20, "second run: {rejected} 429s");
    }

    #[test]
    fn auto_follows_a_limit_that_drops_and_recovers() {
        let mut a = Auto::new(None, Some(49.0), Instant::now());
        let limit = |t: f64| {
            if (15.0..35.0).contains(&t) {
                20.0
            } else {
                50.0
            }
        };
        let (_, _, trace) = simulate(&mut a, 2500, limit);
        let rate_at = |t: f64| {
            trace
                .iter()
                .take_while(|(x, _)| *x <= t)
                .last()
                .map_or(0.0, |(_, r)| *r)
        };
        // Down within a few seconds of the drop, and mostly near the new limit while it lasts.
        assert!(rate_at(20.0) <= 22.0, "{}", rate_at(20.0));
        let low: Vec<f64> = trace
            .iter()
            .filter(|(t, _)| (20.0..35.0).contains(t))
            .map(|(_, r)| *r)
            .collect();
        let near = low.iter().filter(|r| (15.0..=22.0).contains(*r)).count();
        assert!(
            near * 10 >= low.len() * 6,
            "{near} of {} samples near 20/s",
            low.len()
        );
        // Back up within a few seconds of the recovery.
        let back = trace
            .iter()
            .find(|(t, r)| *t >= 35.0 && *r >= 45.0)
            .map(|(t, _)| t - 35.0);
        assert!(
            back.is_some_and(|s| s <= 10.0),
            "back to 45/s after {back:?} s"
        );
    }

    #[test]
    fn a_limit_never_reached_teaches_nothing() {
        let mut a = Auto::new(None, None, Instant::now());
        let (_, rejected, _) = simulate(&mut a, 500, |_| 10_000.0);
        assert_eq!(rejected, 0);
        assert_eq!(a.rate(), None, "still unpaced");
        assert_eq!(a.learned(), None);
    }
}
