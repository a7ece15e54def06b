//! Live state (contract section 8): `plan` and `apply`, `--skip-unchanged`,
//! `--changed-only`, and `resume` settling in-doubt rows by reading.

use crate::common::*;
use convoy::sandbox::{Config, Sandbox, Scripted};
use serde_json::Value;
use std::time::Duration;

const NIGHT: &str = include_str!("../../samples/nightly.csv");

/// The sample night's header and its first `n` rows.
fn first_rows(n: usize) -> String {
    let mut lines: Vec<&str> = NIGHT.lines().take(n + 1).collect();
    lines.push("");
    lines.join("\n")
}

/// Both APIs' conversations as the sandbox holds them, without VG's
/// `lastModified` (a clock, different in every run).
async fn world(sb: &Sandbox) -> Value {
    let url = format!("http://{}/_sandbox/state", sb.reachable());
    let mut v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    for conv in v["vg"].as_object_mut().unwrap().values_mut() {
        conv.as_object_mut().unwrap().remove("lastModified");
    }
    v
}

/// Writes that reached the sandbox (every request but a GET).
fn writes(sb: &Sandbox) -> usize {
    sb.requests().iter().filter(|r| r.method != "GET").count()
}

/// The one conversation of the sample night whose labels a fresh sandbox
/// already holds ({}): given labels first, so that every row of the night
/// changes something on a fresh world.
async fn seed(w: &Work, sb: &Sandbox) {
    w.write(
        "seed.csv",
        "op,conversation_id,labels\nattention.set_labels,e6a7b8c9-d0e1-4f2a-9b3c-4d5e6f7a8b06,\"{\"\"stage\"\":\"\"seeded\"\"}\"\n",
    );
    w.run(Some(sb), &["run", "seed.csv", "--batch", "seed", "-q"])
        .await
        .expect(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_skips_exactly_the_applied_half_and_apply_sends_the_rest() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    seed(&w, &sb).await;
    w.write("half.csv", &first_rows(9));
    w.write("night.csv", NIGHT);
    w.run(Some(&sb), &["run", "half.csv", "--batch", "half", "-q"])
        .await
        .expect(0);
    let before = writes(&sb);

    let plan = w
        .run(Some(&sb), &["plan", "night.csv", "--batch", "night", "-q"])
        .await;
    plan.expect(0);
    let out = plan.stdout();
    assert_eq!(writes(&sb), before, "plan sends no write");
    assert!(
        out.contains("9 row(s) change something, 9 change nothing (skipped)"),
        "{out}"
    );
    assert!(
        out.contains("row 17 archive: archived: false -> true"),
        "{out}"
    );
    assert!(out.contains(r#"state: "ai-chatting" -> "open""#), "{out}");
    let db = w.db().await;
    let skipped: Vec<String> = sqlx::query_scalar(
        "SELECT row_key FROM audit WHERE batch_id = 'night' AND status = 'skipped' ORDER BY row_number",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let half: Vec<String> = (1..=9).map(|i| format!("n-{i:03}")).collect();
    assert_eq!(skipped, half, "exactly the applied half is skipped");
    let reads: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM reads WHERE batch_id = 'night' AND purpose = 'pre_image'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(reads, 10, "one read per conversation");
    let diff: String = sqlx::query_scalar(
        "SELECT changes FROM audit WHERE batch_id = 'night' AND row_key = 'n-016'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    let diff: Value = serde_json::from_str(&diff).unwrap();
    assert_eq!(diff["labels"]["before"]["stage"], "seeded");

    w.run(Some(&sb), &["apply", "night", "-q"]).await.expect(0);
    let sent: Vec<String> = sb.requests()[..]
        .iter()
        .filter(|r| r.method != "GET")
        .skip(before)
        .map(|r| r.segments[..].join("/"))
        .collect();
    assert_eq!(sent.len(), 9, "apply sends exactly the rest: {sent:?}");
    // A second apply is refused: the batch is no longer a plan.
    w.run(Some(&sb), &["apply", "night"]).await.expect(2);

    // The same world as one plain run of the whole night.
    let plain = plain_sandbox().await;
    let w2 = Work::new();
    seed(&w2, &plain).await;
    w2.write("night.csv", NIGHT);
    w2.run(Some(&plain), &["run", "night.csv", "-q"])
        .await
        .expect(0);
    assert_eq!(world(&sb).await, world(&plain).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_reports_an_unknown_conversation_before_the_night() {
    let sb = sandbox(Config {
        missing_prefix: "gone-".into(),
        ..Config::default()
    })
    .await;
    let w = Work::new();
    w.write(
        "n.csv",
        "op,conversation_id\nattention.archive,c1\nattention.archive,gone-1\n",
    );
    let plan = w.run(Some(&sb), &["plan", "n.csv", "--batch", "p"]).await;
    plan.expect(1);
    let out = plan.stdout();
    assert!(out.contains("1 would fail"), "{out}");
    assert!(out.contains("HTTP 404 on reading it"), "{out}");
    let json = w
        .run(
            Some(&sb),
            &["plan", "n.csv", "--batch", "p2", "--json", "-q"],
        )
        .await;
    let v: Value = serde_json::from_str(&json.stdout()).unwrap();
    assert_eq!(v["summary"]["fail"], 1);
    assert_eq!(v["rows"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_unchanged_reads_each_conversation_once_and_resends_nothing_already_there() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    w.write("night.csv", NIGHT);
    w.run(Some(&sb), &["run", "night.csv", "--batch", "one", "-q"])
        .await
        .expect(0);
    let (writes_before, all_before) = (writes(&sb), sb.requests().len());
    let again = w
        .run(
            Some(&sb),
            &[
                "run",
                "night.csv",
                "--batch",
                "two",
                "--skip-unchanged",
                "-q",
            ],
        )
        .await;
    again.expect(0);
    assert!(
        again.stdout().contains("18 skipped (unchanged)"),
        "{}",
        again.stdout()
    );
    assert_eq!(writes(&sb), writes_before, "nothing was sent again");
    assert_eq!(
        sb.requests().len() - all_before,
        10,
        "one GET per conversation"
    );
    // The confirmed intelligence is there once, not twice.
    let c = sb
        .attention_conversation("6f1c2a9e-0b1d-4e51-9a57-3c2f8d7e1a01")
        .unwrap();
    assert_eq!(
        c["confirmedExtractedIntelligence"]
            .as_object()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_only_sends_nothing_the_second_time_and_exactly_the_rows_that_differ() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let rows = |changed: &[usize]| -> Vec<String> {
        (0..200)
            .map(|i| {
                let stage = if changed.contains(&i) { "won" } else { "open" };
                format!("attention.set_labels,c{i},\"{{\"\"stage\"\":\"\"{stage}\"\"}}\"")
            })
            .collect()
    };
    w.write("full.csv", &csv("op,conversation_id,labels", &rows(&[])));
    let run = |name: &'static str| {
        let w = &w;
        let sb = &sb;
        async move {
            w.run(
                Some(sb),
                &["run", "full.csv", "--batch", name, "--changed-only", "-q"],
            )
            .await
            .expect(0);
            writes(sb)
        }
    };
    assert_eq!(run("night1").await, 200);
    assert_eq!(run("night2").await, 200, "the second run sends nothing");
    // 5% of the rows differ: exactly those are sent.
    let changed: Vec<usize> = (0..200).step_by(20).collect();
    w.write(
        "full.csv",
        &csv("op,conversation_id,labels", &rows(&changed)),
    );
    assert_eq!(run("night3").await, 210);
    let mut sent: Vec<String> = sb.requests()[200..]
        .iter()
        .map(|r| r.segments[2].clone())
        .collect();
    sent.sort();
    let mut want: Vec<String> = changed.iter().map(|i| format!("c{i}")).collect();
    want.sort();
    assert_eq!(sent, want);
}

/// A crash with CRM confirmations on the wire: the sandbox applied them,
/// convoy never heard. `resume` reads each conversation, sees its
/// confirmation there, and records it as verified instead of sending it
/// again: each item is held exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_resume_verifies_confirmations_by_reading_and_never_duplicates_them() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let rows: Vec<String> = (0..10)
        .map(|i| {
            sb.script(&format!("c{i}"), [Scripted::Slow(Duration::from_secs(60))]);
            format!(
                "attention.confirm_crm,c{i},\"[{{\"\"key\"\":\"\"next\"\",\"\"value\"\":\"\"demo {i}\"\"}}]\""
            )
        })
        .collect();
    w.write("n.csv", &csv("op,conversation_id,intelligence", &rows));
    let mut child = w
        .convoy(Some(&sb))
        .args([
            "run",
            "n.csv",
            "--batch",
            "night",
            "-q",
            "--concurrency",
            "10",
        ])
        .spawn()
        .unwrap();
    sb.routed_at_least(10).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let db = w.db().await;
    let in_flight: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit WHERE status = 'in_flight'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(in_flight, 10);

    w.run(Some(&sb), &["resume", "night", "-q"]).await.expect(0);
    for i in 0..10 {
        let c = sb.attention_conversation(&format!("c{i}")).unwrap();
        let held = c["confirmedExtractedIntelligence"].as_object().unwrap();
        assert_eq!(held.len(), 1, "c{i} holds {held:?}");
    }
    let verified: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.row_key, r.purpose FROM audit a JOIN reads r ON r.batch_id = a.batch_id AND r.row_key = a.row_key \
         WHERE a.status = 'succeeded' AND a.error LIKE 'verified by a read%' ORDER BY a.row_number",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(verified.len(), 10, "{verified:?}");
    assert!(verified.iter().all(|(_, p)| p == "verify"));
    let status = w.run(None, &["status", "night"]).await;
    assert!(
        status
            .stdout()
            .contains("10 in-doubt row(s) verified by a read"),
        "{}",
        status.stdout()
    );
}
