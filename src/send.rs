//! The send phase ([`phase`]): one lane per API, each with its own reader of
//! its rows, its own calls in flight (sized from its latency and pace, or
//! capped by `--concurrency`) and its own [`Pacer`], awaited before every
//! attempt; edits to the same conversation one at a time in source order;
//! retries with backoff and jitter; `Retry-After` pausing the whole API; a
//! 401/403, the circuit breaker or an outage longer than `--outage-wait`
//! stopping that API. Every attempt and outcome goes to the [`Writer`];
//! workers hold no timing logic of their own beyond the backoff delay.

use crate::audit::{
    self, AttemptRecord, Db, Outcome, ReadRecord, RowStatus, Snapshot, Writer, tally,
};
use crate::call::{Endpoint, Endpoints};
use crate::edit::Api;
use crate::live;
use crate::options::{Live, Options};
use crate::pacer::{Pacer, RateSpec, Remembered};
use crate::progress::{Counters, Progress};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION, RETRY_AFTER};
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One row to send, as read back from the audit table.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: i64,
    pub row_key: Arc<str>,
    pub api: Api,
    pub method: reqwest::Method,
    pub url: String,
    pub body: Option<String>,
    pub conversation_id: Arc<str>,
    /// Attempts made on earlier runs of the batch.
    pub prior_attempts: u32,
    pub op: Arc<str>,
    pub agent_id: Option<String>,
    /// `GET` of the row's conversation (empty when the row is never read).
    pub read_url: String,
    /// Left `in_flight` by an earlier pass: its outcome is unknown.
    pub in_doubt: bool,
    /// The batch already holds a pre-image of the conversation.
    pub pre_image: bool,
    /// The row's recorded changes (an undo row: from what, to what).
    pub changes: Option<String>,
    /// For a row in doubt: the last snapshot convoy recorded of its
    /// conversation before it (what a confirmation's count is compared with).
    pub before: Option<String>,
}

impl Job {
    fn call(&self) -> live::Call<'_> {
        live::Call {
            op: &self.op,
            body: self.body.as_deref(),
        }
    }
}

/// What `error` says of a row settled by a read.
pub const VERIFIED: &str = "verified by a read: left in flight by an earlier run, and its effect was already visible, so it was not sent again";

/// What judging a row against live state decided.
enum Judged {
    /// Recorded already (skipped, verified, a plan's verdict): nothing to send.
    Done,
    /// Stopped before it could be judged (interrupted, or the API stopped).
    Stopped,
    /// Send it; with `--skip-unchanged`, the changes it makes (JSON).
    Send(Option<String>),
}

/// How one call's attempts ended.
enum End {
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
struct Budget {
    /// Attempts spent from this pass's budget: one made while the API is
    /// down is not spent (it is still recorded).
    spent: u32,
    /// Attempts in all, earlier passes included.
    attempt: u32,
    marked: bool,
    last: Option<Attempted>,
}

impl Budget {
    fn new(prior_attempts: u32) -> Budget {
        Budget {
            spent: 0,
            attempt: prior_attempts,
            marked: false,
            last: None,
        }
    }
}

/// A conversation's state as this batch knows it: as read (or left by the
/// batch's own edits since), or why it is not known.
#[derive(Clone, Debug)]
struct Known {
    state: Option<live::State>,
    /// Why there is no state (a 404, a failed read).
    note: Option<String>,
    http_status: Option<u16>,
    /// Each of the conversation's rows judged, by row id (`plan`, `--skip-unchanged`).
    verdicts: Arc<HashMap<i64, live::Verdict>>,
}

impl Known {
    /// The row's verdict; `None` when the conversation could not be read.
    fn verdict(&self, job: &Job) -> Option<live::Verdict> {
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
struct States {
    map: HashMap<(Api, Arc<str>), Known>,
    order: VecDeque<(Api, Arc<str>)>,
}

const STATES_KEPT: usize = 4096;

impl States {
    fn get(&self, key: &(Api, Arc<str>)) -> Option<Known> {
        self.map.get(key).cloned()
    }

    fn put(&mut self, key: (Api, Arc<str>), known: Known) {
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

/// A row's outcome; `extra` says more than its last attempt's error.
fn outcome(
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

/// The settings of one execution.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A hard cap on each API's calls in flight (`--concurrency N`); `None`
    /// sizes it from the lane's latency and pace ([`ApiLane::in_flight_limit`]).
    pub concurrency: Option<usize>,
    pub max_attempts: u32,
    pub timeout: Duration,
    /// The first backoff delay; it doubles on each retry, up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest `Retry-After` obeyed as given.
    pub max_retry_after: Duration,
    /// The circuit breaker's rule; `None` turns it off.
    pub breaker: Option<BreakerRule>,
    /// The longest an API may be down before it is given up on for the batch.
    pub outage_wait: Duration,
}

impl Settings {
    /// The settings of a batch's options.
    pub fn of(o: &Options) -> Settings {
        Settings {
            concurrency: o.concurrency.map(|n| n as usize),
            max_attempts: o.max_attempts,
            timeout: Duration::from_millis(o.timeout_ms),
            outage_wait: Duration::from_millis(o.outage_wait_ms),
            breaker: (o.breaker_share > 0.0).then_some(BreakerRule {
                share: o.breaker_share,
                window: o.breaker_window,
            }),
            ..Settings::default()
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            concurrency: None,
            max_attempts: 5,
            timeout: Duration::from_secs(30),
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
            breaker: Some(BreakerRule::default()),
            outage_wait: Duration::from_secs(15 * 60),
        }
    }
}

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
struct Outage {
    /// The last [`OUTAGE_LOOK`] answers: whether each failed on the wire.
    recent: VecDeque<bool>,
    /// Since when it is down, and the gap before the next probe.
    down: Option<(Instant, Duration)>,
    /// Time it was down in this batch, over all outages.
    total: Duration,
}

/// How many recent answers decide that an API is down, and which share of
/// them must have failed on the wire.
const OUTAGE_LOOK: usize = 10;
const OUTAGE_SHARE: f64 = 0.9;
const FIRST_PROBE: Duration = Duration::from_secs(1);
const LONGEST_PROBE_GAP: Duration = Duration::from_secs(60);

/// What an answer did to the outage state.
#[derive(Debug, PartialEq)]
enum Wire {
    /// The API is up.
    Up,
    /// The API is down (now or still): the attempt is not counted; wait `gap`.
    Down { gap: Duration },
    /// Down for longer than the outage may last: stop the API.
    TooLong(Duration),
}

impl Outage {
    fn new() -> Outage {
        Outage {
            recent: VecDeque::new(),
            down: None,
            total: Duration::ZERO,
        }
    }

    /// A call sent at `sent` was answered at `now`.
    fn answered(
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

    fn is_down(&self) -> bool {
        self.down.is_some()
    }
}

/// One lane's recent answers: `None` a success, else the failure's cluster.
#[derive(Debug, Default)]
struct Breaker {
    recent: VecDeque<Option<(Option<u16>, String)>>,
}

impl Breaker {
    /// Records an answered row; `Some` once the rule trips.
    fn record(
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

/// What one API needs at run time. Each API is sent by its own loop with its
/// own reader, in-flight budget and pacer, so a slow, paused or stopped API
/// never holds a slot the other API needs.
pub struct ApiLane {
    pub pacer: Arc<Pacer>,
    auth: Option<HeaderValue>,
    stopped: AtomicBool,
    /// The calls' time on the wire, smoothed (EWMA), in microseconds; 0 before the first.
    latency_us: AtomicU64,
    /// The fastest answer so far, in microseconds (`u64::MAX` before the first).
    fastest_us: AtomicU64,
    /// Calls answered without queueing so far (slow start of the in-flight
    /// budget while unpaced: one more per four of them, since every call on
    /// the wire when the first 429 comes draws one too).
    uncrowded: AtomicU64,
    /// Rows of this lane being worked on now (waiting for the pace, or on
    /// the wire); a row sleeping in its retry backoff does not count.
    running: AtomicU64,
    /// Calls of this lane on the wire now: sent and not yet answered; and
    /// a wake-up when one is answered, for calls held by the API's cap.
    on_wire: AtomicU64,
    wire_freed: tokio::sync::Notify,
    /// Wakes the lane's loop when a row frees its slot for a backoff.
    freed: tokio::sync::Notify,
    breaker: Mutex<Breaker>,
    outage: Mutex<Outage>,
    /// While the API is down, one row at a time probes it.
    probe: tokio::sync::Semaphore,
    /// What bounded the lane, for `status NAME`: calls sent, 429s (and
    /// spent quotas), calls sent with the in-flight budget full, the most
    /// rows at once.
    calls: AtomicU64,
    limited: AtomicU64,
    full_sends: AtomicU64,
    max_running: AtomicU64,
}

/// What bounded one API in a pass, as `batches.pacing` records it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LanePacing {
    pub api: &'static str,
    /// Calls sent (reads too) and their rate over the pass.
    pub calls: u64,
    pub calls_per_second: f64,
    /// The pace at the end, and where it came from (`auto`, `fixed`, `unlimited`).
    pub pace_per_second: Option<f64>,
    pub pace_kind: &'static str,
    /// 429s drawn (and answers saying the quota is spent).
    pub rate_limited: u64,
    /// Time every call waited for a `Retry-After`, a spent quota or an outage probe.
    pub paused_seconds: f64,
    /// The in-flight budget at the end, and the most rows worked on at once.
    pub in_flight_budget: usize,
    pub max_in_flight: u64,
    /// Smoothed time on the wire at the end.
    pub latency_ms: f64,
    /// The one thing that held the API back most, in words.
    pub bound: String,
}

/// `--concurrency auto`: the fewest calls in flight a lane keeps, the budget
/// it starts with before any answer, and the most it ever has.
const AUTO_MIN_IN_FLIGHT: usize = 4;
const AUTO_START_IN_FLIGHT: usize = 16;
pub const AUTO_MAX_IN_FLIGHT: usize = 256;
/// Headroom over Little's law (pace × latency), for jitter on the wire.
const IN_FLIGHT_HEADROOM: f64 = 1.5;

impl ApiLane {
    pub fn new(endpoint: &Endpoint, pacer: Arc<Pacer>) -> ApiLane {
        let auth = endpoint.authorization().and_then(|a| {
            let mut v = HeaderValue::from_str(&a).ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        ApiLane {
            pacer,
            auth,
            stopped: AtomicBool::new(false),
            latency_us: AtomicU64::new(0),
            fastest_us: AtomicU64::new(u64::MAX),
            uncrowded: AtomicU64::new(0),
            running: AtomicU64::new(0),
            on_wire: AtomicU64::new(0),
            wire_freed: tokio::sync::Notify::new(),
            freed: tokio::sync::Notify::new(),
            breaker: Mutex::new(Breaker::default()),
            outage: Mutex::new(Outage::new()),
            probe: tokio::sync::Semaphore::new(1),
            calls: AtomicU64::new(0),
            limited: AtomicU64::new(0),
            full_sends: AtomicU64::new(0),
            max_running: AtomicU64::new(0),
        }
    }

    fn outage(&self) -> std::sync::MutexGuard<'_, Outage> {
        self.outage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long the API was down in this batch.
    pub fn down_for(&self) -> Duration {
        let o = self.outage();
        o.total + o.down.map_or(Duration::ZERO, |(since, _)| since.elapsed())
    }

    /// How many calls this lane may have in flight now. A hard `cap` wins.
    /// Otherwise Little's law: a pace of R calls/s with L s on the wire needs
    /// R × L in flight (plus headroom). Unpaced (no 429 yet), the budget
    /// grows from 16 by one per four answers, as TCP's slow start does, so a
    /// far API is never held to a fixed few calls in flight; answers that
    /// waited in a queue do not grow it (as TCP Vegas reads a longer round
    /// trip).
    pub fn in_flight_limit(&self, cap: Option<usize>) -> usize {
        let found = self.pacer.cap().unwrap_or(usize::MAX);
        if let Some(cap) = cap {
            return cap.min(found).max(1);
        }
        self.auto_in_flight().min(found)
    }

    fn auto_in_flight(&self) -> usize {
        let latency = self.latency_us.load(Relaxed) as f64 / 1e6;
        match self.pacer.rate() {
            Some(rate) if latency > 0.0 => {
                let need = (rate * latency * IN_FLIGHT_HEADROOM).ceil() as usize + 2;
                need.clamp(AUTO_MIN_IN_FLIGHT, AUTO_MAX_IN_FLIGHT)
            }
            _ => (AUTO_START_IN_FLIGHT + self.uncrowded.load(Relaxed) as usize / 4)
                .min(AUTO_MAX_IN_FLIGHT),
        }
    }

    fn observe(&self, took: Duration) {
        let us = took.as_micros().min(u128::from(u32::MAX)) as u64;
        // EWMA with weight 1/8 (as TCP's SRTT); the first answer sets it.
        let _ = self.latency_us.fetch_update(Relaxed, Relaxed, |old| {
            Some(if old == 0 {
                us.max(1)
            } else {
                (old * 7 + us) / 8
            })
        });
        // An answer that took more than twice the fastest (and a
        // millisecond) waited in a queue, the API's or the machine's: more
        // calls on the wire would only lengthen it, and every one of them
        // draws a 429 when a window's quota runs out (at 0 ms, the calls
        // of a 10 s window's unpaced start grew to ~200 on the wire).
        let fastest = self.fastest_us.fetch_min(us, Relaxed).min(us);
        if us <= fastest.saturating_mul(2) + 1_000 {
            self.uncrowded.fetch_add(1, Relaxed);
        }
    }
}

/// One call on the wire: counted from its send to its answer (or until it
/// is dropped), so the count stays true if the call is cancelled.
struct OnWire<'a> {
    lane: &'a ApiLane,
    /// Calls on the wire when this one was sent, itself included.
    at_send: usize,
}

impl OnWire<'_> {
    /// The call was answered: how many were on the wire when it was sent.
    fn leave(self) -> usize {
        self.at_send
    }
}

impl Drop for OnWire<'_> {
    fn drop(&mut self) {
        self.lane.on_wire.fetch_sub(1, Relaxed);
        self.lane.wire_freed.notify_one();
    }
}

/// Shared by the dispatcher and every worker.
pub struct Executor {
    pub client: reqwest::Client,
    pub settings: Settings,
    pub recorder: Writer,
    pub counters: Arc<Counters>,
    pub cancel: CancellationToken,
    attention: ApiLane,
    vg: ApiLane,
    stops: Mutex<Vec<Stop>>,
    /// What the batch does with live state.
    pub live: Live,
    states: Mutex<States>,
    /// The batch and pass, for judging a conversation's rows together.
    batch: Option<(Db, String, i64)>,
}

/// How long before its slot a row's `in_flight` mark is committed: about a
/// group commit's time, so the mark is durable when the slot comes and the
/// rows marked but not yet sent are only those within this of their slot.
const MARK_LEAD: Duration = Duration::from_millis(20);

/// The largest response body stored; a larger one is stored truncated and marked so.
pub const MAX_STORED_BODY: usize = 1 << 20;

impl Executor {
    pub fn new(
        client: reqwest::Client,
        settings: Settings,
        recorder: Writer,
        counters: Arc<Counters>,
        cancel: CancellationToken,
        attention: ApiLane,
        vg: ApiLane,
    ) -> Executor {
        Executor {
            client,
            settings,
            recorder,
            counters,
            cancel,
            attention,
            vg,
            stops: Mutex::new(Vec::new()),
            live: Live::Off,
            states: Mutex::new(States::default()),
            batch: None,
        }
    }

    pub fn lane(&self, api: Api) -> &ApiLane {
        match api {
            Api::Attention => &self.attention,
            Api::Vg => &self.vg,
        }
    }

    pub fn stops(&self) -> Vec<Stop> {
        self.stops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn stop(&self, api: Api, why: StopReason) {
        if !self.lane(api).stopped.swap(true, Relaxed) {
            self.stops
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Stop { api, why });
        }
    }

    /// Tells the lane's breaker how a row ended; stops the API when it trips.
    fn judge(&self, api: Api, failure: Option<(Option<u16>, &str)>) {
        let Some(rule) = self.settings.breaker else {
            return;
        };
        let failure = failure.map(|(s, e)| (s, crate::text::mask(e)));
        let tripped = self
            .lane(api)
            .breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(rule, failure);
        if let Some(why) = tripped {
            self.stop(api, why);
        }
    }

    fn is_stopped(&self, api: Api) -> bool {
        self.lane(api).stopped.load(Relaxed)
    }

    /// What bounded each API over a pass of `elapsed`, in figures and in words.
    pub fn pacing(&self, elapsed: Duration) -> Vec<LanePacing> {
        let secs = elapsed.as_secs_f64().max(0.001);
        let stops = self.stops();
        Api::ALL
            .into_iter()
            .map(|api| {
                let lane = self.lane(api);
                let calls = lane.calls.load(Relaxed);
                let rate = calls as f64 / secs;
                let pace = lane.pacer.rate();
                let paused = lane.pacer.paused_total().as_secs_f64().min(secs);
                let full = lane.full_sends.load(Relaxed);
                let stop = stops.iter().find(|s| s.api == api);
                let bound = if let Some(stop) = stop {
                    format!("stopped: {:?}", stop.why)
                } else if calls == 0 {
                    "no calls".to_owned()
                } else if paused >= 0.1 * secs {
                    format!(
                        "Retry-After pauses: {:.0}% of the time (the API's limit)",
                        100.0 * paused / secs
                    )
                } else if pace.is_some_and(|p| rate >= 0.85 * p) {
                    format!("its pace ({})", lane.pacer.kind())
                } else if full * 2 >= calls {
                    let found = lane.pacer.cap();
                    if let Some(k) =
                        found.filter(|k| *k == lane.in_flight_limit(self.settings.concurrency))
                    {
                        format!("the API's cap of {k} calls at once (found from its 429s)")
                    } else if self.settings.concurrency.is_some() {
                        "calls in flight (--concurrency)".to_owned()
                    } else {
                        "calls in flight (the auto budget)".to_owned()
                    }
                } else {
                    "the API's answers (latency) or the rows themselves".to_owned()
                };
                LanePacing {
                    api: api.name(),
                    calls,
                    calls_per_second: rate,
                    pace_per_second: pace,
                    pace_kind: lane.pacer.kind(),
                    rate_limited: lane.limited.load(Relaxed),
                    paused_seconds: paused,
                    in_flight_budget: lane.in_flight_limit(self.settings.concurrency),
                    max_in_flight: lane.max_running.load(Relaxed),
                    latency_ms: lane.latency_us.load(Relaxed) as f64 / 1000.0,
                    bound,
                }
            })
            .collect()
    }

    /// What bounds each API now, for the progress line: stopped, paused by
    /// a `Retry-After`, its pace (and where the pace comes from), or its
    /// calls in flight against their budget.
    pub fn bounds(&self) -> String {
        Api::ALL
            .map(|api| {
                let lane = self.lane(api);
                let running = lane.running.load(Relaxed);
                let limit = lane.in_flight_limit(self.settings.concurrency);
                let what = if lane.stopped.load(Relaxed) {
                    "stopped".to_owned()
                } else if lane.outage().is_down() {
                    format!(
                        "down for {}, probing",
                        crate::text::show_duration(lane.down_for())
                    )
                } else if let Some(left) = lane.pacer.paused_for() {
                    format!("paused {} (Retry-After)", crate::text::show_duration(left))
                } else {
                    let pace = match lane.pacer.rate() {
                        Some(r) => format!("{r:.1}/s {}", lane.pacer.kind()),
                        None => "unpaced".to_owned(),
                    };
                    let full = if running as usize >= limit {
                        " full"
                    } else {
                        ""
                    };
                    let cap = if lane.pacer.cap() == Some(limit) {
                        " (the API's cap)"
                    } else {
                        ""
                    };
                    format!("{pace}, {running}/{limit} in flight{cap}{full}")
                };
                format!("{api} {what}")
            })
            .join(" | ")
    }

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
    fn spawn(self: &Arc<Self>, job: Job) -> impl Future<Output = (Api, Arc<str>)> + use<> {
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

    /// One row. When the batch reads live state, its conversation is read
    /// first (once) and the row judged; a row left in flight by a crash is
    /// settled by a read when its effect is already visible. Then attempts
    /// until success, a final answer, or the attempts run out.
    async fn work(&self, job: Job) {
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
    fn unsent(&self, job: &Job, note: Option<String>) -> Outcome {
        outcome(
            job,
            RowStatus::Pending,
            None,
            job.prior_attempts,
            note,
            None,
        )
    }

    /// Records a row judged without sending it (`skipped`, or a plan's verdict).
    async fn judged(&self, job: &Job, status: RowStatus, note: String, changes: Option<String>) {
        self.counters.done.fetch_add(1, Relaxed);
        let mut o = outcome(job, status, None, job.prior_attempts, None, changes);
        o.error = Some(note);
        let _ = self.recorder.finished(o).await;
    }

    /// `convoy plan`: the row judged on its conversation's state; nothing sent.
    async fn plan_only(&self, job: &Job) {
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
    async fn skip_if_unchanged(&self, job: &Job) -> Judged {
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
    async fn check_before_undo(&self, job: &Job, force: bool) -> Judged {
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
    async fn verify(&self, job: &Job, attempts: u32) -> Judged {
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
    async fn state_of(&self, job: &Job, purpose: &'static str) -> Option<Known> {
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

    fn states(&self) -> std::sync::MutexGuard<'_, States> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keep(&self, job: &Job, known: Known) {
        self.states()
            .put((job.api, job.conversation_id.clone()), known);
    }

    /// One read of the row's conversation, through the lane like any call,
    /// recorded in `reads` (committed before this returns).
    async fn read(&self, job: &Job, purpose: &'static str) -> Option<Known> {
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

    /// Attempts one call until success, a final answer, or the attempts run
    /// out. A `write` is marked `in_flight` before its first slot and its
    /// attempts recorded; a read is neither (its one record is the caller's).
    async fn exchange(&self, job: &Job, write: bool, b: &mut Budget, ambiguous_stops: bool) -> End {
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
    async fn to_the_wire<'a>(
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

    async fn left_pending(&self, outcome: Outcome) {
        self.counters.left_pending.fetch_add(1, Relaxed);
        let _ = self.recorder.finished(outcome).await;
    }

    /// Puts a call on the wire once the lane's in-flight limit allows
    /// (`--concurrency N`, the budget of `auto`, or the API's cap when one
    /// was found): whatever path a call comes by (a row handed on, a retry
    /// back from its backoff, a read), no more than that are ever on the
    /// wire. `None` if the batch is cancelled meanwhile.
    async fn onto_wire<'a>(&self, lane: &'a ApiLane) -> Option<OnWire<'a>> {
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

    async fn attempt(&self, job: &Job, lane: &ApiLane) -> Attempted {
        let started_ms = crate::audit::now_ms();
        let t0 = std::time::Instant::now();
        let mut req = self
            .client
            .request(job.method.clone(), &job.url)
            .timeout(self.settings.timeout);
        if let Some(auth) = &lane.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        if let Some(body) = &job.body {
            req = req
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let mut a = Attempted {
            started_ms,
            duration_ms: 0,
            http_status: None,
            error: None,
            response: None,
            snapshot: None,
            retry_after: None,
            quota_spent: false,
            verdict: Verdict::Retry,
        };
        match req.send().await {
            Err(e) => {
                a.error = Some(describe(&e, self.settings.timeout));
            }
            Ok(resp) => {
                let status = resp.status();
                a.http_status = Some(status.as_u16());
                a.retry_after = resp.headers().get(RETRY_AFTER).and_then(parse_retry_after);
                let resp_location = resp
                    .headers()
                    .get(LOCATION)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                if status.is_success() && a.retry_after.is_none() {
                    // The API says its quota is spent: pause as for a 429.
                    a.retry_after = quota_spent(resp.headers());
                    a.quota_spent = a.retry_after.is_some();
                }
                let (body, body_error) = read_body(resp).await;
                a.verdict = match status.as_u16() {
                    200..=299 => Verdict::Success,
                    401 | 403 => Verdict::AuthRejected(status.as_u16()),
                    429 => Verdict::RateLimited,
                    408 | 500..=599 => Verdict::Retry,
                    _ => Verdict::Final,
                };
                let location = status
                    .is_redirection()
                    .then(|| resp_location.clone())
                    .flatten();
                let text: Arc<str> = match String::from_utf8(body.bytes) {
                    Ok(t) => Arc::from(t),
                    Err(e) => Arc::from(String::from_utf8_lossy(e.as_bytes()).into_owned()),
                };
                let mut notes = Vec::new();
                if a.verdict == Verdict::Success {
                    // One parse: a body that reads as the envelope is JSON.
                    let doc = serde_json::from_str::<Envelope>(&text).ok();
                    a.snapshot = doc.as_ref().and_then(|d| snapshot(job, d));
                    if doc.is_none()
                        && !text.is_empty()
                        && serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err()
                        && !body.truncated
                    {
                        notes.push(
                            "the API answered success but its body is not JSON; stored as text"
                                .to_owned(),
                        );
                    }
                } else if status.is_redirection() {
                    notes.push(format!(
                        "HTTP {} {}: the API redirected to {}; convoy never follows a redirect with a write, so nothing was sent there. Check the base URL",
                        status.as_u16(),
                        status.canonical_reason().unwrap_or(""),
                        location.as_deref().unwrap_or("(no Location header)")
                    ));
                } else {
                    notes.push(error_text(status, &text));
                }
                if let Some(e) = body_error {
                    notes.push(e);
                } else if body.truncated {
                    notes.push(format!(
                        "response truncated: {} bytes, {} kept",
                        body.full_len,
                        text.len()
                    ));
                }
                if !notes.is_empty() {
                    a.error = Some(notes.join("; "));
                }
                if !text.is_empty() {
                    a.response = Some(text);
                }
            }
        }
        a.duration_ms = t0.elapsed().as_millis() as u64;
        a
    }
}

/// The result of one HTTP attempt.
struct Attempted {
    /// Milliseconds since 1970 (UTC).
    started_ms: i64,
    duration_ms: u64,
    http_status: Option<u16>,
    error: Option<String>,
    response: Option<Arc<str>>,
    snapshot: Option<Snapshot>,
    retry_after: Option<Duration>,
    /// A success whose `RateLimit-Remaining` was 0.
    quota_spent: bool,
    verdict: Verdict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Success,
    /// 429: retried, and the pacer told.
    RateLimited,
    /// 408, 5xx, timeouts, connection errors.
    Retry,
    /// 401/403: the API is stopped for the batch.
    AuthRejected(u16),
    /// Any other 4xx.
    Final,
}

struct Body {
    bytes: Vec<u8>,
    full_len: usize,
    truncated: bool,
}

async fn read_body(mut resp: reqwest::Response) -> (Body, Option<String>) {
    let mut body = Body {
        bytes: Vec::new(),
        full_len: 0,
        truncated: false,
    };
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                body.full_len += chunk.len();
                let room = MAX_STORED_BODY.saturating_sub(body.bytes.len());
                if chunk.len() > room {
                    body.truncated = true;
                }
                body.bytes
                    .extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => return (body, None),
            Err(e) => {
                return (
                    body,
                    Some(format!("the response body broke off: {}", chain(&e))),
                );
            }
        }
    }
}

/// The parts of a response body convoy looks at; the rest is skipped, not built.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    attributes: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

/// Whether the body holds the conversation (Attention's resource, as the
/// body itself or its `data`; VG's `data`): the `conversations` view then
/// shows it as the conversation's latest snapshot.
fn snapshot(job: &Job, doc: &Envelope) -> Option<Snapshot> {
    let holds = match (job.api, doc.attributes, doc.data) {
        (Api::Attention, Some(_), _) => true,
        (Api::Attention, None, Some(data)) => serde_json::from_str::<Envelope>(data.get())
            .ok()
            .is_some_and(|inner| inner.attributes.is_some()),
        (Api::Vg, _, Some(data)) => data.get().starts_with('{'),
        _ => false,
    };
    holds.then(|| Snapshot {
        api: job.api,
        conversation_id: job.conversation_id.clone(),
    })
}

fn error_text(status: reqwest::StatusCode, text: &str) -> String {
    let parsed = serde_json::from_str::<serde_json::Value>(text).ok();
    let detail = parsed
        .as_ref()
        .and_then(|v| {
            ["message", "error", "detail", "title"]
                .iter()
                .find_map(|k| v.get(k).and_then(|m| m.as_str()).map(str::to_owned))
                .or_else(|| v.get("errors").map(|e| e.to_string()))
        })
        .unwrap_or_else(|| {
            let cut = (0..=text.len().min(200))
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            let text: String = text[..cut].split_whitespace().collect::<Vec<_>>().join(" ");
            if text.starts_with('<') {
                "(an HTML page)".into()
            } else {
                text
            }
        });
    let reason = status.canonical_reason().unwrap_or("");
    if detail.is_empty() {
        format!("HTTP {} {reason}", status.as_u16())
    } else {
        format!("HTTP {} {reason}: {detail}", status.as_u16())
    }
}

fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {}", crate::text::show_duration(timeout));
    }
    let kind = if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // reqwest's errors name the URL: ids are in it, keys never are.
    format!("{kind}: {}", chain(e))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        cur = c.source();
    }
    s
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(s).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// `RateLimit-Remaining: 0` (or `X-RateLimit-Remaining: 0`): how long until
/// `RateLimit-Reset` (delta-seconds, or a Unix time as some `X-` headers send).
pub fn quota_spent(headers: &HeaderMap) -> Option<Duration> {
    let get = |names: [&str; 2]| {
        let v = names.iter().find_map(|n| headers.get(*n))?;
        v.to_str().ok()?.trim().parse::<f64>().ok()
    };
    if get(["ratelimit-remaining", "x-ratelimit-remaining"])? != 0.0 {
        return None;
    }
    let reset = get(["ratelimit-reset", "x-ratelimit-reset"]).filter(|r| r.is_finite())?;
    let secs = if reset > 1e9 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        reset - now.as_secs_f64()
    } else {
        reset
    };
    Some(Duration::from_secs_f64(secs.max(0.0)))
}

// ---- The send phase: a batch's rows streamed from the audit table into one lane per API.

/// The send phase stopped because the audit database failed after sending
/// began: exit 3, never 2 ("nothing sent").
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct StoppedEarly(pub anyhow::Error);

/// What the send phase did.
#[derive(Debug)]
pub struct ExecReport {
    pub counters: Arc<Counters>,
    pub stops: Vec<Stop>,
    /// How long each API was down, when it was.
    pub outages: Vec<(Api, Duration)>,
    pub elapsed: Duration,
    pub interrupted: bool,
}

/// A batch being worked on: what the send phase needs to know.
pub struct Batch<'a> {
    pub db: &'a Db,
    pub id: &'a str,
    /// 1 for the run, +1 for each resume.
    pub pass: i64,
    pub options: &'a Options,
    pub endpoints: &'a Endpoints,
}

/// Sends every `pending`, `in_flight` or `failed` row of this pass, in source order.
pub async fn phase(
    b: &Batch<'_>,
    cancel: CancellationToken,
    quiet: bool,
    to_send: u64,
) -> anyhow::Result<ExecReport> {
    let Batch {
        db,
        id: batch_id,
        pass,
        options,
        endpoints,
    } = *b;
    let damaged = audit::fail_damaged(db, batch_id, pass).await?;
    let counters = Arc::new(Counters::default());
    counters.total.store(
        to_send
            .saturating_sub(damaged)
            .min(options.limit.unwrap_or(u64::MAX)),
        Relaxed,
    );
    counters
        .invalid
        .store(tally(db, batch_id).await?.invalid, Relaxed);
    let (recorder, writer) = Writer::start(db, batch_id).await?;
    let client = http_client(options)?;
    let mut lanes = Vec::with_capacity(2);
    for api in Api::ALL {
        let spec = options.rate(api);
        let remembered = match spec {
            RateSpec::Auto { .. } => {
                let (rate, in_flight, quota) =
                    audit::learned(db, api, &endpoints.get(api).base).await?;
                Remembered::checked(rate, in_flight, quota)
            }
            _ => Remembered::default(),
        };
        lanes.push(ApiLane::new(
            endpoints.get(api),
            Arc::new(Pacer::new(spec, remembered)),
        ));
    }
    let [attention, vg]: [ApiLane; 2] =
        lanes.try_into().map_err(|_| anyhow::anyhow!("two APIs"))?;
    let pacers = [attention.pacer.clone(), vg.pacer.clone()];
    let mut executor = Executor::new(
        client,
        Settings::of(options),
        recorder.clone(),
        counters.clone(),
        cancel.clone(),
        attention,
        vg,
    );
    executor.live = options.live;
    executor.batch = Some((db.clone(), batch_id.to_owned(), pass));
    let executor = Arc::new(executor);
    let described = executor.clone();
    let progress = Progress::sending(counters.clone(), move || described.bounds(), quiet);
    // `--limit N`: the rows up to the Nth sendable one, in source order, whatever their API.
    let until = match options.limit {
        Some(n) => audit::nth_sendable(db, batch_id, pass, n).await?,
        None => None,
    };
    let started = std::time::Instant::now();
    // One lane per API: its own reader (its rows in source order) and its
    // own loop, so neither API ever waits for the other.
    let lanes = Api::ALL.map(|api| {
        let (tx, rx) = mpsc::channel(1024);
        // The read URL is built only for rows that may be read: those of a
        // batch that reads live state, in-doubt rows, and CRM confirmations.
        let base = endpoints.get(api).base.clone();
        let reads = options.live.reads();
        let feeder = tokio::spawn(feed(
            db.clone(),
            batch_id.to_owned(),
            pass,
            (api, base, reads),
            until,
            tx,
        ));
        let executor = executor.clone();
        async move {
            executor.run(api, rx).await;
            // Ended early (cancelled), the feeder may wait on a full
            // channel; a feeder that already failed keeps its error.
            feeder.abort();
            match feeder.await {
                Ok(result) => result,
                Err(e) if e.is_cancelled() => Ok(()),
                Err(e) => Err(anyhow::anyhow!("the row reader stopped: {e}")),
            }
        }
    });
    let [a, v] = lanes;
    let (fed_a, fed_v) = tokio::join!(a, v);
    let fed = fed_a.and(fed_v);
    let elapsed = started.elapsed();
    let _ = recorder.flush().await;
    let stops = executor.stops();
    let pacing = executor.pacing(elapsed);
    let outages: Vec<(Api, Duration)> = Api::ALL
        .into_iter()
        .map(|api| (api, executor.lane(api).down_for()))
        .filter(|(_, d)| !d.is_zero())
        .collect();
    // The progress ticker holds the executor (and so the recorder): stop it first.
    progress.finish();
    drop(executor);
    drop(recorder);
    let written = writer
        .await
        .map_err(|e| anyhow::anyhow!("the audit writer stopped: {e}"))
        .and_then(|r| r.map(|_peak| ()));
    if let Err(e) = written.and(fed) {
        return Err(StoppedEarly(e.context(format!(
            "the audit database {} failed while sending",
            db.path().display()
        )))
        .into());
    }
    audit::truncate_wal(db).await;
    audit::record_pacing(db, batch_id, &serde_json::to_string(&pacing)?).await?;
    for (api, pacer) in Api::ALL.into_iter().zip(pacers) {
        let rate = pacer.learned().filter(|r| crate::pacer::sane_rate(*r));
        let base = &endpoints.get(api).base;
        let cap = pacer.learned_cap().map(|k| k as i64);
        let quota = pacer.learned_quota().and_then(|q| i64::try_from(q).ok());
        audit::remember(db, api, base, (rate, cap, quota)).await?;
    }
    Ok(ExecReport {
        stops,
        outages,
        counters,
        elapsed,
        interrupted: cancel.is_cancelled(),
    })
}

fn http_client(o: &Options) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .user_agent(concat!("convoy/", env!("CARGO_PKG_VERSION")))
        // A write API must never follow a redirect: reqwest would re-send a
        // POST/PUT as a body-less GET (301-303), or the body to another origin.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_millis(o.timeout_ms.min(10_000)))
        .timeout(Duration::from_millis(o.timeout_ms))
        // A connection goes back to the pool a moment after its answer, so
        // a lane at full pace opens a few more than its calls in flight;
        // capping the idle ones at that number closed the extras and opened
        // new ones all night (1 connection per 11 calls at 64 in flight).
        .pool_max_idle_per_host(
            2 * o
                .concurrency
                .map_or(crate::send::AUTO_MAX_IN_FLIGHT, |n| n as usize),
        )
        .build()?)
}

/// Streams the rows to send from the audit table, a page at a time (short
/// read transactions, so the writer's checkpoints are never held back).
async fn feed(
    db: Db,
    batch_id: String,
    pass: i64,
    (lane, base, reads): (Api, String, bool),
    until: Option<i64>,
    tx: mpsc::Sender<Job>,
) -> anyhow::Result<()> {
    const PAGE: usize = 1000;
    let mut after = (i64::MIN, i64::MIN);
    loop {
        let rows = audit::sendable_page(&db, &batch_id, pass, lane, after, until, PAGE).await?;
        let last_page = rows.len() < PAGE;
        for r in rows {
            after = (r.row_number, r.id);
            let parts = (
                r.api.as_deref().and_then(Api::parse),
                r.method
                    .and_then(|m| reqwest::Method::from_bytes(m.as_bytes()).ok()),
                r.url,
                r.conversation_id,
            );
            let (Some(api), Some(method), Some(url), Some(conversation_id)) = parts else {
                // One damaged row must not stop the rest: it fails, saying why.
                audit::mark_unreadable(&db, r.id).await?;
                continue;
            };
            let in_doubt = r.status == "in_flight";
            let may_read = reads || in_doubt || r.op.as_deref() == Some("attention.confirm_crm");
            let read_url = if may_read {
                live::read_url(api, &base, &conversation_id, r.agent_id.as_deref())
            } else {
                String::new()
            };
            let job = Job {
                id: r.id,
                row_key: Arc::from(r.row_key),
                api,
                method,
                url,
                body: r.request_body,
                conversation_id: Arc::from(conversation_id),
                prior_attempts: r.attempts as u32,
                op: Arc::from(r.op.unwrap_or_default()),
                agent_id: r.agent_id,
                read_url,
                in_doubt,
                pre_image: r.pre_image,
                changes: r.changes,
                before: r.before,
            };
            if tx.send(job).await.is_err() {
                return Ok(());
            }
        }
        if last_page {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane() -> ApiLane {
        let endpoint = Endpoint {
            api: Api::Vg,
            base: "http://127.0.0.1:1".to_owned(),
            secret: None,
            scheme: crate::call::AuthScheme::Bearer,
        };
        let pacer = Pacer::new(RateSpec::Auto { ceiling: None }, Remembered::default());
        ApiLane::new(&endpoint, Arc::new(pacer))
    }

    /// Unpaced, the budget grows with answers from a far API, and stops
    /// growing when answers wait in a queue: at 0 ms a 10 s window's unpaced
    /// start had ~200 calls on the wire when its quota ran out, and each
    /// drew a 429 (8–10% of the first night's calls).
    #[test]
    fn the_unpaced_budget_grows_only_while_answers_do_not_queue() {
        let far = lane();
        for i in 0..1000u64 {
            far.observe(Duration::from_millis(100 + i % 100));
        }
        assert_eq!(far.in_flight_limit(None), AUTO_MAX_IN_FLIGHT);

        let near = lane();
        for _ in 0..20 {
            near.observe(Duration::from_micros(300));
        }
        let before = near.in_flight_limit(None);
        assert_eq!(before, AUTO_START_IN_FLIGHT + 5);
        // The answers now wait behind each other: 5 ms, then 40 ms.
        for i in 0..400u64 {
            near.observe(Duration::from_millis(5 + i / 10));
        }
        assert_eq!(near.in_flight_limit(None), before);
    }

    #[test]
    fn a_spent_quota_pauses_until_its_reset() {
        let h = |pairs: &[(&'static str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            m
        };
        let spent = h(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "2")]);
        assert_eq!(quota_spent(&spent), Some(Duration::from_secs(2)));
        let left = h(&[("ratelimit-remaining", "3"), ("ratelimit-reset", "2")]);
        assert_eq!(quota_spent(&left), None);
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 30;
        let x = h(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &epoch.to_string()),
        ]);
        let d = quota_spent(&x).unwrap();
        assert!((28..=30).contains(&d.as_secs()), "{d:?}");
        assert_eq!(quota_spent(&h(&[("ratelimit-remaining", "0")])), None);
    }

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("3")),
            Some(Duration::from_secs(3))
        );
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap())
            .unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        let past = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(60));
        assert_eq!(
            parse_retry_after(&HeaderValue::from_str(&past).unwrap()),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(&HeaderValue::from_static("soon")), None);
    }

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
