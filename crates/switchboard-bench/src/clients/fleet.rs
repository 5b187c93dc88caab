//! The fleet of client tasks of a run: spawning them with a bounded number of connections
//! being set up at once, waiting until each is ready, waiting for a count to be reached, and
//! stopping them all to collect their outcomes.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

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
