//! Errors. One enum for the library; every variant says what went wrong and where.

use std::path::PathBuf;

/// The result type used throughout graftdb.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in graftdb.
///
/// Bad input (`InvalidInput`), a damaged file (`Corrupt`) and an operating-system
/// failure (`Io`) are separate variants, so callers can tell "fix your data" from
/// "fix your disk".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file the operation was on.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Input that graftdb refuses: `at` names the file, row or argument.
    #[error("{at}: {detail}")]
    InvalidInput {
        /// Where the bad input is (a file and row, or an argument name).
        at: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A file that is damaged or not a graftdb file.
    #[error("{path}: corrupt or unreadable: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// The database was written by a newer version of graftdb.
    #[error("{path}: written by format version {found}, this graftdb reads up to {supported}; upgrade graftdb")]
    FormatTooNew {
        /// The database file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// Another writer (in this or another process) holds the database.
    #[error("{path}: database is locked by another writer")]
    Locked {
        /// The database directory.
        path: PathBuf,
    },
    /// A space name that the database does not hold.
    #[error("unknown embedding space '{0}'")]
    UnknownSpace(String),
    /// An id that is already present.
    #[error("{at}: duplicate id {id}")]
    DuplicateId {
        /// Where the duplicate came from.
        at: String,
        /// The id.
        id: String,
    },
    /// A record that is not in the database.
    #[error("no record with id {0}")]
    NotFound(String),
    /// A failure inside redb that is not an I/O error on our side.
    #[error("storage: {0}")]
    Storage(String),
    /// A failure inside the vector index.
    #[error("vector index: {0}")]
    Index(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(at: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::InvalidInput { at: at.into(), detail: detail.into() }
    }
    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self { Error::Storage(e.to_string()) }
        }
    )*};
}
storage_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
