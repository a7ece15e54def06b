//! Standard output for results (summaries, reports, exports, `--dry-run`),
//! and lines on stderr ([`errln!`](crate::errln)).
//! A closed pipe (`convoy status | head -1`) ends the output quietly and the
//! command carries on to its own exit code; any other failure (a full disk)
//! is said once on stderr and makes [`failed`] true. Never a panic, which is
//! what `println!` does on both.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

static CLOSED: AtomicBool = AtomicBool::new(false);
static FAILED: AtomicBool = AtomicBool::new(false);
/// `--json`: lines of text go to stderr, so stdout holds only the JSON.
static TEXT_TO_STDERR: AtomicBool = AtomicBool::new(false);

/// From now on [`line()`] writes to stderr: stdout is kept for [`json`].
pub fn text_to_stderr() {
    TEXT_TO_STDERR.store(true, Relaxed);
}

/// A JSON document on stdout, pretty-printed, whatever [`text_to_stderr`] said.
pub fn json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = Stdout;
    let text = serde_json::to_string_pretty(value)?;
    let _ = out.write_all(text.as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
    Ok(())
}

/// Whether writing to stdout failed for a reason other than a closed pipe.
pub fn failed() -> bool {
    FAILED.load(Relaxed)
}

/// Stdout as a writer that never fails: see the module doc.
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !(CLOSED.load(Relaxed) || FAILED.load(Relaxed)) {
            let result = std::io::stdout().lock().write_all(buf);
            note(result);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !(CLOSED.load(Relaxed) || FAILED.load(Relaxed)) {
            note(std::io::stdout().lock().flush());
        }
        Ok(())
    }
}

fn note(result: std::io::Result<()>) {
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => CLOSED.store(true, Relaxed),
        Err(e) => {
            if !FAILED.swap(true, Relaxed) {
                let _ = writeln!(std::io::stderr(), "error: cannot write to stdout: {e}");
            }
        }
    }
}

/// One line of output.
pub fn line(args: std::fmt::Arguments<'_>) {
    if TEXT_TO_STDERR.load(Relaxed) {
        let _ = writeln!(std::io::stderr(), "{args}");
        return;
    }
    let mut out = Stdout;
    let _ = out.write_fmt(format_args!("{args}\n"));
    let _ = out.flush();
}

/// One line on stderr (warnings, notes, errors), dropped if it cannot be
/// written: `eprintln!` panics on a closed pipe, which left a batch
/// recorded as running with nothing sent (`convoy run … 2>&1 | logger`,
/// once the logger is gone).
pub fn err_line(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{args}");
}

/// `eprintln!` that never panics: see [`err_line`].
#[macro_export]
macro_rules! errln {
    ($($t:tt)*) => { $crate::output::err_line(format_args!($($t)*)) };
}

/// `println!` that never panics: see the module doc.
#[macro_export]
macro_rules! outln {
    () => { $crate::output::line(format_args!("")) };
    ($($t:tt)*) => { $crate::output::line(format_args!($($t)*)) };
}
