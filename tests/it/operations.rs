//! Operations at 3 a.m. (issue 14): canaries, machine-readable results,
//! every missing key at once.

use crate::common::*;

/// `--limit 5` sends exactly the first 5 rows; `resume` sends the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_sends_exactly_n_rows_and_resume_sends_the_rest() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let mut rows = mixed_rows(12, 8);
    // Mixed APIs in source order: the first five are a0..a4.
    rows.swap(3, 15);
    w.write("n.csv", &csv("op,conversation_id,agent_id,state", &rows));
    let out = w
        .run(
            Some(&sb),
            &["run", "n.csv", "--batch", "night", "--limit", "5"],
        )
        .await;
    out.expect(0);
    assert!(
        out.stdout().contains("canary: the first 5 row(s)"),
        "{}",
        out.stdout()
    );
    let sent: Vec<String> = sb
        .requests()
        .iter()
        .map(|r| r.segments.last().unwrap().clone())
        .collect();
    assert_eq!(sent.len(), 5, "{sent:?}");
    let mut sent_sorted = sent.clone();
    sent_sorted.sort();
    assert_eq!(sent_sorted, ["a0", "a1", "a2", "a4", "v3"]);
    w.run(Some(&sb), &["resume", "night"]).await.expect(0);
    assert_eq!(sb.requests().len(), 20, "a row was sent twice or never");
}

/// `run --json` prints the finished batch and nothing else on stdout: the
/// same object as `status NAME --json` (but for the duration, still growing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_json_equals_status_json() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    w.write(
        "n.csv",
        "op,conversation_id\nattention.archive,c1\nattention.archive,missing-2\n",
    );
    let out = w
        .run(Some(&sb), &["run", "n.csv", "--batch", "night", "--json"])
        .await;
    out.expect(1);
    let ran: serde_json::Value =
        serde_json::from_str(&out.stdout()).expect("stdout is one JSON document");
    assert!(
        out.stderr().contains("batch night failed"),
        "the summary goes to stderr: {}",
        out.stderr()
    );
    let status = w.run(None, &["status", "night", "--json"]).await;
    let mut later: serde_json::Value = serde_json::from_str(&status.stdout()).unwrap();
    let mut ran = ran;
    for v in [&mut ran, &mut later] {
        v.as_object_mut().unwrap().remove("duration_seconds");
    }
    assert_eq!(ran, later);
    assert_eq!(ran["counts"]["failed"], 1);
    // resume --json too, with nothing to send.
    let out = w.run(Some(&sb), &["resume", "night", "--json"]).await;
    let resumed: serde_json::Value = serde_json::from_str(&out.stdout()).expect("resume --json");
    assert_eq!(resumed["batch"], "night");
}

/// Both keys missing: both named in one go; `--dry-run` warns of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_missing_key_is_named_at_once_and_dry_run_warns() {
    let w = Work::new();
    w.write(
        "n.csv",
        "op,conversation_id,agent_id,state\nattention.archive,c1,,\nvg.update,v1,a,open\n",
    );
    let out = w
        .run(
            None,
            &[
                "run",
                "n.csv",
                "--attention-url",
                "http://127.0.0.1:9/v2",
                "--vg-url",
                "http://127.0.0.1:9",
            ],
        )
        .await;
    out.expect(2);
    let err = out.stderr();
    assert!(
        err.contains("ATTENTION_API_KEY is not set") && err.contains("VG_API_TOKEN is not set"),
        "{err}"
    );
    let out = w.run(None, &["run", "n.csv", "--dry-run"]).await;
    out.expect(0);
    let err = out.stderr();
    assert!(
        err.contains("warning: ATTENTION_API_KEY is not set") && err.contains("VG_API_TOKEN"),
        "{err}"
    );
}

/// Completions and the man page come from the clap definitions; `--help`
/// groups the flags and names the new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_man_page_and_help() {
    let w = Work::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = w.run(None, &["completions", shell]).await;
        out.expect(0);
        assert!(
            out.stdout().contains("resume") && out.stdout().contains("attention-rate"),
            "{shell}"
        );
    }
    let man = w.run(None, &["man"]).await;
    man.expect(0);
    assert!(man.stdout().contains(".TH convoy"), "{}", man.stdout());
    let help = w.run(None, &["run", "--help"]).await.stdout();
    for words in [
        "Input:",
        "Sending:",
        "Pacing:",
        "Endpoints:",
        "Audit and output:",
        "--limit <N>",
        "--json",
        "--encoding",
        "--delimiter",
        "--send-older-edits",
        "--min-free",
        "--concurrency",
        "[default: auto]",
    ] {
        assert!(
            help.contains(words),
            "{words:?} missing from run --help:\n{help}"
        );
    }
}

/// A night where every row 404s (a mapping bug) stops itself within about
/// 100 calls: the rest stay pending, the cluster is named, exit 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_stops_a_systematically_failing_night() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let rows: Vec<String> = (0..600)
        .map(|i| format!("attention.archive,missing-{i}"))
        .collect();
    w.write("n.csv", &csv("op,conversation_id", &rows));
    let out = w
        .run(Some(&sb), &["run", "n.csv", "--batch", "night"])
        .await;
    out.expect(3);
    let stdout = out.stdout();
    assert!(
        stdout.contains("circuit breaker tripped") && stdout.contains("not found"),
        "{stdout}"
    );
    let sent = sb.requests().len();
    assert!(sent <= 150, "{sent} calls before the breaker tripped");
    let (pending,): (i64,) = sqlx::query_as("SELECT count(*) FROM audit WHERE status = 'pending'")
        .fetch_one(&w.db().await)
        .await
        .unwrap();
    assert_eq!(
        pending as usize,
        600 - sent,
        "every unsent row stays pending"
    );
    // Turned off, it lets the night run on.
    let out = w
        .run(Some(&sb), &["resume", "night", "--max-failure-rate", "0"])
        .await;
    out.expect(1);
    // The failed rows go again with the pending ones: all 600 this time.
    assert_eq!(sb.requests().len(), sent + 600);
}

/// A healthy night with 2% of rows failing for good never trips it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_leaves_a_healthy_night_alone() {
    let sb = plain_sandbox().await;
    let w = Work::new();
    let rows: Vec<String> = (0..600)
        .map(|i| {
            let id = if i % 50 == 7 {
                format!("missing-{i}")
            } else {
                format!("c{i}")
            };
            format!("attention.archive,{id}")
        })
        .collect();
    w.write("n.csv", &csv("op,conversation_id", &rows));
    let out = w.run(Some(&sb), &["run", "n.csv"]).await;
    out.expect(1);
    assert!(
        !out.stdout().contains("circuit breaker"),
        "{}",
        out.stdout()
    );
    assert_eq!(sb.requests().len(), 600);
}

/// The sandbox stopped mid-run for 20 s, then started again (five attempts
/// spend 0.25 + 0.5 + 1 + 2 s of backoff, so each row would have failed for
/// good): the API is treated
/// as down, rows spend no attempts meanwhile, none fails, and sending
/// resumes when it is back. (Before, every remaining row burned its attempts
/// and failed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_ridden_out_and_no_row_fails() {
    use convoy::sandbox::{Config, Sandbox};
    let first = plain_sandbox().await;
    let addr = first.addr;
    let w = Work::new();
    let rows: Vec<String> = (0..200)
        .map(|i| format!("attention.archive,c{i}"))
        .collect();
    w.write("n.csv", &csv("op,conversation_id", &rows));
    let run = w
        .convoy(Some(&first))
        .args([
            "run",
            "n.csv",
            "--batch",
            "night",
            "--attention-rate",
            "40/s",
        ])
        .output();
    let outage = async {
        first.served_at_least(40).await;
        let state = first.state.clone();
        drop(first);
        // The outage itself: a scenario's length, not a wait for something.
        tokio::time::sleep(std::time::Duration::from_secs(20)).await;
        let second = Sandbox::start(Config::default(), addr)
            .await
            .expect("restart on the same port");
        (state, second)
    };
    let (out, (state, second)) = tokio::join!(run, outage);
    let before = state.requests();
    let out = Out(out.unwrap());
    out.expect(0);
    assert!(
        out.stderr().contains("API was down for"),
        "{}",
        out.stderr()
    );
    let db = w.db().await;
    let rows = audit_rows(&db).await;
    assert!(
        rows.iter().all(|r| r.1 == "succeeded"),
        "a row did not succeed: {rows:?}"
    );
    // Every conversation was applied; at most the calls cut off by the
    // outage (their answers lost) were applied twice.
    let mut applied = std::collections::HashMap::new();
    for r in before
        .iter()
        .chain(second.requests().iter())
        .filter(|r| r.applied)
    {
        *applied.entry(r.path.clone()).or_insert(0) += 1;
    }
    assert_eq!(applied.len(), 200);
    let twice = applied.values().filter(|n| **n > 1).count();
    assert!(twice <= 16, "{twice} rows applied twice");
}
