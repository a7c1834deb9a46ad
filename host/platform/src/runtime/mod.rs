//! The wasmtime side of the host: one `Engine` for the whole process, the
//! on-disk compile cache, and the per-instance store state with its limits.
//!
//! Components are compiled once (or loaded from the cache), linked once into
//! an `InstancePre`, and then instantiated fresh for every invocation, so no
//! state leaks from one request to the next.

pub mod admission;
pub mod cache;
pub mod component;
pub mod componentize;
pub mod instance;
pub mod linker;
pub mod unserved;

use crate::runtime_config::Limits;
use admission::{Gate, MemoryBudget};
use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; timeouts are enforced to this resolution.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The process-wide engine plus the thread that drives epoch interruption.
pub struct Runtime {
    engine: Engine,
    limits: Limits,
    budget: MemoryBudget,
    stop_ticker: Arc<AtomicBool>,
}

impl Runtime {
    pub fn new(limits: Limits) -> Result<Self> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .wasm_component_model_async(true)
            .epoch_interruption(true)
            .parallel_compilation(true);

        // Instances come from pre-reserved slots: instantiation is a few
        // page mappings, and a slot's memory can never exceed the cap.
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(limits.max_instances)
            .total_core_instances(limits.max_instances.saturating_mul(8))
            .total_memories(limits.max_instances.saturating_mul(4))
            .total_tables(limits.max_instances.saturating_mul(8))
            .total_stacks(limits.max_instances)
            .max_memories_per_component(8)
            .max_memory_size(limits.largest_memory_limit_bytes())
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(1 << 20)
            .table_elements(100_000);
        // A freed slot is reset in place up to `keep_resident_kb` (only the
        // pages the guest touched, found with PAGEMAP_SCAN where the kernel
        // has it) rather than decommitted. What lies beyond is decommitted
        // at once, not batched: a batch would hold freed memory the budget
        // has already handed back.
        let keep_resident =
            usize::try_from(limits.keep_resident_kb.saturating_mul(1024)).unwrap_or(usize::MAX);
        pool.max_unused_warm_slots(limits.max_warm_slots)
            .linear_memory_keep_resident(keep_resident)
            .table_keep_resident(keep_resident)
            .pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));

        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("creating the wasmtime engine")?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop_ticker.clone();
            std::thread::Builder::new()
                .name("spindle-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .context("starting the epoch thread")?;
        }
        let budget = MemoryBudget::new(limits.memory_budget_mb);
        tracing::info!(
            "component memory budget: {} MiB for all instances together ([limits] memory_budget_mb)",
            budget.total_mb()
        );
        Ok(Runtime {
            engine,
            limits,
            budget,
            stop_ticker,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Admission for component `id`: its cap, its memory limit, the budget.
    pub fn gate(&self, id: &str) -> Arc<Gate> {
        Arc::new(Gate::new(
            id,
            self.limits.max_concurrency_of(id),
            self.limits.memory_limit_bytes_of(id),
            self.budget.clone(),
            self.limits.queue_timeout(),
        ))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}
