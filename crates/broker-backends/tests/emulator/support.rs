//! What every flow's tests share: the emulator, an HTTP client with quick retries, a clock
//! at the real time, tokeninfo, fault injection, and assertions on Google's answers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broker_backends::{
    Env, GoogleEndpoints, HttpClient, HttpConfig, RetryPolicy, ServiceAccountKey,
    ServiceAccountSource,
};
use broker_core::{
    AccessBoundary, AccessBoundaryRule, Capabilities, ManualClock, ScopeSet, Secret, SourceError,
    SourceFuture, Token, TokenRequest, TokenSource, UpstreamRejection,
};
use gcp_emulator::{Emulator, Fault, RunningEmulator, World};
use serde_json::Value;

pub(crate) const BROKER: &str = "broker@dev-project.iam.gserviceaccount.com";
pub(crate) const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
pub(crate) const STORAGE_RO: &str = "https://www.googleapis.com/auth/devstorage.read_only";
/// Google's (and the emulator's) `expires_in` for JWT-bearer tokens.
pub(crate) const EXPIRES_IN: Duration = Duration::from_secs(3599);

/// A retry policy for tests: quick backoffs.
pub(crate) fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        default_budget: Duration::from_secs(20),
    }
}

pub(crate) fn http_with(retry: RetryPolicy, request_timeout: Duration) -> HttpClient {
    HttpClient::new(HttpConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout,
        no_proxy: true,
        max_retry_after: Duration::from_secs(60),
        retry,
    })
    .expect("http client")
}

pub(crate) fn http() -> HttpClient {
    http_with(policy(4), Duration::from_secs(5))
}

/// A manual clock standing at the real time, so assertions are valid for the emulator and
/// expiries are exact.
pub(crate) fn clock() -> ManualClock {
    ManualClock::new(SystemTime::now())
}

pub(crate) async fn emulator() -> RunningEmulator {
    Emulator::builder().start().await.expect("emulator")
}

pub(crate) fn key_file(emulator: &RunningEmulator, email: &str) -> Value {
    emulator.key_file(email).expect("the account has a key")
}

pub(crate) fn key(file: &Value) -> ServiceAccountKey {
    ServiceAccountKey::from_json(&file.to_string()).expect("key file")
}

pub(crate) fn source_with(
    emulator: &RunningEmulator,
    file: &Value,
    http: HttpClient,
    clock: &ManualClock,
) -> ServiceAccountSource {
    ServiceAccountSource::new(key(file), GoogleEndpoints::emulator(emulator.url()), http)
        .expect("source")
        .with_clock(Arc::new(clock.clone()))
}

pub(crate) fn source(
    emulator: &RunningEmulator,
    http: HttpClient,
    clock: &ManualClock,
) -> ServiceAccountSource {
    source_with(emulator, &key_file(emulator, BROKER), http, clock)
}

pub(crate) fn request(scopes: &[&str]) -> TokenRequest {
    TokenRequest::new(ScopeSet::parse(scopes).expect("scopes"))
}

pub(crate) fn fault(value: Value) -> Fault {
    serde_json::from_value(value).expect("fault")
}

pub(crate) fn inject(emulator: &RunningEmulator, value: Value) {
    emulator.inject_fault(fault(value)).expect("valid fault");
}

pub(crate) async fn tokeninfo(emulator: &RunningEmulator, token: &Secret) -> Value {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .post(format!("{}/tokeninfo", emulator.url()))
        .form(&[("access_token", token.expose())])
        .send()
        .await
        .expect("tokeninfo");
    assert_eq!(response.status(), 200, "tokeninfo refused the token");
    response.json().await.expect("json")
}

pub(crate) fn unix(time: SystemTime) -> i64 {
    i64::try_from(
        time.duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs(),
    )
    .expect("fits")
}

/// The emulator's `exp` (a string of Unix seconds) is the token's expiry to within a second
/// or two of processing.
pub(crate) fn assert_expiry_matches(info: &Value, token: &Token) {
    let exp: i64 = info["exp"]
        .as_str()
        .expect("exp")
        .parse()
        .expect("numeric exp");
    let ours = unix(token.expires_at);
    assert!((exp - ours).abs() <= 2, "emulator exp {exp}, ours {ours}");
}

pub(crate) fn rejection<T: std::fmt::Debug>(result: Result<T, SourceError>) -> UpstreamRejection {
    match result {
        Err(SourceError::Rejected(rejection)) => *rejection,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// The emulator's host as errors name it: `127.0.0.1:PORT`.
pub(crate) fn host(emulator: &RunningEmulator) -> String {
    format!("127.0.0.1:{}", emulator.addr().port())
}

pub(crate) fn boundary() -> AccessBoundary {
    AccessBoundary {
        rules: vec![AccessBoundaryRule {
            available_resource: "//storage.googleapis.com/projects/_/buckets/reports".into(),
            available_permissions: vec!["inRole:roles/storage.objectViewer".into()],
            availability_condition: Some(broker_core::AvailabilityCondition {
                expression: "resource.name.startsWith('projects/_/buckets/reports/objects/2026')"
                    .into(),
                title: Some("2026 only".into()),
                description: None,
            }),
        }],
    }
}

/// A tracing writer into a shared buffer.
#[derive(Clone, Default)]
pub(crate) struct Capture(pub(crate) Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) const READER: &str = "reader@dev-project.iam.gserviceaccount.com";
pub(crate) const WRITER: &str = "writer@dev-project.iam.gserviceaccount.com";
/// The default world's authorized user (also a user of its Workspace directory).
pub(crate) const DEFAULT_USER: &str = "dev-user@example.com";
/// Google's issuer of ID tokens.
pub(crate) const GOOGLE_ISSUER: &str = "https://accounts.google.com";

/// An emulator serving `world` (TOML, as a world file).
pub(crate) async fn emulator_with(world: &str) -> RunningEmulator {
    let world: World = toml::from_str(world).expect("world");
    Emulator::builder()
        .world(world)
        .start()
        .await
        .expect("emulator")
}

/// The claims of a JWT, unverified.
pub(crate) fn claims(jwt: &str) -> Value {
    jwt_part(jwt, 1)
}

/// The header of a JWT.
pub(crate) fn jwt_header(jwt: &str) -> Value {
    jwt_part(jwt, 0)
}

fn jwt_part(jwt: &str, index: usize) -> Value {
    let part = jwt.split('.').nth(index).expect("a compact JWS");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

/// An ID token's expiry is its `exp` claim, and it lives an hour.
pub(crate) fn assert_id_token_expiry(token: &Token) {
    let claims = claims(token.secret.expose());
    let exp = claims["exp"].as_i64().expect("integer exp");
    let iat = claims["iat"].as_i64().expect("integer iat");
    assert_eq!(unix(token.expires_at), exp);
    assert_eq!(exp - iat, 3600);
    assert!(token.scopes.is_empty());
}

/// The PEM certificate the emulator publishes for `email`'s key `key_id`
/// (`/robot/v1/metadata/x509/{email}`).
pub(crate) async fn account_certificate(
    emulator: &RunningEmulator,
    email: &str,
    key_id: &str,
) -> String {
    let certificates: Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("{}/robot/v1/metadata/x509/{email}", emulator.url()))
        .send()
        .await
        .expect("certificates")
        .json()
        .await
        .expect("json");
    certificates[key_id]
        .as_str()
        .unwrap_or_else(|| panic!("no certificate {key_id} in {certificates}"))
        .to_owned()
}

/// Whether `signature` is an RSASSA-PKCS1-v1_5 SHA-256 signature of `message` by the key of
/// the PEM certificate `certificate`, checked with aws-lc-rs.
pub(crate) fn verifies(certificate: &str, message: &[u8], signature: &[u8]) -> bool {
    let (_, pem) = x509_parser::pem::parse_x509_pem(certificate.as_bytes()).expect("PEM");
    let certificate = pem.parse_x509().expect("X.509");
    let key = certificate.public_key().subject_public_key.data.as_ref();
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key)
        .verify(message, signature)
        .is_ok()
}

/// An environment with no variables at all.
pub(crate) fn no_env() -> Env {
    Env::from_vars(Vec::<(String, String)>::new())
}

/// A port on loopback nothing listens on.
pub(crate) fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// A source that records what it is asked for and passes it on: the base of impersonation
/// tests, standing for the server's cache.
#[derive(Debug)]
pub(crate) struct Recorder {
    pub(crate) inner: Arc<dyn TokenSource>,
    pub(crate) requests: Mutex<Vec<TokenRequest>>,
}

impl Recorder {
    pub(crate) fn new(inner: Arc<dyn TokenSource>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            requests: Mutex::new(Vec::new()),
        })
    }

    /// The scopes of each request seen, joined.
    pub(crate) fn seen(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| r.scopes.joined())
            .collect()
    }
}

impl TokenSource for Recorder {
    fn principal(&self) -> &str {
        self.inner.principal()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn fetch<'a>(
        &'a self,
        request: &'a TokenRequest,
        deadline: Option<std::time::Instant>,
    ) -> SourceFuture<'a> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(request.clone());
        self.inner.fetch(request, deadline)
    }
}

/// A directory removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "broker-backends-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    /// Writes `contents` to `name` (creating parent directories); returns its path.
    pub(crate) fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("dirs");
        }
        std::fs::write(&path, contents).expect("write");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The lowercase hex SHA-256 of `bytes` (how the emulator's request log names credentials).
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A request a [`TokenServer`] received: its request line and headers (names lowercase).
#[derive(Debug, Clone)]
pub(crate) struct SeenRequest {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
}

impl SeenRequest {
    /// The value of the header `name` (lowercase), when it was sent once.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n == name);
        let (_, value) = values.next()?;
        values.next().is_none().then_some(value.as_str())
    }
}

/// A subject-token server on 127.0.0.1 (what a `url` credential source calls: an instance
/// metadata identity endpoint, a local token agent): plain HTTP/1.1, one request per
/// connection, every request answered with the current canned status and body, and recorded.
pub(crate) struct TokenServer {
    pub(crate) url: String,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    answer: Arc<Mutex<(u16, String)>>,
    task: tokio::task::JoinHandle<()>,
}

impl TokenServer {
    pub(crate) async fn start(status: u16, body: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new((status, body.to_owned())));
        let (task_seen, task_answer) = (seen.clone(), answer.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, answer) = (task_seen.clone(), task_answer.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        Self::serve(stream, seen, answer),
                    )
                    .await;
                });
            }
        });
        Self {
            url,
            seen,
            answer,
            task,
        }
    }

    async fn serve(
        mut stream: tokio::net::TcpStream,
        seen: Arc<Mutex<Vec<SeenRequest>>>,
        answer: Arc<Mutex<(u16, String)>>,
    ) -> std::io::Result<()> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut head = Vec::new();
        let mut buffer = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let read = stream.read(&mut buffer).await?;
            if read == 0 || head.len() > 16 * 1024 {
                return Ok(());
            }
            head.extend_from_slice(&buffer[..read]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let request = SeenRequest {
            method: request_line.next().unwrap_or_default().to_owned(),
            target: request_line.next().unwrap_or_default().to_owned(),
            headers: lines
                .filter_map(|line| line.split_once(':'))
                .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
                .collect(),
        };
        seen.lock().unwrap_or_else(|e| e.into_inner()).push(request);
        let (status, body) = answer.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let response = format!(
            "HTTP/1.1 {status} Canned\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    }

    /// Answers `status` and `body` from now on.
    pub(crate) fn answer(&self, status: u16, body: &str) {
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = (status, body.to_owned());
    }

    /// The requests received so far, oldest first.
    pub(crate) fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
