//! The loaded adapters, by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ramole_models::llama::LlamaConfig;

use crate::{LoraAdapter, MoleError};

/// Adapters loaded for one base model. Adding or removing one never touches the others; a failed
/// load leaves the loaded adapters as they were and is remembered (name → why), so that a request
/// naming that adapter is told why it is missing ([`AdapterPool::load_error`]).
#[derive(Debug, Clone)]
pub struct AdapterPool {
    base: LlamaConfig,
    adapters: BTreeMap<String, Arc<LoraAdapter>>,
    failed: BTreeMap<String, String>,
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
        Self { base, adapters: BTreeMap::new(), failed: BTreeMap::new() }
    }

    /// Loads the adapter in `dir` under `name`. Refuses a name already in the pool. A failed load is
    /// remembered under `name` until an adapter of that name loads.
    pub fn add(&mut self, name: &str, dir: impl AsRef<Path>) -> Result<(), MoleError> {
        if self.adapters.contains_key(name) {
            return Err(MoleError::Duplicate(name.into()));
        }
        match LoraAdapter::load(name, dir, &self.base) {
            Ok(adapter) => {
                self.failed.remove(name);
                self.adapters.insert(name.into(), Arc::new(adapter));
                Ok(())
            }
            Err(e) => {
                self.failed.insert(name.into(), e.to_string());
                Err(e)
            }
        }
    }

    /// Adds an adapter loaded (and so validated) by [`LoraAdapter::load`] against this pool's base,
    /// under its own name. Refuses a name already in the pool.
    pub fn insert(&mut self, adapter: Arc<LoraAdapter>) -> Result<(), MoleError> {
        let name = adapter.name().to_string();
        if self.adapters.contains_key(&name) {
            return Err(MoleError::Duplicate(name));
        }
        self.failed.remove(&name);
        self.adapters.insert(name, adapter);
        Ok(())
    }

    /// Loads the adapters of `dir`: every sub-folder as an adapter named by the folder's name, or,
    /// when `dir` itself holds an `adapter_config.json`, `dir` as ONE adapter named by its folder. A
    /// sub-folder that fails to load is reported (and remembered, see [`AdapterPool::load_error`])
    /// and skipped; the others are loaded. A folder with no adapter at all (no `adapter_config.json`
    /// and no sub-folder) is an error, [`MoleError::NoAdapters`].
    pub fn load_dir(&mut self, dir: impl AsRef<Path>) -> Result<LoadReport, MoleError> {
        let dir = dir.as_ref();
        let io = |source| MoleError::Io { path: dir.into(), source };
        let mut report = LoadReport::default();
        if dir.join("adapter_config.json").exists() {
            let name = std::fs::canonicalize(dir)
                .map_err(io)?
                .file_name()
                .and_then(|n| n.to_str())
                .map(String::from)
                .ok_or_else(|| MoleError::NoAdapters {
                path: dir.into(),
                message: "an adapter folder without a UTF-8 name to call the adapter by".into(),
            })?;
            match self.add(&name, dir) {
                Ok(()) => report.loaded.push(name),
                Err(e) => report.failed.push((dir.into(), e)),
            }
            return Ok(report);
        }
        let mut subdirs = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.is_dir() {
                subdirs.push(path);
            }
        }
        if subdirs.is_empty() {
            return Err(MoleError::NoAdapters {
                path: dir.into(),
                message: "no adapters here: neither an `adapter_config.json` (one adapter) nor sub-folders \
                          (one adapter each)"
                    .into(),
            });
        }
        subdirs.sort();
        for sub in subdirs {
            let Some(name) = sub.file_name().and_then(|n| n.to_str()).map(String::from) else {
                let e = MoleError::Config { path: sub.clone(), message: "the folder name is not UTF-8".into() };
                report.failed.push((sub, e));
                continue;
            };
            match self.add(&name, &sub) {
                Ok(()) => report.loaded.push(name),
                Err(e) => report.failed.push((sub, e)),
            }
        }
        Ok(report)
    }

    /// Why the adapter `name` failed to load, if its last attempt failed and none of that name is
    /// loaded.
    pub fn load_error(&self, name: &str) -> Option<&str> {
        self.failed.get(name).map(String::as_str)
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
