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
    // A second apply is refused: the batch is no longer a plan. A resume
    // sends nothing: skipped rows are never sent, and are not "gone" either.
    w.run(Some(&sb), &["apply", "night"]).await.expect(2);
    let writes_after = writes(&sb);
    let resumed = w.run(Some(&sb), &["resume", "night", "-q"]).await;
    resumed.expect(0);
    assert_eq!(writes(&sb), writes_after, "a resume sent a skipped row");
    assert!(
        !resumed.stderr().contains("no longer in the source"),
        "{}",
        resumed.stderr()
    );

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
    // `failures` of a plan exports what would fail, not what apply will send.
    let failures = w.run(None, &["failures", "p"]).await;
    failures.expect(0);
    let out = failures.stdout();
    assert!(out.contains("gone-1") && !out.contains("c1,"), "{out}");
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
    assert!(again.stdout().contains("18 skipped"), "{}", again.stdout());
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

/// Both APIs' conversations, each cut down to the fields an undo puts back:
/// Attention labels and title, VG fields other than tags and `lastModified`.
fn reversible(world: &Value) -> Value {
    let mut out = world.clone();
    for conv in out["attention"].as_object_mut().unwrap().values_mut() {
        let c = conv.as_object_mut().unwrap();
        c.retain(|k, _| k == "labels" || k == "title");
    }
    for conv in out["vg"].as_object_mut().unwrap().values_mut() {
        conv.as_object_mut().unwrap().remove("tags");
    }
    out
}

/// The sample night run with `--capture-before`, then undone: every
/// reversible field is back, every irreversible change is listed (output
/// and audit), and the undo batch resumes after a SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_puts_back_every_reversible_field_and_lists_the_rest() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    w.write("night.csv", NIGHT);
    // Every conversation of the night, as it is before the night (a plan
    // reads each one and writes nothing).
    w.run(Some(&sb), &["plan", "night.csv", "--batch", "look", "-q"])
        .await
        .expect(0);
    let captured = world(&sb).await;

    w.run(
        Some(&sb),
        &[
            "run",
            "night.csv",
            "--batch",
            "night",
            "--capture-before",
            "-q",
        ],
    )
    .await
    .expect(0);
    assert_ne!(reversible(&world(&sb).await), reversible(&captured));

    // The undo batch is sent slowly and killed midway, then resumed.
    let writes_before = writes(&sb);
    let mut child = w
        .convoy(Some(&sb))
        .args([
            "undo",
            "night",
            "-q",
            "--attention-rate",
            "2/s",
            "--vg-rate",
            "2/s",
        ])
        .spawn()
        .unwrap();
    sb.routed_at_least((sb.requests().len() + 3) as u64).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let unsent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit WHERE batch_id = 'undo-night' AND status IN ('pending', 'in_flight')",
    )
    .fetch_one(&w.db().await)
    .await
    .unwrap();
    assert!(unsent > 0, "the undo batch was killed before its end");
    let resumed = w.run(Some(&sb), &["resume", "undo-night", "-q"]).await;
    resumed.expect(0);
    assert!(writes(&sb) > writes_before);
    assert_eq!(reversible(&world(&sb).await), reversible(&captured));

    // What cannot be undone is listed, by conversation and field.
    let dry = w.run(Some(&sb), &["undo", "night", "--dry-run"]).await;
    dry.expect(0);
    let out = dry.stdout();
    for line in [
        "attention c4e5f6a7-b8c9-4d0e-9f1a-2b3c4d5e6f04 archived: neither API documents",
        "attention 9a3d5e7f-1b2c-4d6e-8f90-a1b2c3d4e503 confirmedExtractedIntelligence: 2 CRM",
        r#"vg convo_9101 tags: added ["vip","enterprise"]"#,
    ] {
        assert!(out.contains(line), "{line}\n{out}");
    }
    let db = w.db().await;
    let listed: Vec<String> = sqlx::query_scalar(
        "SELECT row_key FROM audit WHERE batch_id = 'undo-night' AND error LIKE 'cannot be undone:%' ORDER BY row_key",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(listed.len(), 7, "{listed:?}");
    assert!(
        listed.contains(&"attention/0b7e4d12-7c3a-4a8e-b2f0-5d9e6c4b3a02/!archived".to_owned())
    );
}

/// A conversation edited after the batch is a conflict: `undo` leaves it
/// alone (exit 1, listed), and `--force` undoes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_leaves_a_conversation_changed_since_alone_unless_forced() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    w.write(
        "n.csv",
        "op,conversation_id,labels\nattention.set_labels,c1,\"{\"\"s\"\":\"\"new\"\"}\"\nattention.set_labels,c2,\"{\"\"s\"\":\"\"new\"\"}\"\n",
    );
    w.run(
        Some(&sb),
        &["run", "n.csv", "--batch", "night", "--capture-before", "-q"],
    )
    .await
    .expect(0);
    // Someone edits c2 in the app the next morning.
    w.write(
        "app.csv",
        "op,conversation_id,labels\nattention.set_labels,c2,\"{\"\"s\"\":\"\"by hand\"\"}\"\n",
    );
    w.run(Some(&sb), &["run", "app.csv", "--batch", "app", "-q"])
        .await
        .expect(0);

    let undo = w.run(Some(&sb), &["undo", "night"]).await;
    undo.expect(1);
    assert!(
        undo.stdout()
            .contains("1 conversation(s) changed since night"),
        "{}",
        undo.stdout()
    );
    let labels = |id: &str| sb.attention_conversation(id).unwrap()["labels"].clone();
    assert_eq!(labels("c1"), serde_json::json!({}));
    assert_eq!(labels("c2"), serde_json::json!({"s": "by hand"}));

    w.run(
        Some(&sb),
        &["undo", "night", "--batch", "undo-forced", "--force", "-q"],
    )
    .await
    .expect(0);
    assert_eq!(labels("c2"), serde_json::json!({}));

    // A batch run without pre-images cannot be undone; undo says so.
    let dry = w.run(Some(&sb), &["undo", "app", "--dry-run"]).await;
    dry.expect(0);
    assert!(
        dry.stdout().contains("attention c2 (all): no pre-image"),
        "{}",
        dry.stdout()
    );
}

/// A batch made with `plan` + `apply`, or with `--skip-unchanged`, has its
/// pre-images already: `undo` needs no `--capture-before`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_apply_or_skip_unchanged_leave_pre_images_for_undo() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let set = |stage: &str| {
        format!(
            "op,conversation_id,labels\nattention.set_labels,c1,\"{{\"\"s\"\":\"\"{stage}\"\"}}\"\n"
        )
    };
    w.write("a.csv", &set("a"));
    w.write("b.csv", &set("b"));
    w.run(Some(&sb), &["plan", "a.csv", "--batch", "planned", "-q"])
        .await
        .expect(0);
    w.run(Some(&sb), &["apply", "planned", "-q"])
        .await
        .expect(0);
    w.run(
        Some(&sb),
        &[
            "run",
            "b.csv",
            "--batch",
            "skipping",
            "--skip-unchanged",
            "-q",
        ],
    )
    .await
    .expect(0);
    let labels = || sb.attention_conversation("c1").unwrap()["labels"].clone();
    assert_eq!(labels(), serde_json::json!({"s": "b"}));
    w.run(Some(&sb), &["undo", "skipping", "-q"])
        .await
        .expect(0);
    assert_eq!(labels(), serde_json::json!({"s": "a"}));
    w.run(Some(&sb), &["undo", "planned", "-q"]).await.expect(0);
    assert_eq!(labels(), serde_json::json!({}));
}

/// A plan is judged when it is made: applying one made long ago warns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_an_old_plan_warns_that_it_may_be_stale() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    w.write("n.csv", "op,conversation_id\nattention.archive,c1\n");
    w.run(Some(&sb), &["plan", "n.csv", "--batch", "p", "-q"])
        .await
        .expect(0);
    sqlx::query(
        "UPDATE batches SET finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-3 hours') WHERE id = 'p'",
    )
    .execute(&w.db().await)
    .await
    .unwrap();
    let out = w.run(Some(&sb), &["apply", "p", "-q"]).await;
    out.expect(0);
    assert!(
        out.stderr().contains("this plan was judged 3h"),
        "{}",
        out.stderr()
    );
}
