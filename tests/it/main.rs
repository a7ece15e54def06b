//! convoy's integration tests: the real binary, a real sandbox on
//! 127.0.0.1 that records every request, and real SQLite files.
//!
//! - `common`: the `Work` helper (temp dir, fixtures written from code, the binary run against a sandbox)
//! - `concurrency`: `--concurrency N` as a hard cap on calls on the wire, counted at the sandbox
//! - `run`: `convoy run`, issue by issue of the contract: the calls, order, retries, stops, secrets
//! - `resume`: resume, Ctrl-C and SIGKILL: nothing lost, nothing sent twice
//! - `hardening`: the bad-input corpus, the fault matrix, secrets
//! - `props`: property tests: arbitrary rows never panic and never escape their path
//! - `report`: status, failures export and every README query, run for real
//! - `night_report`: `convoy report` (the HTML page) and `--metrics`, parsed and checked against the audit
//! - `live`: plan and apply, --skip-unchanged, --changed-only, resume settling in-doubt rows by reading
//! - `sandbox`: the simulator itself, and the whole pipeline through its faults
//! - `storage`: how the audit database stores its facts, and upgrades to it

mod common;
mod concurrency;
mod hardening;
mod lanes;
mod live;
mod night_report;
mod operations;
mod props;
mod regressions;
mod report;
mod resume;
mod run;
mod sandbox;
mod storage;
