#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod comparison;
pub mod gate;
pub mod metrics;
pub mod retrieval_eval;
pub mod tasks;
pub mod train_retriever;
pub mod zoo;

/// Errors of the research tooling. Each names the task, file or setting at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResearchError {
    /// A configuration that cannot work.
    #[error("{0}")]
    Config(String),
    /// A record that cannot be written or read.
    #[error("{0}")]
    Format(String),
    /// A numeric argument or setting outside its range (an evaluation of 0 inputs per task, a training
    /// run of 0 epochs, a batch size of 0, …) or a value that names no option (`--negatives`).
    #[error("{name}: {message}")]
    InvalidArgument {
        /// The argument or setting.
        name: &'static str,
        /// What is wrong with its value.
        message: String,
    },
    /// Data that an evaluation or a training run cannot use (embeddings whose counts disagree, no test
    /// input at all, a task with no sample or no training input).
    #[error("input: {0}")]
    Input(String),
    /// The task suite.
    #[error(transparent)]
    Task(#[from] tasks::TaskError),
    /// The retriever (pool, encoder).
    #[error(transparent)]
    Retriever(#[from] ramole_retriever::RetrieverError),
    /// LoRA training or adapters.
    #[error(transparent)]
    Mole(#[from] ramole_mole::MoleError),
    /// The base model.
    #[error(transparent)]
    Model(#[from] ramole_models::ModelError),
    /// The routed pipeline.
    #[error(transparent)]
    Pipeline(#[from] ramole_pipeline::PipelineError),
}
