#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod bert;
pub mod causal_lm;
mod error;
pub mod gguf;
pub mod linear;
pub mod llama;
pub mod tokenizer;
pub mod weights;

pub use causal_lm::CausalLm;
pub use error::ModelError;
