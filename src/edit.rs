//! The row model ([`Api`], [`Op`], [`Edit`]) and row validation: the
//! source's header becomes a [`Columns`] layout once, and every row becomes
//! a typed [`Edit`] or a [`RowError`] that names the row, the column and
//! what to do; the VG field schema is in `vg`. Nothing here does I/O.

mod vg;

pub use vg::{VG_STATES, check_vg_field, is_vg_field, vg_blank_conversation};

use serde_json::{Map, Value};
use std::collections::HashSet;
use std::fmt;

/// The two APIs convoy talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Api {
    Attention,
    Vg,
}

impl Api {
    pub const ALL: [Api; 2] = [Api::Attention, Api::Vg];

    pub fn name(self) -> &'static str {
        match self {
            Api::Attention => "attention",
            Api::Vg => "vg",
        }
    }

    pub fn parse(s: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|a| a.name() == s)
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The five operations of contract section 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    SetLabels,
    Update,
    ConfirmCrm,
    Archive,
    VgUpdate,
}

impl Op {
    pub const ALL: [Op; 5] = [
        Op::SetLabels,
        Op::Update,
        Op::ConfirmCrm,
        Op::Archive,
        Op::VgUpdate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::SetLabels => "attention.set_labels",
            Op::Update => "attention.update",
            Op::ConfirmCrm => "attention.confirm_crm",
            Op::Archive => "attention.archive",
            Op::VgUpdate => "vg.update",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|o| o.name() == s)
    }

    pub fn api(self) -> Api {
        match self {
            Op::VgUpdate => Api::Vg,
            _ => Api::Attention,
        }
    }

    /// The optional columns this op reads (besides `row_id`, `op`, `conversation_id`).
    fn uses(self, col: Col) -> bool {
        match self {
            Op::SetLabels => matches!(col, Col::Labels | Col::Label | Col::SkipAnalysis),
            Op::Update => matches!(col, Col::Title | Col::Labels | Col::Label),
            Op::ConfirmCrm => matches!(col, Col::Intelligence | Col::OpportunityId),
            Op::Archive => false,
            Op::VgUpdate => matches!(
                col,
                Col::AgentId | Col::Title | Col::Conversation | Col::State | Col::Tags
            ),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A validated edit: exactly what one HTTP call will carry.
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    SetLabels {
        conversation_id: String,
        labels: Map<String, Value>,
        skip_analysis: Option<bool>,
    },
    Update {
        conversation_id: String,
        title: Option<String>,
        labels: Option<Map<String, Value>>,
    },
    ConfirmCrm {
        conversation_id: String,
        intelligence: Vec<Value>,
        opportunity_id: Option<String>,
    },
    Archive {
        conversation_id: String,
    },
    VgUpdate {
        agent_id: String,
        conversation_id: String,
        conversation: Map<String, Value>,
    },
}

impl Edit {
    pub fn op(&self) -> Op {
        match self {
            Edit::SetLabels { .. } => Op::SetLabels,
            Edit::Update { .. } => Op::Update,
            Edit::ConfirmCrm { .. } => Op::ConfirmCrm,
            Edit::Archive { .. } => Op::Archive,
            Edit::VgUpdate { .. } => Op::VgUpdate,
        }
    }

    pub fn conversation_id(&self) -> &str {
        match self {
            Edit::SetLabels {
                conversation_id, ..
            }
            | Edit::Update {
                conversation_id, ..
            }
            | Edit::ConfirmCrm {
                conversation_id, ..
            }
            | Edit::Archive { conversation_id }
            | Edit::VgUpdate {
                conversation_id, ..
            } => conversation_id,
        }
    }

    pub fn agent_id(&self) -> Option<&str> {
        match self {
            Edit::VgUpdate { agent_id, .. } => Some(agent_id),
            _ => None,
        }
    }
}

/// Why a row cannot be sent. `Display` reads like
/// `row 7 (row_id r7), column labels: not valid JSON (...); write a JSON object like {"k":"v"}`.
#[derive(Clone, Debug, PartialEq)]
pub struct RowError {
    pub row_number: u64,
    pub row_key: String,
    pub column: Option<String>,
    pub message: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "row {}", self.row_number)?;
        if self.row_key != self.row_number.to_string() {
            write!(f, " (row_id {})", self.row_key)?;
        }
        if let Some(c) = &self.column {
            write!(f, ", column {c}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// One row as read from the source: cells aligned with [`Columns::names`].
#[derive(Clone, Debug, Default)]
pub struct Row {
    /// 1-based data-row number (CSV) or `rowid` (SQLite).
    pub number: u64,
    /// `None` for an empty cell or SQL NULL.
    pub cells: Vec<Option<String>>,
    /// A problem the reader found in the row itself (ragged, not UTF-8): column, message.
    pub problem: Option<(Option<String>, String)>,
}

/// The columns convoy knows (contract section 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Col {
    RowId,
    Op,
    ConversationId,
    AgentId,
    Title,
    Labels,
    Label,
    SkipAnalysis,
    Intelligence,
    OpportunityId,
    Conversation,
    State,
    Tags,
    /// Written by `convoy failures`, ignored on input.
    Ignored,
    /// Written by `convoy failures`: the batch and row a fixed row came from,
    /// so that it is never sent after a newer edit of its conversation.
    Origin,
}

const KNOWN: [(&str, Col); 17] = [
    ("row_id", Col::RowId),
    ("op", Col::Op),
    ("conversation_id", Col::ConversationId),
    ("agent_id", Col::AgentId),
    ("title", Col::Title),
    ("labels", Col::Labels),
    ("skip_analysis", Col::SkipAnalysis),
    ("intelligence", Col::Intelligence),
    ("opportunity_id", Col::OpportunityId),
    ("conversation", Col::Conversation),
    ("state", Col::State),
    ("tags", Col::Tags),
    ("status", Col::Ignored),
    ("http_status", Col::Ignored),
    ("error", Col::Ignored),
    ("from_batch", Col::Origin),
    ("from_row", Col::Origin),
];

/// The source's header, understood once: where each known column is.
#[derive(Clone, Debug)]
pub struct Columns {
    pub names: Vec<String>,
    kinds: Vec<Option<Col>>,
    default_op: Option<Op>,
    /// Non-fatal remarks about the header (unknown columns, with a hint).
    pub warnings: Vec<String>,
}

impl Columns {
    /// Understands a header. Fails (a source error: nothing can be sent) when
    /// a name repeats, or `conversation_id` is missing, or there is no `op`
    /// column and no `--op`.
    pub fn from_header(names: Vec<String>, default_op: Option<Op>) -> Result<Columns, String> {
        if names.iter().all(|n| n.trim().is_empty()) {
            return Err("the source has no header row; the first row must name the columns (row_id, op, conversation_id, ...)".into());
        }
        let mut seen = HashSet::new();
        let mut kinds = Vec::with_capacity(names.len());
        let mut warnings = Vec::new();
        for name in &names {
            if !seen.insert(name.as_str()) {
                return Err(format!(
                    "column {name:?} appears twice in the header; keep one"
                ));
            }
            let kind = if let Some(key) = name.strip_prefix("label.") {
                if key.is_empty() {
                    return Err("column \"label.\" has no label key; name it label.<key>".into());
                }
                Some(Col::Label)
            } else {
                KNOWN.iter().find(|(n, _)| n == name).map(|(_, c)| *c)
            };
            if kind.is_none() {
                let hint = did_you_mean(name, KNOWN.iter().map(|(n, _)| *n))
                    .map(|n| format!(" (did you mean {n}?)"))
                    .unwrap_or_default();
                warnings.push(format!("unknown column {name:?} is ignored{hint}"));
            }
            kinds.push(kind);
        }
        let has = |c: Col| kinds.contains(&Some(c));
        if !has(Col::ConversationId) {
            let hint = names
                .iter()
                .find_map(|n| did_you_mean(n, ["conversation_id"]))
                .map(|_| " (a column is spelt close to it: check the header)")
                .unwrap_or_default();
            return Err(format!(
                "the source has no conversation_id column{hint}; every op needs one"
            ));
        }
        if !has(Col::Op) && default_op.is_none() {
            return Err(
                "the source has no op column; add one, or pass --op OP for a single-op source"
                    .into(),
            );
        }
        Ok(Columns {
            names,
            kinds,
            default_op,
            warnings,
        })
    }

    fn find(&self, col: Col) -> Option<usize> {
        self.kinds.iter().position(|k| *k == Some(col))
    }

    /// The row's key: its `row_id` cell, else its row number.
    pub fn row_key(&self, row: &Row) -> String {
        self.find(Col::RowId)
            .and_then(|i| cell(row, i))
            .map(str::to_owned)
            .unwrap_or_else(|| row.number.to_string())
    }

    /// What can be told of a row even when it is invalid: its op and ids, as written.
    pub fn peek(&self, row: &Row) -> (Option<Op>, Option<String>, Option<String>) {
        let get = |c: Col| self.find(c).and_then(|i| cell(row, i));
        (
            get(Col::Op)
                .and_then(|o| Op::parse(o.trim()))
                .or(self.default_op),
            get(Col::ConversationId).map(str::to_owned),
            get(Col::AgentId).map(str::to_owned),
        )
    }

    /// The row's cells as a JSON object, column name to text (absent cells left out).
    pub fn source_row(&self, row: &Row) -> Map<String, Value> {
        self.names
            .iter()
            .enumerate()
            .filter(|(i, _)| self.kinds[*i] != Some(Col::Ignored))
            .filter_map(|(i, n)| cell(row, i).map(|v| (n.clone(), Value::String(v.to_owned()))))
            .collect()
    }

    /// A stable fingerprint of the row's content (ignored columns left out),
    /// to tell on resume whether a row changed since it was recorded.
    pub fn row_hash(&self, row: &Row) -> String {
        // FNV-1a, 64 bit: stable across builds and platforms, and ample to notice an edit.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        let mut pairs: Vec<(&str, &str)> = self
            .names
            .iter()
            .enumerate()
            .filter(|(i, _)| self.kinds[*i] != Some(Col::Ignored))
            .filter_map(|(i, n)| cell(row, i).map(|v| (n.as_str(), v)))
            .collect();
        pairs.sort_unstable();
        for (n, v) in pairs {
            feed(n.as_bytes());
            feed(&[0]);
            feed(v.as_bytes());
            feed(&[1]);
        }
        format!("{h:016x}")
    }

    /// Validates one row into an [`Edit`], with any warnings (a row that is
    /// sent all the same: an unknown VG `state`, say).
    pub fn validate(&self, row: &Row) -> Result<(Edit, Vec<String>), RowError> {
        let key = self.row_key(row);
        let err = |column: Option<&str>, message: String| RowError {
            row_number: row.number,
            row_key: key.clone(),
            column: column.map(str::to_owned),
            message,
        };
        if let Some((column, message)) = &row.problem {
            return Err(err(column.as_deref(), message.clone()));
        }
        let get = |c: Col| self.find(c).and_then(|i| cell(row, i));

        let op = match get(Col::Op) {
            Some(s) => Op::parse(s.trim()).ok_or_else(|| {
                let hint = did_you_mean(s.trim(), Op::ALL.iter().map(|o| o.name()))
                    .map(|n| format!("did you mean {n}? "))
                    .unwrap_or_default();
                err(
                    Some("op"),
                    format!(
                        "unknown op {s:?}; {hint}known ops: {}",
                        Op::ALL.map(Op::name).join(", ")
                    ),
                )
            })?,
            None => self.default_op.ok_or_else(|| {
                err(
                    Some("op"),
                    "is empty; fill it in, or pass --op OP for rows without one".into(),
                )
            })?,
        };

        // A value in a column the op does not read is a mistake, never silently dropped.
        for (i, kind) in self.kinds.iter().enumerate() {
            let Some(kind) = kind else { continue };
            let general = matches!(
                kind,
                Col::RowId | Col::Op | Col::ConversationId | Col::Ignored | Col::Origin
            );
            if !general && !op.uses(*kind) && cell(row, i).is_some() {
                return Err(err(
                    Some(&self.names[i]),
                    format!("is not used by {op}; clear the cell or change the op"),
                ));
            }
        }

        let conversation_id =
            id_cell(get(Col::ConversationId)).map_err(|m| err(Some("conversation_id"), m))?;
        let labels = self.labels(row).map_err(|(c, m)| err(Some(&c), m))?;

        let edit = match op {
            Op::SetLabels => Edit::SetLabels {
                conversation_id,
                labels: labels.ok_or_else(|| {
                    err(
                        Some("labels"),
                        "is required for attention.set_labels; give a JSON object (or {} to clear all labels), or label.<key> columns".into(),
                    )
                })?,
                skip_analysis: get(Col::SkipAnalysis)
                    .map(parse_bool)
                    .transpose()
                    .map_err(|m| err(Some("skip_analysis"), m))?,
            },
            Op::Update => {
                let title = get(Col::Title).map(str::to_owned);
                if title.is_none() && labels.is_none() {
                    return Err(err(
                        Some("title"),
                        "attention.update needs a title or labels (or both); fill one in".into(),
                    ));
                }
                Edit::Update {
                    conversation_id,
                    title,
                    labels,
                }
            }
            Op::ConfirmCrm => {
                let raw = get(Col::Intelligence).ok_or_else(|| {
                    err(
                        Some("intelligence"),
                        "is required for attention.confirm_crm; give a JSON array like [{\"id\":\"i1\",\"key\":\"next_steps\",\"value\":\"Demo\",\"title\":\"Next Steps\"}]".into(),
                    )
                })?;
                let intelligence = parse_intelligence(raw).map_err(|m| err(Some("intelligence"), m))?;
                Edit::ConfirmCrm {
                    conversation_id,
                    intelligence,
                    opportunity_id: get(Col::OpportunityId).map(str::to_owned),
                }
            }
            Op::Archive => Edit::Archive { conversation_id },
            Op::VgUpdate => {
                let agent_id = id_cell(get(Col::AgentId)).map_err(|m| {
                    err(Some("agent_id"), format!("{m} (vg.update needs the VG agent id)"))
                })?;
                let (conversation, warnings) = self.vg_conversation(row).map_err(|(c, m)| err(Some(&c), m))?;
                return Ok((
                    Edit::VgUpdate {
                        agent_id,
                        conversation_id,
                        conversation,
                    },
                    warnings
                        .into_iter()
                        .map(|(c, w)| err(Some(&c), w).to_string())
                        .collect(),
                ));
            }
        };
        Ok((edit, Vec::new()))
    }

    /// `labels` merged with the `label.<key>` columns; `None` when neither is given.
    fn labels(&self, row: &Row) -> Result<Option<Map<String, Value>>, (String, String)> {
        let mut labels = match self.find(Col::Labels).and_then(|i| cell(row, i)) {
            Some(raw) => Some(
                parse_object(raw, "{\"deal_stage\":\"negotiation\"}")
                    .map_err(|m| ("labels".to_owned(), m))?,
            ),
            None => None,
        };
        for (i, name) in self.names.iter().enumerate() {
            if self.kinds[i] != Some(Col::Label) {
                continue;
            }
            let Some(value) = cell(row, i) else { continue };
            let key = &name["label.".len()..];
            let map = labels.get_or_insert_with(Map::new);
            if map.contains_key(key) {
                return Err((
                    name.clone(),
                    format!("label {key:?} is also set in the labels column; keep one"),
                ));
            }
            map.insert(key.to_owned(), Value::String(value.to_owned()));
        }
        Ok(labels)
    }

    /// `conversation` merged with the `title`, `state` and `tags` shortcuts, checked against VG's fields.
    #[allow(clippy::type_complexity)]
    fn vg_conversation(
        &self,
        row: &Row,
    ) -> Result<(Map<String, Value>, Vec<(String, String)>), (String, String)> {
        let get = |c: Col| self.find(c).and_then(|i| cell(row, i));
        let mut conv = match get(Col::Conversation) {
            Some(raw) => parse_object(raw, "{\"state\":\"completed\",\"tags\":[\"vip\"]}")
                .map_err(|m| ("conversation".to_owned(), m))?,
            None => Map::new(),
        };
        let mut put = |name: &str, value: Value| -> Result<(), (String, String)> {
            if conv.contains_key(name) {
                return Err((
                    name.to_owned(),
                    format!("{name} is also set in the conversation column; keep one"),
                ));
            }
            conv.insert(name.to_owned(), value);
            Ok(())
        };
        if let Some(t) = get(Col::Title) {
            put("title", Value::String(t.to_owned()))?;
        }
        if let Some(s) = get(Col::State) {
            put("state", Value::String(s.to_owned()))?;
        }
        if let Some(raw) = get(Col::Tags) {
            let tags: Value = serde_json::from_str(raw).map_err(|e| {
                ("tags".to_owned(), format!("not valid JSON ({e}); write a JSON array of strings like [\"vip\",\"renewal\"]"))
            })?;
            put("tags", tags)?;
        }
        if conv.is_empty() {
            return Err((
                "conversation".into(),
                "vg.update needs at least one field; fill in conversation (a JSON object), title, state or tags".into(),
            ));
        }
        let mut warnings = Vec::new();
        for (name, value) in &conv {
            if let Err(m) = check_vg_field(name, value) {
                let shortcut = ["title", "state", "tags"].contains(&name.as_str())
                    && self
                        .find(col_of_shortcut(name))
                        .and_then(|i| cell(row, i))
                        .is_some();
                let column = if shortcut {
                    name.clone()
                } else {
                    "conversation".to_owned()
                };
                return Err((column, m));
            }
            if name == "state"
                && let Some(s) = value.as_str()
                && !VG_STATES.contains(&s)
            {
                let column = if get(Col::State).is_some() {
                    "state"
                } else {
                    "conversation"
                };
                warnings.push((
                    column.to_owned(),
                    format!(
                        "state {s:?} is not one VG documents ({}); sent as given",
                        VG_STATES.join(", ")
                    ),
                ));
            }
        }
        Ok((conv, warnings))
    }
}

fn col_of_shortcut(name: &str) -> Col {
    match name {
        "title" => Col::Title,
        "state" => Col::State,
        _ => Col::Tags,
    }
}

/// A non-empty cell's text; empty cells and NULLs are absent.
fn cell(row: &Row, i: usize) -> Option<&str> {
    row.cells
        .get(i)
        .and_then(|c| c.as_deref())
        .filter(|s| !s.is_empty())
}

/// An id that will become one URL path segment.
fn id_cell(value: Option<&str>) -> Result<String, String> {
    let v = value.ok_or_else(|| "is empty; every row needs this id".to_owned())?;
    if v.trim().is_empty() {
        return Err("is only spaces; give the real id".into());
    }
    if v.trim() != v {
        return Err(format!("{v:?} has leading or trailing spaces; remove them"));
    }
    if v == "." || v == ".." {
        return Err(format!(
            "{v:?} cannot be an id: it would change the request path"
        ));
    }
    Ok(v.to_owned())
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean; write true or false")),
    }
}

fn parse_object(raw: &str, example: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(format!(
            "must be a JSON object, not {}; write one like {example}",
            json_type(&other)
        )),
        Err(e) => Err(format!(
            "not valid JSON ({e}); write a JSON object like {example}"
        )),
    }
}

fn parse_intelligence(raw: &str) -> Result<Vec<Value>, String> {
    const EXAMPLE: &str =
        "[{\"id\":\"i1\",\"key\":\"next_steps\",\"value\":\"Demo\",\"title\":\"Next Steps\"}]";
    let items = match serde_json::from_str::<Value>(raw) {
        Ok(Value::Array(items)) => items,
        Ok(other) => {
            return Err(format!(
                "must be a JSON array of objects, not {}; write one like {EXAMPLE}",
                json_type(&other)
            ));
        }
        Err(e) => {
            return Err(format!(
                "not valid JSON ({e}); write an array like {EXAMPLE}"
            ));
        }
    };
    if items.is_empty() {
        return Err("is an empty array; confirm at least one item".into());
    }
    for (i, item) in items.iter().enumerate() {
        let Value::Object(obj) = item else {
            return Err(format!(
                "item {} must be an object like {{\"id\",\"key\",\"value\",\"title\"}}, not {}",
                i + 1,
                json_type(item)
            ));
        };
        for field in ["id", "key", "title"] {
            if let Some(v) = obj.get(field)
                && !v.is_string()
            {
                return Err(format!(
                    "item {}: {field} must be a string, not {}",
                    i + 1,
                    json_type(v)
                ));
            }
        }
    }
    Ok(items)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The closest of `candidates` to `name`, when it is close enough to be a typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d > 0 && *d <= (c.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests;
