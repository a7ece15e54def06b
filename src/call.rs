//! Mapping an [`Edit`] to exactly one HTTP call (contract section 2): the
//! endpoints, the auth header, and ids percent-encoded as one path segment.
//! Credentials live in [`Secret`], whose `Debug` and `Display` never show them.

use crate::edit::{Api, Edit};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value, json};
use std::fmt;

/// Everything but RFC 3986's unreserved characters is encoded, so an id is
/// always exactly one path segment (`a/b` → `a%2Fb`, `q?x=1` → `q%3Fx%3D1`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub fn encode_segment(id: &str) -> String {
    utf8_percent_encode(id, SEGMENT).to_string()
}

/// A key or token. It is only ever written into an `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// How the Attention key goes into `Authorization` (its pages show both forms).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AuthScheme {
    /// `Authorization: <key>`
    Raw,
    /// `Authorization: Bearer <key>`
    Bearer,
}

/// A base URL and the credential for one API.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub api: Api,
    /// Without a trailing slash.
    pub base: String,
    pub secret: Option<Secret>,
    pub scheme: AuthScheme,
}

impl Endpoint {
    /// Checks a base URL: `https://`, or `http://` on a loopback host only.
    pub fn check_base(api: Api, base: &str) -> Result<String, String> {
        let flag = match api {
            Api::Attention => "--attention-url / ATTENTION_BASE_URL",
            Api::Vg => "--vg-url / VG_BASE_URL",
        };
        let url = reqwest::Url::parse(base)
            .map_err(|e| format!("{flag}: {base:?} is not a URL ({e})"))?;
        if url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(format!(
                "{flag}: give a plain base URL, without credentials, query or fragment"
            ));
        }
        match url.scheme() {
            "https" => {}
            "http" => {
                let loopback = match url.host() {
                    Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    None => false,
                };
                if !loopback {
                    return Err(format!(
                        "{flag}: http:// is refused for {} (keys would travel in clear text); use https://",
                        url.host_str().unwrap_or("")
                    ));
                }
            }
            other => {
                return Err(format!(
                    "{flag}: scheme {other}:// is not supported; use https://"
                ));
            }
        }
        Ok(url.as_str().trim_end_matches('/').to_owned())
    }

    /// The `Authorization` header value, when a credential is set.
    pub fn authorization(&self) -> Option<String> {
        let s = self.secret.as_ref()?.expose();
        Some(match (self.api, self.scheme) {
            (Api::Attention, AuthScheme::Raw) => s.to_owned(),
            _ => format!("Bearer {s}"),
        })
    }
}

/// One planned HTTP call.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub method: &'static str,
    pub url: String,
    /// JSON text, `None` for a call without a body.
    pub body: Option<String>,
}

/// The call for an edit, against `base` (the base URL of the edit's API).
pub fn build(edit: &Edit, base: &str) -> Call {
    let id = encode_segment(edit.conversation_id());
    let conv = format!("{base}/conversations/{id}");
    let body = |v: Value| Some(v.to_string());
    match edit {
        Edit::SetLabels {
            labels,
            skip_analysis,
            ..
        } => {
            let mut b = Map::new();
            b.insert("labels".into(), Value::Object(labels.clone()));
            if let Some(s) = skip_analysis {
                b.insert("skip_analysis".into(), Value::Bool(*s));
            }
            Call {
                method: "PUT",
                url: format!("{conv}/labels"),
                body: body(Value::Object(b)),
            }
        }
        Edit::Update { title, labels, .. } => {
            let mut b = Map::new();
            if let Some(t) = title {
                b.insert("title".into(), Value::String(t.clone()));
            }
            if let Some(l) = labels {
                b.insert("labels".into(), Value::Object(l.clone()));
            }
            Call {
                method: "PUT",
                url: conv,
                body: body(Value::Object(b)),
            }
        }
        Edit::ConfirmCrm {
            intelligence,
            opportunity_id,
            ..
        } => {
            let mut b = Map::new();
            b.insert("intelligence".into(), Value::Array(intelligence.clone()));
            if let Some(o) = opportunity_id {
                b.insert("opportunity_id".into(), Value::String(o.clone()));
            }
            Call {
                method: "POST",
                url: format!("{conv}/crm/confirm"),
                body: body(Value::Object(b)),
            }
        }
        Edit::Archive { .. } => Call {
            method: "DELETE",
            url: conv,
            body: None,
        },
        Edit::VgUpdate {
            agent_id,
            conversation,
            ..
        } => Call {
            method: "PATCH",
            url: format!("{base}/agents/{}/convos/{id}", encode_segment(agent_id)),
            body: body(json!({ "conversation": conversation })),
        },
    }
}

pub const DEFAULT_ATTENTION_URL: &str = "https://api.attention.tech/v2";
pub const DEFAULT_VG_URL: &str = "https://eu-cloudflare.vg-stuff.com";

/// A usage or configuration problem: exit 2, nothing sent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Both endpoints with their credentials.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub attention: Endpoint,
    pub vg: Endpoint,
}

impl Endpoints {
    /// From the options and the environment (`ATTENTION_API_KEY`, `VG_API_TOKEN`).
    pub fn from_env(
        attention_url: &str,
        vg_url: &str,
        attention_scheme: AuthScheme,
    ) -> Result<Endpoints, ConfigError> {
        let key = |var: &str| read_key(var).map_err(ConfigError);
        Ok(Endpoints {
            attention: Endpoint {
                api: Api::Attention,
                base: Endpoint::check_base(Api::Attention, attention_url).map_err(ConfigError)?,
                secret: key("ATTENTION_API_KEY")?,
                scheme: attention_scheme,
            },
            vg: Endpoint {
                api: Api::Vg,
                base: Endpoint::check_base(Api::Vg, vg_url).map_err(ConfigError)?,
                secret: key("VG_API_TOKEN")?,
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
        // Every missing key at once: a 3 a.m. fix should not take two tries.
        let missing: Vec<String> = Api::ALL
            .into_iter()
            .zip(rows_per_api)
            .filter(|(api, n)| *n > 0 && self.get(*api).secret.is_none())
            .map(|(api, n)| {
                let var = match api {
                    Api::Attention => "ATTENTION_API_KEY",
                    Api::Vg => "VG_API_TOKEN",
                };
                format!("{var} is not set, and {n} row(s) need the {api} API")
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(ConfigError(format!(
            "{}; set {} (or rehearse with --sandbox)",
            missing.join("; "),
            if missing.len() > 1 { "them" } else { "it" }
        )))
    }
}

/// A key from the environment: `None` when unset or blank. A key that could
/// not go into an HTTP header as it is (not UTF-8, a control character such
/// as CR or LF, or a non-ASCII character) is refused up front, naming the
/// variable and the position, never the key: sent, it would silently go out
/// without `Authorization`.
fn read_key(var: &str) -> Result<Option<Secret>, String> {
    let Some(raw) = std::env::var_os(var) else {
        return Ok(None);
    };
    let Some(key) = raw.to_str() else {
        let at = raw
            .as_encoded_bytes()
            .utf8_chunks()
            .next()
            .map_or(0, |c| c.valid().chars().count());
        return Err(format!(
            "{var} is not valid UTF-8 (at character {}); set it to the key exactly as the API gave it",
            at + 1
        ));
    };
    if key.trim().is_empty() {
        return Ok(None);
    }
    if let Some((at, c)) = key
        .chars()
        .enumerate()
        .find(|(_, c)| !c.is_ascii_graphic() && *c != ' ')
    {
        let what = match c {
            '\r' => "a carriage return (CR)".to_owned(),
            '\n' => "a line feed (LF)".to_owned(),
            c if c.is_control() => format!("a control character (U+{:04X})", c as u32),
            c => format!("a non-ASCII character (U+{:04X})", c as u32),
        };
        return Err(format!(
            "{var} has {what} at character {}, which cannot be sent in an HTTP header; set it to the key exactly as the API gave it",
            at + 1
        ));
    }
    Ok(Some(Secret::new(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stay_one_segment() {
        for (id, want) in [
            ("a/b", "a%2Fb"),
            ("../x", "..%2Fx"),
            ("q?x=1", "q%3Fx%3D1"),
            ("h#1", "h%231"),
            ("sp ace", "sp%20ace"),
            ("ü%", "%C3%BC%25"),
        ] {
            assert_eq!(encode_segment(id), want);
        }
    }

    #[test]
    fn http_only_on_loopback() {
        assert!(Endpoint::check_base(Api::Vg, "http://127.0.0.1:9/x").is_ok());
        assert!(Endpoint::check_base(Api::Vg, "http://localhost:9").is_ok());
        assert!(Endpoint::check_base(Api::Vg, "http://[::1]:9").is_ok());
        assert!(Endpoint::check_base(Api::Vg, "http://10.0.0.1").is_err());
        assert!(Endpoint::check_base(Api::Vg, "http://example.com").is_err());
        assert_eq!(
            Endpoint::check_base(Api::Attention, "https://api.attention.tech/v2/").unwrap(),
            "https://api.attention.tech/v2"
        );
    }

    #[test]
    fn secrets_do_not_debug() {
        let e = Endpoint {
            api: Api::Attention,
            base: "https://x".into(),
            secret: Some(Secret::new("sk-live-123")),
            scheme: AuthScheme::Raw,
        };
        assert!(!format!("{e:?}").contains("sk-live-123"));
        assert_eq!(e.authorization().unwrap(), "sk-live-123");
    }
}
