//! The mTLS listener: a rustls server configuration rebuilt whenever its files change, and the
//! acceptor that hands tonic verified connections carrying the caller's identity.
//!
//! The acceptor reads the current configuration from a watch channel for every new connection,
//! so a rotated server certificate or client trust bundle applies to new connections without a
//! restart; a file that fails to load is logged and the previous configuration stays.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use broker_authz::CallerIdentity;
use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// Why a TLS configuration could not be built. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file holds no usable PEM of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the combination (e.g. the key does not match the certificate).
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client trust bundles could not make a verifier.
    #[error("invalid client trust bundle: {0}")]
    Verifier(String),
}

/// The files the listener's TLS configuration is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain of the server, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the server (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundles of the CAs whose client certificates are accepted.
    pub client_cas: Vec<PathBuf>,
}

impl TlsFiles {
    /// Every file, for change detection.
    pub fn paths(&self) -> Vec<PathBuf> {
        [self.cert.clone(), self.key.clone()]
            .into_iter()
            .chain(self.client_cas.iter().cloned())
            .collect()
    }
}

/// The crypto provider of the whole tree.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Builds the server configuration: TLS 1.3 and 1.2, client certificates required and verified
/// against the trust bundles, ALPN `h2`.
pub fn load_server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let chain = read_certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Pem {
        path: files.key.clone(),
        what: format!("no usable private key: {}", pem_error(e)),
    })?;
    let mut roots = RootCertStore::empty();
    for path in &files.client_cas {
        for certificate in read_certificates(path)? {
            roots.add(certificate).map_err(|e| TlsError::Pem {
                path: path.clone(),
                what: format!("not a usable CA certificate: {e}"),
            })?;
        }
    }
    let provider = crypto_provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("invalid certificate PEM: {}", pem_error(e)),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no certificate found".to_owned(),
        });
    }
    Ok(certificates)
}

/// A PEM error's description; the `Io` variant is unwrapped so "not found" reads plainly.
fn pem_error(error: rustls_pki_types::pem::Error) -> String {
    match error {
        rustls_pki_types::pem::Error::Io(e) => e.to_string(),
        other => format!("{other:?}"),
    }
}

/// Loads the configuration and keeps it current (see [`crate::reload`]): rotated certificates
/// and trust bundles apply to new connections; files that fail to load are logged and the
/// previous configuration stays in force.
pub fn watch_files(
    files: TlsFiles,
    interval: Duration,
) -> Result<
    (
        watch::Receiver<Arc<ServerConfig>>,
        tokio::task::JoinHandle<()>,
    ),
    TlsError,
> {
    crate::reload::watch_files("TLS configuration", files.paths(), interval, move || {
        load_server_config(&files)
    })
}

/// What the broker knows about a connection: who is at the other end.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The peer's address.
    pub remote_addr: SocketAddr,
    /// The identity from the verified client certificate; `None` when it carries none.
    pub caller: Option<Arc<CallerIdentity>>,
}

/// A TLS connection whose client certificate has been verified.
#[derive(Debug)]
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    info: ConnectionInfo,
}

impl Connected for TlsConnection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts TCP connections and completes TLS handshakes concurrently (a slow client cannot hold
/// up others), yielding verified connections for `Server::serve_with_incoming`. Handshake
/// failures (no client certificate, an untrusted or expired one) are logged with the reason.
pub fn incoming(
    listener: TcpListener,
    tls: watch::Receiver<Arc<ServerConfig>>,
    handshake_timeout: Duration,
) -> ReceiverStream<io::Result<TlsConnection>> {
    let (sender, receiver) = mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let (tcp, remote_addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = sender.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(Arc::clone(&tls.borrow()));
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let info = ConnectionInfo {
                            remote_addr,
                            caller: peer_identity(&stream, remote_addr),
                        };
                        let _ = sender.send(Ok(TlsConnection { stream, info })).await;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(peer = %remote_addr, %error, "TLS handshake failed")
                    }
                    Err(_) => tracing::warn!(peer = %remote_addr, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}

fn peer_identity(
    stream: &TlsStream<TcpStream>,
    remote_addr: SocketAddr,
) -> Option<Arc<CallerIdentity>> {
    let leaf = stream.get_ref().1.peer_certificates()?.first()?;
    match CallerIdentity::from_certificate_der(leaf.as_ref()) {
        Ok(identity) => Some(Arc::new(identity)),
        Err(error) => {
            tracing::warn!(peer = %remote_addr, %error, "client certificate carries no usable identity");
            None
        }
    }
}
