//! One HTTP attempt ([`Executor::attempt`]): the request, the answer's
//! [`Verdict`], its body (stored up to [`MAX_STORED_BODY`]) and snapshot, and
//! the headers that pause an API (`Retry-After`, a spent quota).

use super::feed::Job;
use super::lane::ApiLane;
use super::{Executor, MAX_STORED_BODY};
use crate::audit::Snapshot;
use crate::edit::Api;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION, RETRY_AFTER};
use std::sync::Arc;
use std::time::Duration;

impl Executor {
    pub(super) async fn attempt(&self, job: &Job, lane: &ApiLane) -> Attempted {
        let started_ms = crate::audit::now_ms();
        let t0 = std::time::Instant::now();
        let mut req = self
            .client
            .request(job.method.clone(), &job.url)
            .timeout(self.settings.timeout);
        if let Some(auth) = &lane.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        if let Some(body) = &job.body {
            req = req
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let mut a = Attempted {
            started_ms,
            duration_ms: 0,
            http_status: None,
            error: None,
            response: None,
            snapshot: None,
            retry_after: None,
            quota_spent: false,
            stated: None,
            verdict: Verdict::Retry,
        };
        match req.send().await {
            Err(e) => {
                a.error = Some(describe(&e, self.settings.timeout));
            }
            Ok(resp) => {
                let status = resp.status();
                a.http_status = Some(status.as_u16());
                a.retry_after = resp.headers().get(RETRY_AFTER).and_then(parse_retry_after);
                a.stated = stated_rate(resp.headers());
                let resp_location = resp
                    .headers()
                    .get(LOCATION)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                if status.is_success() && a.retry_after.is_none() {
                    // The API says its quota is spent: pause as for a 429.
                    a.retry_after = quota_spent(resp.headers());
                    a.quota_spent = a.retry_after.is_some();
                }
                let (body, body_error) = read_body(resp).await;
                a.verdict = match status.as_u16() {
                    200..=299 => Verdict::Success,
                    401 | 403 => Verdict::AuthRejected(status.as_u16()),
                    429 => Verdict::RateLimited,
                    408 | 500..=599 => Verdict::Retry,
                    _ => Verdict::Final,
                };
                let location = status
                    .is_redirection()
                    .then(|| resp_location.clone())
                    .flatten();
                let text: Arc<str> = match String::from_utf8(body.bytes) {
                    Ok(t) => Arc::from(t),
                    Err(e) => Arc::from(String::from_utf8_lossy(e.as_bytes()).into_owned()),
                };
                let mut notes = Vec::new();
                if a.verdict == Verdict::Success {
                    // One parse: a body that reads as the envelope is JSON.
                    let doc = serde_json::from_str::<Envelope>(&text).ok();
                    a.snapshot = doc.as_ref().and_then(|d| snapshot(job, d));
                    if doc.is_none()
                        && !text.is_empty()
                        && serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err()
                        && !body.truncated
                    {
                        notes.push(
                            "the API answered success but its body is not JSON; stored as text"
                                .to_owned(),
                        );
                    }
                } else if status.is_redirection() {
                    notes.push(format!(
                        "HTTP {} {}: the API redirected to {}; convoy never follows a redirect with a write, so nothing was sent there. Check the base URL",
                        status.as_u16(),
                        status.canonical_reason().unwrap_or(""),
                        location.as_deref().unwrap_or("(no Location header)")
                    ));
                } else {
                    notes.push(error_text(status, &text));
                }
                if let Some(e) = body_error {
                    notes.push(e);
                } else if body.truncated {
                    notes.push(format!(
                        "response truncated: {} bytes, {} kept",
                        body.full_len,
                        text.len()
                    ));
                }
                if !notes.is_empty() {
                    a.error = Some(notes.join("; "));
                }
                if !text.is_empty() {
                    a.response = Some(text);
                }
            }
        }
        a.duration_ms = t0.elapsed().as_millis() as u64;
        a
    }
}

/// The result of one HTTP attempt.
pub(super) struct Attempted {
    /// Milliseconds since 1970 (UTC).
    pub(super) started_ms: i64,
    pub(super) duration_ms: u64,
    pub(super) http_status: Option<u16>,
    pub(super) error: Option<String>,
    pub(super) response: Option<Arc<str>>,
    pub(super) snapshot: Option<Snapshot>,
    pub(super) retry_after: Option<Duration>,
    /// A success whose `RateLimit-Remaining` was 0.
    pub(super) quota_spent: bool,
    /// The limit the API stated, in calls per second ([`stated_rate`]).
    pub(super) stated: Option<f64>,
    pub(super) verdict: Verdict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Success,
    /// 429: retried, and the pacer told.
    RateLimited,
    /// 408, 5xx, timeouts, connection errors.
    Retry,
    /// 401/403: the API is stopped for the batch.
    AuthRejected(u16),
    /// Any other 4xx.
    Final,
}

pub(super) struct Body {
    pub(super) bytes: Vec<u8>,
    pub(super) full_len: usize,
    pub(super) truncated: bool,
}

pub(super) async fn read_body(mut resp: reqwest::Response) -> (Body, Option<String>) {
    let mut body = Body {
        bytes: Vec::new(),
        full_len: 0,
        truncated: false,
    };
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                body.full_len += chunk.len();
                let room = MAX_STORED_BODY.saturating_sub(body.bytes.len());
                if chunk.len() > room {
                    body.truncated = true;
                }
                body.bytes
                    .extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => return (body, None),
            Err(e) => {
                return (
                    body,
                    Some(format!("the response body broke off: {}", chain(&e))),
                );
            }
        }
    }
}

/// The parts of a response body convoy looks at; the rest is skipped, not built.
#[derive(serde::Deserialize)]
pub(super) struct Envelope<'a> {
    #[serde(borrow)]
    pub(super) attributes: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    pub(super) data: Option<&'a serde_json::value::RawValue>,
}

/// Whether the body holds the conversation (Attention's resource, as the
/// body itself or its `data`; VG's `data`): the `conversations` view then
/// shows it as the conversation's latest snapshot.
pub(super) fn snapshot(job: &Job, doc: &Envelope) -> Option<Snapshot> {
    let holds = match (job.api, doc.attributes, doc.data) {
        (Api::Attention, Some(_), _) => true,
        (Api::Attention, None, Some(data)) => serde_json::from_str::<Envelope>(data.get())
            .ok()
            .is_some_and(|inner| inner.attributes.is_some()),
        (Api::Vg, _, Some(data)) => data.get().starts_with('{'),
        _ => false,
    };
    holds.then(|| Snapshot {
        api: job.api,
        conversation_id: job.conversation_id.clone(),
    })
}

pub(super) fn error_text(status: reqwest::StatusCode, text: &str) -> String {
    let parsed = serde_json::from_str::<serde_json::Value>(text).ok();
    let detail = parsed
        .as_ref()
        .and_then(|v| {
            ["message", "error", "detail", "title"]
                .iter()
                .find_map(|k| v.get(k).and_then(|m| m.as_str()).map(str::to_owned))
                .or_else(|| v.get("errors").map(|e| e.to_string()))
        })
        .unwrap_or_else(|| {
            let cut = (0..=text.len().min(200))
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            let text: String = text[..cut].split_whitespace().collect::<Vec<_>>().join(" ");
            if text.starts_with('<') {
                "(an HTML page)".into()
            } else {
                text
            }
        });
    let reason = status.canonical_reason().unwrap_or("");
    if detail.is_empty() {
        format!("HTTP {} {reason}", status.as_u16())
    } else {
        format!("HTTP {} {reason}: {detail}", status.as_u16())
    }
}

pub(super) fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {}", crate::text::show_duration(timeout));
    }
    let kind = if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // reqwest's errors name the URL: ids are in it, keys never are.
    format!("{kind}: {}", chain(e))
}

pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        cur = c.source();
    }
    s
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(s).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// `RateLimit-Remaining: 0` (or `X-RateLimit-Remaining: 0`): how long until
/// `RateLimit-Reset` (delta-seconds, or a Unix time as some `X-` headers send).
pub fn quota_spent(headers: &HeaderMap) -> Option<Duration> {
    let get = |names: [&str; 2]| {
        let v = names.iter().find_map(|n| headers.get(*n))?;
        v.to_str().ok()?.trim().parse::<f64>().ok()
    };
    if get(["ratelimit-remaining", "x-ratelimit-remaining"])? != 0.0 {
        return None;
    }
    let reset = get(["ratelimit-reset", "x-ratelimit-reset"]).filter(|r| r.is_finite())?;
    let secs = if reset > 1e9 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        reset - now.as_secs_f64()
    } else {
        reset
    };
    Some(Duration::from_secs_f64(secs.max(0.0)))
}

/// The limit an API states for itself, in calls per second: the strictest
/// of the quota policies it sends with a window, as the IETF draft writes
/// them (`RateLimit-Policy: 100;w=60`, `"burst";q=100;w=60`, also in
/// `RateLimit-Limit`). `None` when it states none with a window (a bare
/// `X-RateLimit-Limit` does not say per what).
pub fn stated_rate(headers: &HeaderMap) -> Option<f64> {
    let mut strictest: Option<f64> = None;
    for name in ["ratelimit-policy", "x-ratelimit-policy", "ratelimit-limit"] {
        for value in headers.get_all(name) {
            let Ok(text) = value.to_str() else { continue };
            for policy in text.split(',') {
                let (mut quota, mut window) = (None, None);
                for (i, part) in policy.split(';').map(str::trim).enumerate() {
                    match part.split_once('=') {
                        Some(("q", v)) => quota = v.trim().parse::<f64>().ok(),
                        Some(("w", v)) => window = v.trim().parse::<f64>().ok(),
                        Some(_) => {}
                        None if i == 0 => quota = part.parse::<f64>().ok(),
                        None => {}
                    }
                }
                if let (Some(q), Some(w)) = (quota, window)
                    && q > 0.0
                    && w > 0.0
                {
                    let rate = q / w;
                    strictest = Some(strictest.map_or(rate, |r| r.min(rate)));
                }
            }
        }
    }
    strictest.filter(|r| r.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_quota_pauses_until_its_reset() {
        let h = |pairs: &[(&'static str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            m
        };
        let spent = h(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "2")]);
        assert_eq!(quota_spent(&spent), Some(Duration::from_secs(2)));
        let left = h(&[("ratelimit-remaining", "3"), ("ratelimit-reset", "2")]);
        assert_eq!(quota_spent(&left), None);
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 30;
        let x = h(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &epoch.to_string()),
        ]);
        let d = quota_spent(&x).unwrap();
        assert!((28..=30).contains(&d.as_secs()), "{d:?}");
        assert_eq!(quota_spent(&h(&[("ratelimit-remaining", "0")])), None);
    }

    #[test]
    fn a_stated_limit_is_read_from_its_policies() {
        let h = |name: &'static str, v: &str| {
            let mut m = HeaderMap::new();
            m.insert(name, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(stated_rate(&h("ratelimit-policy", "50;w=1")), Some(50.0));
        assert_eq!(
            stated_rate(&h("ratelimit-policy", "100;w=10, 5000;w=3600")),
            Some(5000.0 / 3600.0)
        );
        let named = h(
            "ratelimit-policy",
            "\"burst\";q=100;w=60, \"day\";q=1000;w=86400",
        );
        assert_eq!(stated_rate(&named), Some(1000.0 / 86400.0));
        assert_eq!(
            stated_rate(&h("ratelimit-limit", "100, 100;w=60")),
            Some(100.0 / 60.0)
        );
        assert_eq!(stated_rate(&h("ratelimit-limit", "100")), None, "per what?");
        assert_eq!(stated_rate(&h("x-ratelimit-limit", "5000")), None);
        assert_eq!(stated_rate(&h("ratelimit-policy", "0;w=1, x;w=y")), None);
    }

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("3")),
            Some(Duration::from_secs(3))
        );
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap())
            .unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        let past = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(60));
        assert_eq!(
            parse_retry_after(&HeaderValue::from_str(&past).unwrap()),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(&HeaderValue::from_static("soon")), None);
    }
}
