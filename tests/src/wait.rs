use std::future::Future;
use std::time::Duration;

use tokio::time::{sleep, timeout, Instant};

/// A condition polled by [`wait_until`] or [`wait_for`] did not hold in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut(pub Duration);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "condition not met within {:?}", self.0)
    }
}

impl std::error::Error for TimedOut {}

const FIRST_INTERVAL: Duration = Duration::from_millis(10);
const MAX_INTERVAL: Duration = Duration::from_millis(200);

/// Polls `probe` until it returns `true` or `limit` has passed.
///
/// A probe that hangs (a query to a SIGSTOPped server, say) is cut off at the
/// deadline, so the limit holds whatever the probe does.
pub async fn wait_until<F, Fut>(limit: Duration, mut probe: F) -> Result<(), TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(limit, || {
        let fut = probe();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `probe` until it returns `Some(value)` or `limit` has passed, and
/// returns that value.
pub async fn wait_for<T, F, Fut>(limit: Duration, mut probe: F) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    // Start fast so quick conditions cost little, back off so slow ones do
    // not burn the two CPUs the services under test also need.
    let mut interval = FIRST_INTERVAL;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if let Ok(Some(value)) = timeout(remaining, probe()).await {
            return Ok(value);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(TimedOut(limit));
        }
        sleep(interval.min(remaining)).await;
        interval = (interval * 2).min(MAX_INTERVAL);
    }
}
