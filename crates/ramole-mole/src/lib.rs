#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod compose;
mod error;
pub mod gate;
pub mod peft;
pub mod pool;
pub mod synthetic;
pub mod train;

pub use compose::{BatchAdapters, ResolvedRow, RowRequest};
pub use error::MoleError;
pub use gate::RouterGate;
pub use peft::LoraAdapter;
pub use pool::AdapterPool;
pub use ramole_core::lora::Composition;
