//! A rusqlite connection used from async code. Each call runs on tokio's
//! blocking pool with the connection locked, so SQLite's file I/O and lock
//! waits never stall the runtime; a call whose caller stops waiting (its
//! component timed out) is interrupted instead of running on unseen.

use rusqlite::{Connection, InterruptHandle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// SQLite VM steps between two looks at the cancel flag.
const CANCEL_CHECK_STEPS: i32 = 1000;

/// A connection shared by the async code that uses it.
#[derive(Clone)]
pub struct BlockingConnection {
    conn: Arc<Mutex<Connection>>,
    interrupt: Arc<InterruptHandle>,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockingError {
    #[error("the SQLite call panicked: {0}")]
    Panicked(#[from] tokio::task::JoinError),
    #[error("the SQLite call was cancelled")]
    Cancelled,
}

/// Where one call is; guarded so an interrupt can only reach the call that
/// was given up on.
#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Queued,
    Running,
    Done,
    Cancelled,
}

impl BlockingConnection {
    pub fn new(conn: Connection) -> Self {
        let interrupt = Arc::new(conn.get_interrupt_handle());
        BlockingConnection {
            conn: Arc::new(Mutex::new(conn)),
            interrupt,
        }
    }

    /// Runs `f` on the blocking pool with the connection to itself. If the
    /// returned future is dropped first, `f`'s statements are interrupted
    /// (they fail with SQLITE_INTERRUPT), or `f` never starts.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> R + Send + 'static,
    ) -> Result<R, BlockingError> {
        let phase = Arc::new(Mutex::new(Phase::Queued));
        let cancelled = Arc::new(AtomicBool::new(false));
        let guard = CancelOnDrop {
            phase: phase.clone(),
            cancelled: cancelled.clone(),
            interrupt: self.interrupt.clone(),
        };
        let conn = self.conn.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            {
                let mut phase = phase.lock().unwrap_or_else(PoisonError::into_inner);
                if *phase == Phase::Cancelled {
                    return None;
                }
                *phase = Phase::Running;
            }
            // `interrupt` is lost when it lands before a statement starts
            // (SQLite ignores it with none running); the flag is not.
            conn.progress_handler(
                CANCEL_CHECK_STEPS,
                Some(move || cancelled.load(Ordering::Relaxed)),
            );
            let out = f(&mut conn);
            conn.progress_handler(0, None::<fn() -> bool>);
            // Marked done while the connection is still held: no other
            // call's statement can be running when an interrupt lands.
            *phase.lock().unwrap_or_else(PoisonError::into_inner) = Phase::Done;
            Some(out)
        })
        .await;
        drop(guard);
        joined?.ok_or(BlockingError::Cancelled)
    }
}

struct CancelOnDrop {
    phase: Arc<Mutex<Phase>>,
    cancelled: Arc<AtomicBool>,
    interrupt: Arc<InterruptHandle>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        match *phase {
            Phase::Queued => *phase = Phase::Cancelled,
            Phase::Running => {
                self.cancelled.store(true, Ordering::Relaxed);
                self.interrupt.interrupt();
            }
            Phase::Done | Phase::Cancelled => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A statement that runs until interrupted.
    const FOREVER: &str =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";

    #[tokio::test]
    async fn a_dropped_call_is_interrupted_and_the_connection_stays_usable() {
        let conn = BlockingConnection::new(Connection::open_in_memory().unwrap());
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
        let call = conn.run(move |c| {
            let _ = started_tx.send(());
            let result = c.query_row(FOREVER, [], |r| r.get::<_, i64>(0));
            let _ = ended_tx.send(result);
        });
        // Give the call up once it runs.
        tokio::select! {
            _ = call => panic!("the endless statement ended"),
            _ = started_rx => {}
        }
        let t0 = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(5), ended_rx)
            .await
            .expect("the statement was not interrupted")
            .unwrap();
        assert_eq!(
            result.unwrap_err().sqlite_error_code(),
            Some(rusqlite::ErrorCode::OperationInterrupted)
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
        // The next call is not hit by the interrupt.
        let one = conn
            .run(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(one, 1);
    }

    #[tokio::test]
    async fn a_call_dropped_while_queued_never_runs() {
        let conn = BlockingConnection::new(Connection::open_in_memory().unwrap());
        conn.run(|c| c.execute_batch("CREATE TABLE t (x INTEGER)"))
            .await
            .unwrap()
            .unwrap();
        // Hold the connection so the next call queues behind it.
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let holder = tokio::spawn({
            let conn = conn.clone();
            async move {
                conn.run(move |_| {
                    let _ = held_tx.send(());
                    let _ = release_rx.recv();
                })
                .await
            }
        });
        held_rx.await.unwrap();
        let queued = conn.run(|c| c.execute_batch("INSERT INTO t VALUES (1)"));
        // Polled once, so it is queued, then dropped.
        let _ = tokio::time::timeout(Duration::from_millis(50), queued).await;
        release_tx.send(()).unwrap();
        holder.await.unwrap().unwrap();
        let count = conn
            .run(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(count, 0);
    }
}
