//! Shared test fixtures: an rcgen PKI written to files, and a fake `TokenBroker` served over
//! real mutual TLS (tokio-rustls, client certificates required).

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
use tonic_types::{ErrorDetails, FieldViolation, StatusExt as _};

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

/// A fake broker. GetAccessToken answers with numbered tokens (`ya29.fake-1`,
/// `ya29.fake-2`, ...) expiring at `expire_time`; ImpersonateServiceAccount, GenerateIdToken,
/// SignJwt, SignBlob and ExchangeToken answer in kind (see [`FakeBroker::impersonated_token`]
/// and friends), numbered from the same counter. Every request is recorded before it is
/// answered; callers without a verified client certificate get UNAUTHENTICATED.
///
/// Like the broker, SignJwt refuses a payload that is not a JSON object and SignBlob an empty
/// one (INVALID_ARGUMENT naming `payload`); ExchangeToken refuses an empty subject token, a
/// type it does not know, federation without an audience, and downscoping without a boundary or
/// with an audience or scopes. A downscoped token has no expiry, principal or credential.
#[derive(Debug)]
pub(crate) struct FakeBroker {
    calls: AtomicUsize,
    tokens: AtomicUsize,
    script: Mutex<VecDeque<Status>>,
    expire_time: Mutex<SystemTime>,
    lifetime: Mutex<Option<Duration>>,
    delay: Mutex<Duration>,
    malformed: AtomicBool,
    jwt_id_tokens: AtomicBool,
    requests: Mutex<Vec<GetAccessTokenRequest>>,
    impersonate_requests: Mutex<Vec<ImpersonateServiceAccountRequest>>,
    id_token_requests: Mutex<Vec<GenerateIdTokenRequest>>,
    sign_jwt_requests: Mutex<Vec<SignJwtRequest>>,
    sign_blob_requests: Mutex<Vec<SignBlobRequest>>,
    exchange_requests: Mutex<Vec<ExchangeTokenRequest>>,
}

/// The key ID of every fake signature.
pub(crate) const KEY_ID: &str = "0123456789abcdef0123456789abcdef01234567";

impl FakeBroker {
    pub(crate) fn new(expire_time: SystemTime) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            tokens: AtomicUsize::new(0),
            script: Mutex::new(VecDeque::new()),
            expire_time: Mutex::new(expire_time),
            lifetime: Mutex::new(None),
            delay: Mutex::new(Duration::ZERO),
            malformed: AtomicBool::new(false),
            jwt_id_tokens: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            impersonate_requests: Mutex::new(Vec::new()),
            id_token_requests: Mutex::new(Vec::new()),
            sign_jwt_requests: Mutex::new(Vec::new()),
            sign_blob_requests: Mutex::new(Vec::new()),
            exchange_requests: Mutex::new(Vec::new()),
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

    /// The ImpersonateServiceAccount requests received so far.
    pub(crate) fn impersonate_requests(&self) -> Vec<ImpersonateServiceAccountRequest> {
        self.impersonate_requests
            .lock()
            .expect("requests lock")
            .clone()
    }

    /// The GenerateIdToken requests received so far.
    pub(crate) fn id_token_requests(&self) -> Vec<GenerateIdTokenRequest> {
        self.id_token_requests
            .lock()
            .expect("requests lock")
            .clone()
    }

    /// The SignJwt requests received so far.
    pub(crate) fn sign_jwt_requests(&self) -> Vec<SignJwtRequest> {
        self.sign_jwt_requests
            .lock()
            .expect("requests lock")
            .clone()
    }

    /// The SignBlob requests received so far.
    pub(crate) fn sign_blob_requests(&self) -> Vec<SignBlobRequest> {
        self.sign_blob_requests
            .lock()
            .expect("requests lock")
            .clone()
    }

    /// The ExchangeToken requests received so far.
    pub(crate) fn exchange_requests(&self) -> Vec<ExchangeTokenRequest> {
        self.exchange_requests
            .lock()
            .expect("requests lock")
            .clone()
    }

    /// The next calls, of whichever RPC, fail with these statuses, in order.
    pub(crate) fn fail_with(&self, statuses: impl IntoIterator<Item = Status>) {
        self.script.lock().expect("script lock").extend(statuses);
    }

    pub(crate) fn set_expire_time(&self, expire_time: SystemTime) {
        *self.expire_time.lock().expect("expire lock") = expire_time;
    }

    /// From now on, every token expires `lifetime` after it is handed out (in whole seconds,
    /// rounded down) instead of at the fixed expire time; `None` goes back to the fixed one.
    pub(crate) fn set_lifetime(&self, lifetime: Option<Duration>) {
        *self.lifetime.lock().expect("lifetime lock") = lifetime;
    }

    /// Every call waits this long before answering.
    pub(crate) fn set_delay(&self, delay: Duration) {
        *self.delay.lock().expect("delay lock") = delay;
    }

    /// From now on, answer with responses a client must refuse: no token, JWT or signature,
    /// and no expiry.
    pub(crate) fn set_malformed(&self, malformed: bool) {
        self.malformed.store(malformed, Ordering::SeqCst);
    }

    /// The access token ImpersonateServiceAccount answers with as the `number`th token.
    pub(crate) fn impersonated_token(number: usize) -> String {
        format!("ya29.impersonated-{number}")
    }

    /// From now on, GenerateIdToken answers with [`Self::jwt_id_token`]: a JWS whose payload
    /// holds the requested audience and the expiry, as Google's ID tokens do.
    pub(crate) fn set_jwt_id_tokens(&self, jwt: bool) {
        self.jwt_id_tokens.store(jwt, Ordering::SeqCst);
    }

    /// The ID token GenerateIdToken answers with as the `number`th token after
    /// [`Self::set_jwt_id_tokens`]: `aud` and `exp` (Unix seconds) in a base64url JSON
    /// payload, and the number in the (fake) signature.
    pub(crate) fn jwt_id_token(number: usize, audience: &str, exp: u64) -> String {
        let claims = serde_json::json!({"aud": audience, "exp": exp, "sub": "1234"});
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.fake-id-token-{number}",
            base64url(claims.to_string().as_bytes())
        )
    }

    /// The ID token GenerateIdToken answers with as the `number`th token.
    pub(crate) fn id_token(number: usize) -> String {
        format!("eyJhbGciOiJSUzI1NiJ9.fake-id-token-{number}.c2lnbmF0dXJl")
    }

    /// The JWT SignJwt answers with as the `number`th token.
    pub(crate) fn signed_jwt(number: usize) -> String {
        format!("eyJhbGciOiJSUzI1NiJ9.fake-signed-jwt-{number}.c2lnbmF0dXJl")
    }

    /// The access token ExchangeToken answers a federation exchange with as the `number`th
    /// token.
    pub(crate) fn exchanged_token(number: usize) -> String {
        format!("ya29.exchanged-{number}")
    }

    /// The access token ExchangeToken answers downscoping with as the `number`th token.
    pub(crate) fn downscoped_token(number: usize) -> String {
        format!("ya29.downscoped-{number}")
    }

    /// The signature SignBlob answers with for `payload`: not a real one, but raw bytes that
    /// are not UTF-8 and depend on the payload.
    pub(crate) fn signature(payload: &[u8]) -> Vec<u8> {
        let mut signature = b"\x00\xffsig:".to_vec();
        signature.extend_from_slice(payload);
        signature
    }

    /// The checks and bookkeeping every RPC shares: the client certificate, the delay, the
    /// recording and the script. Returns the request and the token number to answer with.
    async fn accept<T: Clone>(
        &self,
        request: Request<T>,
        log: &Mutex<Vec<T>>,
    ) -> Result<(T, usize), Status> {
        check_client(&request)?;
        let delay = *self.delay.lock().expect("delay lock");
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let request = request.into_inner();
        log.lock().expect("requests lock").push(request.clone());
        if let Some(status) = self.script.lock().expect("script lock").pop_front() {
            return Err(status);
        }
        Ok((request, self.tokens.fetch_add(1, Ordering::SeqCst) + 1))
    }

    fn expire_time(&self) -> Option<prost_types::Timestamp> {
        if self.malformed.load(Ordering::SeqCst) {
            return None;
        }
        let expire_time = match *self.lifetime.lock().expect("lifetime lock") {
            Some(lifetime) => whole_seconds_from_now(lifetime),
            None => *self.expire_time.lock().expect("expire lock"),
        };
        Some(prost_types::Timestamp::from(expire_time))
    }

    /// `value`, or nothing when answering with malformed responses.
    fn unless_malformed<T: Default>(&self, value: T) -> T {
        if self.malformed.load(Ordering::SeqCst) {
            T::default()
        } else {
            value
        }
    }
}

/// UNAUTHENTICATED unless the caller presented a verified client certificate.
/// Unpadded base64url (RFC 4648 §5).
pub(crate) fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut text = String::new();
    for chunk in bytes.chunks(3) {
        let mut buffer = [0_u8; 3];
        buffer[..chunk.len()].copy_from_slice(chunk);
        let n = (u32::from(buffer[0]) << 16) | (u32::from(buffer[1]) << 8) | u32::from(buffer[2]);
        for i in 0..=chunk.len() {
            let index = usize::try_from((n >> (18 - 6 * i)) & 63).unwrap_or_default();
            text.push(char::from(ALPHABET[index]));
        }
    }
    text
}

fn check_client<T>(request: &Request<T>) -> Result<(), Status> {
    let has_client_cert = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .is_some_and(|certs| !certs.is_empty());
    if has_client_cert {
        Ok(())
    } else {
        Err(Status::unauthenticated("no client certificate"))
    }
}

fn credential_or_default(credential: String) -> String {
    if credential.is_empty() {
        "default-credential".to_owned()
    } else {
        credential
    }
}

/// INVALID_ARGUMENT with a BadRequest, as the broker sends it for a bad field.
pub(crate) fn invalid_argument(field: &str, reason: &str, description: &str) -> Status {
    let mut details = ErrorDetails::with_error_info(
        reason,
        ERROR_DOMAIN,
        HashMap::from([("field".to_owned(), field.to_owned())]),
    );
    details.set_bad_request(vec![FieldViolation::new(field, description)]);
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid {field}: {description}"),
        details,
    )
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

/// The subject token types ExchangeToken accepts.
const SUBJECT_TOKEN_TYPES: [&str; 5] = [
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:saml2",
    "urn:ietf:params:aws:token-type:aws4_request",
    ACCESS_TOKEN_TYPE,
];

const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The principal of a federated token without impersonation.
pub(crate) const FEDERATED_PRINCIPAL: &str = "principal://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/subject/ci";

/// The broker's checks of an ExchangeTokenRequest's shape, in brief.
fn check_exchange(request: &ExchangeTokenRequest) -> Result<(), Status> {
    if request.subject_token.is_empty() {
        return Err(invalid_argument(
            "subject_token",
            "INVALID_FIELD",
            "must hold 1 to 65536 bytes",
        ));
    }
    if !SUBJECT_TOKEN_TYPES.contains(&request.subject_token_type.as_str()) {
        return Err(invalid_argument(
            "subject_token_type",
            "UNSUPPORTED_TOKEN_TYPE",
            "not a subject token type the broker accepts",
        ));
    }
    let boundary = request
        .options
        .as_ref()
        .and_then(|options| options.access_boundary.as_ref());
    if request.subject_token_type == ACCESS_TOKEN_TYPE {
        if boundary.is_none() {
            return Err(invalid_argument(
                "options.access_boundary",
                "INVALID_ACCESS_BOUNDARY",
                "required for downscoping",
            ));
        }
        if !request.audience.is_empty() || !request.scopes.is_empty() {
            return Err(invalid_argument(
                "audience",
                "INVALID_FIELD",
                "must be empty for downscoping",
            ));
        }
    } else if request.audience.is_empty() && request.credential.is_empty() {
        return Err(invalid_argument(
            "audience",
            "INVALID_FIELD",
            "required without a credential",
        ));
    }
    if boundary.is_some_and(|boundary| boundary.access_boundary_rules.is_empty()) {
        return Err(invalid_argument(
            "options.access_boundary.access_boundary_rules",
            "INVALID_ACCESS_BOUNDARY",
            "between 1 and 10 rules are required",
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl TokenBroker for FakeBroker {
    async fn get_access_token(
        &self,
        request: Request<GetAccessTokenRequest>,
    ) -> Result<Response<GetAccessTokenResponse>, Status> {
        check_client(&request)?;
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (request, number) = self.accept(request, &self.requests).await?;
        let mut scopes = if request.scopes.is_empty() {
            vec!["https://www.googleapis.com/auth/cloud-platform".to_owned()]
        } else {
            request.scopes.clone()
        };
        scopes.sort();
        scopes.dedup();
        Ok(Response::new(GetAccessTokenResponse {
            access_token: self.unless_malformed(format!("ya29.fake-{number}")),
            token_type: "Bearer".to_owned(),
            expire_time: self.expire_time(),
            granted_scopes: scopes,
            principal: PRINCIPAL.to_owned(),
            cache_hit: number > 1,
            last_known_good: false,
            credential: credential_or_default(request.credential),
        }))
    }

    async fn exchange_token(
        &self,
        request: Request<ExchangeTokenRequest>,
    ) -> Result<Response<ExchangeTokenResponse>, Status> {
        let (request, number) = self.accept(request, &self.exchange_requests).await?;
        check_exchange(&request)?;
        let response = if request.subject_token_type == ACCESS_TOKEN_TYPE {
            ExchangeTokenResponse {
                access_token: self.unless_malformed(Self::downscoped_token(number)),
                issued_token_type: ACCESS_TOKEN_TYPE.to_owned(),
                token_type: "Bearer".to_owned(),
                expire_time: None,
                principal: String::new(),
                credential: String::new(),
            }
        } else {
            ExchangeTokenResponse {
                access_token: self.unless_malformed(Self::exchanged_token(number)),
                issued_token_type: ACCESS_TOKEN_TYPE.to_owned(),
                token_type: "Bearer".to_owned(),
                expire_time: self.expire_time(),
                // A credential impersonates; a plain exchange is a federated principal.
                principal: if request.credential.is_empty() {
                    FEDERATED_PRINCIPAL.to_owned()
                } else {
                    PRINCIPAL.to_owned()
                },
                credential: request.credential,
            }
        };
        Ok(Response::new(response))
    }

    async fn impersonate_service_account(
        &self,
        request: Request<ImpersonateServiceAccountRequest>,
    ) -> Result<Response<ImpersonateServiceAccountResponse>, Status> {
        let (request, number) = self.accept(request, &self.impersonate_requests).await?;
        Ok(Response::new(ImpersonateServiceAccountResponse {
            access_token: self.unless_malformed(Self::impersonated_token(number)),
            token_type: "Bearer".to_owned(),
            expire_time: self.expire_time(),
            principal: request.target_service_account,
            cache_hit: number > 1,
            credential: credential_or_default(request.credential),
            last_known_good: false,
        }))
    }

    async fn generate_id_token(
        &self,
        request: Request<GenerateIdTokenRequest>,
    ) -> Result<Response<GenerateIdTokenResponse>, Status> {
        let (request, number) = self.accept(request, &self.id_token_requests).await?;
        let expire_time = self.expire_time();
        let id_token = if self.jwt_id_tokens.load(Ordering::SeqCst) {
            let exp = expire_time.map_or(0, |time| u64::try_from(time.seconds).unwrap_or(0));
            Self::jwt_id_token(number, &request.audience, exp)
        } else {
            Self::id_token(number)
        };
        Ok(Response::new(GenerateIdTokenResponse {
            id_token: self.unless_malformed(id_token),
            expire_time,
            principal: if request.target_service_account.is_empty() {
                PRINCIPAL.to_owned()
            } else {
                request.target_service_account
            },
            cache_hit: number > 1,
            credential: credential_or_default(request.credential),
            last_known_good: false,
        }))
    }

    async fn sign_jwt(
        &self,
        request: Request<SignJwtRequest>,
    ) -> Result<Response<SignJwtResponse>, Status> {
        let (request, number) = self.accept(request, &self.sign_jwt_requests).await?;
        if !serde_json::from_str::<serde_json::Value>(&request.payload)
            .is_ok_and(|claims| claims.is_object())
        {
            return Err(invalid_argument(
                "payload",
                "INVALID_FIELD",
                "must be a JSON object",
            ));
        }
        Ok(Response::new(SignJwtResponse {
            key_id: KEY_ID.to_owned(),
            signed_jwt: self.unless_malformed(Self::signed_jwt(number)),
            credential: credential_or_default(request.credential),
        }))
    }

    async fn sign_blob(
        &self,
        request: Request<SignBlobRequest>,
    ) -> Result<Response<SignBlobResponse>, Status> {
        let (request, _) = self.accept(request, &self.sign_blob_requests).await?;
        if request.payload.is_empty() {
            return Err(invalid_argument(
                "payload",
                "INVALID_FIELD",
                "must hold 1 to 65536 bytes",
            ));
        }
        Ok(Response::new(SignBlobResponse {
            key_id: KEY_ID.to_owned(),
            signature: self.unless_malformed(Self::signature(&request.payload)),
            credential: credential_or_default(request.credential),
        }))
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
