//! A long window's quota ([`Quota`]): a `Retry-After` of seconds says when a
//! window resets, and the calls it accepted are its quota.

use super::LONG_PAUSE;
use tokio::time::Instant;

/// The fewest calls a window must have accepted to be gated as one: fewer
/// is a slow token bucket, which `auto` paces.
pub(super) const MIN_QUOTA: u64 = 10;

/// The most a remembered window quota may be.
pub(super) const MOST_QUOTA: u64 = 10_000_000;

/// Long fixed windows (10 s, a minute): each accepts a quota, and a 429's
/// `Retry-After` says when the next window begins. Paced or not, every call
/// on the wire when a quota runs out draws a 429 (10–19% of all calls at
/// 50–150 ms). So once a window has run out, the calls it accepted are its
/// quota, and each later window gets that many calls and one more: the
/// probe, whose 429 says when the next window begins (or, accepted, shows
/// the quota changed: the gate opens until a window runs out again). The
/// rest wait for that window.
#[derive(Debug, Default)]
pub(super) struct Quota {
    /// When the current window began (the end of the last pause), and the
    /// calls sent in it since that were accepted.
    pub(super) since: Option<Instant>,
    pub(super) accepted: u64,
    /// The long window that ran out last: when it began and ran out, and
    /// the calls it accepted (answers that come in late still count).
    pub(super) last: Option<(Option<Instant>, Instant, u64)>,
    /// The quota remembered from an earlier run, until a window runs out.
    pub(super) remembered: Option<u64>,
    /// Calls started in the current window.
    pub(super) sent: u64,
    /// Whether the probe (the call past the quota) is out.
    pub(super) probe: bool,
    /// Whether any call of the run has been answered: with a remembered
    /// quota, the run's first call goes alone, since the run may begin in
    /// a window already spent (its 429 says when the next begins).
    pub(super) answered: bool,
}

impl Quota {
    /// The calls a window accepts, once a long window has run out.
    pub(super) fn per_window(&self) -> Option<u64> {
        match self.last {
            Some((_, _, n)) => (n >= MIN_QUOTA).then_some(n),
            None => self.remembered,
        }
    }

    /// A call sent at `sent` succeeded. True when the window accepted more
    /// than its quota (the probe got through): the quota is not what it
    /// was, so the gate opens until a window runs out again and says what
    /// it is now. True too for the run's first answer, which opens the
    /// gate to the rest of the remembered quota.
    pub(super) fn on_success(&mut self, sent: Instant) -> bool {
        let first = !std::mem::replace(&mut self.answered, true);
        if self.since.is_none_or(|s| sent >= s) {
            self.accepted += 1;
            if self.per_window().is_some_and(|q| self.accepted > q) {
                self.probe = false;
                self.last = None;
                self.remembered = None;
                return true;
            }
        } else if let Some((from, ran_out, n)) = &mut self.last
            && from.is_none_or(|f| sent >= f)
            && sent < *ran_out
        {
            *n += 1;
        }
        first
    }

    /// Every call is held until `until`; `extends`: a pause was already on.
    pub(super) fn on_pause(&mut self, now: Instant, until: Instant, extends: bool) {
        if !extends {
            let long = until.saturating_duration_since(now) >= LONG_PAUSE;
            let partial = self.since.is_none()
                && self.last.is_none()
                && self.remembered.is_some_and(|q| self.accepted < q);
            if long {
                // A run that began in a window someone had spent part of:
                // what that window accepted is no quota; the next window
                // gets the remembered one.
                if !partial {
                    self.last = Some((self.since, now, self.accepted));
                }
            } else {
                self.last = None;
                self.remembered = None;
            }
            self.accepted = 0;
            self.sent = 0;
            self.probe = false;
        }
        self.since = Some(until);
    }

    /// Whether a call may start now (and counts it).
    pub(super) fn admit(&mut self) -> bool {
        let Some(q) = self.per_window() else {
            return true;
        };
        if self.since.is_none() && !self.answered && self.sent >= 1 {
            return false;
        }
        if self.sent >= q {
            if self.probe {
                return false;
            }
            self.probe = true;
        }
        self.sent += 1;
        true
    }
}
