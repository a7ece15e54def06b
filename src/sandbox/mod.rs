//! The sandbox: a stateful local simulator of both APIs on one address.
//! Attention under `/v2/...`, VG under `/agents/...`, a `GET` of a
//! conversation on each, auth checked as documented, bodies validated, full
//! snapshots shaped like the reference pages, and bad days on demand
//! (latency, a per-API rate limit answering 429 with `Retry-After`, random
//! 5xx, dropped connections), repeatable with a seed.
//!
//! Built on hyper directly rather than axum: a simulator must be able to
//! close a connection without answering, which a router's handler cannot.
//!
//! Test hooks (also over HTTP under `/_sandbox/`): the request log, the
//! conversations' state, the rate limit changed while running, and scripted
//! answers for one conversation.

use crate::call::{AuthScheme, Endpoint, Endpoints, Secret};
use crate::edit::{self, Api};
pub use limiter::{Limit, Limiter, Shape};

pub mod limiter;
mod world;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use world::{AttentionCall, Target, World};

/// How the sandbox behaves.
#[derive(Clone, Debug)]
pub struct Config {
    pub attention_key: String,
    pub vg_token: String,
    /// Every answer waits a uniform time in this range.
    pub latency: Option<(Duration, Duration)>,
    /// Calls per second each API accepts; more are answered 429 with `Retry-After`.
    pub rate_limit: Option<f64>,
    /// Per-API limits, over `rate_limit`.
    pub attention_rate_limit: Option<f64>,
    pub vg_rate_limit: Option<f64>,
    /// The limiter's shape, burst (bucket) and window (window, sliding).
    pub limiter: Shape,
    pub burst: Option<f64>,
    pub window: Duration,
    /// Whether a 429 says `Retry-After` (many APIs do not).
    pub retry_after: bool,
    /// More calls than this in flight at once (per API) are answered 429.
    pub max_in_flight: Option<usize>,
    /// Also send `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`
    /// and `RateLimit-Policy` (the limit stated: `50;w=1`).
    pub rate_headers: bool,
    /// Share of calls answered 500, 502 or 503 (nothing applied).
    pub fail_rate: f64,
    /// Share of calls whose connection is closed without an answer: half
    /// before the edit is applied, half after.
    pub drop_rate: f64,
    pub seed: u64,
    /// Conversation ids starting with this do not exist (404).
    pub missing_prefix: String,
    /// Keep a log of every request (tests read it; long benchmarks turn it off).
    pub record: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            attention_key: "sandbox-attention-key".into(),
            vg_token: "sandbox-vg-token".into(),
            latency: None,
            rate_limit: None,
            attention_rate_limit: None,
            vg_rate_limit: None,
            limiter: Shape::Bucket,
            burst: None,
            window: Duration::from_secs(1),
            retry_after: true,
            max_in_flight: None,
            rate_headers: false,
            fail_rate: 0.0,
            drop_rate: 0.0,
            seed: 1,
            missing_prefix: "missing-".into(),
            record: true,
        }
    }
}

impl Config {
    /// The limit of one API, if any.
    pub fn limit(&self, api: Api) -> Option<Limit> {
        let rate = match api {
            Api::Attention => self.attention_rate_limit,
            Api::Vg => self.vg_rate_limit,
        }
        .or(self.rate_limit)?;
        Some(Limit {
            rate,
            shape: self.limiter,
            burst: self.burst,
            window: self.window,
        })
    }
}

/// One request as the sandbox received it.
#[derive(Clone, Debug, Serialize)]
pub struct Logged {
    pub method: String,
    /// The raw path, as on the wire.
    pub path: String,
    /// The path's segments, percent-decoded.
    pub segments: Vec<String>,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
    /// The status answered; 0 when the connection was dropped.
    pub status: u16,
    /// Whether the edit was applied to the sandbox's state.
    pub applied: bool,
    /// Milliseconds since the sandbox started.
    pub at_ms: u64,
}

/// A scripted answer for the next call to one conversation (tests).
#[derive(Clone, Debug)]
pub enum Scripted {
    /// Answer this status with this `Retry-After` and body; nothing applied.
    Status {
        status: u16,
        retry_after: Option<String>,
        body: Option<String>,
    },
    /// Close the connection; `applied` says whether the edit is applied first.
    Drop { applied: bool },
    /// Apply the edit, but answer only after this delay.
    Slow(Duration),
    /// Apply the edit and answer 200 with this body instead of the snapshot.
    Body(String),
    /// Answer this 3xx status with this `Location`; nothing applied.
    Redirect { status: u16, location: String },
}

/// The `RateLimit-*` headers of an answer, and the policy they come under.
type Quota = ([(&'static str, u64); 3], String);

fn add_quota(r: &mut Response<Full<Bytes>>, quota: Option<Quota>) {
    let Some((values, policy)) = quota else {
        return;
    };
    for (name, value) in values {
        r.headers_mut().insert(name, value.into());
    }
    if let Ok(v) = hyper::header::HeaderValue::from_str(&policy) {
        r.headers_mut().insert("ratelimit-policy", v);
    }
}

/// Shared state of a running sandbox.
pub struct State {
    config: Config,
    started: Instant,
    rng: Mutex<fastrand::Rng>,
    world: Mutex<World>,
    log: Mutex<Vec<Logged>>,
    limits: Mutex<[Option<Limiter>; 2]>,
    /// Calls being answered now, per API (for `max_in_flight`), and the
    /// most at once so far: each counted from its arrival to the moment its
    /// answer is handed to the connection, so never more than the client had
    /// on the wire.
    in_flight: [AtomicU64; 2],
    peak_in_flight: [AtomicU64; 2],
    scripts: Mutex<HashMap<String, VecDeque<Scripted>>>,
    attention_template: Map<String, Value>,
    vg_template: Map<String, Value>,
    clock_ms: AtomicU64,
    pub served: AtomicU64,
    /// Requests routed: answered or applied (the answer may still wait for its latency).
    routed: AtomicU64,
    /// Calls to either API (the `/_sandbox` endpoints aside).
    api_calls: AtomicU64,
    /// TCP connections accepted.
    pub connections: AtomicU64,
    served_changed: tokio::sync::Notify,
}

/// A running sandbox. Dropping it stops the server.
pub struct Sandbox {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sandbox {
    /// Serves on `listen` (port 0 for an ephemeral one).
    pub async fn start(config: Config, listen: SocketAddr) -> anyhow::Result<Sandbox> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("sandbox: cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr()?;
        let now = Instant::now();
        let limits = Api::ALL.map(|api| config.limit(api).map(|l| Limiter::new(l, now)));
        let attention_template =
            match serde_json::from_str::<Value>(include_str!("attention_conversation.json")) {
                Ok(Value::Object(mut doc)) => match doc.remove("attributes") {
                    Some(Value::Object(a)) => a,
                    _ => Map::new(),
                },
                _ => Map::new(),
            };
        let state = Arc::new(State {
            rng: Mutex::new(fastrand::Rng::with_seed(config.seed)),
            config,
            started: Instant::now(),
            world: Mutex::default(),
            log: Mutex::default(),
            limits: Mutex::new(limits),
            in_flight: [AtomicU64::new(0), AtomicU64::new(0)],
            peak_in_flight: [AtomicU64::new(0), AtomicU64::new(0)],
            scripts: Mutex::default(),
            attention_template,
            vg_template: edit::vg_blank_conversation(),
            clock_ms: AtomicU64::new(0),
            served: AtomicU64::new(0),
            routed: AtomicU64::new(0),
            api_calls: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            served_changed: tokio::sync::Notify::new(),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            // An accept error (EMFILE: out of file descriptors) must not
            // spin: back off, doubling up to a second, as mini-redis does.
            let mut backoff = Duration::from_millis(1);
            // Its connections die with it: a stopped sandbox is an outage.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let stream = match listener.accept().await {
                    Ok((stream, _)) => {
                        backoff = Duration::from_millis(1);
                        s.connections.fetch_add(1, Relaxed);
                        stream
                    }
                    Err(_) => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let s = s.clone();
                connections.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { s.handle(req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Sandbox { addr, state, task })
    }

    /// On an ephemeral loopback port with the default credentials: `run --sandbox`.
    pub async fn start_in_process() -> anyhow::Result<Sandbox> {
        Sandbox::start(
            Config {
                record: false,
                ..Config::default()
            },
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .await
    }

    /// Where a client on this machine reaches it: listening on every
    /// address (`0.0.0.0`, `[::]`) is reached on loopback.
    pub fn reachable(&self) -> SocketAddr {
        let mut a = self.addr;
        if a.ip().is_unspecified() {
            a.set_ip(match a.ip() {
                std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        a
    }

    pub fn attention_url(&self) -> String {
        format!("http://{}/v2", self.reachable())
    }

    pub fn vg_url(&self) -> String {
        format!("http://{}", self.reachable())
    }

    /// Both endpoints pointed here, with the sandbox's own credentials.
    pub fn endpoints(&self, scheme: AuthScheme) -> Endpoints {
        Endpoints {
            attention: Endpoint {
                api: Api::Attention,
                base: self.attention_url(),
                secret: Some(Secret::new(self.state.config.attention_key.clone())),
                scheme,
            },
            vg: Endpoint {
                api: Api::Vg,
                base: self.vg_url(),
                secret: Some(Secret::new(self.state.config.vg_token.clone())),
                scheme: AuthScheme::Bearer,
            },
        }
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.state.requests()
    }

    /// The current state of an Attention conversation (its attributes).
    pub fn attention_conversation(&self, id: &str) -> Option<Map<String, Value>> {
        lock(&self.state.world).attention.get(id).cloned()
    }

    /// The current state of a VG conversation.
    pub fn vg_conversation(&self, agent: &str, id: &str) -> Option<Map<String, Value>> {
        lock(&self.state.world)
            .vg
            .get(&(agent.to_owned(), id.to_owned()))
            .cloned()
    }

    /// Answers the next calls to `conversation_id` (either API) as scripted, in order.
    pub fn script(&self, conversation_id: &str, answers: impl IntoIterator<Item = Scripted>) {
        lock(&self.state.scripts)
            .entry(conversation_id.to_owned())
            .or_default()
            .extend(answers);
    }

    pub fn set_rate_limit(&self, per_sec: Option<f64>) {
        self.state.set_rate_limit(per_sec);
    }

    /// The most calls to `api` this sandbox was answering at once.
    pub fn peak_in_flight(&self, api: Api) -> u64 {
        self.state.peak_in_flight[api as usize].load(Relaxed)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Relaxed)
    }

    /// Returns once the sandbox has received at least `n` requests (tests).
    pub async fn served_at_least(&self, n: u64) {
        self.count_reaches(&self.state.served, n).await;
    }

    /// Returns once at least `n` requests were routed: their edit applied (or
    /// refused), though their answer may still wait for its latency (tests).
    pub async fn routed_at_least(&self, n: u64) {
        self.count_reaches(&self.state.routed, n).await;
    }

    async fn count_reaches(&self, count: &AtomicU64, n: u64) {
        loop {
            let changed = self.state.served_changed.notified();
            if count.load(Relaxed) >= n {
                return;
            }
            changed.await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One call being answered: counted in while it lives.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(n: &'a AtomicU64, peak: &AtomicU64) -> InFlight<'a> {
        peak.fetch_max(n.fetch_add(1, Relaxed) + 1, Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Closing the connection without an answer.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dropped by the sandbox")
    }
}

impl std::error::Error for Dropped {}

type Reply = Result<Response<Full<Bytes>>, Dropped>;

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    reply_text(status, body.to_string())
}

fn reply_text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn bad(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    reply(
        status,
        json!({ "error": status.canonical_reason().unwrap_or(""), "message": message.into() }),
    )
}

/// What the chance of the day decided for one request.
enum Fate {
    Normal,
    Fail(u16),
    DropBefore,
    DropAfter,
}

impl State {
    /// Every request received so far (also after the sandbox stopped).
    pub fn requests(&self) -> Vec<Logged> {
        lock(&self.log).clone()
    }

    /// Both APIs limited to `per_sec` from now on, in the configured shape.
    pub fn set_rate_limit(&self, per_sec: Option<f64>) {
        let now = Instant::now();
        *lock(&self.limits) = [0, 1].map(|_| {
            per_sec.map(|rate| {
                Limiter::new(
                    Limit {
                        rate,
                        shape: self.config.limiter,
                        burst: self.config.burst,
                        window: self.config.window,
                    },
                    now,
                )
            })
        });
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Reply {
        self.served.fetch_add(1, Relaxed);
        self.served_changed.notify_waiters();
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let header = |name| {
            req.headers()
                .get(name)
                .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        // Counted from the request's arrival to its answer, latency included.
        let api = match req.uri().path().split('/').nth(1) {
            Some("v2") => Some(Api::Attention),
            Some("agents") => Some(Api::Vg),
            _ => None,
        };
        let _in_flight = api.map(|api| {
            let i = api as usize;
            InFlight::enter(&self.in_flight[i], &self.peak_in_flight[i])
        });
        let authorization = header(hyper::header::AUTHORIZATION);
        let content_type = header(hyper::header::CONTENT_TYPE);
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Err(Dropped),
        };
        let segments: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let mut rec = Logged {
            method,
            path,
            segments,
            authorization,
            content_type,
            body: String::from_utf8_lossy(&body).into_owned(),
            status: 0,
            applied: false,
            at_ms: self.now_ms(),
        };
        if api.is_some() {
            self.api_calls.fetch_add(1, Relaxed);
        }
        let too_many = match (api, self.config.max_in_flight) {
            (Some(api), Some(max)) => self.in_flight[api as usize].load(Relaxed) as usize > max,
            _ => false,
        };
        let (result, delay) = if too_many {
            let mut r = bad(
                StatusCode::TOO_MANY_REQUESTS,
                "too many concurrent requests",
            );
            if self.config.retry_after {
                r.headers_mut()
                    .insert(hyper::header::RETRY_AFTER, 1u64.into());
            }
            (Ok(r), self.latency())
        } else {
            self.route(&mut rec, &body)
        };
        if self.config.record && rec.segments.first().map(String::as_str) != Some("_sandbox") {
            rec.status = result.as_ref().map_or(0, |r| r.status().as_u16());
            lock(&self.log).push(rec);
        }
        self.routed.fetch_add(1, Relaxed);
        self.served_changed.notify_waiters();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        result
    }

    fn latency(&self) -> Option<Duration> {
        let (lo, hi) = self.config.latency?;
        let span = hi.saturating_sub(lo).as_micros() as u64;
        let extra = if span == 0 {
            0
        } else {
            lock(&self.rng).u64(0..=span)
        };
        Some(lo + Duration::from_micros(extra))
    }

    fn fate(&self) -> Fate {
        if self.config.fail_rate <= 0.0 && self.config.drop_rate <= 0.0 {
            return Fate::Normal;
        }
        let mut rng = lock(&self.rng);
        let roll = rng.f64();
        if roll < self.config.fail_rate {
            return Fate::Fail([500, 502, 503][rng.usize(0..3)]);
        }
        if roll < self.config.fail_rate + self.config.drop_rate {
            return if rng.bool() {
                Fate::DropBefore
            } else {
                Fate::DropAfter
            };
        }
        Fate::Normal
    }

    /// Decides the answer (and how long to wait before giving it).
    fn route(&self, rec: &mut Logged, body: &[u8]) -> (Reply, Option<Duration>) {
        let segs: Vec<String> = rec.segments.clone();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let m = rec.method.clone();
        let m = m.as_str();
        let (api, target): (Api, Target) = match (m, segs.as_slice()) {
            ("GET", ["_sandbox", "requests"]) => {
                return (Ok(reply(StatusCode::OK, json!(*lock(&self.log)))), None);
            }
            ("GET", ["_sandbox", "metrics"]) => {
                let calls = self.api_calls.load(Relaxed);
                let connections = self.connections.load(Relaxed);
                let body = json!({ "served": calls, "connections": connections });
                return (Ok(reply(StatusCode::OK, body)), None);
            }
            ("GET", ["_sandbox", "state"]) => {
                let w = lock(&self.world);
                let vg: Map<String, Value> =
                    w.vg.iter()
                        .map(|((a, c), v)| (format!("{a}/{c}"), Value::Object(v.clone())))
                        .collect();
                let att: Map<String, Value> = w
                    .attention
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::Object(v.clone())))
                    .collect();
                return (
                    Ok(reply(StatusCode::OK, json!({ "attention": att, "vg": vg }))),
                    None,
                );
            }
            ("PUT", ["_sandbox", "rate-limit"]) => {
                let per_sec = serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v.get("per_second").and_then(Value::as_f64));
                self.set_rate_limit(per_sec.filter(|r| *r > 0.0));
                return (
                    Ok(reply(StatusCode::OK, json!({ "per_second": per_sec }))),
                    None,
                );
            }
            ("GET", ["v2", "conversations", id]) => {
                (Api::Attention, Target::Attention(id, AttentionCall::Get))
            }
            ("PUT", ["v2", "conversations", id]) => {
                (Api::Attention, Target::Attention(id, AttentionCall::Update))
            }
            ("DELETE", ["v2", "conversations", id]) => (
                Api::Attention,
                Target::Attention(id, AttentionCall::Archive),
            ),
            ("PUT", ["v2", "conversations", id, "labels"]) => {
                (Api::Attention, Target::Attention(id, AttentionCall::Labels))
            }
            ("POST", ["v2", "conversations", id, "crm", "confirm"]) => (
                Api::Attention,
                Target::Attention(id, AttentionCall::Confirm),
            ),
            ("GET", ["agents", agent, "convos", id]) => (Api::Vg, Target::Vg(agent, id, false)),
            ("PATCH", ["agents", agent, "convos", id]) => (Api::Vg, Target::Vg(agent, id, true)),
            (_, ["v2", "conversations", ..]) | (_, ["agents", _, "convos", _]) => {
                return (
                    Ok(bad(
                        StatusCode::METHOD_NOT_ALLOWED,
                        format!("{m} is not allowed here"),
                    )),
                    None,
                );
            }
            _ => {
                return (
                    Ok(bad(
                        StatusCode::NOT_FOUND,
                        format!("no route for {m} {}", rec.path),
                    )),
                    None,
                );
            }
        };
        let latency = self.latency();

        // Auth, exactly as documented.
        let ok_auth = match api {
            Api::Attention => {
                let k = &self.config.attention_key;
                rec.authorization
                    .as_deref()
                    .is_some_and(|a| a == k || a.strip_prefix("Bearer ") == Some(k))
            }
            Api::Vg => {
                rec.authorization
                    .as_deref()
                    .and_then(|a| a.strip_prefix("Bearer "))
                    == Some(self.config.vg_token.as_str())
            }
        };
        if !ok_auth {
            let how = match api {
                Api::Attention => "send `Authorization: <api-key>`",
                Api::Vg => "send `Authorization: Bearer <token>`",
            };
            return (
                Ok(bad(
                    StatusCode::UNAUTHORIZED,
                    format!("missing or wrong credentials; {how}"),
                )),
                latency,
            );
        }

        // The rate limit.
        let mut quota = None;
        if let Some(limiter) = lock(&self.limits)[api as usize].as_mut() {
            let now = Instant::now();
            let verdict = limiter.check(now);
            if self.config.rate_headers {
                quota = Some((limiter.headers(now), limiter.policy()));
            }
            if let Err(wait) = verdict {
                let mut r = bad(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
                if self.config.retry_after {
                    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                    r.headers_mut()
                        .insert(hyper::header::RETRY_AFTER, secs.into());
                }
                add_quota(&mut r, quota);
                return (Ok(r), latency);
            }
        }

        let id = match &target {
            Target::Attention(id, _) | Target::Vg(_, id, _) => (*id).to_owned(),
        };
        let scripted = lock(&self.scripts)
            .get_mut(&id)
            .and_then(VecDeque::pop_front);
        let mut answer_body = None;
        let mut delay = latency;
        let mut drop_after = false;
        match scripted {
            Some(Scripted::Status {
                status,
                retry_after,
                body,
            }) => {
                let mut r = Response::new(Full::new(Bytes::from(
                    body.unwrap_or_else(|| json!({"error": "scripted"}).to_string()),
                )));
                *r.status_mut() =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                if let Some(ra) =
                    retry_after.and_then(|v| hyper::header::HeaderValue::from_str(&v).ok())
                {
                    r.headers_mut().insert(hyper::header::RETRY_AFTER, ra);
                }
                return (Ok(r), latency);
            }
            Some(Scripted::Redirect { status, location }) => {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
                if let Ok(v) = hyper::header::HeaderValue::from_str(&location) {
                    r.headers_mut().insert(hyper::header::LOCATION, v);
                }
                return (Ok(r), latency);
            }
            Some(Scripted::Drop { applied: false }) => return (Err(Dropped), latency),
            Some(Scripted::Drop { applied: true }) => drop_after = true,
            Some(Scripted::Slow(d)) => delay = Some(d),
            Some(Scripted::Body(b)) => answer_body = Some(b),
            None => match self.fate() {
                Fate::Normal => {}
                Fate::Fail(502) => {
                    let mut r = Response::new(Full::new(Bytes::from_static(
                        b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>",
                    )));
                    *r.status_mut() = StatusCode::BAD_GATEWAY;
                    return (Ok(r), latency);
                }
                Fate::Fail(code) => {
                    let status =
                        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    return (Ok(bad(status, "simulated failure")), latency);
                }
                Fate::DropBefore => return (Err(Dropped), latency),
                Fate::DropAfter => drop_after = true,
            },
        }

        if id.starts_with(&self.config.missing_prefix) {
            return (
                Ok(bad(
                    StatusCode::NOT_FOUND,
                    format!("conversation {id:?} not found"),
                )),
                delay,
            );
        }
        let result = match target {
            Target::Attention(id, call) => self.attention(id, call, body),
            Target::Vg(agent, id, patch) => self.vg(agent, id, patch.then_some(body)),
        };
        let response = match result {
            Ok((applied, doc)) => {
                rec.applied = applied;
                let mut r = reply_text(StatusCode::OK, doc);
                if let Some(b) = answer_body {
                    *r.body_mut() = Full::new(Bytes::from(b));
                }
                add_quota(&mut r, quota);
                r
            }
            Err(message) => bad(StatusCode::BAD_REQUEST, message),
        };
        if drop_after {
            return (Err(Dropped), delay);
        }
        (Ok(response), delay)
    }
}
