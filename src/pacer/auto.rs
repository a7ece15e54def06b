//! The `auto` controller ([`Auto`]): pure logic on explicit instants. It
//! starts unpaced (or from a remembered pace), estimates the API's limit from
//! what it accepted before each 429, and holds just under it; a window found
//! in the 429s is paced at its quota, and a cap on concurrent calls is left to
//! [`Cap`](super::cap::Cap).

use super::cap::{CAP_REACHED, Cap, Explains};
use super::rate::{AUTO_CEILING, AUTO_FLOOR, sane_rate};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// A level steps up only when the calls kept up with at least this share of
/// its pace: a pace the run cannot reach (too few calls in flight, a slow
/// API) proves nothing about the limit, and doubling it would run away.
pub(super) const KEPT_UP: f64 = 0.8;

/// Slow start doubles the rate this often until the first 429.
pub(super) const SLOW_START_STEP: Duration = Duration::from_millis(200);

/// A burst longer than this many seconds of the pace is a token bucket's (a
/// window of a second's quota is about a second's worth): a level above the
/// limit hides under it for seconds, so a level that held is taken less the
/// whole burst. Taken less a tenth of a second's worth, 18 of 105 buckets of
/// 1–20/s with 0.1–3 s of burst learned a pace above their limit (up to
/// 16/s of 12/s), and the next night drew 429s from its start.
pub(super) const LONG_BURST: f64 = 1.2;

/// While climbing, how long a level must run without a 429 before the next step.
pub(super) const STEP: Duration = Duration::from_secs(2);

/// Each climbing step, as a factor.
pub(super) const CLIMB: f64 = 1.1;

/// After a loose estimate, a trial this much above it (at most halfway, on
/// a log scale, to the rate that drew the 429): if the limit is there, the
/// 429 comes late and pins it.
pub(super) const TRY_ABOVE: f64 = 1.15;

/// A 429 at most this far above a level that held brackets the limit.
pub(super) const BRACKETED: f64 = 1.12;

/// Held under the estimated limit by this factor.
pub(super) const MARGIN: f64 = 0.995;

/// A 429 at a rate at most this much above the estimate pins the limit: hold
/// the estimate, don't climb.
pub(super) const PINNED: f64 = 1.2;

/// A call sent this soon after a cut belongs to the cut's episode: its 429
/// does not cut again, its success does not count in the next level.
pub(super) const SAME_EPISODE: Duration = Duration::from_millis(100);

/// The shortest stretch an estimate of the limit rests on.
pub(super) const SHORTEST: Duration = Duration::from_millis(100);

/// Calls resumed at least this long after the 429 that emptied the
/// limiter (its `Retry-After` pause): a window of a second has reset once,
/// no more, when they reach it.
pub(super) const PAUSED_A_WINDOW: Duration = Duration::from_millis(900);

/// The most successes an estimate looks back over.
pub(super) const EPISODE: usize = 4096;

/// Cuts in a row whose estimates agree this closely (as a share) pin the
/// limit however far above it their 429s came: a long burst hides each
/// trial above it and the climb after, for a 429 every few seconds.
pub(super) const AGREE: f64 = 0.01;

pub(super) const AGREED: u32 = 3;

/// How long a pinned limit is trusted before climbing above it: each step
/// that fails costs a 429 and its `Retry-After` pause.
pub(super) const PROBE_RARELY: Duration = Duration::from_secs(60);

/// Each climb above a pinned limit that draws a 429 doubles the time to the
/// next, up to this: a limit that stays put costs a `Retry-After` second a
/// minute otherwise (1.6% of a long night).
pub(super) const PROBE_LONGEST: Duration = Duration::from_secs(600);

/// Above a pinned limit, each climbing step, as a factor, and how long it
/// must hold: a level that held longer brackets the limit more tightly (it
/// is taken less what a tenth of a second's burst could have hidden over
/// its time: 5% over 2 s, 1% over 10 s).
pub(super) const PINNED_CLIMB: f64 = 1.04;

pub(super) const PINNED_STEP: Duration = Duration::from_secs(10);

/// After this many small steps held above a pinned limit, it was no limit
/// (or the API allows more now): climbing goes back to [`CLIMB`] a [`STEP`].
pub(super) const PINNED_HELD: u32 = 2;

/// After the API's limit dropped, how often to probe back to the old rate.
pub(super) const PROBE_OFTEN: Duration = Duration::from_secs(4);

/// A bound from a stretch of answers shorter than this rests on too few to
/// bound the limit well: a cut goes no lower than [`SHORT_CUT`] of the rate.
pub(super) const SHORT_EPISODE: Duration = Duration::from_secs(1);

pub(super) const SHORT_CUT: f64 = 0.6;

/// A second 429 at a rate that had held, this soon after the first, means
/// the limit dropped a long way.
pub(super) const DROPPED: Duration = Duration::from_secs(3);

/// A window's quota: calls sent above it after a pause had this many
/// accepted at least (fewer tell nothing apart) and no more than the burst
/// (as a share, plus one) over at least this long.
pub(super) const WINDOW_LEAST: f64 = 10.0;

pub(super) const WINDOW_SAME: f64 = 1.05;

pub(super) const WINDOW_OVER: Duration = Duration::from_millis(300);

/// Sending resumed at most this long (and the wire's time) after the 429
/// before it: longer windows are the quota gate's (see [`Quota`]).
pub(super) const WINDOW_PAUSE: Duration = Duration::from_millis(1500);

/// A 429 at a window's pace that had held is jitter in when calls reach it
/// (once: a second means no window): the pace is nudged down this much.
pub(super) const WINDOW_NUDGE: f64 = 0.97;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// No 429 yet: not paced at all.
    Unpaced,
    /// Doubling from the API's burst, until it answers 429.
    SlowStart,
    /// Holding under the estimated limit, climbing or probing now and then.
    Steady,
}

/// The `auto` controller: pure logic on explicit instants, so it is tested
/// without clocks.
///
/// The estimate: a token bucket (GCRA is one) accepts at most its burst plus
/// `limit × t` calls in any stretch of time `t`. So the calls accepted since
/// the last 429, over any stretch, less the burst, per second, bound the
/// limit from below, and tightly when the stretch ran above the limit. The
/// burst is what the API accepted at once before its first 429. And a
/// bucket is empty when it answers 429: after the pause that follows, all
/// the calls accepted since that 429, over the time since it, bound the
/// limit with no burst to take off. Each call is taken to reach the API
/// halfway through its round trip.
///
/// - Unpaced until the first 429; then slow start from the burst, doubling
///   every 200 ms, until a 429.
/// - Every 429 sets the rate to hold just under the estimate (no lower
///   than 0.6 of the rate when the estimate rests on less than a second,
///   or the rate was a trial).
///   When the rate that drew it was well above (a loose estimate), a trial
///   follows 15% above the estimate; otherwise the limit is pinned and
///   held, with a climb above it only after a minute (and after each
///   climb that failed twice as long, up to ten minutes); a 429 at that
///   climb leaves the pace that held meanwhile (taken less a burst and the
///   margin, a window of a second's pace sank 0.5–0.7% a minute). Four
///   cuts in a row whose estimates agree within 1% pin it too, however far
///   above it their 429s came (a burst of many seconds hides each trial).
/// - Climbing: 10% more every 2 s without a 429.
/// - Two 429s at a rate that had held, close together, mean the limit
///   dropped: the rate follows the new estimate, and the old rate is probed
///   every few seconds so a recovered limit is followed quickly.
/// - A window of a second (after a pause, slow start had the burst accepted
///   again and no call more; or none of the unpaced start's calls sent
///   after its first 429 was accepted, while a bucket would have refilled
///   one): the pace goes to that quota per second, less the wire's
///   jitter, and holds.
#[derive(Debug, Clone)]
pub struct Auto {
    pub(super) ceiling: Option<f64>,
    pub(super) phase: Phase,
    /// The pace now.
    pub(super) rate: f64,
    /// The rate believed safe: fallen back to after a 429, and remembered.
    pub(super) hold: f64,
    /// Calls the API accepted at once before its first 429 (at least one).
    pub(super) burst: f64,
    /// Calls of the unpaced start the API accepted, however late answered.
    pub(super) started_ok: u32,
    /// The best lower bound of the limit measured so far (0 before any): what
    /// is learned never exceeds it, whatever the pace guessed meanwhile.
    pub(super) proven: f64,
    /// When the unpaced start ended (its first 429 came).
    pub(super) unpaced_until: Option<Instant>,
    /// How the unpaced start's calls sent after its first 429 were answered.
    pub(super) storm: Storm,
    /// When the current level's first call succeeded.
    pub(super) level_at: Option<Instant>,
    /// Calls that succeeded in the current level, and when the first and
    /// the last of them were sent.
    pub(super) level_calls: u64,
    pub(super) level_sent: Option<(Instant, Instant)>,
    /// When each call succeeded since the last 429 (the most recent [`EPISODE`]).
    pub(super) episode: VecDeque<Instant>,
    /// Whether the current level is a trial above a rough estimate.
    pub(super) trial: bool,
    /// Whether the last 429 pinned the limit (or a remembered pace is held):
    /// climbs above it are small and slow. And how many of them held.
    pub(super) pinned: bool,
    pub(super) pinned_held: u32,
    /// When climbing (stepping up from the current level) is due.
    pub(super) climb_at: Option<Instant>,
    /// When to probe back to `before_drop` next.
    pub(super) probe_at: Option<Instant>,
    /// The rate that held before the limit dropped: where probes go.
    pub(super) before_drop: Option<f64>,
    /// The last 429 at a rate that had held, and the hold before it.
    pub(super) held_failed: Option<(Instant, f64)>,
    /// The estimate the last cut made (0 before any), and how many cuts in
    /// a row since made one within [`AGREE`] of the one before.
    pub(super) last_estimate: f64,
    pub(super) agreed: u32,
    /// How long a pinned limit is trusted before the next climb above it.
    pub(super) probe_every: Duration,
    pub(super) last_cut: Option<Instant>,
    /// When the 429 that made the last cut reached the API: its limiter was
    /// empty then (see [`Auto::estimate`]).
    pub(super) emptied: Option<Instant>,
    /// When an earlier 429 emptied the limiter, with every episode since
    /// paused as `emptied`'s, and the calls accepted from then to
    /// `emptied`: the bound from `emptied` extends back to it.
    pub(super) span: Option<(Instant, f64)>,
    /// Whether a pause after a 429 ran longer than a window of a second's:
    /// the API counts calls in long windows, whose quota a pause of a
    /// second can find whole again, and [`Auto::estimate`] takes off bursts.
    pub(super) long_pauses: bool,
    /// The highest level that held a whole step since the last 429 (0: none),
    /// and the bound on the limit it gives.
    pub(super) clean: (f64, f64),
    /// Whether the hold rests on such a bracket, and whether one that did
    /// drew a 429 while held: the burst hides more than a tenth of a
    /// second's worth, and brackets subtract all of it from then on.
    pub(super) bracketed: bool,
    pub(super) burst_hides: bool,
    /// A cap on concurrent calls, which explains 429s that are no rate signal.
    pub(super) cap: Cap,
    /// The pace as it was when a cap was found, taken up again if the cap
    /// is refuted.
    pub(super) shelved: Option<Box<Auto>>,
    /// The calls' time on the wire, smoothed (seconds; 0 before the first).
    pub(super) latency: f64,
    /// How much the calls' time on the wire varies, smoothed (seconds).
    pub(super) jitter: f64,
    /// The API counts calls in windows of a second (after a pause it
    /// accepted its whole quota again, and no call more): the pace is its
    /// quota, a pace that more than two quotas went at is proven, and one
    /// 429 at it is jitter. Until a 429 says otherwise; then never again.
    pub(super) window: Window,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) enum Window {
    #[default]
    Unknown,
    /// The highest pace proven (0: none yet), and whether a 429 was jitter.
    Seen {
        proven: f64,
        nudged: bool,
    },
    Refuted,
}

/// The unpaced start's calls sent after the one that drew its first 429:
/// a token bucket goes on refilling while they arrive, and accepts some;
/// a window of a second (fixed or sliding) has nothing left to give until
/// it turns. So when none of them was accepted, over a stretch in which a
/// bucket refilling a burst a second would have refilled a call, the
/// burst is a window's quota: once sending resumes after the pause, the
/// pace is that quota a second (see [`Auto::storm_window`]), instead of
/// slow start doubling from it. (Slow start finds a quota too, but only
/// when the pause ended as a window began: at ~150 ms one that ended
/// mid-window hid it, and a fixed window of 60 a second was paced at
/// 41–52/s.)
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Storm {
    /// When the call that drew the first 429 was sent.
    pub(super) first: Option<Instant>,
    /// Calls sent at least the jitter's margin after it: how many were
    /// accepted, how many drew a 429, and the last one sent.
    pub(super) ok: u32,
    pub(super) limited: u32,
    pub(super) last: Option<Instant>,
    /// Once slow start resumed after the pause: the window's pace, if it
    /// is one (judged once; the jitter it rests on moves on).
    pub(super) judged: Option<Option<f64>>,
}

/// Evidence a window needs: 429s sent after the first one's, and the calls
/// a bucket refilling the burst each second would have refilled meanwhile.
/// A bucket refilling less may be taken for a window: its first 429 after
/// the pause refutes the window, at the cost of a 429 or two (in a
/// simulated sweep of 216 buckets, the nights of 9, all with 1–3 s of
/// burst, changed: within a point on average, one draw 4 points lower
/// at 97% of its limit, and 2–18% fewer 429s).
pub(super) const STORM_LIMITED: u32 = 3;

pub(super) const STORM_EXPECTED: f64 = 1.0;

impl Auto {
    /// `remembered`: the rate an earlier run learned; the run starts there and holds.
    pub fn new(ceiling: Option<f64>, remembered: Option<f64>, now: Instant) -> Auto {
        let mut a = Auto {
            ceiling,
            phase: Phase::Unpaced,
            rate: 0.0,
            hold: 0.0,
            burst: 1.0,
            started_ok: 0,
            proven: 0.0,
            unpaced_until: None,
            storm: Storm::default(),
            level_at: None,
            level_calls: 0,
            level_sent: None,
            episode: VecDeque::new(),
            trial: false,
            pinned: false,
            pinned_held: 0,
            climb_at: None,
            probe_at: None,
            before_drop: None,
            held_failed: None,
            last_estimate: 0.0,
            agreed: 0,
            probe_every: PROBE_RARELY,
            last_cut: None,
            emptied: None,
            span: None,
            long_pauses: false,
            clean: (0.0, 0.0),
            bracketed: false,
            burst_hides: false,
            cap: Cap::new(None),
            shelved: None,
            latency: 0.0,
            jitter: 0.0,
            window: Window::Unknown,
        };
        if let Some(r) = remembered.filter(|r| sane_rate(*r)) {
            a.phase = Phase::Steady;
            a.set(r);
            a.hold = a.rate;
            // What was remembered already had the margin taken off the
            // bound it rests on: taking it off again each night made a
            // remembered pace shrink 0.5% a night.
            a.proven = a.rate / MARGIN;
            // Its burst is unknown: assume a tenth of a second's worth.
            a.burst = (a.rate * 0.1).max(1.0);
            a.pinned = true;
            a.climb_at = Some(now + PROBE_RARELY);
        }
        a
    }

    /// Starts from a cap on concurrent calls an earlier run found.
    pub fn with_cap(mut self, remembered: Option<usize>) -> Auto {
        self.cap = Cap::new(remembered);
        self
    }

    /// The API's cap on concurrent calls, once found (or remembered).
    pub fn cap(&self) -> Option<usize> {
        self.cap.found()
    }

    /// Whether a cap was taken in this run, even one refuted since.
    #[cfg(test)]
    pub fn took_a_cap(&self) -> bool {
        self.cap.found_here
    }

    /// The cap worth remembering: the one that held, not one under trial.
    pub fn proven_cap(&self) -> Option<usize> {
        self.cap.trying_above.or(self.cap.found())
    }

    /// Takes the cap the answers point to, if the calls did go about as fast
    /// as it allows: K calls on the wire, each on it for the latency, carry
    /// K ÷ latency calls a second. (A token bucket's burst of K, met by calls
    /// kept few on the wire by the pace, looks like a cap of K, but its
    /// limit is well under K ÷ latency at any latency where that shows.)
    pub(super) fn look_for_cap(&mut self, now: Instant) -> bool {
        let Some(k) = self.cap.candidate() else {
            return false;
        };
        let reached = self.proven.max(self.estimate(now).unwrap_or(0.0));
        if self.latency <= 0.0 || reached < CAP_REACHED * k as f64 / self.latency {
            return false;
        }
        self.cap.take(k);
        self.start_over(now);
        true
    }

    /// The 429s so far were the cap's: what they taught of a rate is void,
    /// so pacing starts over, unpaced, under the cap.
    pub(super) fn start_over(&mut self, now: Instant) {
        let cap = std::mem::replace(&mut self.cap, Cap::new(None));
        let mut before = std::mem::replace(self, Auto::new(self.ceiling, None, now));
        before.shelved = None;
        self.shelved = Some(Box::new(before));
        self.cap = cap;
    }

    /// Whether the count on the wire of a call sent at `sent` is evidence
    /// of a cap: not in the unpaced start, whose calls go out at once over
    /// connections still being opened and reach the API in any order (under
    /// load, its 429s came with 1 to 15 on the wire, against a cap of 4).
    pub(super) fn counts(&self, sent: Instant) -> bool {
        self.phase != Phase::Unpaced && self.unpaced_until.is_none_or(|c| sent >= c)
    }

    /// The cap was refuted: the pace taken up again is the one it shelved.
    pub(super) fn take_up_shelved(&mut self) {
        if let Some(before) = self.shelved.take() {
            let cap = std::mem::replace(&mut self.cap, Cap::new(None));
            *self = *before;
            self.cap = cap;
            // The level it was in spans the time under the cap: its calls
            // would look as if they never kept up, and it never stepped
            // (a 20/s bucket at ~150 ms sat 11 s at 16.8/s).
            self.level_at = None;
            self.level_calls = 0;
            self.level_sent = None;
        }
    }

    /// The pace in calls per second; `None` while unpaced (and no ceiling).
    pub fn rate(&self) -> Option<f64> {
        match self.phase {
            Phase::Unpaced => self.ceiling,
            _ => Some(self.rate),
        }
    }

    /// The rate worth starting the next run at: the one held once a 429
    /// taught it, never above what was measured accepted.
    pub fn learned(&self) -> Option<f64> {
        let proven = match self.window {
            Window::Seen { proven, .. } => self.proven.max(proven),
            _ => self.proven,
        };
        (self.phase == Phase::Steady && proven > 0.0).then_some(self.hold.min(proven * MARGIN))
    }

    /// Starts a new level at `rate`.
    pub(super) fn set(&mut self, rate: f64) {
        self.rate = clamp(rate, self.ceiling);
        self.level_at = None;
        self.level_calls = 0;
        self.level_sent = None;
        self.trial = false;
    }

    /// Whether the current level's calls went out at (nearly) its pace:
    /// judged by when they were sent, so a slow wire does not hold it back.
    /// Three answers tell, or two while the level keeps at most one call on
    /// the wire: one connection carries it, so no cap on calls in flight
    /// makes two calls leave together and look kept up (a cap of two answers
    /// in pairs, and each pair would step a level), and a level of 2/s no
    /// longer waits a second and a half for its third answer.
    pub(super) fn kept_up(&self) -> bool {
        let least = if self.rate * self.latency <= 1.0 {
            2
        } else {
            3
        };
        match self.level_sent {
            Some((first, last)) if self.level_calls >= least => {
                let spread = last.saturating_duration_since(first).as_secs_f64();
                spread > 0.0 && (self.level_calls - 1) as f64 / spread >= self.rate * KEPT_UP
            }
            _ => false,
        }
    }

    /// Whether the pace is a climb above a pinned limit.
    pub(super) fn above_pinned(&self) -> bool {
        self.pinned && self.rate > self.hold * 1.001
    }

    pub(super) fn level_ran(&self, now: Instant) -> Duration {
        self.level_at
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at))
    }

    /// A call sent at `sent`, with `wire` calls on the wire (itself
    /// included), succeeded; its answer came at `now`.
    pub fn on_success(&mut self, sent: Instant, now: Instant, wire: usize) {
        let took = now.saturating_duration_since(sent).as_secs_f64();
        self.latency = if self.latency == 0.0 {
            took
        } else {
            self.jitter = self.jitter * 0.75 + (took - self.latency).abs() * 0.25;
            self.latency * 0.875 + took * 0.125
        };
        let counted = self.counts(sent);
        if self.cap.on_success(wire, counted) {
            self.look_for_cap(now);
        }
        if self.unpaced_until.is_some_and(|c| sent < c) {
            // Part of the unpaced start, answered after its first 429 (on a
            // slow wire most of the burst is): slow start begins from it.
            self.storm_answer(sent, true);
            self.started_ok += 1;
            self.burst = f64::from(self.started_ok).max(1.0);
            if self.phase == Phase::SlowStart && self.rate < self.burst {
                self.rate = clamp(self.burst, self.ceiling);
            }
        }
        if self.last_cut.is_some_and(|c| sent < c) {
            return; // sent before the last 429 was seen: that episode is over
        }
        // A call sent just after the cut took its slot before the 429's
        // pause began: counted in the level set at the cut, it made the
        // level span the pause, look as if it never kept up, and never climb.
        let before_pause = self.last_cut.is_some_and(|c| sent < c + SAME_EPISODE);
        if self.level_at.is_none() && self.rate > 0.0 && !before_pause {
            // A level begins one interval before its first call.
            let interval = Duration::from_secs_f64(1.0 / self.rate).min(STEP);
            self.level_at = Some(sent.checked_sub(interval).unwrap_or(sent));
        }
        if !before_pause {
            self.level_calls += 1;
            self.level_sent = Some(match self.level_sent {
                Some((first, last)) => (first.min(sent), last.max(sent)),
                None => (sent, sent),
            });
        }
        if self.episode.len() == EPISODE {
            self.episode.pop_front();
        }
        // Answers come back nearly in the order the calls reached the API.
        let arrived = midpoint(sent, now);
        let at = self
            .episode
            .iter()
            .rev()
            .take_while(|t| **t > arrived)
            .count();
        self.episode.insert(self.episode.len() - at, arrived);
        let window = match self.phase {
            Phase::SlowStart => self.storm_window(),
            _ => None,
        };
        match self.phase {
            Phase::Unpaced => {}
            Phase::SlowStart if let Some(quota) = window => {
                // A window of a second: its quota a second is the pace, held
                // as the quota found by slow start is (see `on_429`).
                self.set(quota);
                self.window = Window::Seen {
                    proven: 0.0,
                    nudged: false,
                };
                self.hold = self.rate;
                self.phase = Phase::Steady;
                self.pinned = true;
                self.climb_at = Some(now + PROBE_RARELY);
            }
            Phase::SlowStart => {
                if self.level_ran(now) >= SLOW_START_STEP && self.kept_up() {
                    self.set(self.rate * 2.0);
                }
            }
            Phase::Steady => {
                let due = |at: Option<Instant>| at.is_some_and(|at| now >= at);
                let probe = self.before_drop.filter(|_| due(self.probe_at));
                let step = if self.above_pinned() {
                    PINNED_STEP
                } else {
                    STEP
                };
                let quotas = self.level_calls as f64 > 2.0 * self.burst && self.kept_up();
                if let Window::Seen { proven, .. } = &mut self.window
                    && quotas
                {
                    // More than two windows' quotas went at this pace: every
                    // window will take it.
                    *proven = proven.max(self.rate);
                }
                if !(due(self.climb_at) || probe.is_some()) || self.level_ran(now) < step {
                    return;
                }
                // No 429 for a while: what was accepted bounds the limit
                // from below (a level that merely held proves little
                // against a large burst); the next level is tried.
                let bound = self.estimate(arrived).unwrap_or(0.0);
                self.proven = self.proven.max(bound);
                self.hold = self.hold.max(bound.min(self.rate));
                if self.before_drop.is_some_and(|d| self.hold >= d * 0.97) {
                    // Back where it was before the limit dropped.
                    self.before_drop = None;
                    self.climb_at = Some(now + PROBE_RARELY);
                    return;
                }
                match probe {
                    Some(d) => {
                        self.probe_at = Some(now + PROBE_OFTEN);
                        self.set(d);
                    }
                    None if self.kept_up() => {
                        // This level held: the limit is at least about it,
                        // less what a small burst (a tenth of a second's
                        // worth) could have hidden over the level's time,
                        // or a long one (see [`LONG_BURST`]), or one a
                        // bracket's hold found hiding more, all of it.
                        let slack = if (self.burst > self.rate * LONG_BURST || self.burst_hides)
                            && !matches!(self.window, Window::Seen { .. })
                        {
                            self.burst
                        } else {
                            self.burst.min(self.rate * 0.1)
                        };
                        let ran = self.level_ran(now).as_secs_f64();
                        if self.rate > self.clean.0 {
                            self.clean = (self.rate, self.rate - slack / ran);
                        }
                        if self.above_pinned() {
                            self.pinned_held += 1;
                            self.pinned = self.pinned_held < PINNED_HELD;
                        }
                        self.set(self.rate * if self.pinned { PINNED_CLIMB } else { CLIMB })
                    }
                    None => self.climb_at = Some(now + STEP),
                }
            }
        }
    }

    /// A lower bound of the limit from the calls that succeeded since the
    /// last 429: a token bucket accepts at most its burst plus `limit × t`
    /// calls in any stretch of time `t`. Each call is taken to reach the API
    /// halfway through its own round trip, so latency, however long, biases
    /// the stretches neither way (timing them from send to answer read
    /// ~6% low at 150 ms). The best bound over the stretches that end at
    /// `end` (at least [`SHORTEST`] long), and over the whole time since
    /// the 429 that emptied the limiter, less no burst.
    pub(super) fn estimate(&self, end: Instant) -> Option<f64> {
        self.estimate_over(end).map(|(bound, _)| bound)
    }

    /// [`Auto::estimate`], and the stretch the best bound rests on.
    pub(super) fn estimate_over(&self, end: Instant) -> Option<(f64, Duration)> {
        let mut best: Option<(f64, Duration)> = None;
        let n = self.episode.len();
        // The limiter was empty when the cut's 429 reached it: every call it
        // accepted since came out of what it refilled, burst or none. So
        // after a pause, the calls accepted since that 429, over the time
        // since it, bound the limit with no burst to take off (a bucket of
        // 12/s holding 25 refills only 12 in a pause of a second). So does
        // a run of such pauses, from the 429 before the first of them.
        if let (Some(p), Some(span)) = (self.emptied, self.emptied_span()) {
            for (from, before) in [(p, 0.0), span] {
                // Each end is when a call most likely reached the API; either
                // may be off by as much as the round trips vary.
                let t = end.saturating_duration_since(from)
                    + Duration::from_secs_f64(2.0 * self.jitter);
                // Less one: the limiter may have held most of a call's token then.
                let calls = before + self.accepted_by(end) - 1.0;
                let bound = calls / t.as_secs_f64();
                if t >= SHORT_EPISODE && calls > 0.0 && best.is_none_or(|(b, _)| bound > b) {
                    best = Some((bound, t));
                }
            }
        }
        for (i, at) in self.episode.iter().enumerate().rev() {
            if *at > end {
                continue;
            }
            let t = end.saturating_duration_since(*at);
            if t < SHORTEST {
                continue;
            }
            let calls = (n - i) as f64 - self.burst;
            let bound = calls / t.as_secs_f64();
            if calls > 0.0 && best.is_none_or(|(b, _)| bound > b) {
                best = Some((bound, t));
            }
        }
        best
    }

    /// A call sent at `sent`, with `wire` calls on the wire, drew a 429;
    /// its answer came at `now`.
    pub fn on_429(&mut self, sent: Instant, now: Instant, wire: usize) {
        if self.unpaced_until.is_some_and(|c| sent < c) {
            self.storm_answer(sent, false);
        }
        let known = self.cap.found().is_some();
        let counted = self.counts(sent);
        match self.cap.on_429(wire, counted) {
            Explains::Yes => {
                if !known {
                    self.start_over(now);
                }
                return;
            }
            Explains::Refuted => {
                // The 429s of the test are no news about the pace it
                // shelved: that pace is taken up again as it was, and the
                // 429s still to come of calls sent under the cap (unpaced)
                // belong to the test too. Taken as cuts, they pinned the
                // pace taken up at 64% of a 50/s limit, for that night and
                // every night after.
                self.take_up_shelved();
                self.last_cut = Some(now);
                return;
            }
            Explains::No => {
                if self.look_for_cap(now) {
                    return;
                }
            }
        }
        // One cut per episode: 429s answering calls already on the wire don't
        // cut again, nor do those of calls that passed the pacer just before
        // the cut was made (sent an instant after it: with a fast API, the
        // 429s of a whole unpaced start would otherwise cut slow start down
        // to a crawl).
        if self.last_cut.is_some_and(|c| sent < c + SAME_EPISODE) {
            return;
        }
        let probe_failed = self.phase == Phase::Steady
            && self.above_pinned()
            && self.pinned_held == 0
            && self.before_drop.is_none();
        let cut_before = self.last_cut.replace(now);
        let rate = self.rate;
        if self.phase == Phase::Unpaced {
            self.unpaced_until = Some(now);
            self.storm.first = Some(sent);
            self.emptied = Some(midpoint(sent, now));
            // Only calls accepted count: when the first answer read is a
            // 429, none may have been yet (a bucket holding 2 was taken
            // to hold 3, and every bound that takes a burst off read 5%
            // low at 20/s).
            self.started_ok = self.episode.len() as u32;
            self.burst = f64::from(self.started_ok).max(1.0);
            self.episode.clear();
            self.phase = Phase::SlowStart;
            self.set(self.burst);
            return;
        }
        // Without a bound to go by (the 429 came too soon), halve. A bound
        // from a stretch shorter than [`SHORT_EPISODE`] rests on a handful
        // of calls less a guessed burst, and can read half the limit (after
        // a limit dropped to 20/s, a trial's 429 came 0.14 s in and read
        // 10.9): it cuts to no less than [`SHORT_CUT`] of the rate, as AWS's
        // adaptive retry cuts to 0.7 of its rate. So does a trial's 429: the
        // trial follows a pause, so its stretch holds little beyond the
        // burst it must subtract (a fixed 1 s window of 60 at ~150 ms read
        // 8/s after a trial at 69/s, and the first night climbed back from
        // 17/s: 65% of the limit, now 82%).
        let end = midpoint(sent, now);
        // A window's quota, taken whole after a pause: the limit is known.
        let quota = self.phase == Phase::SlowStart
            && self.window == Window::Unknown
            && rate > self.burst * WINDOW_SAME
            && self.looks_windowed(end, cut_before);
        if quota {
            self.window = Window::Seen {
                proven: 0.0,
                nudged: false,
            };
        }
        if let Some(gap) = self.emptied.and_then(|p| self.resumed(p)) {
            self.long_pauses |= gap > self.window_pause();
        }
        let best = self.estimate_over(end);
        self.span = self
            .emptied_span()
            .map(|(from, before)| (from, before + self.accepted_by(end)));
        self.emptied = Some(end);
        let bound = best.map(|(bound, _)| bound);
        if let Some(b) = bound {
            self.proven = self.proven.max(b.min(rate));
        }
        let short = best.is_some_and(|(_, over)| over < SHORT_EPISODE);
        let least = if (short || self.trial) && self.phase == Phase::Steady {
            SHORT_CUT
        } else {
            0.25
        };
        let mut estimate = bound.map_or(rate * 0.5, |bound| bound.clamp(rate * least, rate));
        // A level that held a whole step just under the one that drew the
        // 429 brackets the limit more tightly than the bound, which must
        // allow for a burst as large as a window's whole quota. When the
        // hold a bracket gave draws a 429 itself, the burst hid more than
        // the tenth of a second the bracket allowed for (a bucket of 50/s
        // holding a second's worth, met at ~50 ms, was held at 60/s and
        // learned 59/s): brackets take off the whole burst from then on.
        let (level, clean) = std::mem::take(&mut self.clean);
        let held = self.phase == Phase::Steady && rate <= self.hold * 1.001;
        if self.bracketed && held {
            self.burst_hides = true;
        }
        self.bracketed =
            self.phase == Phase::Steady && clean > estimate && rate <= level * BRACKETED;
        if self.bracketed {
            estimate = clean;
            self.proven = self.proven.max(clean);
        }
        // A window's pace that had held drew a 429 after more than one
        // window's quota went: calls reached it a little early or late (the
        // wire's jitter), once. Within the first quota, or twice: the
        // windows are longer than a second, or hold less now, or it is a
        // token bucket whose burst looked like a quota.
        let past_quota = self.episode.len() as f64 > self.burst * WINDOW_SAME + 1.0;
        let (jitter, refuted) = match &mut self.window {
            Window::Seen { nudged, .. } if held && past_quota && !*nudged && !quota => {
                *nudged = true;
                (true, false)
            }
            Window::Seen { .. } if held => {
                self.window = Window::Refuted;
                (false, true)
            }
            _ => (false, false),
        };
        if quota {
            // Calls land as much early or late as their round trips vary:
            // a window of a second sees that share more of them.
            estimate = self.burst.min(rate) * (1.0 - self.jitter.min(0.2));
        } else if jitter {
            estimate = estimate.max(rate * WINDOW_NUDGE);
        } else if probe_failed {
            // The first step above a pinned pace drew the 429: that pace
            // held a minute, and stands.
            estimate = estimate.max(self.hold / MARGIN);
        }
        self.episode.clear();
        let was_trial = self.trial;
        let probe = self.before_drop.is_some_and(|d| rate >= d * 0.97);
        self.phase = Phase::Steady;
        // A pace that rested on a window refuted now had never held: no
        // limit dropped from it (a bucket of 2/s holding 40, taken for a
        // window of 40/s, had its 429s taken for a drop from 39/s, and
        // probed back there every 4 s all night).
        let held = held && !refuted;
        // A rate that had held drew a 429: a little over the limit all
        // along (hidden by the API's slack), or, twice in a row, the limit
        // dropped (and the old rate is worth probing again).
        let dropped = held
            && !jitter
            && self
                .held_failed
                .is_some_and(|(at, _)| now.saturating_duration_since(at) < DROPPED);
        if dropped {
            // What was accepted before the drop tells of the old limit.
            self.span = None;
            let before = self.held_failed.map_or(0.0, |(_, b)| b);
            self.before_drop = Some(self.before_drop.map_or(before, |d| d.max(before)));
        } else if held && !jitter {
            self.held_failed = Some((now, self.hold));
        }
        let mut hold = estimate * MARGIN;
        if probe {
            // The limit has not come back yet: the hold stands.
            hold = hold.min(self.hold);
        }
        if let Some((_, before)) = self.held_failed.filter(|_| dropped) {
            // A bucket's burst usually scales with its rate.
            self.burst = (self.burst * hold / before).max(1.0);
            self.probe_at = Some(now + PROBE_OFTEN);
        }
        self.hold = clamp(hold, self.ceiling);
        self.set(self.hold);
        // The limit lies between the estimate and the rate that drew the 429.
        let agrees = (estimate / self.last_estimate - 1.0).abs() <= AGREE;
        self.agreed = if agrees { self.agreed + 1 } else { 0 };
        self.last_estimate = estimate;
        let pinned = quota || rate <= estimate * PINNED || self.agreed >= AGREED;
        self.pinned = pinned;
        self.pinned_held = 0;
        self.probe_every = if probe_failed {
            (self.probe_every * 2).min(PROBE_LONGEST)
        } else {
            PROBE_RARELY
        };
        if pinned {
            self.climb_at = Some(now + self.probe_every);
        } else if !was_trial && !probe {
            let trial = (self.hold * TRY_ABOVE).min((self.hold * rate).sqrt());
            self.set(trial.max(self.hold));
            self.trial = true;
            self.climb_at = Some(now);
        } else {
            self.climb_at = Some(now);
        }
    }

    /// Whether the episode ended by a 429 at `end` shows a window of a
    /// second: the calls it had accepted, sent right after a pause at a pace
    /// above the burst per second, were the burst again and none more. A
    /// token bucket refills as they go (its burst and then its rate), and
    /// a slow one has not refilled its burst during the pause.
    pub(super) fn looks_windowed(&self, end: Instant, cut_before: Option<Instant>) -> bool {
        let n = self.episode.len() as f64;
        let Some(first) = self.episode.front() else {
            return false;
        };
        let over = end.saturating_duration_since(*first);
        let paused = cut_before.map_or(Duration::MAX, |c| first.saturating_duration_since(c));
        self.burst >= WINDOW_LEAST
            && paused <= self.window_pause()
            && n >= self.burst * 0.8
            && n <= self.burst * WINDOW_SAME + 1.0
            && over >= WINDOW_OVER
    }

    /// How long after `p` (when a 429 reached the API) the calls of this
    /// episode began to reach it: the pause after it. Calls sent before
    /// the 429 was read reach the API within a round trip (and
    /// [`SAME_EPISODE`]) of it; they are no sign that sending resumed.
    pub(super) fn resumed(&self, p: Instant) -> Option<Duration> {
        let slipped = p + Duration::from_secs_f64(self.latency) + SAME_EPISODE;
        let first = self.episode.iter().find(|at| **at > slipped)?;
        Some(first.saturating_duration_since(p))
    }

    /// Since when the limiter has refilled every call it accepted, and the
    /// calls it accepted before the last cut: from the last cut's 429 if
    /// sending resumed a `Retry-After` pause of a second after it, and
    /// back to the first 429 of a run of such episodes (over a longer
    /// stretch the round trips' variation weighs less). `None` when no
    /// pause or a long one came after the last cut.
    pub(super) fn emptied_span(&self) -> Option<(Instant, f64)> {
        let p = self.emptied?;
        let paused = self
            .resumed(p)
            .is_some_and(|gap| (PAUSED_A_WINDOW..=self.window_pause()).contains(&gap));
        if !paused || self.long_pauses || self.episode.len() >= EPISODE {
            return None;
        }
        Some(self.span.unwrap_or((p, 0.0)))
    }

    /// The calls of this episode accepted after the last cut's 429 and by
    /// `end` (calls on the wire at the cut may have reached the API before
    /// its 429 and still be answered after it).
    pub(super) fn accepted_by(&self, end: Instant) -> f64 {
        let after = self.emptied;
        let counted = |at: &&Instant| **at <= end && after.is_none_or(|p| **at > p);
        self.episode.iter().filter(counted).count() as f64
    }

    /// Counts a call of the unpaced start answered after its first 429.
    pub(super) fn storm_answer(&mut self, sent: Instant, accepted: bool) {
        let Some(first) = self.storm.first else {
            return;
        };
        if sent < first + self.storm_margin() {
            return; // it may have reached the API before the first 429's call
        }
        if accepted {
            self.storm.ok += 1;
        } else {
            self.storm.limited += 1;
        }
        self.storm.last = self.storm.last.max(Some(sent));
    }

    /// How long after the first 429's call a call may still have reached
    /// the API before it: the round trips' variation, twice.
    pub(super) fn storm_margin(&self) -> Duration {
        Duration::from_secs_f64(2.0 * self.jitter)
    }

    /// The pace of a window of a second the unpaced start met (see
    /// [`Storm`]): judged once slow start resumed after a pause of a second
    /// (longer windows are the quota gate's).
    pub(super) fn storm_window(&mut self) -> Option<f64> {
        if let Some(judged) = self.storm.judged {
            return judged;
        }
        let paused = self.emptied.and_then(|p| self.resumed(p))?;
        let s = &self.storm;
        let span = match (s.first, s.last) {
            (Some(first), Some(last)) => last
                .saturating_duration_since(first + self.storm_margin())
                .as_secs_f64(),
            _ => 0.0,
        };
        let window = s.ok == 0
            && s.limited >= STORM_LIMITED
            && self.burst >= WINDOW_LEAST
            && self.burst * span >= STORM_EXPECTED
            && paused <= self.window_pause();
        // A window sees as large a share more of the calls as their round
        // trips vary.
        let pace = window.then(|| self.burst * (1.0 - 2.0 * self.jitter.min(0.1)) * MARGIN);
        self.storm.judged = Some(pace);
        pace
    }

    /// The longest a `Retry-After` pause of a window of a second runs, from
    /// the 429 to the next call's arrival.
    pub(super) fn window_pause(&self) -> Duration {
        WINDOW_PAUSE + Duration::from_secs_f64(self.latency)
    }
}

/// Halfway between a call's send and its answer: when it most likely reached the API.
pub(super) fn midpoint(sent: Instant, answered: Instant) -> Instant {
    sent + answered.saturating_duration_since(sent) / 2
}

pub(super) fn clamp(r: f64, ceiling: Option<f64>) -> f64 {
    let r = if r.is_nan() {
        AUTO_FLOOR
    } else {
        r.clamp(AUTO_FLOOR, AUTO_CEILING)
    };
    ceiling.map_or(r, |c| r.min(c))
}
