//! What both backends' consumers share: the [`Consumer`] handle, the stop
//! signal, and running a handler so that a panic becomes a retry instead of
//! a message stuck unacknowledged.

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Delivery, Handler, Outcome};

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
pub(super) struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// Resolves once a stop was asked for.
    pub(super) async fn wait(&mut self) {
        // An error means the Consumer was dropped: that is a stop as well.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Runs `handler` on `delivery`; a panic, in the call or in the future, is
/// reported as [`Outcome::Retry`].
pub(super) async fn run_handler(handler: &Handler, delivery: Delivery) -> Outcome {
    let queue = delivery.queue.clone();
    let message_id = delivery.message_id.clone();
    let panicked = || {
        tracing::error!(%queue, %message_id, "the queue handler panicked");
        Outcome::Retry("the handler panicked".to_string())
    };
    let Ok(future) = std::panic::catch_unwind(AssertUnwindSafe(|| handler(delivery))) else {
        return panicked();
    };
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(_) => panicked(),
    }
}
