//! Whether an API can be sent to: the [`Outage`] detector (nearly every
//! recent call failed on the wire: pause and probe), the circuit [`Breaker`]
//! (one failure cluster dominating: stop the API), and why an API was
//! stopped ([`StopReason`]).

use crate::edit::Api;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// Why an API was stopped for the rest of the batch.
#[derive(Clone, Debug)]
pub struct Stop {
    pub api: Api,
    pub why: StopReason,
}

/// What stopped an API.
#[derive(Clone, Debug)]
pub enum StopReason {
    /// A 401 or 403: its key was rejected.
    Auth(u16),
    /// The circuit breaker: `count` of the last `window` answered rows failed the same way.
    Breaker {
        count: usize,
        window: usize,
        error: String,
    },
    /// Down for longer than `--outage-wait`.
    Outage(Duration),
}

/// The circuit breaker's rule: when at least half of the last `window`
/// answered rows of an API are in, and `share` of them failed the same way
/// (one failure cluster), the batch is failing systematically (a mapping
/// bug, a wrong base URL): that API stops and its other rows stay pending.
#[derive(Clone, Copy, Debug)]
pub struct BreakerRule {
    pub share: f64,
    pub window: usize,
}

impl Default for BreakerRule {
    fn default() -> Self {
        BreakerRule {
            share: 0.8,
            window: 100,
        }
    }
}

/// Whether an API is down, as a lane sees it: nearly every recent call
/// failed on the wire (connection errors, timeouts, 5xx). While it is down
/// it is paused and probed by one row at a time, with the gap between
/// probes doubling up to a minute; rows spend no attempts meanwhile.
#[derive(Debug)]
pub(super) struct Outage {
    /// The last [`OUTAGE_LOOK`] answers: whether each failed on the wire.
    pub(super) recent: VecDeque<bool>,
    /// Since when it is down, and the gap before the next probe.
    pub(super) down: Option<(Instant, Duration)>,
    /// Time it was down in this batch, over all outages.
    pub(super) total: Duration,
}

/// How many recent answers decide that an API is down, and which share of
/// them must have failed on the wire.
pub(super) const OUTAGE_LOOK: usize = 10;

pub(super) const OUTAGE_SHARE: f64 = 0.9;

pub(super) const FIRST_PROBE: Duration = Duration::from_secs(1);

pub(super) const LONGEST_PROBE_GAP: Duration = Duration::from_secs(60);

/// What an answer did to the outage state.
#[derive(Debug, PartialEq)]
pub(super) enum Wire {
    /// The API is up.
    Up,
    /// The API is down (now or still): the attempt is not counted; wait `gap`.
    Down { gap: Duration },
    /// Down for longer than the outage may last: stop the API.
    TooLong(Duration),
}

impl Outage {
    pub(super) fn new() -> Outage {
        Outage {
            recent: VecDeque::new(),
            down: None,
            total: Duration::ZERO,
        }
    }

    /// A call sent at `sent` was answered at `now`.
    pub(super) fn answered(
        &mut self,
        failed_on_wire: bool,
        sent: Instant,
        now: Instant,
        limit: Duration,
    ) -> Wire {
        if self.recent.len() == OUTAGE_LOOK {
            self.recent.pop_front();
        }
        self.recent.push_back(failed_on_wire);
        match (self.down, failed_on_wire) {
            (Some((since, _)), false) => {
                // Back: sending resumes at the paced rate.
                self.total += now.saturating_duration_since(since);
                self.down = None;
                self.recent.clear();
                Wire::Up
            }
            (Some((since, gap)), true) => {
                let down_for = now.saturating_duration_since(since);
                if down_for >= limit {
                    return Wire::TooLong(down_for);
                }
                if sent < since {
                    // On the wire when it went down: not a probe.
                    return Wire::Down { gap };
                }
                let gap = (gap * 2).min(LONGEST_PROBE_GAP);
                self.down = Some((since, gap));
                Wire::Down { gap }
            }
            (None, true) => {
                let bad = self.recent.iter().filter(|b| **b).count();
                if self.recent.len() >= OUTAGE_LOOK / 2
                    && bad as f64 >= OUTAGE_SHARE * self.recent.len() as f64
                {
                    self.down = Some((now, FIRST_PROBE));
                    Wire::Down { gap: FIRST_PROBE }
                } else {
                    Wire::Up
                }
            }
            (None, false) => Wire::Up,
        }
    }

    pub(super) fn is_down(&self) -> bool {
        self.down.is_some()
    }
}

/// One lane's recent answers: `None` a success, else the failure's cluster.
#[derive(Debug, Default)]
pub(super) struct Breaker {
    pub(super) recent: VecDeque<Option<(Option<u16>, String)>>,
}

impl Breaker {
    /// Records an answered row; `Some` once the rule trips.
    pub(super) fn record(
        &mut self,
        rule: BreakerRule,
        failure: Option<(Option<u16>, String)>,
    ) -> Option<StopReason> {
        if self.recent.len() == rule.window {
            self.recent.pop_front();
        }
        let this = failure.clone();
        self.recent.push_back(failure);
        let (http_status, error) = this?;
        // The same cluster: the same HTTP status and the same masked error.
        if self.recent.len() * 2 < rule.window {
            return None;
        }
        let count = self
            .recent
            .iter()
            .filter(|r| {
                r.as_ref()
                    .is_some_and(|(s, e)| *s == http_status && *e == error)
            })
            .count();
        (count as f64 >= rule.share * self.recent.len() as f64).then_some(StopReason::Breaker {
            count,
            window: self.recent.len(),
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_is_down_when_nearly_every_call_fails_on_the_wire() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let limit = Duration::from_secs(60);
        // A healthy API with a few 5xx: never down.
        let mut o = Outage::new();
        for i in 0..200 {
            assert_eq!(o.answered(i % 25 == 0, t0, t0, limit), Wire::Up);
        }
        // Five failures on the wire in a row: down.
        let mut o = Outage::new();
        for _ in 0..4 {
            assert_eq!(o.answered(true, t0, t0, limit), Wire::Up);
        }
        let first = Wire::Down { gap: FIRST_PROBE };
        assert_eq!(o.answered(true, t0, t0, limit), first);
        // Calls already on the wire when it went down do not stretch the gap.
        let before = t0 - Duration::from_millis(1);
        for _ in 0..20 {
            assert_eq!(o.answered(true, before, t0, limit), first);
        }
        // Each failed probe doubles it.
        let twice = Wire::Down {
            gap: FIRST_PROBE * 2,
        };
        assert_eq!(o.answered(true, at(1), at(1), limit), twice);
        let four = Wire::Down {
            gap: FIRST_PROBE * 4,
        };
        assert_eq!(o.answered(true, at(3), at(3), limit), four);
        // Back: up at once, the time down counted.
        assert_eq!(o.answered(false, at(7), at(7), limit), Wire::Up);
        assert_eq!(o.total, Duration::from_secs(7));
        // Down again, past the limit: given up on.
        for _ in 0..5 {
            o.answered(true, at(10), at(10), limit);
        }
        assert!(o.is_down());
        let too_long = Wire::TooLong(Duration::from_secs(70));
        assert_eq!(o.answered(true, at(80), at(80), limit), too_long);
    }
}
