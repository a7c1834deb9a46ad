//! The embedded backend: a durable queue in `<state-dir>/queue/`, for runs
//! with no RabbitMQ. Storage is in `embedded_store.rs`; this file adds the
//! single-process lock, wake-ups on publish, and the consumer loop.
//!
//! One process owns the directory at a time (an exclusive lock on
//! `queue.lock`, released by the kernel even when the process is killed).
//! That is what makes it safe to treat every claim found at start-up as
//! abandoned and deliver those messages again.

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use super::consumer::{Consumer, StopSignal, process};
use super::embedded_store::{Claimed, Store};
use super::{
    ConsumeOptions, DEAD_LETTER_TRIM_EVERY, DeadLetter, Delivery, Handler, QueueError, Settle,
    new_message_id,
};

/// How long a consumer with nothing to do sleeps before looking again
/// (publishes in this process wake it at once).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long opening waits for a previous owner of the directory to exit.
const LOCK_WAIT: Duration = Duration::from_secs(3);

pub struct Embedded {
    store: Arc<Store>,
    /// Woken on publish, one per declared queue.
    wakers: HashMap<String, Arc<Notify>>,
    _lock: File,
}

impl Embedded {
    pub(super) async fn open(dir: &Path, queues: Vec<String>) -> Result<Embedded, QueueError> {
        let io_err = |context: &str| {
            let dir = dir.display().to_string();
            let context = context.to_string();
            move |source| QueueError::Io {
                dir,
                context,
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(io_err("cannot create the directory"))?;
        let lock =
            File::create(dir.join("queue.lock")).map_err(io_err("cannot create queue.lock"))?;
        lock_exclusive(&lock, dir).await?;
        let dir_owned = dir.to_path_buf();
        let store = tokio::task::spawn_blocking(move || Store::open(&dir_owned))
            .await
            .map_err(|e| io_err("opening panicked")(std::io::Error::other(e)))??;
        tracing::info!(dir = %dir.display(), ?queues, "embedded queue opened");
        Ok(Embedded {
            store: Arc::new(store),
            wakers: queues
                .into_iter()
                .map(|q| (q, Arc::new(Notify::new())))
                .collect(),
            _lock: lock,
        })
    }

    pub(super) fn dir(&self) -> &Path {
        self.store.dir()
    }

    fn waker(&self, queue: &str) -> Result<Arc<Notify>, QueueError> {
        self.wakers.get(queue).cloned().ok_or_else(|| {
            let mut declared: Vec<&str> = self.wakers.keys().map(String::as_str).collect();
            declared.sort_unstable();
            QueueError::UnknownQueue {
                queue: queue.to_string(),
                declared: declared.join(", "),
            }
        })
    }

    pub(super) async fn publish(&self, queue: &str, body: &[u8]) -> Result<(), QueueError> {
        let waker = self.waker(queue)?;
        let (queue, body, id) = (queue.to_string(), body.to_vec(), new_message_id());
        let q = queue.clone();
        blocking(&self.store, move |s| s.insert(&q, &id, &body)).await?;
        tracing::debug!(%queue, "published to the embedded queue");
        waker.notify_waiters();
        Ok(())
    }

    pub(super) async fn consume(
        &self,
        queue: &str,
        opts: ConsumeOptions,
        handler: Handler,
    ) -> Result<Consumer, QueueError> {
        let waker = self.waker(queue)?;
        let store = self.store.clone();
        let q = queue.to_string();
        tracing::info!(%queue, ?opts, "consuming from the embedded queue");
        Ok(Consumer::spawn(queue, move |stop| {
            consume_loop(store, q, waker, opts, handler, stop)
        }))
    }

    pub(super) async fn ping(&self) -> Result<(), QueueError> {
        blocking(&self.store, |s| s.ping()).await
    }

    pub(super) async fn dead_letters(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        self.waker(queue)?;
        let queue = queue.to_string();
        blocking(&self.store, move |s| s.dead_letters(&queue, limit)).await
    }

    pub(super) async fn replay_dead_letters(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<usize, QueueError> {
        let waker = self.waker(queue)?;
        let q = queue.to_string();
        let moved = blocking(&self.store, move |s| s.replay(&q, limit)).await?;
        waker.notify_waiters();
        Ok(moved)
    }

    pub(super) async fn delete_queue(&self, queue: &str) -> Result<(), QueueError> {
        let queue = queue.to_string();
        blocking(&self.store, move |s| s.delete_queue(&queue)).await
    }
}

/// Takes the directory's lock, waiting briefly for a previous owner that is
/// still exiting.
async fn lock_exclusive(lock: &File, dir: &Path) -> Result<(), QueueError> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(TryLockError::WouldBlock) => {
                return Err(QueueError::Io {
                    dir: dir.display().to_string(),
                    context: "another spindle process is using this queue directory".into(),
                    source: std::io::ErrorKind::WouldBlock.into(),
                });
            }
            Err(TryLockError::Error(source)) => {
                return Err(QueueError::Io {
                    dir: dir.display().to_string(),
                    context: "cannot lock queue.lock".into(),
                    source,
                });
            }
        }
    }
}

/// Runs a store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    let store = store.clone();
    let dir: PathBuf = store.dir().to_path_buf();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| QueueError::Io {
            dir: dir.display().to_string(),
            context: "a queue operation panicked".into(),
            source: std::io::Error::other(e),
        })?
}

/// Takes a message whenever a handler slot is free, until stopped; then
/// waits for the running handlers to settle theirs.
async fn consume_loop(
    store: Arc<Store>,
    queue: String,
    waker: Arc<Notify>,
    opts: ConsumeOptions,
    handler: Handler,
    mut stop: StopSignal,
) {
    let slots = Arc::new(Semaphore::new(opts.slots()));
    let mut running = JoinSet::new();
    let mut next_trim = tokio::time::Instant::now();
    loop {
        while running.try_join_next().is_some() {}
        if tokio::time::Instant::now() >= next_trim {
            next_trim += DEAD_LETTER_TRIM_EVERY;
            let (q, limits) = (queue.clone(), opts.dead_letters);
            match blocking(&store, move |s| s.trim_dead_letters(&q, limits)).await {
                Ok(0) => {}
                Ok(dropped) => {
                    tracing::warn!(%queue, dropped, ?limits, "dropped dead letters past the queue's bounds");
                }
                Err(e) => tracing::error!(%queue, "cannot trim the dead letters: {e}"),
            }
        }
        let permit = tokio::select! {
            biased;
            () = stop.wait() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // the semaphore is never closed
            },
        };
        // Registered before looking, so a publish in between still wakes us.
        let woken = waker.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let q = queue.clone();
        match blocking(&store, move |s| s.claim(&q)).await {
            Ok(Some(message)) => {
                let (store, handler, opts, queue, waker) = (
                    store.clone(),
                    handler.clone(),
                    opts.clone(),
                    queue.clone(),
                    waker.clone(),
                );
                running.spawn(async move {
                    handle(&store, &queue, &opts, &handler, message).await;
                    drop(permit);
                    // A retry may now be due sooner than the loop's next look.
                    waker.notify_waiters();
                });
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(%queue, "cannot take a message: {e}"),
        }
        drop(permit);
        let q = queue.clone();
        let idle = match blocking(&store, move |s| s.next_visible_in(&q)).await {
            Ok(Some(next)) => next.min(IDLE_POLL),
            _ => IDLE_POLL,
        };
        tokio::select! {
            () = &mut woken => {}
            () = tokio::time::sleep(idle) => {}
            () = stop.wait() => break,
        }
    }
    tracing::debug!(%queue, in_flight = running.len(), "stopping: waiting for running handlers");
    while running.join_next().await.is_some() {}
}

async fn handle(
    store: &Arc<Store>,
    queue: &str,
    opts: &ConsumeOptions,
    handler: &Handler,
    message: Claimed,
) {
    let Claimed {
        id,
        message_id,
        body,
        attempt,
        replayed,
    } = message;
    let delivery = Delivery {
        queue: queue.to_string(),
        body,
        attempt,
        message_id: message_id.clone(),
        replayed,
    };
    let settle = process(handler, opts, delivery).await;
    let result = match &settle {
        Settle::Ack => blocking(store, move |s| s.ack(id)).await,
        Settle::Retry {
            next_attempt,
            delay,
            reason,
            ..
        } => {
            let (next, delay, reason) = (*next_attempt, *delay, reason.clone());
            blocking(store, move |s| s.retry(id, next, &reason, delay)).await
        }
        Settle::Dead { reason } => {
            let reason = reason.clone();
            blocking(store, move |s| s.dead_letter(id, &reason)).await
        }
    };
    if let Err(e) = result {
        // The message stays claimed, so it is delivered again after a restart.
        tracing::error!(%queue, %message_id, ?settle, "cannot settle the message: {e}");
    }
}
