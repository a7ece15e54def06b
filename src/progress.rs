//! What a person watching sees on stderr: a spinner while rows are planned,
//! then an indicatif bar (done/total, percent, elapsed, ETA, rate, counts,
//! and what bounds each API now), fed by the send phase's [`Counters`].
//! When stderr is not a terminal, a plain progress line every few seconds
//! instead; `--quiet` silences both.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Counts the progress display and the summary read.
#[derive(Debug, Default)]
pub struct Counters {
    pub total: AtomicU64,
    pub done: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub retrying: AtomicU64,
    /// Rows left `pending` (their API stopped, or the batch was interrupted).
    pub left_pending: AtomicU64,
    /// Rows found invalid before sending (shown beside the progress).
    pub invalid: AtomicU64,
    pub http_attempts: AtomicU64,
}

/// How often a plain progress line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Silent: messages still print, as plain lines.
    pub fn none() -> Progress {
        Progress {
            bar: None,
            ticker: None,
        }
    }

    /// A spinner counting rows read and validated (`what`: the batch); off a
    /// terminal, one plain line saying that planning began.
    pub fn planning(quiet: bool, what: &str) -> Progress {
        if quiet {
            return Progress::none();
        }
        if !std::io::stderr().is_terminal() {
            crate::errln!("{what}: validating rows");
            return Progress::none();
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} validating rows: {pos} read ({per_sec})")
                .expect("template"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress {
            bar: Some(bar),
            ticker: None,
        }
    }

    pub fn planned(&self, rows: u64) {
        if let Some(b) = &self.bar
            && rows.is_multiple_of(256)
        {
            b.set_position(rows);
        }
    }

    /// The send phase: a bar on a terminal, plain lines elsewhere.
    /// `bounds` says what limits each API now (see `Executor::bounds`).
    pub fn sending(
        counters: Arc<Counters>,
        bounds: impl Fn() -> String + Send + 'static,
        quiet: bool,
    ) -> Progress {
        if quiet {
            return Progress::none();
        }
        let total = counters.total.load(Relaxed);
        let t0 = Instant::now();
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:20.cyan/blue} {pos}/{len} {percent}% {elapsed} eta {eta} {msg}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            let b = bar.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    b.set_position(counters.done.load(Relaxed));
                    b.set_message(format!("{}\n  {}", counts(&counters, t0), bounds()));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            return Progress {
                bar: Some(bar),
                ticker: Some(ticker),
            };
        }
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(PLAIN_EVERY).await;
                let done = counters.done.load(Relaxed);
                let rate = done as f64 / t0.elapsed().as_secs_f64().max(0.001);
                let eta = if rate > 0.0 && total > done {
                    format!(
                        ", eta {}",
                        crate::text::show_duration(Duration::from_secs_f64(
                            (total - done) as f64 / rate
                        ))
                    )
                } else {
                    String::new()
                };
                crate::errln!(
                    "progress: {done}/{total} ({:.0}%) in {}{eta}, {} | {}",
                    100.0 * done as f64 / total.max(1) as f64,
                    crate::text::show_duration(t0.elapsed()),
                    counts(&counters, t0),
                    bounds()
                );
            }
        });
        Progress {
            bar: None,
            ticker: Some(ticker),
        }
    }

    /// Prints a line without tearing the bar.
    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| crate::errln!("{msg}")),
            None => crate::errln!("{msg}"),
        }
    }

    pub fn finish(self) {
        if let Some(t) = &self.ticker {
            t.abort();
        }
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn counts(c: &Counters, t0: Instant) -> String {
    let done = c.done.load(Relaxed);
    format!(
        "{:.1} rows/s, ok {} failed {} invalid {} retrying {}",
        done as f64 / t0.elapsed().as_secs_f64().max(0.001),
        c.succeeded.load(Relaxed),
        c.failed.load(Relaxed),
        c.invalid.load(Relaxed),
        c.retrying.load(Relaxed),
    )
}
