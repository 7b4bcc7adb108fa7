//! RouterLoRA, RAMoLE's gate: one low-rank pair `A_g` `[r_g, d_in]`, `B_g` `[d_out, r_g]` per adapted
//! linear layer of every block, shared by every adapter and every row. A [`Composition::Gate`] row
//! weighs its retrieved adapters per token with it (`ramole_core::lora` computes it inside the batched
//! kernel); there are no per-adapter parameters, so the gate weighs adapters it never saw.
//!
//! On disk a gate is a folder: `gate_config.json` (`format` [`GATE_FORMAT`], `rank`, `targets`, the
//! base's `num_hidden_layers` and `hidden_size`) and `gate.safetensors`
//! (`model.layers.N.<module>.gate_A.weight` / `gate_B.weight`, f32).
//!
//! [`Composition::Gate`]: ramole_core::lora::Composition::Gate

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use ramole_core::lora::GateLayer;
use ramole_models::llama::{LinearKind, LlamaConfig};
use ramole_models::weights::{HostTensor, SafetensorsWeights, WeightSource};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::MoleError;

/// The `format` of `gate_config.json`.
pub const GATE_FORMAT: &str = "ramole-gate/1";
/// The configuration file of a gate folder.
pub const GATE_CONFIG: &str = "gate_config.json";
/// The weights file of a gate folder.
pub const GATE_WEIGHTS: &str = "gate.safetensors";
/// The largest gate rank.
pub const MAX_GATE_RANK: usize = 1024;

/// `gate_config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// [`GATE_FORMAT`].
    pub format: String,
    /// `r_g`.
    pub rank: usize,
    /// The adapted linear layers (`q_proj`, `v_proj`, …), in every block.
    pub targets: Vec<String>,
    /// The base model's number of blocks.
    pub num_hidden_layers: usize,
    /// The base model's hidden size.
    pub hidden_size: usize,
}

/// The gate of one linear layer of one block.
#[derive(Module, Debug)]
pub struct GateLinear<B: Backend> {
    /// `A_g`: `[r_g, d_in]`.
    pub gate_a: Param<Tensor<B, 2>>,
    /// `B_g`: `[d_out, r_g]`.
    pub gate_b: Param<Tensor<B, 2>>,
    /// The block.
    pub layer: usize,
    /// The linear layer's slot ([`LinearKind::slot`]).
    pub slot: usize,
}

/// A RouterLoRA gate for a Llama model (module docs).
#[derive(Module, Debug)]
pub struct RouterGate<B: Backend> {
    /// One entry per gated linear layer, by block then slot.
    pub linears: Vec<GateLinear<B>>,
}

impl<B: Backend> RouterGate<B> {
    /// A fresh gate of rank `rank` on `targets` of every block of `base`: `A_g` Kaiming-uniform
    /// (`U(−1/√d_in, 1/√d_in)`), `B_g = 0`, from `seed`. With `B_g = 0` every key is zero, so the gate
    /// starts as the uniform mixture `1/k` of LoraRetriever, and training moves it from there.
    pub fn init(base: &LlamaConfig, rank: usize, targets: &[LinearKind], seed: u64, device: &B::Device) -> Self {
        let linears = crate::train::init_pairs(base, rank, targets, seed, device)
            .into_iter()
            .map(|(layer, kind, gate_a, gate_b)| GateLinear { gate_a, gate_b, layer, slot: kind.slot() })
            .collect();
        Self { linears }
    }

    /// The gate of `kind` in block `layer`, if it has one.
    pub fn layer(&self, layer: usize, kind: LinearKind) -> Option<GateLayer<B>> {
        self.linears
            .iter()
            .find(|l| l.layer == layer && l.slot == kind.slot())
            .map(|l| GateLayer { a: l.gate_a.val(), b: l.gate_b.val() })
    }

    /// `r_g` (0 for a gate without layers).
    pub fn rank(&self) -> usize {
        self.linears.first().map_or(0, |l| l.gate_a.dims()[0])
    }

    /// The gated linear layers (every block has the same).
    pub fn targets(&self) -> Vec<LinearKind> {
        let mut kinds: Vec<LinearKind> = self.linears.iter().map(|l| LinearKind::ALL[l.slot]).collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }

    /// Writes the gate folder (module docs) for a model of `base`'s shape, whole or not at all: the
    /// files go to a staged sibling folder that is renamed into place. An existing `dir` is replaced
    /// only with `overwrite`.
    pub fn save(&self, dir: &Path, base: &LlamaConfig, overwrite: bool) -> Result<(), MoleError> {
        let config = GateConfig {
            format: GATE_FORMAT.into(),
            rank: self.rank(),
            targets: self.targets().iter().map(|k| k.name().to_owned()).collect(),
            num_hidden_layers: base.num_hidden_layers,
            hidden_size: base.hidden_size,
        };
        let config_bytes = serde_json::to_vec_pretty(&config)
            .map_err(|e| MoleError::Config { path: dir.join(GATE_CONFIG), message: e.to_string() })?;
        let tensors: Vec<(String, HostTensor)> = self
            .linears
            .iter()
            .flat_map(|l| {
                let prefix = format!("model.layers.{}.{}", l.layer, LinearKind::ALL[l.slot].path());
                [
                    (format!("{prefix}.gate_A.weight"), l.gate_a.val()),
                    (format!("{prefix}.gate_B.weight"), l.gate_b.val()),
                ]
            })
            .map(|(name, t)| {
                let data = t.into_data();
                (name, HostTensor { shape: data.shape.to_vec(), data: data.iter::<f32>().collect() })
            })
            .collect();
        let weights = ramole_models::weights::serialize_f32(&tensors, &dir.join(GATE_WEIGHTS))?;
        crate::peft::write_folder(dir, &[(GATE_CONFIG, &config_bytes), (GATE_WEIGHTS, &weights)], overwrite)
    }

    /// Reads a gate folder for a model of `base`'s shape: the configuration must name known linear
    /// layers and match the base's blocks and hidden size; every tensor must be present with its shape
    /// and finite values, and no other tensor may be in the file.
    pub fn load(dir: &Path, base: &LlamaConfig, device: &B::Device) -> Result<Self, MoleError> {
        let config_path = dir.join(GATE_CONFIG);
        let text = ramole_core::fs::read_text(&config_path, ramole_core::fs::MAX_TEXT_BYTES)
            .map_err(|source| MoleError::Io { path: config_path.clone(), source })?;
        let bad = |message: String| MoleError::Config { path: config_path.clone(), message };
        let config: GateConfig =
            serde_json::from_str(&text).map_err(|e| bad(format!("not a gate configuration: {e}")))?;
        if config.format != GATE_FORMAT {
            return Err(bad(format!("format `{}` is not `{GATE_FORMAT}`", config.format)));
        }
        if config.rank == 0 || config.rank > MAX_GATE_RANK {
            return Err(bad(format!("rank {} is not in 1..={MAX_GATE_RANK}", config.rank)));
        }
        if (config.num_hidden_layers, config.hidden_size) != (base.num_hidden_layers, base.hidden_size) {
            return Err(bad(format!(
                "trained for {} blocks of width {}, the model has {} of width {}",
                config.num_hidden_layers, config.hidden_size, base.num_hidden_layers, base.hidden_size
            )));
        }
        let mut kinds = Vec::new();
        for t in &config.targets {
            kinds.push(LinearKind::from_name(t).ok_or_else(|| bad(format!("unknown target `{t}`")))?);
        }
        if kinds.is_empty() {
            return Err(bad("no target".into()));
        }
        kinds.sort();
        kinds.dedup();
        let weights = SafetensorsWeights::open(dir.join(GATE_WEIGHTS))?;
        let mut by_key: BTreeMap<(usize, usize), GateLinear<B>> = BTreeMap::new();
        for layer in 0..base.num_hidden_layers {
            for &kind in &kinds {
                let [d_out, d_in] = base.linear_shape(kind);
                let prefix = format!("model.layers.{layer}.{}", kind.path());
                let a = weights.load(&format!("{prefix}.gate_A.weight"), &[config.rank, d_in])?;
                let b = weights.load(&format!("{prefix}.gate_B.weight"), &[d_out, config.rank])?;
                by_key.insert(
                    (layer, kind.slot()),
                    GateLinear {
                        gate_a: Param::from_tensor(a.into_tensor(device)),
                        gate_b: Param::from_tensor(b.into_tensor(device)),
                        layer,
                        slot: kind.slot(),
                    },
                );
            }
        }
        let expected = 2 * by_key.len();
        if weights.names().len() != expected {
            return Err(MoleError::Tensor {
                path: dir.join(GATE_WEIGHTS),
                tensor: "*".into(),
                message: format!("{} tensors where the configuration describes {expected}", weights.names().len()),
            });
        }
        Ok(Self { linears: by_key.into_values().collect() })
    }
}

/// One example for gate training: a tokenized `{input, target}` and the adapters retrieved for its
/// input (names in the pool), which the gate learns to weigh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateExample {
    /// The tokens and where the target starts.
    pub example: crate::train::TokenizedExample,
    /// The retrieved adapters.
    pub adapters: Vec<String>,
}

/// How a gate is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateTrainConfig {
    /// `r_g`.
    pub rank: usize,
    /// The gated linear layers (every layer an adapter of the examples adapts must be one).
    pub targets: Vec<LinearKind>,
    /// Optimisation steps.
    pub steps: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// AdamW's learning rate.
    pub lr: f64,
    /// AdamW's weight decay.
    pub weight_decay: f64,
    /// LoRA dropout: each adapter of an example's set is dropped with this probability, at least
    /// [`GateTrainConfig::min_kept`] kept (all when the set is smaller). In `[0, 1)`.
    pub dropout: f64,
    /// Adapters kept per example at least, whatever the dropout.
    pub min_kept: usize,
    /// Seed of the initialisation, the batch order and the dropout.
    pub seed: u64,
}

impl Default for GateTrainConfig {
    /// Rank 8 on `q_proj` and `v_proj` (the zoo's targets), 200 steps of 8, lr 1e-3, weight decay 0.01,
    /// dropout 0.2 keeping at least 2, seed 0.
    fn default() -> Self {
        Self {
            rank: 8,
            targets: vec![LinearKind::Q, LinearKind::V],
            steps: 200,
            batch_size: 8,
            lr: 1e-3,
            weight_decay: 0.01,
            dropout: 0.2,
            min_kept: 2,
            seed: 0,
        }
    }
}

impl GateTrainConfig {
    /// Checks the settings; the error names the first one out of range.
    pub fn validate(&self) -> Result<(), MoleError> {
        let bad = |m: String| Err(MoleError::Training(m));
        if self.rank == 0 || self.rank > MAX_GATE_RANK {
            return bad(format!("gate rank {} is not in 1..={MAX_GATE_RANK}", self.rank));
        }
        if self.targets.is_empty() {
            return bad("the gate has no target".into());
        }
        if self.steps == 0 || self.batch_size == 0 || self.min_kept == 0 {
            return bad("steps, batch size and min kept must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate {} is not a finite number > 0", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight decay {} is not a finite number ≥ 0", self.weight_decay));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} is not in [0, 1)", self.dropout));
        }
        Ok(())
    }
}

/// What a gate training run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateTrainReport {
    /// The configuration.
    pub config: GateTrainConfig,
    /// Examples available.
    pub examples: usize,
    /// Loss per step.
    pub losses: Vec<f64>,
    /// Tokens seen.
    pub tokens: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Trains a RouterLoRA gate on `examples`: the base `model` and every adapter in `pool` stay frozen;
/// each step composes each example's retrieved adapters (after LoRA dropout) with the gate in one
/// heterogeneous batch, through the serving kernel ([`crate::BatchAdapters::llama_lora_gated`]), and
/// AdamW updates the gate from the loss on the target tokens and EOS. The gate starts as the uniform
/// mixture ([`RouterGate::init`]). Deterministic for a seed.
pub fn train_gate<B: burn::tensor::backend::AutodiffBackend>(
    model: ramole_models::llama::LlamaForCausalLM<B>,
    base: &LlamaConfig,
    pool: &crate::AdapterPool,
    examples: &[GateExample],
    cfg: &GateTrainConfig,
    device: &B::Device,
    on_step: &mut dyn FnMut(&crate::train::StepReport),
) -> Result<(RouterGate<B::InnerBackend>, GateTrainReport), MoleError> {
    use burn::module::AutodiffModule;
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    use burn::tensor::ElementConversion;
    use rand::seq::SliceRandom;

    cfg.validate()?;
    if examples.is_empty() {
        return Err(MoleError::Training("no gate training example".into()));
    }
    for (i, e) in examples.iter().enumerate() {
        if e.adapters.is_empty() || e.example.prompt_len == 0 || e.example.target_len() == 0 {
            return Err(MoleError::Training(format!("gate example {i} has no adapter, no input or no target")));
        }
        for name in &e.adapters {
            let adapter = pool
                .get(name)
                .ok_or_else(|| MoleError::Training(format!("gate example {i}: adapter `{name}` is not in the pool")))?;
            if let Some((_, kind)) = adapter.targets().find(|(_, k)| !cfg.targets.contains(k)) {
                return Err(MoleError::Training(format!(
                    "adapter `{name}` adapts `{}`, which the gate does not target",
                    kind.name()
                )));
            }
        }
    }
    let model = model.no_grad();
    let mut gate = RouterGate::<B>::init(base, cfg.rank, &cfg.targets, cfg.seed, device);
    let mut optim =
        AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(cfg.weight_decay as f32).init::<B, RouterGate<B>>();
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x6761_7465_5f74_726e);
    let mut order: Vec<usize> = Vec::new();
    let start = std::time::Instant::now();
    let mut report =
        GateTrainReport { config: cfg.clone(), examples: examples.len(), losses: Vec::new(), tokens: 0, seconds: 0.0 };
    for step in 1..=cfg.steps {
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
        let rows: Vec<crate::RowRequest> = batch.iter().map(|e| dropout_row(&e.adapters, cfg, &mut rng)).collect();
        let names: Vec<String> = (0..rows.len()).map(|i| format!("step {step} example {i}")).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let adapters = crate::BatchAdapters::resolve(pool, &rows, &name_refs)?;
        let state = adapters.llama_lora_gated(base, Some(&gate), device)?;
        let tokens: Vec<&crate::train::TokenizedExample> = batch.iter().map(|e| &e.example).collect();
        let out = crate::train::loss_with(&model, &state, &tokens, device);
        let loss = out.loss.clone().into_scalar().elem::<f64>();
        if !loss.is_finite() {
            return Err(MoleError::Training(format!(
                "the gate's loss is {loss} at step {step}: training diverged (try a lower learning rate)"
            )));
        }
        let grads = GradientsParams::from_grads(out.loss.backward(), &gate);
        gate = optim.step(cfg.lr, gate, grads);
        report.tokens += out.tokens;
        report.losses.push(loss);
        let secs = start.elapsed().as_secs_f64();
        on_step(&crate::train::StepReport {
            step,
            steps: cfg.steps,
            loss,
            tokens_per_sec: report.tokens as f64 / secs.max(1e-9),
        });
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok((gate.valid(), report))
}

/// One example's row: its adapters after LoRA dropout (each dropped with probability `dropout`, at
/// least `min_kept` kept), weights 1/k (unused by the gate), composed by the gate.
fn dropout_row(adapters: &[String], cfg: &GateTrainConfig, rng: &mut StdRng) -> crate::RowRequest {
    let mut kept: Vec<&String> = adapters.iter().filter(|_| rng.random::<f64>() >= cfg.dropout).collect();
    let floor = cfg.min_kept.min(adapters.len());
    if kept.len() < floor {
        // Refill from the dropped ones, in a random order.
        let mut dropped: Vec<&String> = adapters.iter().filter(|a| !kept.contains(a)).collect();
        use rand::seq::SliceRandom;
        dropped.shuffle(rng);
        kept.extend(dropped.into_iter().take(floor - kept.len()));
        kept.sort_by_key(|a| adapters.iter().position(|b| b == *a));
    }
    let w = 1.0 / kept.len() as f32;
    crate::RowRequest {
        adapters: kept.into_iter().map(|a| (a.clone(), w)).collect(),
        composition: ramole_core::lora::Composition::Gate,
    }
}
