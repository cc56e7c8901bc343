//! The `file` credential source: a subject token in a local file, such as a Kubernetes
//! projected service-account token or a token an agent keeps fresh (google-protocols.md §2.4).
//!
//! ```json
//! "credential_source": {"file": "/var/run/secrets/tokens/gcp", "format": {"type": "text"}}
//! ```

use std::fmt;
use std::path::PathBuf;

use broker_core::{Secret, SourceError, UpstreamStatus};

use super::fields::Fields;
use super::format::Format;
use super::{MAX_SUBJECT_TOKEN_SOURCE_BYTES, ReadError, read_bounded};
use crate::BackendError;

/// How errors of this source name it as their `upstream`.
pub(crate) const UPSTREAM: &str = "credential_source.file";

/// A subject token read from a file, again for every exchange (the file may be rotated
/// between two), in the configured [`Format`].
pub(crate) struct FileSource {
    path: PathBuf,
    format: Format,
}

impl fmt::Debug for FileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSource")
            .field("path", &self.path)
            .field("format", &self.format)
            .finish()
    }
}

impl FileSource {
    /// Reads `credential_source.file` and `credential_source.format`.
    pub(crate) fn parse(source: &mut Fields<'_>) -> Result<Self, BackendError> {
        let path = source.required_string("credential_source.file")?;
        let format = Format::parse(source)?;
        Ok(Self {
            path: PathBuf::from(path),
            format,
        })
    }

    /// Reads the file (at most [`MAX_SUBJECT_TOKEN_SOURCE_BYTES`]) and takes the token out
    /// of it.
    ///
    /// # Errors
    ///
    /// [`SourceError::Unavailable`] (status `io`) when the file cannot be read: it may be
    /// being rotated; [`SourceError::Malformed`] when it is too large, not UTF-8, or does not
    /// hold a token in the configured format. Neither quotes the file.
    pub(crate) async fn subject_token(&self) -> Result<Secret, SourceError> {
        let content = read_bounded(&self.path, MAX_SUBJECT_TOKEN_SOURCE_BYTES)
            .await
            .map_err(|error| match error {
                ReadError::Io(error) => SourceError::Unavailable {
                    upstream: UPSTREAM.to_owned(),
                    status: UpstreamStatus::Io,
                    message: format!(
                        "cannot read the subject token file {}: {error}",
                        self.path.display()
                    ),
                    retry_after: None,
                },
                other => self.malformed(&other.to_string()),
            })?;
        let token = self
            .format
            .extract(&content)
            .map_err(|problem| self.malformed(&problem))?;
        tracing::debug!(
            path = %self.path.display(),
            subject_token = %token.fingerprint(),
            "subject token read from a file"
        );
        Ok(token)
    }

    fn malformed(&self, problem: &str) -> SourceError {
        SourceError::Malformed {
            upstream: UPSTREAM.to_owned(),
            message: format!("the subject token file {} {problem}", self.path.display()),
        }
    }
}
