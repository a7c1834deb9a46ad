//! The signals that stop a process: Ctrl-C, and SIGTERM (what Kubernetes
//! and `docker stop` send). `spindle up` drains on them; the convert worker
//! returns its unfinished messages to the queue.

/// Resolves at Ctrl-C or SIGTERM, saying which (`"interrupted"` or
/// `"SIGTERM"`). Where SIGTERM cannot be watched (not Unix, or the handler
/// cannot be installed), only Ctrl-C.
pub async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupted",
                _ = term.recv() => "SIGTERM",
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "interrupted"
}
