//! Loading a Llama-family causal LM from what a user points at: a GGUF file (block-quantized weights
//! kept quantized on CPU backends or dequantised, `WeightFormat`; tokenizer rebuilt from the metadata) or an HF folder (`config.json`, `model.safetensors`, optional
//! `tokenizer.json`). One loader for the engine, LoRA training and every other user of the base model.

use std::path::Path;

use burn::tensor::backend::Backend;
use tokenizers::Tokenizer;

use crate::ModelError;
use crate::gguf::GgufWeights;
use crate::linear::WeightFormat;
use crate::llama::{LlamaConfig, LlamaForCausalLM};
use crate::weights::SafetensorsWeights;

/// A base model with its configuration and tokenizer.
#[derive(Debug)]
pub struct CausalLm<B: Backend> {
    /// The model.
    pub model: LlamaForCausalLM<B>,
    /// Its configuration.
    pub config: LlamaConfig,
    /// Its tokenizer, when the model came with one.
    pub tokenizer: Option<Tokenizer>,
}

impl<B: Backend> CausalLm<B> {
    /// Loads a GGUF file or an HF folder (module docs), the weights held as [`WeightFormat::Auto`]
    /// says for `B`.
    pub fn load(path: impl AsRef<Path>, device: &B::Device) -> Result<Self, ModelError> {
        Self::load_with(path, device, WeightFormat::Auto)
    }

    /// Loads a GGUF file or an HF folder, the weights held as `format` says (only a GGUF file's
    /// Q4_0/Q4_1/Q8_0 matrices can stay quantized).
    pub fn load_with(path: impl AsRef<Path>, device: &B::Device, format: WeightFormat) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
        if meta.is_dir() {
            let config = LlamaConfig::from_hf_file(path.join("config.json"))?;
            let weights = SafetensorsWeights::open(path.join("model.safetensors"))?;
            let model = LlamaForCausalLM::load_with(&config, &weights, device, format)?;
            let tok_path = path.join("tokenizer.json");
            let tokenizer = match std::fs::symlink_metadata(&tok_path) {
                Ok(_) => Some(crate::tokenizer::load_tokenizer_json(&tok_path)?),
                Err(_) => None,
            };
            Ok(Self { model, config, tokenizer })
        } else {
            let weights = GgufWeights::open(path)?;
            let config = weights.llama_config()?;
            let tokenizer = crate::tokenizer::from_gguf(weights.file())?;
            let model = LlamaForCausalLM::load_with(&config, &weights, device, format)?;
            Ok(Self { model, config, tokenizer: Some(tokenizer) })
        }
    }
}
