//! The limiter's shapes, and `auto` against each of them over simulated
//! nights (`night_logged`; `print_every_shape` prints the whole table).

use super::*;
use crate::pacer::Auto;

fn accepted(limit: Limit, calls_per_sec: f64, secs: f64) -> usize {
    let t0 = Instant::now();
    let mut l = Limiter::new(limit, t0);
    let n = (calls_per_sec * secs) as usize;
    (0..n)
        .filter(|i| {
            let at = t0 + Duration::from_secs_f64(*i as f64 / calls_per_sec);
            l.check(at).is_ok()
        })
        .count()
}

#[test]
fn each_shape_accepts_its_rate_over_time() {
    for shape in [Shape::Bucket, Shape::Window, Shape::Sliding] {
        let limit = Limit {
            rate: 50.0,
            shape,
            burst: Some(5.0),
            window: Duration::from_secs(1),
        };
        // Offered 200/s for 10 s: about 500 accepted, whatever the shape.
        let n = accepted(limit, 200.0, 10.0);
        assert!((495..=560).contains(&n), "{shape:?}: {n}");
        // Offered under the limit: everything.
        assert_eq!(accepted(limit, 40.0, 10.0), 400, "{shape:?}");
    }
}

#[test]
fn a_window_says_when_it_resets() {
    let t0 = Instant::now();
    let mut l = Limiter::new(
        Limit {
            rate: 1.0,
            shape: Shape::Window,
            burst: None,
            window: Duration::from_secs(30),
        },
        t0,
    );
    for i in 0..30 {
        assert!(l.check(t0 + Duration::from_millis(i)).is_ok());
    }
    let wait = l.check(t0 + Duration::from_secs(10)).unwrap_err();
    assert_eq!(wait, Duration::from_secs(20));
    assert!(l.check(t0 + Duration::from_secs(30)).is_ok());
}

thread_local! {
    /// The seed of the simulated wire's jitter.
    static SEED: std::cell::Cell<u64> = const { std::cell::Cell::new(7) };
}

/// A token bucket of `rate` holding `burst`.
fn holding(rate: f64, burst: f64) -> Limit {
    Limit {
        burst: Some(burst),
        ..Limit::bucket(rate)
    }
}

/// Fixed windows of a second, each accepting `rate` calls.
fn window_of_a_second(rate: f64) -> Limit {
    Limit {
        shape: Shape::Window,
        ..Limit::bucket(rate)
    }
}

/// One night of `rows` calls paced by `auto` against `limit`: each call
/// reaches the API halfway through a round trip drawn from `rtt`, calls
/// in flight follow Little's law as the lanes size them (unpaced: 16,
/// and one more per four answers), a 429 pauses every call for its
/// `Retry-After` (when the API sends one) from when it is read, not
/// sent, so the calls already on the wire draw theirs too, and the row
/// goes again. Returns (seconds, 429s). (A pause begun when the refused
/// call was sent drew a fifth to a tenth of the sandbox's 429s.)
fn night(
    a: &mut Auto,
    limit: Limit,
    rtt: (f64, f64),
    retry_after: bool,
    rows: usize,
) -> (f64, usize) {
    night_of(a, Server::Rate(limit), rtt, retry_after, rows)
}

/// What the simulated API limits.
#[derive(Clone, Copy, Debug)]
enum Server {
    Rate(Limit),
    /// At most this many calls served at once (each for its whole round trip).
    InFlight(usize),
    /// The first limit, the second from 15 s to 35 s (a new limiter at
    /// each change, as the sandbox's `PUT /_sandbox/rate-limit` makes).
    Drops(Limit, Limit),
}

fn night_of(
    a: &mut Auto,
    server: Server,
    rtt: (f64, f64),
    retry_after: bool,
    rows: usize,
) -> (f64, usize) {
    night_logged(a, server, rtt, retry_after, rows, &mut Vec::new())
}

/// [`night_of`], also noting when each accepted call reached the API.
fn night_logged(
    a: &mut Auto,
    server: Server,
    rtt: (f64, f64),
    retry_after: bool,
    rows: usize,
    accepted: &mut Vec<f64>,
) -> (f64, usize) {
    let t0 = Instant::now();
    let at = |t: f64| t0 + Duration::from_secs_f64(t);
    let mut limiter = match server {
        Server::Rate(limit) | Server::Drops(limit, _) => Some(Limiter::new(limit, t0)),
        Server::InFlight(_) => None,
    };
    // Which of a dropping limit's limits holds now (0, 1, 2: before, during, after).
    let mut stage = 0;
    let mut rng = fastrand::Rng::with_seed(SEED.get());
    let (mut t, mut last_send, mut paused_until) = (0.0f64, f64::NEG_INFINITY, 0.0f64);
    let (mut done, mut limited, mut answered) = (0usize, 0usize, 0usize);
    let mut mean_rtt = 0.0f64;
    // (answered at, sent at, the `Retry-After` seconds of a 429 (None:
    // accepted), calls on the wire at send)
    let mut wire: Vec<(f64, f64, Option<f64>, usize)> = Vec::new();
    let trace = std::env::var("TRACE").is_ok();
    let mut shown = (None, 0usize);
    while done < rows {
        let now_shown = (a.rate().map(|r| (r * 10.0).round() / 10.0), limited);
        if trace && now_shown != shown {
            shown = now_shown;
            println!(
                "  t {t:6.2} done {done:5} 429s {limited:3} pace {:?} paused until {paused_until:.2}",
                shown.0
            );
        }
        let cap = match a.rate() {
            Some(r) if mean_rtt > 0.0 => ((r * mean_rtt * 1.5).ceil() as usize + 2).clamp(4, 256),
            // The lanes' unpaced budget: one more per four answers
            // (none queue here: the sandbox serves each at once).
            _ => (16 + answered / 4).min(256),
        }
        .min(a.cap().unwrap_or(usize::MAX));
        let gap = a.rate().map_or(0.0, |r| 1.0 / r);
        let send_at = (last_send + gap).max(paused_until).max(t);
        let next = wire
            .iter()
            .enumerate()
            .min_by(|x, y| x.1.0.total_cmp(&y.1.0))
            .map(|(i, w)| (i, *w));
        let can_send = wire.len() < cap && done + wire.len() < rows;
        match next {
            Some((i, (ans, sent, refused, on_wire))) if !can_send || ans <= send_at => {
                wire.swap_remove(i);
                t = ans;
                answered += 1;
                mean_rtt = if mean_rtt == 0.0 {
                    ans - sent
                } else {
                    mean_rtt * 0.875 + (ans - sent) * 0.125
                };
                match refused {
                    None => {
                        done += 1;
                        a.on_success(at(sent), at(t), on_wire);
                    }
                    Some(secs) => {
                        limited += 1;
                        // The pause begins when the 429 is read: calls
                        // sent meanwhile are on the wire already.
                        if retry_after {
                            paused_until = paused_until.max(t + secs);
                        }
                        a.on_429(at(sent), at(t), on_wire);
                    }
                }
            }
            _ => {
                t = send_at;
                last_send = t;
                let trip = rtt.0 + rng.f64() * (rtt.1 - rtt.0);
                let arrives = t + trip / 2.0;
                if let Server::Drops(high, low) = server {
                    for (i, (from, limit)) in [(15.0, low), (35.0, high)].into_iter().enumerate() {
                        if stage == i && arrives >= from {
                            limiter = Some(Limiter::new(limit, at(from)));
                            stage = i + 1;
                        }
                    }
                }
                let verdict = match (&mut limiter, server) {
                    (Some(l), _) => l.check(at(arrives)),
                    (None, Server::InFlight(k)) => {
                        // The sandbox serves each call for its whole
                        // round trip (its latency is its own).
                        let serving = wire.iter().filter(|w| w.0 > t).count();
                        if serving >= k {
                            Err(Duration::from_secs(1))
                        } else {
                            Ok(())
                        }
                    }
                    (None, _) => unreachable!(),
                };
                let refused = verdict.err().map(|w| w.as_secs_f64().ceil().max(1.0));
                if refused.is_none() {
                    accepted.push(arrives);
                }
                wire.push((t + trip, t, refused, wire.len() + 1));
            }
        }
    }
    (t, limited)
}

/// `auto` against every limiter shape at 0, ~50 and ~150 ms: never
/// learns above the limit, at most 5% 429s on a first night and 1% on
/// the second (from the remembered rate); long windows excepted, whose
/// 429s the quota gate holds down ([`crate::pacer`]'s `Quota`, not
/// simulated here: `auto` alone draws 15–20% of its calls there, every
/// call on the wire when a window runs out). The floors are a little under
/// what it reaches today: buckets with small bursts and long windows
/// near their limit; a 1 s window or a sliding window, whose whole
/// quota looks like a burst, three quarters (sliding) to 85% (fixed;
/// 77% before a trial's 429 cut no deeper than [`crate::pacer`]'s
/// short episodes do) on a first night and 85% on the next (the level
/// that held just under the 429 brackets the limit); a bucket holding
/// a second's worth, 90% and 85%, and it never learns above its limit.
#[test]
fn auto_against_every_limiter_shape_and_latency() {
    let secs = Duration::from_secs;
    let shapes = [
        (
            "bucket, burst 10",
            Limit {
                rate: 100.0,
                shape: Shape::Bucket,
                burst: Some(10.0),
                window: secs(1),
            },
            true,
            0.85,
            0.90,
        ),
        (
            "bucket, burst 5",
            Limit {
                rate: 50.0,
                shape: Shape::Bucket,
                burst: Some(5.0),
                window: secs(1),
            },
            true,
            0.80,
            0.90,
        ),
        (
            "bucket, burst 50",
            Limit {
                rate: 50.0,
                shape: Shape::Bucket,
                burst: Some(50.0),
                window: secs(1),
            },
            true,
            0.90,
            0.85,
        ),
        (
            "no Retry-After",
            Limit {
                rate: 40.0,
                shape: Shape::Bucket,
                burst: Some(4.0),
                window: secs(1),
            },
            false,
            0.90,
            0.93,
        ),
        (
            "fixed 1 s windows",
            Limit {
                rate: 60.0,
                shape: Shape::Window,
                burst: None,
                window: secs(1),
            },
            true,
            0.85,
            0.85,
        ),
        (
            "fixed 10 s windows",
            Limit {
                rate: 40.0,
                shape: Shape::Window,
                burst: None,
                window: secs(10),
            },
            true,
            0.95,
            0.95,
        ),
        (
            "sliding 1 s window",
            Limit {
                rate: 50.0,
                shape: Shape::Sliding,
                burst: None,
                window: secs(1),
            },
            true,
            0.75,
            0.85,
        ),
    ];
    for (name, limit, retry_after, first_floor, second_floor) in shapes {
        for rtt in [(0.0005, 0.001), (0.04, 0.06), (0.1, 0.2)] {
            let case = format!("{name}, {}..{} ms", rtt.0 * 1e3, rtt.1 * 1e3);
            let rows = (limit.rate * 60.0) as usize;
            let ideal = rows as f64 / limit.rate;
            let mut first = Auto::new(None, None, Instant::now());
            let (took, limited) = night(&mut first, limit, rtt, retry_after, rows);
            assert!(
                ideal / took >= first_floor,
                "{case}: first night {:.0}%",
                100.0 * ideal / took
            );
            let gated = limit.window > Duration::from_secs(2);
            assert!(
                gated || limited <= rows * 5 / 100,
                "{case}: first night {limited} 429s"
            );
            // A rate limit is never taken for a cap on calls in flight.
            assert_eq!(first.cap(), None, "{case}: a cap");
            // Nothing proven (a long window's whole quota looks like a burst): nothing learned.
            let learned = first.learned();
            assert!(
                learned.is_none_or(|l| l <= limit.rate),
                "{case}: learned {learned:?}"
            );
            let mut second = Auto::new(None, learned, Instant::now());
            let (took, limited) = night(&mut second, limit, rtt, retry_after, rows);
            assert!(
                ideal / took >= second_floor,
                "{case}: second night {:.0}%",
                100.0 * ideal / took
            );
            assert!(
                gated || limited <= rows / 100,
                "{case}: second night {limited} 429s"
            );
        }
    }
}

/// A window of a second, fixed or sliding, takes its whole quota again
/// after a pause and not one call more: slow start sees it, and the pace
/// goes straight to the quota (less the wire's jitter) instead of
/// halving and climbing back from there, 10% every 2 s. At 1 and ~50 ms
/// a first night used 84% and 80% (82% and 80% of a sliding window)
/// and learned 89–90% for the nights after; now 91–98% and 95–99%
/// (every call already on the wire when a 429 is read draws its own).
/// Shapes that look alike at first are not taken for a window of a
/// second: a window of 2 s (its `Retry-After` pauses 2 s) or a sliding
/// one of 3 s, and token buckets whose burst is a second's worth or
/// more; what they learn stays under their limit.
#[test]
fn a_window_of_a_second_is_paced_at_its_quota() {
    let secs = Duration::from_secs;
    for (name, shape, rate) in [
        ("fixed window of 60", Shape::Window, 60.0),
        ("sliding window of 50", Shape::Sliding, 50.0),
    ] {
        let limit = Limit {
            rate,
            shape,
            burst: None,
            window: secs(1),
        };
        for rtt in [(0.0005, 0.001), (0.04, 0.06)] {
            let case = format!("{name}, {} ms", rtt.1 * 1e3);
            let rows = (rate * 30.0) as usize;
            let ideal = 30.0;
            let mut first = Auto::new(None, None, Instant::now());
            let (took, limited) = night(&mut first, limit, rtt, true, rows);
            assert!(ideal / took >= 0.90, "{case}: first night {took:.1} s");
            assert!(
                limited <= rows * 3 / 100,
                "{case}: first night {limited} 429s"
            );
            let learned = first.learned().unwrap_or(0.0);
            assert!(
                (0.95 * rate..=rate).contains(&learned),
                "{case}: learned {learned:.1}/s"
            );
            let mut second = Auto::new(None, Some(learned), Instant::now());
            let (took, limited) = night(&mut second, limit, rtt, true, rows);
            assert!(ideal / took >= 0.95, "{case}: second night {took:.1} s");
            assert!(limited <= rows / 100, "{case}: second night {limited} 429s");
        }
    }
    let lookalikes = [
        ("fixed windows of 2 s", Shape::Window, None, secs(2)),
        ("a sliding window of 3 s", Shape::Sliding, None, secs(3)),
        (
            "a bucket with a second's burst",
            Shape::Bucket,
            Some(30.0),
            secs(1),
        ),
        (
            "a bucket with 1.4 s of burst",
            Shape::Bucket,
            Some(42.0),
            secs(1),
        ),
    ];
    for (name, shape, burst, window) in lookalikes {
        let limit = Limit {
            rate: 30.0,
            shape,
            burst,
            window,
        };
        for rtt in [(0.0005, 0.001), (0.04, 0.06), (0.1, 0.2)] {
            let mut a = Auto::new(None, None, Instant::now());
            night(&mut a, limit, rtt, true, 900);
            let learned = a.learned().unwrap_or(0.0);
            assert!(
                learned <= 30.0,
                "{name}, {} ms: learned {learned:.1}/s",
                rtt.1 * 1e3
            );
        }
    }
}

/// A night of five minutes against a 1 s or a sliding window: once a
/// 429 pinned the limit, the climbs above it are 4% steps that must hold
/// 10 s, so each bracket is tight and the pace creeps up to the limit.
/// (With 10% steps that held 2 s, every minute's probe failed, the
/// bracket took off 5% for the burst a 2 s level might hide, and the
/// pace stayed at 90–93% all night, and every night after.)
#[test]
fn a_long_night_closes_in_on_a_pinned_limit() {
    let secs = Duration::from_secs;
    for (name, shape) in [
        ("1 s windows", Shape::Window),
        ("sliding window", Shape::Sliding),
    ] {
        let limit = Limit {
            rate: 50.0,
            shape,
            burst: None,
            window: secs(1),
        };
        let rows = 50 * 300;
        let mut a = Auto::new(None, None, Instant::now());
        let (_, limited) = night(&mut a, limit, (0.04, 0.06), true, rows);
        let learned = a.learned().unwrap_or(0.0);
        assert!(
            (47.5..=50.0).contains(&learned),
            "{name}: learned {learned:.1}/s of 50/s"
        );
        assert!(limited <= rows / 100, "{name}: {limited} 429s");
    }
}

/// Buckets holding one to three seconds of their rate, at 1, ~50 and
/// ~150 ms, ten draws of the wire's jitter each: the next night starts
/// at nearly the limit, never above it. A 429 empties the bucket, and
/// a pause of a second refills only a second's worth, so the calls
/// accepted since the 429, over the time since it, bound the limit with
/// no burst to take off. Taking off the whole burst from every stretch,
/// a bucket of 12/s holding 25 learned 0.82–0.84 of its limit, and the
/// next night ran at 80–84%. A bucket holding two seconds or more is
/// not full after such a pause either, so the bound runs back over
/// every such pause to the first: over the one stretch since the last
/// 429, buckets of 12/s holding 25 and 20/s holding 60 learned 0.93 at
/// ~150 ms, and one of 2/s holding 40 0.92 at 1 ms.
#[test]
fn a_bucket_with_seconds_of_burst_is_learned_nearly_whole() {
    let shapes = [
        (12.0, 25.0, 0.95),
        (50.0, 50.0, 0.93),
        (20.0, 60.0, 0.95),
        (2.0, 40.0, 0.94),
    ];
    for (rate, burst, at_least) in shapes {
        let limit = Limit {
            rate,
            shape: Shape::Bucket,
            burst: Some(burst),
            window: Duration::from_secs(1),
        };
        for rtt in [(0.0005, 0.001), (0.04, 0.06), (0.1, 0.2)] {
            let mut least = f64::MAX;
            for seed in 7..17 {
                SEED.set(seed);
                let mut a = Auto::new(None, None, Instant::now());
                night(&mut a, limit, rtt, true, (rate * 60.0) as usize);
                let learned = a.learned().unwrap_or(0.0) / rate;
                assert!(
                    learned <= 1.0,
                    "{rate}/s holding {burst}, {rtt:?} s, draw {seed}: learned {learned:.3}"
                );
                least = least.min(learned);
            }
            SEED.set(7);
            assert!(
                least >= at_least,
                "{rate}/s holding {burst}, {rtt:?} s: learned {least:.3} of the limit"
            );
        }
    }
}

/// Rate limits ~150 ms away, ten draws of the wire's jitter each: none
/// is taken for a cap on calls in flight. Slow start's 429s come with
/// many calls on the wire because its pace is high, so they can look
/// like a cap's; before a 429 far under the cap counted against it, and
/// a cap full of 429s after being lowered once was refuted, a sliding
/// window of 50/s was taken for a cap in 4 draws of 10 (walked down to
/// 6 or 7: 54–69% of the night, 77% the next), a fixed window in 1,
/// and a bucket without `Retry-After` in 1 (a cap of 4: 66% the next
/// night). No cap is taken even for a while: before a cap allowed at
/// most one success with two or more calls above it on the wire,
/// buckets of 20, 40, 50 and 100/s were taken for caps and refuted
/// later, each time after seconds of pauses (the 20/s bucket's first
/// night: 74% of the limit against ~81% in other draws).
#[test]
fn no_rate_limit_is_taken_for_a_cap() {
    let secs = Duration::from_secs;
    let shapes = [
        ("sliding 1 s window of 50", 50.0, Shape::Sliding, None, true),
        ("fixed 1 s windows of 60", 60.0, Shape::Window, None, true),
        (
            "bucket 40/s, burst 4",
            40.0,
            Shape::Bucket,
            Some(4.0),
            false,
        ),
        ("bucket 20/s, burst 2", 20.0, Shape::Bucket, Some(2.0), true),
        ("bucket 50/s, burst 5", 50.0, Shape::Bucket, Some(5.0), true),
        (
            "bucket 100/s, burst 10",
            100.0,
            Shape::Bucket,
            Some(10.0),
            true,
        ),
    ];
    for (name, rate, shape, burst, retry_after) in shapes {
        let limit = Limit {
            rate,
            shape,
            burst,
            window: secs(1),
        };
        for seed in 7..17 {
            SEED.set(seed);
            let mut a = Auto::new(None, None, Instant::now());
            night(
                &mut a,
                limit,
                (0.1, 0.2),
                retry_after,
                (rate * 30.0) as usize,
            );
            SEED.set(7);
            assert!(!a.took_a_cap(), "{name}, draw {seed}: took a cap");
        }
    }
}

/// A bucket of 50/s holding 5, 2 ms away: the first night pays for
/// discovery (three 429s: the unpaced start, slow start's overshoot,
/// the trial above the first estimate, each with a second of
/// `Retry-After`); the next starts from what it learned, nearly the
/// whole limit, and draws none.
#[test]
fn auto_finds_an_unpublished_limit_then_starts_there_next_time() {
    let limit = Limit {
        rate: 50.0,
        shape: Shape::Bucket,
        burst: Some(5.0),
        window: Duration::from_secs(1),
    };
    let mut first = Auto::new(None, None, Instant::now());
    let (took, limited) = night(&mut first, limit, (0.002, 0.002), true, 2000);
    assert!(2000.0 / took >= 45.0, "first night: {:.1}/s", 2000.0 / took);
    assert!(limited <= 60, "first night: {limited} 429s");
    let learned = first.learned().expect("a rate was learned");
    assert!((48.5..=50.0).contains(&learned), "learned {learned}");
    let mut second = Auto::new(None, Some(learned), Instant::now());
    let (took, limited) = night(&mut second, limit, (0.002, 0.002), true, 2000);
    assert!(
        2000.0 / took >= 48.5,
        "second night: {:.1}/s",
        2000.0 / took
    );
    assert_eq!(limited, 0, "second night");
}

/// Buckets with bursts of one and a quarter to three seconds' worth: a
/// level above the limit hid under the burst for longer than it ran, and
/// the pace learned was up to a third above the limit (16/s of 12/s;
/// 239/s of 200/s when a burst of 1.25 s was taken for a small one).
#[test]
fn a_long_burst_does_not_teach_a_pace_above_the_limit() {
    for rate in [1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 200.0] {
        for seconds in [1.25, 2.0, 3.0] {
            for rtt in [(0.002, 0.002), (0.04, 0.06), (0.1, 0.2)] {
                let limit = Limit {
                    rate,
                    shape: Shape::Bucket,
                    burst: Some(rate * seconds),
                    window: Duration::from_secs(1),
                };
                let mut a = Auto::new(None, None, Instant::now());
                night(&mut a, limit, rtt, true, (rate * 60.0) as usize);
                let learned = a.learned().unwrap_or(0.0);
                assert!(
                    learned <= rate,
                    "{rate}/s, {seconds} s of burst, {rtt:?} s: learned {learned:.2}"
                );
            }
        }
    }
}

/// What `auto` learns in a night rests on lower bounds of the limit: for
/// any token bucket (its rate, its burst, the wire's round trip and its
/// spread drawn at random), it is never more than 4% above the bucket's
/// rate. Not never above it: a bracket takes off a tenth of a second's
/// burst, and a bucket of 60–260/s holding 0.3–0.55 s of it is learned up
/// to 3.6% over (5 draws of 400). A long burst read as a small one was
/// learned 17% over.
#[test]
fn what_is_learned_stays_near_any_buckets_rate() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let config = Config {
        cases: 128,
        ..Config::default()
    };
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let shapes = (
        1.0f64..300.0,
        0.05f64..3.0,
        0.0005f64..0.2,
        0.0f64..1.0,
        7u64..10_000,
    );
    runner
        .run(&shapes, |(rate, seconds, rtt, spread, seed)| {
            SEED.set(seed);
            let limit = holding(rate, (rate * seconds).max(1.0));
            let mut a = Auto::new(None, None, Instant::now());
            let rows = (rate * 30.0) as usize + 50;
            night(&mut a, limit, (rtt, rtt * (1.0 + spread)), true, rows);
            SEED.set(7);
            let learned = a.learned().unwrap_or(0.0);
            prop_assert!(
                learned <= 1.04 * rate,
                "{rate:.2}/s holding {seconds:.2} s, {rtt:.4} s: learned {learned:.2}"
            );
            Ok(())
        })
        .unwrap();
}

/// Buckets from 2/s to 300/s, holding a tenth of a second or a whole
/// second, 2 and ~50 ms away: most of the limit is used from the first
/// night, with few 429s, and what is remembered is never over it.
#[test]
fn auto_holds_under_limits_of_every_size() {
    for rate in [2.0, 10.0, 50.0, 300.0] {
        for seconds in [0.1, 1.0] {
            for rtt in [(0.002, 0.002), (0.04, 0.06)] {
                let limit = Limit {
                    rate,
                    shape: Shape::Bucket,
                    burst: Some((rate * seconds).max(1.0)),
                    window: Duration::from_secs(1),
                };
                let mut a = Auto::new(None, None, Instant::now());
                let rows = (rate * 60.0) as usize;
                let (took, limited) = night(&mut a, limit, rtt, true, rows);
                let case = format!("{rate}/s holding {seconds} s, {rtt:?} s");
                let achieved = rows as f64 / took;
                assert!(achieved >= 0.7 * rate, "{case}: {achieved:.1}/s");
                assert!(limited <= 25 + rows / 50, "{case}: {limited} 429s");
                let learned = a.learned().unwrap_or(0.0);
                assert!(learned <= rate, "{case}: learned {learned:.2}");
            }
        }
    }
}

/// A window of a second met at ~150 ms: the `Retry-After` pause after
/// the unpaced start mostly ends mid-window, so slow start's calls
/// span two windows and never show the quota; the unpaced start's
/// 429s do (see `pacer::Storm`). Before, a fixed window of 60 used 81%
/// of its first night over ten draws (78% in the least) and a sliding
/// window of 50 83% (74%); now 92% (91%) and 92% (89%).
#[test]
fn a_window_of_a_second_is_paced_at_its_quota_however_far() {
    let shapes = [
        ("fixed 1 s windows of 60", 60.0, Shape::Window),
        ("sliding 1 s window of 50", 50.0, Shape::Sliding),
    ];
    for (name, rate, shape) in shapes {
        let limit = Limit {
            rate,
            shape,
            burst: None,
            window: Duration::from_secs(1),
        };
        let mut shares = Vec::new();
        for seed in 7..17 {
            SEED.set(seed);
            let mut a = Auto::new(None, None, Instant::now());
            let rows = (rate * 30.0) as usize;
            let (took, _) = night(&mut a, limit, (0.1, 0.2), true, rows);
            shares.push(rows as f64 / took / rate);
        }
        SEED.set(7);
        let mean = shares.iter().sum::<f64>() / shares.len() as f64;
        assert!(mean >= 0.9, "{name}: {:.0}% of the limit", mean * 100.0);
    }
}

/// A bucket of 2/s holding 40 can look like a window of 40/s to the
/// unpaced start's 429s: the pace then taken never held, so the 429s
/// that refute it are no sign the limit dropped from there. Taken for
/// one, it was probed back to 39/s every 4 s all night: 70–77 429s in
/// a night of 240 calls at ~50 ms in 4 draws of 5, against 41–43 now.
#[test]
fn a_bucket_taken_for_a_window_is_not_probed_back_to_it() {
    let limit = holding(2.0, 40.0);
    for seed in 7..12 {
        SEED.set(seed);
        let mut a = Auto::new(None, None, Instant::now());
        let (_, limited) = night(&mut a, limit, (0.04, 0.06), true, 240);
        SEED.set(7);
        assert!(limited <= 50, "draw {seed}: {limited} 429s");
    }
}

/// A fixed 1 s window of 60 over ten minutes, 1 ms away: once a minute
/// the pace steps 4% above its quota and draws a 429. Each such 429 took
/// the pace back to a bound less a burst and a margin, 0.5–0.7% under
/// the pace that had held all minute, so the pace sank a little every
/// minute (57.7/s learned, where 59.4 had held); now the pace that held
/// stands.
#[test]
fn a_failed_probe_does_not_lower_a_pace_that_held() {
    let limit = window_of_a_second(60.0);
    let mut a = Auto::new(None, None, Instant::now());
    let rows = 60 * 600;
    let (took, _) = night(&mut a, limit, (0.0005, 0.001), true, rows);
    let learned = a.learned().expect("a rate was learned");
    assert!(learned >= 0.98 * 60.0, "learned {learned:.2}/s");
    let share = rows as f64 / took / 60.0;
    assert!(share >= 0.97, "{:.1}% of the limit", share * 100.0);
}

/// A bucket of 2/s holding 40 over twenty minutes, ~50 ms away: each
/// 429 left a tight estimate, but came at a pace far above it (the
/// burst hides every climb for seconds), so a trial followed, held,
/// climbed and drew the next 429, every 5–6 s all night: 9% of the
/// calls. Four estimates in a row that agree pin the limit.
#[test]
fn estimates_that_agree_pin_a_limit_a_long_burst_hides() {
    let limit = holding(2.0, 40.0);
    let mut a = Auto::new(None, None, Instant::now());
    let rows = 2 * 1200;
    let (took, limited) = night(&mut a, limit, (0.04, 0.06), true, rows);
    let share = limited as f64 / (rows + limited) as f64;
    assert!(share <= 0.03, "{:.1}% 429s", share * 100.0);
    assert!(
        rows as f64 / took >= 0.97 * 2.0,
        "{:.2}/s",
        rows as f64 / took
    );
}

/// A fixed 1 s window of 60 for an hour, 1 ms away: the pace climbs
/// above the pinned quota to see whether the limit rose. It never does,
/// and each climb costs a 429 and a `Retry-After` second: once a minute,
/// that was 1.6% of the night. Each failed climb doubles the wait for
/// the next, up to eight minutes.
#[test]
fn climbs_that_keep_failing_come_ever_less_often() {
    let limit = window_of_a_second(60.0);
    let mut a = Auto::new(None, Some(59.4), Instant::now());
    let rows = 60 * 3600;
    let (took, limited) = night(&mut a, limit, (0.0005, 0.001), true, rows);
    let share = rows as f64 / took / 60.0;
    assert!(
        limited <= 20,
        "{limited} 429s in an hour, {:.1}% of the limit",
        share * 100.0
    );
}

#[test]
fn a_limit_never_reached_teaches_nothing() {
    let mut a = Auto::new(None, None, Instant::now());
    let (_, limited) = night(&mut a, Limit::bucket(10_000.0), (0.002, 0.002), true, 500);
    assert_eq!(limited, 0);
    assert_eq!(a.rate(), None, "still unpaced");
    assert_eq!(a.learned(), None);
}

/// `bench.py auto`'s limit that drops from 50/s to 20/s at 15 s and
/// comes back at 35 s, simulated at 1, ~50 and ~150 ms: most of the
/// lower limit is used while it lasts, and the
/// old rate is back within a few seconds of the recovery.
#[test]
fn auto_uses_most_of_a_limit_that_dropped() {
    for rtt in [(0.0005, 0.001), (0.04, 0.06), (0.1, 0.2)] {
        let high = Limit::bucket(50.0);
        let low = Limit::bucket(20.0);
        let mut a = Auto::new(None, Some(49.6), Instant::now());
        let mut accepted = Vec::new();
        let (t, limited) = night_logged(
            &mut a,
            Server::Drops(high, low),
            rtt,
            true,
            3000,
            &mut accepted,
        );
        let mut per_sec = vec![0; t as usize + 1];
        for s in &accepted {
            per_sec[*s as usize] += 1;
        }
        let low_phase: usize = per_sec[18..35].iter().sum();
        let used = low_phase as f64 / (20.0 * 17.0);
        let back = (35..per_sec.len())
            .find(|s| per_sec[*s] >= 45)
            .map(|s| s - 35);
        let case = format!(
            "{} ms: {t:.1} s, {limited} 429s, 18-35 s: {:.0}% of 20/s, per second: {per_sec:?}",
            rtt.1 * 1e3,
            used * 100.0
        );
        println!("{case}");
        assert!(used >= 0.6, "{case}");
        assert!(
            back.is_some_and(|s| s <= 6),
            "back after {back:?} s: {case}"
        );
        // 15 s at 50/s, 20 s at 20/s, the rest at 50/s: 72 s.
        assert!(t <= 80.0, "{case}");
        // Every call on the wire when a 429 is read draws one too.
        assert!(limited <= 30, "{case}");
    }
}

/// Prints `auto`'s figures against every shape (`cargo test --release
/// print_every_shape -- --ignored --nocapture`): the simulated twin of
/// `scripts/bench.py realworld`, for working on the controller. `ONLY=`
/// a part of a shape's name and `RTT=` the slowest round trip in ms
/// (`1`, `60`, `200`) pick what it runs; `NIGHTS=10` makes each night
/// ten times as long; `SEEDS=10` draws the wire's jitter ten ways and
/// shows the mean and the least; `EACH=1` shows each draw, `ONE=10`
/// runs only draw 10 (seeds count from 7), and `TRACE=1` each change
/// of pace.
#[test]
#[ignore]
fn print_every_shape() {
    let secs = Duration::from_secs;
    let lim = |rate: f64, shape, burst: Option<f64>, window| Limit {
        rate,
        shape,
        burst,
        window,
    };
    let shapes: Vec<(&str, Server, bool, usize)> = vec![
        (
            "bucket 100/s b10",
            Server::Rate(lim(100.0, Shape::Bucket, Some(10.0), secs(1))),
            true,
            3000,
        ),
        (
            "bucket 50/s b5",
            Server::Rate(lim(50.0, Shape::Bucket, Some(5.0), secs(1))),
            true,
            1500,
        ),
        (
            "bucket 50/s b50",
            Server::Rate(lim(50.0, Shape::Bucket, Some(50.0), secs(1))),
            true,
            1500,
        ),
        (
            "window 1s 60",
            Server::Rate(lim(60.0, Shape::Window, None, secs(1))),
            true,
            1800,
        ),
        (
            "window 10s 400",
            Server::Rate(lim(40.0, Shape::Window, None, secs(10))),
            true,
            1600,
        ),
        (
            "sliding 1s 50",
            Server::Rate(lim(50.0, Shape::Sliding, None, secs(1))),
            true,
            1500,
        ),
        (
            "no RA 40/s b4",
            Server::Rate(lim(40.0, Shape::Bucket, Some(4.0), secs(1))),
            false,
            1200,
        ),
        ("in flight 8", Server::InFlight(8), true, 1500),
        ("bucket 20/s", Server::Rate(Limit::bucket(20.0)), true, 600),
        (
            "bucket 12/s b25",
            Server::Rate(lim(12.0, Shape::Bucket, Some(25.0), secs(1))),
            true,
            720,
        ),
        (
            "bucket 2/s b40",
            Server::Rate(lim(2.0, Shape::Bucket, Some(40.0), secs(1))),
            true,
            240,
        ),
    ];
    let only = std::env::var("ONLY").ok();
    let nights: usize = std::env::var("NIGHTS").map_or(1, |n| n.parse().unwrap());
    let seeds: u64 = std::env::var("SEEDS").map_or(1, |n| n.parse().unwrap());
    for (name, server, retry_after, rows) in shapes {
        let rows = rows * nights;
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        for rtt in [(0.0005, 0.001), (0.04, 0.06), (0.1, 0.2)] {
            if std::env::var("RTT").is_ok_and(|r| r != format!("{}", rtt.1 * 1e3)) {
                continue;
            }
            let allowed = match server {
                Server::Rate(l) | Server::Drops(l, _) => l.rate,
                Server::InFlight(k) => k as f64 / ((rtt.0 + rtt.1) / 2.0),
            };
            let ideal = rows as f64 / allowed;
            // (first night's share, its 429s, second night's share, learned ÷ allowed)
            let mut runs = Vec::new();
            for seed in 0..seeds {
                if std::env::var("ONE").is_ok_and(|o| o != format!("{}", 7 + seed)) {
                    continue;
                }
                SEED.set(7 + seed);
                let mut first = Auto::new(None, None, Instant::now());
                let (t1, l1) = night_of(&mut first, server, rtt, retry_after, rows);
                let learned = first.learned();
                let mut second = Auto::new(None, learned, Instant::now()).with_cap(first.cap());
                let (t2, _) = night_of(&mut second, server, rtt, retry_after, rows);
                let share_429 = l1 as f64 / (rows + l1) as f64;
                let over = learned.map_or(0.0, |l| l / allowed);
                if std::env::var("EACH").is_ok() {
                    println!(
                        "  seed {}: {:.2} {:.2} learned {learned:?} second learned {:?} cap {:?} {:?}",
                        7 + seed,
                        ideal / t1,
                        ideal / t2,
                        second.learned(),
                        first.cap(),
                        second.cap()
                    );
                }
                runs.push((ideal / t1, share_429, ideal / t2, over));
            }
            SEED.set(7);
            let n = runs.len() as f64;
            let mean = |f: fn(&(f64, f64, f64, f64)) -> f64| runs.iter().map(f).sum::<f64>() / n;
            let least = |f: fn(&(f64, f64, f64, f64)) -> f64| {
                runs.iter().map(f).fold(f64::INFINITY, f64::min)
            };
            let most = |f: fn(&(f64, f64, f64, f64)) -> f64| runs.iter().map(f).fold(0.0, f64::max);
            println!(
                "{name:18} {:>4.0} ms: first {:>4.0}% (least {:>3.0}%) 429 {:>4.1}% | second {:>4.0}% (least {:>3.0}%) | learned ≤ {:.3} of the limit",
                rtt.1 * 1e3,
                100.0 * mean(|r| r.0),
                100.0 * least(|r| r.0),
                100.0 * most(|r| r.1),
                100.0 * mean(|r| r.2),
                100.0 * least(|r| r.2),
                most(|r| r.3),
            );
        }
    }
}
