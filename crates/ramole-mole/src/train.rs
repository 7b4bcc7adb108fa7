//! Training a LoRA adapter on a frozen base model with burn's autodiff, as a contributor does before
//! uploading it; the result is a PEFT folder (see [`crate::peft::write_adapter`]).
//!
//! # What is trained
//! [`TrainableLora`] holds, for every targeted linear layer, `lora_A` `[r, d_in]` and `lora_B`
//! `[d_out, r]` as burn [`Param`]s in PEFT's layout and initialisation (A Kaiming-uniform with
//! `a = √5`, i.e. `U(−1/√d_in, 1/√d_in)`; B zero). Its forward is the serving forward: the factors
//! become the batch's per-row LoRA state ([`TrainableLora::llama_lora`]) that
//! [`LlamaForCausalLM::forward`] takes, so there is no second copy of the model and no second
//! implementation of the update. The base is frozen with [`Module::no_grad`]: no gradient buffers
//! are kept for it, only for the factors.
//!
//! # Data and loss
//! Records are `{input, target}` ([`read_train_jsonl`]). An example is `tokens(input) ·
//! tokens(target) · EOS` (no chat template, as the suite gives the inputs), at most
//! [`LoraTrainConfig::max_len`] tokens: a longer input is truncated from the left (counted in the
//! report). The loss is the mean cross-entropy of the target tokens and EOS, every other position
//! ignored, over all target tokens of the batch (PEFT's `labels = -100` convention). Batches are
//! left-padded and masked; only the positions that predict a target token go through the LM head.
//!
//! # Schedule
//! A seeded stream of example indices, one shuffled permutation of the data after another; each
//! step takes the next [`LoraTrainConfig::batch_size`] indices. AdamW with PyTorch's defaults
//! (β = (0.9, 0.999), ε = 1e-8, weight decay 0.01). The same seed gives the same adapter.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use burn::module::{AutodiffModule, Module, Param};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use ramole_core::lora::{LoraFactors, RowLora};
use ramole_models::llama::{AttentionInput, KvCache, LinearKind, LlamaConfig, LlamaForCausalLM, LlamaLora};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::MoleError;

/// How long to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainLength {
    /// A number of optimisation steps.
    Steps(usize),
    /// A number of passes over the data (`⌈examples / batch size⌉` steps each).
    Epochs(usize),
}

/// How a LoRA is trained. [`LoraTrainConfig::default`] is the configuration of the peer measurement
/// (`../shared/peers/peft/train_lora.py`): r = 8, alpha = 16 on q_proj and v_proj, batch 8,
/// 150 steps, learning rate 1e-3, 160 tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraTrainConfig {
    /// Rank `r`.
    pub rank: usize,
    /// `lora_alpha` (the update is scaled by `alpha / r`).
    pub alpha: f64,
    /// The linear layers adapted in every block.
    pub targets: Vec<LinearKind>,
    /// How long to train.
    pub length: TrainLength,
    /// Examples per step.
    pub batch_size: usize,
    /// AdamW's learning rate.
    pub lr: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Tokens per example (input + target + EOS); longer inputs are truncated from the left.
    pub max_len: usize,
    /// Seed of the initialisation and of the batch order.
    pub seed: u64,
}

impl Default for LoraTrainConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            targets: vec![LinearKind::Q, LinearKind::V],
            length: TrainLength::Steps(150),
            batch_size: 8,
            lr: 1e-3,
            weight_decay: 0.01,
            max_len: 160,
            seed: 0,
        }
    }
}

impl LoraTrainConfig {
    /// Checks the values: rank, batch size, length ≥ 1, max_len ≥ 2, finite positive alpha and lr,
    /// finite non-negative weight decay, at least one target.
    pub fn validate(&self) -> Result<(), MoleError> {
        let bad = |m: &str| Err(MoleError::Training(format!("invalid training configuration: {m}")));
        let length = match self.length {
            TrainLength::Steps(n) | TrainLength::Epochs(n) => n,
        };
        if self.rank == 0 || self.batch_size == 0 || length == 0 {
            return bad("rank, batch size and the number of steps or epochs must be at least 1");
        }
        if self.max_len < 2 {
            return bad("max_len must be at least 2 (one input token and EOS)");
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.lr.is_finite() && self.lr > 0.0) {
            return bad("alpha and lr must be finite and positive");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight decay must be finite and non-negative");
        }
        if self.targets.is_empty() {
            return bad("no target module");
        }
        Ok(())
    }

    /// The scale of the update, `alpha / r`.
    pub fn scale(&self) -> f32 {
        (self.alpha / self.rank as f64) as f32
    }

    /// The number of optimisation steps for `n_examples` examples.
    pub fn total_steps(&self, n_examples: usize) -> usize {
        match self.length {
            TrainLength::Steps(n) => n,
            TrainLength::Epochs(e) => e * n_examples.div_ceil(self.batch_size.max(1)),
        }
    }
}

/// One training record of the suite's format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// The input text.
    pub input: String,
    /// The expected output text.
    pub target: String,
}

/// Training records read from a file, with the file's digest (what a trained adapter records so
/// that a rerun on the same data can be recognised).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainData {
    /// The records, in file order.
    pub records: Vec<TrainRecord>,
    /// The sha256 of the file's bytes, lower-case hex.
    pub sha256: String,
}

/// Reads `{input, target}` JSONL records (extra fields are ignored; a leading byte-order mark is
/// dropped). A line that is not such an object, or whose target is empty, is an error naming the
/// file and line; a file without records too.
pub fn read_train_jsonl(path: &Path) -> Result<TrainData, MoleError> {
    let bytes = ramole_core::fs::read_bounded(path, ramole_core::fs::MAX_TEXT_BYTES)
        .map_err(|source| MoleError::Io { path: path.into(), source })?;
    let sha256 = sha256_hex(&bytes);
    let text = std::str::from_utf8(&bytes).map_err(|e| MoleError::TrainData {
        path: path.into(),
        line: 0,
        message: format!("not UTF-8 text (byte {})", e.valid_up_to()),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |m: String| MoleError::TrainData { path: path.into(), line: i + 1, message: m };
        let record: TrainRecord = serde_json::from_str(line)
            .map_err(|e| bad(format!("expected an object with string `input` and `target`: {e}")))?;
        if record.target.trim().is_empty() {
            return Err(bad("empty `target`".into()));
        }
        if record.input.is_empty() {
            return Err(bad("empty `input`".into()));
        }
        records.push(record);
    }
    if records.is_empty() {
        return Err(MoleError::TrainData { path: path.into(), line: 0, message: "no training record".into() });
    }
    Ok(TrainData { records, sha256 })
}

/// The sha256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A tokenized training example: `ids = input · target · EOS`, the loss on `ids[prompt_len..]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedExample {
    /// All tokens.
    pub ids: Vec<u32>,
    /// Tokens of the (possibly truncated) input; at least 1.
    pub prompt_len: usize,
}

impl TokenizedExample {
    /// Builds an example from token ids, truncating the input from the left so that the whole fits
    /// `max_len` (a target longer than `max_len − 1` keeps its first tokens and loses EOS). Returns
    /// whether anything was cut. `None` when the input or the target is empty.
    pub fn new(input: &[u32], target: &[u32], eos: u32, max_len: usize) -> Option<(Self, bool)> {
        if input.is_empty() || target.is_empty() || max_len < 2 {
            return None;
        }
        let mut target: Vec<u32> = target.iter().copied().chain([eos]).collect();
        let mut truncated = false;
        if target.len() > max_len - 1 {
            target.truncate(max_len - 1);
            truncated = true;
        }
        let keep = (max_len - target.len()).min(input.len());
        truncated |= keep < input.len();
        let mut ids = input[input.len() - keep..].to_vec();
        ids.extend(target);
        Some((Self { ids, prompt_len: keep }, truncated))
    }

    /// Tokens the loss covers.
    pub fn target_len(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

/// Tokenizes records (no special tokens added); returns the examples and how many were truncated.
pub fn tokenize_records(
    tokenizer: &Tokenizer,
    records: &[TrainRecord],
    eos: u32,
    max_len: usize,
) -> Result<(Vec<TokenizedExample>, usize), MoleError> {
    let encode = |text: &str| -> Result<Vec<u32>, MoleError> { Ok(ramole_models::tokenizer::encode(tokenizer, text)?) };
    let mut out = Vec::with_capacity(records.len());
    let mut truncated = 0;
    for (i, r) in records.iter().enumerate() {
        let (input, target) = (encode(&r.input)?, encode(&r.target)?);
        let (example, cut) = TokenizedExample::new(&input, &target, eos, max_len)
            .ok_or_else(|| MoleError::Training(format!("record {}: its input or target has no token", i + 1)))?;
        truncated += usize::from(cut);
        out.push(example);
    }
    Ok((out, truncated))
}

/// The factors of one adapted linear layer.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// `lora_A`, `[r, d_in]`.
    pub lora_a: Param<Tensor<B, 2>>,
    /// `lora_B`, `[d_out, r]`.
    pub lora_b: Param<Tensor<B, 2>>,
    /// The block.
    pub layer: usize,
    /// The linear layer's slot ([`LinearKind::slot`]).
    pub slot: usize,
}

impl<B: Backend> LoraLinear<B> {
    /// The linear layer it adapts.
    pub fn kind(&self) -> LinearKind {
        LinearKind::ALL[self.slot]
    }
}

/// One pair of [`init_pairs`]: `(block, layer, A [rank, d_in], B [d_out, rank])`.
pub(crate) type InitPair<B> = (usize, LinearKind, Param<Tensor<B, 2>>, Param<Tensor<B, 2>>);

/// A low-rank pair for every `targets` layer of every block of `base` (block by block, layers in
/// [`LinearKind`] order), initialised as PEFT does: A drawn from `U(−1/√d_in, 1/√d_in)` (Kaiming-uniform
/// with `a = √5`) and B = 0, from `seed`. LoRA training and the RouterLoRA gate
/// ([`crate::gate::RouterGate::init`]) both start from it.
pub(crate) fn init_pairs<B: Backend>(
    base: &LlamaConfig,
    rank: usize,
    targets: &[LinearKind],
    seed: u64,
    device: &B::Device,
) -> Vec<InitPair<B>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kinds = targets.to_vec();
    kinds.sort();
    kinds.dedup();
    let mut pairs = Vec::with_capacity(base.num_hidden_layers * kinds.len());
    for layer in 0..base.num_hidden_layers {
        for &kind in &kinds {
            let [d_out, d_in] = base.linear_shape(kind);
            let bound = 1.0 / (d_in as f32).sqrt();
            let a: Vec<f32> = (0..rank * d_in).map(|_| rng.random_range(-bound..bound)).collect();
            let a = Param::from_tensor(Tensor::from_data(TensorData::new(a, [rank, d_in]), device));
            let b = Param::from_tensor(Tensor::zeros([d_out, rank], device));
            pairs.push((layer, kind, a, b));
        }
    }
    pairs
}

/// A LoRA adapter whose factors are trainable parameters.
#[derive(Module, Debug)]
pub struct TrainableLora<B: Backend> {
    /// One entry per adapted linear layer, by block then slot.
    pub linears: Vec<LoraLinear<B>>,
    /// The scale `alpha / r`.
    pub scale: f32,
}

impl<B: Backend> TrainableLora<B> {
    /// PEFT's initialisation for `base`: every `targets` layer of every block gets A drawn from
    /// `U(−1/√d_in, 1/√d_in)` (Kaiming-uniform with `a = √5`) and B = 0, from `seed`.
    pub fn init(
        base: &LlamaConfig,
        rank: usize,
        scale: f32,
        targets: &[LinearKind],
        seed: u64,
        device: &B::Device,
    ) -> Self {
        let linears = init_pairs(base, rank, targets, seed, device)
            .into_iter()
            .map(|(layer, kind, lora_a, lora_b)| LoraLinear { lora_a, lora_b, layer, slot: kind.slot() })
            .collect();
        Self { linears, scale }
    }

    /// An adapter with the given factors (PEFT layout), e.g. one loaded from disk.
    pub fn from_factors(factors: &BTreeMap<(usize, LinearKind), LoraFactors>, scale: f32, device: &B::Device) -> Self {
        let linears = factors
            .iter()
            .map(|(&(layer, kind), f)| {
                let d_in = f.a.len() / f.rank.max(1);
                let d_out = f.b.len() / f.rank.max(1);
                LoraLinear {
                    lora_a: Param::from_tensor(Tensor::from_data(TensorData::new(f.a.clone(), [f.rank, d_in]), device)),
                    lora_b: Param::from_tensor(Tensor::from_data(
                        TensorData::new(f.b.clone(), [d_out, f.rank]),
                        device,
                    )),
                    layer,
                    slot: kind.slot(),
                }
            })
            .collect();
        Self { linears, scale }
    }

    /// The per-row LoRA state of a batch whose every row uses this adapter, for a model of
    /// `n_layers` blocks: the update the serving path computes, with gradients flowing to the factors.
    pub fn llama_lora(&self, n_layers: usize, rows: usize) -> LlamaLora<B> {
        let mut lora = LlamaLora::none(n_layers);
        for lin in &self.linears {
            let [r, d_in] = lin.lora_a.dims();
            let d_out = lin.lora_b.dims()[0];
            let a = lin.lora_a.val().reshape([1, r, d_in]).expand([rows, r, d_in]);
            let b = lin.lora_b.val().transpose().mul_scalar(self.scale).reshape([1, r, d_out]).expand([rows, r, d_out]);
            if let Some(slots) = lora.layers.get_mut(lin.layer) {
                slots[lin.slot] = Some(RowLora::Gathered { a, b, route: None });
            }
        }
        lora
    }

    /// The factors on the host, by (block, linear layer).
    pub fn factors(&self) -> BTreeMap<(usize, LinearKind), LoraFactors> {
        self.linears
            .iter()
            .map(|lin| {
                let rank = lin.lora_a.dims()[0];
                let host = |t: Tensor<B, 2>| t.into_data().iter::<f32>().collect::<Vec<f32>>();
                let f = LoraFactors {
                    a: host(lin.lora_a.val()),
                    b: host(lin.lora_b.val()),
                    rank,
                    scale: self.scale,
                    proto: None,
                };
                ((lin.layer, lin.kind()), f)
            })
            .collect()
    }
}

/// The loss of a batch and what it covered.
#[derive(Debug, Clone)]
pub struct BatchLoss<B: Backend> {
    /// Mean cross-entropy over the batch's target tokens, `[1]`.
    pub loss: Tensor<B, 1>,
    /// Tokens in the batch (padding excluded).
    pub tokens: usize,
    /// Target tokens (the loss's denominator).
    pub target_tokens: usize,
}

/// The loss of `batch` under `model` with `lora` (module docs).
pub fn batch_loss<B: Backend>(
    model: &LlamaForCausalLM<B>,
    lora: &TrainableLora<B>,
    batch: &[&TokenizedExample],
    device: &B::Device,
) -> BatchLoss<B> {
    let state = lora.llama_lora(model.n_layers(), batch.len());
    loss_with(model, &state, batch, device)
}

/// The loss of `batch` under `model` with the per-row LoRA state `state` (one row per example; e.g.
/// a batch of retrieved adapters composed by a gate that is being trained).
pub fn loss_with<B: Backend>(
    model: &LlamaForCausalLM<B>,
    state: &LlamaLora<B>,
    batch: &[&TokenizedExample],
    device: &B::Device,
) -> BatchLoss<B> {
    let n = batch.len();
    let t = batch.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let pads: Vec<usize> = batch.iter().map(|e| t - e.ids.len()).collect();
    let mut tokens = Vec::with_capacity(n * t);
    let (mut positions, mut labels) = (Vec::new(), Vec::new());
    for (row, (e, &pad)) in batch.iter().zip(&pads).enumerate() {
        tokens.extend(std::iter::repeat_n(0i64, pad));
        tokens.extend(e.ids.iter().map(|&x| i64::from(x)));
        // The hidden state at slot `pad + j − 1` predicts token `j`.
        for j in e.prompt_len..e.ids.len() {
            positions.push((row * t + pad + j - 1) as i64);
            labels.push(i64::from(e.ids[j]));
        }
    }
    let m = labels.len();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [n, t]), device);
    let attn = AttentionInput::left_padded(&pads, 0, t, device);
    let mut cache = KvCache::new(model.n_layers());
    let hidden = model.forward(tokens, &attn, &mut cache, Some(state)); // [n, t, d]
    let d = hidden.dims()[2];
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [m]), device);
    let picked = hidden.reshape([n * t, d]).select(0, idx).reshape([1, m, d]);
    let logits = model.logits(picked).reshape([m, model.vocab_size()]);
    let labels = Tensor::<B, 2, Int>::from_data(TensorData::new(labels, [m, 1]), device);
    let nll = log_softmax(logits, 1).gather(1, labels).neg(); // [m, 1]
    BatchLoss { loss: nll.mean(), tokens: batch.iter().map(|e| e.ids.len()).sum(), target_tokens: m }
}

/// Progress of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// 1-based step.
    pub step: usize,
    /// Steps in the run.
    pub steps: usize,
    /// The batch's loss before the update.
    pub loss: f64,
    /// Training tokens per second so far (input and target tokens, padding excluded).
    pub tokens_per_sec: f64,
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraTrainReport {
    /// The configuration.
    pub config: LoraTrainConfig,
    /// Training examples.
    pub examples: usize,
    /// Examples whose input (or target) was truncated to `max_len`.
    pub truncated: usize,
    /// Optimisation steps.
    pub steps: usize,
    /// Loss of every step, in order.
    pub losses: Vec<f64>,
    /// Tokens processed (padding excluded).
    pub tokens: usize,
    /// Wall-clock seconds of the optimisation.
    pub seconds: f64,
    /// Of which: forward passes (loss included), backward passes, optimiser updates.
    pub split_secs: [f64; 3],
}

impl LoraTrainReport {
    /// Training tokens per second.
    pub fn tokens_per_sec(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }

    /// Mean loss of the first and of the last `k` steps.
    pub fn loss_ends(&self, k: usize) -> (f64, f64) {
        let k = k.clamp(1, self.losses.len().max(1));
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
        (mean(&self.losses[..k.min(self.losses.len())]), mean(&self.losses[self.losses.len().saturating_sub(k)..]))
    }
}

/// Trains a LoRA on `examples` over the frozen `model` (its parameters are set not to require
/// gradients here); calls `on_step` after every step. A loss that is not finite stops the run with
/// an error naming the step.
pub fn train_lora<B: AutodiffBackend>(
    model: LlamaForCausalLM<B>,
    base: &LlamaConfig,
    examples: &[TokenizedExample],
    truncated: usize,
    cfg: &LoraTrainConfig,
    device: &B::Device,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<(TrainableLora<B::InnerBackend>, LoraTrainReport), MoleError> {
    cfg.validate()?;
    if examples.is_empty() {
        return Err(MoleError::Training("no training example".into()));
    }
    if let Some(e) = examples.iter().find(|e| e.prompt_len == 0 || e.target_len() == 0 || e.ids.len() > cfg.max_len) {
        return Err(MoleError::Training(format!(
            "an example of {} tokens (prompt {}) does not fit: every example needs input and target tokens within max_len {}",
            e.ids.len(),
            e.prompt_len,
            cfg.max_len
        )));
    }
    if let Some(&t) = examples.iter().flat_map(|e| &e.ids).find(|&&t| t as usize >= base.vocab_size) {
        return Err(MoleError::Training(format!("token id {t} is outside the vocabulary ({})", base.vocab_size)));
    }
    let model = model.no_grad();
    let mut lora = TrainableLora::<B>::init(base, cfg.rank, cfg.scale(), &cfg.targets, cfg.seed, device);
    let mut optim =
        AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(cfg.weight_decay as f32).init::<B, TrainableLora<B>>();
    // The batch order: one seeded permutation after another (a stream separate from the init).
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut order: Vec<usize> = Vec::new();
    let steps = cfg.total_steps(examples.len());
    let start = Instant::now();
    let mut report = LoraTrainReport {
        config: cfg.clone(),
        examples: examples.len(),
        truncated,
        steps,
        losses: Vec::new(),
        tokens: 0,
        seconds: 0.0,
        split_secs: [0.0; 3],
    };
    for step in 1..=steps {
        let mut batch = Vec::with_capacity(cfg.batch_size);
        while batch.len() < cfg.batch_size.min(examples.len()) {
            if order.is_empty() {
                order = (0..examples.len()).collect();
                order.shuffle(&mut rng);
            }
            if let Some(i) = order.pop() {
                batch.push(&examples[i]);
            }
        }
        let clock = Instant::now();
        let out = batch_loss(&model, &lora, &batch, device);
        let loss = out.loss.clone().into_scalar().elem::<f64>();
        report.split_secs[0] += clock.elapsed().as_secs_f64();
        if !loss.is_finite() {
            return Err(MoleError::Training(format!(
                "the loss is {loss} at step {step}: training diverged (try a lower --lr); nothing was written"
            )));
        }
        let clock = Instant::now();
        let grads = GradientsParams::from_grads(out.loss.backward(), &lora);
        report.split_secs[1] += clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        lora = optim.step(cfg.lr, lora, grads);
        report.split_secs[2] += clock.elapsed().as_secs_f64();
        report.tokens += out.tokens;
        report.losses.push(loss);
        let secs = start.elapsed().as_secs_f64();
        on_step(&StepReport { step, steps, loss, tokens_per_sec: report.tokens as f64 / secs.max(1e-9) });
    }
    report.seconds = start.elapsed().as_secs_f64();
    let trained = lora.valid();
    if trained.factors().values().any(|f| f.a.iter().chain(&f.b).any(|x| !x.is_finite())) {
        return Err(MoleError::Training("the trained factors hold non-finite values; nothing was written".into()));
    }
    Ok((trained, report))
}

/// Tokenizes `records` with the model's tokenizer and trains on them ([`train_lora`]). The model
/// must have a tokenizer and an end-of-sequence token.
pub fn train_on_records<B: AutodiffBackend>(
    lm: ramole_models::CausalLm<B>,
    records: &[TrainRecord],
    cfg: &LoraTrainConfig,
    device: &B::Device,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<(TrainableLora<B::InnerBackend>, LoraTrainReport), MoleError> {
    cfg.validate()?;
    let tokenizer =
        lm.tokenizer.as_ref().ok_or_else(|| MoleError::Training("the base model has no tokenizer".into()))?;
    let eos = *lm
        .config
        .eos_token_ids
        .first()
        .ok_or_else(|| MoleError::Training("the base model declares no end-of-sequence token".into()))?;
    let (examples, truncated) = tokenize_records(tokenizer, records, eos, cfg.max_len)?;
    train_lora(lm.model, &lm.config, &examples, truncated, cfg, device, on_step)
}

impl<B: Backend> TrainableLora<B> {
    /// Saves the adapter as a PEFT folder ([`crate::peft::write_adapter`]) trained with `cfg`.
    pub fn save(
        &self,
        dir: &Path,
        cfg: &LoraTrainConfig,
        base_model: &str,
        dtype: crate::peft::AdapterDtype,
        extra: &[(&str, Vec<u8>)],
        overwrite: bool,
    ) -> Result<(), MoleError> {
        let config = crate::peft::AdapterConfig {
            r: cfg.rank,
            lora_alpha: cfg.alpha,
            use_rslora: false,
            target_modules: cfg.targets.iter().map(|k| k.name().to_string()).collect(),
        };
        crate::peft::write_adapter(dir, &config, base_model, &self.factors(), dtype, extra, overwrite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_truncate_the_input_from_the_left() {
        let (e, cut) = TokenizedExample::new(&[1, 2, 3, 4], &[5, 6], 9, 10).expect("fits");
        assert!(!cut);
        assert_eq!(e.ids, vec![1, 2, 3, 4, 5, 6, 9]);
        assert_eq!(e.prompt_len, 4);
        let (e, cut) = TokenizedExample::new(&[1, 2, 3, 4], &[5, 6], 9, 5).expect("fits");
        assert!(cut);
        assert_eq!(e.ids, vec![3, 4, 5, 6, 9]);
        assert_eq!((e.prompt_len, e.target_len()), (2, 3));
        let (e, cut) = TokenizedExample::new(&[1, 2], &[5, 6, 7, 8], 9, 3).expect("fits");
        assert!(cut);
        assert_eq!(e.ids, vec![2, 5, 6]);
        assert!(TokenizedExample::new(&[], &[5], 9, 8).is_none());
        assert!(TokenizedExample::new(&[1], &[], 9, 8).is_none());
    }

    #[test]
    fn config_validation_and_lengths() {
        let cfg = LoraTrainConfig::default();
        cfg.validate().expect("default is valid");
        assert_eq!(cfg.total_steps(1000), 150);
        let cfg = LoraTrainConfig { length: TrainLength::Epochs(2), batch_size: 8, ..cfg };
        assert_eq!(cfg.total_steps(17), 6);
        for bad in [
            LoraTrainConfig { rank: 0, ..cfg.clone() },
            LoraTrainConfig { lr: f64::NAN, ..cfg.clone() },
            LoraTrainConfig { max_len: 1, ..cfg.clone() },
            LoraTrainConfig { targets: vec![], ..cfg.clone() },
            LoraTrainConfig { length: TrainLength::Steps(0), ..cfg.clone() },
        ] {
            assert!(matches!(bad.validate(), Err(MoleError::Training(_))), "{bad:?}");
        }
    }
}
