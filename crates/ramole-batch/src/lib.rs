#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod bench;
pub mod engine;
mod error;
pub mod request;
pub mod sampling;
pub mod scheduler;

pub use engine::{Engine, PREFILL_COLUMNS, RequestOutput, RunOptions, RunStats};
pub use error::BatchError;
pub use request::{Request, RequestFile, RequestInput};
pub use sampling::Sampling;
pub use scheduler::{Batching, DEFAULT_PREFILL_CHUNK, Event, FinishReason, Scheduler, SchedulerStats, SequenceId};
