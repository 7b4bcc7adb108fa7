use std::path::PathBuf;

/// Errors of `ramole-batch`. Request errors name the request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// A file that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A request file that is not valid.
    #[error("{path}: {message}")]
    RequestFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The content of a request file that is not valid (not JSON, a case with neither `input_ids` nor
    /// `prompt`, duplicate names, ...), as [`crate::RequestFile::from_json`] reports it; `request`
    /// names the case at fault when there is one. [`crate::RequestFile::from_file`] reports it as
    /// [`BatchError::RequestFile`] with the path.
    #[error("{}{message}", request.as_ref().map(|r| format!("request `{r}`: ")).unwrap_or_default())]
    InvalidRequests {
        /// The case at fault, if the problem is one case's.
        request: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A request whose logits stopped being usable numbers (NaN, infinity, or all equal because its
    /// activations overflowed f32), after the prefill or a decoding step: its adapters or weights
    /// make the model diverge. The row leaves the batch; the other rows are unaffected.
    #[error("request `{request}`: {message}")]
    Numerical {
        /// The request's name.
        request: String,
        /// What went wrong, and when.
        message: String,
    },
    /// A request that cannot run (empty prompt, too long, token out of vocabulary, ...).
    #[error("request `{request}`: {message}")]
    Request {
        /// The request's name.
        request: String,
        /// What is wrong.
        message: String,
    },
    /// An adapter error (loading, unknown name, composition).
    #[error(transparent)]
    Mole(#[from] ramole_mole::MoleError),
    /// A model error.
    #[error(transparent)]
    Models(#[from] ramole_models::ModelError),
    /// A tensor-layer error.
    #[error(transparent)]
    Core(#[from] ramole_core::CoreError),
}
