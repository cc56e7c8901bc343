//! Construction and configuration errors. Errors met while fetching tokens are
//! [`broker_core::SourceError`]s instead.

use std::path::PathBuf;
use std::sync::Arc;

use broker_core::SourceError;

/// Why a backend could not be built from its configuration. Messages say which file and field
/// are at fault and never contain key material.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The credential file could not be read.
    #[error("cannot read credential file {path}: {source}")]
    ReadKeyFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: Arc<std::io::Error>,
    },
    /// The credential file is not JSON. Only the position is reported: the text may be key
    /// material.
    #[error(
        "credential file {origin} is not valid JSON ({category} error at line {line}, column {column})"
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
    /// A field of the credential file is missing or has the wrong type.
    #[error("credential file {origin}: field `{field}` {problem}")]
    KeyFileField {
        /// Where the key came from.
        origin: String,
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The credential file is another kind of credential than the one expected.
    #[error("credential file {origin}: `type` is {found:?}, expected {expected}")]
    WrongKeyType {
        /// Where the credential came from.
        origin: String,
        /// The `type` found (a credential type name, never key material).
        found: String,
        /// What was expected, such as `"service_account"`.
        expected: &'static str,
    },
    /// The credential file is of a kind Google defines but the broker does not support yet
    /// (`external_account_authorized_user`, `gdch_service_account`).
    #[error("credential file {origin}: credentials of type {found:?} are not supported yet")]
    UnsupportedCredentialType {
        /// Where the credential came from.
        origin: String,
        /// The `type` found.
        found: String,
    },
    /// A credential file has a field the broker does not know. Google's clients ignore such
    /// fields; the broker refuses them, so that nothing in a file is silently left unused.
    #[error("credential file {origin}: unknown field `{field}`")]
    UnknownField {
        /// Where the credential came from.
        origin: String,
        /// The field, with its path (such as `credential_source.executable.foo`); a name
        /// that is not short and plain is not echoed.
        field: String,
    },
    /// An `external_account` credential runs an executable, and the broker's configuration
    /// did not allow executables.
    #[error(
        "credential file {origin}: its credential source runs an executable ({command:?}), which is not allowed; \
         allow executables explicitly for this credential (the broker's `allow_executable = true`, the \
         equivalent of GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1)"
    )]
    ExecutableNotAllowed {
        /// Where the credential came from.
        origin: String,
        /// The program the credential would run (the command's first word).
        command: String,
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
    /// A service account named in the configuration or a credential file is neither an email
    /// nor a numeric unique id.
    #[error("`{field}`: {value:?} is not a service-account email or unique id")]
    InvalidServiceAccount {
        /// The field, such as `target_service_account` or `delegates`.
        field: &'static str,
        /// The value (cut to 300 characters).
        value: String,
    },
    /// An environment variable the backend reads has an unusable value.
    #[error("environment variable {name} = {value:?} is invalid: {reason}")]
    InvalidEnvironment {
        /// The variable.
        name: &'static str,
        /// Its value (a host or a path, never a secret).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Building the backend needed an answer from Google that did not come: the email of the
    /// metadata server's account or of an authorized user. [`BackendError::is_transient`] says
    /// whether trying again later may help.
    #[error("cannot discover {what}: {source}")]
    Discovery {
        /// What was being discovered, such as `the email of the metadata server's account "default"`.
        what: String,
        /// Why it failed.
        source: SourceError,
    },
    /// Application Default Credentials found nothing.
    #[error("no Application Default Credentials found; tried: {tried}")]
    NoDefaultCredentials {
        /// What was tried, in order, and why each failed.
        tried: String,
    },
}

impl BackendError {
    /// Whether building the backend again later may succeed: a discovery that failed on a
    /// transient upstream error. Everything else is a configuration error.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Discovery { source, .. } if source.is_transient())
    }
}
