//! The send phase ([`phase`]): one lane per API, each with its own reader of
//! its rows, its own calls in flight (sized from its latency and pace, or
//! capped by `--concurrency`) and its own [`Pacer`], awaited before every
//! attempt; edits to the same conversation one at a time in source order;
//! retries with backoff and jitter; `Retry-After` pausing the whole API; a
//! 401/403, the circuit breaker or an outage longer than `--outage-wait`
//! stopping that API. Every attempt and outcome goes to the [`Writer`];
//! workers hold no timing logic of their own beyond the backoff delay.
//!
//! - [`feed`]: the rows to send, read back from the audit table
//! - [`dispatch`]: per-conversation order and the lane's in-flight limit
//! - [`row`]: one row from start to its recorded outcome
//! - [`reads`]: reads of live state (plan, skip, undo's check, verify)
//! - [`attempt`]: one call's attempts: backoff, the mark, the wire, feedback
//! - [`http`]: one HTTP request and what its answer says
//! - [`lane`]: one API's pacer, budget and counts
//! - [`health`]: outages, the circuit breaker, why an API stopped

mod attempt;
mod dispatch;
mod feed;
mod health;
mod http;
mod lane;
mod reads;
mod row;

pub use health::{BreakerRule, Stop, StopReason};
pub use lane::{AUTO_MAX_IN_FLIGHT, ApiLane, LanePacing};

use crate::audit::timeline::{self, Held, Sample};
use crate::audit::{self, Db, Writer, tally};
use crate::call::Endpoints;
use crate::edit::Api;
use crate::options::{Live, Options};
use crate::pacer::{Pacer, RateSpec, Remembered};
use crate::progress::{Counters, Progress};
use reads::States;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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

    /// One API's pacing now.
    fn sample(&self, api: Api) -> Sample {
        let lane = self.lane(api);
        let held = if lane.stopped.load(Relaxed) {
            Held::Stopped
        } else if lane.outage().is_down() {
            Held::Down
        } else if lane.pacer.paused_for().is_some() {
            Held::Paused
        } else {
            Held::No
        };
        Sample {
            api,
            at_ms: audit::now_ms(),
            pace: lane.pacer.rate(),
            learned: lane.pacer.learned(),
            in_flight: u32::try_from(lane.on_wire.load(Relaxed)).unwrap_or(u32::MAX),
            held,
        }
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
}

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
    let sampling = CancellationToken::new();
    let sampler = tokio::spawn(sample_pacing(executor.clone(), sampling.clone()));
    // One lane per API: its own reader (its rows in source order) and its
    // own loop, so neither API ever waits for the other.
    let lanes = Api::ALL.map(|api| {
        let (tx, rx) = mpsc::channel(1024);
        // The read URL is built only for rows that may be read: those of a
        // batch that reads live state, in-doubt rows, and CRM confirmations.
        let base = endpoints.get(api).base.clone();
        let reads = options.live.reads();
        let feeder = tokio::spawn(feed::feed(
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
    sampling.cancel();
    let samples = sampler.await.unwrap_or_default();
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
    timeline::record_samples(db, batch_id, pass, &samples).await?;
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

/// Each API's pacing once a second until `stop` (and once more then), for
/// `convoy report`'s timeline; an API that made no call is left out.
async fn sample_pacing(executor: Arc<Executor>, stop: CancellationToken) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        samples.extend(Api::ALL.map(|api| executor.sample(api)));
        if last {
            break;
        }
    }
    let silent = Api::ALL.map(|api| executor.lane(api).calls.load(Relaxed) == 0);
    samples.retain(|s| !silent[s.api as usize]);
    samples
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
