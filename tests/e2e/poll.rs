//! Waiting for a condition with a deadline instead of sleeping blindly.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is asked again.
const INTERVAL: Duration = Duration::from_millis(250);

/// Asks `check` until it answers `Ok`, and fails the test with `what` and
/// the last `Err` when `within` has passed first.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) => {
                assert!(
                    started.elapsed() < within,
                    "{what}: still not so after {:.1} s; last seen: {last}",
                    within.as_secs_f64()
                );
            }
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// Ids that no other test (nor an earlier run against the same Synapse)
/// uses: lowercase hex of the clock and a counter, fit for a Matrix localpart.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("a clock after 1970").as_nanos();
    format!("{:x}{:x}", nanos % (1 << 44), COUNTER.fetch_add(1, Ordering::Relaxed))
}
