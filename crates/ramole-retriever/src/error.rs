use std::path::PathBuf;

/// Errors of `ramole-retriever`. Each names the file, folder, entry or input at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetrieverError {
    /// An error of the model layer (weights, configuration).
    #[error(transparent)]
    Model(#[from] ramole_models::ModelError),
    /// A file or folder that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A model folder that lacks a file the sentence encoder needs.
    #[error("model folder {dir}: missing `{file}`")]
    MissingModelFile {
        /// The model folder.
        dir: PathBuf,
        /// The missing file, relative to the folder.
        file: String,
    },
    /// A configuration or data file whose content is unusable.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tokenizer that cannot be built or cannot encode a text.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A LoRA name that is not a safe file name.
    #[error("invalid LoRA name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// A LoRA name that is already in the pool or index.
    #[error("{pool}: a LoRA named `{name}` already exists")]
    DuplicateName {
        /// The pool folder (or `<index>` for an in-memory index).
        pool: PathBuf,
        /// The name.
        name: String,
    },
    /// A LoRA name that is not in the pool or index.
    #[error("{pool}: no LoRA named `{name}`")]
    UnknownName {
        /// The pool folder (or `<index>` for an in-memory index).
        pool: PathBuf,
        /// The name.
        name: String,
    },
    /// A samples file (or list) with no sample in it.
    #[error("{path}: no samples (a LoRA needs at least one)")]
    EmptySamples {
        /// The samples file (or `<samples>` for an in-memory list).
        path: PathBuf,
    },
    /// A line of a JSONL file that is neither a JSON string nor an object with a string `input`.
    #[error("{path}:{line}: {message}")]
    JsonlLine {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// An adapter folder that is not a readable PEFT adapter.
    #[error("adapter {path}: {message}")]
    Adapter {
        /// The adapter folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A vector whose length is not the index's dimension.
    #[error("`{name}`: embedding has {got} values, the index holds {expected}-dimensional vectors")]
    Dimension {
        /// The entry or query.
        name: String,
        /// The index's dimension.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A vector that cannot be normalised (zero, NaN or infinite values).
    #[error("`{name}`: embedding is zero or holds non-finite values")]
    BadVector {
        /// The entry or query.
        name: String,
    },
    /// An input the encoder cannot take (for example an empty list of texts).
    #[error("input: {0}")]
    Input(String),
    /// A numeric argument or setting outside its range (a top-k of 0, an embedding batch size of 0, …).
    #[error("{name}: {message}")]
    InvalidArgument {
        /// The argument or setting.
        name: &'static str,
        /// What is wrong with its value.
        message: String,
    },
    /// A pool folder opened for reading that does not exist (or has no `entries/` folder); only
    /// [`crate::LoraPool::create`] creates a pool.
    #[error("no LoRA pool in {dir}: the pool does not exist (`ramole pool add` creates it)")]
    NoPool {
        /// The pool folder.
        dir: PathBuf,
    },
    /// A pool embedded by one encoder, given another to add to it, query it or re-embed it from.
    #[error(
        "the pool in {pool} was embedded by the encoder {recorded}, not by the one given ({given}): \
         pass the matching `--model` (`--model base` is the untrained all-MiniLM-L6-v2), or re-embed the pool with this encoder (`ramole pool reembed --model DIR`)"
    )]
    EncoderMismatch {
        /// The pool folder.
        pool: PathBuf,
        /// The identity the pool records ([`crate::LoraPool::encoder_identity`]).
        recorded: String,
        /// The identity of the encoder given ([`crate::SentenceEncoder::identity`]).
        given: String,
    },
    /// An encoder whose model was replaced in memory (after training), which a pool cannot record.
    #[error(
        "the pool in {pool} cannot be embedded by an encoder whose model was changed in memory and not saved: \
         save it and load it first"
    )]
    UnsavedEncoder {
        /// The pool folder.
        pool: PathBuf,
    },
    /// An encoder adapter given a base encoder other than the one it was trained on.
    #[error(
        "encoder adapter {adapter} was trained on the encoder {expected}, not on the one given ({given}): \
         apply it to all-MiniLM-L6-v2 as `ramole fetch` installs it"
    )]
    AdapterBase {
        /// The adapter folder (or the name of the shipped one).
        adapter: PathBuf,
        /// The base identity the adapter records.
        expected: String,
        /// The identity of the encoder it was given.
        given: String,
    },
    /// A pool that cannot be re-embedded: entries without stored samples, or entry files it skipped.
    #[error("the pool in {pool} cannot be re-embedded, nothing was changed: {reason}")]
    NotReembeddable {
        /// The pool folder.
        pool: PathBuf,
        /// Which entries stand in the way, and why.
        reason: String,
    },
}

impl RetrieverError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Format { path: path.into(), message: message.into() }
    }
}
