//! `--metrics FILE`: a finished batch's figures in the Prometheus text
//! exposition format, for node_exporter's textfile collector (and any
//! scheduler that reads it). Written by hand (the format is a few lines of
//! text; the `prometheus` crate would bring a registry this never needs),
//! to `FILE.tmp` and renamed, so a collector never reads half a file.

use super::Night;
use crate::audit::RowStatus;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// The page of metrics for `night`; `last_success_ms` is when the latest
/// batch that completed finished (any batch of the database).
pub fn text(night: &Night, last_success_ms: Option<i64>) -> String {
    let d = &night.detail;
    let batch = &d.line.batch;
    let mut out = String::new();
    let mut family =
        |name: &str, help: &str, kind: &str, samples: Vec<(Vec<(&str, &str)>, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let labels: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                let labels = if labels.is_empty() {
                    String::new()
                } else {
                    format!("{{{}}}", labels.join(","))
                };
                let _ = writeln!(out, "{name}{labels} {}", number(value));
            }
        };
    let b = ("batch", batch.as_str());
    let mut rows: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    for line in &d.by_op {
        let api = line.api.clone().unwrap_or_else(|| "none".to_owned());
        let c = &line.counts;
        for status in RowStatus::ALL {
            *rows.entry((api.clone(), status.as_str())).or_default() += c.get(status);
        }
    }
    family(
        "convoy_rows",
        "Rows of the batch, by API and status.",
        "gauge",
        rows.iter()
            .map(|((api, status), n)| {
                (
                    vec![b, ("api", api.as_str()), ("status", status)],
                    *n as f64,
                )
            })
            .collect(),
    );
    family(
        "convoy_batch_duration_seconds",
        "From the batch's creation to the end of its last pass.",
        "gauge",
        vec![(vec![b], d.line.duration_seconds)],
    );
    family(
        "convoy_batch_send_seconds",
        "Time spent sending, over all passes.",
        "gauge",
        vec![(vec![b], d.line.send_seconds)],
    );
    let codes: Vec<(String, String, u64)> = night
        .apis
        .iter()
        .flat_map(|a| {
            a.responses.iter().map(|(code, n)| {
                let code = code.map_or("none".to_owned(), |c| c.to_string());
                (a.api.name().to_owned(), code, *n)
            })
        })
        .collect();
    family(
        "convoy_http_responses",
        "HTTP answers to the batch's writes, by API and status code (none: no answer).",
        "gauge",
        codes
            .iter()
            .map(|(api, code, n)| {
                (
                    vec![b, ("api", api.as_str()), ("code", code.as_str())],
                    *n as f64,
                )
            })
            .collect(),
    );
    let pacing: Vec<(String, f64, f64)> = d
        .pacing
        .as_ref()
        .and_then(|p| p.as_array())
        .map(|lines| {
            lines
                .iter()
                .filter(|l| l["calls"].as_u64().unwrap_or(0) > 0)
                .map(|l| {
                    let api = l["api"].as_str().unwrap_or("").to_owned();
                    let paused = l["paused_seconds"].as_f64().unwrap_or(0.0);
                    (api, paused, l["calls_per_second"].as_f64().unwrap_or(0.0))
                })
                .collect()
        })
        .unwrap_or_default();
    family(
        "convoy_api_paused_seconds",
        "Time each API was paused by Retry-After, a spent quota or an outage, in the last pass.",
        "gauge",
        pacing
            .iter()
            .map(|(api, p, _)| (vec![b, ("api", api.as_str())], *p))
            .collect(),
    );
    family(
        "convoy_api_calls_per_second",
        "Calls each API was sent per second of the last pass.",
        "gauge",
        pacing
            .iter()
            .map(|(api, _, r)| (vec![b, ("api", api.as_str())], *r))
            .collect(),
    );
    if let Some(code) = d.exit_code {
        family(
            "convoy_exit_code",
            "The exit code of the batch's last run, resume or apply (0: every row succeeded).",
            "gauge",
            vec![(vec![b], code as f64)],
        );
    }
    if let Some(ms) = last_success_ms {
        family(
            "convoy_batch_last_success_timestamp_seconds",
            "When the latest batch in the audit database that completed (every row succeeded) finished.",
            "gauge",
            vec![(vec![], ms as f64 / 1000.0)],
        );
    }
    out
}

/// Writes `text` to `path` through `path.tmp` and a rename.
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// A label value as the format quotes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.is_finite() {
        format!("{v}")
    } else {
        "NaN".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
    }
}
