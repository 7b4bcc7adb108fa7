#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod backend;
mod error;
pub mod fs;
pub mod kv;
pub mod lora;
pub mod quant;

pub use error::CoreError;
