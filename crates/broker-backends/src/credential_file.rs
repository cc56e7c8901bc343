//! Google's credential files (google-protocols.md §2): reading one, telling its `type`, and
//! building the source it describes.
//!
//! Every parser here reports the file (its path, or a description) and the field at fault and
//! never quotes a value that may be key material; the file's text is zeroized once parsed.

use std::path::Path;
use std::sync::Arc;

use broker_core::TokenSource;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::{
    AuthorizedUserCredentials, AuthorizedUserSource, BackendError, Env, ExternalAccountConfig,
    ExternalAccountOptions, GoogleEndpoints, HttpClient, ImpersonatedServiceAccountFile,
    ServiceAccountKey, ServiceAccountSource,
};

/// The credential types this crate builds sources from, as a message names them.
const SUPPORTED: &str = "\"service_account\", \"authorized_user\", \"impersonated_service_account\" or \"external_account\"";

/// Credential types Google defines that the broker does not support yet.
const NOT_YET_SUPPORTED: [&str; 2] = ["external_account_authorized_user", "gdch_service_account"];

/// Wraps the base source of an impersonated credential before the impersonation uses it: the
/// server passes one that puts the base's access tokens through its cache (see
/// [`ImpersonatedSource`](crate::ImpersonatedSource)).
pub type BaseWrapper = Arc<dyn Fn(Arc<dyn TokenSource>) -> Arc<dyn TokenSource> + Send + Sync>;

/// A parsed credential file of a supported type.
#[derive(Debug)]
pub enum CredentialFile {
    /// `"type": "service_account"`: a service-account key (§2.1).
    ServiceAccount(ServiceAccountKey),
    /// `"type": "authorized_user"`: a user's refresh token, as `gcloud auth
    /// application-default login` writes it (§2.2).
    AuthorizedUser(AuthorizedUserCredentials),
    /// `"type": "impersonated_service_account"`: a target service account over source
    /// credentials, as `gcloud auth application-default login --impersonate-service-account`
    /// writes it (§2.3).
    Impersonated(ImpersonatedServiceAccountFile),
    /// `"type": "external_account"`: workload or workforce identity federation, as `gcloud
    /// iam workload-identity-pools create-cred-config` writes it (§2.4).
    ExternalAccount(Box<ExternalAccountConfig>),
}

impl CredentialFile {
    /// Reads and parses a credential file.
    ///
    /// # Errors
    ///
    /// [`BackendError::ReadKeyFile`], or a parse error naming the file: see
    /// [`CredentialFile::parse`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BackendError> {
        let path = path.as_ref();
        let text = read(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses credential-file JSON; `origin` (a path or a description) names it in errors.
    ///
    /// # Errors
    ///
    /// - [`BackendError::UnsupportedCredentialType`] for `external_account_authorized_user`
    ///   and `gdch_service_account`;
    /// - [`BackendError::WrongKeyType`] for any other unknown `type`;
    /// - the errors of the parser of the type found.
    pub fn parse(json: &str, origin: &str) -> Result<Self, BackendError> {
        Self::from_value(parse_json(json, origin)?, origin)
    }

    /// Parses a credential held as a JSON value.
    fn from_value(value: Value, origin: &str) -> Result<Self, BackendError> {
        let object = into_object(value, origin)?;
        match credential_type(&object, origin)? {
            "service_account" => {
                ServiceAccountKey::from_object(object, origin).map(Self::ServiceAccount)
            }
            "authorized_user" => {
                AuthorizedUserCredentials::from_object(object, origin).map(Self::AuthorizedUser)
            }
            "impersonated_service_account" => {
                ImpersonatedServiceAccountFile::from_object(object, origin).map(Self::Impersonated)
            }
            "external_account" => ExternalAccountConfig::from_object(object, origin)
                .map(|config| Self::ExternalAccount(Box::new(config))),
            other => Err(unsupported_type(origin, other, SUPPORTED)),
        }
    }

    /// The `type` of the credential, as the file names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ServiceAccount(_) => "service_account",
            Self::AuthorizedUser(_) => "authorized_user",
            Self::Impersonated(_) => "impersonated_service_account",
            Self::ExternalAccount(_) => "external_account",
        }
    }

    /// Builds the source the credential describes: a [`ServiceAccountSource`], an
    /// [`AuthorizedUserSource`] (which discovers the user's email when the file does not
    /// name it), an [`ImpersonatedSource`](crate::ImpersonatedSource) whose base, built
    /// from the file's source credentials, is first passed through `wrap_base` when given, or
    /// an [`ExternalAccountSource`](crate::ExternalAccountSource) reading `env` (which never
    /// runs an `executable` source: Application Default Credentials do not allow them).
    ///
    /// # Errors
    ///
    /// The errors of the constructors, such as [`BackendError::InvalidPrivateKey`] or
    /// [`BackendError::Discovery`].
    pub async fn into_source(
        self,
        endpoints: &GoogleEndpoints,
        http: &HttpClient,
        wrap_base: Option<&BaseWrapper>,
        env: &Env,
    ) -> Result<Arc<dyn TokenSource>, BackendError> {
        Ok(match self {
            Self::ServiceAccount(key) => Arc::new(ServiceAccountSource::new(
                key,
                endpoints.clone(),
                http.clone(),
            )?),
            Self::AuthorizedUser(user) => Arc::new(
                AuthorizedUserSource::discover(user, endpoints.clone(), http.clone()).await?,
            ),
            Self::Impersonated(file) => {
                Arc::new(file.into_source(endpoints, http, wrap_base).await?)
            }
            Self::ExternalAccount(config) => Arc::new((*config).into_source(
                endpoints.clone(),
                http.clone(),
                ExternalAccountOptions {
                    env: env.clone(),
                    ..ExternalAccountOptions::default()
                },
            )?),
        })
    }
}

/// Reads a credential file into zeroizing memory.
pub(crate) fn read(path: &Path) -> Result<Zeroizing<String>, BackendError> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|source| BackendError::ReadKeyFile {
            path: path.to_path_buf(),
            source: Arc::new(source),
        })
}

/// Parses JSON text; a syntax error reports only its position (the text may be key material).
pub(crate) fn parse_json(json: &str, origin: &str) -> Result<Value, BackendError> {
    serde_json::from_str(json).map_err(|e| BackendError::KeyFileSyntax {
        origin: origin.to_owned(),
        category: match e.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        },
        line: e.line(),
        column: e.column(),
    })
}

/// The object a credential file must be.
pub(crate) fn into_object(value: Value, origin: &str) -> Result<Map<String, Value>, BackendError> {
    match value {
        Value::Object(object) => Ok(object),
        _ => Err(field_error(
            origin,
            "type",
            "is missing: the file is not a JSON object",
        )),
    }
}

/// The `type` of a credential object.
pub(crate) fn credential_type<'a>(
    object: &'a Map<String, Value>,
    origin: &str,
) -> Result<&'a str, BackendError> {
    match object.get("type") {
        Some(Value::String(kind)) => Ok(kind),
        None | Some(Value::Null) => Err(field_error(origin, "type", "is missing")),
        Some(_) => Err(field_error(origin, "type", "must be a string")),
    }
}

/// Refuses a credential of type `found` where `expected` was wanted: not supported yet when
/// Google defines it ([`BackendError::UnsupportedCredentialType`]), else the wrong type.
pub(crate) fn unsupported_type(origin: &str, found: &str, expected: &'static str) -> BackendError {
    if NOT_YET_SUPPORTED.contains(&found) {
        BackendError::UnsupportedCredentialType {
            origin: origin.to_owned(),
            found: found.to_owned(),
        }
    } else {
        BackendError::WrongKeyType {
            origin: origin.to_owned(),
            found: printable_type(found),
            expected,
        }
    }
}

/// Removes a string field: `None` when absent or `null`; an error when not a string.
pub(crate) fn take_string(
    object: &mut Map<String, Value>,
    field: &'static str,
    origin: &str,
) -> Result<Option<String>, BackendError> {
    match object.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(field_error(origin, field, "must be a string")),
    }
}

/// Removes a secret string field straight into zeroizing memory, before anything else can
/// fail; an empty one counts as missing.
pub(crate) fn take_secret(
    object: &mut Map<String, Value>,
    field: &'static str,
    origin: &str,
) -> Result<Zeroizing<String>, BackendError> {
    let secret = match object.remove(field) {
        Some(Value::String(s)) => Zeroizing::new(s),
        Some(Value::Null) | None => return Err(field_error(origin, field, "is missing or empty")),
        Some(_) => return Err(field_error(origin, field, "must be a string")),
    };
    if secret.trim().is_empty() {
        return Err(field_error(origin, field, "is missing or empty"));
    }
    Ok(secret)
}

pub(crate) fn field_error(origin: &str, field: &'static str, problem: &str) -> BackendError {
    BackendError::KeyFileField {
        origin: origin.to_owned(),
        field,
        problem: problem.to_owned(),
    }
}

/// A credential type name is short and plain; anything else is not echoed.
fn printable_type(found: &str) -> String {
    if found.len() <= 64
        && found
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        found.to_owned()
    } else {
        "(an unrecognised value)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_picks_the_parser_and_unknown_types_are_named() {
        let cases = [
            (
                r#"{"type":"external_account_authorized_user"}"#,
                "not supported yet",
            ),
            (r#"{"type":"api_key"}"#, "expected \"service_account\""),
            (
                r#"{"type":"-----BEGIN PRIVATE KEY----- MIIE"}"#,
                "(an unrecognised value)",
            ),
            (r#"{"client_email":"a@b"}"#, "`type` is missing"),
            (r#"{"type":5}"#, "`type` must be a string"),
            (r#"["service_account"]"#, "not a JSON object"),
            (r#"{"type":"service_account""#, "not valid JSON"),
        ];
        for (json, expected) in cases {
            let error = CredentialFile::parse(json, "/etc/creds.json").expect_err(json);
            let shown = error.to_string();
            assert!(shown.contains("/etc/creds.json"), "{shown}");
            assert!(shown.contains(expected), "{json}: {shown}");
            assert!(!shown.contains("MIIE"), "{shown}");
        }
        let error =
            CredentialFile::parse(r#"{"type":"gdch_service_account"}"#, "f").expect_err("gdch");
        assert!(
            matches!(&error, BackendError::UnsupportedCredentialType { found, .. } if found == "gdch_service_account"),
            "{error:?}"
        );
    }
}
