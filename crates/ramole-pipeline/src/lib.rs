#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod residency;
pub mod routing;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::backend::Backend;
use ramole_batch::{BatchError, Engine, Request, RequestInput, RunOptions, Sampling};
use ramole_mole::LoraAdapter;
use ramole_retriever::{LoraPool, RetrieverError, SentenceEncoder};

use residency::Residency;
pub use residency::ResidencyStats;
pub use routing::{RouteConfig, RoutedLora, Routing, Strategy, Weighting};

/// Errors of the pipeline. Each names the input or pool entry at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// A routing or run configuration that cannot work.
    #[error("{0}")]
    Config(String),
    /// An input file or input that cannot be used.
    #[error("{0}")]
    Input(String),
    /// A pool with no LoRA that can be served.
    #[error("the pool in {dir} has no LoRA with a loadable adapter{hint}")]
    EmptyPool {
        /// The pool folder.
        dir: PathBuf,
        /// What was skipped, if anything.
        hint: String,
    },
    /// The retriever failed (encoder, index).
    #[error(transparent)]
    Retriever(#[from] RetrieverError),
    /// The batch engine failed for an input.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// A LoRA whose adapter failed to load when a request needed it: it is quarantined (no longer routed
    /// to or served) until it is registered again.
    #[error("LoRA `{lora}` is quarantined: {reason}")]
    Quarantined {
        /// The LoRA.
        lora: String,
        /// Why its adapter did not load.
        reason: String,
    },
}

/// A pool entry that cannot be served, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unservable {
    /// The entry's name.
    pub lora: String,
    /// Why (no adapter, adapter folder missing or invalid).
    pub reason: String,
}

/// One input to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The text (fed to the model as is, and to the retriever after the pool's instruction).
    pub input: String,
    /// Most tokens to generate (generation also stops at end-of-sequence).
    pub max_new_tokens: usize,
}

impl Job {
    /// Reads inputs from JSONL: each non-blank line a JSON string, or an object with a string
    /// `input` and optionally `max_new_tokens` (default `default_max_new_tokens`). A leading
    /// byte-order mark is dropped; a bad line is an error naming the file and line.
    pub fn read_jsonl(path: &std::path::Path, default_max_new_tokens: usize) -> Result<Vec<Self>, PipelineError> {
        let text = ramole_core::fs::read_text(path, ramole_core::fs::MAX_TEXT_BYTES)
            .map_err(|e| PipelineError::Input(format!("{}: {e}", path.display())))?;
        let mut jobs = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let bad = |m: &str| PipelineError::Input(format!("{}: line {}: {m}", path.display(), i + 1));
            let value: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
            let job = match value {
                serde_json::Value::String(input) => Job { input, max_new_tokens: default_max_new_tokens },
                serde_json::Value::Object(o) => {
                    let input = o.get("input").and_then(|v| v.as_str()).ok_or_else(|| bad("no string `input`"))?;
                    let max_new_tokens = match o.get("max_new_tokens") {
                        None => default_max_new_tokens,
                        Some(v) => v
                            .as_u64()
                            .and_then(|n| usize::try_from(n).ok())
                            .ok_or_else(|| bad("`max_new_tokens` must be a non-negative integer"))?,
                    };
                    Job { input: input.to_string(), max_new_tokens }
                }
                _ => return Err(bad("neither a JSON string nor an object with `input`")),
            };
            if job.input.is_empty() {
                return Err(bad("empty input"));
            }
            jobs.push(job);
        }
        if jobs.is_empty() {
            return Err(PipelineError::Input(format!("{}: no input", path.display())));
        }
        Ok(jobs)
    }
}

/// What an input produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The generated text (end-of-sequence token removed).
    pub output: String,
    /// Generated tokens, end-of-sequence included if produced.
    pub new_tokens: Vec<u32>,
    /// The routing it was served with.
    pub routing: Routing,
}

/// The assembled pipeline: a base model with the pool's adapters loaded, the retriever's encoder,
/// and the pool.
#[derive(Debug)]
pub struct Ramole<B: Backend> {
    engine: Engine<B>,
    encoder: SentenceEncoder<B>,
    pool: LoraPool,
    servable: HashSet<String>,
    /// LoRAs of the pool whose adapter failed to load when needed, with why: never routed to or served.
    quarantined: std::collections::BTreeMap<String, String>,
    residency: Residency,
}

impl<B: Backend> Ramole<B> {
    /// Loads the adapter of every pool entry into `engine` under the entry's name. Entries without
    /// an adapter, or whose adapter folder is missing or invalid, are returned as [`Unservable`] and
    /// are never routed to; the others are served. A pool with nothing to serve is an error, and so
    /// is an encoder whose embeddings do not have the pool's dimension, or that is not the encoder
    /// the pool records ([`LoraPool::check_encoder`]).
    pub fn new(
        mut engine: Engine<B>,
        encoder: SentenceEncoder<B>,
        pool: LoraPool,
    ) -> Result<(Self, Vec<Unservable>), PipelineError> {
        if !pool.is_empty() && encoder.dim() != pool.index().dim() {
            return Err(PipelineError::Config(format!(
                "the encoder makes {}-dim embeddings, the pool in {} holds {}-dim ones",
                encoder.dim(),
                pool.dir().display(),
                pool.index().dim()
            )));
        }
        pool.check_encoder(&encoder)?;
        let mut servable = HashSet::new();
        let mut skipped = Vec::new();
        for entry in pool.entries() {
            let Some(dir) = pool.adapter_dir(entry) else {
                skipped.push(Unservable { lora: entry.name.clone(), reason: "has no adapter (samples only)".into() });
                continue;
            };
            if engine.adapters().get(&entry.name).is_some() {
                servable.insert(entry.name.clone());
                continue;
            }
            match engine.adapters_mut().add(&entry.name, &dir) {
                Ok(()) => {
                    servable.insert(entry.name.clone());
                }
                Err(e) => skipped.push(Unservable { lora: entry.name.clone(), reason: e.to_string() }),
            }
        }
        if servable.is_empty() {
            let hint = match skipped.first() {
                Some(s) => format!(" (`{}` {}{})", s.lora, s.reason, if skipped.len() > 1 { ", …" } else { "" }),
                None => " (it is empty)".into(),
            };
            return Err(PipelineError::EmptyPool { dir: pool.dir().to_path_buf(), hint });
        }
        Ok((
            Self {
                engine,
                encoder,
                pool,
                servable,
                quarantined: std::collections::BTreeMap::new(),
                residency: Residency::default(),
            },
            skipped,
        ))
    }

    /// The engine.
    pub fn engine(&self) -> &Engine<B> {
        &self.engine
    }

    /// The engine, to change its gate or run requests of its own (adapters come and go through
    /// [`Self::add_lora`], [`Self::remove_lora`] and [`Self::make_resident`]).
    pub fn engine_mut(&mut self) -> &mut Engine<B> {
        &mut self.engine
    }

    /// Registers a LoRA while serving. Its adapter (in `adapter_dir`) is loaded and checked against
    /// the base model first, then its samples are embedded and its entry written to the on-disk pool
    /// (atomically, [`LoraPool::add`]); only then is it loaded and routed to. On error nothing
    /// changed: not the pool on disk, not the index, not the engine.
    pub fn add_lora(&mut self, name: &str, adapter_dir: &Path, samples: &[String]) -> Result<(), PipelineError> {
        self.register(name, adapter_dir, samples, None)
    }

    /// [`Self::add_lora`] with the samples' embedding already computed (by
    /// [`ramole_retriever::pool::mean_embedding`] with this pipeline's encoder and the pool's instruction,
    /// on another thread: embedding thousands of samples takes a minute, which the engine's thread must not
    /// wait for). A pool that has recorded no encoder yet embeds the samples here, to record it.
    pub fn add_lora_embedded(
        &mut self,
        name: &str,
        adapter_dir: &Path,
        samples: &[String],
        embedding: Vec<f32>,
    ) -> Result<(), PipelineError> {
        self.register(name, adapter_dir, samples, Some(embedding))
    }

    fn register(
        &mut self,
        name: &str,
        adapter_dir: &Path,
        samples: &[String],
        embedding: Option<Vec<f32>>,
    ) -> Result<(), PipelineError> {
        ramole_retriever::pool::validate_name(name)?;
        if self.pool.get(name).is_some() {
            return Err(PipelineError::Retriever(RetrieverError::DuplicateName {
                pool: self.pool.dir().to_path_buf(),
                name: name.into(),
            }));
        }
        let adapter = LoraAdapter::load(name, adapter_dir, self.engine.adapters().base()).map_err(BatchError::from)?;
        match embedding {
            Some(embedding) if self.pool.encoder_identity().is_some() => {
                self.pool.check_encoder(&self.encoder)?;
                self.pool.add_embedding(ramole_retriever::PoolEntry {
                    name: name.into(),
                    embedding,
                    n_samples: samples.len(),
                    adapter: Some(adapter_dir.to_path_buf()),
                    instruction: self.pool.instruction().to_owned(),
                    samples: samples.to_vec(),
                })?;
            }
            _ => self.pool.add(name, Some(adapter_dir), samples, &self.encoder)?,
        }
        // A stale adapter of that name (loaded before a removal) gives way to the new one.
        self.engine.adapters_mut().remove(name);
        self.engine.adapters_mut().insert(Arc::new(adapter)).map_err(BatchError::from)?;
        self.servable.insert(name.into());
        self.quarantined.remove(name);
        self.residency.touch(name);
        self.residency.evict(&mut self.engine, &[name]);
        Ok(())
    }

    /// Removes a LoRA: its pool entry is deleted on disk (the adapter folder stays), it is no longer
    /// routed to and it is unloaded. Rows already running hold its tensors until they finish.
    pub fn remove_lora(&mut self, name: &str) -> Result<(), PipelineError> {
        self.pool.remove(name)?;
        self.engine.adapters_mut().remove(name);
        self.servable.remove(name);
        self.quarantined.remove(name);
        self.residency.forget(name);
        Ok(())
    }

    /// Keeps at most `max` adapters loaded (`None`: all of them), unloading the least recently used
    /// ones that no row holds; the others load from their pool folder when a request needs them
    /// ([`Self::make_resident`]).
    pub fn set_max_resident(&mut self, max: Option<usize>) {
        self.residency.max = max;
        self.residency.evict(&mut self.engine, &[]);
    }

    /// Loads the servable LoRAs of `names` that are not loaded (from their pool folders), marks them
    /// all as just used, and unloads the least recently used others beyond the residency limit.
    /// Counts hits (loaded already) and misses (loaded now).
    ///
    /// A LoRA whose adapter no longer loads (its files changed or vanished since it was registered) is
    /// quarantined: [`PipelineError::Quarantined`], and from then on it is neither retrieved nor served,
    /// so routed traffic routes around it instead of failing on it again and again.
    pub fn make_resident(&mut self, names: &[&str]) -> Result<(), PipelineError> {
        for &name in names {
            if let Some(reason) = self.quarantined.get(name) {
                return Err(PipelineError::Quarantined { lora: name.into(), reason: reason.clone() });
            }
            if self.engine.adapters().get(name).is_some() {
                self.residency.stats.hits += 1;
            } else if self.servable.contains(name) {
                let entry = self.pool.get(name).ok_or_else(|| PipelineError::Input(format!("no LoRA `{name}`")))?;
                let loaded = match self.pool.adapter_dir(entry) {
                    Some(dir) => self.engine.adapters_mut().add(name, &dir).map_err(|e| e.to_string()),
                    None => Err("it has no adapter folder in the pool".into()),
                };
                if let Err(reason) = loaded {
                    self.servable.remove(name);
                    self.quarantined.insert(name.into(), reason.clone());
                    return Err(PipelineError::Quarantined { lora: name.into(), reason });
                }
                self.residency.stats.misses += 1;
            }
            self.residency.touch(name);
        }
        self.residency.evict(&mut self.engine, names);
        Ok(())
    }

    /// Adapter cache hits and misses of [`Self::make_resident`] so far, and adapters loaded now.
    pub fn residency(&self) -> ResidencyStats {
        ResidencyStats { resident: self.engine.adapters().len(), ..self.residency.stats }
    }

    /// The pool.
    pub fn pool(&self) -> &LoraPool {
        &self.pool
    }

    /// The encoder.
    pub fn encoder(&self) -> &SentenceEncoder<B> {
        &self.encoder
    }

    /// Takes in the changes another process made to the pool's folder ([`LoraPool::refresh`]): a LoRA that
    /// appeared with an adapter becomes servable (its adapter loads when a request needs it, and is
    /// quarantined then if it does not), one that disappeared is no longer served. Returns whether anything
    /// changed.
    pub fn refresh_pool(&mut self) -> Result<bool, PipelineError> {
        let (added, removed) = self.pool.refresh()?;
        for name in &removed {
            self.engine.adapters_mut().remove(name);
            self.servable.remove(name);
            self.quarantined.remove(name);
            self.residency.forget(name);
        }
        for name in &added {
            if self.pool.get(name).is_some_and(|e| e.adapter.is_some()) {
                self.servable.insert(name.clone());
            }
        }
        Ok(!added.is_empty() || !removed.is_empty())
    }

    /// The quarantined LoRAs (see [`Self::make_resident`]) with why, by name.
    pub fn quarantined(&self) -> impl Iterator<Item = (&str, &str)> {
        self.quarantined.iter().map(|(n, r)| (n.as_str(), r.as_str()))
    }

    /// Whether the LoRA `name` can be served (it is in the pool and its adapter loads).
    pub fn is_servable(&self, name: &str) -> bool {
        self.servable.contains(name)
    }

    /// Names of the LoRAs that can be served, sorted.
    pub fn servable(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.servable.iter().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// The top-`k` servable LoRAs of each input by cosine, best first; `exclude[i]` (if given) is
    /// left out for input `i` (the OOD setting: the input's own LoRA removed from the pool).
    pub fn retrieve(
        &self,
        inputs: &[String],
        k: usize,
        exclude: &[Option<&str>],
    ) -> Result<Vec<Vec<(String, f32)>>, PipelineError> {
        if k == 0 {
            return Err(PipelineError::Config("top-k must be at least 1".into()));
        }
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let instruction = self.pool.instruction();
        let texts: Vec<String> = inputs.iter().map(|t| format!("{instruction}{t}")).collect();
        let embeddings = self.encoder.embed(&texts, 32)?;
        // Ask for enough to fill k after dropping what cannot be served or is excluded.
        let extra = self.pool.len() - self.servable.len() + 1;
        let hits = self.pool.index().search(&embeddings, k + extra)?;
        Ok(hits
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                let skip = exclude.get(i).copied().flatten();
                h.into_iter()
                    .filter(|(name, _)| self.servable.contains(name) && Some(name.as_str()) != skip)
                    .take(k)
                    .collect()
            })
            .collect())
    }

    /// Routes each input by `cfg` (no retrieval for [`Strategy::Base`]).
    pub fn route(
        &self,
        inputs: &[String],
        cfg: &RouteConfig,
        exclude: &[Option<&str>],
    ) -> Result<Vec<Routing>, PipelineError> {
        cfg.validate()?;
        if cfg.strategy == Strategy::Base {
            return Ok(inputs.iter().map(|_| Routing::from_hits(&[], cfg)).collect());
        }
        Ok(self.retrieve(inputs, cfg.top_k, exclude)?.iter().map(|h| Routing::from_hits(h, cfg)).collect())
    }

    /// Generates the answer of each job with its routing (greedy), `batch_size` jobs per
    /// heterogeneous batch. A job that fails gets its own error; the others are answered.
    pub fn generate(
        &self,
        jobs: &[Job],
        routings: &[Routing],
        batch_size: usize,
    ) -> Vec<Result<Answer, PipelineError>> {
        let mut out = Vec::with_capacity(jobs.len());
        if jobs.len() != routings.len() || batch_size == 0 {
            let msg = format!("{} jobs, {} routings, batch size {batch_size}", jobs.len(), routings.len());
            return jobs.iter().map(|_| Err(PipelineError::Config(msg.clone()))).collect();
        }
        let eos = self.engine.config().eos_token_ids.clone();
        for (chunk, (jobs, routings)) in jobs.chunks(batch_size).zip(routings.chunks(batch_size)).enumerate() {
            let requests: Vec<Request> = jobs
                .iter()
                .zip(routings)
                .enumerate()
                .map(|(i, (job, routing))| Request {
                    name: format!("input {}", chunk * batch_size + i + 1),
                    input: RequestInput::Prompt(job.input.clone()),
                    row: routing.row_request(),
                    max_new_tokens: job.max_new_tokens,
                    sampling: Sampling::Greedy,
                })
                .collect();
            for (result, routing) in self.engine.run(&requests, RunOptions::default()).into_iter().zip(routings) {
                out.push(result.map_err(PipelineError::from).and_then(|o| {
                    let text: Vec<u32> = o.new_tokens.iter().copied().filter(|t| !eos.contains(t)).collect();
                    Ok(Answer {
                        output: self.engine.decode(&text)?,
                        new_tokens: o.new_tokens,
                        routing: routing.clone(),
                    })
                }));
            }
        }
        out
    }

    /// Routes and answers every job ([`Ramole::route`] then [`Ramole::generate`]).
    pub fn run(
        &self,
        jobs: &[Job],
        cfg: &RouteConfig,
        batch_size: usize,
    ) -> Result<Vec<Result<Answer, PipelineError>>, PipelineError> {
        let inputs: Vec<String> = jobs.iter().map(|j| j.input.clone()).collect();
        let routings = self.route(&inputs, cfg, &[])?;
        Ok(self.generate(jobs, &routings, batch_size))
    }
}
