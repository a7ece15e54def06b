//! Pacing the calls to one API. Every call awaits [`Pacer::acquire`] first.
//!
//! - A fixed rate hands out evenly spaced start slots (never a burst, so never
//!   above the limit in any one-second window).
//! - `Retry-After` [pauses](Pacer::pause_until) the whole API; when the pause
//!   ends, calls resume at the paced rate, not as one burst of all that waited.
//! - `auto` starts unpaced (or at the rate remembered from the last run),
//!   estimates the API's limit from what it accepted before each 429 (see
//!   [`Auto`]), and holds just under it.
//!
//! Callers wait in FIFO order and only the first sleeps; its slot is one
//! interval after the last call started, at the rate as it is when the slot
//! comes, so a rate change applies to the very next call.
//!
//! Hand-rolled rather than governor: it must change its rate at run time,
//! wait in FIFO order, and run on tokio's clock so tests can pause time.

mod auto;
mod cap;
mod quota;
mod rate;
#[cfg(test)]
mod tests;

pub use auto::Auto;
pub use cap::MOST_ON_WIRE;
pub use rate::{RateSpec, sane_rate};

use quota::{MIN_QUOTA, MOST_QUOTA, Quota};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
struct State {
    /// When the last call started: the next starts one interval later, at
    /// whatever the rate is by then.
    last_start: Option<Instant>,
    paused_until: Option<Instant>,
    /// All the time calls were held by pauses, overlaps counted once.
    paused_total: Duration,
    fixed: Option<f64>,
    auto: Option<Auto>,
    /// The limit the API states in its answers (`RateLimit-Policy`), in
    /// calls per second: `auto` paces at it (less the fixed margin) until a
    /// 429 teaches it less, and never climbs above it.
    stated: Option<f64>,
    /// `auto` remembers what it learned; `0` (unlimited) reacts to 429s the same way but forgets.
    remember: bool,
    quota: Quota,
}

/// A `Retry-After` this long says when a window resets, not when the next
/// call may go: the API counts calls in long fixed windows.
const LONG_PAUSE: Duration = Duration::from_secs(2);

/// A fixed rate is paced this much under its limit: the slack (10 ms in any
/// one-second window) absorbs the jitter between a call's slot and the wire,
/// so the API never sees more than the limit in any second.
const FIXED_MARGIN: f64 = 0.99;

impl State {
    /// `auto`'s pace `r` within what the API states (less the margin):
    /// the stated pace alone while `auto` has none.
    fn within_stated(&self, r: Option<f64>) -> Option<f64> {
        let stated = self.stated.map(|s| s * FIXED_MARGIN);
        match (r, stated) {
            (Some(r), Some(s)) => Some(r.min(s)),
            (r, s) => r.or(s),
        }
    }

    fn interval(&self) -> Option<Duration> {
        let rate = match &self.auto {
            Some(a) => self.within_stated(a.rate()),
            None => self.fixed.map(|r| r * FIXED_MARGIN),
        }?;
        Some(Duration::from_secs_f64(1.0 / rate))
    }

    /// Takes the start slot if it has come; else says when it comes.
    /// Takes the start slot if it comes within `lead` of `now` (and returns
    /// it); else says when to ask again.
    fn take(&mut self, now: Instant, lead: Duration) -> Result<Instant, Instant> {
        let iv = self.interval();
        let paced = self.last_start.zip(iv).map(|(last, iv)| last + iv);
        let slot = paced.max(self.paused_until).unwrap_or(now);
        if slot > now + lead {
            return Err(slot - lead);
        }
        // A caller woken a little late keeps the schedule (no drift); after
        // an idle spell the schedule restarts from now (no saved-up burst).
        let on_time = slot >= now || iv.is_some_and(|iv| now - slot < iv);
        let start = if on_time { slot } else { now };
        if !self.quota.admit() {
            // The window's quota is spoken for: wait for the probe's answer.
            return Err(now + Duration::from_secs(3600));
        }
        self.last_start = Some(start);
        Ok(start)
    }
}

/// What `auto` learned of an API on an earlier run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Remembered {
    /// The pace.
    pub rate: Option<f64>,
    /// The API's cap on concurrent calls.
    pub in_flight: Option<usize>,
    /// The calls one of the API's long windows accepts.
    pub window_quota: Option<u64>,
}

impl Remembered {
    /// What was stored, each part dropped unless it is sane.
    pub fn checked(
        rate: Option<f64>,
        in_flight: Option<i64>,
        window_quota: Option<i64>,
    ) -> Remembered {
        Remembered {
            rate: rate.filter(|r| sane_rate(*r)),
            in_flight: in_flight
                .and_then(|k| usize::try_from(k).ok())
                .filter(|k| (1..=MOST_ON_WIRE).contains(k)),
            window_quota: window_quota
                .and_then(|q| u64::try_from(q).ok())
                .filter(|q| (MIN_QUOTA..=MOST_QUOTA).contains(q)),
        }
    }
}

/// One API's pace. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<State>,
    /// Callers queue here in FIFO order; only the first waits on the clock.
    queue: tokio::sync::Mutex<()>,
    /// Wakes the first caller when the rate or a pause changes its slot.
    changed: tokio::sync::Notify,
}

impl Pacer {
    /// `remembered`: what `auto` learned on an earlier run.
    pub fn new(spec: RateSpec, remembered: Remembered) -> Pacer {
        let now = Instant::now();
        let (fixed, auto, remember) = match spec {
            RateSpec::Unlimited => (None, Some(Auto::new(None, None, now)), false),
            RateSpec::Fixed(r) => (Some(r), None, false),
            RateSpec::Auto { ceiling } => {
                let a = Auto::new(ceiling, remembered.rate, now).with_cap(remembered.in_flight);
                (None, Some(a), true)
            }
        };
        Pacer {
            state: Mutex::new(State {
                last_start: None,
                paused_until: None,
                paused_total: Duration::ZERO,
                fixed,
                auto,
                stated: None,
                remember,
                quota: Quota {
                    remembered: remembered.window_quota.filter(|_| remember),
                    ..Quota::default()
                },
            }),
            queue: tokio::sync::Mutex::new(()),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for this call's start slot. Cancel-safe: dropping it gives up its place.
    /// Waits for this call's start slot (the tests' shorthand for [`Pacer::reserve`]).
    #[cfg(test)]
    pub async fn acquire(&self) {
        let slot = self.reserve(Duration::ZERO).await;
        tokio::time::sleep_until(slot).await;
    }

    /// Takes this call's start slot once it is at most `lead` away, and
    /// returns when it is: the caller commits what must be durable before
    /// the call (its `in_flight` mark) meanwhile, then starts at the slot.
    /// Cancel-safe: dropping it before it returns gives up its place.
    pub async fn reserve(&self, lead: Duration) -> Instant {
        {
            // Unpaced, not paused, no window quota: nothing to wait for, no
            // queue to join.
            let now = Instant::now();
            let s = self.lock();
            let gated = s.quota.per_window().is_some();
            if s.interval().is_none() && s.paused_until.is_none_or(|p| p <= now) && !gated {
                return now;
            }
        }
        let _turn = self.queue.lock().await;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wake = match self.lock().take(Instant::now(), lead) {
                Ok(slot) => return slot,
                Err(wake) => wake,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = changed => {}
            }
        }
    }

    /// Holds every call to this API until `until` (an outage's probe gap, a
    /// 503's `Retry-After`).
    pub fn pause_until(&self, until: Instant) {
        self.pause(until, false);
    }

    /// Holds every call to this API until `until`, as a `Retry-After` (or a
    /// spent quota) said: a long one says when a window resets ([`Quota`]).
    pub fn retry_after(&self, until: Instant) {
        self.pause(until, true);
    }

    fn pause(&self, until: Instant, retry_after: bool) {
        let mut s = self.lock();
        if s.paused_until.is_none_or(|p| p < until) {
            let now = Instant::now();
            let extends = s.paused_until.is_some_and(|p| p > now);
            let from = s.paused_until.map_or(now, |p| p.max(now));
            s.paused_total += until.saturating_duration_since(from);
            s.paused_until = Some(until);
            if retry_after {
                s.quota.on_pause(now, until, extends);
            }
            self.changed.notify_waiters();
        }
    }

    /// Tells `auto` of an answer; wakes the waiting caller if the rate changed.
    fn tell(
        &self,
        sent: Instant,
        wire: usize,
        event: impl FnOnce(&mut Auto, Instant, Instant, usize),
    ) {
        let mut s = self.lock();
        if let Some(a) = s.auto.as_mut() {
            let before = a.rate();
            event(a, sent, Instant::now(), wire);
            if a.rate() != before {
                self.changed.notify_waiters();
            }
        }
    }

    /// A call that started at `sent`, with `wire` calls on the wire
    /// (itself included), succeeded.
    pub fn on_success(&self, sent: Instant, wire: usize) {
        if self.lock().quota.on_success(sent) {
            self.changed.notify_waiters();
        }
        self.tell(sent, wire, Auto::on_success);
    }

    /// A call that started at `sent`, with `wire` calls on the wire, drew a 429.
    pub fn on_429(&self, sent: Instant, wire: usize) {
        {
            // A long window ran out: the quota gate's business, no news
            // about a rate.
            let mut s = self.lock();
            if !std::mem::replace(&mut s.quota.answered, true) {
                self.changed.notify_waiters();
            }
            let long = s
                .paused_until
                .is_some_and(|p| p >= Instant::now() + LONG_PAUSE / 2);
            if long && s.quota.per_window().is_some() {
                return;
            }
        }
        self.tell(sent, wire, Auto::on_429);
    }

    /// The API's cap on concurrent calls, once found or remembered.
    pub fn cap(&self) -> Option<usize> {
        self.lock().auto.as_ref().and_then(Auto::cap)
    }

    /// The quota of a long window worth remembering for the next run.
    pub fn learned_quota(&self) -> Option<u64> {
        let s = self.lock();
        s.quota.per_window().filter(|_| s.remember)
    }

    /// The cap on concurrent calls worth remembering for the next run.
    pub fn learned_cap(&self) -> Option<usize> {
        let s = self.lock();
        if !s.remember {
            return None;
        }
        s.auto.as_ref().and_then(Auto::proven_cap)
    }

    /// How long a `Retry-After` (or a spent quota) still holds every call.
    pub fn paused_for(&self) -> Option<Duration> {
        let until = self.lock().paused_until?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// All the time this API's calls were held by pauses so far.
    pub fn paused_total(&self) -> Duration {
        self.lock().paused_total
    }

    /// Where the pace comes from: `fixed`, `auto`, or `unlimited`.
    pub fn kind(&self) -> &'static str {
        let s = self.lock();
        match (&s.auto, s.remember) {
            (None, _) => "fixed",
            (Some(_), true) => "auto",
            (Some(_), false) => "unlimited",
        }
    }

    /// The current pace in calls per second; `None` when unpaced.
    pub fn rate(&self) -> Option<f64> {
        let s = self.lock();
        match &s.auto {
            Some(a) => s.within_stated(a.rate()),
            None => s.fixed,
        }
    }

    /// The API stated its limit, in calls per second (`RateLimit-Policy`):
    /// `auto` and `0` pace at it from now on; a fixed rate is the user's word.
    pub fn stated(&self, rate: f64) {
        let mut s = self.lock();
        if s.auto.is_some() && s.stated != Some(rate) {
            s.stated = Some(rate);
            self.changed.notify_waiters();
        }
    }

    /// The rate worth remembering for the next run (auto only, once it has
    /// learned one, or the API stated one).
    pub fn learned(&self) -> Option<f64> {
        let s = self.lock();
        if !s.remember {
            return None;
        }
        let a = s.auto.as_ref()?;
        s.within_stated(a.learned())
    }
}
