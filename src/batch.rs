//! A batch's life: its effective [`Options`], the plan phase (every row read,
//! validated and written to the audit table as `pending` or `invalid` before
//! anything is sent, which is also how repeated `row_id`s are caught without
//! holding the source in memory), and the send phase (pending rows streamed
//! back from the audit table in source order into the executor).

use crate::audit::{self, Db, DuplicateKey, PlannedRow, Recorder, RowStatus};
use crate::call::{self, AuthScheme, Endpoint, Secret};
use crate::cli::{ExecArgs, InputArgs};
use crate::edit::{Api, Op};
use crate::exec::{ApiLane, Counters, Executor, Job, Settings, Stop};
use crate::pacer::{Pacer, RateSpec};
use crate::progress::Progress;
use crate::source::{Reader, SourceError};
use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const DEFAULT_ATTENTION_URL: &str = "https://api.attention.tech/v2";
pub const DEFAULT_VG_URL: &str = "https://eu-cloudflare.vg-stuff.com";

/// The effective options of a batch, as stored in `batches.options`. Never a secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Options {
    pub concurrency: u32,
    pub attention_rate: String,
    pub vg_rate: String,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub attention_url: String,
    pub vg_url: String,
    pub attention_auth_scheme: AuthScheme,
    pub op: Option<String>,
    pub strict: bool,
    pub sandbox: bool,
}

/// A usage or configuration problem: exit 2, nothing sent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Options {
    /// Flags over `recorded` (a resumed batch's options) over defaults.
    pub fn resolve(
        exec: &ExecArgs,
        input: &InputArgs,
        recorded: Option<&Options>,
    ) -> Result<Options, ConfigError> {
        let rate = |flag: &Option<RateSpec>, old: Option<&String>| -> String {
            flag.map(|r| r.to_string())
                .or_else(|| old.cloned())
                .unwrap_or_else(|| "auto".into())
        };
        let o = Options {
            concurrency: exec
                .concurrency
                .or(recorded.map(|r| r.concurrency))
                .unwrap_or(8),
            attention_rate: rate(&exec.attention_rate, recorded.map(|r| &r.attention_rate)),
            vg_rate: rate(&exec.vg_rate, recorded.map(|r| &r.vg_rate)),
            max_attempts: exec
                .max_attempts
                .or(recorded.map(|r| r.max_attempts))
                .unwrap_or(5),
            timeout_ms: exec
                .timeout
                .map(|t| t.as_millis() as u64)
                .or(recorded.map(|r| r.timeout_ms))
                .unwrap_or(30_000),
            attention_url: exec
                .attention_url
                .clone()
                .or(recorded.map(|r| r.attention_url.clone()))
                .unwrap_or_else(|| DEFAULT_ATTENTION_URL.into()),
            vg_url: exec
                .vg_url
                .clone()
                .or(recorded.map(|r| r.vg_url.clone()))
                .unwrap_or_else(|| DEFAULT_VG_URL.into()),
            attention_auth_scheme: exec
                .attention_auth_scheme
                .or(recorded.map(|r| r.attention_auth_scheme))
                .unwrap_or(AuthScheme::Raw),
            op: input
                .op
                .map(|o| o.name().to_owned())
                .or(recorded.and_then(|r| r.op.clone())),
            strict: input.strict || recorded.is_some_and(|r| r.strict),
            sandbox: exec.sandbox || recorded.is_some_and(|r| r.sandbox),
        };
        o.check()?;
        Ok(o)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.timeout_ms == 0 {
            return Err(ConfigError("--timeout must be more than 0".into()));
        }
        self.rate(Api::Attention)?;
        self.rate(Api::Vg)?;
        if !self.sandbox {
            Endpoint::check_base(Api::Attention, &self.attention_url).map_err(ConfigError)?;
            Endpoint::check_base(Api::Vg, &self.vg_url).map_err(ConfigError)?;
        }
        Ok(())
    }

    pub fn rate(&self, api: Api) -> Result<RateSpec, ConfigError> {
        let (flag, s) = match api {
            Api::Attention => ("--attention-rate", &self.attention_rate),
            Api::Vg => ("--vg-rate", &self.vg_rate),
        };
        s.parse().map_err(|e| ConfigError(format!("{flag}: {e}")))
    }

    pub fn default_op(&self) -> Option<Op> {
        self.op.as_deref().and_then(Op::parse)
    }

    pub fn settings(&self) -> Settings {
        Settings {
            concurrency: self.concurrency as usize,
            max_attempts: self.max_attempts,
            timeout: Duration::from_millis(self.timeout_ms),
            ..Settings::default()
        }
    }
}

/// Both endpoints with their credentials.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub attention: Endpoint,
    pub vg: Endpoint,
}

impl Endpoints {
    /// From the options and the environment (`ATTENTION_API_KEY`, `VG_API_TOKEN`).
    pub fn from_env(o: &Options) -> Result<Endpoints, ConfigError> {
        let key = |var: &str| {
            std::env::var(var)
                .ok()
                .filter(|k| !k.trim().is_empty())
                .map(Secret::new)
        };
        Ok(Endpoints {
            attention: Endpoint {
                api: Api::Attention,
                base: Endpoint::check_base(Api::Attention, &o.attention_url)
                    .map_err(ConfigError)?,
                secret: key("ATTENTION_API_KEY"),
                scheme: o.attention_auth_scheme,
            },
            vg: Endpoint {
                api: Api::Vg,
                base: Endpoint::check_base(Api::Vg, &o.vg_url).map_err(ConfigError)?,
                secret: key("VG_API_TOKEN"),
                scheme: AuthScheme::Bearer,
            },
        })
    }

    pub fn get(&self, api: Api) -> &Endpoint {
        match api {
            Api::Attention => &self.attention,
            Api::Vg => &self.vg,
        }
    }

    /// Every API with rows to send needs its credential.
    pub fn require(&self, rows_per_api: [u64; 2]) -> Result<(), ConfigError> {
        for (api, n) in Api::ALL.into_iter().zip(rows_per_api) {
            if n > 0 && self.get(api).secret.is_none() {
                let var = match api {
                    Api::Attention => "ATTENTION_API_KEY",
                    Api::Vg => "VG_API_TOKEN",
                };
                return Err(ConfigError(format!(
                    "{var} is not set, and {n} row(s) need the {api} API; set it (or rehearse with --sandbox)"
                )));
            }
        }
        Ok(())
    }
}

/// What the plan phase found.
#[derive(Debug, Default, Clone)]
pub struct PlanSummary {
    pub rows: u64,
    pub invalid: u64,
    /// Valid rows per API, in [`Api::ALL`] order.
    pub per_api: [u64; 2],
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Duplicate(#[from] DuplicateKey),
    #[error(transparent)]
    Db(#[from] anyhow::Error),
}

/// How many row messages (invalid rows, warnings) are printed before they are only counted.
const SHOWN: u64 = 20;
const PLAN_CHUNK: usize = 2000;

/// One source row, read and validated into what the audit table records.
pub fn plan_row(
    reader_cols: &crate::edit::Columns,
    row: &crate::edit::Row,
    endpoints: &Endpoints,
) -> (PlannedRow, Vec<String>) {
    let row_key = reader_cols.row_key(row);
    let row_hash = reader_cols.row_hash(row);
    let source_row = serde_json::Value::Object(reader_cols.source_row(row)).to_string();
    match reader_cols.validate(row) {
        Ok((edit, warnings)) => {
            let api = edit.op().api();
            let c = call::plan(&edit, &endpoints.get(api).base);
            (
                PlannedRow {
                    row_key,
                    row_number: row.number,
                    row_hash,
                    op: Some(edit.op().name()),
                    api: Some(api),
                    conversation_id: Some(edit.conversation_id().to_owned()),
                    agent_id: edit.agent_id().map(str::to_owned),
                    method: Some(c.method),
                    url: Some(c.url),
                    request_body: c.body,
                    status: RowStatus::Pending,
                    error: None,
                    source_row,
                },
                warnings,
            )
        }
        Err(e) => {
            let (op, conversation_id, agent_id) = reader_cols.peek(row);
            (
                PlannedRow {
                    row_key,
                    row_number: row.number,
                    row_hash,
                    op: op.map(Op::name),
                    api: op.map(Op::api),
                    conversation_id,
                    agent_id,
                    method: None,
                    url: None,
                    request_body: None,
                    status: RowStatus::Invalid,
                    error: Some(e.to_string()),
                    source_row,
                },
                Vec::new(),
            )
        }
    }
}

/// Reads every row into the audit table as `pending` or `invalid`.
pub async fn plan(
    db: &Db,
    batch_id: &str,
    mut reader: Reader,
    endpoints: &Endpoints,
    progress: &Progress,
) -> Result<PlanSummary, PlanError> {
    let mut sum = PlanSummary::default();
    let mut buf = Vec::with_capacity(PLAN_CHUNK);
    let mut notes = 0u64;
    // Chunks are inserted by a task of their own while the next is validated.
    let (chunks, mut to_insert) = mpsc::channel::<Vec<PlannedRow>>(2);
    let (db2, id2) = (db.clone(), batch_id.to_owned());
    let inserter = tokio::spawn(async move {
        while let Some(chunk) = to_insert.recv().await {
            audit::insert_planned(&db2, &id2, &chunk).await??;
        }
        Ok::<_, PlanError>(())
    });
    let inserted = |inserter: tokio::task::JoinHandle<Result<(), PlanError>>| async move {
        inserter.await.map_err(|e| PlanError::Db(e.into()))?
    };
    while let Some(row) = reader.rows.recv().await {
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                drop(chunks);
                inserted(inserter).await?;
                return Err(e.into());
            }
        };
        let (planned, warnings) = plan_row(&reader.columns, &row, endpoints);
        sum.rows += 1;
        for w in warnings {
            notes += 1;
            if notes <= SHOWN {
                progress.println(&format!("warning: {w}"));
            }
        }
        match (planned.status, planned.api) {
            (RowStatus::Invalid, _) => {
                sum.invalid += 1;
                if sum.invalid <= SHOWN {
                    progress.println(&format!(
                        "invalid: {}",
                        planned.error.as_deref().unwrap_or("")
                    ));
                }
            }
            (_, Some(api)) => sum.per_api[api as usize] += 1,
            _ => {}
        }
        progress.planned(sum.rows);
        buf.push(planned);
        if buf.len() == PLAN_CHUNK {
            let full = std::mem::replace(&mut buf, Vec::with_capacity(PLAN_CHUNK));
            if chunks.send(full).await.is_err() {
                break; // the inserter failed: its error is returned below
            }
        }
    }
    if !buf.is_empty() {
        let _ = chunks.send(buf).await;
    }
    drop(chunks);
    inserted(inserter).await?;
    if sum.invalid > SHOWN {
        progress.println(&format!(
            "... and {} more invalid rows (`convoy failures {batch_id}` lists them all)",
            sum.invalid - SHOWN
        ));
    }
    if notes > SHOWN {
        progress.println(&format!("... and {} more warnings", notes - SHOWN));
    }
    Ok(sum)
}

/// What the send phase did.
#[derive(Debug)]
pub struct ExecReport {
    pub counters: Arc<Counters>,
    pub stops: Vec<Stop>,
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
pub async fn execute(
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
    let counters = Arc::new(Counters::default());
    counters.total.store(to_send, Relaxed);
    let (recorder, writer) = Recorder::start(db, batch_id).await?;
    let client = http_client(options)?;
    let mut lanes = Vec::with_capacity(2);
    for api in Api::ALL {
        let spec = options.rate(api)?;
        let remembered = match spec {
            RateSpec::Auto { .. } => learned_rate(db, api, &endpoints.get(api).base).await?,
            _ => None,
        };
        lanes.push(ApiLane::new(
            endpoints.get(api),
            Arc::new(Pacer::new(spec, remembered)),
        ));
    }
    let [attention, vg]: [ApiLane; 2] =
        lanes.try_into().map_err(|_| anyhow::anyhow!("two APIs"))?;
    let pacers = [attention.pacer.clone(), vg.pacer.clone()];
    let executor = Arc::new(Executor::new(
        client,
        options.settings(),
        recorder.clone(),
        counters.clone(),
        cancel.clone(),
        attention,
        vg,
    ));
    let progress = Progress::sending(counters.clone(), pacers.clone(), quiet);
    let (tx, rx) = mpsc::channel(2048);
    let feeder = tokio::spawn(feed(db.clone(), batch_id.to_owned(), pass, tx));
    let started = std::time::Instant::now();
    executor.run(rx).await;
    let elapsed = started.elapsed();
    feeder.abort();
    recorder.flush().await?;
    let stops = executor.stops();
    drop(executor);
    drop(recorder);
    writer.await??;
    progress.finish();
    for (api, pacer) in Api::ALL.into_iter().zip(pacers) {
        if let Some(rate) = pacer.learned() {
            remember_rate(db, api, &endpoints.get(api).base, rate).await?;
        }
    }
    Ok(ExecReport {
        stops,
        counters,
        elapsed,
        interrupted: cancel.is_cancelled(),
    })
}

fn http_client(o: &Options) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .user_agent(concat!("convoy/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_millis(o.timeout_ms.min(10_000)))
        .timeout(Duration::from_millis(o.timeout_ms))
        .pool_max_idle_per_host(o.concurrency as usize)
        .build()?)
}

/// Streams the rows to send from the audit table, a page at a time (short
/// read transactions, so the writer's checkpoints are never held back).
async fn feed(db: Db, batch_id: String, pass: i64, tx: mpsc::Sender<Job>) -> anyhow::Result<()> {
    const PAGE: i64 = 1000;
    let (mut after_number, mut after_id) = (i64::MIN, i64::MIN);
    loop {
        let rows = sqlx::query(
            "SELECT rowid, row_key, row_number, api, method, url, request_body, conversation_id, attempts \
             FROM audit WHERE batch_id = ?1 AND pass = ?2 AND status IN ('pending', 'in_flight', 'failed') \
             AND (row_number, rowid) > (?3, ?4) ORDER BY row_number, rowid LIMIT ?5",
        )
        .bind(&batch_id)
        .bind(pass)
        .bind(after_number)
        .bind(after_id)
        .bind(PAGE)
        .fetch_all(&db.pool)
        .await?;
        let last_page = (rows.len() as i64) < PAGE;
        for r in rows {
            let id: i64 = r.get(0);
            after_id = id;
            after_number = r.get(2);
            let api: String = r.get(3);
            let method: String = r.get(4);
            let job = Job {
                id,
                row_key: Arc::from(r.get::<String, _>(1)),
                api: Api::parse(&api)
                    .ok_or_else(|| anyhow::anyhow!("audit row {id}: unknown api {api:?}"))?,
                method: reqwest::Method::from_bytes(method.as_bytes())?,
                url: r.get(5),
                body: r.get(6),
                conversation_id: Arc::from(r.get::<String, _>(7)),
                prior_attempts: r.get::<i64, _>(8) as u32,
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

async fn learned_rate(db: &Db, api: Api, base: &str) -> anyhow::Result<Option<f64>> {
    Ok(sqlx::query_scalar(
        "SELECT rate_per_sec FROM learned_rates WHERE api = ?1 AND base_url = ?2",
    )
    .bind(api.name())
    .bind(base)
    .fetch_optional(&db.pool)
    .await?)
}

async fn remember_rate(db: &Db, api: Api, base: &str, rate: f64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO learned_rates (api, base_url, rate_per_sec, updated_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (api, base_url) DO UPDATE SET rate_per_sec = excluded.rate_per_sec, updated_at = excluded.updated_at",
    )
    .bind(api.name())
    .bind(base)
    .bind(rate)
    .bind(audit::now())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Records a new batch; `false` when the name is taken.
pub async fn create(
    db: &Db,
    id: &str,
    source: &crate::source::Source,
    columns: &[String],
    options: &Options,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO batches (id, source, source_kind, source_table, columns, status, created_at, options, pid) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(source.location())
    .bind(source.kind())
    .bind(source.table())
    .bind(serde_json::to_string(columns)?)
    .bind(audit::now())
    .bind(serde_json::to_string(options)?)
    .bind(i64::from(std::process::id()))
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes a batch that never sent anything (its source turned out unreadable).
pub async fn discard(db: &Db, id: &str) -> anyhow::Result<()> {
    let mut tx = db.pool.begin().await?;
    for sql in [
        "DELETE FROM audit WHERE batch_id = ?1",
        "DELETE FROM batches WHERE id = ?1",
    ] {
        sqlx::query(sql).bind(id).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub async fn set_status(db: &Db, id: &str, status: &str) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE batches SET status = ?2, finished_at = CASE WHEN ?2 = 'running' THEN NULL ELSE ?3 END WHERE id = ?1",
    )
    .bind(id)
    .bind(status)
    .bind(audit::now())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Rows per status in a batch.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Tally {
    pub rows: u64,
    pub pending: u64,
    pub in_flight: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub invalid: u64,
}

pub async fn tally(db: &Db, id: &str) -> anyhow::Result<Tally> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM audit WHERE batch_id = ?1 GROUP BY status")
            .bind(id)
            .fetch_all(&db.pool)
            .await?;
    let mut t = Tally::default();
    for (status, n) in rows {
        let n = n as u64;
        t.rows += n;
        match status.as_str() {
            "pending" => t.pending = n,
            "in_flight" => t.in_flight = n,
            "succeeded" => t.succeeded = n,
            "failed" => t.failed = n,
            _ => t.invalid = n,
        }
    }
    Ok(t)
}
