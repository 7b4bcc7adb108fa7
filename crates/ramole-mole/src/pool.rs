//! The loaded adapters, by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ramole_models::llama::LlamaConfig;

use crate::{LoraAdapter, MoleError};

/// Adapters loaded for one base model. Adding or removing one never touches the others; a failed
/// load leaves the pool as it was.
#[derive(Debug, Clone)]
pub struct AdapterPool {
    base: LlamaConfig,
    adapters: BTreeMap<String, Arc<LoraAdapter>>,
}

/// The outcome of [`AdapterPool::load_dir`]: which sub-folders loaded and which failed, and why.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Names of the adapters added.
    pub loaded: Vec<String>,
    /// Sub-folders that could not be loaded, with the error.
    pub failed: Vec<(PathBuf, MoleError)>,
}

impl AdapterPool {
    /// An empty pool for a base model.
    pub fn new(base: LlamaConfig) -> Self {
        Self { base, adapters: BTreeMap::new() }
    }

    /// Loads the adapter in `dir` under `name`. Refuses a name already in the pool.
    pub fn add(&mut self, name: &str, dir: impl AsRef<Path>) -> Result<(), MoleError> {
        if self.adapters.contains_key(name) {
            return Err(MoleError::Duplicate(name.into()));
        }
        let adapter = LoraAdapter::load(name, dir, &self.base)?;
        self.adapters.insert(name.into(), Arc::new(adapter));
        Ok(())
    }

    /// Loads every sub-folder of `dir` as an adapter named by the folder's name. A sub-folder that
    /// fails to load is reported and skipped; the others are loaded.
    pub fn load_dir(&mut self, dir: impl AsRef<Path>) -> Result<LoadReport, MoleError> {
        let dir = dir.as_ref();
        let io = |source| MoleError::Io { path: dir.into(), source };
        let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        subdirs.sort();
        let mut report = LoadReport::default();
        for sub in subdirs {
            let Some(name) = sub.file_name().and_then(|n| n.to_str()).map(String::from) else { continue };
            match self.add(&name, &sub) {
                Ok(()) => report.loaded.push(name),
                Err(e) => report.failed.push((sub, e)),
            }
        }
        Ok(report)
    }

    /// Removes an adapter; returns it if it was there.
    pub fn remove(&mut self, name: &str) -> Option<Arc<LoraAdapter>> {
        self.adapters.remove(name)
    }

    /// The adapter `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<LoraAdapter>> {
        self.adapters.get(name)
    }

    /// Adapter names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.adapters.keys().map(String::as_str)
    }

    /// Number of adapters.
    pub fn len(&self) -> usize {
        self.adapters.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.adapters.is_empty()
    }

    /// The base model's configuration.
    pub fn base(&self) -> &LlamaConfig {
        &self.base
    }
}
