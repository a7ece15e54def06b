//! The sandbox on its own (auth, validation, 404, tag merge, 429s, seeds),
//! and the whole pipeline through its bad days.

use crate::common::*;
use convoy::sandbox::{Config, Sandbox};
use serde_json::{Value, json};
use std::time::Duration;

async fn call(
    sb: &Sandbox,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), format!("http://{}{path}", sb.addr));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    if let Some(b) = body {
        req = req
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("sandbox answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

const KEY: Option<&str> = Some("sandbox-attention-key");
const TOKEN: Option<&str> = Some("Bearer sandbox-vg-token");

#[tokio::test]
async fn auth_is_checked_as_documented() {
    let sb = plain_sandbox().await;
    let labels = Some(json!({"labels": {}}));
    assert_eq!(
        call(
            &sb,
            "PUT",
            "/v2/conversations/c/labels",
            None,
            labels.clone()
        )
        .await
        .0,
        401
    );
    assert_eq!(
        call(
            &sb,
            "PUT",
            "/v2/conversations/c/labels",
            Some("nope"),
            labels.clone()
        )
        .await
        .0,
        401
    );
    assert_eq!(
        call(
            &sb,
            "PUT",
            "/v2/conversations/c/labels",
            KEY,
            labels.clone()
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            &sb,
            "PUT",
            "/v2/conversations/c/labels",
            Some("Bearer sandbox-attention-key"),
            labels
        )
        .await
        .0,
        200
    );
    let patch = Some(json!({"conversation": {"state": "open"}}));
    assert_eq!(
        call(
            &sb,
            "PATCH",
            "/agents/a/convos/v",
            Some("sandbox-vg-token"),
            patch.clone()
        )
        .await
        .0,
        401,
        "VG needs Bearer"
    );
    assert_eq!(
        call(&sb, "PATCH", "/agents/a/convos/v", TOKEN, patch)
            .await
            .0,
        200
    );
    let (status, body) = call(&sb, "GET", "/v2/conversations/c", None, None).await;
    assert_eq!(status, 401);
    assert!(body["message"].as_str().unwrap().contains("Authorization"));
}

#[tokio::test]
async fn bodies_of_the_wrong_shape_get_400_with_a_json_error() {
    let sb = plain_sandbox().await;
    for (method, path, body) in [
        ("PUT", "/v2/conversations/c/labels", json!({})),
        ("PUT", "/v2/conversations/c/labels", json!({"labels": []})),
        (
            "PUT",
            "/v2/conversations/c/labels",
            json!({"labels": {}, "skip_analysis": "no"}),
        ),
        (
            "PUT",
            "/v2/conversations/c/labels",
            json!({"labels": {}, "extra": 1}),
        ),
        ("PUT", "/v2/conversations/c", json!({})),
        ("PUT", "/v2/conversations/c", json!({"title": 5})),
        (
            "POST",
            "/v2/conversations/c/crm/confirm",
            json!({"intelligence": {}}),
        ),
        (
            "POST",
            "/v2/conversations/c/crm/confirm",
            json!({"intelligence": [1]}),
        ),
        (
            "POST",
            "/v2/conversations/c/crm/confirm",
            json!({"intelligence": [{}], "opportunity_id": 7}),
        ),
    ] {
        let (status, err) = call(&sb, method, path, KEY, Some(body.clone())).await;
        assert_eq!(status, 400, "{method} {path} {body}");
        assert!(err["message"].is_string(), "{err}");
    }
    for body in [
        json!({"state": "open"}),
        json!({"conversation": {}}),
        json!({"conversation": {"userEmial": "x"}}),
        json!({"conversation": {"tags": "vip"}}),
        json!({"conversation": {"isBlocked": 1}}),
    ] {
        let (status, err) = call(
            &sb,
            "PATCH",
            "/agents/a/convos/v",
            TOKEN,
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(err["message"].is_string());
    }
    // Nothing was applied by any of them.
    assert!(sb.attention_conversation("c").is_none());
    assert!(sb.vg_conversation("a", "v").is_none());
}

#[tokio::test]
async fn declared_missing_ids_answer_404() {
    let sb = plain_sandbox().await;
    assert_eq!(
        call(&sb, "DELETE", "/v2/conversations/missing-1", KEY, None)
            .await
            .0,
        404
    );
    assert_eq!(
        call(&sb, "GET", "/agents/a/convos/missing-2", TOKEN, None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn snapshots_are_full_and_tags_merge_without_duplicates() {
    let sb = plain_sandbox().await;
    let patch = |tags: Value| Some(json!({"conversation": {"tags": tags}}));
    let (_, first) = call(
        &sb,
        "PATCH",
        "/agents/a/convos/v",
        TOKEN,
        patch(json!(["vip", "eu"])),
    )
    .await;
    let (_, second) = call(
        &sb,
        "PATCH",
        "/agents/a/convos/v",
        TOKEN,
        patch(json!(["eu", "renewal"])),
    )
    .await;
    assert_eq!(second["success"], true);
    assert_eq!(second["data"]["tags"], json!(["vip", "eu", "renewal"]));
    assert!(second["data"]["lastModified"].as_u64() > first["data"]["lastModified"].as_u64());
    assert!(
        second["data"].as_object().unwrap().len() > 60,
        "a full VG conversation"
    );

    let labels = Some(json!({"labels": {"a": "1"}}));
    call(&sb, "PUT", "/v2/conversations/c/labels", KEY, labels).await;
    let (_, doc) = call(
        &sb,
        "PUT",
        "/v2/conversations/c/labels",
        KEY,
        Some(json!({"labels": {"b": "2"}})),
    )
    .await;
    assert_eq!(doc["type"], "conversations");
    assert_eq!(doc["id"], "c");
    assert_eq!(
        doc["attributes"]["labels"],
        json!({"b": "2"}),
        "labels are replaced"
    );
    assert!(doc["attributes"]["participants"].is_array());
    let (_, doc) = call(&sb, "DELETE", "/v2/conversations/c", KEY, None).await;
    assert_eq!(doc["attributes"]["archived"], true);
    let (_, doc) = call(&sb, "GET", "/v2/conversations/c", KEY, None).await;
    assert_eq!(doc["attributes"]["archived"], true);
    assert_eq!(doc["attributes"]["labels"], json!({"b": "2"}));
}

/// What `undo` relies on: no call restores an archive, a VG tag once
/// merged in cannot be taken out, and a CRM confirmation sent twice is held
/// twice (it always adds).
#[tokio::test]
async fn an_archive_has_no_restore_tags_only_merge_and_a_confirmation_always_adds() {
    let sb = plain_sandbox().await;
    call(&sb, "DELETE", "/v2/conversations/c", KEY, None).await;
    let (status, _) = call(
        &sb,
        "PUT",
        "/v2/conversations/c",
        KEY,
        Some(json!({"archived": false})),
    )
    .await;
    assert_eq!(status, 400);
    let (_, doc) = call(&sb, "GET", "/v2/conversations/c", KEY, None).await;
    assert_eq!(doc["attributes"]["archived"], true);

    let patch = |tags: Value| Some(json!({"conversation": {"tags": tags}}));
    call(
        &sb,
        "PATCH",
        "/agents/a/convos/v",
        TOKEN,
        patch(json!(["x"])),
    )
    .await;
    let (_, doc) = call(&sb, "PATCH", "/agents/a/convos/v", TOKEN, patch(json!([]))).await;
    assert_eq!(doc["data"]["tags"], json!(["x"]));

    let confirm = || Some(json!({"intelligence": [{"key": "next", "value": "demo"}]}));
    call(
        &sb,
        "POST",
        "/v2/conversations/d/crm/confirm",
        KEY,
        confirm(),
    )
    .await;
    let (_, doc) = call(
        &sb,
        "POST",
        "/v2/conversations/d/crm/confirm",
        KEY,
        confirm(),
    )
    .await;
    let held = doc["attributes"]["confirmedExtractedIntelligence"]
        .as_object()
        .unwrap();
    assert_eq!(held.keys().collect::<Vec<_>>(), ["next", "next#2"]);
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_per_api() {
    let sb = sandbox(Config {
        rate_limit: Some(5.0),
        ..Config::default()
    })
    .await;
    let client = reqwest::Client::new();
    let mut limited = 0;
    for i in 0..10 {
        let resp = client
            .delete(format!("http://{}/v2/conversations/c{i}", sb.addr))
            .header("Authorization", "sandbox-attention-key")
            .send()
            .await
            .unwrap();
        if resp.status() == 429 {
            limited += 1;
            let ra: u64 = resp.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=2).contains(&ra), "Retry-After: {ra}");
        }
    }
    assert!(
        limited >= 7,
        "only {limited} of 10 instant calls limited at 5/s"
    );
    // VG has its own budget.
    assert_eq!(
        call(&sb, "GET", "/agents/a/convos/v", TOKEN, None).await.0,
        200
    );
    // The limit can change while running.
    sb.set_rate_limit(None);
    assert_eq!(
        call(&sb, "GET", "/v2/conversations/c1", KEY, None).await.0,
        200
    );
}

#[tokio::test]
async fn a_seed_makes_the_faults_repeatable() {
    async fn statuses(seed: u64) -> Vec<u16> {
        let sb = sandbox(Config {
            fail_rate: 0.3,
            drop_rate: 0.2,
            seed,
            ..Config::default()
        })
        .await;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let mut out = Vec::new();
        for i in 0..40 {
            let r = client
                .get(format!("http://{}/v2/conversations/c{i}", sb.addr))
                .header("Authorization", "sandbox-attention-key")
                .send()
                .await;
            out.push(r.map_or(0, |r| r.status().as_u16()));
        }
        out
    }
    let a = statuses(7).await;
    assert_eq!(a, statuses(7).await);
    assert_ne!(a, statuses(8).await);
    assert!(
        a.contains(&0) && a.contains(&200) && a.iter().any(|s| *s >= 500),
        "{a:?}"
    );
}

/// The sandbox's state with the volatile `lastModified` left out.
fn state_of(sb: &Sandbox, attention: &[&str], vg: &[(&str, &str)]) -> Value {
    let mut out = serde_json::Map::new();
    for id in attention {
        out.insert(
            format!("attention/{id}"),
            json!(sb.attention_conversation(id)),
        );
    }
    for (agent, id) in vg {
        let mut c = sb.vg_conversation(agent, id).unwrap_or_default();
        c.remove("lastModified");
        out.insert(format!("vg/{agent}/{id}"), Value::Object(c));
    }
    Value::Object(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_pipeline_survives_a_bad_day_and_ends_in_the_right_state() {
    // 600 edits over 30 conversations, every op.
    let mut rows = Vec::new();
    for i in 0..600 {
        let c = i % 30;
        let row = match (i / 30) % 5 {
            0 => format!(r#"attention.set_labels,att-{c},,,"{{""step"":""{i}""}}",,"#),
            1 => format!("attention.update,att-{c},,title {i},,,"),
            2 => format!(
                r#"attention.confirm_crm,att-{c},,,,"[{{""key"":""k{i}"",""value"":""v""}}]","#
            ),
            3 => format!(r#"vg.update,vg-{c},agent-{},,,,"[""t{}""]""#, c % 3, i % 7),
            _ => format!("vg.update,vg-{c},agent-{},note {i},,,", c % 3),
        };
        rows.push(row);
    }
    let w = Work::new();
    let src = w.write(
        "bad-day.csv",
        &csv(
            "op,conversation_id,agent_id,title,labels,intelligence,tags",
            &rows,
        ),
    );
    let attention: Vec<String> = (0..30).map(|c| format!("att-{c}")).collect();
    let vg: Vec<(String, String)> = (0..30)
        .map(|c| (format!("agent-{}", c % 3), format!("vg-{c}")))
        .collect();
    let att_ids: Vec<&str> = attention.iter().map(String::as_str).collect();
    let vg_ids: Vec<(&str, &str)> = vg.iter().map(|(a, c)| (a.as_str(), c.as_str())).collect();

    // What applying the edits in source order, one at a time, gives.
    let clean = plain_sandbox().await;
    let w2 = Work::new();
    w2.run(
        Some(&clean),
        &["run", src.to_str().unwrap(), "--concurrency", "1"],
    )
    .await
    .expect(0);
    let expected = state_of(&clean, &att_ids, &vg_ids);

    let rough = sandbox(Config {
        latency: Some((Duration::from_millis(0), Duration::from_millis(20))),
        rate_limit: Some(400.0),
        fail_rate: 0.1,
        drop_rate: 0.05,
        seed: 42,
        ..Config::default()
    })
    .await;
    w.run(
        Some(&rough),
        &[
            "run",
            src.to_str().unwrap(),
            "--concurrency",
            "16",
            "--max-attempts",
            "12",
            "--timeout",
            "5s",
            "--batch",
            "rough",
        ],
    )
    .await
    .expect(0);

    let db = w.db().await;
    let rows = audit_rows(&db).await;
    assert_eq!(rows.len(), 600);
    assert!(
        rows.iter().all(|r| r.1 == "succeeded"),
        "{:?}",
        rows.iter().find(|r| r.1 != "succeeded")
    );
    let reqs = rough.requests();
    assert!(reqs.iter().any(|r| r.status >= 500), "no 5xx was injected");
    assert!(
        reqs.iter().any(|r| r.status == 0),
        "no connection was dropped"
    );
    // Every write the server saw is an attempts row (a dropped one too);
    // every read (a confirmation checked before it is sent again) a reads row.
    let (attempts, reads): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM attempts), (SELECT COALESCE(sum(attempts), 0) FROM reads)",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    let gets = reqs.iter().filter(|r| r.method == "GET").count();
    assert_eq!(attempts as usize, reqs.len() - gets);
    assert_eq!(reads as usize, gets);
    assert_eq!(state_of(&rough, &att_ids, &vg_ids), expected);
}
