//! `convoy run` end to end: what reaches the API, in what order, how
//! failures are retried or stopped, and what the audit database says.

use crate::common::*;
use convoy::sandbox::{Config, Scripted};
use serde_json::{Value, json};
use std::time::Duration;

const HEADER: &str = "row_id,op,conversation_id,agent_id,title,labels,label.priority,skip_analysis,intelligence,opportunity_id,conversation,state,tags";

fn body(r: &convoy::sandbox::Logged) -> Value {
    serde_json::from_str(&r.body).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_op_sends_its_exact_method_path_headers_and_body() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let src = w.write(
        "ops.csv",
        &csv(
            HEADER,
            &[
                r#"r1,attention.set_labels,c-1,,,"{""stage"":""won""}",high,true,,,,,"#.into(),
                r#"r2,attention.update,c-2,,New title,"{""a"":""b""}",,,,,,,"#.into(),
                r#"r3,attention.confirm_crm,c-3,,,,,,"[{""id"":""i1"",""key"":""k"",""value"":""v"",""title"":""T""}]",opp-9,,,"#.into(),
                r#"r4,attention.archive,c-4,,,,,,,,,,"#.into(),
                r#"r5,vg.update,v-5,ag-1,Hello,,,,,,"{""userName"":""Ann""}",completed,"[""x"",""y""]""#.into(),
            ],
        ),
    );
    w.run(Some(&sb), &["run", src.to_str().unwrap(), "--batch", "ops"])
        .await
        .expect(0);

    let reqs = sb.requests();
    assert_eq!(reqs.len(), 5, "{reqs:#?}");
    let find = |id: &str| {
        reqs.iter()
            .find(|r| r.segments.iter().any(|s| s == id))
            .unwrap_or_else(|| panic!("no call for {id}"))
    };

    let r = find("c-1");
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("PUT", "/v2/conversations/c-1/labels")
    );
    assert_eq!(
        body(r),
        json!({"labels": {"stage": "won", "priority": "high"}, "skip_analysis": true})
    );
    assert_eq!(r.authorization.as_deref(), Some("sandbox-attention-key"));
    assert_eq!(r.content_type.as_deref(), Some("application/json"));

    let r = find("c-2");
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("PUT", "/v2/conversations/c-2")
    );
    assert_eq!(body(r), json!({"title": "New title", "labels": {"a": "b"}}));

    let r = find("c-3");
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v2/conversations/c-3/crm/confirm")
    );
    assert_eq!(
        body(r),
        json!({"intelligence": [{"id": "i1", "key": "k", "value": "v", "title": "T"}], "opportunity_id": "opp-9"})
    );

    let r = find("c-4");
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("DELETE", "/v2/conversations/c-4")
    );
    assert!(r.body.is_empty());
    assert_eq!(r.content_type, None);

    let r = find("v-5");
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("PATCH", "/agents/ag-1/convos/v-5")
    );
    assert_eq!(r.authorization.as_deref(), Some("Bearer sandbox-vg-token"));
    assert_eq!(
        body(r),
        json!({"conversation": {"userName": "Ann", "title": "Hello", "state": "completed", "tags": ["x", "y"]}})
    );

    // The audit: every row succeeded once, with its response and a snapshot per conversation.
    let db = w.db().await;
    let rows = audit_rows(&db).await;
    assert!(
        rows.iter()
            .all(|(_, s, a, h)| s == "succeeded" && *a == 1 && *h == Some(200)),
        "{rows:?}"
    );
    let (snapshots,): (i64,) = sqlx::query_as("SELECT count(*) FROM conversations")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(snapshots, 5);
    let (archived,): (i64,) = sqlx::query_as(
        "SELECT snapshot ->> '$.attributes.archived' FROM conversations WHERE api = 'attention' AND conversation_id = 'c-4'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(archived, 1);
    let (tags,): (String,) =
        sqlx::query_as("SELECT snapshot -> '$.tags' FROM conversations WHERE api = 'vg' AND conversation_id = 'v-5'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(tags, r#"["x","y"]"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_sends_attention_keys_as_bearer() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let src = w.write("a.csv", "op,conversation_id\nattention.archive,c1\n");
    w.run(
        Some(&sb),
        &[
            "run",
            src.to_str().unwrap(),
            "--attention-auth-scheme",
            "bearer",
        ],
    )
    .await
    .expect(0);
    assert_eq!(
        sb.requests()[0].authorization.as_deref(),
        Some("Bearer sandbox-attention-key")
    );
}

/// (method, path, body) of every request, sorted, for comparing runs.
fn calls(sb: &convoy::sandbox::Sandbox) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = sb
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path, r.body))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_source_sends_the_same_calls_as_the_csv() {
    let w = Work::new();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/nightly.csv");
    let from_csv = plain_sandbox().await;
    w.run(Some(&from_csv), &["run", sample, "--batch", "csv"])
        .await
        .expect(0);

    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/samples/edits.sql")).unwrap();
    let edits = w.sqlite("edits.db", script).await;

    let from_sqlite = plain_sandbox().await;
    w.run(
        Some(&from_sqlite),
        &[
            "run",
            edits.to_str().unwrap(),
            "--table",
            "edits",
            "--batch",
            "sqlite",
        ],
    )
    .await
    .expect(0);
    assert_eq!(calls(&from_csv).len(), 18);
    assert_eq!(calls(&from_csv), calls(&from_sqlite));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_on_stdin_is_a_source_too() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let args = ["run", "-", "--op", "attention.archive", "--batch", "stdin"];
    w.run_stdin(Some(&sb), &args, b"conversation_id\nc1\nc2\n")
        .await
        .expect(0);
    assert_eq!(sb.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_to_one_conversation_arrive_one_at_a_time_in_source_order() {
    let sb = sandbox(Config {
        latency: Some((Duration::from_millis(1), Duration::from_millis(15))),
        ..Config::default()
    })
    .await;
    let w = Work::new();
    // 12 conversations, 20 edits each, interleaved; the title carries the row's position.
    let rows: Vec<String> = (0..240)
        .map(|i| format!("attention.update,conv-{},t-{i:04}", i % 12))
        .collect();
    let src = w.write("order.csv", &csv("op,conversation_id,title", &rows));
    w.run(
        Some(&sb),
        &["run", src.to_str().unwrap(), "--concurrency", "16"],
    )
    .await
    .expect(0);

    let reqs = sb.requests();
    assert_eq!(reqs.len(), 240);
    for c in 0..12 {
        let id = format!("conv-{c}");
        let titles: Vec<String> = reqs
            .iter()
            .filter(|r| r.segments[2] == id)
            .map(|r| body(r)["title"].as_str().unwrap().to_owned())
            .collect();
        let mut sorted = titles.clone();
        sorted.sort();
        assert_eq!(titles, sorted, "edits to {id} out of order");
        assert_eq!(
            sb.attention_conversation(&id).unwrap()["title"],
            json!(sorted.last().unwrap())
        );
    }
    // Different conversations did run in parallel: some calls overlapped in time.
    let max_gap_free = reqs.windows(2).filter(|p| p[1].at_ms == p[0].at_ms).count();
    assert!(
        max_gap_free > 0,
        "no two calls started in the same millisecond: nothing ran in parallel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_and_503s_are_retried_to_success() {
    let sb = plain_sandbox().await;
    sb.script(
        "c-429",
        [Scripted::Status {
            status: 429,
            retry_after: Some("1".into()),
            body: None,
        }],
    );
    sb.script(
        "c-503",
        [
            Scripted::Status {
                status: 503,
                retry_after: None,
                body: None,
            },
            Scripted::Status {
                status: 503,
                retry_after: None,
                body: None,
            },
        ],
    );
    let w = Work::new();
    let src = w.write(
        "r.csv",
        "op,conversation_id\nattention.archive,c-429\nattention.archive,c-503\n",
    );
    w.run(Some(&sb), &["run", src.to_str().unwrap(), "--batch", "b"])
        .await
        .expect(0);

    let db = w.db().await;
    let rows = audit_rows(&db).await;
    assert_eq!(rows[0], ("1".into(), "succeeded".into(), 2, Some(200)));
    assert_eq!(rows[1], ("2".into(), "succeeded".into(), 3, Some(200)));
    let attempts: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT row_key, attempt, http_status FROM attempts ORDER BY row_key, attempt",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        attempts,
        vec![
            ("1".into(), 1, Some(429)),
            ("1".into(), 2, Some(200)),
            ("2".into(), 1, Some(503)),
            ("2".into(), 2, Some(503)),
            ("2".into(), 3, Some(200)),
        ]
    );
    // One attempts row per request the server saw, and the Retry-After was obeyed.
    let reqs = sb.requests();
    assert_eq!(reqs.len(), attempts.len());
    let to_429: Vec<u64> = reqs
        .iter()
        .filter(|r| r.segments[2] == "c-429")
        .map(|r| r.at_ms)
        .collect();
    assert!(
        to_429[1] - to_429[0] >= 900,
        "retried {}ms after Retry-After: 1",
        to_429[1] - to_429[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_is_final_after_one_attempt() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let src = w.write(
        "r.csv",
        "op,conversation_id\nattention.archive,missing-1\nattention.archive,c-2\n",
    );
    let out = w.run(Some(&sb), &["run", src.to_str().unwrap()]).await;
    out.expect(1);
    assert!(out.stdout().contains("1 failed"), "{}", out.stdout());
    let rows = audit_rows(&w.db().await).await;
    assert_eq!(rows[0], ("1".into(), "failed".into(), 1, Some(404)));
    assert_eq!(sb.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rows_are_recorded_and_never_sent() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let messy = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/messy.csv");
    let out = w.run(Some(&sb), &["run", messy, "--batch", "messy"]).await;
    out.expect(1);
    let db = w.db().await;
    let invalid: Vec<(String, String)> = sqlx::query_as(
        "SELECT row_key, error FROM audit WHERE status = 'invalid' ORDER BY row_number",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(invalid.len(), 9, "{invalid:?}");
    for (key, error) in &invalid {
        assert!(
            error.contains(&format!("row_id {key}")) && error.contains("column "),
            "{error}"
        );
    }
    assert!(
        invalid
            .iter()
            .any(|(_, e)| e.contains("did you mean userEmail?"))
    );
    // Exactly the valid rows reached the server.
    let (valid,): (i64,) = sqlx::query_as("SELECT count(*) FROM audit WHERE status != 'invalid'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(sb.requests().len() as i64, valid);
    for r in sb.requests() {
        assert_ne!(r.segments.last().map(String::as_str), Some("   "));
    }
    assert!(
        out.stderr()
            .contains("row 5 (row_id n-005), column op: unknown op"),
        "{}",
        out.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_sends_nothing_when_a_row_is_invalid() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let src = w.write(
        "r.csv",
        "op,conversation_id\nattention.archive,c1\nattention.nope,c2\n",
    );
    w.run(
        Some(&sb),
        &["run", src.to_str().unwrap(), "--strict", "--batch", "s"],
    )
    .await
    .expect(3);
    assert!(sb.requests().is_empty());
    let rows = audit_rows(&w.db().await).await;
    assert_eq!(rows[0].1, "pending");
    assert_eq!(rows[1].1, "invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_arrive_as_one_decoded_path_segment() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let ids = ["a/b", "../x", "q?x=1", "h#1", "sp ace", "ü%20"];
    let mut rows: Vec<String> = ids
        .iter()
        .map(|id| format!("attention.archive,\"{id}\",,"))
        .collect();
    rows.extend(
        ids.iter()
            .map(|id| format!("vg.update,\"{id}\",\"{id}\",closed-{}", id.len())),
    );
    let src = w.write("ids.csv", &csv("op,conversation_id,agent_id,state", &rows));
    w.run(Some(&sb), &["run", src.to_str().unwrap()])
        .await
        .expect(0);
    let reqs = sb.requests();
    assert_eq!(reqs.len(), ids.len() * 2);
    for r in &reqs {
        match r.method.as_str() {
            "DELETE" => {
                assert_eq!(r.segments.len(), 3, "{r:?}");
                assert!(ids.contains(&r.segments[2].as_str()), "{r:?}");
            }
            _ => {
                assert_eq!(r.segments.len(), 4, "{r:?}");
                assert!(
                    ids.contains(&r.segments[1].as_str()) && r.segments[1] == r.segments[3],
                    "{r:?}"
                );
            }
        }
        assert_eq!(r.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_never_leaves_the_process() {
    let key = format!("sk-live-{:016x}", fastrand::u64(..));
    let sb = sandbox(Config {
        attention_key: key.clone(),
        ..Config::default()
    })
    .await;
    let w = Work::new();
    w.write("k.csv", "op,conversation_id\nattention.archive,c1\nattention.archive,missing-2\nattention.nope,c3\n");
    let mut outputs = Vec::new();
    for args in [
        vec!["run", "k.csv", "--batch", "k"],
        vec!["run", "k.csv", "--dry-run"],
        vec!["status"],
        vec!["status", "k", "--json"],
        vec!["run", "k.csv", "--batch", "k"],
    ] {
        let out = w
            .convoy(Some(&sb))
            .env("ATTENTION_API_KEY", &key)
            .args(&args)
            .output()
            .await
            .unwrap();
        outputs.push(out.stdout);
        outputs.push(out.stderr);
    }
    // The key did reach the API (so the test would notice it being sent elsewhere)...
    assert_eq!(
        sb.requests()[0].authorization.as_deref(),
        Some(key.as_str())
    );
    // ...and nowhere else: not in any output, nor the audit database's bytes.
    for o in &outputs {
        assert!(
            !contains(o, &key),
            "key in output: {}",
            String::from_utf8_lossy(o)
        );
    }
    assert!(
        !contains(&db_bytes(&w.db), &key),
        "key in the audit database"
    );
    let (options,): (String,) = sqlx::query_as("SELECT options FROM batches")
        .fetch_one(&w.db().await)
        .await
        .unwrap();
    assert!(options.contains("attention_url") && !options.contains(&key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_stops_that_api_after_a_handful_of_calls_and_leaves_rows_pending() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let mut rows: Vec<String> = (0..200)
        .map(|i| format!("attention.archive,c{i},,"))
        .collect();
    rows.extend((0..20).map(|i| format!("vg.update,v{i},ag,open")));
    let src = w.write("s.csv", &csv("op,conversation_id,agent_id,state", &rows));
    let out = w
        .convoy(Some(&sb))
        .env("ATTENTION_API_KEY", "wrong-key")
        .args([
            "run",
            src.to_str().unwrap(),
            "--concurrency",
            "4",
            "--batch",
            "s",
        ])
        .output()
        .await
        .unwrap();
    let out = Out(out);
    out.expect(3);
    assert!(
        out.stdout()
            .contains("stopped the attention API after HTTP 401"),
        "{}",
        out.stdout()
    );
    let reqs = sb.requests();
    let attention = reqs.iter().filter(|r| r.segments[0] == "v2").count();
    assert!(
        (1..=8).contains(&attention),
        "{attention} calls after the first 401"
    );
    assert_eq!(
        reqs.iter()
            .filter(|r| r.segments[0] == "agents" && r.status == 200)
            .count(),
        20,
        "VG went on"
    );
    let db = w.db().await;
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM audit GROUP BY status ORDER BY status")
            .fetch_all(&db)
            .await
            .unwrap();
    let get = |s: &str| counts.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
    assert_eq!(get("failed") as usize, attention);
    assert_eq!(get("pending") as usize, 200 - attention);
    assert_eq!(get("succeeded"), 20);
    let (status,): (String,) = sqlx::query_as("SELECT status FROM batches")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(status, "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_is_a_configuration_error_and_nothing_is_sent() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let src = w.write(
        "r.csv",
        "op,conversation_id,agent_id,state\nvg.update,v1,a1,open\n",
    );
    let out = w
        .convoy(Some(&sb))
        .env_remove("VG_API_TOKEN")
        .args(["run", src.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let out = Out(out);
    out.expect(2);
    assert!(
        out.stderr().contains("VG_API_TOKEN is not set"),
        "{}",
        out.stderr()
    );
    assert!(sb.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_row_id_refuses_the_source_and_sends_nothing() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let src = w.write("d.csv", "row_id,op,conversation_id\na,attention.archive,c1\nb,attention.archive,c2\na,attention.archive,c3\n");
    let out = w
        .run(Some(&sb), &["run", src.to_str().unwrap(), "--batch", "d"])
        .await;
    out.expect(2);
    assert!(
        out.stderr()
            .contains("row 3: row_id \"a\" is already used by row 1"),
        "{}",
        out.stderr()
    );
    assert!(sb.requests().is_empty());
    // The name stays free: once fixed, the same batch name runs.
    w.write("d.csv", "row_id,op,conversation_id\na,attention.archive,c1\nb,attention.archive,c2\nc,attention.archive,c3\n");
    w.run(Some(&sb), &["run", src.to_str().unwrap(), "--batch", "d"])
        .await
        .expect(0);
}

/// `--dry-run` checks keys a chunk of rows at a time (it once ran a query
/// per row: 116 s for a million rows). What it prints stays row by row:
/// every row before a repeated key, or before a row that cannot be read,
/// is printed; nothing from it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_prints_every_row_before_the_one_it_stops_at() {
    let w = Work::new();
    let rows = |n: usize| -> String {
        (1..=n)
            .map(|i| format!("k{i},attention.archive,c{i}\n"))
            .collect()
    };
    // Row 1,500 repeats row 3's key: an earlier chunk's.
    let mut repeated = format!("row_id,op,conversation_id\n{}", rows(1_499));
    repeated.push_str("k3,attention.archive,c0\n");
    repeated.push_str(&rows(10));
    w.write("d.csv", &repeated);
    let out = w.run(None, &["run", "d.csv", "--dry-run"]).await;
    out.expect(2);
    assert!(
        out.stderr()
            .contains("row 1500: row_id \"k3\" is already used by row 3"),
        "{}",
        out.stderr()
    );
    assert_eq!(out.stdout().lines().count(), 1_499);
    assert!(
        out.stdout().lines().last().unwrap().ends_with("/c1499"),
        "{}",
        out.stdout().lines().last().unwrap()
    );

    // Row 1,200 is not UTF-8.
    let mut bytes = format!("row_id,op,conversation_id\n{}", rows(1_199)).into_bytes();
    bytes.extend_from_slice(b"k1200,attention.archive,c\xff\n");
    w.write("u.csv", "");
    std::fs::write(w.path("u.csv"), bytes).unwrap();
    let out = w.run(None, &["run", "u.csv", "--dry-run"]).await;
    out.expect(2);
    assert!(out.stderr().contains("not UTF-8"), "{}", out.stderr());
    assert_eq!(out.stdout().lines().count(), 1_199);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_batch_name_is_refused_with_a_hint_to_resume() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let src = w.write("r.csv", "op,conversation_id\nattention.archive,c1\n");
    w.run(
        Some(&sb),
        &["run", src.to_str().unwrap(), "--batch", "nightly"],
    )
    .await
    .expect(0);
    let out = w
        .run(
            Some(&sb),
            &["run", src.to_str().unwrap(), "--batch", "nightly"],
        )
        .await;
    out.expect(2);
    assert!(
        out.stderr().contains("convoy resume nightly"),
        "{}",
        out.stderr()
    );
    assert_eq!(sb.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_every_call_and_writes_nothing() {
    let w = Work::new();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/nightly.csv");
    let out = w
        .convoy(None)
        .env("ATTENTION_API_KEY", "sk-dry-secret")
        .args(["run", sample, "--dry-run"])
        .output()
        .await
        .unwrap();
    let out = Out(out);
    out.expect(0);
    let lines: Vec<&str> = out
        .0
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 18);
    assert!(lines[0].starts_with("PUT https://api.attention.tech/v2/conversations/6f1c2a9e-0b1d-4e51-9a57-3c2f8d7e1a01/labels {"));
    assert!(!out.stdout().contains("sk-dry-secret") && !out.stderr().contains("sk-dry-secret"));
    assert!(!w.db.exists(), "dry run created the audit database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_refused_for_a_remote_host() {
    let w = Work::new();
    let src = w.write("r.csv", "op,conversation_id\nattention.archive,c1\n");
    let out = w
        .run(
            None,
            &[
                "run",
                src.to_str().unwrap(),
                "--attention-url",
                "http://api.example.com/v2",
            ],
        )
        .await;
    out.expect(2);
    assert!(
        out.stderr().contains("http:// is refused"),
        "{}",
        out.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_database_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let sb = plain_sandbox().await;
    let w = Work::new();
    let src = w.write("r.csv", "op,conversation_id\nattention.archive,c1\n");
    w.run(Some(&sb), &["run", src.to_str().unwrap()])
        .await
        .expect(0);
    let mode = std::fs::metadata(&w.db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_pacing_reads_rate_headers_and_never_draws_a_429() {
    let sb = sandbox(Config {
        rate_limit: Some(20.0),
        rate_headers: true,
        ..Config::default()
    })
    .await;
    let w = Work::new();
    let rows: Vec<String> = (0..60)
        .map(|i| format!("attention.update,c{i},t{i}"))
        .collect();
    let src = w.write("h.csv", &csv("op,conversation_id,title", &rows));
    // One call at a time, so none is on the wire when the quota runs out:
    // `RateLimit-Remaining: 0` pauses the API before anything draws a 429.
    w.run(
        Some(&sb),
        &["run", src.to_str().unwrap(), "--concurrency", "1"],
    )
    .await
    .expect(0);
    let seen = sb.requests();
    assert_eq!(seen.len(), 60, "every row once");
    assert!(seen.iter().all(|r| r.status == 200));
    let db = w.db().await;
    let (rate,): (f64,) = sqlx::query_as("SELECT rate_per_sec FROM learned_rates")
        .fetch_one(&db)
        .await
        .expect("a rate was learned from the headers");
    assert!(rate <= 20.0, "learned {rate}/s against a 20/s limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_pacing_finishes_against_an_unpublished_limit_and_remembers_it() {
    let sb = sandbox(Config {
        rate_limit: Some(40.0),
        ..Config::default()
    })
    .await;
    let w = Work::new();
    let rows: Vec<String> = (0..300)
        .map(|i| format!("attention.update,c{},t{i}", i % 50))
        .collect();
    let src = w.write("a.csv", &csv("op,conversation_id,title", &rows));
    // Defaults only: auto pacing, 5 attempts.
    w.run(Some(&sb), &["run", src.to_str().unwrap(), "--batch", "a"])
        .await
        .expect(0);
    assert!(
        sb.requests().iter().any(|r| r.status == 429),
        "the limit was never met"
    );
    let db = w.db().await;
    let rows = audit_rows(&db).await;
    assert!(rows.iter().all(|r| r.1 == "succeeded"));
    let (api, rate): (String, f64) = sqlx::query_as("SELECT api, rate_per_sec FROM learned_rates")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(api, "attention");
    // What is learned bounds the limit from below.
    assert!(
        (10.0..=40.0).contains(&rate),
        "learned {rate}/s against a 40/s limit"
    );
    // The next night starts from it and runs (nearly) clean.
    let before = sb.requests().len();
    w.run(Some(&sb), &["run", src.to_str().unwrap(), "--batch", "b"])
        .await
        .expect(0);
    let next = &sb.requests()[before..];
    let limited = next.iter().filter(|r| r.status == 429).count();
    assert!(
        limited * 100 <= next.len() * 3,
        "{limited} of {} requests got 429 starting from {rate}/s",
        next.len()
    );
    let out = w.run(None, &["status", "a"]).await;
    assert!(
        out.stdout().contains("learned    attention"),
        "{}",
        out.stdout()
    );
}
