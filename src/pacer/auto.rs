//! The `auto` controller ([`Auto`]): pure logic on explicit instants, so it
//! is tested without clocks. Its algorithm, in ten sentences (the names are
//! [`Tuning`]'s):
//!
//! 1. Until the first 429 the lane is unpaced; the calls the API accepted
//!    by then are its burst.
//! 2. Slow start then doubles the pace from that burst every
//!    `double_every` while the calls keep up (`kept_up`), until a 429.
//! 3. Every 429 (one an episode: calls within an `instant` of the cut
//!    belong to it) sets the pace `margin` under an estimate of the limit
//!    (cut by `blind_cut` when there is none yet):
//!    the most calls accepted in any stretch since the last 429, less the
//!    burst, per second; or, after a `Retry-After` pause of a second, all
//!    the calls accepted since that 429 (the limiter was empty then) over
//!    the time since it.
//! 4. A 429 within two climbs of the estimate pins the limit, as do
//!    `evidence` estimates in a row that agree within the `margin`;
//!    otherwise a trial `trial` above the estimate follows, so that the
//!    next 429 tightens it.
//! 5. Unpinned, the pace climbs by `climb` every `step` without a 429;
//!    pinned, it first waits `probe_after` (doubled by each climb that
//!    fails, at most `evidence` times), then climbs by half a climb every
//!    `probe_often`, and `evidence` such climbs held unpin it.
//! 6. A level that held a whole step one climb under the 429 brackets the
//!    limit more tightly than the estimate, less what a burst could have
//!    hidden over it (an `instant`'s worth, or all of a burst longer than
//!    two climbs over a second's worth of the pace).
//! 7. Two 429s at a rate that had held, within `probe_often`, mean the
//!    limit dropped: the pace follows the new estimate, and the old rate
//!    is tried again every `probe_often`.
//! 8. A window of a second shows as the burst accepted again (within a
//!    climb) after a pause of `second_pause` and no call more, or as none
//!    of the unpaced start's late calls accepted: the pace goes to that
//!    quota a second, less the wire's jitter, and holds until a 429 at it.
//! 9. A cap on concurrent calls is told apart from a rate by the calls on
//!    the wire at each answer ([`Cap`](super::cap::Cap)), and long windows
//!    by their long `Retry-After` ([`Quota`](super::quota::Quota)).
//! 10. What the next night starts from is the pace held, never above what
//!     was measured accepted.
//!
//! What each rule is worth, measured, is in `docs/internals.md`.

use super::cap::{CAP_REACHED, Cap, Explains};
use super::rate::{AUTO_CEILING, AUTO_FLOOR, sane_rate};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

mod estimate;
mod window;

use estimate::midpoint;
pub(super) use window::{Storm, Window};

/// Every tunable of `auto`, each with its reason. A change is judged by
/// the simulated nights (`print_every_shape` in `sandbox::limiter`'s
/// tests), then by `scripts/bench.py realworld long`.
pub(super) struct Tuning {
    /// Held this far under the estimated limit: room for the wire's
    /// jitter, at a cost of half a point.
    pub margin: f64,
    /// Calls sent this close together are one moment: a 429's episode, the
    /// shortest stretch an estimate rests on, and a small burst's worth.
    pub instant: Duration,
    /// Slow start doubles this often: a couple of round trips at ~150 ms.
    pub double_every: Duration,
    /// A level counts as reached only when its calls went out at this
    /// share of its pace: a pace the run cannot reach proves nothing.
    pub kept_up: f64,
    /// How long a level must hold without a 429 before the next climb.
    pub step: Duration,
    /// Each climb, as a factor. A 429 within a climb of a level that held
    /// brackets the limit, within two climbs of the estimate pins it; a
    /// window's quota is the burst again within a climb.
    pub climb: f64,
    /// After a loose estimate, a trial this far above it (at most halfway
    /// to the 429's rate): if the limit is there, its 429 comes late and
    /// pins it.
    pub trial: f64,
    /// How long a pinned limit is trusted before a climb above it: each
    /// failed climb costs a 429 and its pause, and doubles this (at most
    /// `evidence` times).
    pub probe_after: Duration,
    /// Probes come this often: climbs above a pinned limit, and the old
    /// rate after a limit dropped (two 429s at a held rate this close).
    pub probe_often: Duration,
    /// Three of a kind make a pattern: estimates that agree pin a limit,
    /// climbs that held unpin it, the unpaced start's late 429s show a window.
    pub evidence: u32,
    /// A `Retry-After` pause of a window of a second runs this long, from
    /// the 429 to the next call's arrival. The estimate from an emptied
    /// limiter rests on at least the shorter.
    pub second_pause: (Duration, Duration),
    /// Without an estimate (the 429 came too soon), a 429 cuts the pace
    /// by this factor; with one, never by more than two such cuts.
    pub blind_cut: f64,
}

/// The one set of tunables.
pub(super) const T: Tuning = Tuning {
    margin: 0.995,
    instant: Duration::from_millis(100),
    double_every: Duration::from_millis(200),
    kept_up: 0.8,
    step: Duration::from_secs(2),
    climb: 1.1,
    trial: 1.15,
    probe_after: Duration::from_secs(60),
    probe_often: Duration::from_secs(4),
    evidence: 3,
    second_pause: (Duration::from_millis(900), Duration::from_millis(1500)),
    blind_cut: 0.5,
};

impl Tuning {
    /// Estimates agree within the margin.
    fn agree(&self) -> f64 {
        1.0 - self.margin
    }

    /// Above a pinned limit, each climb is half a climb (on a log scale):
    /// a level that held near a limit brackets it more tightly.
    fn pinned_climb(&self) -> f64 {
        self.climb.sqrt()
    }

    /// The longest a pinned limit is trusted before a climb above it.
    fn probe_longest(&self) -> Duration {
        self.probe_after * 2u32.pow(self.evidence)
    }

    /// A small burst, in seconds of the pace: an instant's worth.
    fn small_burst(&self) -> f64 {
        self.instant.as_secs_f64()
    }

    /// A long burst, in seconds of the pace: more than a window of a
    /// second holds (a second's worth) by two climbs.
    fn long_burst(&self) -> f64 {
        self.climb * self.climb
    }

    /// The deepest cut an estimate makes: two blind cuts.
    fn deepest_cut(&self) -> f64 {
        self.blind_cut * self.blind_cut
    }

    /// The most a window's quota is taken down for the wire's jitter: a climb.
    fn most_jitter(&self) -> f64 {
        self.climb - 1.0
    }
}

/// The most successes an estimate looks back over: a bound on memory, not
/// a tunable.
pub(super) const EPISODE: usize = 4096;

/// Float tolerance: a rate this close to another is the same rate.
const SAME: f64 = 1.001;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// No 429 yet: not paced at all.
    Unpaced,
    /// Doubling from the API's burst, until it answers 429.
    SlowStart,
    /// Holding under the estimated limit, climbing or probing now and then.
    Steady,
}

/// The `auto` controller (see the module's text for its algorithm).
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
    /// a row since made one within `Tuning::agree` of the one before.
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
    /// quota, and a pace that more than `evidence` quotas went at is
    /// proven. Until a 429 at it; then never again in the run.
    pub(super) window: Window,
}

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
            probe_every: T.probe_after,
            last_cut: None,
            emptied: None,
            span: None,
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
            a.proven = a.rate / T.margin;
            // Its burst is unknown: assume a tenth of a second's worth.
            a.burst = (a.rate * T.small_burst()).max(1.0);
            a.pinned = true;
            a.climb_at = Some(now + T.probe_after);
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
        (self.phase == Phase::Steady && proven > 0.0).then_some(self.hold.min(proven * T.margin))
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
                spread > 0.0 && (self.level_calls - 1) as f64 / spread >= self.rate * T.kept_up
            }
            _ => false,
        }
    }

    /// Whether the pace is a climb above a pinned limit.
    pub(super) fn above_pinned(&self) -> bool {
        self.pinned && self.rate > self.hold * SAME
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
        let before_pause = self.last_cut.is_some_and(|c| sent < c + T.instant);
        if self.level_at.is_none() && self.rate > 0.0 && !before_pause {
            // A level begins one interval before its first call.
            let interval = Duration::from_secs_f64(1.0 / self.rate).min(T.step);
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
                self.window = Window::Seen { proven: 0.0 };
                self.hold = self.rate;
                self.phase = Phase::Steady;
                self.pinned = true;
                self.climb_at = Some(now + T.probe_after);
            }
            Phase::SlowStart => {
                if self.level_ran(now) >= T.double_every && self.kept_up() {
                    self.set(self.rate * 2.0);
                }
            }
            Phase::Steady => {
                let due = |at: Option<Instant>| at.is_some_and(|at| now >= at);
                let probe = self.before_drop.filter(|_| due(self.probe_at));
                let step = if self.above_pinned() {
                    T.probe_often
                } else {
                    T.step
                };
                let quotas =
                    self.level_calls as f64 > f64::from(T.evidence) * self.burst && self.kept_up();
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
                if self.before_drop.is_some_and(|d| self.hold >= d * T.margin) {
                    // Back where it was before the limit dropped.
                    self.before_drop = None;
                    self.climb_at = Some(now + T.probe_after);
                    return;
                }
                match probe {
                    Some(d) => {
                        self.probe_at = Some(now + T.probe_often);
                        self.set(d);
                    }
                    None if self.kept_up() => {
                        // This level held: the limit is at least about it,
                        // less what a small burst (a tenth of a second's
                        // worth) could have hidden over the level's time,
                        // or a long one (see `Tuning::long_burst`), or one a
                        // bracket's hold found hiding more, all of it.
                        let slack = if (self.burst > self.rate * T.long_burst() || self.burst_hides)
                            && !matches!(self.window, Window::Seen { .. })
                        {
                            self.burst
                        } else {
                            self.burst.min(self.rate * T.small_burst())
                        };
                        let ran = self.level_ran(now).as_secs_f64();
                        if self.rate > self.clean.0 {
                            self.clean = (self.rate, self.rate - slack / ran);
                        }
                        if self.above_pinned() {
                            self.pinned_held += 1;
                            self.pinned = self.pinned_held < T.evidence;
                        }
                        self.set(
                            self.rate
                                * if self.pinned {
                                    T.pinned_climb()
                                } else {
                                    T.climb
                                },
                        )
                    }
                    None => self.climb_at = Some(now + T.step),
                }
            }
        }
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
        if self.last_cut.is_some_and(|c| sent < c + T.instant) {
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
        // Without a bound to go by (the 429 came too soon), halve.
        let end = midpoint(sent, now);
        // A window's quota, taken whole after a pause: the limit is known.
        let quota = self.phase == Phase::SlowStart
            && self.window == Window::Unknown
            && rate > self.burst * T.climb
            && self.looks_windowed(cut_before);
        if quota {
            self.window = Window::Seen { proven: 0.0 };
        }
        let bound = self.estimate(end);
        self.span = self
            .emptied_span()
            .map(|(from, before)| (from, before + self.accepted_by(end)));
        self.emptied = Some(end);
        if let Some(b) = bound {
            self.proven = self.proven.max(b.min(rate));
        }
        let mut estimate = bound.map_or(rate * T.blind_cut, |bound| {
            bound.clamp(rate * T.deepest_cut(), rate)
        });
        // A level that held a whole step just under the one that drew the
        // 429 brackets the limit more tightly than the bound, which must
        // allow for a burst as large as a window's whole quota. When the
        // hold a bracket gave draws a 429 itself, the burst hid more than
        // the tenth of a second the bracket allowed for (a bucket of 50/s
        // holding a second's worth, met at ~50 ms, was held at 60/s and
        // learned 59/s): brackets take off the whole burst from then on.
        let (level, clean) = std::mem::take(&mut self.clean);
        let held = self.phase == Phase::Steady && rate <= self.hold * SAME;
        if self.bracketed && held {
            self.burst_hides = true;
        }
        self.bracketed =
            self.phase == Phase::Steady && clean > estimate && rate <= level * T.climb * SAME;
        if self.bracketed {
            estimate = clean;
            self.proven = self.proven.max(clean);
        }
        // A window's pace that had held drew a 429: the windows are longer
        // than a second, or hold less now, or it is a token bucket whose
        // burst looked like a quota.
        let refuted = held && matches!(self.window, Window::Seen { .. });
        if refuted {
            self.window = Window::Refuted;
        }
        if quota {
            // Calls land as much early or late as their round trips vary:
            // a window of a second sees that share more of them.
            estimate = self.burst.min(rate) * (1.0 - self.jitter_share());
        } else if probe_failed {
            // The first step above a pinned pace drew the 429: that pace
            // held a minute, and stands.
            estimate = estimate.max(self.hold / T.margin);
        }
        self.episode.clear();
        let was_trial = self.trial;
        let probe = self.before_drop.is_some_and(|d| rate >= d * T.margin);
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
            && self
                .held_failed
                .is_some_and(|(at, _)| now.saturating_duration_since(at) < T.probe_often);
        if dropped {
            // What was accepted before the drop tells of the old limit.
            self.span = None;
            let before = self.held_failed.map_or(0.0, |(_, b)| b);
            self.before_drop = Some(self.before_drop.map_or(before, |d| d.max(before)));
        } else if held {
            self.held_failed = Some((now, self.hold));
        }
        let mut hold = estimate * T.margin;
        if probe {
            // The limit has not come back yet: the hold stands.
            hold = hold.min(self.hold);
        }
        if let Some((_, before)) = self.held_failed.filter(|_| dropped) {
            // A bucket's burst usually scales with its rate.
            self.burst = (self.burst * hold / before).max(1.0);
            self.probe_at = Some(now + T.probe_often);
        }
        self.hold = clamp(hold, self.ceiling);
        self.set(self.hold);
        // The limit lies between the estimate and the rate that drew the 429.
        let agrees = (estimate / self.last_estimate - 1.0).abs() <= T.agree();
        self.agreed = if agrees { self.agreed + 1 } else { 0 };
        self.last_estimate = estimate;
        let pinned = quota || rate <= estimate * T.climb * T.climb || self.agreed >= T.evidence;
        self.pinned = pinned;
        self.pinned_held = 0;
        self.probe_every = if probe_failed {
            (self.probe_every * 2).min(T.probe_longest())
        } else {
            T.probe_after
        };
        if pinned {
            self.climb_at = Some(now + self.probe_every);
        } else if !was_trial && !probe {
            let trial = (self.hold * T.trial).min((self.hold * rate).sqrt());
            self.set(trial.max(self.hold));
            self.trial = true;
            self.climb_at = Some(now);
        } else {
            self.climb_at = Some(now);
        }
    }
}

pub(super) fn clamp(r: f64, ceiling: Option<f64>) -> f64 {
    let r = if r.is_nan() {
        AUTO_FLOOR
    } else {
        r.clamp(AUTO_FLOOR, AUTO_CEILING)
    };
    ceiling.map_or(r, |c| r.min(c))
}
