//! Admission control: how many invocations of one component run at once,
//! and how much linear memory all instances together may hold.
//!
//! Every byte of guest linear memory is charged to one host-wide
//! [`MemoryBudget`] when a memory is created or grows, and handed back when
//! the instance is dropped, so guest memory never exceeds the budget however
//! many requests arrive. Each component also has a concurrency cap (its
//! [`Gate`]). A request waits up to the queue timeout for a slot under the
//! cap and for the memory its component's last instance needed; after that
//! it gets 503 with `Retry-After` and never touches an instance. Waiting
//! requests queue per route ("lane") and freed slots go to the lanes in
//! turn, so a flood on one route (logins) cannot starve another route of
//! the same component (token checks). The host's worst case is therefore its own baseline,
//! plus the budget, plus the connections' buffers (see the README's limits).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// The budget's unit: one WebAssembly page.
const PAGE: usize = 64 * 1024;
const MIB: u64 = 1024 * 1024;

/// The default budget when `[limits] memory_budget_mb` is 0: half of the
/// memory this process may use, at most this much.
const DEFAULT_BUDGET_CAP_MB: u64 = 768;

/// Why a request was not admitted; both are worth retrying shortly.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Overloaded {
    #[error(
        "component `{component}` is busy: all {cap} of its concurrent slots stayed taken for {waited:?}; retry shortly"
    )]
    Busy {
        component: String,
        cap: u32,
        waited: Duration,
    },
    #[error(
        "the host's memory for components ({budget_mb} MiB) stayed in use for {waited:?}; retry shortly"
    )]
    Memory { budget_mb: u64, waited: Duration },
}

impl Overloaded {
    /// Seconds a client should wait before retrying.
    pub fn retry_after_secs(&self) -> u64 {
        1
    }
}

/// Guest linear memory of all instances together.
#[derive(Clone)]
pub struct MemoryBudget {
    pages: Arc<Semaphore>,
    total_pages: usize,
}

impl MemoryBudget {
    /// A budget of `mb` MiB; 0 sizes it for the machine.
    pub fn new(mb: u64) -> Self {
        let mb = if mb == 0 { default_budget_mb() } else { mb };
        let total_pages = usize::try_from(mb.saturating_mul(MIB) / PAGE as u64)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        MemoryBudget {
            pages: Arc::new(Semaphore::new(total_pages)),
            total_pages,
        }
    }

    pub fn total_mb(&self) -> u64 {
        (self.total_pages * PAGE) as u64 / MIB
    }

    /// Bytes charged to instances right now.
    pub fn in_use_bytes(&self) -> usize {
        (self.total_pages - self.pages.available_permits()) * PAGE
    }

    /// Takes `pages`, waiting up to `wait` for them.
    async fn charge(&self, pages: usize, wait: Duration) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(pages).ok()?;
        if let Ok(permit) = self.pages.clone().try_acquire_many_owned(n) {
            return Some(permit);
        }
        tokio::time::timeout(wait, self.pages.clone().acquire_many_owned(n))
            .await
            .ok()?
            .ok()
    }

    /// Waits, in turn with other waiters, until `bytes` are free, without
    /// keeping them: the instance charges what it really uses as it grows.
    async fn wait_for(&self, bytes: usize, wait: Duration) -> bool {
        let pages = bytes.div_ceil(PAGE).min(self.total_pages);
        let Ok(n) = u32::try_from(pages) else {
            return false;
        };
        matches!(
            tokio::time::timeout(wait, self.pages.acquire_many(n)).await,
            Ok(Ok(_))
        )
    }
}

/// Half of the memory this process may use (its cgroup limit, else the
/// machine's), at most [`DEFAULT_BUDGET_CAP_MB`].
fn default_budget_mb() -> u64 {
    let available = cgroup_limit_bytes()
        .into_iter()
        .chain(physical_memory_bytes())
        .min()
        .unwrap_or(2 * DEFAULT_BUDGET_CAP_MB * MIB);
    (available / 2 / MIB).clamp(64, DEFAULT_BUDGET_CAP_MB)
}

fn cgroup_limit_bytes() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .find_map(|text| text.trim().parse().ok())
}

fn physical_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A component's concurrency slots, handed to waiting lanes in turn. A
/// slot travels to its waiter as a [`Slot`], so one handed to a request
/// that has just given up is released again, never lost.
struct Slots {
    state: Mutex<SlotState>,
}

struct SlotState {
    free: u32,
    /// Waiters per lane, first come first served within a lane.
    waiting: HashMap<Arc<str>, VecDeque<oneshot::Sender<Slot>>>,
    /// Lanes with waiters, in the order their turn comes.
    turns: VecDeque<Arc<str>>,
}

impl Slots {
    fn new(cap: u32) -> Arc<Self> {
        Arc::new(Slots {
            state: Mutex::new(SlotState {
                free: cap,
                waiting: HashMap::new(),
                turns: VecDeque::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a request of `lane`, waiting up to `wait`.
    async fn acquire(self: &Arc<Self>, lane: &str, wait: Duration) -> Option<Slot> {
        let mut granted = {
            let mut state = self.lock();
            if state.free > 0 {
                state.free -= 1;
                return Some(Slot {
                    slots: Some(self.clone()),
                });
            }
            let (tx, rx) = oneshot::channel();
            let lane: Arc<str> = lane.into();
            let queue = state.waiting.entry(lane.clone()).or_default();
            queue.push_back(tx);
            if queue.len() == 1 {
                state.turns.push_back(lane);
            }
            rx
        };
        match tokio::time::timeout(wait, &mut granted).await {
            Ok(result) => result.ok(),
            // A slot handed over just as the wait ended is still ours.
            Err(_) => {
                granted.close();
                granted.try_recv().ok()
            }
        }
    }

    /// Hands the freed `slot` to the next lane's first live waiter, or
    /// returns it to the free count.
    fn release(&self, mut slot: Slot) {
        let mut state = self.lock();
        while let Some(lane) = state.turns.pop_front() {
            let Some(queue) = state.waiting.get_mut(&lane) else {
                continue;
            };
            let next = queue.pop_front();
            if queue.is_empty() {
                state.waiting.remove(&lane);
            } else {
                state.turns.push_back(lane);
            }
            if let Some(waiter) = next {
                match waiter.send(slot) {
                    Ok(()) => return,
                    Err(back) => slot = back,
                }
            }
        }
        state.free += 1;
        // Counted free again: its drop must not release it a second time.
        slot.slots = None;
    }
}

/// One component's admission: its concurrency cap and per-instance memory
/// cap, and the budget its instances charge. Shared by every version of
/// the component, so a hot redeploy does not reset the cap.
pub struct Gate {
    component: Arc<str>,
    slots: Arc<Slots>,
    cap: u32,
    memory_limit: usize,
    budget: MemoryBudget,
    wait: Duration,
    /// Peak memory of the component's last instance: what the next one is
    /// likely to need.
    typical_bytes: AtomicUsize,
}

/// A slot under a component's cap, held for the whole invocation.
pub struct Slot {
    /// Where it goes back when dropped; `None` once it is counted free.
    slots: Option<Arc<Slots>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            let slot = Slot {
                slots: Some(slots.clone()),
            };
            slots.release(slot);
        }
    }
}

impl Gate {
    pub fn new(
        component: &str,
        cap: u32,
        memory_limit: usize,
        budget: MemoryBudget,
        wait: Duration,
    ) -> Self {
        Gate {
            component: component.into(),
            slots: Slots::new(cap),
            cap,
            memory_limit,
            budget,
            wait,
            typical_bytes: AtomicUsize::new(0),
        }
    }

    pub fn memory_limit_mb(&self) -> u64 {
        self.memory_limit as u64 / MIB
    }

    pub fn budget_mb(&self) -> u64 {
        self.budget.total_mb()
    }

    /// Waits for a slot under the cap (in turn with the other routes'
    /// waiters; `lane` names the route) and for the memory the component
    /// typically needs, up to the queue timeout in all.
    pub async fn admit(&self, lane: &str) -> Result<Slot, Overloaded> {
        let started = Instant::now();
        let slot = self
            .slots
            .acquire(lane, self.wait)
            .await
            .ok_or_else(|| Overloaded::Busy {
                component: self.component.to_string(),
                cap: self.cap,
                waited: started.elapsed(),
            })?;
        let typical = self.typical_bytes.load(Ordering::Relaxed);
        let left = self.wait.saturating_sub(started.elapsed());
        if typical > 0 && !self.budget.wait_for(typical, left).await {
            return Err(Overloaded::Memory {
                budget_mb: self.budget.total_mb(),
                waited: started.elapsed(),
            });
        }
        Ok(slot)
    }

    /// The per-instance accounting for one new store.
    pub fn charges(self: &Arc<Self>) -> Charges {
        Charges {
            gate: self.clone(),
            used: 0,
            held: None,
            held_pages: 0,
        }
    }
}

/// What one instance has charged to the budget; handed back on drop.
pub struct Charges {
    gate: Arc<Gate>,
    used: usize,
    held: Option<OwnedSemaphorePermit>,
    held_pages: usize,
}

/// Why a memory may not grow.
pub enum Refusal {
    /// Beyond the component's per-instance cap.
    InstanceLimit,
    /// The host-wide budget stayed full.
    Budget,
}

impl Charges {
    /// Accounts for a memory growing from `current` to `desired` bytes
    /// (a new memory grows from 0), waiting up to the queue timeout for
    /// budget; on `Err` the growth must be refused.
    pub async fn grow(&mut self, current: usize, desired: usize) -> Result<(), Refusal> {
        let grown = self.used - current.min(self.used) + desired;
        if grown > self.gate.memory_limit {
            return Err(Refusal::InstanceLimit);
        }
        let pages = grown.div_ceil(PAGE);
        if pages > self.held_pages {
            let permit = self
                .gate
                .budget
                .charge(pages - self.held_pages, self.gate.wait)
                .await
                .ok_or(Refusal::Budget)?;
            match &mut self.held {
                Some(held) => held.merge(permit),
                None => self.held = Some(permit),
            }
            self.held_pages = pages;
        }
        self.used = grown;
        Ok(())
    }
}

impl Drop for Charges {
    fn drop(&mut self) {
        self.gate.typical_bytes.store(self.used, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(cap: u32, limit_mb: u64, budget_mb: u64) -> Arc<Gate> {
        Arc::new(Gate::new(
            "c",
            cap,
            (limit_mb * MIB) as usize,
            MemoryBudget::new(budget_mb),
            Duration::from_millis(50),
        ))
    }

    #[tokio::test]
    async fn a_component_at_its_cap_turns_the_next_request_away() {
        let g = gate(2, 16, 64);
        let a = g.admit("/").await.ok();
        let b = g.admit("/").await.ok();
        assert!(a.is_some() && b.is_some());
        let refused = g.admit("/").await.err();
        assert!(matches!(refused, Some(Overloaded::Busy { cap: 2, .. })));
        drop(a);
        assert!(g.admit("/").await.is_ok(), "a freed slot admits again");
    }

    #[tokio::test]
    async fn freed_slots_go_to_the_lanes_in_turn() {
        let g = Arc::new(Gate::new(
            "c",
            1,
            (16 * MIB) as usize,
            MemoryBudget::new(64),
            Duration::from_secs(5),
        ));
        let held = g.admit("/login").await.ok();
        assert!(held.is_some());
        // Three logins queue first, then one token check.
        let mut waiting = Vec::new();
        for lane in ["/login", "/login", "/login", "/validate"] {
            let g = g.clone();
            waiting.push((lane, tokio::spawn(async move { g.admit(lane).await.ok() })));
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(held);
        // The first freed slot goes to the first login, the next one to the
        // token check, ahead of the other two logins.
        let (first, first_slot) = waiting.remove(0);
        let first_slot = first_slot.await.unwrap();
        assert!(first_slot.is_some(), "{first}");
        drop(first_slot);
        let (lane, validate) = waiting.remove(2);
        assert_eq!(lane, "/validate");
        let validate = tokio::time::timeout(Duration::from_secs(1), validate)
            .await
            .expect("the token check is served next")
            .unwrap();
        assert!(validate.is_some());
        for (_, w) in waiting {
            w.abort();
        }
    }

    #[tokio::test]
    async fn slots_of_requests_that_give_up_are_not_lost() {
        let g = Arc::new(Gate::new(
            "c",
            2,
            (16 * MIB) as usize,
            MemoryBudget::new(64),
            Duration::from_secs(5),
        ));
        for _ in 0..50 {
            let a = g.admit("/a").await.ok();
            let b = g.admit("/b").await.ok();
            let waiters: Vec<_> = (0..4)
                .map(|i| {
                    let g = g.clone();
                    tokio::spawn(async move { g.admit(if i % 2 == 0 { "/a" } else { "/b" }).await })
                })
                .collect();
            tokio::task::yield_now().await;
            // Clients hang up while slots are being handed to them.
            drop(a);
            for w in &waiters {
                w.abort();
            }
            drop(b);
            for w in waiters {
                let _ = w.await;
            }
        }
        let a = g.admit("/a").await;
        let b = g.admit("/b").await;
        assert!(a.is_ok() && b.is_ok(), "both slots are still there");
    }

    #[tokio::test]
    async fn instances_together_stay_within_the_budget() {
        let g = gate(10, 48, 64);
        let budget = g.budget.clone();
        let mut first = g.charges();
        assert!(first.grow(0, 40 * MIB as usize).await.is_ok());
        let mut second = g.charges();
        assert!(matches!(
            second.grow(0, 40 * MIB as usize).await,
            Err(Refusal::Budget)
        ));
        assert!(second.grow(0, 20 * MIB as usize).await.is_ok());
        assert_eq!(budget.in_use_bytes(), 60 * MIB as usize);
        drop(first);
        assert_eq!(budget.in_use_bytes(), 20 * MIB as usize);
        assert!(matches!(
            g.charges().grow(0, 49 * MIB as usize).await,
            Err(Refusal::InstanceLimit)
        ));
    }

    #[tokio::test]
    async fn admission_waits_for_the_memory_the_last_instance_needed() {
        let g = gate(10, 48, 64);
        {
            let mut c = g.charges();
            assert!(c.grow(0, 40 * MIB as usize).await.is_ok());
        }
        let mut holder = g.charges();
        assert!(holder.grow(0, 40 * MIB as usize).await.is_ok());
        assert!(matches!(
            g.admit("/").await.err(),
            Some(Overloaded::Memory { budget_mb: 64, .. })
        ));
        drop(holder);
        assert!(g.admit("/").await.is_ok());
    }
}
