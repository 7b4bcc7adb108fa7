#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod bert;
mod error;
pub mod gguf;
pub mod llama;
pub mod tokenizer;
pub mod weights;

pub use error::ModelError;
