//! A batch's life: its effective [`Options`], the plan phase (every row read,
//! validated and written to the audit table as `pending` or `invalid` before
//! anything is sent, which is also how repeated `row_id`s are caught without
//! holding the source in memory), and the send phase (pending rows streamed
//! back from the audit table in source order into the executor).

use crate::audit::{self, Db, DuplicateKey, PlannedRow, Recorder, RowStatus, Tally};
use crate::call::{self, AuthScheme, ConfigError, Endpoint, Endpoints};
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

/// The effective options of a batch, as stored in `batches.options`. Never a secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Options {
    /// Calls in flight per API: a hard cap, or `None` for auto.
    #[serde(default)]
    pub concurrency: Option<u32>,
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
    /// This pass sends rows older than a succeeded edit of their conversation.
    #[serde(default)]
    pub send_older_edits: bool,
    /// `--delimiter`, as given (found from the header when absent).
    #[serde(default)]
    pub delimiter: Option<char>,
    /// `--encoding`, by its canonical name.
    #[serde(default)]
    pub encoding: Option<String>,
}

/// The send phase stopped because the audit database failed after sending
/// began: exit 3, never 2 ("nothing sent").
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct StoppedEarly(pub anyhow::Error);

impl Options {
    /// Whether the options make sense together (a usage error if not).
    pub fn check(&self) -> Result<(), ConfigError> {
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

    /// How a CSV source is read.
    pub fn csv_format(&self) -> crate::source::CsvFormat {
        crate::source::CsvFormat {
            delimiter: self.delimiter.and_then(|c| u8::try_from(c).ok()),
            encoding: self
                .encoding
                .as_deref()
                .and_then(|e| crate::source::parse_encoding(e).ok()),
        }
    }

    pub fn default_op(&self) -> Option<Op> {
        self.op.as_deref().and_then(Op::parse)
    }

    pub fn settings(&self) -> Settings {
        Settings {
            concurrency: self.concurrency.map(|n| n as usize),
            max_attempts: self.max_attempts,
            timeout: Duration::from_millis(self.timeout_ms),
            ..Settings::default()
        }
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

impl PlanSummary {
    /// Counts one planned row and prints its warnings or error (the first
    /// [`SHOWN`] of each; `notes` counts the warnings printed so far).
    fn count(
        &mut self,
        planned: &PlannedRow,
        warnings: Vec<String>,
        notes: &mut u64,
        progress: &Progress,
    ) {
        for w in warnings {
            *notes += 1;
            if *notes <= SHOWN {
                progress.println(&format!("warning: {w}"));
            }
        }
        match (planned.status, planned.api) {
            (RowStatus::Invalid, _) => {
                self.invalid += 1;
                if self.invalid <= SHOWN {
                    progress.println(&format!(
                        "invalid: {}",
                        planned.error.as_deref().unwrap_or("")
                    ));
                }
            }
            (_, Some(api)) => self.per_api[api as usize] += 1,
            _ => {}
        }
    }
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
    cancel: &CancellationToken,
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
    // A signal stops the reading; what was read is still recorded.
    while let Some(row) = next_row(&mut reader, cancel).await {
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
        sum.count(&planned, warnings, &mut notes, progress);
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
            "... and {} more invalid rows (`convoy failures {}` lists them all)",
            sum.invalid - SHOWN,
            crate::text::shell_quote(batch_id)
        ));
    }
    if notes > SHOWN {
        progress.println(&format!("... and {} more warnings", notes - SHOWN));
    }
    Ok(sum)
}

/// The next source row, or `None` at the end or once `cancel` fires.
async fn next_row(
    reader: &mut Reader,
    cancel: &CancellationToken,
) -> Option<Result<crate::edit::Row, SourceError>> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        row = reader.rows.recv() => row,
    }
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
    let damaged = audit::fail_damaged(db, batch_id, pass).await?;
    let counters = Arc::new(Counters::default());
    counters
        .total
        .store(to_send.saturating_sub(damaged), Relaxed);
    counters
        .invalid
        .store(tally(db, batch_id).await?.invalid, Relaxed);
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
    let described = executor.clone();
    let progress = Progress::sending(counters.clone(), move || described.bounds(), quiet);
    let started = std::time::Instant::now();
    // One lane per API: its own reader (its rows in source order) and its
    // own loop, so neither API ever waits for the other.
    let lanes = Api::ALL.map(|api| {
        let (tx, rx) = mpsc::channel(1024);
        let feeder = tokio::spawn(feed(db.clone(), batch_id.to_owned(), pass, api, tx));
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
    // The progress ticker holds the executor (and so the recorder): stop it first.
    progress.finish();
    drop(executor);
    drop(recorder);
    let written = writer
        .await
        .map_err(|e| anyhow::anyhow!("the audit writer stopped: {e}"))
        .and_then(|r| r);
    if let Err(e) = written.and(fed) {
        return Err(StoppedEarly(e.context(format!(
            "the audit database {} failed while sending",
            db.path().display()
        )))
        .into());
    }
    // Give the WAL's disk space back now that the writing is done.
    let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&db.pool)
        .await;
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
        // A write API must never follow a redirect: reqwest would re-send a
        // POST/PUT as a body-less GET (301-303), or the body to another origin.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_millis(o.timeout_ms.min(10_000)))
        .timeout(Duration::from_millis(o.timeout_ms))
        .pool_max_idle_per_host(
            o.concurrency
                .map_or(crate::exec::AUTO_MAX_IN_FLIGHT, |n| n as usize),
        )
        .build()?)
}

/// Streams the rows to send from the audit table, a page at a time (short
/// read transactions, so the writer's checkpoints are never held back).
async fn feed(
    db: Db,
    batch_id: String,
    pass: i64,
    lane: Api,
    tx: mpsc::Sender<Job>,
) -> anyhow::Result<()> {
    const PAGE: i64 = 1000;
    let (mut after_number, mut after_id) = (i64::MIN, i64::MIN);
    loop {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT rowid, row_key, row_number, api, method, url, request_body, conversation_id, attempts \
             FROM audit WHERE batch_id = ?1 AND pass = ?2 AND status IN {} AND api = ?6 \
             AND (row_number, rowid) > (?3, ?4) ORDER BY row_number, rowid LIMIT ?5",
            audit::SENDABLE
        )))
        .bind(&batch_id)
        .bind(pass)
        .bind(after_number)
        .bind(after_id)
        .bind(PAGE)
        .bind(lane.name())
        .fetch_all(&db.pool)
        .await?;
        let last_page = (rows.len() as i64) < PAGE;
        for r in rows {
            let id: i64 = r.get(0);
            after_id = id;
            after_number = r.get(2);
            let api: Option<String> = r.try_get(3).ok().flatten();
            let method: Option<String> = r.try_get(4).ok().flatten();
            let parts = (
                api.as_deref().and_then(Api::parse),
                method.and_then(|m| reqwest::Method::from_bytes(m.as_bytes()).ok()),
                r.try_get::<Option<String>, _>(5).ok().flatten(),
                r.try_get::<Option<String>, _>(7).ok().flatten(),
            );
            let (Some(api), Some(method), Some(url), Some(conversation_id)) = parts else {
                // One damaged row must not stop the rest: it fails, saying why.
                audit::mark_unreadable(&db, id).await?;
                continue;
            };
            let job = Job {
                id,
                row_key: Arc::from(r.get::<String, _>(1)),
                api,
                method,
                url,
                body: r.get(6),
                conversation_id: Arc::from(conversation_id),
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

/// The rate `auto` learned last time, if it is a sane one (an absurd value
/// left by an older version is ignored).
async fn learned_rate(db: &Db, api: Api, base: &str) -> anyhow::Result<Option<f64>> {
    let rate: Option<f64> = sqlx::query_scalar(
        "SELECT rate_per_sec FROM learned_rates WHERE api = ?1 AND base_url = ?2",
    )
    .bind(api.name())
    .bind(base)
    .fetch_optional(&db.pool)
    .await?;
    Ok(rate.filter(|r| crate::pacer::sane_rate(*r)))
}

async fn remember_rate(db: &Db, api: Api, base: &str, rate: f64) -> anyhow::Result<()> {
    if !crate::pacer::sane_rate(rate) {
        return Ok(());
    }
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

/// Adds a pass's sending time to the batch (its achieved rate is rows over this).
pub async fn add_send_time(db: &Db, id: &str, elapsed: Duration) -> anyhow::Result<()> {
    sqlx::query("UPDATE batches SET send_seconds = send_seconds + ?2 WHERE id = ?1")
        .bind(id)
        .bind(elapsed.as_secs_f64())
        .execute(&db.pool)
        .await?;
    Ok(())
}

pub async fn tally(db: &Db, id: &str) -> anyhow::Result<Tally> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM audit WHERE batch_id = ?1 GROUP BY status")
            .bind(id)
            .fetch_all(&db.pool)
            .await?;
    let mut t = Tally::default();
    for (status, n) in rows {
        t.add_text(&status, n as u64);
    }
    Ok(t)
}

/// A batch as recorded.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub id: String,
    pub source: String,
    pub source_kind: String,
    pub source_table: Option<String>,
    pub status: String,
    pub options: Options,
    pub pid: Option<i64>,
    pub passes: i64,
}

pub async fn load(db: &Db, id: &str) -> anyhow::Result<Option<Recorded>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: String,
        source: String,
        source_kind: String,
        source_table: Option<String>,
        status: String,
        options: String,
        pid: Option<i64>,
        passes: i64,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, source, source_kind, source_table, status, options, pid, passes FROM batches WHERE id = ?1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let options = serde_json::from_str(&r.options).map_err(|e| {
        anyhow::anyhow!("batch {}: its recorded options are unreadable ({e})", r.id)
    })?;
    Ok(Some(Recorded {
        id: r.id,
        source: r.source,
        source_kind: r.source_kind,
        source_table: r.source_table,
        status: r.status,
        options,
        pid: r.pid,
        passes: r.passes,
    }))
}

/// Starts a new pass of a recorded batch: `running`, this process, the new options.
pub async fn begin_pass(db: &Db, id: &str, options: &Options) -> anyhow::Result<i64> {
    let (pass,): (i64,) = sqlx::query_as(
        "UPDATE batches SET passes = passes + 1, status = 'running', finished_at = NULL, pid = ?2, options = ?3 \
         WHERE id = ?1 RETURNING passes",
    )
    .bind(id)
    .bind(i64::from(std::process::id()))
    .bind(serde_json::to_string(options)?)
    .fetch_one(&db.pool)
    .await?;
    Ok(pass)
}

/// What a resume's reconciliation found.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub plan: PlanSummary,
    /// Succeeded rows whose content changed since (not sent again).
    pub changed_after_success: u64,
    /// Not-yet-succeeded rows whose content changed since (re-validated).
    pub changed: u64,
    pub added: u64,
    pub gone: Vec<String>,
    pub gone_count: u64,
}

/// Reads the source again for pass `pass`: every row not yet succeeded is
/// re-validated and re-planned (so fixed rows become valid), new rows are
/// added, succeeded rows are only compared (never re-planned or re-sent).
pub async fn reconcile(
    db: &Db,
    batch_id: &str,
    pass: i64,
    mut reader: Reader,
    endpoints: &Endpoints,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Reconciled, PlanError> {
    const CHUNK: usize = 1000;
    let mut out = Reconciled::default();
    // Keys seen in this pass, to catch a repeated row_id without holding them in memory.
    let mut seen = db.pool.acquire().await.map_err(anyhow::Error::from)?;
    sqlx::query(
        "CREATE TEMP TABLE IF NOT EXISTS seen_keys (row_key TEXT PRIMARY KEY, row_number INTEGER)",
    )
    .execute(&mut *seen)
    .await
    .map_err(anyhow::Error::from)?;
    sqlx::query("DELETE FROM seen_keys")
        .execute(&mut *seen)
        .await
        .map_err(anyhow::Error::from)?;
    let mut rows = Vec::with_capacity(CHUNK);
    let mut notes = 0u64;
    let mut done = false;
    while !done {
        rows.clear();
        while rows.len() < CHUNK {
            match next_row(&mut reader, cancel).await {
                Some(r) => rows.push(r?),
                None => {
                    done = true;
                    break;
                }
            }
        }
        if rows.is_empty() {
            break;
        }
        let keys: Vec<String> = rows.iter().map(|r| reader.columns.row_key(r)).collect();
        // Repeated keys: within this chunk, or against earlier chunks.
        let mut in_chunk = std::collections::HashMap::new();
        for (k, r) in keys.iter().zip(&rows) {
            if let Some(first) = in_chunk.insert(k.as_str(), r.number) {
                return Err(DuplicateKey {
                    row_key: k.clone(),
                    row_number: r.number,
                    first_row_number: first,
                }
                .into());
            }
        }
        let numbers: Vec<u64> = rows.iter().map(|r| r.number).collect();
        let earlier: Option<(String, i64)> = sqlx::query_as(
            "SELECT row_key, row_number FROM seen_keys WHERE row_key IN (SELECT value FROM json_each(?1)) LIMIT 1",
        )
        .bind(serde_json::to_string(&keys).map_err(anyhow::Error::from)?)
        .fetch_optional(&mut *seen)
        .await
        .map_err(anyhow::Error::from)?;
        if let Some((k, first)) = earlier {
            let at = keys.iter().position(|x| *x == k).map_or(0, |i| numbers[i]);
            return Err(DuplicateKey {
                row_key: k,
                row_number: at,
                first_row_number: first as u64,
            }
            .into());
        }
        let pairs: Vec<(&String, u64)> = keys.iter().zip(numbers.iter().copied()).collect();
        sqlx::query("INSERT INTO seen_keys SELECT value ->> 0, value ->> 1 FROM json_each(?1)")
            .bind(serde_json::to_string(&pairs).map_err(anyhow::Error::from)?)
            .execute(&mut *seen)
            .await
            .map_err(anyhow::Error::from)?;

        let recorded: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT row_key, status, row_hash FROM audit WHERE batch_id = ?1 AND row_key IN (SELECT value FROM json_each(?2))",
        )
        .bind(batch_id)
        .bind(serde_json::to_string(&keys).map_err(anyhow::Error::from)?)
        .fetch_all(&db.pool)
        .await
        .map_err(anyhow::Error::from)?;
        let recorded: std::collections::HashMap<String, (String, String)> =
            recorded.into_iter().map(|(k, s, h)| (k, (s, h))).collect();
        let mut planned_rows = Vec::new();
        for (row, key) in rows.iter().zip(&keys) {
            out.plan.rows += 1;
            let hash = reader.columns.row_hash(row);
            match recorded.get(key) {
                Some((status, old)) if status == "succeeded" => {
                    if *old != hash {
                        out.changed_after_success += 1;
                        notes += 1;
                        if notes <= SHOWN {
                            progress.println(&format!(
                                "warning: row {} (row_id {key}) changed since it succeeded; it is not sent again",
                                row.number
                            ));
                        }
                    }
                    continue;
                }
                Some((_, old)) if *old != hash => out.changed += 1,
                Some(_) => {}
                None => out.added += 1,
            }
            let (planned, warnings) = plan_row(&reader.columns, row, endpoints);
            out.plan.count(&planned, warnings, &mut notes, progress);
            planned_rows.push(planned);
        }
        audit::upsert_planned(db, batch_id, pass, &planned_rows).await?;
        progress.planned(out.plan.rows);
    }
    let gone: Vec<(String,)> = sqlx::query_as(
        "SELECT row_key FROM audit WHERE batch_id = ?1 AND pass < ?2 AND status != 'succeeded' ORDER BY row_number",
    )
    .bind(batch_id)
    .bind(pass)
    .fetch_all(&db.pool)
    .await
    .map_err(anyhow::Error::from)?;
    out.gone_count = gone.len() as u64;
    out.gone = gone
        .into_iter()
        .take(SHOWN as usize)
        .map(|(k,)| k)
        .collect();
    sqlx::query("DROP TABLE IF EXISTS seen_keys")
        .execute(&mut *seen)
        .await
        .map_err(anyhow::Error::from)?;
    Ok(out)
}

/// For a source that cannot be read again (stdin): every row not yet
/// succeeded is sent again as recorded.
pub async fn carry_over(db: &Db, batch_id: &str, pass: i64) -> anyhow::Result<PlanSummary> {
    // Held rows are judged again in this pass.
    sqlx::query("UPDATE audit SET pass = ?2, status = CASE status WHEN 'held' THEN 'pending' ELSE status END \
                 WHERE batch_id = ?1 AND status IN ('pending', 'in_flight', 'failed', 'held')")
        .bind(batch_id)
        .bind(pass)
        .execute(&db.pool)
        .await?;
    let counts: Vec<(Option<String>, String, i64)> = sqlx::query_as(
        "SELECT api, status, count(*) FROM audit WHERE batch_id = ?1 GROUP BY api, status",
    )
    .bind(batch_id)
    .fetch_all(&db.pool)
    .await?;
    let mut sum = PlanSummary::default();
    for (api, status, n) in counts {
        sum.rows += n as u64;
        match (status.as_str(), api.as_deref().and_then(Api::parse)) {
            ("invalid", _) => sum.invalid += n as u64,
            ("succeeded", _) => {}
            (_, Some(api)) => sum.per_api[api as usize] += n as u64,
            _ => {}
        }
    }
    Ok(sum)
}
