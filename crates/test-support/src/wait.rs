//! Polling with a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

const FIRST_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_millis(100);

/// Calls `f` until it returns true, sleeping between calls (5 ms, doubling up to 100 ms).
/// Panics with `what` if it has not returned true within `timeout`. `f` is always called at
/// least once, and once more at the deadline.
pub fn wait_until<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut delay = FIRST_DELAY;
    loop {
        if f() {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(delay.min(deadline - now));
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// Async [`wait_until`]: awaits `f()` until it yields true, sleeping with tokio's timer.
/// Panics with `what` on timeout. Needs a tokio runtime with the time driver enabled.
pub async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    let deadline = start + timeout;
    let mut delay = FIRST_DELAY;
    loop {
        if f().await {
            return;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_true() {
        let mut calls = 0;
        wait_until("three calls", Duration::from_secs(5), || {
            calls += 1;
            calls == 3
        });
        assert_eq!(calls, 3);
    }

    #[test]
    #[should_panic(expected = "timed out after 50ms waiting for the impossible")]
    fn panics_with_what() {
        wait_until("the impossible", Duration::from_millis(50), || false);
    }

    #[tokio::test]
    async fn async_returns_once_true() {
        let mut calls = 0;
        wait_until_async("three calls", Duration::from_secs(5), || {
            calls += 1;
            let done = calls == 3;
            async move { done }
        })
        .await;
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for the async impossible")]
    async fn async_panics_with_what() {
        wait_until_async(
            "the async impossible",
            Duration::from_millis(30),
            || async { false },
        )
        .await;
    }
}
