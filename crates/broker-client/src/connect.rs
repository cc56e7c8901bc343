//! The mTLS channel to the broker.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use broker_proto::tokenbroker::v1::token_broker_client::TokenBrokerClient;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};
use zeroize::Zeroizing;

use crate::error::{ClientError, TlsFileKind, error_chain, tls_failure};

/// The PEM files of a client's mTLS identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    /// CA certificate(s) that verify the broker's server certificate (PEM, one or more
    /// `CERTIFICATE` blocks).
    pub ca: PathBuf,
    /// The client certificate, optionally followed by intermediates (PEM).
    pub cert: PathBuf,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Channel settings. Start from [`ConnectOptions::default`] and change fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Bound on establishing a connection (TCP and TLS). Default 5 s.
    pub connect_timeout: Duration,
    /// Bound on every RPC made over the channel. Default 10 s. `None`: no bound (set deadlines
    /// per call instead; the broker asks callers to always have one).
    pub timeout: Option<Duration>,
    /// `TCP_NODELAY`. Default true.
    pub tcp_nodelay: bool,
    /// TCP keepalive probe interval. Default 60 s.
    pub tcp_keepalive: Option<Duration>,
    /// Interval of HTTP/2 PING frames that detect a dead connection. Default 30 s.
    pub http2_keep_alive_interval: Option<Duration>,
    /// How long to wait for a PING's acknowledgement. Default 10 s.
    pub keep_alive_timeout: Duration,
    /// Also send PINGs while no RPC is in flight. Default false.
    pub keep_alive_while_idle: bool,
    /// The name to verify the broker's certificate against (and to send as SNI). Default: the
    /// endpoint's host.
    pub tls_server_name: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Some(Duration::from_secs(10)),
            tcp_nodelay: true,
            tcp_keepalive: Some(Duration::from_secs(60)),
            http2_keep_alive_interval: Some(Duration::from_secs(30)),
            keep_alive_timeout: Duration::from_secs(10),
            keep_alive_while_idle: false,
            tls_server_name: None,
        }
    }
}

/// Builds the tonic [`Endpoint`] for `endpoint` (`https://host:port`, or `host:port`) with the
/// client's mTLS identity and `options`, without connecting.
///
/// The TLS files are read and checked here: every error names the file that failed and why.
pub fn endpoint(
    endpoint: &str,
    files: &TlsFiles,
    options: &ConnectOptions,
) -> Result<Endpoint, ClientError> {
    let target = parse_endpoint(endpoint)?;
    let server_name = options
        .tls_server_name
        .clone()
        .unwrap_or_else(|| target.host.clone());
    let (ca, identity) = load_tls_files(files)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(ca)
        .identity(identity)
        .domain_name(server_name)
        .timeout(options.connect_timeout);

    let mut built = Endpoint::from_shared(target.uri.clone())
        .map_err(|error| ClientError::Config(format!("invalid endpoint {endpoint:?}: {error}")))?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(options.tcp_nodelay)
        .tcp_keepalive(options.tcp_keepalive)
        .keep_alive_timeout(options.keep_alive_timeout)
        .keep_alive_while_idle(options.keep_alive_while_idle)
        .tls_config(tls)
        .map_err(|error| ClientError::Tls {
            endpoint: target.uri.clone(),
            reason: error_chain(&error),
        })?;
    if let Some(timeout) = options.timeout {
        built = built.timeout(timeout);
    }
    if let Some(interval) = options.http2_keep_alive_interval {
        built = built.http2_keep_alive_interval(interval);
    }
    Ok(built)
}

/// Connects to the broker at `endpoint` (`https://host:port`, or `host:port`) over mTLS and
/// returns a client for it.
///
/// Connects eagerly, so that an unreachable broker or a failed TLS handshake (for example a
/// CA file that did not issue the broker's certificate) is reported here, as
/// [`ClientError::Connect`] or [`ClientError::Tls`]. The channel reconnects by itself later.
/// With TLS 1.3 the broker checks the client certificate after the client considers the
/// handshake done, so a refused client certificate shows up on the first RPC instead.
pub async fn connect(
    endpoint_str: &str,
    files: &TlsFiles,
    options: &ConnectOptions,
) -> Result<TokenBrokerClient<Channel>, ClientError> {
    let built = endpoint(endpoint_str, files, options)?;
    let uri = built.uri().to_string();
    let channel = built
        .connect()
        .await
        .map_err(|error| connect_error(&uri, &error))?;
    Ok(TokenBrokerClient::new(channel))
}

/// Like [`connect`], but connects on the first RPC. Errors in the settings and TLS files are
/// still reported here.
pub fn connect_lazy(
    endpoint_str: &str,
    files: &TlsFiles,
    options: &ConnectOptions,
) -> Result<TokenBrokerClient<Channel>, ClientError> {
    let built = endpoint(endpoint_str, files, options)?;
    Ok(TokenBrokerClient::new(built.connect_lazy()))
}

#[derive(Debug)]
struct Target {
    uri: String,
    host: String,
}

/// Accepts `https://host:port` and `host:port` (and IPv6 `[::1]:port`); refuses other schemes
/// and paths.
fn parse_endpoint(endpoint: &str) -> Result<Target, ClientError> {
    let trimmed = endpoint.trim();
    if trimmed.is_empty() {
        return Err(ClientError::Config(
            "the broker endpoint is empty; expected https://host:port".to_owned(),
        ));
    }
    let with_scheme = match trimmed.split_once("://") {
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => trimmed.to_owned(),
        Some((scheme, _)) => {
            return Err(ClientError::Config(format!(
                "unsupported scheme {scheme:?} in broker endpoint {trimmed:?}: the broker \
                 requires mutual TLS, use https://host:port"
            )));
        }
        None => format!("https://{trimmed}"),
    };
    let uri: Uri = with_scheme.parse().map_err(|error| {
        ClientError::Config(format!(
            "invalid broker endpoint {trimmed:?}: {error}; expected https://host:port"
        ))
    })?;
    let host = uri
        .host()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| {
            ClientError::Config(format!(
                "broker endpoint {trimmed:?} has no host; expected https://host:port"
            ))
        })?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
        return Err(ClientError::Config(format!(
            "broker endpoint {trimmed:?} has a path or query; expected https://host:port"
        )));
    }
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    Ok(Target {
        uri: format!("https://{authority}"),
        host,
    })
}

fn tls_file_error(kind: TlsFileKind, path: &Path, reason: impl Into<String>) -> ClientError {
    ClientError::TlsFile {
        kind,
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn read_file(kind: TlsFileKind, path: &Path) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|error| tls_file_error(kind, path, format!("cannot read it: {error}")))
}

fn parse_certificates(
    kind: TlsFileKind,
    path: &Path,
    pem_bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| tls_file_error(kind, path, format!("not valid PEM: {error}")))?;
    if certs.is_empty() {
        return Err(tls_file_error(kind, path, "no PEM CERTIFICATE block found"));
    }
    Ok(certs)
}

/// Reads and checks the three files, and returns them in tonic's form.
fn load_tls_files(files: &TlsFiles) -> Result<(Certificate, Identity), ClientError> {
    let ca_pem = read_file(TlsFileKind::Ca, &files.ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for (index, der) in parse_certificates(TlsFileKind::Ca, &files.ca, &ca_pem)?
        .into_iter()
        .enumerate()
    {
        roots.add(der).map_err(|error| {
            tls_file_error(
                TlsFileKind::Ca,
                &files.ca,
                format!(
                    "certificate #{} is not a usable trust anchor: {error}",
                    index + 1
                ),
            )
        })?;
    }

    let cert_pem = read_file(TlsFileKind::Cert, &files.cert)?;
    let chain = parse_certificates(TlsFileKind::Cert, &files.cert, &cert_pem)?;

    // The key's bytes never appear in an error: PEM errors can quote lines of the file.
    let key_pem = read_file(TlsFileKind::Key, &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| {
        let reason = match error {
            pem::Error::NoItemsFound => {
                "no PEM private key found (expected a PRIVATE KEY, RSA PRIVATE KEY or \
                 EC PRIVATE KEY block)"
            }
            pem::Error::Io(_) => "cannot read it",
            _ => "malformed PEM",
        };
        tls_file_error(TlsFileKind::Key, &files.key, reason)
    })?;
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    match rustls::sign::CertifiedKey::from_der(chain, key, &provider) {
        Ok(_) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(tls_file_error(
                TlsFileKind::Key,
                &files.key,
                format!(
                    "does not match the public key of the client certificate in {}",
                    files.cert.display()
                ),
            ));
        }
        Err(rustls::Error::InvalidCertificate(error)) => {
            return Err(tls_file_error(
                TlsFileKind::Cert,
                &files.cert,
                format!("not a valid certificate: {error}"),
            ));
        }
        Err(error) => {
            return Err(tls_file_error(
                TlsFileKind::Key,
                &files.key,
                format!("unusable private key: {error}"),
            ));
        }
    }

    let identity = Identity::from_pem(&cert_pem[..], &key_pem[..]);
    Ok((Certificate::from_pem(&ca_pem[..]), identity))
}

fn connect_error(endpoint: &str, error: &tonic::transport::Error) -> ClientError {
    match tls_failure(error) {
        Some(reason) => ClientError::Tls {
            endpoint: endpoint.to_owned(),
            reason,
        },
        None => ClientError::Connect {
            endpoint: endpoint.to_owned(),
            reason: error_chain(error),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_https_and_host_port() {
        let target = parse_endpoint("https://broker.internal:8443").ok();
        assert_eq!(
            target.map(|t| (t.uri, t.host)),
            Some((
                "https://broker.internal:8443".to_owned(),
                "broker.internal".to_owned()
            ))
        );
        let target = parse_endpoint(" 127.0.0.1:9000 ").ok();
        assert_eq!(
            target.map(|t| (t.uri, t.host)),
            Some(("https://127.0.0.1:9000".to_owned(), "127.0.0.1".to_owned()))
        );
        let target = parse_endpoint("HTTPS://[::1]:9000/").ok();
        assert_eq!(
            target.map(|t| (t.uri, t.host)),
            Some(("https://[::1]:9000".to_owned(), "::1".to_owned()))
        );
    }

    #[test]
    fn endpoints_refuse_plaintext_paths_and_empty() {
        for bad in [
            "http://broker:80",
            "",
            "https://broker:1/v1",
            "https://:443",
        ] {
            assert!(
                matches!(parse_endpoint(bad), Err(ClientError::Config(_))),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn missing_files_are_named() {
        let files = TlsFiles {
            ca: PathBuf::from("/nonexistent/ca.pem"),
            cert: PathBuf::from("/nonexistent/cert.pem"),
            key: PathBuf::from("/nonexistent/key.pem"),
        };
        let error = endpoint("localhost:1", &files, &ConnectOptions::default())
            .err()
            .map(|e| e.to_string());
        let message = error.unwrap_or_default();
        assert!(
            message.starts_with("CA certificate file /nonexistent/ca.pem: cannot read it"),
            "{message}"
        );
    }
}
