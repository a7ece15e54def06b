//! The conversations both simulated APIs keep ([`World`]), and what each
//! call does to them: Attention's five calls and its read, VG's patch and
//! read, each validated and answered with a full snapshot.

use super::{State, lock};
use crate::edit;
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

#[derive(Default)]
pub(super) struct World {
    pub(super) attention: HashMap<String, Map<String, Value>>,
    pub(super) vg: HashMap<(String, String), Map<String, Value>>,
}

impl State {
    pub(super) fn attention(
        &self,
        id: &str,
        call: AttentionCall,
        body: &[u8],
    ) -> Result<(bool, String), String> {
        let parsed = match call {
            AttentionCall::Get | AttentionCall::Archive => Map::new(),
            _ => match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return Err("the body must be a JSON object".into()),
                Err(e) => return Err(format!("the body is not JSON: {e}")),
            },
        };
        let allowed: &[&str] = match call {
            AttentionCall::Labels => &["labels", "skip_analysis"],
            AttentionCall::Update => &["title", "labels"],
            AttentionCall::Confirm => &["intelligence", "opportunity_id"],
            _ => &[],
        };
        if let Some(k) = parsed.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!("unknown field {k:?}"));
        }
        match call {
            AttentionCall::Labels => {
                if !parsed.get("labels").is_some_and(Value::is_object) {
                    return Err("labels is required and must be an object".into());
                }
                if parsed.get("skip_analysis").is_some_and(|v| !v.is_boolean()) {
                    return Err("skip_analysis must be a boolean".into());
                }
            }
            AttentionCall::Update => {
                if parsed.get("title").is_some_and(|v| !v.is_string()) {
                    return Err("title must be a string".into());
                }
                if parsed.get("labels").is_some_and(|v| !v.is_object()) {
                    return Err("labels must be an object".into());
                }
                if parsed.is_empty() {
                    return Err("give title or labels".into());
                }
            }
            AttentionCall::Confirm => match parsed.get("intelligence") {
                Some(Value::Array(items)) if items.iter().all(Value::is_object) => {
                    if parsed.get("opportunity_id").is_some_and(|v| !v.is_string()) {
                        return Err("opportunity_id must be a string".into());
                    }
                }
                _ => return Err("intelligence is required and must be an array of objects".into()),
            },
            _ => {}
        }
        let mut world = lock(&self.world);
        let conv = world.attention.entry(id.to_owned()).or_insert_with(|| {
            let mut c = self.attention_template.clone();
            c.insert("uuid".into(), Value::String(id.to_owned()));
            c.insert("labels".into(), json!({}));
            c
        });
        let applied = !matches!(call, AttentionCall::Get);
        match call {
            AttentionCall::Labels => {
                conv.insert("labels".into(), parsed["labels"].clone());
            }
            AttentionCall::Update => {
                for k in ["title", "labels"] {
                    if let Some(v) = parsed.get(k) {
                        conv.insert(k.into(), v.clone());
                    }
                }
            }
            AttentionCall::Confirm => {
                // A confirmation always adds: confirming an item twice holds it twice.
                let mut confirmed = match conv.remove(crate::live::CONFIRMED) {
                    Some(Value::Object(m)) => m,
                    _ => Map::new(),
                };
                for (i, item) in parsed["intelligence"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    crate::live::add_confirmed(&mut confirmed, item, i);
                }
                conv.insert(crate::live::CONFIRMED.into(), Value::Object(confirmed));
                if let Some(o) = parsed.get("opportunity_id") {
                    conv.insert("externalIntelligenceOpportunityID".into(), o.clone());
                }
            }
            AttentionCall::Archive => {
                conv.insert("archived".into(), Value::Bool(true));
            }
            AttentionCall::Get => {}
        }
        #[derive(Serialize)]
        struct Doc<'a> {
            r#type: &'static str,
            id: &'a str,
            attributes: &'a Map<String, Value>,
            links: Value,
        }
        let doc = Doc {
            r#type: "conversations",
            id,
            attributes: conv,
            links: json!({ "self": format!("/v2/conversations/{}", crate::call::encode_segment(id)) }),
        };
        Ok((
            applied,
            serde_json::to_string(&doc).map_err(|e| e.to_string())?,
        ))
    }

    pub(super) fn vg(
        &self,
        agent: &str,
        id: &str,
        patch: Option<&[u8]>,
    ) -> Result<(bool, String), String> {
        let fields = match patch {
            None => None,
            Some(body) => {
                let conv = match serde_json::from_slice::<Value>(body) {
                    Ok(Value::Object(mut m)) => match m.remove("conversation") {
                        Some(Value::Object(c)) if m.is_empty() => c,
                        _ => {
                            return Err(
                                "the body must be {\"conversation\": {...}} and nothing else"
                                    .into(),
                            );
                        }
                    },
                    Ok(_) => return Err("the body must be a JSON object".into()),
                    Err(e) => return Err(format!("the body is not JSON: {e}")),
                };
                if conv.is_empty() {
                    return Err("conversation must set at least one field".into());
                }
                for (k, v) in &conv {
                    edit::check_vg_field(k, v)?;
                }
                Some(conv)
            }
        };
        let mut world = lock(&self.world);
        let conv = world
            .vg
            .entry((agent.to_owned(), id.to_owned()))
            .or_insert_with(|| {
                let mut c = self.vg_template.clone();
                c.insert("ID".into(), Value::String(id.to_owned()));
                c
            });
        let applied = fields.is_some();
        if let Some(fields) = fields {
            for (k, v) in fields {
                if k == "tags" {
                    let mut tags: Vec<Value> = conv
                        .get("tags")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    for t in v.as_array().into_iter().flatten() {
                        if !tags.contains(t) {
                            tags.push(t.clone());
                        }
                    }
                    conv.insert(k, Value::Array(tags));
                } else {
                    conv.insert(k, v);
                }
            }
            let wall = chrono::Utc::now().timestamp_millis() as u64;
            let stamp = self.clock_ms.fetch_max(wall, Relaxed).max(wall);
            let prev = conv
                .get("lastModified")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            conv.insert("lastModified".into(), Value::from(stamp.max(prev + 1)));
        }
        let message = if applied {
            "Conversation updated"
        } else {
            "Conversation found"
        };
        #[derive(Serialize)]
        struct Doc<'a> {
            success: bool,
            message: &'static str,
            data: &'a Map<String, Value>,
        }
        let doc = Doc {
            success: true,
            message,
            data: conv,
        };
        Ok((
            applied,
            serde_json::to_string(&doc).map_err(|e| e.to_string())?,
        ))
    }
}

pub(super) enum Target<'a> {
    Attention(&'a str, AttentionCall),
    Vg(&'a str, &'a str, bool),
}

#[derive(Clone, Copy)]
pub(super) enum AttentionCall {
    Get,
    Update,
    Archive,
    Labels,
    Confirm,
}
