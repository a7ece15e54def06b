//! The sandbox's rate limiters: the shapes real APIs use, as pure logic on
//! explicit instants (so the pacing simulations drive the very same model).
//!
//! - `bucket`: a token bucket (GCRA): `rate` per second, up to `burst` at once.
//! - `window`: fixed windows of `window`, each accepting `rate × window` calls;
//!   a 429's `Retry-After` says when the window resets.
//! - `sliding`: at most `rate × window` calls in any stretch of `window`.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// The shape of a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    Bucket,
    Window,
    Sliding,
}

/// One API's limit, as configured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    /// Calls per second allowed over time.
    pub rate: f64,
    pub shape: Shape,
    /// `bucket`: calls accepted at once [default: a tenth of a second's worth, at least 1].
    pub burst: Option<f64>,
    /// `window`/`sliding`: the window [default: 1 s].
    pub window: Duration,
}

impl Limit {
    /// A token bucket of `rate` with the default burst.
    pub fn bucket(rate: f64) -> Limit {
        Limit {
            rate,
            shape: Shape::Bucket,
            burst: None,
            window: Duration::from_secs(1),
        }
    }

    pub fn burst(&self) -> f64 {
        self.burst.unwrap_or((self.rate * 0.1).max(1.0)).max(1.0)
    }

    /// Calls a window accepts.
    fn per_window(&self) -> usize {
        ((self.rate * self.window.as_secs_f64()).floor() as usize).max(1)
    }
}

/// A running limiter.
#[derive(Debug)]
pub struct Limiter {
    limit: Limit,
    /// `bucket`: the theoretical arrival time of the next call.
    tat: Instant,
    /// `window`: when the current window began, and calls accepted in it.
    window_start: Instant,
    in_window: usize,
    /// `sliding`: when each call in the last window was accepted.
    log: VecDeque<Instant>,
}

impl Limiter {
    pub fn new(limit: Limit, now: Instant) -> Limiter {
        Limiter {
            limit,
            tat: now,
            window_start: now,
            in_window: 0,
            log: VecDeque::new(),
        }
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }

    /// `Err(wait)`: over the limit; `wait` is when a call would next be accepted.
    pub fn check(&mut self, now: Instant) -> Result<(), Duration> {
        let l = self.limit;
        match l.shape {
            Shape::Bucket => {
                let interval = Duration::from_secs_f64(1.0 / l.rate);
                let tolerance = interval.mul_f64(l.burst() - 1.0);
                let tat = self.tat.max(now);
                let ahead = tat - now;
                if ahead > tolerance {
                    return Err(ahead - tolerance);
                }
                self.tat = tat + interval;
                Ok(())
            }
            Shape::Window => {
                while now >= self.window_start + l.window {
                    self.window_start += l.window;
                    self.in_window = 0;
                }
                if self.in_window >= l.per_window() {
                    return Err(self.window_start + l.window - now);
                }
                self.in_window += 1;
                Ok(())
            }
            Shape::Sliding => {
                while self.log.front().is_some_and(|t| *t + l.window <= now) {
                    self.log.pop_front();
                }
                if self.log.len() >= l.per_window() {
                    let oldest = self.log.front().copied().unwrap_or(now);
                    return Err(oldest + l.window - now);
                }
                self.log.push_back(now);
                Ok(())
            }
        }
    }

    /// `RateLimit-Policy` as the IETF draft writes it: the quota and its
    /// window in seconds (`50;w=1`; a bucket states its rate per second).
    pub fn policy(&self) -> String {
        let l = self.limit;
        match l.shape {
            Shape::Bucket => format!("{};w=1", l.rate.round() as u64),
            Shape::Window | Shape::Sliding => {
                format!("{};w={}", l.per_window(), l.window.as_secs().max(1))
            }
        }
    }

    /// The `RateLimit-*` headers as of `now`: the limit per second, calls
    /// left now, and whole seconds until they are all back.
    pub fn headers(&self, now: Instant) -> [(&'static str, u64); 3] {
        let l = self.limit;
        let per_sec = l.rate.round() as u64;
        let (left, reset) = match l.shape {
            Shape::Bucket => {
                let interval = 1.0 / l.rate;
                let ahead = self.tat.saturating_duration_since(now).as_secs_f64();
                let room = interval * (l.burst() - 1.0) - ahead;
                let left = if room >= 0.0 {
                    (room / interval) as u64 + 1
                } else {
                    0
                };
                (left, ahead.ceil() as u64)
            }
            Shape::Window => {
                let left = l.per_window().saturating_sub(self.in_window) as u64;
                let end = (self.window_start + l.window).saturating_duration_since(now);
                (left, end.as_secs_f64().ceil() as u64)
            }
            Shape::Sliding => {
                let live = self.log.iter().filter(|t| **t + l.window > now).count();
                let left = l.per_window().saturating_sub(live) as u64;
                let reset = self.log.back().map_or(0.0, |t| {
                    (*t + l.window).saturating_duration_since(now).as_secs_f64()
                });
                (left, reset.ceil() as u64)
            }
        };
        [
            ("ratelimit-limit", per_sec),
            ("ratelimit-remaining", left),
            ("ratelimit-reset", reset),
        ]
    }
}

#[cfg(test)]
mod tests;
