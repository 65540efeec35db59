//! Typed errors of data preparation and reading. Each carries a stable code (the same strings the
//! TypeScript side uses for corpus errors) and a one-line message that names the file, the line and
//! the field where there is one.

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An input or a dataset file does not exist.
    #[error("{0}")]
    Missing(String),
    /// Malformed input: bad JSON, a missing or mistyped field, a manifest that fails its schema.
    #[error("{0}")]
    Format(String),
    /// A domain without a single usable document.
    #[error("{0}")]
    Empty(String),
    /// A file whose checksum or size differs from its manifest.
    #[error("{0}")]
    Checksum(String),
    /// A prepared dataset is already at the output path (and `force` was not given).
    #[error("{0}")]
    Exists(String),
    /// An invalid option.
    #[error("{0}")]
    Config(String),
    /// The file system refused a read or write.
    #[error("{0}")]
    Io(String),
    /// The job was cancelled.
    #[error("{0}")]
    Cancelled(String),
    /// A bug (a panic caught at the binding).
    #[error("internal error: {0}")]
    Internal(String),
}

impl DataError {
    pub fn code(&self) -> &'static str {
        match self {
            DataError::Missing(_) => "CORPUS_MISSING",
            DataError::Format(_) => "CORPUS_FORMAT",
            DataError::Empty(_) => "CORPUS_EMPTY",
            DataError::Checksum(_) => "CORPUS_CHECKSUM",
            DataError::Exists(_) => "DATASET_EXISTS",
            DataError::Config(_) => "INVALID_CONFIG",
            DataError::Io(_) => "IO_ERROR",
            DataError::Cancelled(_) => "CANCELLED",
            DataError::Internal(_) => "INTERNAL",
        }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;

/// `path: e`, as `Missing` when the file does not exist.
pub fn io(path: &std::path::Path, e: std::io::Error) -> DataError {
    match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing(format!("{}: no such file or folder", path.display())),
        _ => DataError::Io(format!("{}: {e}", path.display())),
    }
}
