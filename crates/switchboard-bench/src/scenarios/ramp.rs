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

use crate::report::{RampReport, RampStep, Verdict, judge};
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
}
