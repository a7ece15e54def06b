//! Hardening: the bad-input corpus (`tests/corpus/`), the fault matrix
//! against the sandbox, and keys that never leave the process.

use crate::common::*;
use convoy::sandbox::{Config, Scripted};
use std::time::Duration;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");

/// Runs `convoy run SOURCE ARGS` against a fresh sandbox and checks the
/// exit code, the words of the message, that nothing panicked, and how many
/// requests were sent (never one for an invalid row).
async fn case(name: &str, source: &str, args: &[&str], exit: i32, words: &str, sent: usize) {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let mut all = vec!["run", source];
    all.extend(args);
    let out = w.run(Some(&sb), &all).await;
    let text = format!("{}{}", out.stdout(), out.stderr());
    assert_eq!(out.code(), exit, "{name}: exit code\n{text}");
    assert!(
        text.contains(words),
        "{name}: expected {words:?} in\n{text}"
    );
    assert!(!text.contains("panicked"), "{name}: panicked\n{text}");
    assert_eq!(sb.requests().len(), sent, "{name}: requests sent\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_of_the_bad_input_corpus() {
    let manifest = std::fs::read_to_string(format!("{CORPUS}/cases.txt")).unwrap();
    let mut n = 0;
    for line in manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split(" | ").map(str::trim).collect();
        let [file, args, exit, words, sent] = f[..] else {
            panic!("bad manifest line {line:?}")
        };
        let args: Vec<&str> = args.split_whitespace().collect();
        case(
            file,
            &format!("{CORPUS}/{file}"),
            &args,
            exit.parse().unwrap(),
            words,
            sent.parse().unwrap(),
        )
        .await;
        n += 1;
    }
    assert!(n >= 30, "the corpus has {n} cases");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sources_made_in_code() {
    let w = Work::new();
    // A 1 MB cell is data like any other: sent whole.
    let big = "x".repeat(1 << 20);
    let src = w.write(
        "big.csv",
        &format!("op,conversation_id,title\nattention.update,c1,{big}\n"),
    );
    case("1 MB cell", src.to_str().unwrap(), &[], 0, "1 succeeded", 1).await;

    // A directory, a missing file.
    case(
        "directory",
        w.dir.path().to_str().unwrap(),
        &[],
        2,
        "is a directory",
        0,
    )
    .await;
    case(
        "missing",
        w.path("nope.csv").to_str().unwrap(),
        &[],
        2,
        "no such file",
        0,
    )
    .await;

    // Not a SQLite database, yet --table given.
    let fake = w.write("fake.db", "this is not a database\n");
    case(
        "not sqlite",
        fake.to_str().unwrap(),
        &["--table", "edits"],
        2,
        "is not a SQLite database",
        0,
    )
    .await;

    // A real SQLite file: a missing table, and a table name that tries SQL injection.
    let db = w
        .sqlite(
            "edits.db",
            "CREATE TABLE edits (op TEXT, conversation_id TEXT, title BLOB); \
             INSERT INTO edits VALUES ('attention.update', 'c1', 'One'), ('attention.update', 'c2', x'ff00fe');"
                .into(),
        )
        .await;
    let dbs = db.to_str().unwrap();
    case(
        "missing table",
        dbs,
        &["--table", "nightly"],
        2,
        "has no table \"nightly\"; pass --table NAME (tables there: edits)",
        0,
    )
    .await;
    case(
        "injection",
        dbs,
        &["--table", "edits\"; DROP TABLE edits; --"],
        2,
        "has no table",
        0,
    )
    .await;
    case(
        "blob cell",
        dbs,
        &[],
        1,
        "row 2, column title: holds bytes that are not UTF-8 text",
        1,
    )
    .await;
}

/// Runs four rows (one per conversation) with `faults` scripted for `c-f`,
/// then checks that nothing is lost and the `attempts` table matches what
/// the server saw. Returns the audit row of `c-f`: (status, attempts, http_status, error, response length).
async fn fault(
    faults: Vec<Scripted>,
    args: &[&str],
) -> (String, i64, Option<i64>, Option<String>, Option<i64>) {
    let sb = plain_sandbox().await;
    sb.script("c-f", faults);
    let w = Work::new();
    w.write("f.csv", "op,conversation_id,title\nattention.update,c-a,A\nattention.update,c-f,F\nattention.update,c-b,B\nattention.archive,c-c,\n");
    let mut all = vec!["run", "f.csv", "--batch", "f"];
    all.extend(args);
    let out = w.run(Some(&sb), &all).await;
    assert!(
        matches!(out.code(), 0 | 1),
        "{}{}",
        out.stdout(),
        out.stderr()
    );
    let db = w.db().await;
    let rows = audit_rows(&db).await;
    assert_eq!(rows.len(), 4, "a row went missing");
    for (key, status, _, _) in &rows {
        assert!(
            status == "succeeded" || status == "failed",
            "row {key} ended {status}"
        );
    }
    let (failed_without_error,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM audit WHERE status = 'failed' AND (error IS NULL OR error = '')",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        failed_without_error, 0,
        "a failed row has no error recorded"
    );
    let (attempts,): (i64,) = sqlx::query_as("SELECT count(*) FROM attempts")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(
        attempts as usize,
        sb.requests().len(),
        "the attempts table does not match what the server saw"
    );
    sqlx::query_as("SELECT status, attempts, http_status, error, length(response) FROM audit WHERE conversation_id = 'c-f'")
        .fetch_one(&db)
        .await
        .unwrap()
}

fn status(code: u16, retry_after: Option<&str>) -> Scripted {
    Scripted::Status {
        status: code,
        retry_after: retry_after.map(str::to_owned),
        body: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix() {
    // 429s with Retry-After in seconds, then in an HTTP date.
    let r = fault(vec![status(429, Some("1")), status(429, Some("0"))], &[]).await;
    assert_eq!((r.0.as_str(), r.1, r.2), ("succeeded", 3, Some(200)));
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(1));
    let r = fault(vec![status(429, Some(&date))], &[]).await;
    assert_eq!((r.0.as_str(), r.1), ("succeeded", 2));

    // A burst of 500, 502 (an HTML page) and 503.
    let html = Scripted::Status {
        status: 502,
        retry_after: None,
        body: Some("<html><body><h1>502 Bad Gateway</h1></body></html>".into()),
    };
    let r = fault(
        vec![status(500, None), html.clone(), status(503, None)],
        &[],
    )
    .await;
    assert_eq!((r.0.as_str(), r.1), ("succeeded", 4));

    // Attempts run out: failed, with the last answer and how many tries.
    let r = fault(
        vec![html.clone(), html.clone(), html],
        &["--max-attempts", "3"],
    )
    .await;
    assert_eq!((r.0.as_str(), r.1, r.2), ("failed", 3, Some(502)));
    let e = r.3.unwrap();
    assert!(
        e.contains("gave up after 3 attempts")
            && e.contains("HTTP 502 Bad Gateway: (an HTML page)"),
        "{e}"
    );

    // Connections dropped before and after the request reached the API.
    let r = fault(
        vec![
            Scripted::Drop { applied: false },
            Scripted::Drop { applied: true },
        ],
        &[],
    )
    .await;
    assert_eq!((r.0.as_str(), r.1), ("succeeded", 3));

    // Slower than --timeout: timed out, retried.
    let r = fault(
        vec![Scripted::Slow(Duration::from_secs(5))],
        &["--timeout", "300ms"],
    )
    .await;
    assert_eq!((r.0.as_str(), r.1), ("succeeded", 2));

    // A 200 whose body is not JSON: the edit happened, so succeeded, noted, stored as text.
    let r = fault(vec![Scripted::Body("OK, updated".into())], &[]).await;
    assert_eq!((r.0.as_str(), r.1, r.4), ("succeeded", 1, Some(11)));
    assert!(r.3.unwrap().contains("not JSON"));

    // A 10 MB body: stored truncated, and marked so.
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(10 << 20));
    let r = fault(vec![Scripted::Body(huge)], &[]).await;
    assert_eq!((r.0.as_str(), r.4), ("succeeded", Some(1 << 20)));
    assert!(r.3.unwrap().contains("response truncated"));

    // A 404 is final; a 400 too.
    let r = fault(vec![status(404, None)], &[]).await;
    assert_eq!((r.0.as_str(), r.1, r.2), ("failed", 1, Some(404)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_ends_with_every_row_succeeded() {
    let sb = sandbox(Config {
        rate_limit: Some(20.0),
        ..Config::default()
    })
    .await;
    let w = Work::new();
    let rows: Vec<String> = (0..60).map(|i| format!("attention.archive,c{i}")).collect();
    let src = w.write("s.csv", &csv("op,conversation_id", &rows));
    w.run(
        Some(&sb),
        &[
            "run",
            src.to_str().unwrap(),
            "--concurrency",
            "16",
            "--max-attempts",
            "10",
        ],
    )
    .await
    .expect(0);
    let reqs = sb.requests();
    assert!(reqs.iter().any(|r| r.status == 429), "no storm happened");
    assert_eq!(reqs.iter().filter(|r| r.status == 200).count(), 60);
    let (attempts,): (i64,) = sqlx::query_as("SELECT count(*) FROM attempts")
        .fetch_one(&w.db().await)
        .await
        .unwrap();
    assert_eq!(attempts as usize, reqs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stay_secret_on_every_failure_path() {
    let key = format!("sk-live-{:016x}", fastrand::u64(..));
    let token = format!("vg-tok-{:016x}", fastrand::u64(..));
    let sb = sandbox(Config {
        attention_key: key.clone(),
        vg_token: "other".into(),
        ..Config::default()
    })
    .await;
    sb.script(
        "c-5xx",
        [status(503, None), Scripted::Drop { applied: false }],
    );
    let w = Work::new();
    w.write(
        "k.csv",
        "op,conversation_id,agent_id,state\nattention.archive,c-5xx,,\nattention.archive,c-ok,,\nvg.update,v1,a1,open\nattention.nope,c3,,\n",
    );
    let dead = "http://127.0.0.1:9/v2";
    let mut outputs = Vec::new();
    for args in [
        vec!["run", "k.csv", "--batch", "k"], // 401 from VG, 503 + drop on Attention
        // connection refused: the API is down from the start; waited for briefly
        vec![
            "run",
            "k.csv",
            "--batch",
            "k2",
            "--attention-url",
            dead,
            "--outage-wait",
            "1s",
        ],
        vec!["run", "k.csv", "--dry-run"],
        vec!["status", "k", "--json"],
        vec!["failures", "k"],
        vec!["resume", "k"],
    ] {
        let out = w
            .convoy(Some(&sb))
            .env("ATTENTION_API_KEY", &key)
            .env("VG_API_TOKEN", &token)
            .args(&args)
            .output()
            .await
            .unwrap();
        outputs.push(out.stdout);
        outputs.push(out.stderr);
    }
    assert!(
        sb.requests()
            .iter()
            .any(|r| r.authorization.as_deref() == Some(key.as_str())),
        "the key was never sent"
    );
    for o in &outputs {
        let s = String::from_utf8_lossy(o);
        assert!(
            !s.contains(&key) && !s.contains(&token),
            "a key in the output:\n{s}"
        );
    }
    let bytes = db_bytes(&w.db);
    assert!(
        !contains(&bytes, &key) && !contains(&bytes, &token),
        "a key in the audit database"
    );
}
