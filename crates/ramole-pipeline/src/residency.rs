//! Which adapters stay loaded when the pool is larger than memory should hold: least recently used
//! out first, never one that a queued or running row holds.

use std::collections::HashMap;

use burn::tensor::backend::Backend;
use ramole_batch::Engine;

/// Adapter cache figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResidencyStats {
    /// Requests for an adapter that was loaded.
    pub hits: u64,
    /// Requests for an adapter that had to be loaded from disk.
    pub misses: u64,
    /// Adapters loaded now.
    pub resident: usize,
}

/// The least-recently-used bookkeeping of an engine's loaded adapters.
#[derive(Debug, Default)]
pub(crate) struct Residency {
    /// Most adapters kept loaded (`None`: no limit).
    pub(crate) max: Option<usize>,
    pub(crate) stats: ResidencyStats,
    tick: u64,
    last_used: HashMap<String, u64>,
}

impl Residency {
    pub(crate) fn touch(&mut self, name: &str) {
        self.tick += 1;
        self.last_used.insert(name.to_string(), self.tick);
    }

    pub(crate) fn forget(&mut self, name: &str) {
        self.last_used.remove(name);
    }

    /// Unloads least recently used adapters until at most `max` are loaded, skipping `keep` and any
    /// adapter that something besides the engine holds (a queued or running row).
    pub(crate) fn evict<B: Backend>(&mut self, engine: &mut Engine<B>, keep: &[&str]) {
        let Some(max) = self.max else { return };
        let pool = engine.adapters();
        if pool.len() <= max {
            return;
        }
        let mut candidates: Vec<(u64, String)> = pool
            .names()
            .filter(|n| !keep.contains(n))
            .filter(|n| pool.get(n).is_some_and(|a| std::sync::Arc::strong_count(a) == 1))
            .map(|n| (self.last_used.get(n).copied().unwrap_or(0), n.to_string()))
            .collect();
        candidates.sort();
        let excess = pool.len() - max;
        for (_, name) in candidates.into_iter().take(excess) {
            engine.adapters_mut().remove(&name);
        }
    }
}
