//! What a user asks for ([`RateSpec`]: `N/s`, `0`, `auto`, `auto:N/s`), and
//! the bounds of any pace `auto` holds or remembers.

use std::fmt;
use std::str::FromStr;

/// `--attention-rate` / `--vg-rate`: `N/s`, `N/min`, `N/h`, `0` (unlimited),
/// `auto`, or `auto:N/s` (auto with a ceiling).
/// Stored (in `batches.options`) as the text a user types: `auto`, `50/s`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RateSpec {
    Unlimited,
    Fixed(f64),
    Auto { ceiling: Option<f64> },
}

impl FromStr for RateSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "0" {
            return Ok(RateSpec::Unlimited);
        }
        if s == "auto" {
            return Ok(RateSpec::Auto { ceiling: None });
        }
        if let Some(c) = s.strip_prefix("auto:") {
            return Ok(RateSpec::Auto {
                ceiling: Some(per_second(c)?),
            });
        }
        Ok(RateSpec::Fixed(per_second(s)?))
    }
}

pub(super) fn per_second(s: &str) -> Result<f64, String> {
    let bad = || format!("{s:?} is not a rate; write N/s, N/min or N/h (0 = unlimited), or auto");
    let (n, unit) = s.split_once('/').ok_or_else(bad)?;
    let n: f64 = n.trim().parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" | "hour" => 3600.0,
        _ => return Err(bad()),
    };
    if !(n.is_finite() && n > 0.0) {
        return Err(bad());
    }
    Ok(n / secs)
}

impl serde::Serialize for RateSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RateSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateSpec::Unlimited => f.write_str("0"),
            RateSpec::Fixed(r) => write!(f, "{r}/s"),
            RateSpec::Auto { ceiling: None } => f.write_str("auto"),
            RateSpec::Auto { ceiling: Some(c) } => write!(f, "auto:{c}/s"),
        }
    }
}

/// The slowest `auto` ever goes, in calls per second.
pub const AUTO_FLOOR: f64 = 0.5;

/// The fastest pace `auto` ever holds or remembers, in calls per second: far
/// above any per-key SaaS limit, and a bound on anything shown or stored.
pub const AUTO_CEILING: f64 = 5_000.0;

/// Whether `rate` is a usable learned rate (finite, within the floor and ceiling).
pub fn sane_rate(rate: f64) -> bool {
    rate.is_finite() && (AUTO_FLOOR..=AUTO_CEILING).contains(&rate)
}
