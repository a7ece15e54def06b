//! Reports: `status` (list, detail, `--json`), `failures` (export and
//! round trip), and every query the README documents, run for real.

use crate::common::*;
use convoy::sandbox::Scripted;
use serde_json::Value;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// A database made by real runs: the clean night (with a few retries), then
/// the messy one with `--skip-unchanged` (pre-images, skipped rows, diffs).
async fn nights(w: &Work) -> convoy::sandbox::Sandbox {
    let sb = plain_sandbox().await;
    sb.script(
        "6f1c2a9e-0b1d-4e51-9a57-3c2f8d7e1a01",
        [
            Scripted::Status {
                status: 503,
                retry_after: None,
                body: None,
            },
            Scripted::Status {
                status: 429,
                retry_after: Some("0".into()),
                body: None,
            },
        ],
    );
    w.run(
        Some(&sb),
        &[
            "run",
            &format!("{MANIFEST}/samples/nightly.csv"),
            "--batch",
            "night-1",
        ],
    )
    .await
    .expect(0);
    w.run(
        Some(&sb),
        &[
            "run",
            &format!("{MANIFEST}/samples/messy.csv"),
            "--batch",
            "night-2",
            "--skip-unchanged",
        ],
    )
    .await
    .expect(1);
    sb
}

/// The SQL blocks of the "Querying the audit database" sections of the
/// README and of `docs/audit-db.md` (its full list).
fn readme_queries() -> Vec<String> {
    let mut queries = Vec::new();
    for file in ["README.md", "docs/audit-db.md"] {
        let text = std::fs::read_to_string(format!("{MANIFEST}/{file}")).unwrap();
        let start = text
            .find("## Querying the audit database")
            .unwrap_or_else(|| panic!("{file} has the section"));
        let end = text[start + 3..]
            .find("\n## ")
            .map_or(text.len(), |i| start + 3 + i);
        queries.extend(
            text[start..end]
                .split("```sql\n")
                .skip(1)
                .map(|b| b.split("```").next().unwrap().trim().to_owned()),
        );
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_in_the_readme_runs_and_answers() {
    let w = Work::new();
    let _sb = nights(&w).await;
    let queries = readme_queries();
    assert!(
        queries.len() >= 12,
        "the README and docs/audit-db.md document {} queries",
        queries.len()
    );
    let db = w.db().await;
    for q in queries {
        let rows = sqlx::query(sqlx::AssertSqlSafe(q.clone()))
            .fetch_all(&db)
            .await
            .unwrap_or_else(|e| panic!("README query fails: {e}\n{q}"));
        assert!(
            !rows.is_empty(),
            "README query returns nothing on real runs:\n{q}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_counts_match_the_audit_table() {
    let w = Work::new();
    let _sb = nights(&w).await;
    let out = w.run(None, &["status", "--json"]).await;
    out.expect(0);
    let v: Value = serde_json::from_str(&out.stdout()).unwrap();
    let batches = v["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0]["batch"], "night-2", "newest first");
    let db = w.db().await;
    for b in batches {
        let id = b["batch"].as_str().unwrap();
        for status in ["succeeded", "failed", "invalid", "pending"] {
            let (n,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM audit WHERE batch_id = ?1 AND status = ?2")
                    .bind(id)
                    .bind(status)
                    .fetch_one(&db)
                    .await
                    .unwrap();
            assert_eq!(b["counts"][status].as_i64(), Some(n), "{id} {status}");
        }
        assert!(b["rate_per_second"].as_f64().unwrap() > 0.0);
    }

    let out = w.run(None, &["status", "night-1", "--json"]).await;
    out.expect(0);
    let d: Value = serde_json::from_str(&out.stdout()).unwrap();
    let (attempts,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM attempts WHERE batch_id = 'night-1'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(d["attempts"]["total"].as_i64(), Some(attempts));
    assert_eq!(d["attempts"]["retries"].as_i64(), Some(2));
    assert_eq!(d["counts"]["rows"].as_i64(), Some(18));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_groups_failures_into_clusters_largest_first() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let mut rows: Vec<String> = (0..5)
        .map(|i| format!("attention.archive,missing-{i},"))
        .collect();
    rows.extend((0..3).map(|i| format!("attention.set_labels,c{i},{{bad")));
    rows.push("attention.archive,ok-1,".into());
    let src = w.write("f.csv", &csv("op,conversation_id,labels", &rows));
    w.run(Some(&sb), &["run", src.to_str().unwrap(), "--batch", "f"])
        .await
        .expect(1);
    let out = w.run(None, &["status", "f", "--json"]).await;
    let d: Value = serde_json::from_str(&out.stdout()).unwrap();
    let clusters = d["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 2, "{clusters:#?}");
    assert_eq!(
        (
            clusters[0]["count"].as_i64(),
            clusters[0]["http_status"].as_i64()
        ),
        (Some(5), Some(404))
    );
    assert_eq!(
        (
            clusters[1]["count"].as_i64(),
            clusters[1]["status"].as_str()
        ),
        (Some(3), Some("invalid"))
    );
    let text = w.run(None, &["status", "f"]).await;
    text.expect(0);
    assert!(
        text.stdout().contains("#1") && text.stdout().contains("e.g. row 1"),
        "{}",
        text.stdout()
    );

    // --cluster exports that cluster only.
    let out = w.run(None, &["failures", "f", "--cluster", "2"]).await;
    out.expect(0);
    let lines: Vec<String> = out.stdout().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[1..].iter().all(|l| l.contains("invalid")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_round_trip_runs_exactly_those_rows_again() {
    let sb = plain_sandbox().await;
    sb.script(
        "c-flaky",
        [Scripted::Status {
            status: 503,
            retry_after: None,
            body: None,
        }],
    );
    let w = Work::new();
    let src = w.write(
        "n.csv",
        "row_id,op,conversation_id,title,label.stage\n\
         a,attention.update,c-ok,Fine,\n\
         b,attention.update,c-flaky,Flaky,\n\
         c,attention.update,c-bad,,\n\
         d,attention.set_labels,c-typo,,won\n\
         e,attention.archive,c-ok2,,\n",
    );
    w.run(
        Some(&sb),
        &[
            "run",
            src.to_str().unwrap(),
            "--batch",
            "n",
            "--max-attempts",
            "1",
        ],
    )
    .await
    .expect(1);
    let fix = w.path("fix.csv");
    w.run(None, &["failures", "n", "--output", fix.to_str().unwrap()])
        .await
        .expect(0);
    let exported = std::fs::read_to_string(&fix).unwrap();
    let mut lines = exported.lines();
    assert_eq!(
        lines.next(),
        Some(
            "row_id,op,conversation_id,title,label.stage,status,http_status,error,from_batch,from_row"
        )
    );
    let rest: Vec<&str> = lines.collect();
    assert_eq!(rest.len(), 2, "{exported}");
    assert!(
        rest[0].starts_with("b,attention.update,c-flaky,Flaky,,failed,503,"),
        "{}",
        rest[0]
    );
    assert!(
        rest[1].starts_with("c,attention.update,c-bad,,,invalid,,"),
        "{}",
        rest[1]
    );

    // Fix the invalid row in the exported file and feed it back.
    std::fs::write(
        &fix,
        exported.replace(
            "c,attention.update,c-bad,,",
            "c,attention.update,c-bad,Now titled,",
        ),
    )
    .unwrap();
    let before = sb.requests().len();
    w.run(
        Some(&sb),
        &["run", fix.to_str().unwrap(), "--batch", "n-fix"],
    )
    .await
    .expect(0);
    let again: Vec<String> = sb.requests()[before..]
        .iter()
        .map(|r| r.segments[2].clone())
        .collect();
    let mut again = again;
    again.sort();
    assert_eq!(again, ["c-bad", "c-flaky"]);
}

/// `prune` removes completed batches' bulk, never a resumable batch unless
/// told, keeps each conversation's latest snapshot, gives the space back,
/// and the README's queries still answer afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_resumable_batches_and_the_readme_queries_still_answer() {
    let w = Work::new();
    let _sb = nights(&w).await;
    let db = w.db().await;
    let responses = |batch: &'static str| {
        let db = db.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM audit WHERE batch_id = ?1 AND response IS NOT NULL",
            )
            .bind(batch)
            .fetch_one(&db)
            .await
            .unwrap();
            n
        }
    };
    let night2 = responses("night-2").await;
    assert!(night2 > 0 && responses("night-1").await > 0);
    let snapshots: Vec<(String, String)> =
        sqlx::query_as("SELECT conversation_id, snapshot FROM conversations ORDER BY 1")
            .fetch_all(&db)
            .await
            .unwrap();
    let bytes = |w: &Work| db_bytes(&w.db).len();
    let before = bytes(&w);

    let out = w.run(None, &["prune", "--before", "0d"]).await;
    out.expect(0);
    assert!(
        out.stdout().contains("kept night-2 (failed") && out.stdout().contains("resumable"),
        "{}",
        out.stdout()
    );
    assert!(
        out.stdout().contains("pruned the bulk of night-1"),
        "{}",
        out.stdout()
    );
    assert_eq!(
        responses("night-2").await,
        night2,
        "the resumable batch is untouched"
    );
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit a JOIN conversations c ON c.batch_id = a.batch_id AND c.row_key = a.row_key \
         WHERE a.batch_id = 'night-1'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        responses("night-1").await,
        kept,
        "only the latest snapshots stay"
    );
    let after: Vec<(String, String)> =
        sqlx::query_as("SELECT conversation_id, snapshot FROM conversations ORDER BY 1")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(
        after, snapshots,
        "every conversation keeps its latest snapshot"
    );
    assert!(bytes(&w) < before, "the space went back to the file system");
    for q in readme_queries() {
        let rows = sqlx::query(sqlx::AssertSqlSafe(q.clone()))
            .fetch_all(&db)
            .await
            .unwrap_or_else(|e| panic!("README query fails after a prune: {e}\n{q}"));
        assert!(
            !rows.is_empty(),
            "README query answers nothing after a prune:\n{q}"
        );
    }
    let status = w.run(None, &["status"]).await;
    assert!(
        status.stdout().contains("(pruned: bulk)"),
        "{}",
        status.stdout()
    );

    // Told to, it prunes the resumable batch too, rows and all.
    db.close().await;
    let all = w
        .run(
            None,
            &["prune", "--before", "0d", "--rows", "--include-resumable"],
        )
        .await;
    all.expect(0);
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit a WHERE NOT EXISTS \
         (SELECT 1 FROM conversations c WHERE c.batch_id = a.batch_id AND c.row_key = a.row_key)",
    )
    .fetch_one(&w.db().await)
    .await
    .unwrap();
    assert_eq!(left, 0, "{}", all.stdout());
}

/// A database made by an earlier convoy (migrations 0001-0003: a
/// `conversations` table holding copies of the snapshots) upgrades in
/// place: the `conversations` view answers with the same snapshots, and
/// the batch reads as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_database_of_an_earlier_version_upgrades_with_its_snapshots() {
    let w = Work::new();
    // The earlier schema, applied as that convoy applied it.
    let pool = database_before(&w, "0004").await;
    let attention =
        r#"{"type":"conversations","id":"c1","attributes":{"uuid":"c1","labels":{"s":"x"}}}"#;
    let vg_data = r#"{"ID":"v1","state":"open"}"#;
    let vg = format!(r#"{{"success":true,"message":"Conversation updated","data":{vg_data}}}"#);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO batches (id, source, source_kind, status, created_at) VALUES ('old', 'n.csv', 'csv', 'completed', '2026-11-01T03:00:00.000Z');
         INSERT INTO audit (batch_id, row_key, row_number, row_hash, op, api, conversation_id, agent_id, method, url, status, response, finished_at)
           VALUES ('old', '1', 1, 'h1', 'attention.set_labels', 'attention', 'c1', NULL, 'PUT', 'u', 'succeeded', '{attention}', '2026-11-01T03:00:01.000Z'),
                  ('old', '2', 2, 'h2', 'vg.update', 'vg', 'v1', 'a', 'PATCH', 'u', 'succeeded', '{vg}', '2026-11-01T03:00:02.000Z');
         INSERT INTO conversations (api, conversation_id, snapshot, batch_id, row_key, updated_at)
           VALUES ('attention', 'c1', '{attention}', 'old', '1', '2026-11-01T03:00:01.000Z'),
                  ('vg', 'v1', '{vg_data}', 'old', '2', '2026-11-01T03:00:02.000Z');"
    )))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let out = w.run(None, &["status", "old"]).await;
    out.expect(0);
    assert!(
        out.stdout().contains("rows       2: 2 succeeded"),
        "{}",
        out.stdout()
    );
    let db = w.db().await;
    let snapshots: Vec<(String, String)> =
        sqlx::query_as("SELECT conversation_id, snapshot FROM conversations ORDER BY 1")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(
        snapshots,
        [
            ("c1".to_owned(), attention.to_owned()),
            ("v1".to_owned(), vg_data.to_owned()),
        ]
    );
}
