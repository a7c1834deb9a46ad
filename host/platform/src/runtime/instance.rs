//! The state of one component instance (`Store<InstanceState>`): WASI
//! contexts, the capabilities the component was granted, and the limiter
//! and deadline that bound a single invocation.

use crate::capabilities::InstanceStates;
use crate::capabilities::registry::CapabilityHost;
use crate::runtime::admission::{Charges, Gate, Refusal, Slot};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiterAsync, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// One invocation's deadline and what it ran into, shared between the store
/// and the dispatcher: the dispatcher extends the deadline once a response
/// exists, and reads the flags after the store may already be gone.
#[derive(Debug)]
pub struct Invocation {
    started: Instant,
    /// Milliseconds after `started` until which guest code may run.
    deadline_ms: AtomicU64,
    timed_out: AtomicBool,
    memory_exceeded: AtomicBool,
    budget_exhausted: AtomicBool,
    /// The component slot this invocation occupies; freed with it.
    admitted: Mutex<Option<Slot>>,
    /// The request body fell below the minimum rate; the invocation ended.
    body_stalled: AtomicBool,
    /// Wakes [`Invocation::until_expired`] when the deadline is cut short.
    cut_short: tokio::sync::Notify,
}

impl Invocation {
    fn new(timeout: Duration) -> Self {
        Invocation {
            started: Instant::now(),
            deadline_ms: AtomicU64::new(timeout.as_millis() as u64),
            timed_out: AtomicBool::new(false),
            memory_exceeded: AtomicBool::new(false),
            budget_exhausted: AtomicBool::new(false),
            admitted: Mutex::new(None),
            body_stalled: AtomicBool::new(false),
            cut_short: tokio::sync::Notify::new(),
        }
    }

    /// Lets guest code run until at least `from_now` from now (e.g. while a
    /// body streams); never shortens the deadline.
    pub fn extend(&self, from_now: Duration) {
        if self.body_stalled() {
            return;
        }
        let at = self.started.elapsed() + from_now;
        self.deadline_ms
            .fetch_max(at.as_millis() as u64, Ordering::Relaxed);
    }

    /// When the invocation expires, as things stand.
    pub fn deadline(&self) -> Instant {
        self.started + Duration::from_millis(self.deadline_ms.load(Ordering::Relaxed))
    }

    /// Resolves once the deadline has passed, following extensions.
    pub async fn until_expired(self: Arc<Self>) {
        while !self.expired() {
            tokio::select! {
                () = tokio::time::sleep_until(self.deadline().into()) => {}
                () = self.cut_short.notified() => {}
            }
        }
    }

    /// Ends the invocation now because its request body arrived below the
    /// minimum rate: the instance is dropped and the caller answers 408.
    pub fn stall_body(&self) {
        self.body_stalled.store(true, Ordering::Relaxed);
        self.deadline_ms.store(0, Ordering::Relaxed);
        self.cut_short.notify_one();
    }

    pub fn body_stalled(&self) -> bool {
        self.body_stalled.load(Ordering::Relaxed)
    }

    fn expired(&self) -> bool {
        self.started.elapsed().as_millis() as u64 >= self.deadline_ms.load(Ordering::Relaxed)
    }

    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    pub fn memory_exceeded(&self) -> bool {
        self.memory_exceeded.load(Ordering::Relaxed)
    }

    /// Keeps `slot` taken for as long as this invocation exists.
    pub fn hold(&self, slot: Slot) {
        *self.admitted.lock().unwrap_or_else(|e| e.into_inner()) = Some(slot);
    }

    /// The guest was refused memory because the host-wide budget was full.
    pub fn budget_exhausted(&self) -> bool {
        self.budget_exhausted.load(Ordering::Relaxed)
    }
}

/// Per-instance memory cap and the host-wide budget. The pooling allocator
/// also caps each linear memory; this limiter covers the instance as a
/// whole, charges the budget, and records a refusal so the caller can say
/// why the guest stopped.
struct MemoryLimiter {
    charges: Charges,
    invocation: Arc<Invocation>,
}

#[async_trait::async_trait]
impl ResourceLimiterAsync for MemoryLimiter {
    async fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        match self.charges.grow(current, desired).await {
            Ok(()) => Ok(true),
            Err(refusal) => {
                let flag = match refusal {
                    Refusal::InstanceLimit => &self.invocation.memory_exceeded,
                    Refusal::Budget => &self.invocation.budget_exhausted,
                };
                flag.store(true, Ordering::Relaxed);
                Ok(false)
            }
        }
    }

    async fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Everything the host keeps for one component instance.
pub struct InstanceState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    capabilities: InstanceStates,
    limiter: MemoryLimiter,
    invocation: Arc<Invocation>,
}

impl InstanceState {
    /// State for one instance of the component behind `gate`, whose
    /// memory is charged to the gate's budget. Its WASI context has the
    /// component's `environment` and its `files` (read-only at `/`);
    /// failing to open those (their staged folder was removed) fails the
    /// instance.
    pub fn new(
        capabilities: &InstanceStates,
        gate: &Arc<Gate>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let invocation = Arc::new(Invocation::new(timeout));
        // Guests write to the host's stdout/stderr, like `spin up` does.
        let mut wasi = WasiCtx::builder();
        wasi.inherit_stdout().inherit_stderr();
        capabilities.wasi().configure(&mut wasi)?;
        let wasi = wasi.build();
        Ok(InstanceState {
            table: ResourceTable::new(),
            wasi,
            http: WasiHttpCtx::new(),
            capabilities: capabilities.clone(),
            limiter: MemoryLimiter {
                charges: gate.charges(),
                invocation: invocation.clone(),
            },
            invocation,
        })
    }

    pub fn invocation(&self) -> Arc<Invocation> {
        self.invocation.clone()
    }

    /// Installs the limiter and the epoch callback on a new store. The
    /// callback yields to the executor every tick, so a busy guest cannot
    /// starve other requests, and traps once the deadline has passed.
    pub fn configure(store: &mut Store<InstanceState>) {
        store.limiter_async(|state| &mut state.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            let invocation = &ctx.data().invocation;
            if invocation.expired() {
                invocation.timed_out.store(true, Ordering::Relaxed);
                return Ok(UpdateDeadline::Interrupt);
            }
            Ok(UpdateDeadline::Yield(1))
        });
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: self.capabilities.http_hooks(),
        }
    }
}

impl CapabilityHost for InstanceState {
    fn capability_states(&mut self) -> (&mut InstanceStates, &mut ResourceTable) {
        (&mut self.capabilities, &mut self.table)
    }
}
