//! The mutual-TLS listener (`sts.mtls.googleapis.com`, `iamcredentials.mtls.googleapis.com`):
//! HTTPS with a certificate the emulator's own CA issued for `127.0.0.1` and `localhost`,
//! requiring a client certificate. Like Google's front end it takes any client certificate
//! whose handshake signature verifies; what the certificate is worth is for STS to decide
//! (the X.509 provider's trust store), which finds it in [`Peer`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::federation::MtlsServerPki;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The peer of an mTLS connection: its address and the DER of its client certificate.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) remote: SocketAddr,
    pub(crate) certificate: Arc<Vec<u8>>,
}

impl Connected<IncomingStream<'_, MtlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, MtlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Accepts any client certificate whose handshake signature verifies.
#[derive(Debug)]
struct AnyClientCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server configuration: the listener's certificate (and its CA), client certificates
/// required, HTTP/1.1.
pub(crate) fn server_config(pki: &MtlsServerPki) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = crate::x509::crypto_provider();
    let verifier = Arc::new(AnyClientCertificate {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![
                CertificateDer::from(pki.server.cert.der.clone()),
                CertificateDer::from(pki.ca.der.clone()),
            ],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server.key_der.to_vec())),
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An [`axum::serve::Listener`] of TLS connections: a task accepts TCP connections and runs
/// each handshake in its own task (a slow client holds up no one), handing over the
/// established ones.
pub(crate) struct MtlsListener {
    established: mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    local: SocketAddr,
    acceptor: JoinHandle<()>,
}

impl MtlsListener {
    /// Serves TLS with `config` on `listener`.
    pub(crate) fn new(
        listener: TcpListener,
        config: rustls::ServerConfig,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let tls = TlsAcceptor::from(Arc::new(config));
        let (tx, established) = mpsc::channel(64);
        let acceptor = tokio::spawn(async move {
            loop {
                let (stream, remote) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::debug!(%error, "mTLS accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let tls = tls.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let Some(certificate) = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|certs| certs.first())
                                .map(|cert| Arc::new(cert.to_vec()))
                            else {
                                return;
                            };
                            let _ = tx
                                .send((
                                    stream,
                                    Peer {
                                        remote,
                                        certificate,
                                    },
                                ))
                                .await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%error, %remote, "mTLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%remote, "mTLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            established,
            local,
            acceptor,
        })
    }
}

impl Drop for MtlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for MtlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.established.recv().await {
            Some(established) => established,
            // The acceptor ended (it does not, until this listener is dropped).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            remote: self.local,
            certificate: Arc::new(Vec::new()),
        })
    }
}
