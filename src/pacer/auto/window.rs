//! Windows of a second: told apart from a token bucket by what the API
//! accepted after a pause, or by the unpaced start's late 429s.

use super::{Auto, T};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(in crate::pacer) enum Window {
    #[default]
    Unknown,
    /// The highest pace proven (0: none yet).
    Seen {
        proven: f64,
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
pub(in crate::pacer) struct Storm {
    /// When the call that drew the first 429 was sent.
    pub(in crate::pacer) first: Option<Instant>,
    /// Calls sent at least the jitter's margin after it: how many were
    /// accepted, how many drew a 429, and the last one sent.
    pub(in crate::pacer) ok: u32,
    pub(in crate::pacer) limited: u32,
    pub(in crate::pacer) last: Option<Instant>,
    /// Once slow start resumed after the pause: the window's pace, if it
    /// is one (judged once; the jitter it rests on moves on).
    pub(in crate::pacer) judged: Option<Option<f64>>,
}

impl Auto {
    /// Whether the episode just ended by a 429 shows a window of a second:
    /// the calls it had accepted, sent right after a pause at a pace above
    /// the burst per second, were the burst again and none more. A token
    /// bucket refills as they go (its burst and then its rate), and a slow
    /// one has not refilled its burst during the pause.
    pub(in crate::pacer) fn looks_windowed(&self, cut_before: Option<Instant>) -> bool {
        let n = self.episode.len() as f64;
        let Some(first) = self.episode.front() else {
            return false;
        };
        let paused = cut_before.map_or(Duration::MAX, |c| first.saturating_duration_since(c));
        paused <= self.window_pause()
            && n >= self.burst * T.kept_up
            && n <= self.burst * T.climb + 1.0
    }

    /// Counts a call of the unpaced start answered after its first 429.
    pub(in crate::pacer) fn storm_answer(&mut self, sent: Instant, accepted: bool) {
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
    pub(in crate::pacer) fn storm_margin(&self) -> Duration {
        Duration::from_secs_f64(2.0 * self.jitter)
    }

    /// The pace of a window of a second the unpaced start met (see
    /// [`Storm`]): judged once slow start resumed after a pause of a second
    /// (longer windows are the quota gate's).
    pub(in crate::pacer) fn storm_window(&mut self) -> Option<f64> {
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
            && s.limited >= T.evidence
            && self.burst * span >= 1.0
            && paused <= self.window_pause();
        // A window sees as large a share more of the calls as their round
        // trips vary.
        let pace = window.then(|| self.burst * (1.0 - self.jitter_share()) * T.margin);
        self.storm.judged = Some(pace);
        pace
    }

    /// The share more of the calls a window of a second sees than their
    /// pace, as their round trips vary.
    pub(super) fn jitter_share(&self) -> f64 {
        (2.0 * self.jitter).min(T.most_jitter())
    }

    /// The longest a `Retry-After` pause of a window of a second runs, from
    /// the 429 to the next call's arrival.
    pub(in crate::pacer) fn window_pause(&self) -> Duration {
        T.second_pause.1 + Duration::from_secs_f64(self.latency)
    }
}
