//! The lane's dispatcher ([`Executor::run`]): edits to one conversation one
//! at a time in source order, different conversations side by side, and no
//! row started while the lane's calls in flight are at their limit.

use super::Executor;
use super::feed::Job;
use crate::edit::Api;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::mpsc;

impl Executor {
    /// Runs every job of one API's lane from `jobs` and returns when all are
    /// recorded (or the run was cancelled and the calls in flight have
    /// finished). Each API runs its own loop: [`ApiLane`].
    ///
    /// A row starts only while the lane has room (`running` under its
    /// in-flight limit): a new row read, or the next edit of a conversation
    /// whose previous edit just finished, which waits in `ready` for room
    /// like any other. `running` is given back here, when the dispatcher
    /// sees the row finish, so a finished row's slot is never taken twice.
    pub async fn run(self: &Arc<Self>, api: Api, mut jobs: mpsc::Receiver<Job>) {
        /// Rows parked behind a busy conversation before reading pauses.
        const MAX_PARKED: usize = 10_000;
        let lane = self.lane(api);
        let mut running = FuturesUnordered::new();
        // A conversation is in `busy` while one of its edits runs or waits
        // in `ready`; later ones wait in its queue.
        let mut busy: HashMap<(Api, Arc<str>), VecDeque<Job>> = HashMap::new();
        // Next edits whose conversation is free, in the order they came free.
        let mut ready: VecDeque<Job> = VecDeque::new();
        // Rows read but not started: in a conversation's queue or in `ready`.
        let mut parked = 0usize;
        let mut source_done = false;
        loop {
            let cancelled = self.cancel.is_cancelled();
            let room = || {
                (lane.running.load(Relaxed) as usize)
                    < lane.in_flight_limit(self.settings.concurrency)
            };
            while !cancelled && room() {
                let Some(next) = ready.pop_front() else { break };
                parked -= 1;
                if self.is_stopped(api) {
                    let key = (api, next.conversation_id.clone());
                    let left = busy.remove(&key).map_or(0, |q| q.len());
                    parked -= left;
                    self.counters
                        .left_pending
                        .fetch_add(1 + left as u64, Relaxed);
                } else {
                    running.push(self.spawn(next));
                }
            }
            let can_take =
                !cancelled && !source_done && ready.is_empty() && room() && parked < MAX_PARKED;
            // Nothing more will start: only the rows running are awaited.
            let winding_down = cancelled || (source_done && ready.is_empty());
            if running.is_empty() && winding_down {
                break;
            }
            tokio::select! {
                job = jobs.recv(), if can_take => match job {
                    None => source_done = true,
                    Some(job) => {
                        if self.is_stopped(job.api) {
                            self.counters.left_pending.fetch_add(1, Relaxed);
                            continue;
                        }
                        let key = (job.api, job.conversation_id.clone());
                        match busy.get_mut(&key) {
                            Some(queue) => {
                                queue.push_back(job);
                                parked += 1;
                            }
                            None => {
                                busy.insert(key, VecDeque::new());
                                running.push(self.spawn(job));
                            }
                        }
                    }
                },
                Some(key) = running.next(), if !running.is_empty() => {
                    lane.running.fetch_sub(1, Relaxed);
                    let queue = busy.get_mut(&key).expect("a running conversation is busy");
                    match queue.pop_front() {
                        Some(next) => {
                            if self.cancel.is_cancelled() || self.is_stopped(next.api) {
                                // Left pending, with the rest of its queue.
                                let left = 1 + queue.len();
                                parked -= left;
                                self.counters.left_pending.fetch_add(left as u64, Relaxed);
                                busy.remove(&key);
                            } else {
                                ready.push_back(next);
                            }
                        }
                        None => {
                            busy.remove(&key);
                        }
                    }
                },
                _ = self.cancel.cancelled(), if !cancelled => {}
                // A row went to sleep in its backoff: its slot is free.
                _ = lane.freed.notified(), if !winding_down => {}
            }
        }
        // Whatever was still queued or unread stays pending.
        let unread = parked as u64;
        self.counters.left_pending.fetch_add(unread, Relaxed);
    }

    /// Starts one row; `running` counts it until the dispatcher sees it end.
    pub(super) fn spawn(
        self: &Arc<Self>,
        job: Job,
    ) -> impl Future<Output = (Api, Arc<str>)> + use<> {
        let me = self.clone();
        let key = (job.api, job.conversation_id.clone());
        self.lane(job.api).running.fetch_add(1, Relaxed);
        let handle = tokio::spawn(async move { me.work(job).await });
        async move {
            // A worker never panics by design; if one did, the row stays in_flight (outcome unknown).
            let _ = handle.await;
            key
        }
    }
}
