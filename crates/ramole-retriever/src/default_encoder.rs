//! The project's default retriever: all-MiniLM-L6-v2 with a rank-8 LoRA trained contrastively by
//! `ramole train-retriever` on the suite's 18 training tasks (LoraRetriever's point: a retriever trained
//! to find LoRAs it never saw). The LoRA's three files are compiled into this crate (1.3 MB), so a fresh
//! clone or a crates.io install works offline once the base encoder is fetched; apply it with
//! [`crate::SentenceEncoder::with_adapter`]. `default-encoder/README.md` in this crate has the command and
//! seed that reproduce it and what it measured.

use crate::{EncoderAdapter, RetrieverError};

/// The name the shipped adapter goes by in errors.
pub const NAME: &str = "<ramole default retriever LoRA>";

const CONFIG: &[u8] = include_bytes!("../default-encoder/adapter_config.json");
const META: &[u8] = include_bytes!("../default-encoder/ramole_encoder.json");
const WEIGHTS: &[u8] = include_bytes!("../default-encoder/adapter_model.safetensors");

/// The shipped adapter, checked (its weights are checked when applied).
pub fn adapter() -> Result<EncoderAdapter, RetrieverError> {
    EncoderAdapter::from_bytes(NAME, CONFIG, META, WEIGHTS.to_vec())
}
