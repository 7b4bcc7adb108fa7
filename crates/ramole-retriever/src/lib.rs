#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod adapter;
pub mod default_encoder;
pub mod encoder;
mod error;
pub mod index;
mod int8;
pub mod pool;

pub use adapter::EncoderAdapter;
pub use encoder::{DEFAULT_INSTRUCTION, SentenceEncoder, UNSAVED_IDENTITY};
pub use error::RetrieverError;
pub use index::{Hit, Index};
pub use pool::{LoraPool, PoolEntry, SkippedEntry, parse_jsonl_texts, read_jsonl_texts};
