//! A batch's effective options: resolved from the flags by the commands,
//! recorded in `batches.options` (never a secret), read back by `resume`.

use crate::call::{AuthScheme, ConfigError, Endpoint};
use crate::edit::{Api, Op};
use crate::pacer::RateSpec;
use serde::{Deserialize, Serialize};

/// The effective options of a batch, as stored in `batches.options`. Never a secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Options {
    /// Calls in flight per API: a hard cap, or `None` for auto.
    #[serde(default)]
    pub concurrency: Option<u32>,
    pub attention_rate: RateSpec,
    pub vg_rate: RateSpec,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub attention_url: String,
    pub vg_url: String,
    pub attention_auth_scheme: AuthScheme,
    pub op: Option<String>,
    pub strict: bool,
    pub sandbox: bool,
    /// This pass sends rows older than a succeeded edit of their conversation.
    #[serde(default)]
    pub send_older_edits: bool,
    /// The circuit breaker: the share of the last `breaker_window` answered
    /// rows failing the same way that stops an API (0: off).
    #[serde(default = "default_breaker_share")]
    pub breaker_share: f64,
    #[serde(default = "default_breaker_window")]
    pub breaker_window: usize,
    /// The longest an API may be down before the batch gives up on it.
    #[serde(default = "default_outage_wait")]
    pub outage_wait_ms: u64,
    /// This pass sends only the first N sendable rows (`--limit`).
    #[serde(default)]
    pub limit: Option<u64>,
    /// `--delimiter`, as given (found from the header when absent).
    #[serde(default)]
    pub delimiter: Option<char>,
    /// `--encoding`, by its canonical name.
    #[serde(default)]
    pub encoding: Option<String>,
    /// What the batch does with the conversations' live state (section 8).
    #[serde(default)]
    pub live: Live,
    /// `--changed-only`: a row repeating the last call that succeeded on its conversation is skipped.
    #[serde(default)]
    pub changed_only: bool,
}

/// What a batch does with live state before each conversation's first edit.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Live {
    /// Nothing: rows are sent as planned.
    #[default]
    Off,
    /// `convoy plan`: read each conversation, judge every row, send no write.
    Plan,
    /// `--skip-unchanged`: read each conversation just before its first
    /// edit; send only the rows that change something.
    SkipUnchanged,
    /// `--capture-before`: read each conversation just before its first
    /// edit (its pre-image, for `undo`), then send every row.
    CaptureBefore,
    /// An undo batch: read each conversation first, and leave it alone when
    /// it no longer holds what the undone batch left (unless `force`).
    Undo { force: bool },
}

impl Live {
    /// Whether conversations are read before their first edit.
    pub fn reads(self) -> bool {
        self != Live::Off
    }
}

fn default_breaker_share() -> f64 {
    0.8
}

fn default_outage_wait() -> u64 {
    15 * 60 * 1000
}

fn default_breaker_window() -> usize {
    100
}

impl Options {
    /// Whether the options make sense together (a usage error if not).
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.timeout_ms == 0 {
            return Err(ConfigError("--timeout must be more than 0".into()));
        }
        if !self.sandbox {
            Endpoint::check_base(Api::Attention, &self.attention_url).map_err(ConfigError)?;
            Endpoint::check_base(Api::Vg, &self.vg_url).map_err(ConfigError)?;
        }
        Ok(())
    }

    /// The pace of one API.
    pub fn rate(&self, api: Api) -> RateSpec {
        match api {
            Api::Attention => self.attention_rate,
            Api::Vg => self.vg_rate,
        }
    }

    /// How a CSV source is read.
    pub fn csv_format(&self) -> crate::source::CsvFormat {
        crate::source::CsvFormat {
            delimiter: self.delimiter.and_then(|c| u8::try_from(c).ok()),
            encoding: self
                .encoding
                .as_deref()
                .and_then(|e| crate::source::parse_encoding(e).ok()),
        }
    }

    pub fn default_op(&self) -> Option<Op> {
        self.op.as_deref().and_then(Op::parse)
    }
}
