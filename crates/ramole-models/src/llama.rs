//! Llama-family decoder: token embedding, `num_hidden_layers` blocks of (RMSNorm, attention with RoPE
//! and grouped-query heads, RMSNorm, SwiGLU MLP), final RMSNorm, LM head (or the tied embedding).

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::ModelError;

/// The largest `config.json` read.
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// The largest size (vocabulary, widths, heads, positions) a configuration may declare.
pub const MAX_CONFIG_SIZE: usize = 1 << 24;
/// The most RoPE table values (`max_position_embeddings × head_dim`) a configuration may need: 256 MiB
/// of f32, four times what a 128 k-context model with 128-wide heads needs.
pub const MAX_ROPE_TABLE: usize = 1 << 26;
/// The most layers a configuration may declare (real models have at most a few hundred).
pub const MAX_LAYERS: usize = 4096;

/// The hyper-parameters of a Llama model, read from an HF `config.json` or GGUF metadata.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width `d`.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Longest sequence (prompt plus generated tokens) the model takes.
    pub max_position_embeddings: usize,
    /// Whether the LM head is the token embedding.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token, if any.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens.
    pub eos_token_ids: Vec<u32>,
}

impl LlamaConfig {
    /// Reads an HF `config.json`. Accepts both layouts: `rope_parameters.rope_theta` (transformers 5)
    /// and top-level `rope_theta`; an explicit `head_dim` or `hidden_size / num_attention_heads`.
    pub fn from_hf_file(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let text = ramole_core::fs::read_text(path, MAX_CONFIG_BYTES).map_err(|e| ModelError::io(path, e))?;
        Self::from_hf_str(&text).map_err(|m| ModelError::config(path, m))
    }

    /// Parses and validates the text of an HF `config.json` (what [`Self::from_hf_file`] does after
    /// reading the file); the error says what is wrong.
    pub fn from_hf_str(text: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        if !v.is_object() {
            return Err("not a JSON object".into());
        }
        Self::from_hf_json(&v)
    }

    fn from_hf_json(v: &Value) -> Result<Self, String> {
        if let Some(mt) = v.get("model_type").and_then(Value::as_str)
            && !matches!(mt, "llama" | "mistral" | "qwen2" | "smollm" | "smollm2")
        {
            return Err(format!("model_type `{mt}` is not a Llama-family model"));
        }
        let int = |k: &str| -> Result<usize, String> {
            v.get(k)
                .and_then(Value::as_u64)
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| format!("missing or invalid `{k}` (a non-negative integer)"))
        };
        // An optional integer: absent or null is `None`, anything but a non-negative integer an error.
        let opt_int = |k: &str| -> Result<Option<u64>, String> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x.as_u64().map(Some).ok_or_else(|| format!("`{k}` is {x}, not a non-negative integer")),
            }
        };
        let token_id = |k: &str, x: u64| -> Result<u32, String> {
            u32::try_from(x).map_err(|_| format!("`{k}` {x} is not a valid token id"))
        };
        let hidden_size = int("hidden_size")?;
        let num_attention_heads = int("num_attention_heads")?;
        let head_dim = match opt_int("head_dim")? {
            Some(h) => usize::try_from(h).map_err(|_| format!("`head_dim` {h} is too large"))?,
            None => hidden_size.checked_div(num_attention_heads).unwrap_or(0),
        };
        let rope_theta = v
            .get("rope_parameters")
            .and_then(|p| p.get("rope_theta"))
            .or_else(|| v.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10000.0);
        if let Some(rt) = v.get("rope_parameters").and_then(|p| p.get("rope_type")).and_then(Value::as_str)
            && rt != "default"
        {
            return Err(format!("rope_type `{rt}` is not supported (only `default`)"));
        }
        if v.get("rope_scaling").is_some_and(|s| !s.is_null()) {
            return Err("rope_scaling is not supported".into());
        }
        if v.get("attention_bias").and_then(Value::as_bool) == Some(true)
            || v.get("mlp_bias").and_then(Value::as_bool) == Some(true)
        {
            return Err("attention_bias / mlp_bias are not supported".into());
        }
        if let Some(act) = v.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(format!("hidden_act `{act}` is not supported (only `silu`)"));
        }
        let eos_token_ids = match v.get("eos_token_id") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_u64().ok_or_else(|| format!("`eos_token_id` holds {x}, not a token id")))
                .map(|x| x.and_then(|x| token_id("eos_token_id", x)))
                .collect::<Result<Vec<_>, _>>()?,
            _ => opt_int("eos_token_id")?.map(|x| token_id("eos_token_id", x)).transpose()?.into_iter().collect(),
        };
        let cfg = Self {
            vocab_size: int("vocab_size")?,
            hidden_size,
            intermediate_size: int("intermediate_size")?,
            num_hidden_layers: int("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: match opt_int("num_key_value_heads")? {
                Some(x) => usize::try_from(x).map_err(|_| format!("`num_key_value_heads` {x} is too large"))?,
                None => num_attention_heads,
            },
            head_dim,
            rms_norm_eps: v.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            rope_theta,
            max_position_embeddings: int("max_position_embeddings")?,
            tie_word_embeddings: v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            bos_token_id: opt_int("bos_token_id")?.map(|x| token_id("bos_token_id", x)).transpose()?,
            eos_token_ids,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the sizes fit together (heads divide, head_dim even for RoPE, nothing zero, nothing
    /// beyond [`MAX_CONFIG_SIZE`] or [`MAX_LAYERS`], the products of sizes that make weight shapes
    /// without overflow, the floats finite and positive).
    pub fn validate(&self) -> Result<(), String> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((k, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{k}` must be positive"));
        }
        if let Some((k, v)) = sizes.iter().find(|(_, v)| *v > MAX_CONFIG_SIZE) {
            return Err(format!("`{k}` {v} is over the limit of {MAX_CONFIG_SIZE}"));
        }
        if self.num_hidden_layers > MAX_LAYERS {
            return Err(format!("`num_hidden_layers` {} is over the limit of {MAX_LAYERS}", self.num_hidden_layers));
        }
        // The weight shapes are products of two sizes: with each size at most 2^24, no product
        // (nor q·d) overflows a 64-bit usize; checked anyway for 32-bit targets.
        let q = self.num_attention_heads.checked_mul(self.head_dim);
        let kv = self.num_key_value_heads.checked_mul(self.head_dim);
        let products = [q, kv, q.and_then(|q| q.checked_mul(self.hidden_size))];
        if products.iter().any(Option::is_none)
            || [self.vocab_size, self.intermediate_size].iter().any(|&n| n.checked_mul(self.hidden_size).is_none())
        {
            return Err("the sizes overflow when multiplied into weight shapes".into());
        }
        // The RoPE tables hold `max_position_embeddings × head_dim` values (cos and sin, half each).
        if self.max_position_embeddings.saturating_mul(self.head_dim) > MAX_ROPE_TABLE {
            return Err(format!(
                "max_position_embeddings {} × head_dim {} is over the limit of {MAX_ROPE_TABLE} RoPE table values",
                self.max_position_embeddings, self.head_dim
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if !(self.rms_norm_eps > 0.0
            && self.rope_theta > 0.0
            && self.rms_norm_eps.is_finite()
            && self.rope_theta.is_finite())
        {
            return Err("rms_norm_eps and rope_theta must be positive finite numbers".into());
        }
        Ok(())
    }

    /// The shape `[out, in]` (PyTorch layout) of the linear layer `module` (`q_proj`, …, `down_proj`).
    pub fn linear_shape(&self, module: LinearKind) -> [usize; 2] {
        let (d, q, kv, f) = (
            self.hidden_size,
            self.num_attention_heads * self.head_dim,
            self.num_key_value_heads * self.head_dim,
            self.intermediate_size,
        );
        match module {
            LinearKind::Q => [q, d],
            LinearKind::K | LinearKind::V => [kv, d],
            LinearKind::O => [d, q],
            LinearKind::Gate | LinearKind::Up => [f, d],
            LinearKind::Down => [d, f],
        }
    }
}

/// The linear layers of a Llama block, the modules a LoRA adapter can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinearKind {
    /// `self_attn.q_proj`
    Q,
    /// `self_attn.k_proj`
    K,
    /// `self_attn.v_proj`
    V,
    /// `self_attn.o_proj`
    O,
    /// `mlp.gate_proj`
    Gate,
    /// `mlp.up_proj`
    Up,
    /// `mlp.down_proj`
    Down,
}

impl LinearKind {
    /// All of them, in slot order.
    pub const ALL: [Self; 7] = [Self::Q, Self::K, Self::V, Self::O, Self::Gate, Self::Up, Self::Down];

    /// The HF module name (`q_proj`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    /// The module path inside a block (`self_attn.q_proj`, `mlp.up_proj`, …).
    pub fn path(self) -> &'static str {
        match self {
            Self::Q => "self_attn.q_proj",
            Self::K => "self_attn.k_proj",
            Self::V => "self_attn.v_proj",
            Self::O => "self_attn.o_proj",
            Self::Gate => "mlp.gate_proj",
            Self::Up => "mlp.up_proj",
            Self::Down => "mlp.down_proj",
        }
    }

    /// The slot index (position in [`LinearKind::ALL`]).
    pub fn slot(self) -> usize {
        self as usize
    }

    /// Parses an HF module name (`q_proj`, …).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Parses a full module path `model.layers.{i}.self_attn.q_proj` into `(i, kind)`.
    pub fn parse_path(path: &str) -> Option<(usize, Self)> {
        let rest = path.strip_prefix("model.layers.")?;
        let (layer, module) = rest.split_once('.')?;
        let layer = layer.parse().ok()?;
        Self::ALL.into_iter().find(|k| k.path() == module).map(|k| (layer, k))
    }
}

impl std::fmt::Display for LinearKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for LinearKind {
    type Err = String;

    /// Parses an HF module name (`q_proj`, …).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or_else(|| {
            format!("`{s}` is not a Llama linear layer (one of {})", Self::ALL.map(Self::name).join(", "))
        })
    }
}

/// Serialized as its HF module name (`"q_proj"`), as PEFT's `target_modules` lists it.
impl serde::Serialize for LinearKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for LinearKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// The model.

use burn::module::{Module, Param};
use burn::nn::{Embedding, RmsNorm};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use ramole_core::attention::{self, AttentionShape};
use ramole_core::kv::KvBuffer;
use ramole_core::lora::{HostRows, RowLora, select_rows};

use crate::linear::{LinearWeight, PackedWeight, QuantizedWeight, TokenEmbedding, WeightFormat, host_f32};
use crate::weights::{HostTensor, WeightSource};
use ramole_core::gemm::PackedMatrix;

/// The per-row LoRA state of a batch for a Llama model: for each layer and each [`LinearKind`] slot,
/// the row pairs of that linear layer, or `None` where no row's adapters target it.
///
/// Built by `ramole-mole` from the batch's unique adapters and mapping matrix; passed explicitly to
/// [`LlamaForCausalLM::forward`] (no hidden per-thread state).
#[derive(Debug, Clone)]
pub struct LlamaLora<B: Backend> {
    /// `layers[i][kind.slot()]`.
    pub layers: Vec<[Option<RowLora<B>>; 7]>,
}

impl<B: Backend> LlamaLora<B> {
    /// No adapters on any layer (for `n_layers` layers).
    pub fn none(n_layers: usize) -> Self {
        Self { layers: (0..n_layers).map(|_| Default::default()).collect() }
    }

    /// Whether no layer has an adapter.
    pub fn is_empty(&self) -> bool {
        self.layers.iter().all(|l| l.iter().all(Option::is_none))
    }

    /// Keeps only the given rows (in that order), for batches whose rows finish at different times.
    pub fn select_rows(&self, rows: &[usize]) -> Self {
        let layers =
            self.layers.iter().map(|slots| slots.clone().map(|s| s.as_ref().map(|r| r.select_rows(rows)))).collect();
        Self { layers }
    }

    fn get(&self, layer: usize, kind: LinearKind) -> Option<&RowLora<B>> {
        self.layers.get(layer).and_then(|l| l[kind.slot()].as_ref())
    }
}

/// A linear layer of block `layer` with the batch's per-row LoRA, if any.
fn project<B: Backend>(
    lin: &LinearWeight<B>,
    x: Tensor<B, 3>,
    lora: Option<&LlamaLora<B>>,
    layer: usize,
    kind: LinearKind,
) -> Tensor<B, 3> {
    lin.forward_lora(x, lora.and_then(|l| l.get(layer, kind)))
}

/// Grouped-query self-attention with rotary position embeddings.
#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    /// Query projection, weight `[d, heads·head_dim]`.
    pub q_proj: LinearWeight<B>,
    /// Key projection, weight `[d, kv_heads·head_dim]`.
    pub k_proj: LinearWeight<B>,
    /// Value projection, weight `[d, kv_heads·head_dim]`.
    pub v_proj: LinearWeight<B>,
    /// Output projection, weight `[heads·head_dim, d]`.
    pub o_proj: LinearWeight<B>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

/// SwiGLU feed-forward: `down(silu(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    /// Gate projection.
    pub gate_proj: LinearWeight<B>,
    /// Up projection.
    pub up_proj: LinearWeight<B>,
    /// Down projection.
    pub down_proj: LinearWeight<B>,
}

/// One transformer block.
#[derive(Module, Debug)]
pub struct LlamaDecoderLayer<B: Backend> {
    /// Attention.
    pub self_attn: LlamaAttention<B>,
    /// Feed-forward.
    pub mlp: LlamaMlp<B>,
    /// RMSNorm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// RMSNorm before the feed-forward.
    pub post_attention_layernorm: RmsNorm<B>,
}

/// The decoder stack (HF `model.*`).
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    /// Token embedding `[vocab, d]`.
    pub embed_tokens: TokenEmbedding<B>,
    /// The blocks.
    pub layers: Vec<LlamaDecoderLayer<B>>,
    /// Final RMSNorm.
    pub norm: RmsNorm<B>,
}

/// A Llama causal language model (HF `LlamaForCausalLM`).
#[derive(Module, Debug)]
pub struct LlamaForCausalLM<B: Backend> {
    /// The decoder.
    pub model: LlamaModel<B>,
    /// LM head, weight `[d, vocab]`. For a model with tied embeddings (`tie_word_embeddings`) it is
    /// the token embedding's matrix when that is kept quantized, else a contiguous transposed copy of
    /// it made at load time: a transposed view would be copied on every call by some backends.
    pub lm_head: LinearWeight<B>,
    tied: bool,
    /// RoPE tables `cos(p·fᵢ)`, `sin(p·fᵢ)` for every position `p` below `max_positions`, `[positions,
    /// head_dim / 2]`, with `fᵢ = 1 / θ^(2i/head_dim)` and the angle computed in f32 as transformers does.
    rope_cos: Tensor<B, 2>,
    rope_sin: Tensor<B, 2>,
    max_positions: usize,
}

/// Keys and values of the tokens seen so far, per layer: `[batch, kv_heads, seq, head_dim]` each, in
/// buffers preallocated for a capacity and written in place ([`ramole_core::kv::KvBuffer`]): a
/// decoding step writes its new keys and values, it does not copy the past.
///
/// Rows are left-padded to one shared length; [`KvCache::select_rows`], [`KvCache::merge`] and
/// [`KvCache::trim_front`] let rows leave and join a running batch (continuous batching).
#[derive(Debug)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(KvBuffer<B>, KvBuffer<B>)>>,
    /// Positions each layer's buffers are allocated for on their first write.
    capacity: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `n_layers` layers (buffers sized by their first write, growing by doubling).
    pub fn new(n_layers: usize) -> Self {
        Self::with_capacity(n_layers, 0)
    }

    /// An empty cache whose buffers are allocated for `capacity` positions on their first write (the
    /// longest prompt plus the most new tokens: a batch that never grows them).
    pub fn with_capacity(n_layers: usize, capacity: usize) -> Self {
        Self { layers: (0..n_layers).map(|_| None).collect(), capacity }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.len())
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows cached (0 when nothing is).
    pub fn rows(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.rows())
    }

    /// Positions the buffers hold before they must grow.
    pub fn capacity(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(self.capacity, |(k, _)| k.capacity())
    }

    /// Keeps only the given rows (in that order), for batches whose rows finish at different times.
    pub fn select_rows(&mut self, rows: &[usize]) {
        self.rebuild(|k| select_rows(k, rows));
    }

    /// Drops the first `n` positions of every row (positions that are padding for every row once the
    /// rows that needed them have left).
    pub fn trim_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.rebuild(|k| {
            let len = k.dims()[2];
            k.narrow(2, n.min(len), len - n.min(len))
        });
    }

    /// Appends the rows of `other` after this cache's rows. The shorter of the two is left-padded with
    /// zeros to the other's length (its rows' padding grows by the difference, which the caller's
    /// attention mask must cover); returns the padding added to `(self's rows, other's rows)`.
    pub fn merge(&mut self, other: KvCache<B>) -> (usize, usize) {
        let (la, lb) = (self.len(), other.len());
        if other.rows() == 0 {
            return (0, 0);
        }
        if self.rows() == 0 {
            *self = other;
            return (0, 0);
        }
        let t = la.max(lb);
        let capacity = self.capacity().max(other.capacity()).max(t);
        let pad = |x: Tensor<B, 4>, by: usize| -> Tensor<B, 4> {
            if by == 0 {
                return x;
            }
            let [b, h, _, d] = x.dims();
            Tensor::cat(vec![Tensor::zeros([b, h, by, d], &x.device()), x], 2)
        };
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            if let (Some((ka, va)), Some((kb, vb))) = (mine.take(), theirs) {
                let k = Tensor::cat(vec![pad(ka.view(), t - la), pad(kb.view(), t - lb)], 0);
                let v = Tensor::cat(vec![pad(va.view(), t - la), pad(vb.view(), t - lb)], 0);
                *mine = Some((KvBuffer::new(k, capacity), KvBuffer::new(v, capacity)));
            }
        }
        (t - la, t - lb)
    }

    fn rebuild(&mut self, f: impl Fn(Tensor<B, 4>) -> Tensor<B, 4>) {
        for layer in &mut self.layers {
            if let Some((k, v)) = layer.take() {
                let cap = k.capacity();
                *layer = Some((KvBuffer::new(f(k.view()), cap), KvBuffer::new(f(v.view()), cap)));
            }
        }
    }

    /// Appends the new keys/values of `layer`.
    fn append(&mut self, layer: usize, k: Tensor<B, 4>, v: Tensor<B, 4>) {
        match &mut self.layers[layer] {
            Some((kb, vb)) => {
                kb.append(k);
                vb.append(v);
            }
            slot @ None => *slot = Some((KvBuffer::new(k, self.capacity), KvBuffer::new(v, self.capacity))),
        }
    }

    /// [`Self::append`] from host values `[batch, seq, kv_heads, head_dim]` (`dims`), the projections'
    /// layout.
    fn append_host(&mut self, layer: usize, k: &[f32], v: &[f32], dims: [usize; 4], device: &B::Device) {
        match &mut self.layers[layer] {
            Some((kb, vb)) => {
                kb.append_host(k, dims[1]);
                vb.append_host(v, dims[1]);
            }
            slot @ None => {
                let buffer = |x: &[f32]| KvBuffer::from_host(x, dims, self.capacity, device);
                *slot = Some((buffer(k), buffer(v)));
            }
        }
    }

    /// Whether `layer` takes host values of `rows` rows of `kv_heads` heads of `head_dim` (`dims`) after
    /// `past` cached positions: its buffers hold exactly that in host memory the attention kernel reads
    /// in place, or it is empty (`past` 0) and the backend's buffers are such memory.
    fn takes_host(&self, layer: usize, past: usize, dims: [usize; 3]) -> bool {
        match self.layers.get(layer) {
            Some(None) => past == 0 && KvBuffer::<B>::holds_host_values(),
            Some(Some((kb, vb))) => {
                kb.len() == past
                    && kb.dims() == dims
                    && vb.dims() == dims
                    && kb.capacity() == vb.capacity()
                    && kb.with_host(|_| ()).is_some()
                    && vb.with_host(|_| ()).is_some()
            }
            None => false,
        }
    }

    /// The whole written sequence of `layer`'s keys and values, `[batch, kv_heads, len, head_dim]` each
    /// (views: no copy); `None` before anything was appended there.
    fn views(&self, layer: usize) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        let (kb, vb) = self.layers.get(layer)?.as_ref()?;
        Some((kb.view(), vb.view()))
    }
}

/// What one forward pass attends to: per row, position ids of the new tokens and the causal mask over
/// all (cached + new) keys, for rows left-padded to one length.
#[derive(Debug, Clone)]
pub struct AttentionInput<B: Backend> {
    /// `[batch, seq]` position of each new token (RoPE).
    pub positions: Tensor<B, 2, Int>,
    /// Padding slots at the start of each row.
    pads: Vec<usize>,
    /// Positions cached before the new ones.
    past: usize,
    /// The mask as a tensor (burn's attention), built on first use: the host kernel needs none.
    mask: std::cell::OnceCell<Tensor<B, 4>>,
    device: B::Device,
}

impl<B: Backend> AttentionInput<B> {
    /// Causal attention for left-padded rows: row `b` has `pads[b]` padding slots at the start of the
    /// sequence (cache included), `past` positions already cached and `seq` new tokens. Padding keys
    /// are masked; a padding query attends to itself only (its output is never used, and this keeps
    /// every softmax finite).
    pub fn left_padded(pads: &[usize], past: usize, seq: usize, device: &B::Device) -> Self {
        let mut pos = Vec::with_capacity(pads.len() * seq);
        for &pad in pads {
            pos.extend((0..seq).map(|t| (past + t).saturating_sub(pad) as i64));
        }
        Self {
            positions: Tensor::from_data(TensorData::new(pos, [pads.len(), seq]), device),
            pads: pads.to_vec(),
            past,
            mask: std::cell::OnceCell::new(),
            device: device.clone(),
        }
    }

    /// The additive mask, `[batch, 1, seq, past + seq]`: 0 where a query may attend to a key, -inf
    /// elsewhere.
    pub fn mask(&self) -> Tensor<B, 4> {
        self.mask
            .get_or_init(|| {
                let seq = self.positions.dims()[1];
                let total = self.past + seq;
                let mut mask = Vec::with_capacity(self.pads.len() * seq * total);
                for &pad in &self.pads {
                    for t in 0..seq {
                        let q = self.past + t; // absolute slot of this query
                        mask.extend((0..total).map(|s| {
                            let allowed = if q < pad { s == q } else { s >= pad && s <= q };
                            if allowed { 0.0f32 } else { f32::NEG_INFINITY }
                        }));
                    }
                }
                Tensor::from_data(TensorData::new(mask, [self.pads.len(), 1, seq, total]), &self.device)
            })
            .clone()
    }
}

/// Rotary embedding tables for the given positions.
struct Rope<B: Backend> {
    /// `[batch, 1, seq, head_dim / 2]`.
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    /// The same on the host (`cos`, `sin`), read on first use by [`Rope::apply_host`].
    host: std::cell::OnceCell<Option<(Vec<f32>, Vec<f32>)>>,
}

impl<B: Backend> Rope<B> {
    /// The rows of the model's tables (built once at load) for `positions` (each below the table's
    /// length: the engine checks prompt plus new tokens against the context).
    fn new(positions: &Tensor<B, 2, Int>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Self {
        let [b, t] = positions.dims();
        let [n, half] = cos.dims();
        let ids = positions.clone().reshape([b * t]).clamp(0, n as i64 - 1);
        let gather = |table: &Tensor<B, 2>| table.clone().select(0, ids.clone()).reshape([b, 1, t, half]);
        Self { cos: gather(cos), sin: gather(sin), host: std::cell::OnceCell::new() }
    }

    /// [`Self::apply`] on host values `q` and `k` (`[batch, seq, heads, head_dim]`, with `q_heads` and
    /// `k_heads` heads) in place; `false` (nothing done) where the tables cannot be read as f32 or do
    /// not fit them.
    fn apply_host(&self, q: &mut [f32], q_heads: usize, k: &mut [f32], k_heads: usize, head_dim: usize) -> bool {
        if !self.host_ready() {
            return false;
        }
        let Some((cos, sin)) = self.host.get().and_then(Option::as_ref) else { return false };
        let half = head_dim / 2;
        let fits = |x: &[f32], heads: usize| x.len() == cos.len() / half.max(1) * heads * head_dim;
        if half == 0 || 2 * half != head_dim || !fits(q, q_heads) || !fits(k, k_heads) {
            return false;
        }
        Self::rotate(q, q_heads, head_dim, cos, sin);
        Self::rotate(k, k_heads, head_dim, cos, sin);
        true
    }

    /// Whether the tables can be read on the host ([`Self::apply_host`] reads them once).
    fn host_ready(&self) -> bool {
        self.host.get_or_init(|| Some((host_f32(self.cos.clone())?, host_f32(self.sin.clone())?))).is_some()
    }

    /// Rotates every head of `x` (`[positions, heads, head_dim]`) by its position's `cos`, `sin`.
    fn rotate(x: &mut [f32], heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
        let half = head_dim / 2;
        // Position p of row b is entry b·seq + p of the tables: one position's heads in a chunk of x.
        for ((pos, c), s) in
            x.chunks_exact_mut(heads * head_dim).zip(cos.chunks_exact(half)).zip(sin.chunks_exact(half))
        {
            for head in pos.chunks_exact_mut(head_dim) {
                let (x1, x2) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x1[i], x2[i]);
                    x1[i] = a * c[i] - b * s[i];
                    x2[i] = b * c[i] + a * s[i];
                }
            }
        }
    }

    /// HF "rotate half" RoPE on `x` `[batch, heads, seq, head_dim]`.
    fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, t, d] = x.dims();
        let half = d / 2;
        let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
        let x2 = x.slice([0..b, 0..h, 0..t, half..d]);
        let out1 = x1.clone() * self.cos.clone() - x2.clone() * self.sin.clone();
        let out2 = x2 * self.cos.clone() + x1 * self.sin.clone();
        Tensor::cat(vec![out1, out2], 3)
    }
}

/// The per-call context shared by every block of one forward pass.
struct BlockCtx<'a, B: Backend> {
    rope: &'a Rope<B>,
    attn: &'a AttentionInput<B>,
    /// Query heads per KV head.
    rep: usize,
    /// The attention mask repeated for the query heads of one KV group, `[batch, 1, rep·seq, keys]`:
    /// built on first use (the host kernel needs none).
    mask: std::cell::OnceCell<Tensor<B, 4>>,
    /// Whether attention may run on the host kernel (a CPU backend without autodiff).
    host: bool,
    lora: Option<&'a LlamaLora<B>>,
}

impl<B: Backend> BlockCtx<'_, B> {
    /// The batch's LoRA update of a linear layer where it runs on the host: `Some(None)` without one,
    /// `Some(Some(rows))` for a [`RowLora::Host`], `None` for an update on the device.
    fn host_lora(&self, layer: usize, kind: LinearKind) -> Option<Option<&HostRows>> {
        match self.lora.and_then(|l| l.get(layer, kind)) {
            None => Some(None),
            Some(RowLora::Host(h)) => Some(Some(h)),
            Some(_) => None,
        }
    }

    /// The products of `norm(x)` with several linear layers of block `layer` (and their LoRA
    /// updates), with burn's norm and one product at a time.
    fn project_all<const N: usize>(
        &self,
        x: Tensor<B, 3>,
        norm: &RmsNorm<B>,
        layer: usize,
        lins: [(&LinearWeight<B>, LinearKind); N],
    ) -> [Tensor<B, 3>; N] {
        let x = norm.forward(x);
        lins.map(|(w, kind)| project(w, x.clone(), self.lora, layer, kind))
    }

    /// [`Self::project_all`] on the host from one read of `x` (the norm too) where every product and
    /// LoRA update runs there ([`Self::host`]): the products as host values (`[batch·seq, d_out]`
    /// each); `None` (nothing done) elsewhere.
    fn project_all_host<const N: usize>(
        &self,
        x: &Tensor<B, 3>,
        norm: &RmsNorm<B>,
        layer: usize,
        lins: [(&LinearWeight<B>, LinearKind); N],
    ) -> Option<[Vec<f32>; N]> {
        let [b, t, _] = x.dims();
        let host = self.host && lins.iter().all(|(w, kind)| w.on_host(b * t) && self.host_lora(layer, *kind).is_some());
        if !host {
            return None;
        }
        let x_host = host_rms_norm(norm, x.clone())?;
        Some(lins.map(|(w, kind)| {
            let lora = self.host_lora(layer, kind).flatten();
            w.host_product(&x_host, t, lora).expect("checked: on the host")
        }))
    }

    fn mask(&self) -> Tensor<B, 4> {
        self.mask
            .get_or_init(|| {
                let mask = self.attn.mask();
                let [b, _, t, keys] = mask.dims();
                let rep = self.rep;
                mask.reshape([b, 1, 1, t, keys]).expand([b, 1, rep, t, keys]).reshape([b, 1, rep * t, keys])
            })
            .clone()
    }
}

impl<B: Backend> LlamaAttention<B> {
    /// # Shapes
    /// - `x`: `[batch, seq, d]`
    /// - output: `[batch, seq, d]`
    fn forward(
        &self,
        x: Tensor<B, 3>,
        norm: &RmsNorm<B>,
        layer: usize,
        ctx: &BlockCtx<'_, B>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let (h, kvh, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let heads = |y: Tensor<B, 3>, n: usize| y.reshape([b, t, n, hd]).swap_dims(1, 2); // [b, n, t, hd]
        let lins = [(&self.q_proj, LinearKind::Q), (&self.k_proj, LinearKind::K), (&self.v_proj, LinearKind::V)];
        let device = x.device();
        let (q, k, v) = match ctx.project_all_host(&x, norm, layer, lins) {
            // On the host: RoPE there too where it can, then the values to the backend once.
            Some([mut q, mut k, v]) => {
                let rotated = ctx.rope.apply_host(&mut q, h, &mut k, kvh, hd);
                let t4 =
                    |y: Vec<f32>, n: usize| heads(Tensor::from_data(TensorData::new(y, [b, t, n * hd]), &device), n);
                let (q, k, v) = (t4(q, h), t4(k, kvh), t4(v, kvh));
                match rotated {
                    true => (q, k, v),
                    false => (ctx.rope.apply(q), ctx.rope.apply(k), v),
                }
            }
            None => {
                let [q, k, v] = ctx.project_all(x, norm, layer, lins);
                let (q, k, v) = (heads(q, h), heads(k, kvh), heads(v, kvh));
                (ctx.rope.apply(q), ctx.rope.apply(k), v)
            }
        };
        cache.append(layer, k, v);
        let out = match Self::host_attention(&q, cache, layer, ctx) {
            Some(out) => {
                // The output projection straight from the kernel's values where it runs on the host.
                if let Some(lora) = ctx.host_lora(layer, LinearKind::O)
                    && let Some(y) = self.o_proj.host_product(&out, t, lora)
                {
                    return Tensor::from_data(TensorData::new(y, [b, t, self.o_proj.dims()[1]]), &q.device());
                }
                Tensor::from_data(TensorData::new(out, [b, t, h * hd]), &q.device())
            }
            None => Self::burn_attention(q, kvh, cache, layer, ctx),
        };
        project(&self.o_proj, out, ctx.lora, layer, LinearKind::O)
    }

    /// Attention with burn's ops over the cache's views of `layer`, after this step's keys and values
    /// were appended.
    ///
    /// # Shapes
    /// - `q`: `[batch, heads, seq, head_dim]` (after RoPE)
    /// - output: `[batch, seq, heads · head_dim]`
    fn burn_attention(
        q: Tensor<B, 4>,
        kvh: usize,
        cache: &KvCache<B>,
        layer: usize,
        ctx: &BlockCtx<'_, B>,
    ) -> Tensor<B, 3> {
        let [b, h, t, hd] = q.dims();
        let rep = h / kvh;
        let (k, v) = cache.views(layer).expect("keys and values appended before attention"); // [b, kvh, s, hd]
        // Query heads of one KV group side by side: [b, kvh, rep·t, hd] (no copy of K/V per head).
        let q = q.reshape([b, kvh, rep * t, hd]);
        let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt()) + ctx.mask(); // [b, kvh, rep·t, s]
        let out = softmax(scores, 3).matmul(v); // [b, kvh, rep·t, hd]
        out.reshape([b, h, t, hd]).swap_dims(1, 2).reshape([b, t, h * hd])
    }

    /// Attention by the host kernel ([`ramole_core::attention`]: no score matrix held, the cache read
    /// in place) where the cache's buffers are host memory and the head size suits it; `None` sends
    /// the caller to burn's ops (the same values up to f32 rounding).
    ///
    /// # Shapes
    /// - `q`: `[batch, heads, seq, head_dim]` (after RoPE)
    /// - output: `[batch, seq, heads · head_dim]`, host values
    fn host_attention(q: &Tensor<B, 4>, cache: &KvCache<B>, layer: usize, ctx: &BlockCtx<'_, B>) -> Option<Vec<f32>> {
        if !ctx.host {
            return None;
        }
        let [b, h, t, hd] = q.dims();
        Self::host_attention_values(&host_f32(q.clone().swap_dims(1, 2))?, [b, t, h, hd], cache, layer, ctx)
    }

    /// [`Self::host_attention`] for queries as host values `[batch, seq, heads, head_dim]` (`dims`),
    /// the query projection's layout.
    fn host_attention_values(
        q: &[f32],
        dims: [usize; 4],
        cache: &KvCache<B>,
        layer: usize,
        ctx: &BlockCtx<'_, B>,
    ) -> Option<Vec<f32>> {
        let [b, t, h, hd] = dims;
        let (kb, vb) = cache.layers.get(layer)?.as_ref()?;
        let [_, kv_heads, _] = kb.dims();
        let shape = AttentionShape {
            rows: b,
            heads: h,
            kv_heads,
            seq: t,
            head_dim: hd,
            past: ctx.attn.past,
            capacity: kb.capacity(),
        };
        if kb.len() != ctx.attn.past + t || vb.capacity() != kb.capacity() || !hd.is_multiple_of(16) {
            return None;
        }
        kb.with_host(|k| vb.with_host(|v| attention::causal(q, k, v, &shape, &ctx.attn.pads)))??.ok()
    }
}

impl<B: Backend> LlamaMlp<B> {
    fn forward(&self, x: Tensor<B, 3>, norm: &RmsNorm<B>, layer: usize, ctx: &BlockCtx<'_, B>) -> Tensor<B, 3> {
        if ctx.host
            && let Some(y) = self.forward_host(&x, norm, layer, ctx)
        {
            return y;
        }
        let x = norm.forward(x);
        let lora = ctx.lora;
        let gate = project(&self.gate_proj, x.clone(), lora, layer, LinearKind::Gate);
        let up = project(&self.up_proj, x, lora, layer, LinearKind::Up);
        let hidden = if ctx.host { silu_mul_host(gate, up) } else { silu(gate) * up };
        project(&self.down_proj, hidden, lora, layer, LinearKind::Down)
    }
}

impl<B: Backend> LlamaMlp<B> {
    /// The whole MLP on host values: `x` read back once, its norm, the three products, their LoRA
    /// updates and `silu(gate) · up` on the host, the result written back once. `None` (nothing done) unless every
    /// product and every LoRA update of the layer run on the host.
    fn forward_host(
        &self,
        x: &Tensor<B, 3>,
        norm: &RmsNorm<B>,
        layer: usize,
        ctx: &BlockCtx<'_, B>,
    ) -> Option<Tensor<B, 3>> {
        let [b, t, _] = x.dims();
        let host_lora = |kind| ctx.host_lora(layer, kind);
        let (gate_lora, up_lora, down_lora) =
            (host_lora(LinearKind::Gate)?, host_lora(LinearKind::Up)?, host_lora(LinearKind::Down)?);
        if ![&self.gate_proj, &self.up_proj, &self.down_proj].iter().all(|w| w.on_host(b * t)) {
            return None;
        }
        let x_host = host_rms_norm(norm, x.clone())?;
        let mut hidden = self.gate_proj.host_product(&x_host, t, gate_lora)?;
        let up = self.up_proj.host_product(&x_host, t, up_lora)?;
        ramole_core::activation::silu_mul(&mut hidden, &up);
        let y = self.down_proj.host_product(&hidden, t, down_lora)?;
        let d = self.down_proj.dims()[1];
        Some(Tensor::from_data(TensorData::new(y, [b, t, d]), &x.device()))
    }
}

/// `norm(x)` on the host, `x · (1 / √(mean(x²) + ε)) · γ` per position (transformers' order; burn's
/// `RmsNorm` divides by the root instead, within an ulp), many positions on rayon's threads; `None`
/// where the values cannot be read as f32.
fn host_rms_norm<B: Backend>(norm: &RmsNorm<B>, x: Tensor<B, 3>) -> Option<Vec<f32>> {
    let d = x.dims()[2];
    host_rms_norm_values(norm, host_f32(x)?, d)
}

/// [`host_rms_norm`] of host values `x` (positions of `d` values).
fn host_rms_norm_values<B: Backend>(norm: &RmsNorm<B>, mut x: Vec<f32>, d: usize) -> Option<Vec<f32>> {
    use rayon::prelude::*;
    const LANES: usize = 16;
    let gamma = host_f32(norm.gamma.val())?;
    if d == 0 || gamma.len() != d {
        return (d == 0).then_some(x);
    }
    let eps = norm.epsilon as f32;
    let row = |r: &mut [f32]| {
        // The sum of squares lane by lane (a running scalar would chain every addition).
        let (chunks, tail) = r.as_chunks::<LANES>();
        let mut lanes = [0.0f32; LANES];
        for c in chunks {
            for (a, &v) in lanes.iter_mut().zip(c) {
                *a += v * v;
            }
        }
        let ss = lanes.iter().sum::<f32>() + tail.iter().map(|v| v * v).sum::<f32>();
        let inv = 1.0 / (ss / d as f32 + eps).sqrt();
        for (v, &g) in r.iter_mut().zip(&gamma) {
            *v = *v * inv * g;
        }
    };
    if x.len() >= 64 * d {
        x.par_chunks_mut(d).with_min_len(16).for_each(row);
    } else {
        x.chunks_mut(d).for_each(row);
    }
    Some(x)
}

/// `silu(gate) · up` in one pass over host memory (`g / (1 + e^{−g}) · u`), for the CPU backends:
/// burn's `silu` is seven element-wise passes there (its sigmoid goes through a logarithm).
///
/// # Shapes
/// - `gate`, `up`: `[batch, seq, d_ff]`
/// - output: `[batch, seq, d_ff]`
fn silu_mul_host<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    let (dims, device) = (gate.dims(), gate.device());
    match (host_f32(gate.clone()), host_f32(up.clone())) {
        (Some(mut g), Some(u)) if g.len() == u.len() => {
            ramole_core::activation::silu_mul(&mut g, &u);
            Tensor::from_data(TensorData::new(g, dims), &device)
        }
        _ => silu(gate) * up,
    }
}

impl<B: Backend> LlamaDecoderLayer<B> {
    fn forward(&self, x: Tensor<B, 3>, layer: usize, ctx: &BlockCtx<'_, B>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        let x = x.clone() + self.self_attn.forward(x, &self.input_layernorm, layer, ctx, cache);
        x.clone() + self.mlp.forward(x, &self.post_attention_layernorm, layer, ctx)
    }

    /// Whether [`Self::forward_host`] runs block `layer` for `tokens` new tokens: a CPU backend, every
    /// product and LoRA update of the block on the host, RoPE's tables readable there, and the layer's
    /// KV buffers host memory the attention kernel reads in place.
    fn runs_on_host(&self, tokens: usize, layer: usize, ctx: &BlockCtx<'_, B>, cache: &KvCache<B>) -> bool {
        let (a, m) = (&self.self_attn, &self.mlp);
        let lins = [
            (&a.q_proj, LinearKind::Q),
            (&a.k_proj, LinearKind::K),
            (&a.v_proj, LinearKind::V),
            (&a.o_proj, LinearKind::O),
            (&m.gate_proj, LinearKind::Gate),
            (&m.up_proj, LinearKind::Up),
            (&m.down_proj, LinearKind::Down),
        ];
        ctx.host
            && a.head_dim.is_multiple_of(16)
            && lins.iter().all(|(w, kind)| w.on_host(tokens) && ctx.host_lora(layer, *kind).is_some())
            && cache.takes_host(layer, ctx.attn.past, [ctx.attn.pads.len(), a.n_kv_heads, a.head_dim])
            && ctx.rope.host_ready()
    }

    /// The block on host values, where [`Self::runs_on_host`]: `x` (`[batch·seq, d]`, `dims` = `[batch,
    /// seq, d]`) is updated in place through the norms, the seven products and their LoRA updates,
    /// RoPE, the KV cache's write, the attention kernel, `silu(gate)·up` and both residual additions,
    /// with no tensor made or read on the way.
    fn forward_host(
        &self,
        x: &mut [f32],
        dims: [usize; 3],
        layer: usize,
        ctx: &BlockCtx<'_, B>,
        cache: &mut KvCache<B>,
    ) {
        let [b, t, d] = dims;
        let (a, m) = (&self.self_attn, &self.mlp);
        let (h, kvh, hd) = (a.n_heads, a.n_kv_heads, a.head_dim);
        let lora = |kind| ctx.host_lora(layer, kind).flatten();
        let product = |w: &LinearWeight<B>, x: &[f32], kind| {
            w.host_product(x, t, lora(kind)).expect("runs_on_host: every product on the host")
        };
        let norm =
            |n: &RmsNorm<B>, x: &[f32]| host_rms_norm_values(n, x.to_vec(), d).expect("runs_on_host: f32 values");
        let xn = norm(&self.input_layernorm, x);
        let (mut q, mut k) = (product(&a.q_proj, &xn, LinearKind::Q), product(&a.k_proj, &xn, LinearKind::K));
        let v = product(&a.v_proj, &xn, LinearKind::V);
        let device = &ctx.attn.device;
        if !ctx.rope.apply_host(&mut q, h, &mut k, kvh, hd) {
            // runs_on_host read the tables: only values that do not fit them come here.
            let rotate = |y: Vec<f32>, n: usize| {
                let y = Tensor::<B, 4>::from_data(TensorData::new(y, [b, t, n, hd]), device).swap_dims(1, 2);
                host_f32(ctx.rope.apply(y).swap_dims(1, 2)).expect("f32 values")
            };
            (q, k) = (rotate(q, h), rotate(k, kvh));
        }
        cache.append_host(layer, &k, &v, [b, t, kvh, hd], device);
        let out = LlamaAttention::host_attention_values(&q, [b, t, h, hd], cache, layer, ctx).unwrap_or_else(|| {
            let q = Tensor::<B, 4>::from_data(TensorData::new(q, [b, t, h, hd]), device).swap_dims(1, 2);
            host_f32(LlamaAttention::burn_attention(q, kvh, cache, layer, ctx)).expect("f32 values")
        });
        add_into(x, &product(&a.o_proj, &out, LinearKind::O));
        let xn = norm(&self.post_attention_layernorm, x);
        let mut hidden = product(&m.gate_proj, &xn, LinearKind::Gate);
        ramole_core::activation::silu_mul(&mut hidden, &product(&m.up_proj, &xn, LinearKind::Up));
        add_into(x, &product(&m.down_proj, &hidden, LinearKind::Down));
    }
}

/// `x += y`, element by element.
fn add_into(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "a residual of the block's width");
    x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
}

/// The RoPE tables of a model, `[max_position_embeddings, head_dim / 2]` each: built once per model.
fn rope_tables<B: Backend>(config: &LlamaConfig, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let half = config.head_dim / 2;
    let n = config.max_position_embeddings;
    let inv_freq: Vec<f32> =
        (0..half).map(|i| 1.0 / (config.rope_theta as f32).powf((2 * i) as f32 / config.head_dim as f32)).collect();
    let (mut cos, mut sin) = (Vec::with_capacity(n * half), Vec::with_capacity(n * half));
    for p in 0..n {
        for &f in &inv_freq {
            let angle = p as f32 * f; // f32 product, as transformers computes it
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let table = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [n, half]), device);
    (table(cos), table(sin))
}

impl<B: Backend> LlamaForCausalLM<B> {
    /// Loads a model from named weights (HF names, PyTorch layout) and its configuration, the weights
    /// held as [`WeightFormat::Auto`] says for `B`.
    pub fn load(config: &LlamaConfig, weights: &dyn WeightSource, device: &B::Device) -> Result<Self, ModelError> {
        Self::load_with(config, weights, device, WeightFormat::Auto)
    }

    /// Loads a model, its weights held as `format` says. Kept quantized, a weight's values are
    /// checked when its blocks are read (finite scales); dequantised, every value is.
    ///
    /// Fails with [`ModelError::Config`] for a format that keeps weights quantized
    /// ([`WeightFormat::Quantized`], [`WeightFormat::QuantizedInt8`]) on an autodiff backend: the
    /// host kernel is outside the autodiff graph, so gradients would not reach the layers below it.
    pub fn load_with(
        config: &LlamaConfig,
        weights: &dyn WeightSource,
        device: &B::Device,
        format: WeightFormat,
    ) -> Result<Self, ModelError> {
        config.validate().map_err(|m| ModelError::config(weights.path(), m))?;
        let quantized = format.keeps_quantized::<B>();
        // `Auto` keeps nothing quantized under autodiff; a format that forces it is refused there.
        if quantized && B::ad_enabled(device) {
            return Err(ModelError::config(
                weights.path(),
                "weights kept quantized cannot be trained through: load them dense (WeightFormat::Dense)",
            ));
        }
        let held = |q| QuantizedWeight { matrix: Arc::new(q), activations: format.activations() };
        // An f32 matrix `[out, in]` on the host, packed for the panel kernel where it runs (a CPU
        // backend, AVX-512F); else on the device as `[in, out]`.
        let packs = quantized && ramole_core::backend::runs_on_host::<B>();
        let f32_linear = |w: HostTensor| -> LinearWeight<B> {
            if packs
                && let [n, k] = w.shape[..]
                && let Some(p) = PackedMatrix::pack(&w.data, n, k)
            {
                return LinearWeight::Packed(PackedWeight(Arc::new(p)));
            }
            LinearWeight::Dense(Param::from_tensor(w.transposed().into_tensor(device)))
        };
        let linear = |name: String, shape: [usize; 2]| -> Result<LinearWeight<B>, ModelError> {
            if quantized && let Some(q) = weights.load_quantized(&name, shape)? {
                return Ok(LinearWeight::Quantized(held(q)));
            }
            Ok(f32_linear(weights.load(&name, &shape)?))
        };
        let norm = |name: String| -> Result<RmsNorm<B>, ModelError> {
            let g = weights.load(&name, &[config.hidden_size])?;
            Ok(RmsNorm { gamma: Param::from_tensor(g.into_tensor(device)), epsilon: config.rms_norm_eps })
        };
        let embed_shape = [config.vocab_size, config.hidden_size];
        let embed_name = "model.embed_tokens.weight";
        let tied = config.tie_word_embeddings;
        let quantized_embed = match quantized {
            true => weights.load_quantized(embed_name, embed_shape)?,
            false => None,
        };
        // The embedding, and the LM head when it is the embedding.
        let (embed, tied_head) = match quantized_embed {
            Some(q) => {
                let q = held(q);
                (TokenEmbedding::Quantized(q.clone()), tied.then_some(LinearWeight::Quantized(q)))
            }
            None => {
                let t = weights.load(embed_name, &embed_shape)?;
                let head = tied.then(|| f32_linear(t.clone()));
                (TokenEmbedding::Dense(Embedding { weight: Param::from_tensor(t.into_tensor(device)) }), head)
            }
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let lin = |kind: LinearKind| {
                linear(format!("model.layers.{i}.{}.weight", kind.path()), config.linear_shape(kind))
            };
            layers.push(LlamaDecoderLayer {
                self_attn: LlamaAttention {
                    q_proj: lin(LinearKind::Q)?,
                    k_proj: lin(LinearKind::K)?,
                    v_proj: lin(LinearKind::V)?,
                    o_proj: lin(LinearKind::O)?,
                    n_heads: config.num_attention_heads,
                    n_kv_heads: config.num_key_value_heads,
                    head_dim: config.head_dim,
                },
                mlp: LlamaMlp {
                    gate_proj: lin(LinearKind::Gate)?,
                    up_proj: lin(LinearKind::Up)?,
                    down_proj: lin(LinearKind::Down)?,
                },
                input_layernorm: norm(format!("model.layers.{i}.input_layernorm.weight"))?,
                post_attention_layernorm: norm(format!("model.layers.{i}.post_attention_layernorm.weight"))?,
            });
        }
        let lm_head = match tied_head {
            Some(head) => head,
            None => linear("lm_head.weight".into(), [config.vocab_size, config.hidden_size])?,
        };
        let (rope_cos, rope_sin) = rope_tables(config, device);
        Ok(Self {
            model: LlamaModel { embed_tokens: embed, layers, norm: norm("model.norm.weight".into())? },
            lm_head,
            tied,
            rope_cos,
            rope_sin,
            max_positions: config.max_position_embeddings,
        })
    }

    /// Number of transformer blocks.
    pub fn n_layers(&self) -> usize {
        self.model.layers.len()
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.model.embed_tokens.dims()[0]
    }

    /// Longest sequence the model takes.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Runs the new tokens of every row through the decoder, reading and extending `cache`, and returns
    /// the final hidden states (after the last RMSNorm).
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]`
    /// - `attn.positions`: `[batch, seq]`, `attn.mask()`: `[batch, 1, seq, cache.len() + seq]`
    /// - output: `[batch, seq, d]`
    pub fn forward(
        &self,
        tokens: Tensor<B, 2, Int>,
        attn: &AttentionInput<B>,
        cache: &mut KvCache<B>,
        lora: Option<&LlamaLora<B>>,
    ) -> Tensor<B, 3> {
        let rep = self.model.layers.first().map_or(1, |l| l.self_attn.n_heads / l.self_attn.n_kv_heads);
        let rope = Rope::new(&attn.positions, &self.rope_cos, &self.rope_sin);
        let ctx = BlockCtx {
            rope: &rope,
            attn,
            rep,
            mask: std::cell::OnceCell::new(),
            host: ramole_core::backend::runs_on_host::<B>(),
            lora: lora.filter(|l| !l.is_empty()),
        };
        let [b, t] = tokens.dims();
        let mut x = self.model.embed_tokens.forward(tokens); // [b, t, d]
        let d = x.dims()[2];
        let device = x.device();
        // Blocks that run on the host pass host values from one to the next (no tensor between them).
        let mut on_host: Option<Vec<f32>> = None;
        for (i, layer) in self.model.layers.iter().enumerate() {
            if layer.runs_on_host(b * t, i, &ctx, cache) {
                let values = match on_host.take() {
                    Some(values) => Some(values),
                    None => host_f32(x.clone()),
                };
                if let Some(mut values) = values {
                    layer.forward_host(&mut values, [b, t, d], i, &ctx, cache);
                    on_host = Some(values);
                    continue;
                }
            }
            if let Some(values) = on_host.take() {
                x = Tensor::from_data(TensorData::new(values, [b, t, d]), &device);
            }
            x = layer.forward(x, i, &ctx, cache);
        }
        if let Some(values) = on_host {
            x = Tensor::from_data(TensorData::new(values, [b, t, d]), &device);
        }
        self.model.norm.forward(x)
    }

    /// Logits of hidden states.
    ///
    /// # Shapes
    /// - `hidden`: `[batch, seq, d]`
    /// - output: `[batch, seq, vocab]`
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        self.lm_head.forward(hidden)
    }

    /// Whether the LM head is the (transposed) token embedding.
    pub fn is_tied(&self) -> bool {
        self.tied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramole_core::backend::{Selected, device};

    /// RoPE on host values (the fast path of the CPU backends) rotates as burn's ops do, and refuses
    /// values that do not fit its tables without touching them.
    #[test]
    fn rope_on_the_host_equals_burns() {
        let dev = device();
        let (b, t, h, kvh, hd, n) = (2, 3, 4, 2, 8, 16);
        let half = hd / 2;
        let table = |f: fn(f32) -> f32| {
            let v: Vec<f32> = (0..n * half).map(|i| f(i as f32 * 0.1)).collect();
            Tensor::<Selected, 2>::from_data(TensorData::new(v, [n, half]), &dev)
        };
        let (cos, sin) = (table(f32::cos), table(f32::sin));
        let positions = Tensor::<Selected, 2, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 5, 6, 7], [b, t]), &dev);
        let rope = Rope::new(&positions, &cos, &sin);
        let values = |len: usize, seed: usize| -> Vec<f32> {
            (0..len).map(|i| ((i * 7 + seed) % 13) as f32 / 6.0 - 1.0).collect()
        };
        let (mut q, mut k) = (values(b * t * h * hd, 1), values(b * t * kvh * hd, 3));
        let with_burn = |x: &[f32], heads: usize| -> Vec<f32> {
            let x = Tensor::<Selected, 3>::from_data(TensorData::new(x.to_vec(), [b, t, heads * hd]), &dev);
            let x = x.reshape([b, t, heads, hd]).swap_dims(1, 2);
            rope.apply(x).swap_dims(1, 2).into_data().iter::<f32>().collect()
        };
        let (want_q, want_k) = (with_burn(&q, h), with_burn(&k, kvh));
        assert!(rope.apply_host(&mut q, h, &mut k, kvh, hd));
        for (i, (g, w)) in q.iter().chain(&k).zip(want_q.iter().chain(&want_k)).enumerate() {
            assert!((g - w).abs() <= 1e-6, "value {i}: {g} vs {w}");
        }
        let (mut short, mut k2) = (vec![1.0f32; 3], k.clone());
        assert!(!rope.apply_host(&mut short, h, &mut k2, kvh, hd));
        assert_eq!((short, k2), (vec![1.0f32; 3], k));
    }
}
