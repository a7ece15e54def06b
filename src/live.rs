//! Live state (contract section 8): a conversation as the APIs return it
//! on a read, and what each row's call does to it, following each API's
//! documented semantics. Pure functions on JSON: `plan`, `--skip-unchanged`,
//! the resume's verifying reads and `undo` all judge rows with them.
//!
//! A row's changes are a JSON object, field by field:
//! `{"labels": {"before": {...}, "after": {...}}}` for a field that is set,
//! `{"tags": {"add": [...]}}` for what VG merges in, and
//! `{"confirmedExtractedIntelligence": {"add": [...]}}` for what a CRM
//! confirmation adds (it always adds).

use crate::edit::Api;
use serde_json::{Map, Value, json};

/// A conversation's fields, as read.
pub type State = Map<String, Value>;

/// The field Attention keeps confirmed CRM intelligence in.
pub const CONFIRMED: &str = "confirmedExtractedIntelligence";

/// `GET` of one conversation: Attention `{A}/conversations/{id}`, VG
/// `{V}/agents/{agent_id}/convos/{id}`.
pub fn read_url(api: Api, base: &str, conversation_id: &str, agent_id: Option<&str>) -> String {
    let base = base.trim_end_matches('/');
    let id = crate::call::encode_segment(conversation_id);
    match api {
        Api::Attention => format!("{base}/conversations/{id}"),
        Api::Vg => format!(
            "{base}/agents/{}/convos/{id}",
            crate::call::encode_segment(agent_id.unwrap_or_default())
        ),
    }
}

/// The conversation in a response body: Attention's `attributes` (of the
/// body, or of its `data`), VG's `data`.
pub fn conversation_of(api: Api, body: &str) -> Option<State> {
    let doc: Value = serde_json::from_str(body).ok()?;
    let found = match api {
        Api::Attention => doc
            .get("attributes")
            .or_else(|| doc.get("data").and_then(|d| d.get("attributes"))),
        Api::Vg => doc.get("data"),
    };
    match found {
        Some(Value::Object(m)) => Some(m.clone()),
        _ => None,
    }
}

/// The conversation in a snapshot of the `conversations` table (Attention's
/// resource, VG's `data`).
pub fn state_of_snapshot(api: Api, snapshot: &str) -> Option<State> {
    match api {
        Api::Attention => conversation_of(api, snapshot),
        Api::Vg => match serde_json::from_str(snapshot).ok()? {
            Value::Object(m) => Some(m),
            _ => None,
        },
    }
}

/// What a recorded call is: its op and its JSON body.
pub struct Call<'a> {
    pub op: &'a str,
    pub body: Option<&'a str>,
}

impl Call<'_> {
    fn body(&self) -> Map<String, Value> {
        match self.body.map(serde_json::from_str::<Value>) {
            Some(Ok(Value::Object(m))) => m,
            _ => Map::new(),
        }
    }

    /// The fields this call sets (VG's `tags` and CRM confirmations apart).
    fn sets(&self) -> Map<String, Value> {
        let mut body = self.body();
        match self.op {
            "attention.set_labels" => body
                .remove("labels")
                .map(|l| Map::from_iter([("labels".to_owned(), l)]))
                .unwrap_or_default(),
            "attention.update" => body
                .into_iter()
                .filter(|(k, _)| k == "title" || k == "labels")
                .collect(),
            "attention.archive" => Map::from_iter([("archived".to_owned(), Value::Bool(true))]),
            "vg.update" => match body.remove("conversation") {
                Some(Value::Object(c)) => c.into_iter().filter(|(k, _)| k != "tags").collect(),
                _ => Map::new(),
            },
            _ => Map::new(),
        }
    }

    /// VG tags this call merges in.
    fn tags(&self) -> Vec<Value> {
        if self.op != "vg.update" {
            return Vec::new();
        }
        self.body()
            .get("conversation")
            .and_then(|c| c.get("tags"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// CRM intelligence this call confirms.
    fn confirms(&self) -> Vec<Value> {
        if self.op != "attention.confirm_crm" {
            return Vec::new();
        }
        self.body()
            .get("intelligence")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }
}

/// What judging a row decided: the changes it makes (replayed on the live
/// state with the other rows that change something), or why it is skipped.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Changes(Map<String, Value>),
    Skip(String),
}

/// Judges a conversation's rows of one batch together, in source order, on
/// its live state. A row changes something when, for a field it sets, it is
/// the last row of the batch to set that field and the value it leaves
/// differs from the live one; or it merges in a VG tag the conversation
/// lacks (the first row to do so); or it confirms CRM intelligence not yet
/// confirmed there. Every other row is skipped, saying why: the
/// conversation already holds what the batch leaves it with, or a later row
/// sets the same field again.
pub fn judge_all(calls: &[(i64, Call)], live: &State) -> Vec<Verdict> {
    let mut last_writer: Map<String, Value> = Map::new();
    let mut end = live.clone();
    let mut steps = Vec::with_capacity(calls.len());
    for (i, (_, call)) in calls.iter().enumerate() {
        for k in call.sets().keys() {
            last_writer.insert(k.clone(), Value::from(i));
        }
        steps.push(replay(call, &mut end));
    }
    let confirmed: Vec<&Value> = live
        .get(CONFIRMED)
        .and_then(Value::as_object)
        .map(|m| m.values().collect())
        .unwrap_or_default();
    let mut now = live.clone();
    calls
        .iter()
        .enumerate()
        .map(|(i, (_, call))| {
            let sets = call.sets();
            let mine = |k: &String| last_writer.get(k) == Some(&Value::from(i));
            let needed = sets.keys().any(|k| {
                mine(k) && end.get(k).unwrap_or(&Value::Null) != live.get(k).unwrap_or(&Value::Null)
            }) || steps[i].get("tags").is_some()
                || call
                    .confirms()
                    .iter()
                    .any(|item| !confirmed.contains(&item));
            if needed {
                return Verdict::Changes(replay(call, &mut now));
            }
            let mut why: Vec<String> = Vec::new();
            for k in sets.keys() {
                match last_writer.get(k).and_then(Value::as_u64) {
                    Some(j) if j as usize != i => {
                        why.push(format!("{k} is set again by row {}", calls[j as usize].0));
                    }
                    _ => why.push(format!(
                        "{k} already {}",
                        compact(live.get(k).unwrap_or(&Value::Null))
                    )),
                }
            }
            let tags = call.tags();
            if !tags.is_empty() {
                why.push(format!(
                    "tags already hold {}",
                    compact(&Value::Array(tags))
                ));
            }
            if call.op == "attention.confirm_crm" {
                why.push(
                    "every item is confirmed already (sending it again would only duplicate them)"
                        .into(),
                );
            }
            Verdict::Skip(format!("no change: {}", why.join(", ")))
        })
        .collect()
}

/// Applies `call` to `state` as the API would, and returns what it changed
/// (empty: nothing).
pub fn replay(call: &Call, state: &mut State) -> Map<String, Value> {
    let mut changes = Map::new();
    for (k, after) in call.sets() {
        let before = state.get(&k).cloned().unwrap_or(Value::Null);
        if before != after {
            changes.insert(k.clone(), json!({"before": before, "after": after}));
            state.insert(k, after);
        }
    }
    let tags = call.tags();
    if !tags.is_empty() {
        let mut now: Vec<Value> = state
            .get("tags")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let added: Vec<Value> = tags
            .into_iter()
            .filter(|t| {
                let new = !now.contains(t);
                if new {
                    now.push(t.clone());
                }
                new
            })
            .collect();
        if !added.is_empty() {
            changes.insert("tags".into(), json!({ "add": added }));
            state.insert("tags".into(), Value::Array(now));
        }
    }
    let confirms = call.confirms();
    if !confirms.is_empty() || call.op == "attention.confirm_crm" {
        let mut held = match state.remove(CONFIRMED) {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        for (i, item) in confirms.iter().enumerate() {
            add_confirmed(&mut held, item, i);
        }
        state.insert(CONFIRMED.into(), Value::Object(held));
        changes.insert(CONFIRMED.into(), json!({ "add": confirms }));
    }
    changes
}

/// Adds one confirmed item under its key, as Attention's confirmation
/// always adds: a key already there gets `#2`, `#3`, ... (how the sandbox
/// shows a confirmation made twice).
pub fn add_confirmed(held: &mut Map<String, Value>, item: &Value, index: usize) {
    let key = item
        .get("key")
        .or_else(|| item.get("id"))
        .and_then(Value::as_str)
        .map_or_else(|| format!("item{}", index + 1), str::to_owned);
    let mut name = key.clone();
    let mut n = 1;
    while held.contains_key(&name) {
        n += 1;
        name = format!("{key}#{n}");
    }
    held.insert(name, item.clone());
}

/// Whether the effect of `call` is visible in `now` (a row left in flight by
/// a crash: did it land?). Sets and tags: every value is there. A CRM
/// confirmation adds, so each item must be there more often than in
/// `before` (the last state convoy recorded before the row was sent), or at
/// all when that is unknown.
pub fn visible(call: &Call, now: &State, before: Option<&State>) -> bool {
    let sets = call.sets();
    let tags = call.tags();
    let confirms = call.confirms();
    if sets.is_empty() && tags.is_empty() && confirms.is_empty() {
        return false;
    }
    let has_tags = now
        .get("tags")
        .and_then(Value::as_array)
        .is_some_and(|held| tags.iter().all(|t| held.contains(t)));
    let count = |state: Option<&State>, item: &Value| -> usize {
        state
            .and_then(|s| s.get(CONFIRMED))
            .and_then(Value::as_object)
            .map_or(0, |m| m.values().filter(|v| *v == item).count())
    };
    sets.iter().all(|(k, v)| now.get(k) == Some(v))
        && (tags.is_empty() || has_tags)
        && confirms.iter().all(|item| {
            let want = confirms.iter().filter(|i| *i == item).count();
            count(Some(now), item) >= count(before, item) + want
        })
}

/// What undoing a batch on one conversation takes: the calls that put
/// fields back, and what cannot be put back.
#[derive(Debug, Default, PartialEq)]
pub struct UndoPlan {
    /// One call per op.
    pub puts: Vec<Put>,
    /// `(field, why)`: what cannot be undone.
    pub irreversible: Vec<(String, String)>,
}

/// One call that puts fields back.
#[derive(Debug, PartialEq)]
pub struct Put {
    pub op: &'static str,
    /// The fields to send, with their pre-image values.
    pub fields: Map<String, Value>,
    /// For each field, what the batch left (`before`) and what is put back (`after`).
    pub changes: Map<String, Value>,
}

/// How to put back what `calls` (a batch's succeeded rows on one
/// conversation, in order) changed on `pre` (its pre-image), as far as the
/// APIs allow: Attention labels (one `set_labels`) and title (one
/// `update`), VG fields (one PATCH). An archive, a CRM confirmation, VG tags
/// added and VG fields that were not set before cannot be put back.
pub fn undo(api: Api, pre: &State, calls: &[Call]) -> UndoPlan {
    let mut left = pre.clone();
    let mut touched: Vec<String> = Vec::new();
    let mut confirmed = 0usize;
    for c in calls {
        for (k, _) in c.sets() {
            if !touched.contains(&k) {
                touched.push(k);
            }
        }
        confirmed += c.confirms().len();
        replay(c, &mut left);
    }
    let null = Value::Null;
    let was = |k: &str| pre.get(k).unwrap_or(&null);
    let now = |k: &str| left.get(k).unwrap_or(&null);
    let change = |k: &str| json!({"before": now(k), "after": was(k)});
    let mut plan = UndoPlan::default();
    let moved: Vec<&String> = touched.iter().filter(|k| now(k) != was(k)).collect();
    match api {
        Api::Attention => {
            for k in moved {
                match (k.as_str(), was(k)) {
                    ("labels", Value::Object(_)) => plan.puts.push(Put {
                        op: "attention.set_labels",
                        fields: Map::from_iter([(k.clone(), was(k).clone())]),
                        changes: Map::from_iter([(k.clone(), change(k))]),
                    }),
                    ("title", Value::String(_)) => plan.puts.push(Put {
                        op: "attention.update",
                        fields: Map::from_iter([(k.clone(), was(k).clone())]),
                        changes: Map::from_iter([(k.clone(), change(k))]),
                    }),
                    ("archived", _) => plan.irreversible.push((
                        k.clone(),
                        "neither API documents a way to restore an archived conversation".into(),
                    )),
                    (_, before) => plan.irreversible.push((
                        k.clone(),
                        format!(
                            "was {} before, which Attention's calls cannot set",
                            compact(before)
                        ),
                    )),
                }
            }
            if confirmed > 0 {
                plan.irreversible.push((
                    CONFIRMED.into(),
                    format!(
                        "{confirmed} CRM intelligence item(s) confirmed: Attention documents no way to unconfirm one"
                    ),
                ));
            }
        }
        Api::Vg => {
            let mut fields = Map::new();
            let mut changes = Map::new();
            for k in moved {
                let before = was(k);
                if before.is_null() || crate::edit::check_vg_field(k, before).is_err() {
                    plan.irreversible.push((
                        k.clone(),
                        format!(
                            "was {} before; VG documents no way to remove or clear a field",
                            if before.is_null() {
                                "not set".to_owned()
                            } else {
                                compact(before)
                            }
                        ),
                    ));
                } else {
                    fields.insert(k.clone(), before.clone());
                    changes.insert(k.clone(), change(k));
                }
            }
            if !fields.is_empty() {
                plan.puts.push(Put {
                    op: "vg.update",
                    fields,
                    changes,
                });
            }
            let had: Vec<Value> = pre
                .get("tags")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let added: Vec<Value> = left
                .get("tags")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|t| !had.contains(t))
                .cloned()
                .collect();
            if !added.is_empty() {
                plan.irreversible.push((
                    "tags".into(),
                    format!(
                        "added {}: VG merges tags and documents no way to remove one",
                        compact(&Value::Array(added))
                    ),
                ));
            }
        }
    }
    plan
}

/// One line per change, for a terminal: `labels: {...} -> {...}`, `tags: + [...]`.
pub fn describe(changes: &Map<String, Value>) -> Vec<String> {
    changes
        .iter()
        .map(
            |(k, c)| match (c.get("add"), c.get("before"), c.get("after")) {
                (Some(add), _, _) => format!("{k}: + {}", compact(add)),
                (_, Some(b), Some(a)) => format!("{k}: {} -> {}", compact(b), compact(a)),
                _ => format!("{k}: {}", compact(c)),
            },
        )
        .collect()
}

/// JSON on one line, cut at 120 characters.
pub fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= 120 {
        return s;
    }
    let cut: String = s.chars().take(117).collect();
    format!("{cut}...")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(v: Value) -> State {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn set_labels_replaces_every_label_and_a_repeat_changes_nothing() {
        let mut s = state(json!({"labels": {"a": "1", "b": "2"}, "title": "t"}));
        let call = Call {
            op: "attention.set_labels",
            body: Some(r#"{"labels":{"a":"9"},"skip_analysis":true}"#),
        };
        let c = replay(&call, &mut s);
        assert_eq!(c["labels"]["before"], json!({"a": "1", "b": "2"}));
        assert_eq!(s["labels"], json!({"a": "9"}));
        assert!(replay(&call, &mut s).is_empty());
        assert_eq!(
            judge_all(&[(7, call)], &s),
            [Verdict::Skip(
                r#"no change: labels already {"a":"9"}"#.into()
            )]
        );
    }

    #[test]
    fn a_row_whose_field_a_later_row_sets_again_changes_nothing_in_the_end() {
        let live = state(json!({"labels": {"stage": "b"}, "archived": false}));
        let set = |v: &'static str| Call {
            op: "attention.set_labels",
            body: Some(v),
        };
        let rows = [
            (1, set(r#"{"labels":{"stage":"a"}}"#)),
            (2, set(r#"{"labels":{"stage":"b"}}"#)),
            (
                3,
                Call {
                    op: "attention.archive",
                    body: None,
                },
            ),
        ];
        let v = judge_all(&rows, &live);
        assert_eq!(
            v[0],
            Verdict::Skip("no change: labels is set again by row 2".into())
        );
        assert_eq!(
            v[1],
            Verdict::Skip(r#"no change: labels already {"stage":"b"}"#.into())
        );
        assert!(matches!(&v[2], Verdict::Changes(c) if c.contains_key("archived")));
    }

    #[test]
    fn update_sets_only_what_it_gives_and_archive_sets_archived() {
        let mut s = state(json!({"labels": {"a": "1"}, "title": "old", "archived": false}));
        let c = replay(
            &Call {
                op: "attention.update",
                body: Some(r#"{"title":"new"}"#),
            },
            &mut s,
        );
        assert_eq!(c.keys().collect::<Vec<_>>(), ["title"]);
        assert_eq!(s["labels"], json!({"a": "1"}));
        let archive = Call {
            op: "attention.archive",
            body: None,
        };
        assert!(!visible(&archive, &s, None));
        assert_eq!(replay(&archive, &mut s).len(), 1);
        assert!(replay(&archive, &mut s).is_empty());
        assert!(visible(&archive, &s, None));
    }

    #[test]
    fn confirm_always_adds_and_is_visible_only_once_more_than_before() {
        let item = json!({"id": "i1", "key": "next", "value": "demo"});
        let body = json!({"intelligence": [item.clone()]}).to_string();
        let call = Call {
            op: "attention.confirm_crm",
            body: Some(&body),
        };
        let before = state(json!({CONFIRMED: {}}));
        let mut s = before.clone();
        assert!(!replay(&call, &mut s).is_empty());
        assert!(visible(&call, &s, Some(&before)));
        let once = s.clone();
        assert!(!replay(&call, &mut s).is_empty(), "a repeat adds again");
        assert_eq!(s[CONFIRMED].as_object().unwrap().len(), 2);
        assert!(!visible(&call, &once, Some(&once)));
    }

    #[test]
    fn vg_sets_fields_and_merges_tags_without_duplicates() {
        let mut s = state(json!({"state": "open", "tags": ["a"]}));
        let call = Call {
            op: "vg.update",
            body: Some(r#"{"conversation":{"state":"completed","tags":["a","b"]}}"#),
        };
        let c = replay(&call, &mut s);
        assert_eq!(c["tags"], json!({"add": ["b"]}));
        assert_eq!(c["state"]["after"], "completed");
        assert_eq!(s["tags"], json!(["a", "b"]));
        assert!(replay(&call, &mut s).is_empty());
        assert!(visible(&call, &s, None));
        assert_eq!(
            describe(&c),
            [r#"state: "open" -> "completed""#, r#"tags: + ["b"]"#]
        );
    }

    #[test]
    fn undo_puts_back_labels_title_and_vg_fields_and_lists_the_rest() {
        let pre = state(json!({"labels": {"s": "a"}, "title": "old", "archived": false}));
        let calls = [
            Call {
                op: "attention.set_labels",
                body: Some(r#"{"labels":{"s":"b"}}"#),
            },
            Call {
                op: "attention.update",
                body: Some(r#"{"title":"new"}"#),
            },
            Call {
                op: "attention.archive",
                body: None,
            },
            Call {
                op: "attention.confirm_crm",
                body: Some(r#"{"intelligence":[{"key":"k"}]}"#),
            },
        ];
        let plan = undo(Api::Attention, &pre, &calls);
        let ops: Vec<&str> = plan.puts.iter().map(|p| p.op).collect();
        assert_eq!(ops, ["attention.set_labels", "attention.update"]);
        assert_eq!(plan.puts[0].fields["labels"], json!({"s": "a"}));
        assert_eq!(plan.puts[0].changes["labels"]["before"], json!({"s": "b"}));
        let gone: Vec<&str> = plan.irreversible.iter().map(|i| i.0.as_str()).collect();
        assert_eq!(gone, ["archived", CONFIRMED]);

        let pre = state(json!({"state": "open", "tags": ["x"]}));
        let calls = [Call {
            op: "vg.update",
            body: Some(r#"{"conversation":{"state":"completed","notes":"n","tags":["y"]}}"#),
        }];
        let plan = undo(Api::Vg, &pre, &calls);
        assert_eq!(plan.puts.len(), 1);
        assert_eq!(plan.puts[0].fields, state(json!({"state": "open"})));
        let gone: Vec<&str> = plan.irreversible.iter().map(|i| i.0.as_str()).collect();
        assert_eq!(gone, ["notes", "tags"]);
    }

    #[test]
    fn a_conversation_is_found_in_either_apis_envelope() {
        let a = r#"{"type":"conversations","id":"c","attributes":{"title":"t"}}"#;
        assert_eq!(conversation_of(Api::Attention, a).unwrap()["title"], "t");
        let v = r#"{"success":true,"data":{"state":"open"}}"#;
        assert_eq!(conversation_of(Api::Vg, v).unwrap()["state"], "open");
        assert!(conversation_of(Api::Vg, "<html>").is_none());
        assert_eq!(
            read_url(Api::Vg, "http://h/", "c/1", Some("a")),
            "http://h/agents/a/convos/c%2F1"
        );
    }
}
