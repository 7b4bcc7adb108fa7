#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod activation;
pub mod attention;
pub mod backend;
mod cpu;
mod error;
pub mod fs;
pub mod gemm;
pub mod kv;
pub mod lora;
pub mod quant;

pub use error::CoreError;
