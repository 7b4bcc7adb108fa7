/// Errors of `ramole-core`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// Tensors whose shapes do not fit together.
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    Shape {
        /// What was being built or checked.
        what: String,
        /// The shape that was expected.
        expected: String,
        /// The shape that was found.
        got: String,
    },
    /// Values that are not finite where only finite ones make sense (a weight's scale).
    #[error("{what} holds a value that is not finite")]
    NonFinite {
        /// What holds it.
        what: String,
    },
    /// A row's adapter composition that cannot be computed.
    #[error("invalid composition: {0}")]
    Composition(String),
}
