//! What both backends' consumers share: the [`Consumer`] handle, the stop
//! signal, and [`process`]: one delivery from the delivery limit through
//! the handler (a panic becomes a retry instead of a message stuck
//! unacknowledged) and the dead-letter hook to a [`Settle`], counted.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{ConsumeOptions, Delivery, Handler, Outcome, Settle};

/// A running consumer. [`Consumer::stop`] ends it cleanly; dropping it
/// stops it too, without waiting for in-flight handlers.
pub struct Consumer {
    queue: String,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Consumer {
    /// Starts `run` as the consumer's task; it gets the stop signal.
    pub(super) fn spawn<F>(queue: &str, run: impl FnOnce(StopSignal) -> F) -> Consumer
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(run(StopSignal(rx)));
        Consumer {
            queue: queue.to_string(),
            stop,
            task: Some(task),
        }
    }

    /// Stops taking new messages, lets in-flight handlers finish and settle
    /// their messages, then closes; messages the consumer held but had not
    /// started go back to the queue.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::error!(queue = %self.queue, "the consumer task failed: {e}");
        }
        tracing::info!(queue = %self.queue, "consumer stopped");
    }

    /// Kills the consumer as a crash would: handlers are dropped mid-way
    /// (a worker's child processes die with them) and nothing is settled,
    /// so their messages go back to the queue when the process's connection
    /// closes (RabbitMQ) or the queue is next opened (embedded). For a
    /// process that exits next and cannot wait for long handlers.
    pub async fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Set when the consumer should stop (also when its [`Consumer`] is dropped).
#[derive(Clone)]
pub(super) struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// Resolves once a stop was asked for.
    pub(super) async fn wait(&mut self) {
        // An error means the Consumer was dropped: that is a stop as well.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Takes one delivery to a decision: past `max_attempts` deliveries it is
/// not run at all; otherwise the handler's answer decides. A dead letter
/// passes the options' hook first, and waits for the next delivery when
/// the hook fails.
pub(super) async fn process(
    handler: &Handler,
    opts: &ConsumeOptions,
    delivery: Delivery,
) -> Settle {
    let (queue, message_id, attempt) = (
        delivery.queue.clone(),
        delivery.message_id.clone(),
        delivery.attempt,
    );
    let metrics = opts.metrics.as_ref();
    let settle = match Settle::over_limit(attempt, opts.max_attempts) {
        Some(dead) => dead,
        None => {
            let started = Instant::now();
            let outcome = {
                // Counted out even when the handler is dropped (shutdown).
                let _in_flight = metrics.map(|m| InFlight::enter(&m.in_flight));
                if let Some(m) = metrics {
                    m.consumed.inc();
                }
                guarded(&queue, &message_id, "handler", || handler(delivery.clone()))
                    .await
                    .unwrap_or_else(Outcome::Retry)
            };
            if let Some(m) = metrics {
                m.duration.observe(started.elapsed().as_secs_f64());
            }
            Settle::decide(outcome, attempt, opts)
        }
    };
    let settle = match (settle, &opts.on_dead_letter) {
        (Settle::Dead { reason }, Some(hook)) => {
            let hooked = guarded(&queue, &message_id, "dead-letter hook", || {
                (hook.0)(delivery, reason.clone())
            })
            .await
            .and_then(|answer| answer);
            match hooked {
                Ok(()) => Settle::Dead { reason },
                Err(e) => Settle::retry(
                    attempt.saturating_add(1),
                    opts.backoff(attempt),
                    format!("not dead-lettered yet, its hook failed ({e}); it was: {reason}"),
                ),
            }
        }
        (settle, _) => settle,
    };
    match &settle {
        Settle::Ack => {
            if let Some(m) = metrics {
                m.acked.inc();
            }
        }
        Settle::Retry {
            next_attempt,
            delay,
            reason,
            ..
        } => {
            if let Some(m) = metrics {
                m.retried.inc();
            }
            let deferred = *next_attempt == attempt;
            tracing::warn!(%queue, %message_id, attempt, deferred, ?delay, "will deliver again: {reason}");
        }
        Settle::Dead { reason } => {
            if let Some(m) = metrics {
                m.dead_lettered.inc();
            }
            tracing::error!(%queue, %message_id, attempt, "message dead-lettered: {reason}");
        }
    }
    settle
}

/// Calls `f` and awaits its future; a panic in either is an error naming `what`.
async fn guarded<T>(
    queue: &str,
    message_id: &str,
    what: &str,
    f: impl FnOnce() -> BoxFuture<'static, T>,
) -> Result<T, String> {
    let panicked = || {
        tracing::error!(%queue, %message_id, "the queue {what} panicked");
        format!("the {what} panicked")
    };
    let Ok(future) = std::panic::catch_unwind(AssertUnwindSafe(f)) else {
        return Err(panicked());
    };
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|_| panicked())
}

/// One message in flight on a gauge, for as long as it lives.
struct InFlight(Gauge);

impl InFlight {
    fn enter(gauge: &Gauge) -> Self {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
