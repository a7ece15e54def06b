//! convoy: nightly batch imports of conversation edits into the Attention
//! and VG APIs, every outcome audited in SQLite.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`cli`] | the command line (clap) and dispatch |
//! | [`cmd`] | one module per command: `run`, `resume`, `status`, `failures`, `sandbox` |
//! | [`source`] | reading rows from CSV, stdin or a SQLite table, streamed |
//! | [`edit`] | validating a row into a typed edit, or an error naming row and column |
//! | [`call`] | mapping an edit to its HTTP call; endpoints, auth, secrets |
//! | [`batch`] | a batch's options, plan phase and send phase |
//! | [`exec`] | concurrency, per-conversation order, retries, 401/403 stops |
//! | [`pacer`] | per-API pacing: fixed rates, `Retry-After` pauses, `auto` |
//! | [`audit`] | the audit database and its single batched writer |
//! | [`progress`] | the progress bar and plain progress lines |
//! | [`report`] | reading the audit back: batch list, detail, failure clusters, CSV export |
//! | [`sandbox`] | the local simulator of both APIs |

pub mod audit;
pub mod call;
pub mod cli;
pub mod cmd;
pub mod edit;
pub mod options;
pub mod output;
pub mod pacer;
pub mod plan;
pub mod progress;
pub mod report;
pub mod sandbox;
pub mod send;
pub mod source;
pub mod text;
