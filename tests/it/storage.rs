//! How the audit database stores its facts (migration 0007): narrow rows,
//! responses beside them, batch numbers and integer times, all shown by the
//! `audit`, `attempts` and `conversations` views exactly as before.

use crate::common::*;
use convoy::sandbox::Scripted;

/// Every row of `audit`, `attempts` and `conversations`, column by column, as text.
async fn every_fact(db: &sqlx::SqlitePool) -> [String; 3] {
    let mut out = [String::new(), String::new(), String::new()];
    for (i, sql) in [
        "SELECT json_group_array(json_array(batch_id, row_key, row_number, row_hash, op, api, conversation_id, \
           agent_id, method, url, request_body, status, attempts, http_status, error, response, started_at, \
           finished_at, source_row, pass, changes, holds_snapshot)) FROM (SELECT * FROM audit ORDER BY batch_id, row_key)",
        "SELECT json_group_array(json_array(batch_id, row_key, attempt, started_at, duration_ms, http_status, error)) \
         FROM (SELECT * FROM attempts ORDER BY batch_id, row_key, attempt)",
        "SELECT json_group_array(json_array(api, conversation_id, snapshot, batch_id, row_key, updated_at)) \
         FROM (SELECT * FROM conversations ORDER BY api, conversation_id)",
    ]
    .into_iter()
    .enumerate()
    {
        out[i] = sqlx::query_scalar(sql).fetch_one(db).await.unwrap();
    }
    out
}

/// Bodies kept, and rows that show one: equal when no body is left behind.
async fn bodies(db: &sqlx::SqlitePool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM responses), (SELECT count(*) FROM audit WHERE response IS NOT NULL)",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

/// A database written by the convoy before narrow rows (migrations
/// 0001-0006) upgrades in place, and the views answer with exactly the same
/// rows, times to the millisecond included. Writing `audit` by hand still
/// works, and never leaves a body behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_6_database_upgrades_to_narrow_rows_with_every_fact() {
    let w = Work::new();
    let pool = database_before(&w, "0007").await;
    let snapshot = r#"{"type":"conversations","id":"c1","attributes":{"uuid":"c1","title":"T"}}"#;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO batches (id, source, source_kind, status, created_at) VALUES
           ('old', 'n.csv', 'csv', 'completed', '2026-11-01T03:00:00.000Z'),
           ('older', 'm.csv', 'csv', 'failed', '2026-10-01T03:00:00.000Z');
         INSERT INTO audit (batch_id, row_key, row_number, row_hash, op, api, conversation_id, agent_id, method, url,
                            request_body, status, attempts, http_status, error, response, started_at, finished_at,
                            source_row, pass, changes, holds_snapshot)
           VALUES ('old', '1', 1, 'h1', 'attention.update', 'attention', 'c1', NULL, 'PATCH', 'u1', '{{\"title\":\"T\"}}',
                   'succeeded', 2, 200, NULL, '{snapshot}', '2026-11-01T03:00:00.120Z', '2026-11-01T03:00:00.999Z',
                   '{{\"row_id\":\"1\"}}', 1, '{{\"title\":{{\"after\":\"T\"}}}}', 1),
                  ('old', '2', 2, 'h2', 'vg.update', 'vg', 'v1', 'a', 'PATCH', 'u2', '{{}}', 'pending', 0, NULL, NULL,
                   NULL, NULL, NULL, '{{\"row_id\":\"2\"}}', 1, NULL, NULL),
                  ('older', '1', 1, 'h3', 'vg.update', 'vg', 'v1', 'a', 'PATCH', 'u3', '{{}}', 'failed', 1, 503, 'HTTP 503',
                   'upstream down', '2026-10-01T03:00:01.001Z', '2026-10-01T03:00:01.050Z', '{{}}', 2, NULL, NULL);
         INSERT INTO attempts (batch_id, row_key, attempt, started_at, duration_ms, http_status, error)
           VALUES ('old', '1', 1, '2026-11-01T03:00:00.120Z', 40, 503, 'HTTP 503'),
                  ('old', '1', 2, '2026-11-01T03:00:00.961Z', 38, 200, NULL),
                  ('older', '1', 1, '2026-10-01T03:00:01.001Z', 49, 503, 'HTTP 503');"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let before = every_fact(&pool).await;
    pool.close().await;

    let upgraded = w.run(None, &["status"]).await;
    upgraded.expect(0);
    assert!(
        upgraded.stderr().contains("upgrading the audit database"),
        "{}",
        upgraded.stderr()
    );
    let again = w.run(None, &["status"]).await;
    assert!(!again.stderr().contains("upgrading"), "{}", again.stderr());
    let db = w.db().await;
    assert_eq!(every_fact(&db).await, before);
    assert_eq!(bodies(&db).await, (2, 2));
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE name IN ('audit', 'attempts') AND type = 'view' ORDER BY name",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(tables, ["attempts", "audit"]);

    // Written by hand: a new body replaces the old one, a deleted row takes its body along.
    sqlx::query("UPDATE audit SET response = 'still down', finished_at = '2026-10-01T03:00:02.002Z' WHERE batch_id = 'older'")
        .execute(&db)
        .await
        .unwrap();
    let (response, finished): (String, String) =
        sqlx::query_as("SELECT response, finished_at FROM audit WHERE batch_id = 'older'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(
        (response.as_str(), finished.as_str()),
        ("still down", "2026-10-01T03:00:02.002Z")
    );
    assert_eq!(bodies(&db).await, (2, 2));
    sqlx::query("DELETE FROM audit WHERE batch_id = 'older'")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(bodies(&db).await, (1, 1));
    sqlx::query(
        "INSERT INTO attempts (batch_id, row_key, attempt, started_at, duration_ms, http_status) \
         VALUES ('old', '2', 1, '2026-11-01T03:00:05.005Z', 7, 200)",
    )
    .execute(&db)
    .await
    .unwrap();
    let started: String = sqlx::query_scalar("SELECT started_at FROM attempts WHERE row_key = '2'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(started, "2026-11-01T03:00:05.005Z");
    sqlx::query("DELETE FROM attempts WHERE batch_id = 'old'")
        .execute(&db)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM attempts")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(left, 1, "only batch older's attempt is left");
}

/// Upgrading rewrites every row once; the WAL that holds the copy is
/// emptied afterwards, not left beside the database (a 600 MB database
/// left a 526 MB WAL behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_leaves_no_wal_behind() {
    let w = Work::new();
    let pool = database_before(&w, "0007").await;
    sqlx::raw_sql(
        "INSERT INTO batches (id, source, source_kind, status, created_at) VALUES
           ('old', 'n.csv', 'csv', 'completed', '2026-11-01T03:00:00.000Z');
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
         INSERT INTO audit (batch_id, row_key, row_number, row_hash, status, response, finished_at)
           SELECT 'old', i, i, 'h', 'succeeded', printf('{\"pad\":\"%.2000c\"}', 'x'), '2026-11-01T03:00:01.000Z' FROM n;",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    w.run(None, &["status"]).await.expect(0);
    let wal = std::fs::metadata(w.path("audit.db-wal")).map_or(0, |m| m.len());
    assert!(wal < 1 << 20, "a WAL of {wal} bytes was left behind");
    let db = w.db().await;
    assert_eq!(bodies(&db).await, (3000, 3000));
}

/// A row answered twice (failed with a body, then resumed and succeeded)
/// keeps only its last body, and a prune takes the bodies it strips along:
/// `responses` never holds a body that no row shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_answered_again_or_pruned_leaves_no_body_behind() {
    let sb = plain_sandbox().await;
    sb.script(
        "c2",
        [Scripted::Status {
            status: 503,
            retry_after: None,
            body: Some(r#"{"error":"upstream down"}"#.into()),
        }],
    );
    let w = Work::new();
    let src = w.write(
        "n.csv",
        "op,conversation_id,title\nattention.update,c1,A\nattention.update,c2,B\nattention.update,c3,C\n",
    );
    let src = src.to_str().unwrap();
    w.run(
        Some(&sb),
        &["run", src, "--batch", "n", "--max-attempts", "1"],
    )
    .await
    .expect(1);
    let db = w.db().await;
    let failed: Option<String> =
        sqlx::query_scalar("SELECT response FROM audit WHERE conversation_id = 'c2'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(failed.as_deref(), Some(r#"{"error":"upstream down"}"#));
    assert_eq!(bodies(&db).await, (3, 3));

    w.run(Some(&sb), &["resume", "n"]).await.expect(0);
    assert_eq!(bodies(&db).await, (3, 3));
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM responses WHERE body LIKE '%upstream down%'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(left, 0, "the failed answer's body went with it");

    // A second batch makes the first one's snapshots old; pruning strips them.
    w.run(Some(&sb), &["run", src, "--batch", "m"])
        .await
        .expect(0);
    w.run(None, &["prune", "--before", "0d", "--keep-batches", "1"])
        .await
        .expect(0);
    assert_eq!(bodies(&db).await, (3, 3), "only batch m's bodies are left");
}
