//! convoy: nightly batch imports of conversation edits into the Attention
//! and VG APIs, every outcome audited in SQLite.
//!
//! # Layout
//!
//! One-way layers, lowest first; a module uses only those above it in this
//! table, and nothing below the command line imports it (`.ci/run` checks).
//!
//! | module | owns |
//! |---|---|
//! | `text` | how durations, sizes and shell words are written and read |
//! | [`output`] | stdout and stderr lines that never panic on a closed pipe or a full disk |
//! | [`edit`] | the row model (`Api`, `Op`, `Edit`) and validating a row into an edit |
//! | `source` | reading rows from CSV (any delimiter, any encoding), stdin or a SQLite table, streamed |
//! | [`call`] | the request builder (edit → method, URL, body); endpoints, keys, secrets |
//! | `live` | live state: a conversation as read, and what each row's call does to it (replay, diffs, verifying reads) |
//! | `pacer` | pacing one API: fixed rates, `Retry-After` pauses, `auto` |
//! | [`audit`] | the audit database: every query, the batch records, the single batched writer, batch locks; `audit::report` reads it back (batch list, detail, failure clusters, CSV export, plans); `audit::prune` removes old batches' bulk |
//! | `options` | a batch's effective options, as recorded |
//! | `send` | the send phase: one lane per API (reader, in-flight limit, pacer), per-conversation order, retries, HTTP verdicts, outages and the breaker, reads of live state |
//! | `progress` | the progress bar and plain progress lines |
//! | `plan` | the plan phase, and reconciling a resumed batch with its source |
//! | `report` | a finished batch as one HTML page (`report::page`) and as Prometheus metrics (`report::metrics`) |
//! | `undo` | building an undo batch: the calls that put a batch's reversible fields back, and what cannot be undone |
//! | [`sandbox`] | the local simulator of both APIs and its limiter shapes |
//! | [`cmd`] | one module per command, their shared flags (`cmd::args`) and the error model |
//! | [`cli`] | the command line (clap) and dispatch |

pub mod audit;
pub mod call;
pub mod cli;
pub mod cmd;
pub mod edit;
pub(crate) mod live;
pub(crate) mod options;
pub mod output;
pub(crate) mod pacer;
pub(crate) mod plan;
pub(crate) mod progress;
pub(crate) mod report;
pub mod sandbox;
pub(crate) mod send;
pub(crate) mod source;
pub(crate) mod text;
pub(crate) mod undo;
