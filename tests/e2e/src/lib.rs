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

// Identity federation: subject tokens, `external_account` files and a token server.

/// `subject_token_type` of an OIDC JWT.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// `subject_token_type` of an OIDC ID token.
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// `subject_token_type` of a SAML 2.0 assertion.
pub const SAML2_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:saml2";
/// `subject_token_type` of a signed AWS `GetCallerIdentity` request.
pub const AWS4_TOKEN_TYPE: &str = "urn:ietf:params:aws:token-type:aws4_request";
/// `subject_token_type` of X.509 federation.
pub const MTLS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:mtls";
/// A Google access token: the subject of downscoping, and what every exchange issues.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The intermediate token of client-side Credential Access Boundaries.
pub const INTERMEDIATE_TOKEN_TYPE: &str =
    "urn:ietf:params:oauth:token-type:access_boundary_intermediate_token";
/// RFC 8693's grant type.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Google's `iam` scope: what a federated token that impersonates is asked for.
pub const IAM_SCOPE: &str = "https://www.googleapis.com/auth/iam";
/// The default world's workload identity pool, as principal sets and audiences name it.
pub const WORKLOAD_POOL: &str =
    "iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/dev-pool";
/// The default world's workforce pool.
pub const WORKFORCE_POOL: &str = "iam.googleapis.com/locations/global/workforcePools/dev-workforce";

/// The STS audience of a provider of the default workload pool, such as `dev-oidc`.
pub fn workload_provider(provider: &str) -> String {
    format!("//{WORKLOAD_POOL}/providers/{provider}")
}

/// The STS audience of a provider of the default workforce pool.
pub fn workforce_provider(provider: &str) -> String {
    format!("//{WORKFORCE_POOL}/providers/{provider}")
}

/// The federated principal the emulator records for `subject` of the default workload pool.
pub fn workload_principal(subject: &str) -> String {
    format!("principal://{WORKLOAD_POOL}/subject/{subject}")
}

/// An ExchangeToken request with these three fields and nothing else.
pub fn exchange(
    subject_token: &str,
    subject_token_type: &str,
    audience: &str,
) -> broker_proto::tokenbroker::v1::ExchangeTokenRequest {
    broker_proto::tokenbroker::v1::ExchangeTokenRequest {
        subject_token: subject_token.to_owned(),
        subject_token_type: subject_token_type.to_owned(),
        audience: audience.to_owned(),
        ..Default::default()
    }
}

/// A Credential Access Boundary of one rule: `roles` on `resource`.
pub fn boundary(
    resource: &str,
    roles: &[&str],
) -> broker_proto::tokenbroker::v1::CredentialAccessBoundary {
    broker_proto::tokenbroker::v1::CredentialAccessBoundary {
        access_boundary_rules: vec![broker_proto::tokenbroker::v1::AccessBoundaryRule {
            available_resource: resource.to_owned(),
            available_permissions: roles.iter().map(|r| (*r).to_owned()).collect(),
            availability_condition: None,
        }],
    }
}

impl Harness {
    /// A subject token of the emulator's OIDC provider `provider` (an id such as `dev-oidc`,
    /// or its audience) for `subject`, valid for 10 minutes, with `extra_claims` (an object,
    /// or null) set over the standard ones.
    pub fn oidc_token(
        &self,
        provider: &str,
        subject: &str,
        extra_claims: serde_json::Value,
    ) -> String {
        self.emulator
            .mint_oidc_token(provider, subject, Duration::from_secs(600), extra_claims)
            .expect("subject token")
    }

    /// A subject token of `provider` for `subject` that expired an hour ago (well past STS's
    /// five minutes of clock skew).
    pub fn expired_oidc_token(&self, provider: &str, subject: &str) -> String {
        let now = unix_now();
        self.oidc_token(
            provider,
            subject,
            serde_json::json!({"iat": now - 7200, "exp": now - 3600}),
        )
    }

    /// The STS requests the emulator saw, oldest first (its request log, normalized).
    pub fn sts_requests(&self) -> Vec<gcp_emulator::RecordedRequest> {
        self.emulator.requests(gcp_emulator::Endpoint::StsToken)
    }

    /// Forgets the STS requests seen so far.
    pub fn clear_sts_requests(&self) {
        self.emulator
            .clear_requests(Some(gcp_emulator::Endpoint::StsToken));
    }
}

/// Lowercase hex of the SHA-256 of `bytes` (the emulator's request log fingerprints
/// credentials so).
pub fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `json` as the file `name` of `dir` (an `external_account` file, an executable's
/// answer).
pub fn write_json(dir: &Path, name: &str, json: &serde_json::Value) {
    std::fs::write(
        dir.join(name),
        serde_json::to_string_pretty(json).expect("json"),
    )
    .expect("write");
}

/// AWS credentials to sign a `GetCallerIdentity` request with.
#[derive(Debug, Clone)]
pub struct AwsKeys {
    /// The access key id.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
    /// The session token of temporary credentials.
    pub session_token: Option<String>,
    /// The region signed for.
    pub region: String,
}

impl AwsKeys {
    /// The credentials of the emulator's first AWS provider (the default world's `dev-aws`).
    pub fn of(emulator: &RunningEmulator) -> Self {
        let federation = emulator.federation();
        let aws = federation
            .aws_provider()
            .expect("an AWS provider with credentials");
        Self {
            access_key_id: aws.access_key_id.clone().expect("access key id"),
            secret_access_key: aws
                .secret_access_key
                .as_ref()
                .expect("secret")
                .expose()
                .to_owned(),
            session_token: aws.session_token.as_ref().map(|t| t.expose().to_owned()),
            region: aws.region.clone(),
        }
    }
}

/// An `aws4_request` subject token as Google's client libraries build it: a SigV4-signed
/// `POST` of STS `GetCallerIdentity` in `keys.region`, with the headers `host`, `x-amz-date`,
/// `x-amz-security-token` (with a session token) and `x-goog-cloud-target-resource` (the
/// provider's `audience`) signed, serialized as JSON and then percent-encoded. Signed at
/// `time`.
pub fn aws4_request_token(keys: &AwsKeys, audience: &str, time: SystemTime) -> String {
    let host = format!("sts.{}.amazonaws.com", keys.region);
    let url = format!("https://{host}?Action=GetCallerIdentity&Version=2011-06-15");
    let amz_date = amz_date(time);
    let date = &amz_date[..8];
    let mut headers: Vec<(&str, String)> = vec![
        ("host", host.clone()),
        ("x-amz-date", amz_date.clone()),
        ("x-goog-cloud-target-resource", audience.to_owned()),
    ];
    if let Some(token) = &keys.session_token {
        headers.push(("x-amz-security-token", token.clone()));
    }
    headers.sort();
    let signed_headers = headers
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}:{}\n", value.trim()))
        .collect();
    let canonical_request = format!(
        "POST\n/\nAction=GetCallerIdentity&Version=2011-06-15\n{canonical_headers}\n{signed_headers}\n{}",
        sha256_hex(b"")
    );
    let scope = format!("{date}/{}/sts/aws4_request", keys.region);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let hmac = |key: &[u8], data: &str| {
        aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key),
            data.as_bytes(),
        )
        .as_ref()
        .to_vec()
    };
    let mut key = hmac(format!("AWS4{}", keys.secret_access_key).as_bytes(), date);
    for part in [keys.region.as_str(), "sts", "aws4_request"] {
        key = hmac(&key, part);
    }
    let signature: String = hmac(&key, &string_to_sign)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        keys.access_key_id
    );
    let mut entries = vec![serde_json::json!({"key": "Authorization", "value": authorization})];
    entries.extend(
        headers
            .iter()
            .map(|(name, value)| serde_json::json!({"key": name, "value": value})),
    );
    let request = serde_json::json!({"url": url, "method": "POST", "headers": entries});
    percent_encode(&request.to_string())
}

/// Every byte but `A-Za-z0-9-_.~` percent-encoded (a space as `%20`, a `+` as `%2B`).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `YYYYMMDDTHHMMSSZ` of `time`, UTC.
fn amz_date(time: SystemTime) -> String {
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian), by eras of 400 years.
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// A plain-HTTP server on 127.0.0.1 that answers every request with the same body (set with
/// [`TokenServer::serve`]), as a token agent or an instance metadata endpoint would: what an
/// `external_account` `url` source reads. Stops when dropped.
#[derive(Debug)]
pub struct TokenServer {
    url: String,
    body: Arc<std::sync::Mutex<String>>,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TokenServer {
    /// Listens on an ephemeral port of 127.0.0.1; answers 503 until a body is set.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let body = Arc::new(std::sync::Mutex::new(String::new()));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (served, seen) = (Arc::clone(&body), Arc::clone(&requests));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (served, seen) = (Arc::clone(&served), Arc::clone(&seen));
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        answer(stream, &served, &seen),
                    )
                    .await;
                });
            }
        });
        Self {
            url,
            body,
            requests,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Answers `body` (as `application/json`) from now on.
    pub fn serve(&self, body: &str) {
        *self.body.lock().expect("lock") = body.to_owned();
    }

    /// The heads (request line and headers) of the requests seen, oldest first.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request's head, records it, and answers with the body (503 while it is empty).
async fn answer(
    mut stream: tokio::net::TcpStream,
    body: &std::sync::Mutex<String>,
    requests: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buffer[..read]);
    }
    requests
        .lock()
        .expect("lock")
        .push(String::from_utf8_lossy(&head).into_owned());
    let body = body.lock().expect("lock").clone();
    let status = if body.is_empty() {
        "503 Service Unavailable"
    } else {
        "200 OK"
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
