//! The rows to send: each read back from the audit table as a [`Job`], a
//! page at a time, in source order, one reader per API.

use crate::audit::{self, Db};
use crate::edit::Api;
use crate::live;
use std::sync::Arc;
use tokio::sync::mpsc;

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
    pub(super) fn call(&self) -> live::Call<'_> {
        live::Call {
            op: &self.op,
            body: self.body.as_deref(),
        }
    }
}

/// Streams the rows to send from the audit table, a page at a time (short
/// read transactions, so the writer's checkpoints are never held back).
pub(super) async fn feed(
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
