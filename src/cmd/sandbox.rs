//! `convoy sandbox`: serve the simulator of both APIs until Ctrl-C.

use crate::sandbox::{Config, Sandbox, Shape};
use crate::text::parse_duration;
use clap::Args;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,

    /// Delay before each answer: fixed (`50ms`) or a range (`10ms..200ms`).
    #[arg(long, value_parser = parse_latency)]
    pub latency: Option<(Duration, Duration)>,

    /// Calls per second each API accepts (like `50/s`); more get 429 with Retry-After.
    #[arg(long, value_parser = parse_limit)]
    pub rate_limit: Option<f64>,

    /// The Attention API's own limit, over --rate-limit (like `20/s`).
    #[arg(long, value_parser = parse_limit)]
    pub attention_rate_limit: Option<f64>,

    /// The VG API's own limit, over --rate-limit (like `100/s`).
    #[arg(long, value_parser = parse_limit)]
    pub vg_rate_limit: Option<f64>,

    /// The limiter's shape: a token bucket, fixed windows, or a sliding window.
    #[arg(long, value_enum, default_value = "bucket")]
    pub limiter: Shape,

    /// bucket: calls accepted at once [default: a tenth of a second's worth, at least 1]
    #[arg(long)]
    pub burst: Option<f64>,

    /// window, sliding: the window, like 1s or 60s; it accepts the rate times the window.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub window: Duration,

    /// Answer 429 without a Retry-After header (as many APIs do).
    #[arg(long)]
    pub no_retry_after: bool,

    /// Answer 429 when more than N calls to one API are in flight at once.
    #[arg(long)]
    pub max_in_flight: Option<usize>,

    /// With a limit: also send RateLimit-Limit, -Remaining, -Reset and -Policy (the limit stated).
    #[arg(long)]
    pub rate_headers: bool,

    /// Share of calls answered 500/502/503, from 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    pub fail_rate: f64,

    /// Share of calls whose connection is closed without an answer, from 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    pub drop_rate: f64,

    /// Seed for the faults, so a run can be repeated.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Conversation ids starting with this answer 404.
    #[arg(long, default_value = "missing-")]
    pub missing_prefix: String,

    /// The Attention key the sandbox accepts.
    #[arg(
        long,
        env = "SANDBOX_ATTENTION_KEY",
        default_value = "sandbox-attention-key",
        hide_env_values = true
    )]
    pub attention_key: String,

    /// The VG token the sandbox accepts.
    #[arg(
        long,
        env = "SANDBOX_VG_TOKEN",
        default_value = "sandbox-vg-token",
        hide_env_values = true
    )]
    pub vg_token: String,

    /// Keep no request log (for long load tests).
    #[arg(long)]
    pub no_log: bool,
}

fn parse_latency(s: &str) -> Result<(Duration, Duration), String> {
    match s.split_once("..") {
        Some((lo, hi)) => {
            let (lo, hi) = (parse_duration(lo)?, parse_duration(hi)?);
            if lo > hi {
                return Err(format!("{s:?}: the range's low end is above its high end"));
            }
            Ok((lo, hi))
        }
        None => parse_duration(s).map(|d| (d, d)),
    }
}

fn parse_limit(s: &str) -> Result<f64, String> {
    match s.parse::<crate::pacer::RateSpec>()? {
        crate::pacer::RateSpec::Fixed(r) => Ok(r),
        _ => Err(format!("{s:?}: give a rate like 50/s")),
    }
}

fn parse_share(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|p| (0.0..=1.0).contains(p))
        .ok_or_else(|| format!("{s:?}: give a share from 0 to 1, like 0.05"))
}

pub async fn run(a: SandboxArgs) -> Result<ExitCode, super::Error> {
    let config = Config {
        attention_key: a.attention_key,
        vg_token: a.vg_token,
        latency: a.latency,
        rate_limit: a.rate_limit,
        attention_rate_limit: a.attention_rate_limit,
        vg_rate_limit: a.vg_rate_limit,
        limiter: a.limiter,
        burst: a.burst,
        window: a.window,
        retry_after: !a.no_retry_after,
        max_in_flight: a.max_in_flight,
        rate_headers: a.rate_headers,
        fail_rate: a.fail_rate,
        drop_rate: a.drop_rate,
        seed: a.seed,
        missing_prefix: a.missing_prefix,
        record: !a.no_log,
    };
    let sb = Sandbox::start(config.clone(), a.listen).await?;
    crate::outln!(
        "convoy sandbox listening on {} (reach it at http://{})",
        sb.addr,
        sb.reachable()
    );
    crate::outln!("  export ATTENTION_BASE_URL={}", sb.attention_url());
    crate::outln!("  export VG_BASE_URL={}", sb.vg_url());
    crate::outln!("  export ATTENTION_API_KEY={}", config.attention_key);
    crate::outln!("  export VG_API_TOKEN={}", config.vg_token);
    crate::outln!("(sandbox credentials, not secrets; Ctrl-C stops it)");
    tokio::signal::ctrl_c().await.map_err(anyhow::Error::from)?;
    Ok(ExitCode::SUCCESS)
}
