//! VG's conversation fields and their JSON types, as VG documents them:
//! what a `vg.update` row may patch, and the sandbox's blank conversation.

use super::{did_you_mean, json_type};
use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug)]
enum Ty {
    Str,
    Bool,
    Num,
    StrArray,
    Array,
    Object,
    Any,
}

impl Ty {
    fn accepts(self, v: &Value) -> bool {
        match self {
            Ty::Str => v.is_string(),
            Ty::Bool => v.is_boolean(),
            Ty::Num => v.is_number(),
            Ty::StrArray => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
            Ty::Array => v.is_array(),
            Ty::Object => v.is_object(),
            Ty::Any => true,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Ty::Str => "a string",
            Ty::Bool => "a boolean (true or false)",
            Ty::Num => "a number",
            Ty::StrArray => "an array of strings",
            Ty::Array => "an array",
            Ty::Object => "a JSON object",
            Ty::Any => "any JSON",
        }
    }
}

/// VG's documented states; others are sent with a warning.
pub const VG_STATES: [&str; 4] = ["open", "ai-chatting", "requested_chat", "completed"];

/// VG conversation fields and their JSON types, as VG documents them.
const VG_FIELDS: &[(&str, Ty)] = &[
    ("title", Ty::Str),
    ("lastMessage", Ty::Str),
    ("userEmail", Ty::Str),
    ("userName", Ty::Str),
    ("userPhone", Ty::Str),
    ("userAddress", Ty::Str),
    ("userCompany", Ty::Str),
    ("userWebsite", Ty::Str),
    ("notes", Ty::Str),
    ("userProfilePic", Ty::Str),
    ("ID", Ty::Str),
    ("userID", Ty::Str),
    ("campaignId", Ty::Str),
    ("userImage", Ty::Str),
    ("socialHandle", Ty::Str),
    ("userOs", Ty::Str),
    ("userBrowser", Ty::Str),
    ("whatsappPhoneNumberId", Ty::Str),
    ("whatsappBusinessNumber", Ty::Str),
    ("whatsappDisplayPhoneNumber", Ty::Str),
    ("whatsappBusinessAccountId", Ty::Str),
    ("userPlatform", Ty::Str),
    ("state", Ty::Str),
    ("chatAssignedTo", Ty::Str),
    ("lang", Ty::Str),
    ("endReason", Ty::Str),
    ("notifyToUserId", Ty::Str),
    ("summary", Ty::Str),
    ("requestedTeamKey", Ty::Str),
    ("delegatedBy", Ty::Str),
    ("note", Ty::Str),
    ("funnelSummary", Ty::Str),
    ("isFollowingBusiness", Ty::Bool),
    ("socialVerified", Ty::Bool),
    ("isTyping", Ty::Bool),
    ("isBlocked", Ty::Bool),
    ("isTest", Ty::Bool),
    ("funnelNotificationSent", Ty::Bool),
    ("messagesNum", Ty::Num),
    ("interactionsNum", Ty::Num),
    ("ts", Ty::Num),
    ("convoTimeSeconds", Ty::Num),
    ("firstMessageTS", Ty::Num),
    ("lastMessageTS", Ty::Num),
    ("lastModified", Ty::Num),
    ("sessionsNum", Ty::Num),
    ("ratingFrom5", Ty::Num),
    ("totalUserInteractions", Ty::Num),
    ("averageLatency", Ty::Num),
    ("delegatedAt", Ty::Num),
    ("lastViewed", Ty::Num),
    ("leadScore", Ty::Num),
    ("funnelLastEvaluated", Ty::Num),
    ("tags", Ty::StrArray),
    ("handoffHistory", Ty::Array),
    ("campaignCalls", Ty::Array),
    ("sessions", Ty::Array),
    ("metrics", Ty::Array),
    ("funnelStepsMatched", Ty::Array),
    ("funnelScoreHistory", Ty::Array),
    ("vapi", Ty::Object),
    ("nodesInfo", Ty::Object),
    ("voice", Ty::Object),
    ("detailedCost", Ty::Object),
    ("funnelExtractedData", Ty::Object),
    ("origin", Ty::Any),
    ("capturedVariables", Ty::Any),
];

/// Whether `name` is one of VG's documented conversation fields.
pub fn is_vg_field(name: &str) -> bool {
    VG_FIELDS.iter().any(|(n, _)| *n == name)
}

/// Checks one VG conversation field: a known name, with its documented JSON type.
pub fn check_vg_field(name: &str, value: &Value) -> Result<(), String> {
    let Some((_, ty)) = VG_FIELDS.iter().find(|(n, _)| *n == name) else {
        let hint = did_you_mean(name, VG_FIELDS.iter().map(|(n, _)| *n))
            .map(|n| format!("did you mean {n}? "))
            .unwrap_or_default();
        return Err(format!(
            "unknown VG field {name:?}; {hint}see the VG field list in the README"
        ));
    };
    if !ty.accepts(value) {
        return Err(format!(
            "field {name} must be {}, not {}",
            ty.describe(),
            json_type(value)
        ));
    }
    Ok(())
}

/// VG's fields with a neutral value of each one's type: the sandbox's blank conversation.
pub fn vg_blank_conversation() -> Map<String, Value> {
    VG_FIELDS
        .iter()
        .map(|(n, ty)| {
            let v = match ty {
                Ty::Str => Value::String(String::new()),
                Ty::Bool => Value::Bool(false),
                Ty::Num => Value::from(0),
                Ty::StrArray | Ty::Array => Value::Array(Vec::new()),
                Ty::Object => Value::Object(Map::new()),
                Ty::Any => Value::Null,
            };
            ((*n).to_owned(), v)
        })
        .collect()
}
