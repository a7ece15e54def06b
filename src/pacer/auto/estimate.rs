//! The estimate of a limit: lower bounds from the calls an API accepted
//! since its last 429 (see the algorithm in [`super`]). Pure functions of
//! [`Auto`]'s record of answers.

use super::{Auto, EPISODE, T};
use std::time::Duration;
use tokio::time::Instant;

impl Auto {
    /// A lower bound of the limit from the calls that succeeded since the
    /// last 429: a token bucket accepts at most its burst plus `limit × t`
    /// calls in any stretch of time `t`. Each call is taken to reach the API
    /// halfway through its own round trip, so latency, however long, biases
    /// the stretches neither way (timing them from send to answer read
    /// ~6% low at 150 ms). The best bound over the stretches that end at
    /// `end` (at least `T.instant` long), and over the whole time since
    /// the 429 that emptied the limiter, less no burst.
    pub(in crate::pacer) fn estimate(&self, end: Instant) -> Option<f64> {
        let mut best: Option<f64> = None;
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
                if t >= T.second_pause.0 && calls > 0.0 && best.is_none_or(|b| bound > b) {
                    best = Some(bound);
                }
            }
        }
        for (i, at) in self.episode.iter().enumerate().rev() {
            if *at > end {
                continue;
            }
            let t = end.saturating_duration_since(*at);
            if t < T.instant {
                continue;
            }
            let calls = (n - i) as f64 - self.burst;
            let bound = calls / t.as_secs_f64();
            if calls > 0.0 && best.is_none_or(|b| bound > b) {
                best = Some(bound);
            }
        }
        best
    }

    /// How long after `p` (when a 429 reached the API) the calls of this
    /// episode began to reach it: the pause after it. Calls sent before
    /// the 429 was read reach the API within a round trip (and
    /// `T.instant`) of it; they are no sign that sending resumed.
    pub(in crate::pacer) fn resumed(&self, p: Instant) -> Option<Duration> {
        let slipped = p + Duration::from_secs_f64(self.latency) + T.instant;
        let first = self.episode.iter().find(|at| **at > slipped)?;
        Some(first.saturating_duration_since(p))
    }

    /// Since when the limiter has refilled every call it accepted, and the
    /// calls it accepted before the last cut: from the last cut's 429 if
    /// sending resumed a `Retry-After` pause of a second after it, and
    /// back to the first 429 of a run of such episodes (over a longer
    /// stretch the round trips' variation weighs less). `None` when no
    /// pause or a long one came after the last cut.
    pub(in crate::pacer) fn emptied_span(&self) -> Option<(Instant, f64)> {
        let p = self.emptied?;
        let paused = self
            .resumed(p)
            .is_some_and(|gap| (T.second_pause.0..=self.window_pause()).contains(&gap));
        if !paused || self.episode.len() >= EPISODE {
            return None;
        }
        Some(self.span.unwrap_or((p, 0.0)))
    }

    /// The calls of this episode accepted after the last cut's 429 and by
    /// `end` (calls on the wire at the cut may have reached the API before
    /// its 429 and still be answered after it).
    pub(in crate::pacer) fn accepted_by(&self, end: Instant) -> f64 {
        let after = self.emptied;
        let counted = |at: &&Instant| **at <= end && after.is_none_or(|p| **at > p);
        self.episode.iter().filter(counted).count() as f64
    }
}

/// Halfway between a call's send and its answer: when it most likely reached the API.
pub(in crate::pacer) fn midpoint(sent: Instant, answered: Instant) -> Instant {
    sent + answered.saturating_duration_since(sent) / 2
}
