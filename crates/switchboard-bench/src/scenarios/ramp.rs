//! The `ramp` scenario: the `fanout` scenario at rising publish rates, until a step loses
//! messages or its p99 latency passes a bound; reports every step and the highest clean one.
//!
//! Each step is a whole fanout run (subscribers connect, publish for `--step-duration` seconds
//! of which `--step-warmup` are not measured, drain, count), against the same nodes, so a step
//! is judged by the same rules as `fanout`. A step is **clean** when it found no problem (no
//! loss, duplicate, out-of-order delivery, disconnect or publish error), its p99 is at most
//! `--p99-bound-ms`, and the publishers kept to their schedule (no slot skipped and at least
//! 95% of the target rate accepted: otherwise the offered load was not the one asked for). The
//! ramp stops at the first step that is not clean, or after `--max-rate` / `--max-steps`.

use std::time::Duration;

use crate::report::{RampReport, RampStep, Report};
use crate::scenarios::checks;
use crate::scenarios::fanout::{self, Common, OneChannel, Scenario};

/// Options of `switchboard-bench ramp`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    #[command(flatten)]
    pub common: Common,
    // The channel, as in `fanout`.
    #[command(flatten)]
    pub target: OneChannel,
    /// Publisher tasks sharing the rate, at least (see `--publisher-rate`).
    #[arg(long, default_value_t = 4)]
    pub publishers: u32,
    /// Most publishes per second one publisher task is given: a step at a higher rate gets
    /// more publishers. A publisher waits for each answer, so under load a few publishers
    /// cannot offer a high rate, and the ramp would stop on the generator's publishing rather
    /// than on the nodes.
    #[arg(long, default_value_t = 50.0)]
    pub publisher_rate: f64,
    /// Publishes per second of the first step.
    #[arg(long, default_value_t = 50.0)]
    pub start: f64,
    /// Each step's rate is the previous one times this (unless `--step` is given).
    #[arg(long, default_value_t = 2.0)]
    pub factor: f64,
    /// Each step's rate is the previous one plus this (instead of `--factor`).
    #[arg(long)]
    pub step: Option<f64>,
    /// No step above this many publishes per second.
    #[arg(long, default_value_t = 10_000.0)]
    pub max_rate: f64,
    /// At most this many steps.
    #[arg(long, default_value_t = 10)]
    pub max_steps: usize,
    /// Seconds of publishing per step, warm-up included.
    #[arg(long, default_value_t = 10.0)]
    pub step_duration: f64,
    /// Seconds at the start of each step that are not measured.
    #[arg(long, default_value_t = 2.0)]
    pub step_warmup: f64,
    /// A step whose p99 latency is above this many milliseconds is not clean.
    #[arg(long, default_value_t = 100.0)]
    pub p99_bound_ms: f64,
    /// Seconds of pause between steps (sockets of the last step close).
    #[arg(long, default_value_t = 1.0)]
    pub pause: f64,
}

/// How the rate rises from step to step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stepping {
    /// Multiply by this.
    Factor(f64),
    /// Add this.
    Add(f64),
}

impl Stepping {
    /// The rate after `rate`.
    pub fn next(self, rate: f64) -> f64 {
        match self {
            Stepping::Factor(f) => rate * f,
            Stepping::Add(d) => rate + d,
        }
    }
}

/// The rates of every step the ramp may take: from `start`, rising by `stepping`, none above
/// `max_rate`, at most `max_steps`.
pub fn rates(start: f64, stepping: Stepping, max_rate: f64, max_steps: usize) -> Vec<f64> {
    let mut out = Vec::new();
    let mut rate = start;
    // A small tolerance, so that 50 × 2 × 2 ... lands on a `--max-rate` of 800.
    while out.len() < max_steps && rate <= max_rate * (1.0 + 1e-9) {
        out.push(rate);
        rate = stepping.next(rate);
    }
    out
}

/// Publisher tasks for a step at `rate`: at least `min`, and enough that none is given more
/// than `per_publisher` publishes per second.
pub fn publishers_for(rate: f64, min: u32, per_publisher: f64) -> u32 {
    let needed = (rate / per_publisher).ceil();
    if needed.is_finite() && needed > f64::from(min) {
        needed.min(f64::from(u16::MAX)) as u32
    } else {
        min.max(1)
    }
}

/// How a step went.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Zero loss, p99 within the bound, the offered load reached.
    Clean,
    /// The run found problems (loss, duplicates, order, disconnects, publish errors).
    Failed(Vec<String>),
    /// p99 above the bound (ms).
    SlowP99(f64),
    /// The publishers did not keep to their schedule: accepted publishes per second, slots
    /// skipped, and the p99 of the API's answers (ms), which says whether the node answered
    /// slowly.
    Shortfall {
        achieved: f64,
        skipped: u64,
        api_p99: f64,
    },
}

impl Verdict {
    /// Short text for the report.
    pub fn describe(&self, bound_ms: f64) -> String {
        match self {
            Verdict::Clean => "clean".to_owned(),
            Verdict::Failed(f) => format!("failed: {}", f.join("; ")),
            Verdict::SlowP99(p99) => format!("p99 {p99:.1} ms > {bound_ms} ms"),
            Verdict::Shortfall {
                achieved,
                skipped,
                api_p99,
            } => format!(
                "offered load not reached: {achieved:.1} publishes/s accepted, {skipped} slots \
                 skipped (API answers p99 {api_p99:.1} ms)"
            ),
        }
    }
}

/// Judges one step's report.
pub fn judge(r: &Report, p99_bound_ms: f64) -> Verdict {
    let failures = r.failures();
    if !failures.is_empty() {
        return Verdict::Failed(failures);
    }
    if r.latency.p99 > p99_bound_ms {
        return Verdict::SlowP99(r.latency.p99);
    }
    if r.publishes_skipped > 0 || r.publish_rate() < 0.95 * r.target_rate {
        return Verdict::Shortfall {
            achieved: r.publish_rate(),
            skipped: r.publishes_skipped,
            api_p99: r.publish_latency.p99,
        };
    }
    Verdict::Clean
}

/// Runs the ramp; `Err` only when its first step could not be set up.
pub async fn run(opts: &Opts, runtime_threads: usize) -> anyhow::Result<RampReport> {
    let stepping = match opts.step {
        Some(d) => {
            anyhow::ensure!(d > 0.0 && d.is_finite(), "--step must be positive");
            Stepping::Add(d)
        }
        None => {
            anyhow::ensure!(
                opts.factor > 1.0 && opts.factor.is_finite(),
                "--factor must be above 1"
            );
            Stepping::Factor(opts.factor)
        }
    };
    let mut report = RampReport {
        subscribers: opts.target.subscribers,
        ws_nodes: opts.common.ws.len(),
        p99_bound_ms: opts.p99_bound_ms,
        ..RampReport::default()
    };
    let rates = rates(opts.start, stepping, opts.max_rate, opts.max_steps);
    checks::check_positive(&[("--publisher-rate", opts.publisher_rate)])?;
    anyhow::ensure!(
        !rates.is_empty(),
        "no step: --start is above --max-rate, or --max-steps is 0"
    );
    report.stop_reason = format!(
        "every step was clean, up to --max-rate {} / --max-steps {}",
        opts.max_rate, opts.max_steps
    );
    for (i, &rate) in rates.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs_f64(opts.pause)).await;
        }
        eprintln!("ramp step {}: {rate:.1} publishes/s", i + 1);
        let sc = Scenario::one_channel(
            &opts.target,
            rate,
            opts.step_duration,
            opts.step_warmup,
            publishers_for(rate, opts.publishers, opts.publisher_rate),
        );
        let step = match fanout::measure(&opts.common, &sc, runtime_threads).await {
            Ok(r) => r,
            Err(e) if i > 0 => {
                report.stop_reason = format!("step {} ({rate:.1}/s) could not run: {e:#}", i + 1);
                break;
            }
            Err(e) => return Err(e),
        };
        let verdict = judge(&step, opts.p99_bound_ms);
        let clean = verdict == Verdict::Clean;
        eprint!("{}", step.render());
        if !clean {
            report.stop_reason = format!(
                "step {} ({rate:.1}/s): {}",
                i + 1,
                verdict.describe(opts.p99_bound_ms)
            );
        }
        report.steps.push(RampStep {
            rate,
            report: step,
            verdict,
        });
        if !clean {
            break;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::latency::LatencySummary;

    #[test]
    fn rates_rise_and_stop() {
        assert_eq!(
            rates(50.0, Stepping::Factor(2.0), 800.0, 10),
            [50.0, 100.0, 200.0, 400.0, 800.0]
        );
        assert_eq!(
            rates(100.0, Stepping::Add(50.0), 1000.0, 3),
            [100.0, 150.0, 200.0]
        );
        assert!(rates(100.0, Stepping::Factor(2.0), 50.0, 5).is_empty());
    }

    #[test]
    fn publishers_grow_with_the_rate() {
        assert_eq!(publishers_for(50.0, 4, 50.0), 4);
        assert_eq!(publishers_for(200.0, 4, 50.0), 4);
        assert_eq!(publishers_for(400.0, 4, 50.0), 8);
        assert_eq!(publishers_for(410.0, 4, 50.0), 9);
        assert_eq!(publishers_for(10.0, 0, 50.0), 1);
    }

    fn step(rate: f64, p99: f64, lost: u64) -> Report {
        Report {
            target_rate: rate,
            measure_secs: 10.0,
            publishes_measured: (rate * 10.0) as u64,
            lost,
            latency: LatencySummary {
                count: 1,
                p99,
                ..LatencySummary::default()
            },
            ..Report::default()
        }
    }

    #[test]
    fn judging_a_step() {
        assert_eq!(judge(&step(100.0, 5.0, 0), 100.0), Verdict::Clean);
        assert_eq!(
            judge(&step(100.0, 150.0, 0), 100.0),
            Verdict::SlowP99(150.0)
        );
        assert!(matches!(
            judge(&step(100.0, 150.0, 3), 100.0),
            Verdict::Failed(f) if f[0].contains("3 deliveries lost")
        ));
        let mut short = step(100.0, 5.0, 0);
        short.publishes_measured = 900; // 90/s of 100/s
        assert!(matches!(judge(&short, 100.0), Verdict::Shortfall { .. }));
        let mut skipped = step(100.0, 5.0, 0);
        skipped.publishes_skipped = 1;
        assert!(matches!(
            judge(&skipped, 100.0),
            Verdict::Shortfall { skipped: 1, .. }
        ));
    }
}
