//! Setup shared by every scenario: checking options and pids, opening the server-API clients,
//! spawning client tasks with a bounded number of connections being set up at once, waiting for
//! them, and snapshots of the nodes', the generator's and the machine's CPU and memory around a
//! measure window.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::http::{ApiClient, ApiEndpoint};
use crate::procstat::{self, MachineTicks, Proc, Sample};
use crate::stats::{CpuTime, MachineUsage, ProcUsage};

/// Parses every `--api` URL.
pub fn endpoints(api: &[String], api_key: Option<&str>) -> anyhow::Result<Vec<ApiEndpoint>> {
    api.iter().map(|u| ApiEndpoint::parse(u, api_key)).collect()
}

/// One connected API client per endpoint, so that the first timed publish does not pay for
/// the connect.
pub async fn api_clients(
    endpoints: &[ApiEndpoint],
    timeout: Duration,
) -> anyhow::Result<Vec<ApiClient>> {
    let mut clients = Vec::with_capacity(endpoints.len());
    for e in endpoints {
        let mut c = ApiClient::new(e.clone(), timeout);
        c.connect().await?;
        clients.push(c);
    }
    Ok(clients)
}

/// Fails unless every pid names a process whose `/proc` entry is readable.
pub fn check_pids(pids: impl IntoIterator<Item = u32>) -> anyhow::Result<()> {
    for pid in pids {
        Proc::Pid(pid)
            .sample()
            .with_context(|| format!("pid {pid}: cannot read /proc/{pid}"))?;
    }
    Ok(())
}

/// Fails unless every named value is positive and finite.
pub fn check_positive(values: &[(&str, f64)]) -> anyhow::Result<()> {
    for (name, v) in values {
        ensure!(*v > 0.0 && v.is_finite(), "{name} must be positive");
    }
    Ok(())
}

/// Fails when `connections` sockets (plus `extra` and a margin) would not fit under the
/// soft limit on open files. The scripts raise it to the hard limit (`ulimit -n`).
pub fn check_open_files(connections: usize, extra: usize, what: &str) -> anyhow::Result<()> {
    if let Some(limit) = procstat::open_files_limit() {
        let needed = (connections + extra + 64) as u64;
        ensure!(
            needed <= limit,
            "{connections} {what} need about {needed} open files but the limit is {limit}: \
             raise it (ulimit -n)"
        );
    }
    Ok(())
}

/// PROTOCOL.md §3: 1 to 255 bytes of `A-Z a-z 0-9 _ - . : @ / =`.
pub fn valid_channel(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@/=".contains(&b))
}

/// Fails unless `name` is a valid channel name.
pub fn check_channel(option: &str, name: &str) -> anyhow::Result<()> {
    if !valid_channel(name) {
        bail!("{option} {name:?}: a channel is 1-255 bytes of A-Z a-z 0-9 _ - . : @ / =");
    }
    Ok(())
}

/// A client task and the way to talk to it.
pub struct Handle<C, O> {
    /// Orders to the task.
    pub control: mpsc::Sender<C>,
    /// The task; its output is the client's outcome.
    pub task: JoinHandle<O>,
}

/// The tasks [`spawn_all`] started, and how many of them failed their setup.
pub struct Spawned<C, O> {
    /// Every task, in index order (failed ones included: they end at once).
    pub handles: Vec<Handle<C, O>>,
    /// Tasks whose setup failed.
    pub failed: usize,
    /// The first setup error.
    pub first_error: Option<String>,
}

/// What a client task is given: its index, the setup semaphore (hold a permit while
/// connecting), where to say it is ready (or failed), and its control channel.
pub type Start<C> = (
    usize,
    Arc<Semaphore>,
    mpsc::Sender<Result<(), String>>,
    mpsc::Receiver<C>,
);

/// Spawns `n` client tasks made by `make`, at most `concurrency` setting up at once, and waits
/// until each has said it is ready or failed. With `fail_fast` the first failure aborts every
/// task and fails the run; without it failures are counted. Prints progress each second.
pub async fn spawn_all<C, O, F, Fut>(
    n: usize,
    concurrency: usize,
    what: &str,
    fail_fast: bool,
    mut make: F,
) -> anyhow::Result<Spawned<C, O>>
where
    F: FnMut(Start<C>) -> Fut,
    Fut: Future<Output = O> + Send + 'static,
    O: Send + 'static,
{
    let setup = Arc::new(Semaphore::new(concurrency.max(1)));
    let (ready_tx, mut ready_rx) = mpsc::channel(n.max(1));
    let handles: Vec<Handle<C, O>> = (0..n)
        .map(|i| {
            let (control, control_rx) = mpsc::channel(2);
            let task = tokio::spawn(make((i, setup.clone(), ready_tx.clone(), control_rx)));
            Handle { control, task }
        })
        .collect();
    drop(ready_tx);

    let (mut ready, mut failed, mut first_error) = (0, 0, None);
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    while ready + failed < n {
        tokio::select! {
            r = ready_rx.recv() => match r {
                Some(Ok(())) => ready += 1,
                Some(Err(e)) if fail_fast => {
                    for h in &handles {
                        h.task.abort();
                    }
                    bail!("{what} setup failed after {ready} succeeded: {e}");
                }
                Some(Err(e)) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
                None => bail!("{what} tasks ended during setup"),
            },
            _ = progress.tick() => eprintln!("{what}: {ready}/{n} ready, {failed} failed"),
        }
    }
    Ok(Spawned {
        handles,
        failed,
        first_error,
    })
}

/// Sends `stop` to every task and collects their outcomes.
pub async fn stop_all<C: Clone, O>(handles: Vec<Handle<C, O>>, stop: C) -> anyhow::Result<Vec<O>> {
    for h in &handles {
        let _ = h.control.try_send(stop.clone());
    }
    let mut outcomes = Vec::with_capacity(handles.len());
    for h in handles {
        outcomes.push(h.task.await.context("client task panicked")?);
    }
    Ok(outcomes)
}

/// Waits until `counter` reaches `target` or `timeout` passes; says whether it did, and after
/// how many seconds.
pub async fn wait_count(counter: &AtomicUsize, target: usize, timeout: Duration) -> (bool, f64) {
    let started = Instant::now();
    let deadline = started + timeout;
    let done = loop {
        if counter.load(Ordering::Acquire) >= target {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    (done, started.elapsed().as_secs_f64())
}

/// CPU time and memory of the nodes, the generator and the machine at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    nodes: Vec<(u32, Result<Sample, String>)>,
    me: Result<Sample, String>,
    machine: Option<MachineTicks>,
}

impl Snapshot {
    /// Reads every node in `pids`, the generator and the machine now.
    pub fn take(pids: &[u32]) -> Self {
        Self {
            at: Instant::now(),
            nodes: pids
                .iter()
                .map(|&pid| {
                    let s = Proc::Pid(pid)
                        .sample()
                        .map_err(|e| format!("pid {pid}: {e}"));
                    (pid, s)
                })
                .collect(),
            me: Proc::Me.sample().map_err(|e| e.to_string()),
            machine: procstat::machine_ticks().ok(),
        }
    }

    /// The node samples, in the order of the pids.
    pub fn nodes(&self) -> impl Iterator<Item = &Result<Sample, String>> {
        self.nodes.iter().map(|(_, s)| s)
    }
}

/// A process's CPU time over a window and its memory at the end, or why it could not be
/// read.
pub type Usage = Result<(CpuTime, Sample), String>;

/// What happened between two [`Snapshot`]s.
#[derive(Debug, Clone)]
pub struct Window {
    /// Wall-clock seconds between them.
    pub secs: f64,
    /// Each node's pid and CPU time and memory at the end (or why it could not be read).
    pub nodes: Vec<(u32, Usage)>,
    /// The generator's CPU time and memory at the end.
    pub me: Usage,
    /// The whole machine.
    pub machine: Option<MachineUsage>,
}

impl Window {
    /// The window from `before` to `after`, CPU ticks converted with `clk_tck`.
    pub fn between(before: &Snapshot, after: &Snapshot, clk_tck: u64) -> Self {
        let tck = clk_tck.max(1) as f64;
        let usage = |b: &Result<Sample, String>, a: &Result<Sample, String>| match (b, a) {
            (Ok(b), Ok(a)) => {
                let total = a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / tck;
                let user = a.user_ticks.saturating_sub(b.user_ticks) as f64 / tck;
                // utime and stime are sampled together, but keep user <= total regardless.
                let user = user.min(total);
                Ok((CpuTime { total, user }, *a))
            }
            (Err(e), _) | (_, Err(e)) => Err(e.clone()),
        };
        let secs = after.at.saturating_duration_since(before.at).as_secs_f64();
        Self {
            secs,
            nodes: before
                .nodes
                .iter()
                .zip(&after.nodes)
                .map(|((pid, b), (_, a))| (*pid, usage(b, a)))
                .collect(),
            me: usage(&before.me, &after.me),
            machine: before
                .machine
                .zip(after.machine)
                .map(|(b, a)| MachineUsage {
                    busy_secs: a.busy.saturating_sub(b.busy) as f64 / tck,
                    total_secs: a.total.saturating_sub(b.total) as f64 / tck,
                    window_secs: secs,
                }),
        }
    }

    /// The generator's CPU seconds, if readable.
    pub fn my_cpu_secs(&self) -> Option<f64> {
        self.me.as_ref().ok().map(|(cpu, _)| cpu.total)
    }

    /// Node `i` as a [`ProcUsage`] whose CPU is divided by `deliveries`.
    pub fn node_usage(&self, i: usize, label: String, deliveries: u64) -> ProcUsage {
        let (pid, u) = &self.nodes[i];
        proc_usage(label, Some(*pid), deliveries, u)
    }

    /// The generator as a [`ProcUsage`].
    pub fn my_usage(&self, deliveries: u64) -> ProcUsage {
        proc_usage("generator".to_owned(), None, deliveries, &self.me)
    }
}

fn proc_usage(label: String, pid: Option<u32>, deliveries: u64, u: &Usage) -> ProcUsage {
    let mut p = ProcUsage {
        label,
        pid,
        deliveries,
        ..ProcUsage::default()
    };
    match u {
        Ok((cpu, s)) => {
            p.cpu_secs = Some(cpu.total);
            p.user_secs = Some(cpu.user);
            p.rss_kb = s.rss_kb;
            p.peak_rss_kb = s.peak_rss_kb;
        }
        Err(e) => p.error = Some(e.clone()),
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert!(valid_channel("chat:lobby/room=1@x_y-z.w"));
        assert!(!valid_channel(""));
        assert!(!valid_channel("a b"));
        assert!(!valid_channel("a\"b"));
        assert!(!valid_channel(&"a".repeat(256)));
        assert!(check_channel("--channel", "ok").is_ok());
        assert!(check_channel("--channel", "not ok").is_err());
    }

    #[test]
    fn windows_subtract_and_convert() {
        let sample = |cpu_ticks, rss_kb| Sample {
            cpu_ticks,
            user_ticks: cpu_ticks / 5,
            rss_kb,
            peak_rss_kb: rss_kb,
        };
        let now = Instant::now();
        let before = Snapshot {
            at: now,
            nodes: vec![(1, Ok(sample(100, 10))), (2, Err("gone".into()))],
            me: Ok(sample(5, 1)),
            machine: Some(MachineTicks {
                busy: 100,
                total: 400,
            }),
        };
        let after = Snapshot {
            at: now + Duration::from_secs(2),
            nodes: vec![(1, Ok(sample(350, 20))), (2, Err("gone".into()))],
            me: Ok(sample(55, 1)),
            machine: Some(MachineTicks {
                busy: 300,
                total: 800,
            }),
        };
        let w = Window::between(&before, &after, 100);
        assert_eq!(w.secs, 2.0);
        let cpu = w.nodes[0].1.as_ref().unwrap().0;
        assert_eq!((cpu.total, cpu.user), (2.5, 0.5));
        assert_eq!(cpu.kernel(), 2.0);
        assert!(w.nodes[1].1.is_err());
        assert_eq!(w.my_cpu_secs(), Some(0.5));
        let m = w.machine.unwrap();
        assert_eq!((m.busy_cores(), m.cores()), (1.0, 2.0));
        let u = w.node_usage(0, "n".into(), 1_000_000);
        assert_eq!((u.us_per_delivery(), u.rss_kb), (Some(2.5), 20));
        assert_eq!(u.user_us_per_delivery(), Some(0.5));
        assert_eq!(u.kernel_us_per_delivery(), Some(2.0));
        assert!(w.node_usage(1, "n".into(), 1).error.is_some());
    }
}
