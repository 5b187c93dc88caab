//! Waiting for a condition that has no event to block on: poll it against a deadline.

use std::future::Future;
use std::time::Duration;

/// How often [`eventually`] re-checks its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Polls `check` every 25 ms until it returns `Ok`, and returns that value.
///
/// Panics after `timeout` with a message naming `what` was awaited and the last
/// observation `check` reported as its `Err`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) => {
                if tokio::time::Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
                }
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
