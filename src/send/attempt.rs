//! One call's attempts ([`Executor::exchange`]): backoff with jitter, the
//! write's `in_flight` mark committed while its slot comes, a place on the
//! wire within the lane's limit, and each answer fed back to the pacer, the
//! outage detector and the audit; and a row's [`Outcome`] from its last
//! attempt ([`outcome`]).

use super::feed::Job;
use super::health::{StopReason, Wire};
use super::http::{Attempted, Verdict};
use super::lane::{ApiLane, OnWire};
use super::{Executor, MARK_LEAD};
use crate::audit::{AttemptRecord, Outcome, RowStatus};
use std::sync::atomic::Ordering::Relaxed;
use tokio::time::Instant;

/// How one call's attempts ended.
pub(super) enum End {
    Success,
    /// A final answer, or the attempts ran out (with a note saying so).
    Failed(Option<String>),
    /// Not answered: interrupted or the API stopped; back to `pending`.
    Pending(Option<String>),
    /// The audit database failed before the call could be marked: nothing sent.
    Abandoned,
    /// A failure that may hide an applied call: the caller may read before retrying.
    Ambiguous,
}

/// Where one call's attempts stand, across the exchanges of a pass.
pub(super) struct Budget {
    /// Attempts spent from this pass's budget: one made while the API is
    /// down is not spent (it is still recorded).
    pub(super) spent: u32,
    /// Attempts in all, earlier passes included.
    pub(super) attempt: u32,
    pub(super) marked: bool,
    pub(super) last: Option<Attempted>,
}

impl Budget {
    pub(super) fn new(prior_attempts: u32) -> Budget {
        Budget {
            spent: 0,
            attempt: prior_attempts,
            marked: false,
            last: None,
        }
    }
}

impl Executor {
    /// Attempts one call until success, a final answer, or the attempts run
    /// out. A `write` is marked `in_flight` before its first slot and its
    /// attempts recorded; a read is neither (its one record is the caller's).
    pub(super) async fn exchange(
        &self,
        job: &Job,
        write: bool,
        b: &mut Budget,
        ambiguous_stops: bool,
    ) -> End {
        let lane = self.lane(job.api);
        // `in_flight` means "may be on the wire": the mark is committed in
        // the last moments before the row's first slot (below), not while
        // it queues for the pace.
        if !write {
            b.marked = true;
        }
        while b.spent < self.settings.max_attempts {
            let n = b.spent;
            let last = &b.last;
            if n > 0 {
                // Backoff with jitter; a Retry-After pause is held by the pacer.
                let exp = self
                    .settings
                    .base_backoff
                    .saturating_mul(1 << (n - 1).min(16));
                let delay = exp
                    .min(self.settings.max_backoff)
                    .mul_f64(0.5 + fastrand::f64() * 0.5);
                self.counters.retrying.fetch_add(1, Relaxed);
                // After a 429 the pacer already holds the API back: asleep,
                // the row holds no slot, and the lane sends others at the
                // pace meanwhile. (After a 5xx or a timeout it keeps its
                // slot, so that a failing API is not hit by ever more rows.)
                let limited = last
                    .as_ref()
                    .is_some_and(|a| a.verdict == Verdict::RateLimited);
                if limited {
                    lane.running.fetch_sub(1, Relaxed);
                    lane.freed.notify_one();
                }
                let woke = tokio::select! {
                    _ = tokio::time::sleep(delay) => true,
                    _ = self.cancel.cancelled() => false,
                };
                if limited {
                    lane.running.fetch_add(1, Relaxed);
                }
                self.counters.retrying.fetch_sub(1, Relaxed);
                if !woke {
                    let why = "interrupted before the next retry".to_owned();
                    return End::Pending(Some(why));
                }
            }
            let (_probe, wire_count) = match self.to_the_wire(job, lane, n > 0, b).await {
                Ok(go) => go,
                Err(end) => return end,
            };
            let sent = Instant::now();
            b.attempt += 1;
            b.spent += 1;
            let running = lane.running.load(Relaxed);
            lane.calls.fetch_add(1, Relaxed);
            lane.max_running.fetch_max(running, Relaxed);
            if running as usize >= lane.in_flight_limit(self.settings.concurrency) {
                lane.full_sends.fetch_add(1, Relaxed);
            }
            let a = self.attempt(job, lane).await;
            let sent_with = wire_count.leave();
            if a.http_status.is_some() {
                lane.observe(sent.elapsed());
            }
            let on_wire = matches!(a.verdict, Verdict::Retry);
            let wire =
                lane.outage()
                    .answered(on_wire, sent, Instant::now(), self.settings.outage_wait);
            match wire {
                Wire::Up => {}
                Wire::Down { gap } => {
                    b.spent -= 1; // the API is down, not the row
                    lane.pacer.pause_until(Instant::now() + gap);
                }
                Wire::TooLong(down_for) => {
                    b.spent -= 1;
                    self.stop(job.api, StopReason::Outage(down_for));
                }
            }
            self.counters.http_attempts.fetch_add(1, Relaxed);
            let verdict = a.verdict;
            if let Some(rate) = a.stated {
                lane.pacer.stated(rate);
            }
            if let Some(pause) = a.retry_after {
                let until = Instant::now() + pause.min(self.settings.max_retry_after);
                if verdict == Verdict::RateLimited || a.quota_spent {
                    lane.pacer.retry_after(until);
                } else {
                    lane.pacer.pause_until(until); // a 503's, say: no quota
                }
            }
            match verdict {
                Verdict::Success => {
                    lane.pacer.on_success(sent, sent_with);
                    if a.quota_spent {
                        // As telling as a 429, without the failed call.
                        lane.pacer.on_429(sent, 1);
                        lane.limited.fetch_add(1, Relaxed);
                    }
                }
                Verdict::RateLimited => {
                    lane.pacer.on_429(sent, sent_with);
                    lane.limited.fetch_add(1, Relaxed);
                }
                _ => {}
            }
            if write {
                let _ = self
                    .recorder
                    .attempt(AttemptRecord {
                        row_key: job.row_key.clone(),
                        attempt: b.attempt,
                        started_ms: a.started_ms,
                        duration_ms: a.duration_ms,
                        http_status: a.http_status,
                        error: a.error.clone(),
                    })
                    .await;
            }
            // A failure that may hide an applied call (the connection broke
            // after the request went out, a timeout, a 5xx).
            let ambiguous = verdict == Verdict::Retry && a.http_status != Some(408);
            b.last = Some(a);
            match verdict {
                Verdict::Success => return End::Success,
                Verdict::AuthRejected(code) => {
                    self.stop(job.api, StopReason::Auth(code));
                    break;
                }
                Verdict::Final => break,
                Verdict::Retry if ambiguous && ambiguous_stops => {
                    if b.spent < self.settings.max_attempts {
                        return End::Ambiguous;
                    }
                }
                Verdict::Retry | Verdict::RateLimited => {}
            }
        }
        let exhausted = b
            .last
            .as_ref()
            .is_some_and(|a| matches!(a.verdict, Verdict::Retry | Verdict::RateLimited));
        let note = exhausted.then(|| format!("gave up after {} attempts", b.attempt));
        End::Failed(note)
    }

    /// Waits for the call's slot and its place on the wire, committing a
    /// write's `in_flight` mark while the slot comes. A pause that begins
    /// after the slot was taken (a 429 read meanwhile) holds the call too,
    /// and a mark this took is taken back while it waits: `in_flight` stays
    /// exactly "may be on the wire". `Err`: the call is not sent.
    pub(super) async fn to_the_wire<'a>(
        &self,
        job: &Job,
        lane: &'a ApiLane,
        retry: bool,
        b: &mut Budget,
    ) -> Result<(Option<tokio::sync::SemaphorePermit<'a>>, OnWire<'a>), End> {
        loop {
            let slot = tokio::select! {
                slot = lane.pacer.reserve(MARK_LEAD) => Some(slot),
                _ = self.cancel.cancelled() => None,
            };
            let Some(slot) = slot else {
                let why = retry.then(|| "interrupted before it was sent".to_owned());
                return Err(End::Pending(why));
            };
            let marks = !b.marked;
            if marks {
                // The slot is taken: commit the mark while its time comes,
                // so the wire waits for no commit (unless the commit is slow).
                let (mark, ()) = tokio::join!(
                    self.recorder.in_flight(job.id),
                    tokio::time::sleep_until(slot)
                );
                if mark.is_err() {
                    // Without the mark committed the call must not go out;
                    // the audit database failed, so nothing more is sent.
                    self.cancel.cancel();
                    return Err(End::Abandoned);
                }
                b.marked = true;
            } else {
                tokio::time::sleep_until(slot).await;
            }
            if self.is_stopped(job.api) {
                let why = format!(
                    "not sent: the {} API was stopped earlier in this batch",
                    job.api
                );
                return Err(End::Pending(Some(why)));
            }
            // While the API is down, one row at a time probes it.
            let probe = if lane.outage().is_down() {
                let permit = tokio::select! {
                    p = lane.probe.acquire() => p.ok(),
                    _ = self.cancel.cancelled() => None,
                };
                if permit.is_none() || self.is_stopped(job.api) {
                    return Err(End::Pending(None));
                }
                permit
            } else {
                None
            };
            // Rows back from a backoff can outnumber the lane's limit: the
            // wire itself keeps to it.
            let Some(wire) = self.onto_wire(lane).await else {
                return Err(End::Pending(Some(
                    "interrupted before it was sent".to_owned(),
                )));
            };
            if lane.pacer.paused_for().is_none() {
                return Ok((probe, wire));
            }
            drop((probe, wire));
            if marks {
                if self.recorder.unmark(job.id).await.is_err() {
                    self.cancel.cancel();
                    return Err(End::Abandoned);
                }
                b.marked = false;
            }
        }
    }

    /// Puts a call on the wire once the lane's in-flight limit allows
    /// (`--concurrency N`, the budget of `auto`, or the API's cap when one
    /// was found): whatever path a call comes by (a row handed on, a retry
    /// back from its backoff, a read), no more than that are ever on the
    /// wire. `None` if the batch is cancelled meanwhile.
    pub(super) async fn onto_wire<'a>(&self, lane: &'a ApiLane) -> Option<OnWire<'a>> {
        loop {
            let freed = lane.wire_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let cap = lane.in_flight_limit(self.settings.concurrency) as u64;
            if let Ok(before) = lane
                .on_wire
                .fetch_update(Relaxed, Relaxed, |n| (n < cap).then_some(n + 1))
            {
                return Some(OnWire {
                    lane,
                    at_send: before as usize + 1,
                });
            }
            tokio::select! {
                _ = freed => {}
                _ = self.cancel.cancelled() => return None,
            }
        }
    }
}

/// A row's outcome; `extra` says more than its last attempt's error.
pub(super) fn outcome(
    job: &Job,
    status: RowStatus,
    last: Option<Attempted>,
    attempts: u32,
    extra: Option<String>,
    changes: Option<String>,
) -> Outcome {
    let (http_status, error, response, snapshot) = match last {
        Some(a) => (a.http_status, a.error, a.response, a.snapshot),
        None => (None, None, None, None),
    };
    let error = match (extra, error) {
        (Some(x), Some(e)) => Some(format!("{x} (last attempt: {e})")),
        (Some(x), None) => Some(x),
        (None, e) => e,
    };
    Outcome {
        id: job.id,
        row_key: job.row_key.clone(),
        status,
        attempts,
        http_status,
        error,
        response,
        snapshot,
        changes,
    }
}
