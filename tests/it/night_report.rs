//! `convoy report` (one HTML page per batch) and `--metrics FILE` (issue 39):
//! a real night against a limited sandbox, its page parsed with a real HTML
//! parser and its metrics with a Prometheus text-format parser, each checked
//! against `status NAME --json` and the audit tables; and the page opened in
//! headless Chromium when it is installed.

use crate::common::*;
use convoy::sandbox::{Config, Sandbox};
use scraper::{Html, Selector};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// A night with failures (404s), 429s with `Retry-After` (pauses) on both
/// APIs, ~20 ms away: 300 Attention rows (a few on conversations that do not
/// exist) and 60 VG rows, `--metrics night.prom`. Exit 1.
async fn night(w: &Work) -> Sandbox {
    let sb = sandbox(Config {
        rate_limit: Some(60.0),
        latency: Some((Duration::from_millis(15), Duration::from_millis(25))),
        ..Config::default()
    })
    .await;
    let mut rows = Vec::new();
    for i in 0..300 {
        let id = if i % 50 == 7 {
            format!("missing-{i}")
        } else {
            format!("c{}", i % 40)
        };
        rows.push(format!("attention.update,{id},,Title {i}"));
        if i % 5 == 0 {
            rows.push(format!("vg.update,v{},agent,Title {i}", i % 20));
        }
    }
    w.write(
        "night.csv",
        &csv("op,conversation_id,agent_id,title", &rows),
    );
    let args = [
        "run",
        "night.csv",
        "--batch",
        "n1",
        "--metrics",
        "night.prom",
    ];
    w.run(Some(&sb), &args).await.expect(1);
    sb
}

fn select<'a>(doc: &'a Html, css: &str) -> Vec<scraper::ElementRef<'a>> {
    doc.select(&Selector::parse(css).unwrap()).collect()
}

fn text(e: &scraper::ElementRef) -> String {
    e.text().collect::<String>().trim().to_owned()
}

fn number(doc: &Html, css: &str) -> u64 {
    let cells = select(doc, css);
    assert_eq!(cells.len(), 1, "one cell for {css}");
    text(&cells[0]).parse().unwrap()
}

async fn status_json(w: &Work, name: &str) -> Value {
    let out = w.run(None, &["status", name, "--json"]).await;
    out.expect(0);
    serde_json::from_str(&out.stdout()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_what_status_and_the_audit_say() {
    let w = Work::new();
    let _sb = night(&w).await;
    let out = w
        .run(None, &["report", "n1", "--output", "page.html"])
        .await;
    out.expect(0);
    let page = std::fs::read_to_string(w.path("page.html")).unwrap();
    let doc = Html::parse_document(&page);
    let status = status_json(&w, "n1").await;

    // Nothing from the network: no script, no external stylesheet or font.
    assert!(select(&doc, "script").is_empty(), "the page runs no script");
    assert!(select(&doc, "link").is_empty(), "the page links nothing");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no address in the page"
    );

    // The counts, for the batch and per API, as status --json has them.
    for s in [
        "succeeded",
        "failed",
        "invalid",
        "held",
        "skipped",
        "pending",
    ] {
        let want = status["counts"][s].as_u64().unwrap();
        let css = format!("#counts tr[data-api=all] td[data-status={s}]");
        assert_eq!(number(&doc, &css), want, "{s} rows");
    }
    for api in ["attention", "vg"] {
        let want: u64 = status["by_op"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["api"] == api)
            .map(|l| l["counts"]["succeeded"].as_u64().unwrap())
            .sum();
        let css = format!("#counts tr[data-api={api}] td[data-status=succeeded]");
        assert_eq!(number(&doc, &css), want, "{api} succeeded");
    }
    assert_eq!(status["counts"]["failed"], 6, "the night has its six 404s");
    assert_eq!(number(&doc, "#exit-code"), 1);

    // The failure clusters, each with its count and example row.
    let clusters = status["clusters"].as_array().unwrap();
    let rows = select(&doc, "#clusters tr.cluster");
    assert_eq!(rows.len(), clusters.len());
    for (row, c) in rows.iter().zip(clusters) {
        let cell = |css: &str| text(&row.select(&Selector::parse(css).unwrap()).next().unwrap());
        assert_eq!(cell("td.count"), c["count"].to_string());
        assert_eq!(cell("td.example-row"), c["example_row"].as_str().unwrap());
    }
    let resume = select(&doc, "#resume-command");
    assert_eq!(text(&resume[0]), "convoy resume n1");

    // What bounded each API, in status's words.
    let bounds = text(&select(&doc, "#bounds")[0]);
    for line in status["pacing"].as_array().unwrap() {
        let bound = line["bound"].as_str().unwrap();
        assert!(bounds.contains(bound), "the page says {bound:?}: {bounds}");
    }

    // The 429 marks stand at the seconds the audit shows, with their counts.
    let db = w.db().await;
    for api in ["attention", "vg"] {
        let svg = select(&doc, &format!("svg.timeline[data-api={api}]"));
        assert_eq!(svg.len(), 1, "one timeline for {api}");
        let attr = |n: &str| svg[0].value().attr(n).unwrap().to_owned();
        assert_eq!(
            attr("data-bin-seconds"),
            "1",
            "a short night is drawn per second"
        );
        let origin: i64 = attr("data-origin-ms").parse().unwrap();
        let limited: Vec<(i64,)> = sqlx::query_as(
            "SELECT t.started_ms FROM audit_attempts t JOIN audit_rows r \
             ON r.batch_no = t.batch_no AND r.row_key = t.row_key \
             WHERE r.api = ?1 AND t.http_status = 429",
        )
        .bind(api)
        .fetch_all(&db)
        .await
        .unwrap();
        assert!(!limited.is_empty(), "{api} drew 429s");
        let mut want: BTreeMap<i64, u64> = BTreeMap::new();
        for (ms,) in limited {
            *want.entry((ms - origin) / 1000).or_default() += 1;
        }
        let mut drawn: BTreeMap<i64, u64> = BTreeMap::new();
        for m in svg[0].select(&Selector::parse("line.m429").unwrap()) {
            let v = m.value();
            let second = v.attr("data-second").unwrap().parse().unwrap();
            drawn.insert(second, v.attr("data-count").unwrap().parse().unwrap());
        }
        assert_eq!(drawn, want, "{api}: 429s by second");
        // Its Retry-After pauses are shaded, and the pace held is drawn.
        assert!(
            !svg[0]
                .select(&Selector::parse("rect.held-paused").unwrap())
                .collect::<Vec<_>>()
                .is_empty(),
            "{api}: its pauses are shaded"
        );
        assert!(
            svg[0]
                .select(&Selector::parse("path.pace").unwrap())
                .next()
                .is_some(),
            "{api}: the pace held is drawn"
        );
        let p50 = select(
            &doc,
            &format!("table.latency[data-api={api}] td[data-q=p50]"),
        );
        let ms: u64 = text(&p50[0]).trim_end_matches(" ms").parse().unwrap();
        assert!(
            (10..=200).contains(&ms),
            "{api}: p50 of {ms} ms, the sandbox ~20 ms away"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_parse_and_match_the_audit() {
    let w = Work::new();
    let _sb = night(&w).await;
    let text = std::fs::read_to_string(w.path("night.prom")).unwrap();
    assert!(
        !w.path("night.prom.tmp").exists(),
        "the temp file was renamed"
    );
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) => v,
                _ => panic!("{name} is a gauge"),
            })
    };
    let status = status_json(&w, "n1").await;
    for api in ["attention", "vg"] {
        for s in ["succeeded", "failed", "pending"] {
            let want: u64 = status["by_op"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|l| l["api"] == api)
                .map(|l| l["counts"][s].as_u64().unwrap())
                .sum();
            let labels = [("batch", "n1"), ("api", api), ("status", s)];
            assert_eq!(
                value("convoy_rows", &labels),
                Some(want as f64),
                "{api} {s}"
            );
        }
    }
    let db = w.db().await;
    let codes: Vec<(String, Option<i64>, i64)> = sqlx::query_as(
        "SELECT r.api, t.http_status, count(*) FROM audit_attempts t JOIN audit_rows r \
         ON r.batch_no = t.batch_no AND r.row_key = t.row_key GROUP BY 1, 2",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(
        codes.iter().any(|c| c.1 == Some(429)),
        "the night drew 429s"
    );
    for (api, code, n) in codes {
        let code = code.map_or("none".to_owned(), |c| c.to_string());
        let labels = [
            ("batch", "n1"),
            ("api", api.as_str()),
            ("code", code.as_str()),
        ];
        assert_eq!(
            value("convoy_http_responses", &labels),
            Some(n as f64),
            "{api} {code}"
        );
    }
    assert_eq!(value("convoy_exit_code", &[("batch", "n1")]), Some(1.0));
    let secs = value("convoy_batch_duration_seconds", &[("batch", "n1")]).unwrap();
    let want = status["duration_seconds"].as_f64().unwrap();
    assert!((secs - want).abs() < 0.01, "{secs} s against {want} s");
    // No batch completed yet: no last-success timestamp to alert on.
    assert_eq!(
        value("convoy_batch_last_success_timestamp_seconds", &[]),
        None
    );

    // A night that completes sets it, to when it finished.
    w.write("ok.csv", "op,conversation_id\nattention.archive,c1\n");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    w.run(
        None,
        &[
            "run",
            "ok.csv",
            "--sandbox",
            "--batch",
            "ok",
            "--metrics",
            "ok.prom",
        ],
    )
    .await
    .expect(0);
    let text = std::fs::read_to_string(w.path("ok.prom")).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let last = scrape
        .samples
        .iter()
        .find(|s| s.metric == "convoy_batch_last_success_timestamp_seconds")
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) => v,
            _ => 0.0,
        })
        .expect("a last-success timestamp");
    assert!(
        last >= before - 1.0 && last <= before + 60.0,
        "{last} against {before}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_draws_the_latest_batch_unless_named() {
    let w = Work::new();
    w.write("a.csv", "op,conversation_id\nattention.archive,c1\n");
    for name in ["first", "second"] {
        w.run(None, &["run", "a.csv", "--sandbox", "--batch", name])
            .await
            .expect(0);
    }
    let out = w.run(None, &["report"]).await;
    out.expect(0);
    let doc = Html::parse_document(&out.stdout());
    assert_eq!(text(&select(&doc, "title")[0]), "convoy: second");
    let out = w.run(None, &["report", "first"]).await;
    let doc = Html::parse_document(&out.stdout());
    assert_eq!(text(&select(&doc, "title")[0]), "convoy: first");
    let out = w.run(None, &["report", "nope"]).await;
    out.expect(2);
    assert!(
        out.stderr().contains("no batch named nope"),
        "{}",
        out.stderr()
    );
}

/// The page opened in a real browser: headless Chromium renders it and
/// logs no console error. Skipped, saying so, where Chromium is not installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_renders_in_chromium_without_console_errors() {
    let Some(chromium) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!("skipped: Chromium is not installed (Debian's chromium package)");
        return;
    };
    let w = Work::new();
    let _sb = night(&w).await;
    w.run(None, &["report", "n1", "--output", "page.html"])
        .await
        .expect(0);
    let shot = w.path("page.png");
    let out = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--hide-scrollbars",
            "--window-size=1100,2600",
        ])
        .arg(format!("--user-data-dir={}", w.path("chromium").display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", w.path("page.html").display()))
        .kill_on_drop(true)
        .output()
        .await
        .expect("run chromium");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {log}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a screenshot of a drawn page"
    );
}

/// To a terminal, the page is not written: convoy says how to save it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_to_a_terminal_says_how_to_save_the_page() {
    let w = Work::new();
    w.write("a.csv", "op,conversation_id\nattention.archive,c1\n");
    w.run(None, &["run", "a.csv", "--sandbox", "--batch", "t"])
        .await
        .expect(0);
    // `script` runs the command on a pseudo-terminal (util-linux).
    let convoy = env!("CARGO_BIN_EXE_convoy");
    let cmd = format!("{convoy} --db {} report t", w.db.display());
    let out = tokio::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .await
        .expect("run script");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{seen}");
    assert!(seen.contains("convoy report t > night.html"), "{seen}");
    assert!(!seen.contains("<html"), "no page on the terminal: {seen}");
}
