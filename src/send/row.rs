//! One row from start to its recorded outcome ([`Executor::work`]): judged
//! against live state when the batch reads it, then attempted until success,
//! a final answer or the attempts run out.

use super::Executor;
use super::attempt::{Budget, End, outcome};
use super::feed::Job;
use super::http::Verdict;
use super::reads::Judged;
use crate::audit::{Outcome, RowStatus};
use crate::options::Live;
use std::sync::atomic::Ordering::Relaxed;

impl Executor {
    /// One row. When the batch reads live state, its conversation is read
    /// first (once) and the row judged; a row left in flight by a crash is
    /// settled by a read when its effect is already visible. Then attempts
    /// until success, a final answer, or the attempts run out.
    pub(super) async fn work(&self, job: Job) {
        if job.in_doubt {
            match self.verify(&job, job.prior_attempts).await {
                Judged::Done => return,
                Judged::Stopped => return self.left_pending(self.unsent(&job, None)).await,
                Judged::Send(_) => {}
            }
        }
        let judged = match self.live {
            Live::Off => Judged::Send(None),
            Live::Plan => return self.plan_only(&job).await,
            Live::CaptureBefore => match job.pre_image {
                true => Judged::Send(None),
                false => match self.state_of(&job, "pre_image").await {
                    Some(_) => Judged::Send(None),
                    None => Judged::Stopped,
                },
            },
            Live::SkipUnchanged => self.skip_if_unchanged(&job).await,
            Live::Undo { force } => self.check_before_undo(&job, force).await,
        };
        let changes = match judged {
            Judged::Done => return,
            Judged::Stopped => return self.left_pending(self.unsent(&job, None)).await,
            Judged::Send(changes) => changes,
        };
        // A CRM confirmation always adds: before sending it again after a
        // failure that may hide its success, read whether it landed.
        let adds = &*job.op == "attention.confirm_crm";
        let mut b = Budget::new(job.prior_attempts);
        let end = loop {
            match self.exchange(&job, true, &mut b, adds).await {
                End::Ambiguous => match self.verify(&job, b.attempt).await {
                    Judged::Done => return,
                    Judged::Stopped => break End::Pending(None),
                    Judged::Send(_) => {}
                },
                end => break end,
            }
        };
        let ex = b;
        let status = match end {
            End::Abandoned | End::Ambiguous => return,
            End::Pending(note) => {
                let o = outcome(&job, RowStatus::Pending, ex.last, ex.attempt, note, changes);
                return self.left_pending(o).await;
            }
            End::Success => RowStatus::Succeeded,
            End::Failed(_) => RowStatus::Failed,
        };
        if status == RowStatus::Succeeded {
            self.counters.succeeded.fetch_add(1, Relaxed);
            self.judge(job.api, None);
        } else {
            if let Some(a) = ex
                .last
                .as_ref()
                .filter(|a| !matches!(a.verdict, Verdict::AuthRejected(_)))
            {
                self.judge(
                    job.api,
                    Some((a.http_status, a.error.as_deref().unwrap_or(""))),
                );
            }
            self.counters.failed.fetch_add(1, Relaxed);
        }
        self.counters.done.fetch_add(1, Relaxed);
        let note = match end {
            End::Failed(note) => note,
            _ => None,
        };
        let _ = self
            .recorder
            .finished(outcome(&job, status, ex.last, ex.attempt, note, changes))
            .await;
    }

    /// A row's outcome that leaves it unsent (back to `pending`).
    pub(super) fn unsent(&self, job: &Job, note: Option<String>) -> Outcome {
        outcome(
            job,
            RowStatus::Pending,
            None,
            job.prior_attempts,
            note,
            None,
        )
    }

    pub(super) async fn left_pending(&self, outcome: Outcome) {
        self.counters.left_pending.fetch_add(1, Relaxed);
        let _ = self.recorder.finished(outcome).await;
    }
}
