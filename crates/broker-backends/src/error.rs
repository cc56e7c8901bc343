//! Construction and configuration errors. Errors met while fetching tokens are
//! [`broker_core::SourceError`]s instead.

use std::path::PathBuf;
use std::sync::Arc;

/// Why a backend could not be built from its configuration. Messages say which file and field
/// are at fault and never contain key material.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    ReadKeyFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: Arc<std::io::Error>,
    },
    /// The key file is not JSON. Only the position is reported: the text may be key material.
    #[error(
        "key file {origin} is not valid JSON ({category} error at line {line}, column {column})"
    )]
    KeyFileSyntax {
        /// Where the key came from (a path, or a description).
        origin: String,
        /// `syntax`, `eof`, `data` or `io`.
        category: &'static str,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// A field of the key file is missing or has the wrong type.
    #[error("key file {origin}: field `{field}` {problem}")]
    KeyFileField {
        /// Where the key came from.
        origin: String,
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The key file is another kind of credential.
    #[error("key file {origin}: `type` is {found:?}, expected \"service_account\"")]
    WrongKeyType {
        /// Where the key came from.
        origin: String,
        /// The `type` found (a credential type name, never key material).
        found: String,
    },
    /// `private_key` is not a usable RSA private key.
    #[error("key file {origin}: `private_key` is not a usable RSA private key: {reason}")]
    InvalidPrivateKey {
        /// Where the key came from.
        origin: String,
        /// Why, in words that never quote the key.
        reason: String,
    },
    /// An endpoint URL is unusable.
    #[error("endpoint `{field}` = {url:?} is invalid: {reason}")]
    InvalidEndpoint {
        /// The [`crate::GoogleEndpoints`] field.
        field: &'static str,
        /// The URL configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built (e.g. TLS initialisation failed).
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
}
