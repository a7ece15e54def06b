//! Regression tests for defects found by using convoy as its users do
//! (issue 12), each named after the defect it pins.

use crate::common::*;
use convoy::sandbox::Scripted;

/// 301/302/303 made reqwest re-send a write as a body-less GET, and the row
/// was recorded `succeeded`; 307/308 sent the body to another origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_never_followed_and_the_row_fails_naming_location() {
    let sb = plain_sandbox().await;
    let codes = [301u16, 302, 303, 307, 308];
    for (i, code) in codes.iter().enumerate() {
        sb.script(
            &format!("c{i}"),
            [Scripted::Redirect {
                status: *code,
                location: format!("{}/conversations/elsewhere-{i}", sb.attention_url()),
            }],
        );
    }
    let w = Work::new();
    let rows: Vec<String> = (0..codes.len())
        .map(|i| format!("attention.set_labels,c{i},\"{{\"\"a\"\":\"\"b\"\"}}\""))
        .collect();
    let src = w.write("r.csv", &csv("op,conversation_id,labels", &rows));
    w.run(Some(&sb), &["run", src.to_str().unwrap()])
        .await
        .expect(1);
    let reqs = sb.requests();
    assert!(
        reqs.iter().all(|r| r.method == "PUT"),
        "a redirect was followed: {:?}",
        reqs.iter()
            .map(|r| (&r.method, &r.path))
            .collect::<Vec<_>>()
    );
    assert_eq!(reqs.len(), codes.len(), "a redirect was retried");
    let db = w.db().await;
    let rows: Vec<(String, i64, String)> =
        sqlx::query_as("SELECT status, http_status, error FROM audit ORDER BY row_number")
            .fetch_all(&db)
            .await
            .unwrap();
    for ((status, http, error), (i, code)) in rows.iter().zip(codes.iter().enumerate()) {
        assert_eq!((status.as_str(), *http), ("failed", i64::from(*code)));
        assert!(error.contains(&format!("elsewhere-{i}")), "{error}");
    }
}
