use std::path::PathBuf;

/// Errors of `ramole-models`. Each names the file, tensor or field at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file that cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file whose content is not what its format requires (corrupt, truncated, wrong type).
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor the model needs that the weights lack.
    #[error("{path}: missing tensor `{tensor}`")]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
    },
    /// A tensor whose shape is not the one the configuration implies.
    #[error("{path}: tensor `{tensor}` has shape {got:?}, expected {expected:?}")]
    TensorShape {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The expected shape.
        expected: Vec<usize>,
        /// The shape found.
        got: Vec<usize>,
    },
    /// A tensor with NaN or infinite values.
    #[error("{path}: tensor `{tensor}` holds non-finite values (NaN or Inf)")]
    NonFinite {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
    },
    /// A tensor stored in a data type this loader does not read.
    #[error("{path}: tensor `{tensor}` has unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The data type.
        dtype: String,
    },
    /// A configuration that is missing a field or holds an unusable value.
    #[error("{path}: {message}")]
    Config {
        /// The configuration file (or GGUF file for its metadata).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tokenizer that cannot be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Input that the model cannot take (empty, too long, token out of vocabulary).
    #[error("input: {0}")]
    Input(String),
    /// An error of the tensor layer.
    #[error(transparent)]
    Core(#[from] ramole_core::CoreError),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Format { path: path.into(), message: message.into() }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Config { path: path.into(), message: message.into() }
    }
}
