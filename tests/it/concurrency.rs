//! `--concurrency N` is a hard cap on each API's calls on the wire
//! (issue 37), in every path: a conversation's next edit handed on, rows
//! back from a retry's backoff, and the reads of `--skip-unchanged` and
//! `plan`. The sandbox counts each call from its arrival until its answer is
//! handed to the connection, so its peak is never more than the client had
//! on the wire.

use crate::common::*;
use convoy::edit::Api;
use convoy::sandbox::{Config, Sandbox, Scripted};
use std::time::Duration;

/// `edits` edits each of `conversations` conversations, interleaved in blocks
/// of 4 (c1v1 c2v1 c3v1 c4v1 c1v2 ... c4v10, then c5v1 ...): the night the
/// issue reproduced 18–20 in flight with `--concurrency 16` on.
fn interleaved(
    prefix: &str,
    conversations: usize,
    edits: usize,
    row: fn(&str, usize) -> String,
) -> Vec<String> {
    let mut rows = Vec::new();
    for block in (0..conversations).step_by(4) {
        for v in 1..=edits {
            for c in block..(block + 4).min(conversations) {
                rows.push(row(&format!("{prefix}{c}"), v));
            }
        }
    }
    rows
}

const HEADER: &str = "op,conversation_id,agent_id,title";

fn attention(id: &str, v: usize) -> String {
    format!("attention.update,{id},,Version {v}")
}

fn vg(id: &str, v: usize) -> String {
    format!("vg.update,{id},agent,Version {v}")
}

fn far(ms: u64) -> Config {
    let d = Duration::from_millis(ms);
    Config {
        latency: Some((d - d / 10, d + d / 10)),
        ..Config::default()
    }
}

/// Runs `rows` against `sb` with `--concurrency n` (and `extra`); every row
/// ends succeeded (or skipped, as changing nothing).
async fn night(sb: Sandbox, rows: &[String], n: usize, extra: &[&str]) -> Sandbox {
    let w = Work::new();
    let src = w.write("night.csv", &csv(HEADER, rows));
    let n = n.to_string();
    let mut args = vec!["run", src.to_str().unwrap(), "--concurrency", &n];
    args.extend_from_slice(extra);
    w.run(Some(&sb), &args).await.expect(0);
    let db = w.db().await;
    let unsettled: Vec<(String, String)> = sqlx::query_as(
        "SELECT row_key, status FROM audit WHERE status NOT IN ('succeeded', 'skipped')",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(unsettled.is_empty(), "rows left unsettled: {unsettled:?}");
    sb
}

fn assert_cap(sb: &Sandbox, api: Api, n: u64) {
    let peak = sb.peak_in_flight(api);
    assert!(
        peak <= n,
        "{api}: {peak} calls in flight at once with --concurrency {n}"
    );
    // Conversations still run side by side, up to the cap.
    assert_eq!(
        peak, n,
        "{api}: at most {peak} in flight, never the {n} allowed"
    );
}

async fn shared_conversations(ms: u64, n: u64) {
    let rows = interleaved("c", 20, 10, attention);
    let sb = night(sandbox(far(ms)).await, &rows, n as usize, &[]).await;
    assert_cap(&sb, Api::Attention, n);
}

/// With 20 conversations of 10 edits each, a finished edit handed its
/// conversation's next one to the wire at once, over the cap: 18–20 calls
/// in flight with `--concurrency 16`, 11 with `--concurrency 8`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_when_rows_share_conversations_near() {
    tokio::join!(shared_conversations(20, 4), shared_conversations(20, 16));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_when_rows_share_conversations_far() {
    tokio::join!(shared_conversations(200, 4), shared_conversations(200, 16));
}

/// Both APIs in one night, with `--skip-unchanged`: each conversation read
/// once, then its edits; the cap holds per API, reads and writes together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_per_api_for_reads_and_writes() {
    let mut rows = interleaved("a", 20, 5, attention);
    rows.extend(interleaved("v", 20, 5, vg));
    let sb = night(sandbox(far(20)).await, &rows, 4, &["--skip-unchanged"]).await;
    let reads = sb.requests().iter().filter(|r| r.method == "GET").count();
    assert_eq!(reads, 40, "one read per conversation");
    assert_cap(&sb, Api::Attention, 4);
    assert_cap(&sb, Api::Vg, 4);
}

/// Rows back from a 429's backoff: asleep, a row gives its slot to the next
/// row, and when it woke both went on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_for_rows_back_from_a_backoff() {
    let sb = sandbox(far(20)).await;
    let rows: Vec<String> = (0..100).map(|i| attention(&format!("c{i}"), 1)).collect();
    for i in 0..100 {
        // Every row's first call draws a 429 without `Retry-After`.
        let limited = Scripted::Status {
            status: 429,
            retry_after: None,
            body: None,
        };
        sb.script(&format!("c{i}"), [limited]);
    }
    let sb = night(sb, &rows, 4, &["--attention-rate", "500/s"]).await;
    let limited = sb.requests().iter().filter(|r| r.status == 429).count();
    assert_eq!(limited, 100);
    let peak = sb.peak_in_flight(Api::Attention);
    assert!(
        peak <= 4,
        "{peak} calls in flight at once with --concurrency 4"
    );
}

/// `plan` reads every conversation, at most N at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_for_a_plans_reads() {
    let sb = sandbox(far(20)).await;
    let w = Work::new();
    let rows: Vec<String> = (0..60).map(|i| attention(&format!("c{i}"), 1)).collect();
    let src = w.write("night.csv", &csv(HEADER, &rows));
    let args = ["plan", src.to_str().unwrap(), "--concurrency", "4"];
    w.run(Some(&sb), &args).await.expect(0);
    assert_eq!(sb.requests().len(), 60);
    assert_cap(&sb, Api::Attention, 4);
}
