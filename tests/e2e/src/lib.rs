//! The harness of the end-to-end scenarios: a real emulator of Google over HTTP, a real PKI, a
//! broker started from a real configuration file, and gRPC clients over real mutual TLS, all on
//! 127.0.0.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use broker_proto::tokenbroker::v1::token_broker_client::TokenBrokerClient;
use gcp_emulator::{Emulator, RunningEmulator, World};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use token_broker::pki::{CertificateAuthority, IssuedCertificate, LeafSpec};
use token_broker::server::{self, RunningBroker};
use token_broker::settings::Settings;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The SPIFFE ID the default policy grants broad scopes.
pub const APP: &str = "spiffe://example.org/ns/prod/sa/app";
/// A second SPIFFE ID with the same grant (to show callers share tokens).
pub const OTHER_APP: &str = "spiffe://example.org/ns/prod/sa/worker";
/// A SPIFFE ID allowed only read-only storage.
pub const READER: &str = "spiffe://example.org/ns/prod/sa/reader";
/// A SPIFFE ID no grant mentions.
pub const STRANGER: &str = "spiffe://example.org/ns/other/sa/stranger";
/// Google's cloud-platform scope.
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Read-only storage.
pub const STORAGE_READ: &str = "https://www.googleapis.com/auth/devstorage.read_only";
/// A scope the default world's broker@ may use with domain-wide delegation.
pub const DIRECTORY_READ: &str = "https://www.googleapis.com/auth/admin.directory.user.readonly";
/// The service account behind the `sa` credential.
pub const BROKER_SA: &str = "broker@dev-project.iam.gserviceaccount.com";
/// An impersonation target of the default world: `broker@` holds Token Creator on it; its
/// tokens live at most an hour.
pub const READER_SA: &str = "reader@dev-project.iam.gserviceaccount.com";
/// An impersonation target of the default world: `broker@` holds Token Creator on it; its
/// tokens may live 12 hours.
pub const WRITER_SA: &str = "writer@dev-project.iam.gserviceaccount.com";
/// A service account only [`chain_world`] has: only `reader@` holds Token Creator on it, so
/// `broker@` reaches it through the delegate `reader@`.
pub const CHAINED_SA: &str = "chained@dev-project.iam.gserviceaccount.com";
/// The authorized user of the default world (`<harness dir>/emulator/users/dev-user.json`).
pub const DEV_USER: &str = "dev-user@example.com";
/// Replaced, in [`Options::policy`], [`Options::extra_config`] and [`Options::files`], by the
/// URL of the emulator's ID-token-protected function.
pub const FUNCTION_URL_VAR: &str = "${FUNCTION_URL}";
/// Replaced, like [`FUNCTION_URL_VAR`], by the emulator's base URL.
pub const EMULATOR_URL_VAR: &str = "${EMULATOR_URL}";

/// The policy most scenarios use.
pub const DEFAULT_POLICY: &str = r#"
[[grants]]
name = "apps"
credential = "sa"
default = true
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }, { spiffe_id = "spiffe://example.org/ns/prod/sa/worker" }]
scopes = ["https://www.googleapis.com/auth/cloud-platform", "https://www.googleapis.com/auth/admin.directory.user.readonly"]
scope_prefixes = ["https://www.googleapis.com/auth/devstorage."]
subject_domains = ["example.com"]

[[grants]]
name = "readers"
credential = "sa"
default = true
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/reader" }, { spiffe_prefix = "spiffe://example.org/ns/prod/readers/" }]
scopes = ["https://www.googleapis.com/auth/devstorage.read_only"]
"#;

/// The harness CA vouches for SPIFFE IDs of `example.org` (the callers above).
pub const DEFAULT_TRUST: &str = r#"
[[tls.trust_bundles]]
name = "harness"
file = "ca.pem"
spiffe_trust_domains = ["example.org"]
"#;

/// A unique temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/token-broker-e2e-<name>-<pid>-<n>`.
    pub fn new(name: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "token-broker-e2e-{name}-{}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Options of a [`Harness`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The policy file's contents.
    pub policy: String,
    /// Extra TOML appended to the broker configuration (must not repeat its tables).
    pub extra_config: String,
    /// The `[http]` table.
    pub http: String,
    /// The `[cache]` table.
    pub cache: String,
    /// Extra lines of the `[server]` table.
    pub server: String,
    /// `server.rpc_timeout`.
    pub rpc_timeout: &'static str,
    /// The `[[tls.trust_bundles]]` tables (`ca.pem` is the harness CA).
    pub trust: String,
    /// More files to write into the harness directory before the broker starts (name,
    /// contents), such as other CAs' bundles.
    pub files: Vec<(String, String)>,
    /// The emulator's world; `None` is its default world.
    pub world: Option<World>,
    /// Runs once the emulator is up and every file is written, before the broker's
    /// configuration is loaded: for files made from what the emulator generated (its keys).
    /// Gets the emulator and the harness directory.
    pub setup: Option<fn(&RunningEmulator, &Path)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            policy: DEFAULT_POLICY.to_owned(),
            extra_config: String::new(),
            http: "[http]\nrequest_timeout = \"2s\"\n[http.retry]\ninitial_backoff = \"10ms\"\nmax_backoff = \"50ms\"\nmax_attempts = 3\n"
                .to_owned(),
            cache: String::new(),
            server: String::new(),
            rpc_timeout: "5s",
            trust: DEFAULT_TRUST.to_owned(),
            files: Vec::new(),
            world: None,
            setup: None,
        }
    }
}

/// An emulator, a PKI, and a broker configured from files in a temporary directory.
#[derive(Debug)]
pub struct Harness {
    /// The emulator of Google.
    pub emulator: RunningEmulator,
    /// The broker.
    pub broker: RunningBroker,
    /// The CA that signs the server's and the clients' certificates.
    pub ca: CertificateAuthority,
    /// The directory holding every file (removed on drop).
    pub dir: TempDir,
}

/// A client identity: certificate and key, PEM.
#[derive(Debug)]
pub struct ClientIdentity {
    cert_pem: String,
    key_pem: String,
}

impl ClientIdentity {
    /// From an issued certificate.
    pub fn from_issued(issued: &IssuedCertificate) -> Self {
        Self {
            cert_pem: issued.cert_pem.clone(),
            key_pem: issued.key_pem.to_string(),
        }
    }
}

impl Harness {
    /// Starts everything with `options`.
    pub async fn start(options: Options) -> Self {
        let dir = TempDir::new("harness");
        let mut builder = Emulator::builder().data_dir(dir.path().join("emulator"));
        if let Some(world) = options.world.clone() {
            builder = builder.world(world);
        }
        let emulator = builder.start().await.expect("emulator");
        let substitute = |text: &str| {
            text.replace(FUNCTION_URL_VAR, &emulator.function_url())
                .replace(EMULATOR_URL_VAR, emulator.url())
        };
        let ca = CertificateAuthority::new("e2e CA").expect("ca");
        std::fs::write(dir.path().join("ca.pem"), ca.certificate_pem()).expect("write");
        let server = ca
            .issue(&LeafSpec::localhost_server())
            .expect("server cert");
        std::fs::write(dir.path().join("server.pem"), &server.cert_pem).expect("write");
        std::fs::write(dir.path().join("server-key.pem"), server.key_pem.as_bytes())
            .expect("write");
        std::fs::write(dir.path().join("policy.toml"), substitute(&options.policy)).expect("write");
        for (name, contents) in &options.files {
            std::fs::write(dir.path().join(name), substitute(contents)).expect("write");
        }
        if let Some(setup) = options.setup {
            setup(&emulator, dir.path());
        }
        let url = emulator.url();
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:0"
rpc_timeout = "{rpc_timeout}"
{server}

[tls]
cert = "server.pem"
key = "server-key.pem"
reload_interval = "100ms"

{trust}

[policy]
file = "policy.toml"
reload_interval = "100ms"

[google]
token_url = "{url}/token"
# STS under another name of the same emulator, so that errors show which host failed.
sts_url = "{sts}/v1/token"
iam_credentials_url = "{url}"
metadata_url = "{url}"

{http}
{cache}

[[credentials]]
name = "sa"
kind = "service_account"
key_file = "emulator/keys/broker.json"

{extra}
"#,
            server = options.server,
            rpc_timeout = options.rpc_timeout,
            sts = url.replacen("127.0.0.1", "localhost", 1),
            trust = options.trust,
            http = options.http,
            cache = options.cache,
            extra = substitute(&options.extra_config),
        );
        let config_path = dir.path().join("broker.toml");
        std::fs::write(&config_path, config).expect("write");
        let settings =
            Settings::load(&config_path, Some(Default::default()), &[]).expect("settings");
        let broker = server::start(settings).await.expect("broker");
        Self {
            emulator,
            broker,
            ca,
            dir,
        }
    }

    /// The broker's address.
    pub fn addr(&self) -> SocketAddr {
        self.broker.addr()
    }

    /// A client certificate for a SPIFFE ID, signed by the harness CA.
    pub fn identity(&self, spiffe_id: &str) -> ClientIdentity {
        ClientIdentity::from_issued(
            &self
                .ca
                .issue(&LeafSpec::spiffe_client(spiffe_id))
                .expect("client cert"),
        )
    }

    /// A client certificate with an explicit validity.
    pub fn identity_valid(
        &self,
        spiffe_id: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> ClientIdentity {
        let spec = LeafSpec {
            validity: Some((not_before, not_after)),
            ..LeafSpec::spiffe_client(spiffe_id)
        };
        ClientIdentity::from_issued(&self.ca.issue(&spec).expect("client cert"))
    }

    /// A client identity issued by the harness CA from `spec`.
    pub fn identity_from(&self, spec: &LeafSpec) -> ClientIdentity {
        ClientIdentity::from_issued(&self.ca.issue(spec).expect("client cert"))
    }

    /// A rustls client configuration trusting the harness CA, presenting `identity`, speaking
    /// h2, with TLS session resumption (the default in-memory session store).
    pub fn rustls_client(&self, identity: &ClientIdentity) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                CertificateDer::from_pem_slice(self.ca.certificate_pem().as_bytes())
                    .expect("ca pem"),
            )
            .expect("root");
        let chain =
            vec![CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).expect("cert pem")];
        let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).expect("key pem");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client auth");
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// A TLS connection to the broker with `config`, below HTTP/2: for tests of the
    /// connection itself (resumption, age, limits).
    pub async fn tls_connect(
        &self,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(self.addr()).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    }

    /// A connected client for a SPIFFE ID (a certificate of the harness CA).
    pub async fn client_for(&self, spiffe_id: &str) -> TokenBrokerClient<Channel> {
        self.client(Some(&self.identity(spiffe_id)))
            .await
            .expect("connect")
    }

    /// A client over mTLS trusting the harness CA.
    pub async fn client(
        &self,
        identity: Option<&ClientIdentity>,
    ) -> Result<TokenBrokerClient<Channel>, tonic::transport::Error> {
        self.client_trusting(&self.ca.certificate_pem(), identity)
            .await
    }

    /// A client over mTLS trusting `ca_pem` for the server.
    pub async fn client_trusting(
        &self,
        ca_pem: &str,
        identity: Option<&ClientIdentity>,
    ) -> Result<TokenBrokerClient<Channel>, tonic::transport::Error> {
        Ok(TokenBrokerClient::new(
            self.channel(ca_pem, identity).await?,
        ))
    }

    /// A channel over mTLS.
    pub async fn channel(
        &self,
        ca_pem: &str,
        identity: Option<&ClientIdentity>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name("localhost");
        if let Some(identity) = identity {
            tls = tls.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
        }
        Endpoint::from_shared(format!("https://127.0.0.1:{}", self.addr().port()))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
    }

    /// What the emulator says a token is.
    pub async fn tokeninfo(&self, token: &str) -> serde_json::Value {
        reqwest::Client::new()
            .get(format!("{}/tokeninfo", self.emulator.url()))
            .query(&[("access_token", token)])
            .send()
            .await
            .expect("tokeninfo")
            .json()
            .await
            .expect("json")
    }

    /// The HTTP status the emulator's ID-token-protected function answers to
    /// `Authorization: Bearer <id_token>`, and its body.
    pub async fn call_function(&self, id_token: &str) -> (u16, String) {
        let response = reqwest::Client::new()
            .get(self.emulator.function_url())
            .bearer_auth(id_token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("function");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// Replaces a file in the harness directory atomically (write, then rename).
    pub fn replace_file(&self, name: &str, contents: &str) {
        let temporary = self.dir.path().join(format!(".{name}.new"));
        std::fs::write(&temporary, contents).expect("write");
        std::fs::rename(&temporary, self.dir.path().join(name)).expect("rename");
    }

    /// Stops the broker and the emulator.
    pub async fn stop(self) {
        self.broker.shutdown().await;
        self.emulator.shutdown().await;
    }
}

/// A fault rule for the emulator, from its JSON form (see the emulator's README).
pub fn fault(json: serde_json::Value) -> gcp_emulator::Fault {
    serde_json::from_value(json).expect("fault")
}

/// Asserts that the broker refuses `identity` (or a client without a certificate) at the TLS
/// layer: the connection, or its first call, fails.
pub async fn assert_refused(harness: &Harness, identity: Option<&ClientIdentity>) {
    if let Ok(mut client) = harness.client(identity).await {
        let status = client
            .get_access_token(request(&[]))
            .await
            .expect_err("must be refused");
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
            ),
            "{status:?}"
        );
    }
}

/// The ErrorInfo of a status: reason and metadata.
pub fn error_info(status: &tonic::Status) -> (String, std::collections::HashMap<String, String>) {
    use tonic_types::StatusExt as _;
    let details = status.get_error_details();
    details
        .error_info()
        .map(|info| (info.reason.clone(), info.metadata.clone()))
        .unwrap_or_default()
}

/// The RetryInfo delay of a status.
pub fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
}

/// A GetAccessToken request for these scopes.
pub fn request(scopes: &[&str]) -> broker_proto::tokenbroker::v1::GetAccessTokenRequest {
    broker_proto::tokenbroker::v1::GetAccessTokenRequest {
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The default world plus [`CHAINED_SA`], on which only `reader@` holds Token Creator: the
/// chain `broker@` -> `reader@` -> `chained@` is the one IAM allows, `broker@` -> `chained@`
/// is refused.
pub fn chain_world() -> World {
    let mut world = World::default_world();
    world
        .service_accounts
        .push(gcp_emulator::world::ServiceAccount {
            email: CHAINED_SA.to_owned(),
            key: false,
            dwd: false,
            dwd_scopes: Vec::new(),
            token_creators: vec![format!("serviceAccount:{READER_SA}")],
            allow_extended_lifetime: false,
            disabled: false,
        });
    world
}

/// Whole seconds as a protobuf duration.
pub fn seconds(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The claims of a JWT (its middle part), without verifying anything.
pub fn jwt_claims(jwt: &str) -> serde_json::Value {
    jwt_part(jwt, 1)
}

/// The header of a JWT (its first part).
pub fn jwt_header(jwt: &str) -> serde_json::Value {
    jwt_part(jwt, 0)
}

fn jwt_part(jwt: &str, index: usize) -> serde_json::Value {
    use base64::Engine as _;
    let part = jwt.split('.').nth(index).expect("a JWT part");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

/// Asserts a status's code and ErrorInfo reason; returns the ErrorInfo metadata.
pub fn assert_error(
    status: &tonic::Status,
    code: tonic::Code,
    reason: &str,
) -> std::collections::HashMap<String, String> {
    let (got, metadata) = error_info(status);
    assert_eq!(
        (status.code(), got.as_str()),
        (code, reason),
        "{status:?} {metadata:?}"
    );
    metadata
}

/// Asserts a PERMISSION_DENIED by the policy's `rule`; returns the ErrorInfo metadata.
pub fn assert_denied(
    status: &tonic::Status,
    rule: &str,
) -> std::collections::HashMap<String, String> {
    let metadata = assert_error(status, tonic::Code::PermissionDenied, "POLICY_DENIED");
    assert_eq!(
        metadata.get("rule").map(String::as_str),
        Some(rule),
        "{metadata:?}"
    );
    metadata
}

/// Asserts an INVALID_ARGUMENT for `field` with `reason`, named by both the ErrorInfo and the
/// BadRequest.
pub fn assert_invalid(status: &tonic::Status, reason: &str, field: &str) {
    let metadata = assert_error(status, tonic::Code::InvalidArgument, reason);
    assert_eq!(
        metadata.get("field").map(String::as_str),
        Some(field),
        "{metadata:?}"
    );
    assert_eq!(
        bad_request_field(status).as_deref(),
        Some(field),
        "BadRequest"
    );
}

/// The field of the first violation of a status's BadRequest.
pub fn bad_request_field(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
}
