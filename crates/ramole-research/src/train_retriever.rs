//! Contrastive fine-tuning of the retriever's encoder (InfoNCE with in-batch negatives), as LoraRetriever
//! does to generalise to LoRAs it never saw.
//!
//! # Data
//! Training uses only the suite's tasks that are not [`crate::tasks::TaskMeta::held_out`]. Each epoch
//! draws, per training task, [`TrainConfig::pairs_per_task`] queries from its train split (without
//! replacement, past the sample inputs) and pairs each with one of the task's sample inputs (the texts
//! that stand for its LoRA in the pool), drawn at random. Both sides are embedded as
//! `instruction + input`, truncated to [`TrainConfig::max_seq_len`] tokens (`[CLS]` … `[SEP]`) to bound
//! the cost on a CPU. The pairs are shuffled and cut into batches of [`TrainConfig::batch_size`].
//!
//! # Loss
//! For a batch of `n` query embeddings `q` and positive embeddings `p` (unit vectors), the logits are
//! `q·pᵀ / temperature`; the loss is the mean cross-entropy of each query against its own positive
//! ([`info_nce`]). The other positives of the batch are the negatives, except those that
//! [`TrainConfig::negatives`] masks out: the query's own task's (false negatives) under
//! [`Negatives::OtherTasks`], LoraRetriever's setting; every task of the query's domain under
//! [`Negatives::OtherDomains`], so that training does not push similar tasks apart (see `docs/results.md`
//! for what each measured). Embeddings go through [`mean_pool`], the function the
//! [`SentenceEncoder`] itself uses. The optimiser is Adam.

use std::time::Instant;

use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use ramole_models::bert::BertModel;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde::{Deserialize, Serialize};

use ramole_retriever::encoder::mean_pool;
use ramole_retriever::{DEFAULT_INSTRUCTION, SentenceEncoder};

use crate::ResearchError;
use crate::tasks::{Domain, Split, Suite};

/// Added to the logits of masked negatives (same task or domain): their softmax weight becomes zero.
const MASKED_LOGIT: f32 = -1.0e4;

/// Which in-batch positives serve as negatives of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Negatives {
    /// The positives of every other task (LoraRetriever's setting): tasks of one domain are pushed apart too.
    OtherTasks,
    /// Only the positives of tasks of another domain: tasks of the query's domain are neither positives nor
    /// negatives, so training does not push similar tasks apart (what retrieving a similar LoRA for an
    /// unseen task relies on).
    #[default]
    OtherDomains,
}

impl Negatives {
    /// The key under which two pairs' positives are not each other's negatives.
    fn group(self, task: usize, domain: Domain) -> usize {
        match self {
            Self::OtherTasks => task,
            Self::OtherDomains => domain as usize,
        }
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::OtherTasks => "other-tasks",
            Self::OtherDomains => "other-domains",
        }
    }
}

impl std::fmt::Display for Negatives {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Negatives {
    type Err = ResearchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::OtherTasks, Self::OtherDomains].into_iter().find(|n| n.name() == s).ok_or_else(|| {
            ResearchError::InvalidArgument {
                name: "negatives",
                message: format!("`{s}` is neither `other-tasks` nor `other-domains`"),
            }
        })
    }
}

/// How the retriever is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over freshly drawn pairs.
    pub epochs: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// InfoNCE temperature.
    pub temperature: f64,
    /// Pairs per optimisation step.
    pub batch_size: usize,
    /// Pairs drawn per training task and epoch.
    pub pairs_per_task: usize,
    /// Tokens per text during training, `[CLS]` and `[SEP]` included.
    pub max_seq_len: usize,
    /// Seed of the pair draws and of the batch order.
    pub seed: u64,
    /// Prepended to every text.
    pub instruction: String,
    /// Which in-batch positives are negatives.
    #[serde(default)]
    pub negatives: Negatives,
}

impl Default for TrainConfig {
    /// One epoch of 32 pairs per task, batches of 16, 64 tokens, learning rate 2e-5, temperature 0.05,
    /// [`Negatives::OtherDomains`]: an epoch over the 18 training tasks takes about 1.5 minutes on a 2-core CPU
    /// (release build).
    fn default() -> Self {
        Self {
            epochs: 1,
            lr: 2e-5,
            temperature: 0.05,
            batch_size: 16,
            pairs_per_task: 32,
            max_seq_len: 64,
            seed: 42,
            instruction: DEFAULT_INSTRUCTION.to_owned(),
            negatives: Negatives::default(),
        }
    }
}

impl TrainConfig {
    /// Checks the settings: epochs, pairs per task ≥ 1, batch size ≥ 2 (a batch of one pair has no
    /// negative), max seq len ≥ 2 (`[CLS]` and `[SEP]`), lr and temperature finite and > 0. The first
    /// setting out of range is a [`ResearchError::InvalidArgument`] naming it.
    pub fn validate(&self) -> Result<(), ResearchError> {
        let bad = |name: &'static str, message: String| Err(ResearchError::InvalidArgument { name, message });
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1".into());
        }
        if self.batch_size < 2 {
            return bad("batch size", format!("{} is too small: in-batch negatives need at least 2", self.batch_size));
        }
        if self.pairs_per_task == 0 {
            return bad("pairs per task", "must be at least 1".into());
        }
        if self.max_seq_len < 2 {
            return bad("max seq len", format!("{} cannot hold [CLS] and [SEP]", self.max_seq_len));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", format!("{} is not a finite number > 0", self.lr));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad("temperature", format!("{} is not a finite number > 0", self.temperature));
        }
        Ok(())
    }
}

/// One training pair, tokenized: a query, a positive of the same task, and the task's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The query's token ids.
    pub query: Vec<u32>,
    /// The positive's token ids.
    pub positive: Vec<u32>,
    /// The task both come from (same-task in-batch negatives are masked).
    pub task: usize,
    /// The task's domain (same-domain in-batch negatives are masked too under [`Negatives::OtherDomains`]).
    pub domain: Domain,
}

/// What one epoch did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Pairs seen.
    pub pairs: usize,
    /// Optimisation steps.
    pub steps: usize,
    /// Mean loss over the epoch's steps.
    pub mean_loss: f64,
    /// Loss of the first step.
    pub first_loss: f64,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// The configuration.
    pub config: TrainConfig,
    /// The tasks trained on.
    pub train_tasks: Vec<String>,
    /// The tasks held out.
    pub held_out: Vec<String>,
    /// Per epoch.
    pub epochs: Vec<EpochReport>,
}

/// InfoNCE with in-batch negatives: the mean over queries of `−log softmax(q·pᵀ / temperature)` at the
/// query's own positive. With `tasks` (one task index per row), a positive of the query's task other than
/// its own is not a negative.
///
/// # Shapes
/// queries `[n, d]`, positives `[n, d]`, `tasks.len() == n` → `[1]`
pub fn info_nce<B: Backend>(
    queries: Tensor<B, 2>,
    positives: Tensor<B, 2>,
    tasks: Option<&[usize]>,
    temperature: f64,
) -> Tensor<B, 1> {
    let [n, _] = queries.dims();
    let device = queries.device();
    let mut mask = vec![0f32; n * n];
    let mut eye = vec![0f32; n * n];
    for i in 0..n {
        eye[i * n + i] = 1.0;
        if let Some(t) = tasks {
            let same = |j: usize| matches!((t.get(i), t.get(j)), (Some(a), Some(b)) if a == b);
            for j in (0..n).filter(|&j| j != i && same(j)) {
                mask[i * n + j] = MASKED_LOGIT;
            }
        }
    }
    let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [n, n]), &device); // [n, n]
    let eye = Tensor::<B, 2>::from_data(TensorData::new(eye, [n, n]), &device); // [n, n]
    let logits = queries.matmul(positives.transpose()).div_scalar(temperature) + mask; // [n, n]
    let own = (log_softmax(logits, 1) * eye).sum_dim(1); // [n, 1]
    own.mean().neg()
}

/// The InfoNCE loss of a batch of pairs under `model` (queries and positives in one forward pass through
/// [`mean_pool`], texts of at most [`TrainConfig::max_seq_len`] tokens). Which in-batch positives are not
/// negatives follows [`TrainConfig::negatives`]. Token ids that [`mean_pool`] refuses are an error.
///
/// # Shapes
/// `batch.len()` pairs → `[1]`
pub fn batch_loss<B: Backend>(
    model: &BertModel<B>,
    batch: &[Pair],
    cfg: &TrainConfig,
    device: &B::Device,
) -> Result<Tensor<B, 1>, ResearchError> {
    let n = batch.len();
    let ids: Vec<Vec<u32>> =
        batch.iter().map(|p| p.query.clone()).chain(batch.iter().map(|p| p.positive.clone())).collect();
    let emb = mean_pool(model, &ids, cfg.max_seq_len, device)?; // [2n, hidden]
    let queries = emb.clone().narrow(0, 0, n); // [n, hidden]
    let positives = emb.narrow(0, n, n); // [n, hidden]
    let groups: Vec<usize> = batch.iter().map(|p| cfg.negatives.group(p.task, p.domain)).collect();
    Ok(info_nce(queries, positives, Some(&groups), cfg.temperature))
}

/// One Adam step on a batch; returns the updated model and the batch's loss before the step.
pub fn train_step<B: AutodiffBackend, O: Optimizer<BertModel<B>, B>>(
    model: BertModel<B>,
    optim: &mut O,
    batch: &[Pair],
    cfg: &TrainConfig,
    device: &B::Device,
) -> Result<(BertModel<B>, f64), ResearchError> {
    let loss = batch_loss(&model, batch, cfg, device)?;
    let value = loss.clone().into_scalar().elem::<f64>();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    Ok((optim.step(cfg.lr, model, grads), value))
}

/// Runs the optimisation over ready-made pairs (one epoch): shuffles them with `rng`, steps batch by batch.
pub fn train_epoch<B: AutodiffBackend, O: Optimizer<BertModel<B>, B>>(
    mut model: BertModel<B>,
    optim: &mut O,
    mut pairs: Vec<Pair>,
    cfg: &TrainConfig,
    rng: &mut StdRng,
    device: &B::Device,
) -> Result<(BertModel<B>, Vec<f64>), ResearchError> {
    pairs.shuffle(rng);
    let mut losses = Vec::new();
    // A last batch of one pair has no negative: skip it.
    for batch in pairs.chunks(cfg.batch_size).filter(|b| b.len() >= 2) {
        let (next, loss) = train_step(model, optim, batch, cfg, device)?;
        model = next;
        losses.push(loss);
    }
    Ok((model, losses))
}

/// Truncates token ids to `max` tokens, keeping the final `[SEP]`.
fn truncate(mut ids: Vec<u32>, max: usize) -> Vec<u32> {
    if ids.len() > max {
        let last = ids[ids.len() - 1];
        ids.truncate(max - 1);
        ids.push(last);
    }
    ids
}

/// The texts of one training task: queries (train inputs past the samples) and sample inputs.
struct TaskTexts {
    queries: Vec<String>,
    samples: Vec<String>,
    domain: Domain,
}

/// Draws one epoch's pairs (module docs).
fn draw_pairs<B: Backend>(
    texts: &[TaskTexts],
    encoder: &SentenceEncoder<B>,
    cfg: &TrainConfig,
    rng: &mut StdRng,
) -> Result<Vec<Pair>, ResearchError> {
    let tokens = |text: &str| -> Result<Vec<u32>, ResearchError> {
        Ok(truncate(encoder.token_ids(&format!("{}{text}", cfg.instruction))?, cfg.max_seq_len))
    };
    let mut pairs = Vec::new();
    for (task, t) in texts.iter().enumerate() {
        let queries: Vec<&String> = t.queries.choose_multiple(rng, cfg.pairs_per_task).collect();
        for q in queries {
            let Some(positive) = t.samples.choose(rng) else { continue };
            pairs.push(Pair { query: tokens(q)?, positive: tokens(positive)?, task, domain: t.domain });
        }
    }
    Ok(pairs)
}

/// Trains `encoder` on the suite's non-held-out tasks; calls `on_epoch` after each epoch.
pub fn train_retriever<B: AutodiffBackend>(
    suite: &Suite,
    encoder: SentenceEncoder<B>,
    cfg: &TrainConfig,
    on_epoch: &mut dyn FnMut(&EpochReport),
) -> Result<(SentenceEncoder<B>, TrainReport), ResearchError> {
    cfg.validate()?;
    let mut texts = Vec::new();
    let (mut train_tasks, mut held_out) = (Vec::new(), Vec::new());
    for meta in &suite.meta().tasks {
        if meta.held_out {
            held_out.push(meta.name.clone());
            continue;
        }
        let samples: Vec<String> = suite.examples(&meta.name, Split::Samples)?.into_iter().map(|e| e.input).collect();
        let sample_set: std::collections::HashSet<&String> = samples.iter().collect();
        let queries: Vec<String> = suite
            .examples(&meta.name, Split::Train)?
            .into_iter()
            .map(|e| e.input)
            .filter(|i| !sample_set.contains(i))
            .collect();
        if samples.is_empty() || queries.is_empty() {
            return Err(ResearchError::Input(format!(
                "task `{}` of {} has no sample or no train input past its samples",
                meta.name,
                suite.dir().display()
            )));
        }
        texts.push(TaskTexts { queries, samples, domain: meta.domain });
        train_tasks.push(meta.name.clone());
    }
    let groups: std::collections::HashSet<usize> =
        texts.iter().enumerate().map(|(task, t)| cfg.negatives.group(task, t.domain)).collect();
    if groups.len() < 2 {
        return Err(ResearchError::Input(format!(
            "{}: {} training task(s) in {} group(s) for negatives `{}`; in-batch negatives need at least 2",
            suite.dir().display(),
            texts.len(),
            groups.len(),
            cfg.negatives
        )));
    }
    let device = encoder.device().clone();
    let mut model = encoder.model().clone();
    let mut optim = AdamConfig::new().init::<B, BertModel<B>>();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut epochs = Vec::with_capacity(cfg.epochs);
    for epoch in 1..=cfg.epochs {
        let start = Instant::now();
        let pairs = draw_pairs(&texts, &encoder, cfg, &mut rng)?;
        let n_pairs = pairs.len();
        let (next, losses) = train_epoch(model, &mut optim, pairs, cfg, &mut rng, &device)?;
        model = next;
        let report = EpochReport {
            epoch,
            pairs: n_pairs,
            steps: losses.len(),
            mean_loss: losses.iter().sum::<f64>() / losses.len().max(1) as f64,
            first_loss: losses.first().copied().unwrap_or(f64::NAN),
            last_loss: losses.last().copied().unwrap_or(f64::NAN),
            seconds: start.elapsed().as_secs_f64(),
        };
        on_epoch(&report);
        epochs.push(report);
    }
    let report = TrainReport { config: cfg.clone(), train_tasks, held_out, epochs };
    Ok((encoder.with_model(model), report))
}
