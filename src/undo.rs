//! Building an undo batch (contract section 8): for every conversation a
//! batch changed, the calls that put its reversible fields back to its
//! pre-image, each with what the batch left there (so the send phase can
//! see whether anyone changed it since), and the list of what cannot be
//! undone.

use crate::audit::{self, Db, PlannedRow, RowStatus};
use crate::call::{self, Endpoints};
use crate::edit::{Api, Edit};
use crate::live;
use serde_json::{Map, Value, json};

/// What an undo batch cannot put back, per conversation and field.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Irreversible {
    pub api: &'static str,
    pub conversation_id: String,
    pub field: String,
    pub why: String,
}

/// An undo batch, built but not recorded.
#[derive(Debug, Default)]
pub struct Built {
    /// The rows to record: the calls (pending, with their changes), then
    /// one `skipped` row per irreversible field, saying why.
    pub rows: Vec<(PlannedRow, Option<String>)>,
    pub irreversible: Vec<Irreversible>,
    /// Conversations the batch changed.
    pub conversations: u64,
}

/// The columns an undo batch's rows are recorded with (their `source_row`).
pub const COLUMNS: [&str; 6] = [
    "op",
    "conversation_id",
    "agent_id",
    "title",
    "labels",
    "conversation",
];

/// Builds the undo of `batch_id` from its succeeded rows and pre-images.
pub async fn build(db: &Db, batch_id: &str, endpoints: &Endpoints) -> anyhow::Result<Built> {
    let mut built = Built::default();
    let mut group: Option<Group> = None;
    audit::undo_inputs(db, batch_id, |r| {
        let same = group
            .as_ref()
            .is_some_and(|g| g.api.name() == r.api && g.conversation_id == r.conversation_id);
        if !same {
            if let Some(g) = group.take() {
                g.finish(&mut built, endpoints);
            }
            let Some(api) = Api::parse(&r.api) else {
                return Ok(());
            };
            group = Some(Group {
                api,
                conversation_id: r.conversation_id.clone(),
                agent_id: r.agent_id.clone(),
                pre_image: r.pre_image.clone(),
                calls: Vec::new(),
            });
        }
        if let Some(g) = group.as_mut() {
            g.calls
                .push((r.op.unwrap_or_default(), r.request_body.clone()));
        }
        Ok(())
    })
    .await?;
    if let Some(g) = group.take() {
        g.finish(&mut built, endpoints);
    }
    Ok(built)
}

/// One conversation's succeeded rows.
struct Group {
    api: Api,
    conversation_id: String,
    agent_id: Option<String>,
    pre_image: Option<String>,
    calls: Vec<(String, Option<String>)>,
}

impl Group {
    fn finish(self, built: &mut Built, endpoints: &Endpoints) {
        built.conversations += 1;
        let pre = self
            .pre_image
            .as_deref()
            .and_then(|s| serde_json::from_str::<Map<String, Value>>(s).ok());
        let Some(pre) = pre else {
            self.cannot(
                built,
                "(all)",
                "no pre-image: the batch did not read the conversation first (run with --capture-before, or plan + apply)",
            );
            return;
        };
        let calls: Vec<live::Call> = self
            .calls
            .iter()
            .map(|(op, body)| live::Call {
                op,
                body: body.as_deref(),
            })
            .collect();
        let plan = live::undo(self.api, &pre, &calls);
        for live::Put {
            op,
            fields,
            changes,
        } in plan.puts
        {
            let conversation_id = self.conversation_id.clone();
            let edit = match op {
                "attention.set_labels" => Edit::SetLabels {
                    conversation_id,
                    labels: fields["labels"].as_object().cloned().unwrap_or_default(),
                    skip_analysis: None,
                },
                "attention.update" => Edit::Update {
                    conversation_id,
                    title: fields["title"].as_str().map(str::to_owned),
                    labels: None,
                },
                _ => Edit::VgUpdate {
                    agent_id: self.agent_id.clone().unwrap_or_default(),
                    conversation_id,
                    conversation: fields.clone(),
                },
            };
            let c = call::build(&edit, &endpoints.get(self.api).base);
            let what: Vec<&str> = changes.keys().map(String::as_str).collect();
            let mut source = Map::new();
            source.insert("op".into(), json!(edit.op().name()));
            source.insert("conversation_id".into(), json!(self.conversation_id));
            if let Some(a) = edit.agent_id() {
                source.insert("agent_id".into(), json!(a));
            }
            for (k, v) in &fields {
                let cell = match (op, v) {
                    ("vg.update", _) => continue,
                    (_, Value::String(s)) => s.clone(),
                    (_, other) => other.to_string(),
                };
                source.insert(k.clone(), Value::String(cell));
            }
            if op == "vg.update" {
                source.insert(
                    "conversation".into(),
                    Value::String(Value::Object(fields.clone()).to_string()),
                );
            }
            let row = PlannedRow {
                row_key: format!("{}/{}/{}", self.api, self.conversation_id, what.join("+")),
                row_number: built.rows.len() as u64 + 1,
                row_hash: format!("undo:{}", c.body.as_deref().unwrap_or("")),
                op: Some(edit.op().name()),
                api: Some(self.api),
                conversation_id: Some(self.conversation_id.clone()),
                agent_id: self.agent_id.clone(),
                method: Some(c.method),
                url: Some(c.url),
                request_body: c.body,
                status: RowStatus::Pending,
                error: None,
                source_row: Value::Object(source).to_string(),
            };
            built
                .rows
                .push((row, Some(Value::Object(changes).to_string())));
        }
        for (field, why) in plan.irreversible {
            self.cannot(built, &field, &why);
        }
    }

    /// Lists `field` as irreversible, and records it as a `skipped` row.
    fn cannot(&self, built: &mut Built, field: &str, why: &str) {
        built.irreversible.push(Irreversible {
            api: self.api.name(),
            conversation_id: self.conversation_id.clone(),
            field: field.to_owned(),
            why: why.to_owned(),
        });
        let row = PlannedRow {
            row_key: format!("{}/{}/!{field}", self.api, self.conversation_id),
            row_number: built.rows.len() as u64 + 1,
            row_hash: String::new(),
            op: None,
            api: Some(self.api),
            conversation_id: Some(self.conversation_id.clone()),
            agent_id: self.agent_id.clone(),
            method: None,
            url: None,
            request_body: None,
            status: RowStatus::Skipped,
            error: Some(format!("cannot be undone: {field}: {why}")),
            source_row: json!({"conversation_id": self.conversation_id}).to_string(),
        };
        built.rows.push((row, None));
    }
}
