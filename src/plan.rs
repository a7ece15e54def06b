//! The plan phase: every row read, validated and written to the audit
//! table as `pending` or `invalid` before anything is sent (which is also
//! how repeated `row_id`s are caught without holding the source in memory);
//! on `resume`, the source read again and reconciled with what was recorded.

use crate::audit::{self, Db, DuplicateKey, PlannedRow, RowStatus};
use crate::call::{self, Endpoints};
use crate::edit::{Api, Op};
use crate::progress::Progress;
use crate::source::{Reader, SourceError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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

impl From<audit::SeenError> for PlanError {
    fn from(e: audit::SeenError) -> PlanError {
        match e {
            audit::SeenError::Duplicate(d) => PlanError::Duplicate(d),
            audit::SeenError::Db(e) => PlanError::Db(e),
        }
    }
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
            let c = call::build(&edit, &endpoints.get(api).base);
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
    let mut seen = audit::SeenKeys::beside(db).await?;
    let inserter = tokio::spawn(async move {
        while let Some(chunk) = to_insert.recv().await {
            let keys: Vec<(&str, u64)> = chunk
                .iter()
                .map(|r| (r.row_key.as_str(), r.row_number))
                .collect();
            seen.add(&keys).await?;
            audit::insert_planned(&db2, &id2, &chunk).await?;
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
    let mut seen = audit::SeenKeys::beside(db).await?;
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
        let pairs: Vec<(&str, u64)> = keys
            .iter()
            .map(String::as_str)
            .zip(rows.iter().map(|r| r.number))
            .collect();
        seen.add(&pairs).await?;
        let recorded = audit::recorded_states(db, batch_id, &keys).await?;
        let mut planned_rows = Vec::new();
        for (row, key) in rows.iter().zip(&keys) {
            out.plan.rows += 1;
            let hash = reader.columns.row_hash(row);
            match recorded.get(key) {
                // Succeeded, or judged to change nothing: never sent again.
                Some((status, old)) if status == "succeeded" || status == "skipped" => {
                    if *old != hash {
                        out.changed_after_success += 1;
                        notes += 1;
                        if notes <= SHOWN {
                            progress.println(&format!(
                                "warning: row {} (row_id {key}) changed since it {}; it is not sent again",
                                row.number,
                                if status == "skipped" { "was skipped (it changed nothing)" } else { "succeeded" }
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
    let gone = audit::left_behind(db, batch_id, pass).await?;
    out.gone_count = gone.len() as u64;
    out.gone = gone.into_iter().take(SHOWN as usize).collect();
    Ok(out)
}

/// For a source that cannot be read again (stdin): every row not yet
/// succeeded is sent again as recorded.
pub async fn carry_over(db: &Db, batch_id: &str, pass: i64) -> anyhow::Result<PlanSummary> {
    let counts = audit::carry_over(db, batch_id, pass).await?;
    let mut sum = PlanSummary::default();
    for (api, status, n) in counts {
        sum.rows += n as u64;
        match (status.as_str(), api.as_deref().and_then(Api::parse)) {
            ("invalid", _) => sum.invalid += n as u64,
            ("succeeded" | "skipped", _) => {}
            (_, Some(api)) => sum.per_api[api as usize] += n as u64,
            _ => {}
        }
    }
    Ok(sum)
}
