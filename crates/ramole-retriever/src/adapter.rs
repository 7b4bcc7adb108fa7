//! Encoder adapters: a LoRA on the retriever's encoder, saved as a small PEFT folder next to the base
//! encoder it was trained on, instead of a full copy of it.
//!
//! The folder holds `adapter_config.json` (PEFT's `LoraConfig` fields: `peft_type` `LORA`, `task_type`
//! `FEATURE_EXTRACTION`, `r`, `lora_alpha`, `target_modules`, `base_model_name_or_path`),
//! `adapter_model.safetensors` (PEFT's names, `base_model.model.encoder.layer.N.<module>.lora_{A,B}.weight`,
//! f32) and `ramole_encoder.json` (the [`SentenceEncoder::identity`] of the base it was trained on, the
//! instruction it was trained with). [`SentenceEncoder::with_adapter`] refuses any other base, merges the
//! update into the base's weights once (`W + alpha/r · B·A`) and gives the result an identity of its own,
//! derived from the base's and from the adapter's bytes: so a pool embedded by "base + adapter" records
//! exactly that, wherever the adapter was loaded from (a folder, or the bytes the project ships,
//! [`crate::default_encoder`]).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use ramole_models::bert::{BertLinear, BertLora};
use ramole_models::weights::SafetensorsWeights;
use serde::{Deserialize, Serialize};

use crate::{RetrieverError, SentenceEncoder};

/// PEFT's configuration file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// PEFT's weights file.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// What PEFT does not record: the base's identity and the instruction.
pub const ADAPTER_META: &str = "ramole_encoder.json";
/// The `format` of [`ADAPTER_META`].
pub const ADAPTER_FORMAT: &str = "ramole-encoder-adapter/1";
/// The `base_model_name_or_path` written for an adapter of the default base encoder.
pub const MINILM_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// The largest adapter weights file read (a rank-256 LoRA on every linear layer of a BERT-base is ~150 MB).
const MAX_WEIGHTS_BYTES: u64 = 512 << 20;
/// The largest rank accepted.
const MAX_RANK: usize = 4096;

fn default_bias() -> String {
    "none".into()
}

/// `adapter_config.json`: the PEFT fields this crate reads and writes. Options that change the
/// update's form (DoRA, rsLoRA, trained biases, `fan_in_fan_out`) are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderAdapterConfig {
    /// Must be `LORA`.
    pub peft_type: String,
    /// `FEATURE_EXTRACTION` when written here; not checked on read.
    #[serde(default)]
    pub task_type: Option<String>,
    /// The rank.
    pub r: usize,
    /// The scale is `lora_alpha / r`.
    pub lora_alpha: f64,
    /// PEFT's module-name suffixes ([`BertLinear::select`]).
    pub target_modules: Vec<String>,
    /// The base encoder's name (informational; [`EncoderAdapterMeta::base_identity`] is what is checked).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Dropout during training (no effect at inference).
    #[serde(default)]
    pub lora_dropout: f64,
    /// Must be `none`.
    #[serde(default = "default_bias")]
    pub bias: String,
    /// Must be false.
    #[serde(default)]
    pub use_dora: bool,
    /// Must be false.
    #[serde(default)]
    pub use_rslora: bool,
    /// Must be false.
    #[serde(default)]
    pub fan_in_fan_out: bool,
}

/// `ramole_encoder.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderAdapterMeta {
    /// [`ADAPTER_FORMAT`].
    pub format: String,
    /// The [`SentenceEncoder::identity`] of the encoder the adapter was trained on.
    pub base_identity: String,
    /// The instruction prepended to texts during training.
    pub instruction: String,
}

/// A LoRA on the retriever's encoder, read and checked, not yet applied ([`SentenceEncoder::with_adapter`]).
#[derive(Debug, Clone)]
pub struct EncoderAdapter {
    origin: PathBuf,
    config: EncoderAdapterConfig,
    targets: Vec<BertLinear>,
    meta: EncoderAdapterMeta,
    config_bytes: Vec<u8>,
    weights_bytes: Vec<u8>,
}

impl EncoderAdapter {
    /// Whether `dir` holds an encoder adapter rather than a whole encoder: an `adapter_config.json` and no
    /// `model.safetensors`.
    pub fn is_adapter_dir(dir: &Path) -> bool {
        dir.join(ADAPTER_CONFIG).is_file() && !dir.join("model.safetensors").exists()
    }

    /// Reads and checks an adapter folder (the three files of the module docs).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, RetrieverError> {
        let dir = dir.as_ref();
        let read = |name: &str, max: u64| {
            let path = dir.join(name);
            ramole_core::fs::read_bounded(&path, max).map_err(|e| RetrieverError::io(&path, e))
        };
        let config = read(ADAPTER_CONFIG, ramole_core::fs::MAX_TEXT_BYTES)?;
        let meta = read(ADAPTER_META, ramole_core::fs::MAX_TEXT_BYTES)?;
        let weights = read(ADAPTER_WEIGHTS, MAX_WEIGHTS_BYTES)?;
        Self::from_bytes(dir, &config, &meta, weights)
    }

    /// An adapter from the bytes of its three files; `origin` names it in errors (a folder, or the
    /// shipped adapter's name). The configuration and metadata are checked here; the weights when applied.
    pub fn from_bytes(
        origin: impl Into<PathBuf>,
        config: &[u8],
        meta: &[u8],
        weights: Vec<u8>,
    ) -> Result<Self, RetrieverError> {
        let origin = origin.into();
        let config_path = origin.join(ADAPTER_CONFIG);
        let parsed: EncoderAdapterConfig = serde_json::from_slice(config)
            .map_err(|e| RetrieverError::format(&config_path, format!("not a PEFT LoRA config: {e}")))?;
        let bad = |message: String| Err(RetrieverError::format(&config_path, message));
        if parsed.peft_type != "LORA" {
            return bad(format!("`peft_type` is `{}`, only `LORA` is supported", parsed.peft_type));
        }
        if parsed.r == 0 || parsed.r > MAX_RANK {
            return bad(format!("`r` {} is not in 1..={MAX_RANK}", parsed.r));
        }
        if !(parsed.lora_alpha.is_finite() && parsed.lora_alpha > 0.0) {
            return bad(format!("`lora_alpha` {} is not a finite number > 0", parsed.lora_alpha));
        }
        if parsed.bias != "none" || parsed.use_dora || parsed.use_rslora || parsed.fan_in_fan_out {
            return bad(
                "`bias` other than `none`, `use_dora`, `use_rslora` and `fan_in_fan_out` are not supported".into()
            );
        }
        if parsed.target_modules.is_empty() {
            return bad("`target_modules` is empty".into());
        }
        let targets = BertLinear::select(&parsed.target_modules).map_err(|t| {
            RetrieverError::format(&config_path, format!("`target_modules` entry `{t}` names no linear layer of BERT"))
        })?;
        let meta_path = origin.join(ADAPTER_META);
        let meta_parsed: EncoderAdapterMeta = serde_json::from_slice(meta)
            .map_err(|e| RetrieverError::format(&meta_path, format!("not an encoder adapter's metadata: {e}")))?;
        if meta_parsed.format != ADAPTER_FORMAT {
            return Err(RetrieverError::format(
                &meta_path,
                format!("format `{}` is not `{ADAPTER_FORMAT}`", meta_parsed.format),
            ));
        }
        Ok(Self {
            origin,
            config: parsed,
            targets,
            meta: meta_parsed,
            config_bytes: config.to_vec(),
            weights_bytes: weights,
        })
    }

    /// Where the adapter came from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Its PEFT configuration.
    pub fn config(&self) -> &EncoderAdapterConfig {
        &self.config
    }

    /// The identity of the base encoder it was trained on.
    pub fn base_identity(&self) -> &str {
        &self.meta.base_identity
    }

    /// The instruction it was trained with.
    pub fn instruction(&self) -> &str {
        &self.meta.instruction
    }

    /// The identity of the encoder `base_identity + this adapter` ([`SentenceEncoder::with_adapter`]):
    /// sha256 over the base's identity and the bytes of the configuration and the weights.
    pub fn identity_on(&self, base_identity: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(b"ramole-encoder-identity/adapter/1\0");
        hasher.update(base_identity.as_bytes());
        for bytes in [&self.config_bytes, &self.weights_bytes] {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        }
        hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The LoRA's factors for an encoder of `config`, shapes and values checked.
    pub fn lora<B: Backend>(
        &self,
        config: &ramole_models::bert::BertConfig,
        device: &B::Device,
    ) -> Result<BertLora<B>, RetrieverError> {
        let weights = SafetensorsWeights::from_bytes(self.origin.join(ADAPTER_WEIGHTS), self.weights_bytes.clone())?;
        let scale = self.config.lora_alpha / self.config.r as f64;
        Ok(BertLora::from_weights(config, &self.targets, self.config.r, scale, &weights, device)?)
    }

    /// Writes an adapter folder for `lora` (scale `alpha / r`), trained on the encoder whose
    /// [`SentenceEncoder::identity`] is `base_identity` with `instruction`: the three files of the
    /// module docs, plus `extra` (name, bytes) files, staged in a sibling folder and renamed into place,
    /// so that `dir` is either absent or complete. An existing `dir` is replaced only with `overwrite`.
    pub fn save<B: Backend>(
        dir: &Path,
        lora: &BertLora<B>,
        alpha: f64,
        base_identity: &str,
        instruction: &str,
        extra: &[(&str, Vec<u8>)],
        overwrite: bool,
    ) -> Result<(), RetrieverError> {
        if base_identity == crate::UNSAVED_IDENTITY {
            return Err(RetrieverError::InvalidArgument {
                name: "base encoder",
                message: "an adapter must record a saved base encoder, not one changed in memory".into(),
            });
        }
        let Some(rank) = lora.pairs.first().map(|p| p.lora_a.dims()[0]) else {
            return Err(RetrieverError::InvalidArgument {
                name: "adapter",
                message: "the LoRA adapts no layer".into(),
            });
        };
        let mut targets: Vec<BertLinear> = lora.pairs.iter().map(|p| p.target).collect();
        targets.sort();
        targets.dedup();
        let config = EncoderAdapterConfig {
            peft_type: "LORA".into(),
            task_type: Some("FEATURE_EXTRACTION".into()),
            r: rank,
            lora_alpha: alpha,
            target_modules: targets.iter().map(|t| t.path().to_owned()).collect(),
            base_model_name_or_path: Some(MINILM_ID.into()),
            lora_dropout: 0.0,
            bias: default_bias(),
            use_dora: false,
            use_rslora: false,
            fan_in_fan_out: false,
        };
        let meta = EncoderAdapterMeta {
            format: ADAPTER_FORMAT.into(),
            base_identity: base_identity.to_owned(),
            instruction: instruction.to_owned(),
        };
        let json = |v: serde_json::Result<String>, file: &str| {
            v.map(|s| (s + "\n").into_bytes()).map_err(|e| RetrieverError::format(dir.join(file), e.to_string()))
        };
        let weights = ramole_models::weights::serialize_f32(&lora.named_tensors(), &dir.join(ADAPTER_WEIGHTS))?;
        let mut files: Vec<(&str, Vec<u8>)> = vec![
            (ADAPTER_CONFIG, json(serde_json::to_string_pretty(&config), ADAPTER_CONFIG)?),
            (ADAPTER_META, json(serde_json::to_string_pretty(&meta), ADAPTER_META)?),
            (ADAPTER_WEIGHTS, weights),
        ];
        files.extend(extra.iter().cloned());
        write_folder(dir, &files, overwrite)
    }
}

/// [`ramole_core::fs::write_folder`], its error as [`RetrieverError`].
fn write_folder(dir: &Path, files: &[(&str, Vec<u8>)], overwrite: bool) -> Result<(), RetrieverError> {
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    ramole_core::fs::write_folder(dir, &files, overwrite).map_err(|(path, e)| RetrieverError::io(&path, e))
}

impl<B: Backend> SentenceEncoder<B> {
    /// This encoder with `adapter` merged into its weights. The adapter must have been trained on this
    /// very encoder ([`EncoderAdapter::base_identity`] = [`Self::identity`], else
    /// [`RetrieverError::AdapterBase`]); the result's identity is derived from both.
    pub fn with_adapter(self, adapter: &EncoderAdapter) -> Result<Self, RetrieverError> {
        if adapter.base_identity() != self.identity() {
            return Err(RetrieverError::AdapterBase {
                adapter: adapter.origin.clone(),
                expected: adapter.base_identity().to_owned(),
                given: self.identity().to_owned(),
            });
        }
        let lora = adapter.lora::<B>(&self.model().config, self.device())?;
        let model = lora.merge(self.model())?;
        let identity = adapter.identity_on(self.identity());
        Ok(self.with_model_and_identity(model, identity))
    }
}
