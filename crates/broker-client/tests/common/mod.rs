//! Shared test fixtures: an rcgen PKI written to files, and a fake `TokenBroker` served over
//! real mutual TLS (tokio-rustls, client certificates required).

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use broker_client::{ERROR_DOMAIN, TlsFiles};
use broker_proto::tokenbroker::v1::token_broker_server::{TokenBroker, TokenBrokerServer};
use broker_proto::tokenbroker::v1::{
    ExchangeTokenRequest, ExchangeTokenResponse, GenerateIdTokenRequest, GenerateIdTokenResponse,
    GetAccessTokenRequest, GetAccessTokenResponse, ImpersonateServiceAccountRequest,
    ImpersonateServiceAccountResponse, SignBlobRequest, SignBlobResponse, SignJwtRequest,
    SignJwtResponse,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// The principal the fake broker says its tokens act as.
pub(crate) const PRINCIPAL: &str = "deployer@my-project.iam.gserviceaccount.com";

/// A CA with its certificate in PEM.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("self-signed CA"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate and its key, both PEM.
    fn leaf(&self, cn: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        (cert.pem(), key.serialize_pem())
    }
}

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// A PKI for one test: a CA that issued the server's and the client's certificates, plus a
/// second, unrelated CA and a client certificate from it. Files live under
/// `CARGO_TARGET_TMPDIR`.
pub(crate) struct Pki {
    /// The directory holding the files.
    pub(crate) dir: PathBuf,
    /// The server certificate and key (PEM), for `localhost` and `127.0.0.1`.
    pub(crate) server_cert_pem: String,
    /// The server key (PEM).
    pub(crate) server_key_pem: String,
    /// The trusted CA (PEM).
    pub(crate) ca_pem: String,
    /// The right CA, and a client certificate it issued.
    pub(crate) client: TlsFiles,
    /// A CA that did not issue the server's certificate, with the good client certificate.
    pub(crate) wrong_ca: TlsFiles,
    /// The right CA, with a client certificate the server does not trust.
    pub(crate) untrusted_client: TlsFiles,
}

impl Pki {
    pub(crate) fn new(name: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "broker-client-{name}-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("test directory");
        let write = |file: &str, contents: &str| {
            let path = dir.join(file);
            std::fs::write(&path, contents).expect("write PEM");
            path
        };

        let ca = Ca::new("test root CA");
        let other = Ca::new("some other CA");
        let (server_cert_pem, server_key_pem) = ca.leaf(
            "token-broker",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = ca.leaf(
            "ci-runner",
            &["ci-runner.example.com"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let (stranger_cert, stranger_key) = other.leaf(
            "stranger",
            &["stranger.example.com"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );

        let ca_path = write("ca.pem", &ca.pem());
        let other_ca_path = write("other-ca.pem", &other.pem());
        let cert_path = write("client.pem", &client_cert);
        let key_path = write("client.key", &client_key);
        let stranger_cert_path = write("stranger.pem", &stranger_cert);
        let stranger_key_path = write("stranger.key", &stranger_key);

        Self {
            server_cert_pem,
            server_key_pem,
            ca_pem: ca.pem(),
            client: TlsFiles {
                ca: ca_path.clone(),
                cert: cert_path.clone(),
                key: key_path.clone(),
            },
            wrong_ca: TlsFiles {
                ca: other_ca_path,
                cert: cert_path,
                key: key_path,
            },
            untrusted_client: TlsFiles {
                ca: ca_path,
                cert: stranger_cert_path,
                key: stranger_key_path,
            },
            dir,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fixed instant with whole seconds, for deterministic expiry tests.
pub(crate) fn base_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// Now plus `ahead`, truncated to whole seconds (the broker's timestamps have no nanos).
pub(crate) fn whole_seconds_from_now(ahead: Duration) -> SystemTime {
    let since_epoch = (SystemTime::now() + ahead)
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after the epoch");
    SystemTime::UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs())
}

/// A fake broker: answers GetAccessToken from a script of errors, then with numbered tokens
/// (`ya29.fake-1`, `ya29.fake-2`, ...) expiring at `expire_time`. Every other RPC is
/// UNIMPLEMENTED. Callers without a verified client certificate get UNAUTHENTICATED.
#[derive(Debug)]
pub(crate) struct FakeBroker {
    calls: AtomicUsize,
    tokens: AtomicUsize,
    script: Mutex<VecDeque<Status>>,
    expire_time: Mutex<SystemTime>,
    delay: Mutex<Duration>,
    requests: Mutex<Vec<GetAccessTokenRequest>>,
}

impl FakeBroker {
    pub(crate) fn new(expire_time: SystemTime) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            tokens: AtomicUsize::new(0),
            script: Mutex::new(VecDeque::new()),
            expire_time: Mutex::new(expire_time),
            delay: Mutex::new(Duration::ZERO),
            requests: Mutex::new(Vec::new()),
        })
    }

    /// How many GetAccessToken calls arrived.
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The GetAccessToken requests received so far.
    pub(crate) fn requests(&self) -> Vec<GetAccessTokenRequest> {
        self.requests.lock().expect("requests lock").clone()
    }

    /// The next GetAccessToken calls fail with these statuses, in order.
    pub(crate) fn fail_with(&self, statuses: impl IntoIterator<Item = Status>) {
        self.script.lock().expect("script lock").extend(statuses);
    }

    pub(crate) fn set_expire_time(&self, expire_time: SystemTime) {
        *self.expire_time.lock().expect("expire lock") = expire_time;
    }

    /// Every GetAccessToken call waits this long before answering.
    pub(crate) fn set_delay(&self, delay: Duration) {
        *self.delay.lock().expect("delay lock") = delay;
    }
}

/// PERMISSION_DENIED (POLICY_DENIED) as the broker sends it.
pub(crate) fn policy_denied(rule: &str, grant: &str, value: &str) -> Status {
    Status::with_error_details(
        Code::PermissionDenied,
        format!("grant {grant} does not allow {value}"),
        ErrorDetails::with_error_info(
            "POLICY_DENIED",
            ERROR_DOMAIN,
            HashMap::from([
                ("rule".to_owned(), rule.to_owned()),
                ("grant".to_owned(), grant.to_owned()),
                ("value".to_owned(), value.to_owned()),
                ("caller".to_owned(), "ci-runner.example.com".to_owned()),
            ]),
        ),
    )
}

/// UNAVAILABLE (UPSTREAM_UNAVAILABLE) with a RetryInfo, as the broker sends it.
pub(crate) fn upstream_unavailable(retry_after: Duration) -> Status {
    let mut details = ErrorDetails::with_error_info(
        "UPSTREAM_UNAVAILABLE",
        ERROR_DOMAIN,
        HashMap::from([("upstream".to_owned(), "oauth2.googleapis.com".to_owned())]),
    );
    details.set_retry_info(Some(retry_after));
    Status::with_error_details(Code::Unavailable, "Google is unavailable", details)
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not implemented by the fake broker"))
}

#[tonic::async_trait]
impl TokenBroker for FakeBroker {
    async fn get_access_token(
        &self,
        request: Request<GetAccessTokenRequest>,
    ) -> Result<Response<GetAccessTokenResponse>, Status> {
        let has_client_cert = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs)
            .is_some_and(|certs| !certs.is_empty());
        if !has_client_cert {
            return Err(Status::unauthenticated("no client certificate"));
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = *self.delay.lock().expect("delay lock");
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let request = request.into_inner();
        self.requests
            .lock()
            .expect("requests lock")
            .push(request.clone());
        if let Some(status) = self.script.lock().expect("script lock").pop_front() {
            return Err(status);
        }
        let number = self.tokens.fetch_add(1, Ordering::SeqCst) + 1;
        let expire_time = *self.expire_time.lock().expect("expire lock");
        let mut scopes = if request.scopes.is_empty() {
            vec!["https://www.googleapis.com/auth/cloud-platform".to_owned()]
        } else {
            request.scopes.clone()
        };
        scopes.sort();
        scopes.dedup();
        Ok(Response::new(GetAccessTokenResponse {
            access_token: format!("ya29.fake-{number}"),
            token_type: "Bearer".to_owned(),
            expire_time: Some(prost_types::Timestamp::from(expire_time)),
            granted_scopes: scopes,
            principal: PRINCIPAL.to_owned(),
            cache_hit: number > 1,
            last_known_good: false,
            credential: if request.credential.is_empty() {
                "default-credential".to_owned()
            } else {
                request.credential
            },
        }))
    }

    async fn exchange_token(
        &self,
        _request: Request<ExchangeTokenRequest>,
    ) -> Result<Response<ExchangeTokenResponse>, Status> {
        unimplemented()
    }

    async fn impersonate_service_account(
        &self,
        _request: Request<ImpersonateServiceAccountRequest>,
    ) -> Result<Response<ImpersonateServiceAccountResponse>, Status> {
        unimplemented()
    }

    async fn generate_id_token(
        &self,
        _request: Request<GenerateIdTokenRequest>,
    ) -> Result<Response<GenerateIdTokenResponse>, Status> {
        unimplemented()
    }

    async fn sign_jwt(
        &self,
        _request: Request<SignJwtRequest>,
    ) -> Result<Response<SignJwtResponse>, Status> {
        unimplemented()
    }

    async fn sign_blob(
        &self,
        _request: Request<SignBlobRequest>,
    ) -> Result<Response<SignBlobResponse>, Status> {
        unimplemented()
    }
}

/// Serves `broker` on 127.0.0.1 over mTLS, requiring client certificates issued by the PKI's
/// CA. The server lives as long as the test's runtime.
pub(crate) async fn serve(pki: &Pki, broker: Arc<FakeBroker>) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).expect("CA PEM"))
        .expect("CA is a trust anchor");
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("client verifier");
    let chain = CertificateDer::pem_slice_iter(pki.server_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("server certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes()).expect("server key");
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let (sender, receiver) = tokio::sync::mpsc::channel::<TlsStream<TcpStream>>(16);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            // Handshakes run apart, so that a failing one does not hold up the others.
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = sender.send(tls).await;
                }
            });
        }
    });
    let incoming = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|tls| (Ok::<_, std::io::Error>(tls), receiver))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TokenBrokerServer::from_arc(broker))
            .serve_with_incoming(incoming),
    );
    addr
}
