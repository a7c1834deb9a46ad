//! Retrying until a backend answers, the same way everywhere: 100 ms after
//! the first failure and twice as long after each next one, up to
//! [`MAX_BACKOFF`]. A RabbitMQ consumer whose connection died, a broadcast
//! subscription that lost its binding, and a host reading its deploy
//! records at start-up all wait like this.

use std::time::Duration;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Calls `attempt` until it succeeds and returns what it made; `failed` is
/// told each error and how long the wait before the next attempt is.
pub async fn until_ok<T, E, Fut>(
    mut attempt: impl FnMut() -> Fut,
    mut failed: impl FnMut(&E, Duration),
) -> T
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        match attempt().await {
            Ok(made) => return made,
            Err(e) => {
                failed(&e, backoff);
                tokio::time::sleep(backoff).await;
                backoff = longer(backoff);
            }
        }
    }
}

fn longer(backoff: Duration) -> Duration {
    (backoff * 2).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn retries_until_it_succeeds_waiting_longer_each_time() {
        let waits = Mutex::new(Vec::new());
        let mut calls = 0;
        let made = until_ok(
            || {
                calls += 1;
                let result = if calls < 4 { Err("down") } else { Ok(calls) };
                async move { result }
            },
            |_, wait| waits.lock().unwrap().push(wait.as_millis()),
        )
        .await;
        assert_eq!(made, 4);
        assert_eq!(*waits.lock().unwrap(), [100, 200, 400]);
    }

    #[test]
    fn the_wait_doubles_up_to_the_cap() {
        let mut wait = FIRST_BACKOFF;
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(wait.as_millis());
            wait = longer(wait);
        }
        assert_eq!(seen, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }
}
