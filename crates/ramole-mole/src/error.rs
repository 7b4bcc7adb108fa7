use std::path::PathBuf;

/// Errors of `ramole-mole`. Each names the adapter file, tensor or request at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MoleError {
    /// A file that cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An `adapter_config.json` that is not valid or not a LoRA config.
    #[error("{path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An adapter option this implementation does not support (refused, never ignored).
    #[error("{path}: unsupported adapter option `{option}`: {detail}")]
    Unsupported {
        /// The config file.
        path: PathBuf,
        /// The option.
        option: String,
        /// Its value or why it is refused.
        detail: String,
    },
    /// An adapter tensor that is malformed or does not fit the base model.
    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// A request that names an adapter the pool does not hold.
    #[error("request `{request}`: unknown adapter `{adapter}`")]
    UnknownAdapter {
        /// The request (or row).
        request: String,
        /// The adapter name.
        adapter: String,
    },
    /// A request that names an adapter whose loading failed (e.g. a bad sub-folder of
    /// [`crate::AdapterPool::load_dir`]).
    #[error("request `{request}`: adapter `{adapter}` failed to load: {reason}")]
    AdapterNotLoaded {
        /// The request (or row).
        request: String,
        /// The adapter name.
        adapter: String,
        /// Why it did not load.
        reason: String,
    },
    /// A folder given as a pool of adapters that holds none.
    #[error("{path}: {message}")]
    NoAdapters {
        /// The folder.
        path: PathBuf,
        /// What it holds instead.
        message: String,
    },
    /// A request whose adapter list or composition is invalid.
    #[error("request `{request}`: {message}")]
    Request {
        /// The request (or row).
        request: String,
        /// What is wrong.
        message: String,
    },
    /// An adapter name already in the pool.
    #[error("adapter `{0}` is already loaded")]
    Duplicate(String),
    /// A training data file with a bad record.
    #[error("{path}: line {line}: {message}")]
    TrainData {
        /// The data file.
        path: PathBuf,
        /// The 1-based line (0 for the file as a whole).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A LoRA training run that cannot start or that failed (bad configuration, diverging loss).
    #[error("LoRA training: {0}")]
    Training(String),
    /// An error of the model layer.
    #[error(transparent)]
    Model(#[from] ramole_models::ModelError),
    /// An error of the tensor layer.
    #[error(transparent)]
    Core(#[from] ramole_core::CoreError),
}
