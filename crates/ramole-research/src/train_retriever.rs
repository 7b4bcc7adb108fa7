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
//! [`SentenceEncoder`] itself uses. With [`TrainConfig::domain_weight`] `λ > 0` ([`domain_info_nce`], the
//! default), the positives of the other tasks of the query's domain become soft targets (weight `λ`
//! shared among them, `1 − λ` on the own positive) instead of masked negatives. The optimiser is Adam.
//!
//! # What trains
//! [`Tuning::Lora`] (the default): a LoRA ([`BertLora`]) on every linear layer, the encoder frozen; each
//! step runs the encoder with the LoRA merged into its weights ([`BertLora::merge`], differentiable in
//! the factors), and the result is saved as an adapter ([`ramole_retriever::EncoderAdapter`]).
//! [`Tuning::Full`]: every weight.

use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use ramole_models::bert::{BertLinear, BertLora, BertModel};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use ramole_retriever::encoder::mean_pool;
use ramole_retriever::{DEFAULT_INSTRUCTION, SentenceEncoder};

use crate::ResearchError;
use crate::tasks::{Domain, Split, Suite};

/// Mixed into the seed for the LoRA's initial values (so that they do not repeat the pair draws' stream).
const LORA_INIT_SEED: u64 = 0x6c6f_7261_696e_6974;

/// The largest LoRA rank trained.
pub const MAX_LORA_RANK: usize = 256;

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

/// Which weights training changes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Tuning {
    /// Every weight of the encoder (the result is a whole encoder folder, ~90 MB for MiniLM).
    Full,
    /// A LoRA of rank `rank` (scale `alpha / rank`) on every linear layer of every BERT layer
    /// ([`BertLinear::ALL`]), the base frozen; the result is an adapter folder of ~1.3 MB at rank 8
    /// ([`ramole_retriever::EncoderAdapter`]).
    Lora {
        /// The rank.
        rank: usize,
        /// `lora_alpha`.
        alpha: f64,
    },
}

impl Default for Tuning {
    /// A rank-8 LoRA with alpha 16.
    fn default() -> Self {
        Self::Lora { rank: 8, alpha: 16.0 }
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
    /// Which weights change.
    #[serde(default = "full_tuning")]
    pub tuning: Tuning,
    /// The share `λ` of each query's target put on the positives of the *other* tasks of its domain in the
    /// batch (supervised-contrastive, by domain): `0` is plain InfoNCE; with `λ > 0` those positives are
    /// neither negatives nor masked but pulled toward the query with weight `λ / count`, its own positive
    /// with `1 − λ`, so that an unseen task lands near the tasks of its domain. In `[0, 1)`.
    #[serde(default)]
    pub domain_weight: f64,
}

/// What reports written before [`Tuning`] existed trained.
fn full_tuning() -> Tuning {
    Tuning::Full
}

impl Default for TrainConfig {
    /// What the shipped default retriever was trained with: two epochs of 32 pairs per task, batches of
    /// 16, 64 tokens, temperature 0.05, [`Negatives::OtherDomains`], domain weight 0.5, a rank-8 LoRA
    /// ([`Tuning::default`]) at learning rate 2e-4 (full fine-tuning used 2e-5), seed 42. About 4 minutes
    /// on a 2-core CPU (release build).
    fn default() -> Self {
        Self {
            epochs: 2,
            lr: 2e-4,
            temperature: 0.05,
            batch_size: 16,
            pairs_per_task: 32,
            max_seq_len: 64,
            seed: 42,
            instruction: DEFAULT_INSTRUCTION.to_owned(),
            negatives: Negatives::default(),
            tuning: Tuning::default(),
            domain_weight: 0.5,
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
        if !(0.0..1.0).contains(&self.domain_weight) {
            return bad("domain weight", format!("{} is not in [0, 1)", self.domain_weight));
        }
        if let Tuning::Lora { rank, alpha } = self.tuning {
            if !(1..=MAX_LORA_RANK).contains(&rank) {
                return bad("rank", format!("{rank} is not in 1..={MAX_LORA_RANK}"));
            }
            if !(alpha.is_finite() && alpha > 0.0) {
                return bad("alpha", format!("{alpha} is not a finite number > 0"));
            }
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

/// InfoNCE with soft targets by domain ([`TrainConfig::domain_weight`] `λ`): for query `i`, the target
/// puts `1 − λ` on its own positive and `λ / m` on each of the `m` in-batch positives of other tasks of
/// its domain (all of it on its own positive when `m = 0`); positives of its own task other than its
/// own are masked out; every other positive is a negative. The loss is the mean over queries of the
/// cross-entropy `−Σⱼ tᵢⱼ log softmax(q·pᵀ / temperature)ᵢⱼ`.
///
/// # Shapes
/// queries `[n, d]`, positives `[n, d]`, `tasks.len() == n` (task, domain) → `[1]`
pub fn domain_info_nce<B: Backend>(
    queries: Tensor<B, 2>,
    positives: Tensor<B, 2>,
    tasks: &[(usize, Domain)],
    weight: f64,
    temperature: f64,
) -> Tensor<B, 1> {
    let [n, _] = queries.dims();
    let device = queries.device();
    let mut mask = vec![0f32; n * n];
    let mut target = vec![0f32; n * n];
    for (i, &(task, domain)) in tasks.iter().enumerate().take(n) {
        let mates: Vec<usize> =
            (0..n).filter(|&j| tasks.get(j).is_some_and(|&(t, d)| d == domain && t != task)).collect();
        for j in (0..n).filter(|&j| j != i && tasks.get(j).is_some_and(|&(t, _)| t == task)) {
            mask[i * n + j] = MASKED_LOGIT;
        }
        let own = if mates.is_empty() { 1.0 } else { 1.0 - weight };
        target[i * n + i] = own as f32;
        for &j in &mates {
            target[i * n + j] = (weight / mates.len() as f64) as f32;
        }
    }
    let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [n, n]), &device); // [n, n]
    let target = Tensor::<B, 2>::from_data(TensorData::new(target, [n, n]), &device); // [n, n]
    let logits = queries.matmul(positives.transpose()).div_scalar(temperature) + mask; // [n, n]
    (log_softmax(logits, 1) * target).sum_dim(1).mean().neg()
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
    if cfg.domain_weight > 0.0 {
        let tasks: Vec<(usize, Domain)> = batch.iter().map(|p| (p.task, p.domain)).collect();
        return Ok(domain_info_nce(queries, positives, &tasks, cfg.domain_weight, cfg.temperature));
    }
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
    step(model, optim, batch, cfg, device, &|m: &BertModel<B>| Ok(m.clone()))
}

/// One Adam step on the trainable part `params` of an encoder whose model is `model_of(params)`.
fn step<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>>(
    params: M,
    optim: &mut O,
    batch: &[Pair],
    cfg: &TrainConfig,
    device: &B::Device,
    model_of: &dyn Fn(&M) -> Result<BertModel<B>, ResearchError>,
) -> Result<(M, f64), ResearchError> {
    let loss = batch_loss(&model_of(&params)?, batch, cfg, device)?;
    let value = loss.clone().into_scalar().elem::<f64>();
    if !value.is_finite() {
        return Err(ResearchError::Input(format!("the training loss became {value}: lower the learning rate")));
    }
    let grads = GradientsParams::from_grads(loss.backward(), &params);
    Ok((optim.step(cfg.lr, params, grads), value))
}

/// Runs the optimisation over ready-made pairs (one epoch): shuffles them with `rng`, steps batch by batch.
pub fn train_epoch<B: AutodiffBackend, O: Optimizer<BertModel<B>, B>>(
    model: BertModel<B>,
    optim: &mut O,
    pairs: Vec<Pair>,
    cfg: &TrainConfig,
    rng: &mut StdRng,
    device: &B::Device,
) -> Result<(BertModel<B>, Vec<f64>), ResearchError> {
    epoch(model, optim, pairs, cfg, rng, device, &|m: &BertModel<B>| Ok(m.clone()))
}

/// [`train_epoch`] for a LoRA on a frozen `base` (the model of each step is `lora.merge(base)`).
pub fn train_epoch_lora<B: AutodiffBackend, O: Optimizer<BertLora<B>, B>>(
    lora: BertLora<B>,
    base: &BertModel<B>,
    optim: &mut O,
    pairs: Vec<Pair>,
    cfg: &TrainConfig,
    rng: &mut StdRng,
    device: &B::Device,
) -> Result<(BertLora<B>, Vec<f64>), ResearchError> {
    epoch(lora, optim, pairs, cfg, rng, device, &|l: &BertLora<B>| Ok(l.merge(base)?))
}

fn epoch<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>>(
    mut params: M,
    optim: &mut O,
    mut pairs: Vec<Pair>,
    cfg: &TrainConfig,
    rng: &mut StdRng,
    device: &B::Device,
    model_of: &dyn Fn(&M) -> Result<BertModel<B>, ResearchError>,
) -> Result<(M, Vec<f64>), ResearchError> {
    pairs.shuffle(rng);
    let mut losses = Vec::new();
    // A last batch of one pair has no negative: skip it.
    for batch in pairs.chunks(cfg.batch_size).filter(|b| b.len() >= 2) {
        let (next, loss) = step(params, optim, batch, cfg, device, model_of)?;
        params = next;
        losses.push(loss);
    }
    Ok((params, losses))
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

/// What [`train_retriever`] gives: the encoder with its new weights (not saved: its identity is
/// [`ramole_retriever::UNSAVED_IDENTITY`]) and, for [`Tuning::Lora`], the LoRA to save as an adapter.
#[derive(Debug)]
pub struct Trained<B: Backend> {
    /// The trained encoder (for a LoRA, the base with the LoRA merged).
    pub encoder: SentenceEncoder<B>,
    /// The LoRA, for [`Tuning::Lora`].
    pub lora: Option<BertLora<B>>,
}

/// Trains `encoder` on the suite's non-held-out tasks; calls `on_epoch` after each epoch.
pub fn train_retriever<B: AutodiffBackend>(
    suite: &Suite,
    encoder: SentenceEncoder<B>,
    cfg: &TrainConfig,
    on_epoch: &mut dyn FnMut(&EpochReport),
) -> Result<(Trained<B>, TrainReport), ResearchError> {
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
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut epochs = Vec::with_capacity(cfg.epochs);
    let mut record = |epoch: usize, n_pairs: usize, losses: &[f64], start: Instant| {
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
    };
    let trained = match cfg.tuning {
        Tuning::Full => {
            let mut model = encoder.model().clone();
            let mut optim = AdamConfig::new().init::<B, BertModel<B>>();
            for epoch in 1..=cfg.epochs {
                let start = Instant::now();
                let pairs = draw_pairs(&texts, &encoder, cfg, &mut rng)?;
                let n_pairs = pairs.len();
                let (next, losses) = train_epoch(model, &mut optim, pairs, cfg, &mut rng, &device)?;
                model = next;
                record(epoch, n_pairs, &losses, start);
            }
            Trained { encoder: encoder.with_model(model), lora: None }
        }
        Tuning::Lora { rank, alpha } => {
            let base = encoder.model().clone().no_grad();
            // PEFT's initialisation: A ~ U(−1/√d_in, 1/√d_in) (Kaiming-uniform, a = √5), B = 0; from the seed.
            let mut init_rng = StdRng::seed_from_u64(cfg.seed ^ LORA_INIT_SEED);
            let mut lora = BertLora::<B>::new(
                &base.config,
                &BertLinear::ALL,
                rank,
                alpha / rank as f64,
                |d_in| {
                    let bound = 1.0 / (d_in as f32).sqrt();
                    init_rng.random_range(-bound..bound)
                },
                &device,
            );
            let mut optim = AdamConfig::new().init::<B, BertLora<B>>();
            for epoch in 1..=cfg.epochs {
                let start = Instant::now();
                let pairs = draw_pairs(&texts, &encoder, cfg, &mut rng)?;
                let n_pairs = pairs.len();
                let (next, losses) = train_epoch_lora(lora, &base, &mut optim, pairs, cfg, &mut rng, &device)?;
                lora = next;
                record(epoch, n_pairs, &losses, start);
            }
            let merged = lora.merge(encoder.model())?;
            Trained { encoder: encoder.with_model(merged), lora: Some(lora) }
        }
    };
    let report = TrainReport { config: cfg.clone(), train_tasks, held_out, epochs };
    Ok((trained, report))
}
