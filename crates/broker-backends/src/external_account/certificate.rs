//! The `certificate` credential source: X.509 workload identity federation. The workload's
//! client certificate is the subject token, and the exchange (and the impersonation after
//! it) is made over mutual TLS with that certificate (google-protocols.md §2.4).
//!
//! ```json
//! "credential_source": {
//!   "certificate": {
//!     "use_default_certificate_config": true,
//!     "trust_chain_path": "/etc/workload/chain.pem"
//!   }
//! }
//! ```
//!
//! The certificate and its key are found through gcloud's `certificate_config.json`:
//! `{"cert_configs": {"workload": {"cert_path": "...", "key_path": "..."}}}`.
//!
//! See <https://cloud.google.com/iam/docs/workload-identity-federation-with-x509-certificates>.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use broker_core::{Secret, SourceError, UpstreamStatus};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::Value;
use zeroize::Zeroizing;

use super::fields::Fields;
use super::{MAX_SUBJECT_TOKEN_SOURCE_BYTES, ReadError, SubjectContext, read_bounded};
use crate::BackendError;
use crate::env::{GOOGLE_API_CERTIFICATE_CONFIG, HOME};
use crate::http::HttpClient;

/// How errors of this source name it as their `upstream`.
pub(crate) const UPSTREAM: &str = "credential_source.certificate";
/// Where gcloud keeps `certificate_config.json`, under the home directory.
const DEFAULT_CONFIG_PATH: &str = ".config/gcloud/certificate_config.json";

/// A workload certificate, read again for every exchange (workload certificates are short
/// lived and rotated), and the mTLS client that presents it, rebuilt only when the
/// certificate or key changed.
pub(crate) struct CertificateSource {
    /// `certificate_config_location`; `None` with `use_default_certificate_config`.
    config_location: Option<PathBuf>,
    trust_chain_path: Option<PathBuf>,
    /// The mTLS client of the last certificate and key, by their fingerprint.
    client: Mutex<Option<(String, HttpClient)>>,
}

impl fmt::Debug for CertificateSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateSource")
            .field("certificate_config_location", &self.config_location)
            .field("trust_chain_path", &self.trust_chain_path)
            .finish_non_exhaustive()
    }
}

/// What the source gives an exchange: the subject token and the client that presents the
/// certificate.
pub(crate) struct Workload {
    /// The JSON array of the chain, base64 DER, leaf first.
    pub(crate) subject_token: Secret,
    /// The mTLS client.
    pub(crate) http: HttpClient,
}

impl CertificateSource {
    /// Reads `credential_source.certificate`: `use_default_certificate_config` (true) or
    /// `certificate_config_location`, exactly one (as Google's clients require), and the
    /// optional `trust_chain_path`.
    pub(crate) fn parse(source: &mut Fields<'_>) -> Result<Self, BackendError> {
        let Some(mut certificate) = source.object("credential_source.certificate")? else {
            return Err(source.error("credential_source.certificate", "is missing"));
        };
        let use_default = certificate
            .boolean("credential_source.certificate.use_default_certificate_config")?
            .unwrap_or(false);
        let location =
            certificate.string("credential_source.certificate.certificate_config_location")?;
        let config_location = match (use_default, location) {
            (true, Some(_)) => {
                return Err(certificate.error(
                    "credential_source.certificate.certificate_config_location",
                    "cannot be given with use_default_certificate_config = true",
                ));
            }
            (false, None) => {
                return Err(certificate.error(
                    "credential_source.certificate.use_default_certificate_config",
                    "must be true when no certificate_config_location is given",
                ));
            }
            (_, location) => location.map(PathBuf::from),
        };
        let trust_chain_path = certificate
            .string("credential_source.certificate.trust_chain_path")?
            .map(PathBuf::from);
        certificate.finish()?;
        Ok(Self {
            config_location,
            trust_chain_path,
            client: Mutex::new(None),
        })
    }

    /// The workload's certificate as the subject token, and the client presenting it:
    ///
    /// 1. `certificate_config.json`: `certificate_config_location`, else (with
    ///    `use_default_certificate_config`) `GOOGLE_API_CERTIFICATE_CONFIG`, else
    ///    `$HOME/.config/gcloud/certificate_config.json` (as Python google-auth looks);
    /// 2. its `cert_configs.workload.cert_path` (the leaf first, possibly followed by
    ///    intermediates) and `key_path` (PEM);
    /// 3. the subject token: the JSON array of the leaf and then the certificates of
    ///    `trust_chain_path` (the leaf left out there when it comes first, refused anywhere
    ///    else), each standard base64 of its DER, written as Python's `json.dumps` writes it
    ///    (`["...", "..."]`);
    /// 4. a client of the source's settings presenting that certificate and key, trusting
    ///    `roots_pem` only when given (else the platform's roots).
    ///
    /// # Errors
    ///
    /// [`SourceError::Unavailable`] (status `io`) when a file cannot be read;
    /// [`SourceError::Malformed`] when the configuration, a certificate or the key is
    /// unusable; [`SourceError::Internal`] when no configuration can be found. Nothing of a
    /// key is ever quoted.
    pub(crate) async fn workload(
        &self,
        context: &SubjectContext<'_>,
        roots_pem: Option<&[u8]>,
    ) -> Result<Workload, SourceError> {
        let config_path = match &self.config_location {
            Some(path) => path.clone(),
            None => match context.env.get(GOOGLE_API_CERTIFICATE_CONFIG) {
                Some(path) => PathBuf::from(path),
                None => context
                    .env
                    .get(HOME)
                    .map(|home| PathBuf::from(home).join(DEFAULT_CONFIG_PATH))
                    .ok_or_else(|| {
                        SourceError::Internal(format!(
                            "no certificate configuration: neither {GOOGLE_API_CERTIFICATE_CONFIG} nor {HOME} is set"
                        ))
                    })?,
            },
        };
        let config = read(&config_path, "certificate configuration").await?;
        let (cert_path, key_path) = workload_paths(&config)
            .map_err(|problem| malformed(&config_path, "certificate configuration", problem))?;
        let cert_pem = read(&cert_path, "workload certificate").await?;
        let key_pem = read(&key_path, "workload key").await?;
        let leaf = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| {
                malformed(
                    &cert_path,
                    "workload certificate",
                    "holds no PEM certificate",
                )
            })?;
        let chain = match &self.trust_chain_path {
            Some(path) => {
                let pem = read(path, "trust chain").await?;
                CertificateDer::pem_slice_iter(pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| malformed(path, "trust chain", "holds a broken PEM certificate"))?
            }
            None => Vec::new(),
        };
        let subject_token = subject_token(&leaf, &chain).map_err(|problem| {
            malformed(
                self.trust_chain_path.as_deref().unwrap_or(&cert_path),
                "trust chain",
                problem,
            )
        })?;
        let http = self
            .client(context.http, &cert_pem, &key_pem, roots_pem)
            .map_err(|problem| malformed(&cert_path, "workload certificate and key", &problem))?;
        tracing::debug!(
            certificate = %broker_core::fingerprint(leaf.as_ref()),
            chain = chain.len(),
            subject_token = %subject_token.fingerprint(),
            "workload certificate read"
        );
        Ok(Workload {
            subject_token,
            http,
        })
    }

    /// The mTLS client for this certificate and key: the last one when they have not changed.
    fn client(
        &self,
        http: &HttpClient,
        cert_pem: &str,
        key_pem: &str,
        roots_pem: Option<&[u8]>,
    ) -> Result<HttpClient, String> {
        let mut identity =
            Zeroizing::new(String::with_capacity(cert_pem.len() + key_pem.len() + 1));
        identity.push_str(cert_pem);
        if !cert_pem.ends_with('\n') {
            identity.push('\n');
        }
        identity.push_str(key_pem);
        let fingerprint = broker_core::fingerprint(identity.as_bytes());
        let mut cached = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((known, client)) = cached.as_ref()
            && *known == fingerprint
        {
            return Ok(client.clone());
        }
        let client = http.with_client_identity(identity.as_bytes(), roots_pem)?;
        *cached = Some((fingerprint, client.clone()));
        Ok(client)
    }
}

/// The subject token of a leaf and a trust chain (see [`CertificateSource::workload`]).
fn subject_token(
    leaf: &CertificateDer<'_>,
    chain: &[CertificateDer<'_>],
) -> Result<Secret, &'static str> {
    let mut certificates = vec![leaf.as_ref()];
    for (i, certificate) in chain.iter().enumerate() {
        if certificate.as_ref() == leaf.as_ref() {
            if i == 0 {
                continue;
            }
            return Err("holds the leaf certificate after another; it may only come first");
        }
        certificates.push(certificate.as_ref());
    }
    let encoded: Vec<String> = certificates
        .iter()
        .map(|der| format!("\"{}\"", STANDARD.encode(der)))
        .collect();
    Ok(Secret::new(format!("[{}]", encoded.join(", "))))
}

/// `cert_configs.workload.cert_path` and `key_path` of gcloud's certificate configuration
/// (its other fields are gcloud's business and are not read).
fn workload_paths(config: &str) -> Result<(PathBuf, PathBuf), &'static str> {
    let config: Value = serde_json::from_str(config).map_err(|_| "is not JSON")?;
    let workload = config
        .get("cert_configs")
        .and_then(|c| c.get("workload"))
        .ok_or("has no cert_configs.workload")?;
    let path = |name: &str| {
        workload
            .get(name)
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    };
    Ok((
        path("cert_path").ok_or("has no cert_configs.workload.cert_path")?,
        path("key_path").ok_or("has no cert_configs.workload.key_path")?,
    ))
}

/// Reads one of the source's files (`what` names it in errors).
async fn read(path: &Path, what: &str) -> Result<Zeroizing<String>, SourceError> {
    read_bounded(path, MAX_SUBJECT_TOKEN_SOURCE_BYTES)
        .await
        .map_err(|error| match error {
            ReadError::Io(error) => SourceError::Unavailable {
                upstream: UPSTREAM.to_owned(),
                status: UpstreamStatus::Io,
                message: format!("cannot read the {what} {}: {error}", path.display()),
                retry_after: None,
            },
            other => malformed(path, what, &other.to_string()),
        })
}

fn malformed(path: &Path, what: &str, problem: &str) -> SourceError {
    SourceError::Malformed {
        upstream: UPSTREAM.to_owned(),
        message: format!("the {what} {} {problem}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(certificate: Value) -> Result<CertificateSource, BackendError> {
        let Value::Object(object) = json!({"certificate": certificate}) else {
            panic!("object");
        };
        CertificateSource::parse(&mut Fields::new(object, "x509.json", "credential_source"))
    }

    #[test]
    fn exactly_one_way_to_find_the_configuration() {
        let default = parse(json!({"use_default_certificate_config": true})).expect("default");
        assert_eq!(default.config_location, None);
        let located = parse(json!({
            "certificate_config_location": "/etc/workload/certificate_config.json",
            "trust_chain_path": "/etc/workload/chain.pem",
        }))
        .expect("located");
        assert_eq!(
            located.config_location.as_deref(),
            Some(Path::new("/etc/workload/certificate_config.json"))
        );
        for (certificate, expected) in [
            (
                json!({"use_default_certificate_config": true, "certificate_config_location": "/c.json"}),
                "cannot be given with use_default_certificate_config",
            ),
            (
                json!({}),
                "must be true when no certificate_config_location",
            ),
            (
                json!({"use_default_certificate_config": false}),
                "must be true",
            ),
            (
                json!({"use_default_certificate_config": true, "key_path": "/k"}),
                "unknown field `credential_source.certificate.key_path`",
            ),
            (
                json!({"use_default_certificate_config": "yes"}),
                "true or false",
            ),
        ] {
            let error = parse(certificate.clone()).expect_err("invalid").to_string();
            assert!(error.contains(expected), "{certificate}: {error}");
        }
    }

    #[test]
    fn the_subject_token_is_the_chain_leaf_first_as_python_writes_it() {
        let leaf = CertificateDer::from(vec![1u8, 2, 3]);
        let intermediate = CertificateDer::from(vec![4u8, 5]);
        let root = CertificateDer::from(vec![6u8]);
        let token = |chain: &[CertificateDer<'_>]| {
            subject_token(&leaf, chain).map(|t| t.expose().to_owned())
        };
        assert_eq!(token(&[]).expect("leaf"), r#"["AQID"]"#);
        assert_eq!(
            token(&[intermediate.clone(), root.clone()]).expect("chain"),
            r#"["AQID", "BAU=", "Bg=="]"#
        );
        assert_eq!(
            token(&[leaf.clone(), intermediate.clone()]).expect("leaf first in the chain"),
            r#"["AQID", "BAU="]"#
        );
        assert!(token(&[intermediate, leaf.clone()]).is_err());
        let parsed: Vec<String> =
            serde_json::from_str(&token(&[root]).expect("chain")).expect("a JSON array");
        assert_eq!(parsed, ["AQID", "Bg=="]);
    }

    #[test]
    fn gclouds_certificate_configuration_gives_the_workload_paths() {
        let config = json!({
            "version": 1,
            "cert_configs": {"workload": {"cert_path": "/var/run/certs/cert.pem", "key_path": "/var/run/certs/key.pem"}},
            "libs": {"ecp": "/usr/bin/ecp"},
        })
        .to_string();
        assert_eq!(
            workload_paths(&config).expect("paths"),
            (
                PathBuf::from("/var/run/certs/cert.pem"),
                PathBuf::from("/var/run/certs/key.pem")
            )
        );
        for (config, expected) in [
            ("nope", "not JSON"),
            (r#"{"cert_configs": {}}"#, "cert_configs.workload"),
            (
                r#"{"cert_configs": {"workload": {"cert_path": "/c"}}}"#,
                "key_path",
            ),
        ] {
            assert!(
                workload_paths(config).expect_err(config).contains(expected),
                "{config}"
            );
        }
    }
}
