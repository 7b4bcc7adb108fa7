//! BERT encoder (all-MiniLM-L6-v2 and other `BertModel` checkpoints), written once for every backend.
//!
//! The module tree mirrors the Hugging Face weight names, so that loading and saving are a plain walk:
//!
//! | Rust path | safetensors name |
//! |---|---|
//! | `embeddings.word_embeddings` | `embeddings.word_embeddings.weight` |
//! | `embeddings.position_embeddings` | `embeddings.position_embeddings.weight` |
//! | `embeddings.token_type_embeddings` | `embeddings.token_type_embeddings.weight` |
//! | `embeddings.layer_norm` | `embeddings.LayerNorm.{weight,bias}` |
//! | `encoder.layer[N].attention.self_attention.{query,key,value}` | `encoder.layer.N.attention.self.{query,key,value}.{weight,bias}` |
//! | `encoder.layer[N].attention.output.{dense,layer_norm}` | `encoder.layer.N.attention.output.{dense,LayerNorm}.*` |
//! | `encoder.layer[N].intermediate.dense` | `encoder.layer.N.intermediate.dense.*` |
//! | `encoder.layer[N].output.{dense,layer_norm}` | `encoder.layer.N.output.{dense,LayerNorm}.*` |
//! | `pooler.dense` (optional, unused by mean pooling) | `pooler.dense.*` |
//!
//! The activation is the exact GELU (`x·Φ(x)` with `erf`), as in `transformers`; burn's
//! `activation::gelu` is the tanh approximation on the candle backend, so it is not used.

use std::path::{Path, PathBuf};

use burn::module::{Module, Param, ParamId};
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::llama::{MAX_CONFIG_SIZE, MAX_LAYERS};
use crate::weights::{HostTensor, SafetensorsWeights, WeightSource};

/// The largest `config.json` read.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Added to the attention scores of padded keys (the softmax then gives them zero weight).
const MASKED_SCORE: f64 = -1.0e9;

fn default_hidden_act() -> String {
    "gelu".into()
}

fn default_position_embedding_type() -> String {
    "absolute".into()
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

fn default_type_vocab_size() -> usize {
    2
}

/// The configuration of a BERT encoder, as in a Hugging Face `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Number of tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads (must divide `hidden_size`).
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Number of learned positions (the longest input).
    pub max_position_embeddings: usize,
    /// Number of token types (segments).
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    /// Epsilon of the layer norms.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Activation of the feed-forward layer; only `gelu` (exact) is supported.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Position embedding type; only `absolute` is supported.
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
}

impl BertConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let text = ramole_core::fs::read_text(path, MAX_CONFIG_BYTES).map_err(|e| ModelError::io(path, e))?;
        let config: Self = serde_json::from_str(&text)
            .map_err(|e| ModelError::config(path, format!("not a BERT config.json: {e}")))?;
        config.validate().map_err(|message| ModelError::config(path, message))?;
        Ok(config)
    }

    /// Checks that the sizes are usable; the message says which field is not.
    pub fn validate(&self) -> Result<(), String> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{name}` must be at least 1"));
        }
        if let Some((name, v)) = sizes.iter().find(|(_, v)| *v > MAX_CONFIG_SIZE) {
            return Err(format!("`{name}` {v} is over the limit of {MAX_CONFIG_SIZE}"));
        }
        if self.num_hidden_layers > MAX_LAYERS {
            return Err(format!("`num_hidden_layers` {} is over the limit of {MAX_LAYERS}", self.num_hidden_layers));
        }
        let widths = [self.vocab_size, self.max_position_embeddings, self.type_vocab_size, self.intermediate_size];
        if widths.iter().any(|&n| n.checked_mul(self.hidden_size).is_none()) {
            return Err("the sizes overflow when multiplied into weight shapes".into());
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "`hidden_size` {} is not a multiple of `num_attention_heads` {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(format!("`layer_norm_eps` {} must be a positive number", self.layer_norm_eps));
        }
        if self.hidden_act != "gelu" {
            return Err(format!("`hidden_act` `{}` is not supported (only `gelu`)", self.hidden_act));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "`position_embedding_type` `{}` is not supported (only `absolute`)",
                self.position_embedding_type
            ));
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The tensors of a checkpoint of this configuration: HF names and PyTorch shapes (`Linear`
    /// weights `[out, in]`), without the optional pooler.
    pub fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, f) = (self.hidden_size, self.intermediate_size);
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("embeddings.word_embeddings.weight".into(), vec![self.vocab_size, h]),
            ("embeddings.position_embeddings.weight".into(), vec![self.max_position_embeddings, h]),
            ("embeddings.token_type_embeddings.weight".into(), vec![self.type_vocab_size, h]),
            ("embeddings.LayerNorm.weight".into(), vec![h]),
            ("embeddings.LayerNorm.bias".into(), vec![h]),
        ];
        for i in 0..self.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            for (n, o, inp) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", f, h),
                ("output.dense", h, f),
            ] {
                shapes.push((format!("{p}.{n}.weight"), vec![o, inp]));
                shapes.push((format!("{p}.{n}.bias"), vec![o]));
            }
            for n in ["attention.output.LayerNorm", "output.LayerNorm"] {
                shapes.push((format!("{p}.{n}.weight"), vec![h]));
                shapes.push((format!("{p}.{n}.bias"), vec![h]));
            }
        }
        shapes
    }
}

/// Token, position and token-type embeddings, summed and normalised.
#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    /// `embeddings.word_embeddings`: `[vocab, hidden]`.
    pub word_embeddings: Embedding<B>,
    /// `embeddings.position_embeddings`: `[max_positions, hidden]`.
    pub position_embeddings: Embedding<B>,
    /// `embeddings.token_type_embeddings`: `[type_vocab, hidden]`.
    pub token_type_embeddings: Embedding<B>,
    /// `embeddings.LayerNorm`.
    pub layer_norm: LayerNorm<B>,
}

impl<B: Backend> BertEmbeddings<B> {
    /// Embeds token ids (positions `0..seq`, token type 0).
    ///
    /// # Shapes
    /// input_ids `[batch, seq]` → `[batch, seq, hidden]`
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, &device).reshape([1, seq]); // [1, seq]
        let types = Tensor::<B, 2, Int>::zeros([batch, seq], &device); // [batch, seq]
        let x = self.word_embeddings.forward(input_ids) // [batch, seq, hidden]
            + self.position_embeddings.forward(positions) // [1, seq, hidden]
            + self.token_type_embeddings.forward(types); // [batch, seq, hidden]
        self.layer_norm.forward(x)
    }
}

/// `attention.self`: the query, key and value projections of multi-head attention.
#[derive(Module, Debug)]
pub struct BertSelfAttention<B: Backend> {
    /// `attention.self.query`.
    pub query: Linear<B>,
    /// `attention.self.key`.
    pub key: Linear<B>,
    /// `attention.self.value`.
    pub value: Linear<B>,
    /// Number of heads.
    pub num_heads: usize,
}

impl<B: Backend> BertSelfAttention<B> {
    /// Scaled dot-product attention over all positions; padded keys get no weight.
    ///
    /// # Shapes
    /// x `[batch, seq, hidden]`, mask_bias `[batch, 1, 1, seq]` (0 or a large negative) → `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>, mask_bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let [batch, seq, hidden] = x.dims();
        let head_dim = hidden / self.num_heads;
        let heads = |t: Tensor<B, 3>| t.reshape([batch, seq, self.num_heads, head_dim]).swap_dims(1, 2);
        let q = heads(linear_3d(&self.query, x.clone())); // [batch, heads, seq, head_dim]
        let k = heads(linear_3d(&self.key, x.clone())); // [batch, heads, seq, head_dim]
        let v = heads(linear_3d(&self.value, x)); // [batch, heads, seq, head_dim]
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(1.0 / (head_dim as f64).sqrt()) + mask_bias; // [batch, heads, seq, seq]
        let probs = softmax(scores, 3);
        probs.matmul(v).swap_dims(1, 2).reshape([batch, seq, hidden]) // [batch, seq, hidden]
    }
}

/// A dense layer followed by dropout (inactive here), a residual connection and a layer norm:
/// both `attention.output` and `output` of a BERT layer.
#[derive(Module, Debug)]
pub struct BertResidualOutput<B: Backend> {
    /// `*.dense`.
    pub dense: Linear<B>,
    /// `*.LayerNorm`.
    pub layer_norm: LayerNorm<B>,
}

impl<B: Backend> BertResidualOutput<B> {
    /// `LayerNorm(dense(x) + residual)`.
    ///
    /// # Shapes
    /// x `[batch, seq, in]`, residual `[batch, seq, hidden]` → `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        self.layer_norm.forward(linear_3d(&self.dense, x) + residual)
    }
}

/// `attention`: self-attention and its output projection.
#[derive(Module, Debug)]
pub struct BertAttention<B: Backend> {
    /// `attention.self`.
    pub self_attention: BertSelfAttention<B>,
    /// `attention.output`.
    pub output: BertResidualOutput<B>,
}

/// `intermediate`: the first feed-forward projection and its activation.
#[derive(Module, Debug)]
pub struct BertIntermediate<B: Backend> {
    /// `intermediate.dense`.
    pub dense: Linear<B>,
}

impl<B: Backend> BertIntermediate<B> {
    /// `gelu(dense(x))` with the exact GELU.
    ///
    /// # Shapes
    /// x `[batch, seq, hidden]` → `[batch, seq, intermediate]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        gelu_exact(linear_3d(&self.dense, x))
    }
}

/// A linear layer on `[batch, seq, in]` computed as one 2-D matrix product over `batch·seq` rows
/// (burn's 3-D `Linear::forward` broadcasts the weight per batch item, several times slower on
/// the candle backend).
///
/// # Shapes
/// x `[batch, seq, in]` → `[batch, seq, out]`
pub fn linear_3d<B: Backend>(layer: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, seq, d_in] = x.dims();
    let y = layer.forward(x.reshape([batch * seq, d_in])); // [batch·seq, out]
    let d_out = y.dims()[1];
    y.reshape([batch, seq, d_out])
}

/// The exact GELU, `x · ½ · (1 + erf(x / √2))`.
///
/// # Shapes
/// any → same
pub fn gelu_exact<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let phi = x.clone().mul_scalar(std::f64::consts::FRAC_1_SQRT_2).erf().add_scalar(1.0).mul_scalar(0.5);
    x * phi
}

/// `encoder.layer.N`: one transformer layer (post-norm).
#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    /// `attention`.
    pub attention: BertAttention<B>,
    /// `intermediate`.
    pub intermediate: BertIntermediate<B>,
    /// `output`.
    pub output: BertResidualOutput<B>,
}

impl<B: Backend> BertLayer<B> {
    /// One layer.
    ///
    /// # Shapes
    /// x `[batch, seq, hidden]`, mask_bias `[batch, 1, 1, seq]` → `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>, mask_bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let attended = self.attention.self_attention.forward(x.clone(), mask_bias); // [batch, seq, hidden]
        let h = self.attention.output.forward(attended, x); // [batch, seq, hidden]
        let ff = self.intermediate.forward(h.clone()); // [batch, seq, intermediate]
        self.output.forward(ff, h)
    }
}

/// `encoder`: the stack of layers.
#[derive(Module, Debug)]
pub struct BertEncoder<B: Backend> {
    /// `encoder.layer`.
    pub layer: Vec<BertLayer<B>>,
}

/// `pooler`: the dense layer on the first token (kept so that saved files stay complete; sentence
/// embeddings use mean pooling and never call it).
#[derive(Module, Debug)]
pub struct BertPooler<B: Backend> {
    /// `pooler.dense`.
    pub dense: Linear<B>,
}

/// A BERT encoder (`transformers.BertModel` without its pooler in the forward pass).
#[derive(Module, Debug)]
pub struct BertModel<B: Backend> {
    /// `embeddings`.
    pub embeddings: BertEmbeddings<B>,
    /// `encoder`.
    pub encoder: BertEncoder<B>,
    /// `pooler`, when the weights have one.
    pub pooler: Option<BertPooler<B>>,
    /// The configuration the model was built from.
    #[module(skip)]
    pub config: BertConfig,
}

/// Reads named tensors from a weights file into burn modules.
struct Loader<'a, B: Backend> {
    weights: &'a SafetensorsWeights,
    device: &'a B::Device,
    eps: f64,
    /// `""`, or `"bert."` for checkpoints saved from a model with a head (`BertForMaskedLM`, ...).
    root: &'static str,
}

impl<B: Backend> Loader<'_, B> {
    fn param<const D: usize>(&self, t: HostTensor) -> Param<Tensor<B, D>> {
        Param::from_tensor(t.into_tensor(self.device))
    }

    fn linear(&self, prefix: &str, d_in: usize, d_out: usize) -> Result<Linear<B>, ModelError> {
        let root = self.root;
        let weight = self.weights.load(&format!("{root}{prefix}.weight"), &[d_out, d_in])?.transposed(); // [in, out]
        let bias = self.weights.load(&format!("{root}{prefix}.bias"), &[d_out])?;
        Ok(Linear { weight: self.param(weight), bias: Some(self.param(bias)) })
    }

    fn layer_norm(&self, prefix: &str, d: usize) -> Result<LayerNorm<B>, ModelError> {
        let mut norm = LayerNormConfig::new(d).with_epsilon(self.eps).init(self.device);
        let root = self.root;
        norm.gamma = self.param(self.weights.load(&format!("{root}{prefix}.weight"), &[d])?);
        norm.beta = Some(self.param(self.weights.load(&format!("{root}{prefix}.bias"), &[d])?));
        Ok(norm)
    }

    fn embedding(&self, name: &str, n: usize, d: usize) -> Result<Embedding<B>, ModelError> {
        let root = self.root;
        Ok(Embedding { weight: self.param(self.weights.load(&format!("{root}{name}.weight"), &[n, d])?) })
    }

    fn residual(&self, prefix: &str, d_in: usize, d: usize) -> Result<BertResidualOutput<B>, ModelError> {
        Ok(BertResidualOutput {
            dense: self.linear(&format!("{prefix}.dense"), d_in, d)?,
            layer_norm: self.layer_norm(&format!("{prefix}.LayerNorm"), d)?,
        })
    }

    fn layer(&self, i: usize, c: &BertConfig) -> Result<BertLayer<B>, ModelError> {
        let (h, p) = (c.hidden_size, format!("encoder.layer.{i}"));
        Ok(BertLayer {
            attention: BertAttention {
                self_attention: BertSelfAttention {
                    query: self.linear(&format!("{p}.attention.self.query"), h, h)?,
                    key: self.linear(&format!("{p}.attention.self.key"), h, h)?,
                    value: self.linear(&format!("{p}.attention.self.value"), h, h)?,
                    num_heads: c.num_attention_heads,
                },
                output: self.residual(&format!("{p}.attention.output"), h, h)?,
            },
            intermediate: BertIntermediate {
                dense: self.linear(&format!("{p}.intermediate.dense"), h, c.intermediate_size)?,
            },
            output: self.residual(&format!("{p}.output"), c.intermediate_size, h)?,
        })
    }
}

/// Collects a model's tensors under their Hugging Face names, in PyTorch layout.
#[derive(Default)]
struct Collector {
    tensors: Vec<(String, HostTensor)>,
}

impl Collector {
    fn push<B: Backend, const D: usize>(&mut self, name: String, t: &Param<Tensor<B, D>>) {
        let data = t.val().into_data();
        let shape = data.shape.to_vec();
        let values: Vec<f32> = data.iter::<f32>().collect();
        self.tensors.push((name, HostTensor { shape, data: values }));
    }

    fn linear<B: Backend>(&mut self, prefix: &str, l: &Linear<B>) {
        let data = l.weight.val().transpose().into_data(); // [out, in]
        let shape = data.shape.to_vec();
        self.tensors.push((format!("{prefix}.weight"), HostTensor { shape, data: data.iter::<f32>().collect() }));
        if let Some(b) = &l.bias {
            self.push(format!("{prefix}.bias"), b);
        }
    }

    fn layer_norm<B: Backend>(&mut self, prefix: &str, n: &LayerNorm<B>) {
        self.push(format!("{prefix}.weight"), &n.gamma);
        if let Some(b) = &n.beta {
            self.push(format!("{prefix}.bias"), b);
        }
    }

    fn residual<B: Backend>(&mut self, prefix: &str, r: &BertResidualOutput<B>) {
        self.linear(&format!("{prefix}.dense"), &r.dense);
        self.layer_norm(&format!("{prefix}.LayerNorm"), &r.layer_norm);
    }
}

impl<B: Backend> BertModel<B> {
    /// Loads `config.json` and `model.safetensors` from a folder (a sentence-transformers or
    /// `transformers` BERT checkpoint; names without a `bert.` prefix, or with one).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, ModelError> {
        let config = BertConfig::from_file(dir.join("config.json"))?;
        let weights_path = dir.join("model.safetensors");
        let weights = SafetensorsWeights::open(&weights_path)?;
        Self::from_weights(config, &weights, device)
    }

    /// Builds the model from a configuration and weights (tensors named as in `transformers`).
    pub fn from_weights(
        config: BertConfig,
        weights: &SafetensorsWeights,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        config.validate().map_err(|m| ModelError::config(weights.path(), m))?;
        let names = weights.names();
        let has = |n: &str| names.iter().any(|x| x == n);
        let root = if !has("embeddings.word_embeddings.weight") && has("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let loader = Loader::<B> { weights, device, eps: config.layer_norm_eps, root };
        let h = config.hidden_size;
        let embeddings = BertEmbeddings {
            word_embeddings: loader.embedding("embeddings.word_embeddings", config.vocab_size, h)?,
            position_embeddings: loader.embedding(
                "embeddings.position_embeddings",
                config.max_position_embeddings,
                h,
            )?,
            token_type_embeddings: loader.embedding("embeddings.token_type_embeddings", config.type_vocab_size, h)?,
            layer_norm: loader.layer_norm("embeddings.LayerNorm", h)?,
        };
        let layer = (0..config.num_hidden_layers).map(|i| loader.layer(i, &config)).collect::<Result<Vec<_>, _>>()?;
        let has_pooler = has(&format!("{root}pooler.dense.weight"));
        let pooler = if has_pooler { Some(BertPooler { dense: loader.linear("pooler.dense", h, h)? }) } else { None };
        Ok(Self { embeddings, encoder: BertEncoder { layer }, pooler, config })
    }

    /// The last hidden states.
    ///
    /// `seq` must not exceed `config.max_position_embeddings` and ids must be below `vocab_size`
    /// (the sentence encoder truncates and tokenizes accordingly).
    ///
    /// # Shapes
    /// input_ids `[batch, seq]` Int, attention_mask `[batch, seq]` (1.0 keep / 0.0 pad) → `[batch, seq, hidden]`
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>, attention_mask: Tensor<B, 2>) -> Tensor<B, 3> {
        let [batch, seq] = attention_mask.dims();
        // 0 for kept keys, a large negative for padded ones.
        let mask_bias = attention_mask.neg().add_scalar(1.0).mul_scalar(MASKED_SCORE).reshape([batch, 1, 1, seq]); // [batch, 1, 1, seq]
        let mut x = self.embeddings.forward(input_ids); // [batch, seq, hidden]
        for layer in &self.encoder.layer {
            x = layer.forward(x, mask_bias.clone());
        }
        x
    }

    /// All tensors under their Hugging Face names, in PyTorch layout (`Linear` weights `[out, in]`).
    pub fn named_tensors(&self) -> Vec<(String, HostTensor)> {
        let mut c = Collector::default();
        let e = &self.embeddings;
        c.push("embeddings.word_embeddings.weight".into(), &e.word_embeddings.weight);
        c.push("embeddings.position_embeddings.weight".into(), &e.position_embeddings.weight);
        c.push("embeddings.token_type_embeddings.weight".into(), &e.token_type_embeddings.weight);
        c.layer_norm("embeddings.LayerNorm", &e.layer_norm);
        for (i, l) in self.encoder.layer.iter().enumerate() {
            let p = format!("encoder.layer.{i}");
            let sa = &l.attention.self_attention;
            c.linear(&format!("{p}.attention.self.query"), &sa.query);
            c.linear(&format!("{p}.attention.self.key"), &sa.key);
            c.linear(&format!("{p}.attention.self.value"), &sa.value);
            c.residual(&format!("{p}.attention.output"), &l.attention.output);
            c.linear(&format!("{p}.intermediate.dense"), &l.intermediate.dense);
            c.residual(&format!("{p}.output"), &l.output);
        }
        if let Some(p) = &self.pooler {
            c.linear("pooler.dense", &p.dense);
        }
        c.tensors
    }

    /// Writes the weights as f32 safetensors with the Hugging Face names, loadable by [`Self::load`]
    /// (and by `transformers`). The file is written to a temporary name, synced, then renamed.
    pub fn save_safetensors(&self, path: &Path) -> Result<(), ModelError> {
        let data = crate::weights::serialize_f32(&self.named_tensors(), path)?;
        write_atomic(path, &data)
    }
}

/// A linear layer of a BERT layer that an encoder LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BertLinear {
    /// `attention.self.query`.
    Query,
    /// `attention.self.key`.
    Key,
    /// `attention.self.value`.
    Value,
    /// `attention.output.dense`.
    AttentionOutput,
    /// `intermediate.dense`.
    Intermediate,
    /// `output.dense`.
    Output,
}

impl BertLinear {
    /// Every adaptable linear layer, in the order of a layer's forward pass.
    pub const ALL: [Self; 6] =
        [Self::Query, Self::Key, Self::Value, Self::AttentionOutput, Self::Intermediate, Self::Output];

    /// The module path inside `encoder.layer.N` (the Hugging Face name without `.weight`).
    pub fn path(self) -> &'static str {
        match self {
            Self::Query => "attention.self.query",
            Self::Key => "attention.self.key",
            Self::Value => "attention.self.value",
            Self::AttentionOutput => "attention.output.dense",
            Self::Intermediate => "intermediate.dense",
            Self::Output => "output.dense",
        }
    }

    /// The layers a PEFT `target_modules` list selects: a layer is adapted when some entry equals its
    /// module path or is a dot-separated suffix of it (PEFT's rule, so that `output.dense` selects both
    /// `output.dense` and `attention.output.dense`, as PEFT would). An entry that selects nothing is
    /// returned as the error.
    pub fn select<S: AsRef<str>>(targets: &[S]) -> Result<Vec<Self>, String> {
        let matches = |t: &str, l: Self| l.path() == t || l.path().ends_with(&format!(".{t}"));
        if let Some(t) = targets.iter().find(|t| !Self::ALL.iter().any(|&l| matches(t.as_ref(), l))) {
            return Err(t.as_ref().to_owned());
        }
        Ok(Self::ALL.into_iter().filter(|&l| targets.iter().any(|t| matches(t.as_ref(), l))).collect())
    }

    /// `[d_out, d_in]` of this layer under `config`.
    pub fn shape(self, config: &BertConfig) -> [usize; 2] {
        let (h, f) = (config.hidden_size, config.intermediate_size);
        match self {
            Self::Intermediate => [f, h],
            Self::Output => [h, f],
            _ => [h, h],
        }
    }

    fn linear_mut<B: Backend>(self, layer: &mut BertLayer<B>) -> &mut Linear<B> {
        match self {
            Self::Query => &mut layer.attention.self_attention.query,
            Self::Key => &mut layer.attention.self_attention.key,
            Self::Value => &mut layer.attention.self_attention.value,
            Self::AttentionOutput => &mut layer.attention.output.dense,
            Self::Intermediate => &mut layer.intermediate.dense,
            Self::Output => &mut layer.output.dense,
        }
    }
}

/// The low-rank update of one linear layer, in PEFT's layout: `ΔW = scale · B·A`.
#[derive(Module, Debug)]
pub struct BertLoraPair<B: Backend> {
    /// `lora_A`: `[r, d_in]`.
    pub lora_a: Param<Tensor<B, 2>>,
    /// `lora_B`: `[d_out, r]`.
    pub lora_b: Param<Tensor<B, 2>>,
    /// The layer index `N` of `encoder.layer.N`.
    #[module(skip)]
    pub layer: usize,
    /// Which linear layer of it.
    #[module(skip)]
    pub target: BertLinear,
}

/// A LoRA on a BERT encoder: low-rank updates of some linear layers of every layer, `W + (alpha/r)·B·A`.
/// It is what `ramole train-retriever` trains by default, and what the project's default retriever ships:
/// a few hundred thousand numbers on top of the base encoder instead of a copy of it.
#[derive(Module, Debug)]
pub struct BertLora<B: Backend> {
    /// One pair per (layer, target), layer by layer, targets in [`BertLinear::ALL`] order.
    pub pairs: Vec<BertLoraPair<B>>,
    /// `alpha / r`.
    #[module(skip)]
    pub scale: f64,
}

impl<B: Backend> BertLora<B> {
    /// A LoRA of rank `rank` on `targets` of every layer of `config`, with `B = 0` (so it starts as the
    /// identity update) and A's values drawn from `init_a`, called `r·d_in` times per pair in row-major order.
    pub fn new(
        config: &BertConfig,
        targets: &[BertLinear],
        rank: usize,
        scale: f64,
        mut init_a: impl FnMut(usize) -> f32,
        device: &B::Device,
    ) -> Self {
        let mut pairs = Vec::new();
        for layer in 0..config.num_hidden_layers {
            for target in BertLinear::ALL.into_iter().filter(|t| targets.contains(t)) {
                let [d_out, d_in] = target.shape(config);
                let a: Vec<f32> = (0..rank * d_in).map(|_| init_a(d_in)).collect();
                pairs.push(BertLoraPair {
                    lora_a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [rank, d_in]), device)),
                    lora_b: Param::from_tensor(Tensor::zeros([d_out, rank], device)),
                    layer,
                    target,
                });
            }
        }
        Self { pairs, scale }
    }

    /// Reads a LoRA of `rank` on `targets` of every layer of `config` from PEFT's tensor names
    /// (`base_model.model.encoder.layer.N.<path>.lora_{A,B}.weight`), checking each tensor's shape and values.
    pub fn from_weights(
        config: &BertConfig,
        targets: &[BertLinear],
        rank: usize,
        scale: f64,
        weights: &dyn WeightSource,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let mut pairs = Vec::new();
        for layer in 0..config.num_hidden_layers {
            for target in BertLinear::ALL.into_iter().filter(|t| targets.contains(t)) {
                let [d_out, d_in] = target.shape(config);
                let name = |m: &str| format!("{}.{m}.weight", peft_prefix(layer, target));
                let a = weights.load(&name("lora_A"), &[rank, d_in])?;
                let b = weights.load(&name("lora_B"), &[d_out, rank])?;
                pairs.push(BertLoraPair {
                    lora_a: Param::from_tensor(a.into_tensor(device)),
                    lora_b: Param::from_tensor(b.into_tensor(device)),
                    layer,
                    target,
                });
            }
        }
        let expected = 2 * pairs.len();
        let found = weights.names().len();
        if found != expected {
            return Err(ModelError::format(
                weights.path(),
                format!("{found} tensors where this LoRA ({} pairs) has {expected}", pairs.len()),
            ));
        }
        Ok(Self { pairs, scale })
    }

    /// The factors under PEFT's names, in PEFT's layout.
    pub fn named_tensors(&self) -> Vec<(String, HostTensor)> {
        let host = |t: &Param<Tensor<B, 2>>| {
            let data = t.val().into_data();
            HostTensor { shape: data.shape.to_vec(), data: data.iter::<f32>().collect() }
        };
        self.pairs
            .iter()
            .flat_map(|p| {
                let prefix = peft_prefix(p.layer, p.target);
                [
                    (format!("{prefix}.lora_A.weight"), host(&p.lora_a)),
                    (format!("{prefix}.lora_B.weight"), host(&p.lora_b)),
                ]
            })
            .collect()
    }

    /// `base` with every adapted weight replaced by `W + scale·(B·A)ᵀ` (burn's `[d_in, d_out]` layout).
    /// Differentiable in the factors: training runs the merged model, whose weights carry the graph back
    /// to A and B, so the forward pass stays the plain encoder's. A pair whose layer or shape does not fit
    /// `base` is a [`ModelError::Input`].
    pub fn merge(&self, base: &BertModel<B>) -> Result<BertModel<B>, ModelError> {
        let mut model = base.clone();
        for p in &self.pairs {
            let [d_out, d_in] = p.target.shape(&base.config);
            let (a, b) = (p.lora_a.val(), p.lora_b.val()); // [r, d_in], [d_out, r]
            let fits = a.dims()[1] == d_in && b.dims()[0] == d_out && a.dims()[0] == b.dims()[1];
            let Some(layer) = model.encoder.layer.get_mut(p.layer).filter(|_| fits) else {
                return Err(ModelError::Input(format!(
                    "LoRA pair for layer {} `{}` does not fit the encoder ({} layers, [{d_out}, {d_in}])",
                    p.layer,
                    p.target.path(),
                    base.config.num_hidden_layers
                )));
            };
            let linear = p.target.linear_mut(layer);
            let delta = a.transpose().matmul(b.transpose()).mul_scalar(self.scale); // [d_in, d_out]
            linear.weight = Param::initialized(ParamId::new(), linear.weight.val() + delta);
        }
        Ok(model)
    }
}

/// PEFT's module name of a target: `base_model.model.encoder.layer.N.<path>`.
fn peft_prefix(layer: usize, target: BertLinear) -> String {
    format!("base_model.model.encoder.layer.{layer}.{}", target.path())
}

/// Writes `bytes` to `path` through a temporary file in the same folder (synced, then renamed).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    use std::io::Write;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp: PathBuf = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        // Best effort: a leftover temporary file is harmless but untidy.
        let _ = std::fs::remove_file(&tmp);
        ModelError::io(path, e)
    })
}

/// Builds a `[batch, seq]` float mask tensor from host values (1.0 keep, 0.0 pad).
///
/// # Shapes
/// mask `batch·seq` values → `[batch, seq]`
pub fn mask_tensor<B: Backend>(mask: Vec<f32>, batch: usize, seq: usize, device: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(mask, [batch, seq]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use safetensors::{Dtype, tensor::TensorView};

    type B = ramole_core::backend::Selected;

    fn tiny_config() -> BertConfig {
        BertConfig {
            vocab_size: 20,
            hidden_size: 8,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 12,
            max_position_embeddings: 16,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
            position_embedding_type: "absolute".into(),
        }
    }

    /// A random tiny checkpoint folder (config.json + model.safetensors, with a pooler).
    fn tiny_checkpoint(dir: &Path, drop: Option<&str>) {
        tiny_checkpoint_with_root(dir, drop, "");
    }

    fn tiny_checkpoint_with_root(dir: &Path, drop: Option<&str>, root: &str) {
        let c = tiny_config();
        let h = c.hidden_size;
        let mut shapes = c.weight_shapes();
        shapes.push(("pooler.dense.weight".into(), vec![h, h]));
        shapes.push(("pooler.dense.bias".into(), vec![h]));
        let mut seed = 12345u64;
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
            .into_iter()
            .filter(|(n, _)| Some(n.as_str()) != drop)
            .map(|(n, s)| {
                let count: usize = s.iter().product();
                let data: Vec<u8> = (0..count)
                    .flat_map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        let v = ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.8;
                        v.to_le_bytes()
                    })
                    .collect();
                (format!("{root}{n}"), s, data)
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = bytes
            .iter()
            .map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).expect("view")))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).expect("write weights");
        std::fs::write(dir.join("config.json"), serde_json::to_string(&c).expect("json")).expect("write config");
    }

    fn run(model: &BertModel<B>, ids: Vec<i64>, mask: Vec<f32>, batch: usize) -> Vec<f32> {
        let seq = ids.len() / batch;
        let device = Default::default();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch, seq]), &device);
        let mask = mask_tensor::<B>(mask, batch, seq, &device);
        model.forward(ids, mask).into_data().iter::<f32>().collect()
    }

    #[test]
    fn save_then_load_gives_the_same_outputs() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_checkpoint(dir.path(), None);
        let device = Default::default();
        let model = BertModel::<B>::load(dir.path(), &device).expect("load");
        assert!(model.pooler.is_some());
        let out = run(&model, vec![1, 5, 7, 2], vec![1.0; 4], 1);
        assert_eq!(out.len(), 4 * 8);
        assert!(out.iter().all(|v| v.is_finite()));

        let copy = tempfile::tempdir().expect("tempdir");
        std::fs::copy(dir.path().join("config.json"), copy.path().join("config.json")).expect("copy");
        model.save_safetensors(&copy.path().join("model.safetensors")).expect("save");
        let reloaded = BertModel::<B>::load(copy.path(), &device).expect("reload");
        assert_eq!(model.named_tensors(), reloaded.named_tensors());
        assert_eq!(out, run(&reloaded, vec![1, 5, 7, 2], vec![1.0; 4], 1));
        let original = SafetensorsWeights::open(dir.path().join("model.safetensors")).expect("open");
        for (name, t) in reloaded.named_tensors() {
            assert_eq!(original.get(&name).expect("get"), Some(t), "tensor {name} changed through save/load");
        }
    }

    #[test]
    fn checkpoints_with_a_bert_prefix_load_the_same() {
        let (plain, prefixed) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        tiny_checkpoint(plain.path(), None);
        tiny_checkpoint_with_root(prefixed.path(), None, "bert.");
        let a = BertModel::<B>::load(plain.path(), &Default::default()).expect("plain");
        let b = BertModel::<B>::load(prefixed.path(), &Default::default()).expect("prefixed");
        assert!(b.pooler.is_some());
        assert_eq!(a.named_tensors(), b.named_tensors());
    }

    #[test]
    fn padding_does_not_change_real_positions() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_checkpoint(dir.path(), None);
        let model = BertModel::<B>::load(dir.path(), &Default::default()).expect("load");
        let alone = run(&model, vec![1, 5, 7, 2], vec![1.0; 4], 1);
        let padded = run(
            &model,
            vec![1, 5, 7, 2, 0, 0, 1, 3, 0, 0, 0, 0],
            vec![1., 1., 1., 1., 0., 0., 1., 1., 0., 0., 0., 0.],
            2,
        );
        for (a, b) in alone.iter().zip(&padded[..4 * 8]) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn exact_gelu_matches_erf_values() {
        let device = Default::default();
        let x = Tensor::<B, 1>::from_floats([-3.0, -1.0, 0.0, 0.5, 2.0], &device);
        let got: Vec<f32> = gelu_exact(x).into_data().iter::<f32>().collect();
        // x·Φ(x), Φ from the standard normal table.
        let want = [-0.0040496, -0.15865525, 0.0, 0.34573123, 1.9544998];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    #[test]
    fn typed_errors_for_missing_tensor_and_bad_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_checkpoint(dir.path(), Some("encoder.layer.1.output.dense.bias"));
        let err = BertModel::<B>::load(dir.path(), &Default::default()).expect_err("missing tensor");
        assert!(
            matches!(&err, ModelError::MissingTensor { tensor, .. } if tensor == "encoder.layer.1.output.dense.bias")
        );

        let mut bad = tiny_config();
        bad.num_attention_heads = 3;
        std::fs::write(dir.path().join("config.json"), serde_json::to_string(&bad).expect("json")).expect("write");
        let err = BertModel::<B>::load(dir.path(), &Default::default()).expect_err("bad heads");
        assert!(matches!(&err, ModelError::Config { message, .. } if message.contains("num_attention_heads")));

        std::fs::remove_file(dir.path().join("config.json")).expect("rm");
        let err = BertModel::<B>::load(dir.path(), &Default::default()).expect_err("no config");
        assert!(matches!(&err, ModelError::Io { path, .. } if path.ends_with("config.json")));
    }

    #[test]
    fn gradients_flow_through_the_encoder() {
        type A = Autodiff<B>;
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_checkpoint(dir.path(), None);
        let device = Default::default();
        let model = BertModel::<A>::load(dir.path(), &device).expect("load");
        let ids = Tensor::<A, 2, Int>::from_data(TensorData::new(vec![1i64, 4, 2, 0], [1, 4]), &device);
        let mask = mask_tensor::<A>(vec![1.0, 1.0, 1.0, 0.0], 1, 4, &device);
        let loss = model.forward(ids, mask).powf_scalar(2.0).sum();
        let grads = loss.backward();
        let g = model.encoder.layer[0].attention.self_attention.query.weight.grad(&grads).expect("query gradient");
        let g: Vec<f32> = g.into_data().iter::<f32>().collect();
        assert!(g.iter().any(|v| *v != 0.0) && g.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn lora_targets_follow_peft_suffix_matching() {
        assert_eq!(BertLinear::select(&["query", "value"]), Ok(vec![BertLinear::Query, BertLinear::Value]));
        assert_eq!(
            BertLinear::select(&["output.dense"]),
            Ok(vec![BertLinear::AttentionOutput, BertLinear::Output]),
            "PEFT's rule: `output.dense` is a suffix of `attention.output.dense` too"
        );
        assert_eq!(BertLinear::select(&["dense"]).map(|v| v.len()), Ok(3));
        let all: Vec<&str> = BertLinear::ALL.iter().map(|l| l.path()).collect();
        assert_eq!(BertLinear::select(&all), Ok(BertLinear::ALL.to_vec()));
        assert_eq!(BertLinear::select(&["q_proj"]), Err("q_proj".to_string()));
        assert_eq!(BertLinear::select(&["uery"]), Err("uery".to_string()), "suffixes are whole names");
    }

    /// The merged weights equal `W + scale·(B·A)ᵀ` computed with plain loops, the untouched layers stay
    /// as they were, and PEFT-named tensors round-trip; extra or missing tensors are refused.
    #[test]
    fn lora_merge_matches_the_dense_update_and_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_checkpoint(dir.path(), None);
        let device = Default::default();
        let base = BertModel::<B>::load(dir.path(), &device).expect("load");
        let c = base.config.clone();
        let mut k = 0u32;
        let mut next = move |_| {
            k = k.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (f64::from(k >> 16) / 65_536.0 - 0.5) as f32
        };
        let targets = [BertLinear::Key, BertLinear::Intermediate];
        let mut lora = BertLora::<B>::new(&c, &targets, 3, 0.5, &mut next, &device);
        assert_eq!(lora.pairs.len(), 2 * c.num_hidden_layers);
        for p in &mut lora.pairs {
            let [d_out, r] = p.lora_b.dims();
            let values: Vec<f32> = (0..d_out * r).map(&mut next).collect();
            p.lora_b = Param::from_tensor(Tensor::from_data(TensorData::new(values, [d_out, r]), &device));
        }
        let merged = lora.merge(&base).expect("merge");
        let host = |l: &Linear<B>| l.weight.val().into_data().iter::<f32>().collect::<Vec<f32>>(); // [in, out]
        for p in &lora.pairs {
            let a: Vec<f32> = p.lora_a.val().into_data().iter::<f32>().collect(); // [r, in]
            let b: Vec<f32> = p.lora_b.val().into_data().iter::<f32>().collect(); // [out, r]
            let [d_out, d_in] = p.target.shape(&c);
            let pick = |m: &BertModel<B>| match p.target {
                BertLinear::Key => host(&m.encoder.layer[p.layer].attention.self_attention.key),
                _ => host(&m.encoder.layer[p.layer].intermediate.dense),
            };
            let (w, got) = (pick(&base), pick(&merged));
            for i in 0..d_in {
                for o in 0..d_out {
                    let delta: f32 = (0..3).map(|j| b[o * 3 + j] * a[j * d_in + i]).sum::<f32>() * 0.5;
                    let want = w[i * d_out + o] + delta;
                    assert!((got[i * d_out + o] - want).abs() < 1e-5, "layer {} {:?} [{i},{o}]", p.layer, p.target);
                }
            }
        }
        let value = |m: &BertModel<B>| host(&m.encoder.layer[0].attention.self_attention.value);
        assert_eq!(value(&base), value(&merged), "a layer the LoRA does not target is unchanged");

        let tensors = lora.named_tensors();
        assert!(tensors.iter().any(|(n, _)| n == "base_model.model.encoder.layer.1.intermediate.dense.lora_B.weight"));
        let file = |tensors: &[(String, HostTensor)]| {
            let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
                .iter()
                .map(|(n, t)| (n.clone(), t.shape.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect()))
                .collect();
            let views: Vec<(String, TensorView<'_>)> = bytes
                .iter()
                .map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).expect("view")))
                .collect();
            let data = safetensors::serialize(views, None).expect("serialise");
            SafetensorsWeights::from_bytes(PathBuf::from("lora.safetensors"), data).expect("parse")
        };
        let back = BertLora::<B>::from_weights(&c, &targets, 3, 0.5, &file(&tensors), &device).expect("from weights");
        let again = back.merge(&base).expect("merge");
        assert_eq!(host(&again.encoder.layer[1].intermediate.dense), host(&merged.encoder.layer[1].intermediate.dense));
        let mut extra = tensors.clone();
        extra.push((
            "base_model.model.pooler.dense.lora_A.weight".into(),
            HostTensor { shape: vec![1], data: vec![0.0] },
        ));
        let err = BertLora::<B>::from_weights(&c, &targets, 3, 0.5, &file(&extra), &device).expect_err("extra");
        assert!(err.to_string().contains("tensors"), "{err}");
        let err = BertLora::<B>::from_weights(&c, &targets, 4, 0.5, &file(&tensors), &device).expect_err("rank");
        assert!(matches!(err, ModelError::TensorShape { .. }), "{err}");
        let missing: Vec<_> = tensors.into_iter().skip(1).collect();
        let err = BertLora::<B>::from_weights(&c, &targets, 3, 0.5, &file(&missing), &device).expect_err("missing");
        assert!(matches!(err, ModelError::MissingTensor { .. }), "{err}");
        // A LoRA for a deeper model does not fit this one.
        let deeper = BertConfig { num_hidden_layers: 3, ..c.clone() };
        let too_deep = BertLora::<B>::new(&deeper, &targets, 3, 0.5, |_| 0.1, &device);
        assert!(matches!(too_deep.merge(&base), Err(ModelError::Input(_))));
    }
}
