//! The LoRA zoo: one LoRA per task of the suite, trained with one documented configuration and
//! registered in a pool under the task's name with the task's sample inputs.
//!
//! Layout under the zoo's root:
//!
//! ```text
//! pool/entries/<task>.json                 the pool entry (embedding of the task's samples)
//! pool/adapters/<task>/adapter_config.json the PEFT adapter (f16 factors by default)
//! pool/adapters/<task>/adapter_model.safetensors
//! pool/adapters/<task>/ramole_training.json how it was trained: configuration, data digest, report
//! ```
//!
//! Adapters live inside the pool folder, so the pool stores their paths relative to itself and the
//! whole folder can be moved or shipped. Building is resumable: a task whose adapter was trained
//! with the same configuration on the same data (sha256 of its `train.jsonl`) is not trained again,
//! and an entry whose samples and adapter are already in the pool is kept.

use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use ramole_models::CausalLm;
use ramole_mole::peft::AdapterDtype;
use ramole_mole::train::{self, LoraTrainConfig, LoraTrainReport, StepReport};
use ramole_retriever::{LoraPool, SentenceEncoder};
use serde::{Deserialize, Serialize};

use crate::ResearchError;
use crate::tasks::{Split, Suite};

/// The file beside each adapter that records how it was trained.
pub const TRAINING_FILE: &str = "ramole_training.json";
const TRAINING_FORMAT: &str = "ramole-training/1";

/// How the zoo is built.
#[derive(Debug, Clone, PartialEq)]
pub struct ZooConfig {
    /// The training configuration of every LoRA (default: [`LoraTrainConfig::default`], the peer
    /// measurement's configuration).
    pub train: LoraTrainConfig,
    /// Precision of the saved factors (default f16: about 1 MB per LoRA at r = 8 on q and v).
    pub dtype: AdapterDtype,
    /// The tasks to build (default: every task of the suite).
    pub tasks: Option<Vec<String>>,
    /// The base model's name recorded in each adapter (`base_model_name_or_path`, e.g. the Hub id of
    /// the default model); default: the model's path.
    pub base_name: Option<String>,
}

impl Default for ZooConfig {
    fn default() -> Self {
        Self { train: LoraTrainConfig::default(), dtype: AdapterDtype::F16, tasks: None, base_name: None }
    }
}

/// What [`TRAINING_FILE`] holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    /// Its format tag.
    pub format: String,
    /// The base model, as given.
    pub base_model: String,
    /// The training data file.
    pub data: PathBuf,
    /// The sha256 of the training data file.
    pub data_sha256: String,
    /// The training report (configuration included).
    pub report: LoraTrainReport,
}

impl TrainingRecord {
    /// Reads the record beside an adapter, if there is a valid one.
    pub fn read(adapter_dir: &Path) -> Option<Self> {
        let path = adapter_dir.join(TRAINING_FILE);
        let text = ramole_core::fs::read_text(&path, ramole_core::fs::MAX_TEXT_BYTES).ok()?;
        serde_json::from_str::<Self>(&text).ok().filter(|r| r.format == TRAINING_FORMAT)
    }
}

/// Progress of a zoo build.
#[derive(Debug, Clone)]
pub enum ZooEvent<'a> {
    /// A task starts (1-based index of `total`).
    Task {
        /// The task.
        name: &'a str,
        /// Its position.
        index: usize,
        /// Tasks in this build.
        total: usize,
        /// Optimisation steps it will take (0 when it is up to date).
        steps: usize,
    },
    /// A training step of the current task.
    Step(&'a StepReport),
    /// The current task is done: trained (with its report) or already up to date.
    Done {
        /// The task.
        name: &'a str,
        /// The report when it was trained now.
        trained: Option<&'a LoraTrainReport>,
    },
}

/// What a build did, per task.
#[derive(Debug, Clone, PartialEq)]
pub struct ZooReport {
    /// Tasks trained in this build, with their reports.
    pub trained: Vec<(String, LoraTrainReport)>,
    /// Tasks whose adapter was already up to date.
    pub up_to_date: Vec<String>,
    /// The pool folder.
    pub pool: PathBuf,
}

/// The pool folder of a zoo rooted at `root`.
pub fn pool_dir(root: &Path) -> PathBuf {
    root.join("pool")
}

/// The adapter folder of `task` in a zoo rooted at `root`.
pub fn adapter_dir(root: &Path, task: &str) -> PathBuf {
    pool_dir(root).join("adapters").join(task)
}

/// Builds (or completes) the zoo rooted at `root` for `suite` on the base model at `model`
/// (loaded on `Autodiff<B>` for training), embedding each task's samples with `encoder`.
pub fn build_zoo<B: Backend>(
    suite: &Suite,
    model: &Path,
    root: &Path,
    cfg: &ZooConfig,
    encoder: &SentenceEncoder<B>,
    device: &B::Device,
    on_event: &mut dyn FnMut(ZooEvent<'_>),
) -> Result<ZooReport, ResearchError> {
    cfg.train.validate()?;
    let tasks: Vec<String> = match &cfg.tasks {
        Some(t) => {
            for name in t {
                suite.task(name)?;
            }
            t.clone()
        }
        None => suite.meta().tasks.iter().map(|t| t.name.clone()).collect(),
    };
    let base_model = cfg.base_name.clone().unwrap_or_else(|| model.display().to_string());
    let pool_path = pool_dir(root);
    let (mut pool, _skipped) = LoraPool::create(&pool_path)?;
    // Refused before hours of training rather than at the first registration.
    pool.check_encoder(encoder)?;
    let mut lm: Option<CausalLm<Autodiff<B>>> = None;
    let mut report = ZooReport { trained: Vec::new(), up_to_date: Vec::new(), pool: pool_path.clone() };
    for (i, task) in tasks.iter().enumerate() {
        let data_path = suite.dir().join(task).join(Split::Train.file_name());
        let data = train::read_train_jsonl(&data_path)?;
        let dir = adapter_dir(root, task);
        let current = TrainingRecord::read(&dir).is_some_and(|r| {
            r.report.config == cfg.train && r.data_sha256 == data.sha256 && r.base_model == base_model
        }) && dir.join("adapter_model.safetensors").is_file();
        let steps = if current { 0 } else { cfg.train.total_steps(data.records.len()) };
        on_event(ZooEvent::Task { name: task, index: i + 1, total: tasks.len(), steps });
        let mut trained = None;
        if !current {
            let lm = match &mut lm {
                Some(lm) => lm,
                None => lm.insert(CausalLm::load(model, device)?),
            };
            let fresh =
                CausalLm { model: lm.model.clone(), config: lm.config.clone(), tokenizer: lm.tokenizer.clone() };
            let (lora, train_report) = train::train_on_records(fresh, &data.records, &cfg.train, device, &mut |s| {
                on_event(ZooEvent::Step(s));
            })?;
            let record = TrainingRecord {
                format: TRAINING_FORMAT.into(),
                base_model: base_model.clone(),
                data: data_path.clone(),
                data_sha256: data.sha256.clone(),
                report: train_report.clone(),
            };
            let json = serde_json::to_vec_pretty(&record).map_err(|e| ResearchError::Format(e.to_string()))?;
            lora.save(&dir, &cfg.train, &base_model, cfg.dtype, &[(TRAINING_FILE, json)], true)?;
            // The old entry (if any) points at the replaced adapter: embed again below.
            if pool.get(task).is_some() {
                pool.remove(task)?;
            }
            trained = Some(train_report);
        }
        let samples: Vec<String> = suite.examples(task, Split::Samples)?.into_iter().map(|e| e.input).collect();
        let entry_ok = pool.get(task).is_some_and(|e| e.samples == samples && e.adapter.is_some());
        if !entry_ok {
            if pool.get(task).is_some() {
                pool.remove(task)?;
            }
            pool.add(task, Some(&dir), &samples, encoder)?;
        }
        on_event(ZooEvent::Done { name: task, trained: trained.as_ref() });
        match trained {
            Some(r) => report.trained.push((task.clone(), r)),
            None => report.up_to_date.push(task.clone()),
        }
    }
    Ok(report)
}
