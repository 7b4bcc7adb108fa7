use std::path::PathBuf;

/// Errors of the asset cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AssetError {
    /// An I/O error on a file of the asset cache.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A download whose sha256 is not the expected one.
    #[error("{path}: sha256 is {got}, expected {expected} (download corrupted or tampered with)")]
    Checksum {
        /// The downloaded file.
        path: PathBuf,
        /// The expected digest.
        expected: String,
        /// The digest found.
        got: String,
    },
    /// The package client could not fetch an asset.
    #[error("fetching {package}: {message}")]
    Fetch {
        /// The package that was asked for.
        package: String,
        /// What went wrong.
        message: String,
    },
    /// An archive that lacks a member or cannot be read.
    #[error("archive {path}: {message}")]
    Archive {
        /// The archive.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The Python interpreter that runs pip cannot be started.
    #[error("cannot run the Python interpreter `{program}` (pip fetches the assets; set RAMOLE_PYTHON): {source}")]
    Python {
        /// The program that was started.
        program: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl AssetError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}
