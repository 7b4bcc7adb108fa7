#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod comparison;
pub mod metrics;
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
    /// The task suite.
    #[error(transparent)]
    Task(#[from] ramole_retriever::tasks::TaskError),
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
