//! Reads of live state ([`Executor::state_of`]): `plan`'s and
//! `--skip-unchanged`'s verdicts, undo's check that a conversation still
//! holds what the batch left, and the verifying read of a row left in flight.
//! A conversation is read once per batch and kept ([`States`]).

use super::Executor;
use super::attempt::{Budget, End, outcome};
use super::feed::Job;
use crate::audit::{self, Outcome, ReadRecord, RowStatus};
use crate::edit::Api;
use crate::live;
use crate::options::Live;
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// What `error` says of a row settled by a read.
pub const VERIFIED: &str = "verified by a read: left in flight by an earlier run, and its effect was already visible, so it was not sent again";

/// What judging a row against live state decided.
pub(super) enum Judged {
    /// Recorded already (skipped, verified, a plan's verdict): nothing to send.
    Done,
    /// Stopped before it could be judged (interrupted, or the API stopped).
    Stopped,
    /// Send it; with `--skip-unchanged`, the changes it makes (JSON).
    Send(Option<String>),
}

/// A conversation's state as this batch knows it: as read (or left by the
/// batch's own edits since), or why it is not known.
#[derive(Clone, Debug)]
pub(super) struct Known {
    pub(super) state: Option<live::State>,
    /// Why there is no state (a 404, a failed read).
    pub(super) note: Option<String>,
    pub(super) http_status: Option<u16>,
    /// Each of the conversation's rows judged, by row id (`plan`, `--skip-unchanged`).
    pub(super) verdicts: Arc<HashMap<i64, live::Verdict>>,
}

impl Known {
    /// The row's verdict; `None` when the conversation could not be read.
    pub(super) fn verdict(&self, job: &Job) -> Option<live::Verdict> {
        let state = self.state.as_ref()?;
        Some(match self.verdicts.get(&job.id) {
            Some(v) => v.clone(),
            // Not among the rows judged at the read: judged alone.
            None => live::judge_all(&[(0, job.call())], state).remove(0),
        })
    }
}

/// The states of the conversations a lane is working through, the most
/// recent [`STATES_KEPT`] of them: a conversation whose rows are further
/// apart than that is read again.
#[derive(Default)]
pub(super) struct States {
    pub(super) map: HashMap<(Api, Arc<str>), Known>,
    pub(super) order: VecDeque<(Api, Arc<str>)>,
}

pub(super) const STATES_KEPT: usize = 4096;

impl States {
    pub(super) fn get(&self, key: &(Api, Arc<str>)) -> Option<Known> {
        self.map.get(key).cloned()
    }

    pub(super) fn put(&mut self, key: (Api, Arc<str>), known: Known) {
        if self.map.insert(key.clone(), known).is_none() {
            self.order.push_back(key);
            if self.order.len() > STATES_KEPT
                && let Some(old) = self.order.pop_front()
            {
                self.map.remove(&old);
            }
        }
    }
}

impl Executor {
    /// Records a row judged without sending it (`skipped`, or a plan's verdict).
    pub(super) async fn judged(
        &self,
        job: &Job,
        status: RowStatus,
        note: String,
        changes: Option<String>,
    ) {
        self.counters.done.fetch_add(1, Relaxed);
        let mut o = outcome(job, status, None, job.prior_attempts, None, changes);
        o.error = Some(note);
        let _ = self.recorder.finished(o).await;
    }

    /// `convoy plan`: the row judged on its conversation's state; nothing sent.
    pub(super) async fn plan_only(&self, job: &Job) {
        let Some(known) = self.state_of(job, "pre_image").await else {
            return self.left_pending(self.unsent(job, None)).await;
        };
        match known.verdict(job) {
            None => {
                self.counters.failed.fetch_add(1, Relaxed);
                let note = known.note.unwrap_or_default();
                self.judged(job, RowStatus::Pending, note, None).await
            }
            Some(live::Verdict::Skip(why)) => self.judged(job, RowStatus::Skipped, why, None).await,
            Some(live::Verdict::Changes(c)) => {
                self.counters.succeeded.fetch_add(1, Relaxed);
                self.counters.done.fetch_add(1, Relaxed);
                let changes = Some(Value::Object(c).to_string());
                let o = outcome(
                    job,
                    RowStatus::Pending,
                    None,
                    job.prior_attempts,
                    None,
                    changes,
                );
                let _ = self.recorder.finished(o).await;
            }
        }
    }

    /// `--skip-unchanged`: skip the row when it changes nothing.
    pub(super) async fn skip_if_unchanged(&self, job: &Job) -> Judged {
        let purpose = if job.pre_image { "state" } else { "pre_image" };
        let Some(known) = self.state_of(job, purpose).await else {
            return Judged::Stopped;
        };
        match known.verdict(job) {
            // Not readable: sent as a plain run would send it.
            None => Judged::Send(None),
            Some(live::Verdict::Skip(why)) => {
                self.judged(job, RowStatus::Skipped, why, None).await;
                Judged::Done
            }
            Some(live::Verdict::Changes(c)) => Judged::Send(Some(Value::Object(c).to_string())),
        }
    }

    /// An undo row: sent only when the conversation still holds what the
    /// undone batch left in the fields it puts back (or with `--force`).
    pub(super) async fn check_before_undo(&self, job: &Job, force: bool) -> Judged {
        let Some(known) = self.state_of(job, "check").await else {
            return Judged::Stopped;
        };
        let expected: Map<String, Value> = job
            .changes
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_default();
        let Some(state) = known.state else {
            let note = format!(
                "not undone: the conversation could not be read first ({})",
                known.note.unwrap_or_default()
            );
            self.counters.failed.fetch_add(1, Relaxed);
            self.judged(job, RowStatus::Failed, note, None).await;
            return Judged::Done;
        };
        let moved: Vec<String> = expected
            .iter()
            .filter(|(k, c)| state.get(*k).unwrap_or(&Value::Null) != &c["before"])
            .map(|(k, c)| {
                format!(
                    "{k} is {} now, not {} as the batch left it",
                    live::compact(state.get(k).unwrap_or(&Value::Null)),
                    live::compact(&c["before"])
                )
            })
            .collect();
        if !moved.is_empty() && !force {
            let note = format!(
                "conflict: changed since the batch ({}); left alone (--force undoes it anyway)",
                moved.join("; ")
            );
            self.judged(job, RowStatus::Skipped, note, None).await;
            return Judged::Done;
        }
        Judged::Send(None)
    }

    /// A row left `in_flight` by a crash: read its conversation; when the
    /// row's effect is already there, it succeeded (verified by a read) and
    /// is not sent again.
    pub(super) async fn verify(&self, job: &Job, attempts: u32) -> Judged {
        let call = job.call();
        let Some(known) = self.read(job, "verify").await else {
            return Judged::Stopped;
        };
        let before = job
            .before
            .as_deref()
            .and_then(|s| live::state_of_snapshot(job.api, s));
        match known.state {
            Some(now) if live::visible(&call, &now, before.as_ref()) => {
                self.counters.succeeded.fetch_add(1, Relaxed);
                self.counters.done.fetch_add(1, Relaxed);
                let o = Outcome {
                    error: Some(VERIFIED.into()),
                    http_status: known.http_status,
                    ..outcome(job, RowStatus::Succeeded, None, attempts, None, None)
                };
                let _ = self.recorder.finished(o).await;
                Judged::Done
            }
            _ => Judged::Send(None),
        }
    }

    /// The conversation's state for this batch: kept from earlier in the
    /// batch, or read now (one GET, paced and recorded as `purpose`).
    /// `None`: the read was stopped (interrupted, or the API stopped).
    pub(super) async fn state_of(&self, job: &Job, purpose: &'static str) -> Option<Known> {
        let key = (job.api, job.conversation_id.clone());
        if let Some(known) = self.states().get(&key) {
            return Some(known);
        }
        let mut known = self.read(job, purpose).await?;
        if let (Some(state), Some((db, batch_id, pass)), Live::Plan | Live::SkipUnchanged) =
            (&known.state, &self.batch, self.live)
        {
            // Best effort: without the rows, each is judged alone.
            let rows =
                audit::conversation_rows(db, batch_id, *pass, job.api, &job.conversation_id).await;
            if let Ok(rows) = rows {
                let calls: Vec<(i64, live::Call)> = rows
                    .iter()
                    .map(|r| {
                        let call = live::Call {
                            op: r.op.as_deref().unwrap_or_default(),
                            body: r.request_body.as_deref(),
                        };
                        (r.row_number, call)
                    })
                    .collect();
                let verdicts = live::judge_all(&calls, state);
                known.verdicts = Arc::new(rows.iter().map(|r| r.id).zip(verdicts).collect());
            }
        }
        self.keep(job, known.clone());
        Some(known)
    }

    pub(super) fn states(&self) -> std::sync::MutexGuard<'_, States> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn keep(&self, job: &Job, known: Known) {
        self.states()
            .put((job.api, job.conversation_id.clone()), known);
    }

    /// One read of the row's conversation, through the lane like any call,
    /// recorded in `reads` (committed before this returns).
    pub(super) async fn read(&self, job: &Job, purpose: &'static str) -> Option<Known> {
        let url = job.read_url.clone();
        let get = Job {
            method: reqwest::Method::GET,
            url: url.clone(),
            body: None,
            prior_attempts: 0,
            ..job.clone()
        };
        let mut b = Budget::new(0);
        let end = self.exchange(&get, false, &mut b, false).await;
        let (http_status, error, response) = match b.last {
            Some(a) => (a.http_status, a.error, a.response),
            None => (None, None, None),
        };
        if matches!(end, End::Pending(_) | End::Abandoned | End::Ambiguous) {
            return None;
        }
        let state = match end {
            End::Success => response
                .as_deref()
                .and_then(|r| live::conversation_of(job.api, r)),
            _ => None,
        };
        let note = match (&state, http_status) {
            (Some(_), _) => None,
            (None, Some(404)) => Some(format!(
                "would fail: the {} API does not know this conversation (HTTP 404 on reading it)",
                job.api
            )),
            (None, _) => Some(format!(
                "not judged: the conversation could not be read ({})",
                error.as_deref().unwrap_or("no conversation in the answer")
            )),
        };
        let record = ReadRecord {
            api: job.api,
            conversation_id: job.conversation_id.clone(),
            agent_id: job.agent_id.clone(),
            purpose,
            row_key: job.row_key.clone(),
            url,
            attempts: b.attempt,
            http_status,
            error,
            state: state.as_ref().map(|s| Value::Object(s.clone()).to_string()),
        };
        if self.recorder.read(record).await.is_err() {
            self.cancel.cancel();
            return None;
        }
        Some(Known {
            state,
            note,
            http_status,
            verdicts: Arc::default(),
        })
    }
}
