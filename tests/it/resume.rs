//! `convoy resume`, interruption and crash safety: a failed night is
//! finished, and a row that succeeded is never sent again.

use crate::common::*;
use convoy::sandbox::{Config, Sandbox};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// `n` rows over `n / 10` conversations; each row's body names it (`t-<i>`).
fn night(n: usize) -> String {
    let rows: Vec<String> = (0..n)
        .map(|i| match i % 3 {
            0 | 1 => format!("r{i},attention.update,att-{},,t-{i}", i % (n / 10)),
            _ => format!("r{i},vg.update,vg-{},agent-{},t-{i}", i % (n / 10), i % 4),
        })
        .collect();
    csv("row_id,op,conversation_id,agent_id,title", &rows)
}

/// The row a request was for, from the title its body carries.
fn row_of(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let t = v
        .get("title")
        .or_else(|| v.get("conversation").and_then(|c| c.get("title")))?;
    Some(format!("r{}", t.as_str()?.strip_prefix("t-")?))
}

/// Waits (bounded) until the sandbox has served `n` requests.
async fn served(sb: &Sandbox, n: u64) {
    for _ in 0..3000 {
        if sb.state.served.load(Relaxed) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the sandbox never served {n} requests");
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// The final state of every conversation, volatile stamps left out.
fn world(sb: &Sandbox, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for c in 0..n / 10 {
        out.push(serde_json::json!(
            sb.attention_conversation(&format!("att-{c}"))
        ));
        for a in 0..4 {
            let mut v = sb
                .vg_conversation(&format!("agent-{a}"), &format!("vg-{c}"))
                .unwrap_or_default();
            v.remove("lastModified");
            out.push(Value::Object(v));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_is_finished_by_resume_without_resending_a_success() {
    const N: usize = 3000;
    let clean = plain_sandbox().await;
    let w0 = Work::new();
    let src0 = w0.write("night.csv", &night(N));
    w0.run(
        Some(&clean),
        &["run", src0.to_str().unwrap(), "--concurrency", "1"],
    )
    .await
    .expect(0);
    let expected = world(&clean, N);

    for kill_at in [50, 900, 2200] {
        let sb = sandbox(Config {
            latency: Some((Duration::from_millis(1), Duration::from_millis(6))),
            ..Config::default()
        })
        .await;
        let w = Work::new();
        let src = w.write("night.csv", &night(N));
        let mut child = w
            .convoy(Some(&sb))
            .args([
                "run",
                src.to_str().unwrap(),
                "--batch",
                "night",
                "--concurrency",
                "16",
                "--quiet",
            ])
            .spawn()
            .unwrap();
        served(&sb, kill_at).await;
        signal(child.id().unwrap(), "-KILL");
        let status = child.wait().await.unwrap();
        assert!(!status.success(), "convoy was not killed at {kill_at}");

        // What the database says succeeded before the kill...
        let db = w.db().await;
        let before: Vec<(String,)> =
            sqlx::query_as("SELECT row_key FROM audit WHERE status = 'succeeded'")
                .fetch_all(&db)
                .await
                .unwrap();
        // A row still pending was never sent: a call goes out only after its in_flight mark is committed.
        let pending: Vec<(String,)> =
            sqlx::query_as("SELECT row_key FROM audit WHERE status = 'pending'")
                .fetch_all(&db)
                .await
                .unwrap();
        db.close().await;
        let seen_before = sb.requests().len();
        let sent_before: std::collections::HashSet<String> = sb
            .requests()
            .iter()
            .filter_map(|r| row_of(&r.body))
            .collect();
        for (k,) in &pending {
            assert!(
                !sent_before.contains(k),
                "row {k} is pending after the kill at {kill_at}, yet it was sent"
            );
        }

        let mut code = -1;
        for _ in 0..3 {
            code = w
                .run(Some(&sb), &["resume", "night", "--quiet"])
                .await
                .code();
            if code == 0 {
                break;
            }
        }
        assert_eq!(code, 0, "resume never finished (killed at {kill_at})");

        // ...was never sent again.
        let after: HashMap<String, usize> = sb.requests()[seen_before..]
            .iter()
            .filter_map(|r| row_of(&r.body))
            .fold(HashMap::new(), |mut m, k| {
                *m.entry(k).or_default() += 1;
                m
            });
        for (k,) in &before {
            assert!(
                !after.contains_key(k),
                "row {k} succeeded before the kill at {kill_at} and was sent again"
            );
        }
        let rows = audit_rows(&w.db().await).await;
        assert_eq!(rows.len(), N);
        assert!(
            rows.iter().all(|r| r.1 == "succeeded"),
            "killed at {kill_at}: {:?}",
            rows.iter().find(|r| r.1 != "succeeded")
        );
        assert!(
            world(&sb, N) == expected,
            "killed at {kill_at}: the final state differs from the source applied in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_cleanly_and_resume_finishes() {
    const N: usize = 1000;
    let sb = sandbox(Config {
        latency: Some((Duration::from_millis(2), Duration::from_millis(8))),
        ..Config::default()
    })
    .await;
    let w = Work::new();
    let src = w.write("night.csv", &night(N));
    let child = w
        .convoy(Some(&sb))
        .args([
            "run",
            src.to_str().unwrap(),
            "--batch",
            "night",
            "--concurrency",
            "8",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    served(&sb, 200).await;
    signal(child.id().unwrap(), "-INT");
    let out = Out(child.wait_with_output().await.unwrap());
    out.expect(130);
    assert!(
        out.stdout().contains("convoy resume night"),
        "{}",
        out.stdout()
    );

    let db = w.db().await;
    let (status,): (String,) = sqlx::query_as("SELECT status FROM batches")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(status, "interrupted");
    let (in_flight, done): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'in_flight'), count(*) FILTER (WHERE status = 'succeeded') FROM audit",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(in_flight, 0, "rows left in_flight after a clean stop");
    assert!(done > 0 && (done as usize) < N, "{done} succeeded");
    // Every call the server answered is recorded: nothing sent is unaccounted for.
    assert_eq!(sb.requests().len() as i64, done);

    w.run(Some(&sb), &["resume", "night"]).await.expect(0);
    assert_eq!(
        sb.requests().len(),
        N,
        "resume sent some rows twice or missed some"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_fixing_two_invalid_rows_sends_exactly_those_two() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let good = "row_id,op,conversation_id,labels\na,attention.set_labels,c1,{}\nb,attention.set_labels,c2,{\"x\":1}\nc,attention.set_labels,c3,{}\n";
    let bad = good
        .replace("c2,{\"x\":1}", "c2,{x:1}")
        .replace("c,attention.set_labels", "c,attention.set_label");
    let src = w.write("l.csv", &bad);
    w.run(Some(&sb), &["run", src.to_str().unwrap(), "--batch", "l"])
        .await
        .expect(1);
    assert_eq!(sb.requests().len(), 1);
    w.write("l.csv", good);
    let out = w.run(Some(&sb), &["resume", "l"]).await;
    out.expect(0);
    let reqs = sb.requests();
    assert_eq!(reqs.len(), 3);
    let mut resent: Vec<&str> = reqs[1..].iter().map(|r| r.segments[2].as_str()).collect();
    resent.sort();
    assert_eq!(resent, ["c2", "c3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_401_with_the_right_key_sends_exactly_the_unfinished_rows() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let mut rows: Vec<String> = (0..50)
        .map(|i| format!("attention.archive,c{i},,"))
        .collect();
    rows.extend((0..10).map(|i| format!("vg.update,v{i},ag,open")));
    let src = w.write("s.csv", &csv("op,conversation_id,agent_id,state", &rows));
    let out = w
        .convoy(Some(&sb))
        .env("ATTENTION_API_KEY", "wrong")
        .args([
            "run",
            src.to_str().unwrap(),
            "--batch",
            "s",
            "--concurrency",
            "2",
        ])
        .output()
        .await
        .unwrap();
    Out(out).expect(3);
    let rejected = sb.requests().iter().filter(|r| r.status == 401).count();
    let before = sb.requests().len();
    w.run(Some(&sb), &["resume", "s"]).await.expect(0);
    let resent = &sb.requests()[before..];
    // Exactly the 50 Attention rows (those rejected and those never sent), once each; no VG row again.
    assert_eq!(resent.len(), 50, "{rejected} were rejected");
    assert!(
        resent
            .iter()
            .all(|r| r.segments[0] == "v2" && r.status == 200)
    );
    let mut ids: Vec<&str> = resent.iter().map(|r| r.segments[2].as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_warns_about_changed_succeeded_rows_and_takes_new_ones() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let src = w.write(
        "r.csv",
        "row_id,op,conversation_id,title\na,attention.update,c1,One\nb,attention.update,c2,Two\n",
    );
    w.run(Some(&sb), &["run", src.to_str().unwrap(), "--batch", "r"])
        .await
        .expect(0);
    w.write(
        "r.csv",
        "row_id,op,conversation_id,title\na,attention.update,c1,Uno\nc,attention.update,c3,Three\n",
    );
    let out = w.run(Some(&sb), &["resume", "r"]).await;
    out.expect(0);
    assert!(
        out.stderr()
            .contains("row 1 (row_id a) changed since it succeeded"),
        "{}",
        out.stderr()
    );
    assert!(
        out.stderr().contains("1 row(s) new in the source"),
        "{}",
        out.stderr()
    );
    let reqs = sb.requests();
    assert_eq!(reqs.len(), 3, "only the new row was sent");
    assert_eq!(reqs[2].segments[2], "c3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_from_stdin_is_resumed_from_what_was_recorded() {
    let sb = plain_sandbox().await;
    sb.script(
        "c2",
        [convoy::sandbox::Scripted::Status {
            status: 500,
            retry_after: None,
            body: None,
        }],
    );
    let w = Work::new();
    let args = [
        "run",
        "-",
        "--op",
        "attention.archive",
        "--batch",
        "in",
        "--max-attempts",
        "1",
    ];
    w.run_stdin(Some(&sb), &args, b"conversation_id\nc1\nc2\n")
        .await
        .expect(1);
    w.run(Some(&sb), &["resume", "in"]).await.expect(0);
    let reqs = sb.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[2].segments[2], "c2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_of_an_unknown_batch_is_a_usage_error() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let src = w.write("r.csv", "op,conversation_id\nattention.archive,c1\n");
    w.run(
        Some(&sb),
        &["run", src.to_str().unwrap(), "--batch", "known"],
    )
    .await
    .expect(0);
    let out = w.run(Some(&sb), &["resume", "unknown"]).await;
    out.expect(2);
    assert!(
        out.stderr().contains("no batch \"unknown\""),
        "{}",
        out.stderr()
    );
}
