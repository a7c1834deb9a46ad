//! Where the host is in its life: starting (reading the deploy records),
//! serving, or draining; and what `/readyz` reports.

use crate::capabilities::registry::Check;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Where a process is in starting up. A host serves the manifest's
/// versions of its components only once the deploy records say none was
/// deployed instead; until it has read them (the blob store may come up
/// after it), app routes answer 503 and `/readyz` says what it waits for.
#[derive(Debug, Clone)]
pub enum Startup {
    /// Still reading the deploy records; why it has not finished.
    Waiting(String),
    Done,
}

/// The host's start-up and drain state, shared by the triggers, the
/// deployer and the admin listener.
pub struct Lifecycle {
    startup: watch::Sender<Startup>,
    /// Set on SIGTERM: `/readyz` answers 503 while in-flight work finishes.
    draining: AtomicBool,
}

impl Lifecycle {
    pub fn new(waiting_for: String) -> Self {
        Lifecycle {
            startup: watch::Sender::new(Startup::Waiting(waiting_for)),
            draining: AtomicBool::new(false),
        }
    }

    /// Records how far start-up is.
    pub fn set_startup(&self, startup: Startup) {
        self.startup.send_replace(startup);
    }

    /// Resolves once start-up has finished.
    pub async fn started(&self) {
        let mut startup = self.startup.subscribe();
        // Ends only with the lifecycle, which outlives its waiters.
        let _ = startup.wait_for(|s| matches!(s, Startup::Done)).await;
    }

    /// Waits up to `patience` for start-up to finish; `Err` says what the
    /// host still waits for. Requests and probes that arrive during a
    /// start-up that is about to finish are served, not refused.
    pub async fn started_within(&self, patience: Duration) -> Result<(), String> {
        if matches!(*self.startup.borrow(), Startup::Done) {
            return Ok(());
        }
        match tokio::time::timeout(patience, self.started()).await {
            Ok(()) => Ok(()),
            Err(_) => match &*self.startup.borrow() {
                Startup::Waiting(why) => Err(why.clone()),
                Startup::Done => Ok(()),
            },
        }
    }

    /// Marks the host as shutting down (see `is_draining`).
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the host is shutting down: load balancers should stop
    /// sending it work.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// What `/readyz` reports: backends HTTP routes need that are down (the
/// host is not ready) and backends only queue handlers need (degraded).
#[derive(Debug, Default)]
pub struct Readiness {
    /// Capability name and why its backend is down.
    pub down: Vec<(&'static str, String)>,
    pub degraded: Vec<(&'static str, String)>,
    /// What start-up still waits for, if it has not finished.
    pub starting: Option<String>,
}

impl Readiness {
    /// Sorts backend checks: a failed one is down when `needed` says the
    /// process serves with it, else degraded.
    pub fn from_checks(checks: Vec<Check>, needed: &[&'static str]) -> Self {
        let mut readiness = Readiness::default();
        for check in checks {
            if let Err(e) = check.result {
                let entry = (check.name, format!("{e:#}"));
                if needed.contains(&check.name) {
                    readiness.down.push(entry);
                } else {
                    readiness.degraded.push(entry);
                }
            }
        }
        readiness
    }

    pub fn is_ready(&self) -> bool {
        self.down.is_empty() && self.starting.is_none()
    }
}
