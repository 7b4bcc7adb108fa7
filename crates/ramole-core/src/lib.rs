#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod assets;
pub mod backend;
mod error;
pub mod lora;

pub use error::CoreError;
