//! The system under test, all on 127.0.0.1 in this process: the Google emulator, a PKI, two
//! brokers started from configuration files (cache on, cache off), and a bare tonic health
//! service behind the broker's own listener (same TLS configuration, same
//! `token_broker::transport`, same options), so that the only difference from the broker is the
//! handler. The emulator's OIDC provider `dev-oidc` issues the subject token of the
//! ExchangeToken scenario, once per run. The metadata sidecar (a child process, see
//! `sidecar.rs`) gets a client certificate of its own, which the policy lets ask for the same
//! tokens as the load generator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gcp_emulator::{Emulator, RunningEmulator};
use token_broker::pki::{CertificateAuthority, LeafSpec};
use token_broker::server::{self, RunningBroker};
use token_broker::settings::Settings;
use token_broker::tls;
use token_broker::transport::{self, Serving, TransportOptions};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::Error;
use crate::replay::{Recorded, Replay};
use broker_proto::tokenbroker::v1::token_broker_server::TokenBrokerServer;

/// The SPIFFE ID of the load generator's client certificate.
pub(crate) const CALLER: &str = "spiffe://example.org/ns/load/sa/broker-load";
/// The SPIFFE ID of the metadata sidecar's client certificate.
const SIDECAR_CALLER: &str = "spiffe://example.org/ns/load/sa/metadata-sidecar";
/// The CA certificate (it issued every certificate of the run), in the work directory.
pub(crate) const CA_FILE: &str = "ca.pem";
/// The sidecar's client certificate, in the work directory.
pub(crate) const SIDECAR_CERT_FILE: &str = "sidecar.pem";
/// Its key.
pub(crate) const SIDECAR_KEY_FILE: &str = "sidecar-key.pem";
/// The scope every broker request asks for.
pub(crate) const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The service account of credential `sa` (the emulator's `broker@`).
pub(crate) const SERVICE_ACCOUNT: &str = "broker@dev-project.iam.gserviceaccount.com";
/// The key file the emulator writes for [`SERVICE_ACCOUNT`], relative to the work directory.
const KEY_FILE: &str = "emulator/keys/broker.json";

/// The emulator's OIDC provider whose subject tokens the ExchangeToken scenario exchanges.
const EXCHANGE_PROVIDER: &str = "dev-oidc";
/// The subject of that subject token.
const EXCHANGE_SUBJECT: &str = "broker-load";
/// The subject token's lifetime: longer than any run.
const EXCHANGE_SUBJECT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The type of that subject token (an OIDC JWT).
pub(crate) const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// The policy: the load generator (and the metadata sidecar) may get cloud-platform tokens of
/// `sa` by default, and (grant `exchange`, `{exchange_audience}` filled in) make plain exchanges
/// of JWTs at the emulator's `dev-oidc` provider.
const POLICY: &str = r#"
[[grants]]
name = "load"
credential = "sa"
default = true
callers = [
  { spiffe_id = "spiffe://example.org/ns/load/sa/broker-load" },
  { spiffe_id = "spiffe://example.org/ns/load/sa/metadata-sidecar" },
]
rpcs = ["GetAccessToken", "ImpersonateServiceAccount", "GenerateIdToken"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
service_accounts = ["reader@dev-project.iam.gserviceaccount.com"]
audiences = ["https://load.example.com"]
# The load generator is one caller doing tens of thousands of calls a second.
rate_limit = { per_second = 1000000, burst = 1000000 }

# A plain exchange: no credential; the broker sends the caller's subject token to STS.
[[grants]]
name = "exchange"
callers = [{ spiffe_id = "spiffe://example.org/ns/load/sa/broker-load" }]
rpcs = ["ExchangeToken"]
audiences = ["{exchange_audience}"]
subject_token_types = ["urn:ietf:params:oauth:token-type:jwt"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
rate_limit = { per_second = 1000000, burst = 1000000 }
"#;

/// The service account the impersonation scenario asks for (the emulator's `reader@`, on which
/// `sa` holds Token Creator).
pub(crate) const TARGET: &str = "reader@dev-project.iam.gserviceaccount.com";
/// The audience of the ID-token scenario.
pub(crate) const AUDIENCE: &str = "https://load.example.com";

/// A unique temporary directory, removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, Error> {
        let path = std::env::temp_dir().join(format!("broker-load-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The bare tonic service: tonic-health's `Check` behind the broker's listener.
#[derive(Debug)]
pub(crate) struct EchoServer {
    addr: SocketAddr,
    serving: Serving,
    /// What its replay service answers to GenerateIdToken.
    pub(crate) recorded_id_token: Recorded,
}

impl EchoServer {
    /// Serves tonic-health, and the replay service, with the broker's TLS configuration and
    /// listener options.
    async fn start(settings: &Settings) -> Result<Self, Error> {
        let config = tls::load(&settings.tls)?;
        // The broker's listener reads the configuration from a watch channel; this one never
        // changes (the receiver keeps the last value after the sender is dropped).
        let (_sender, receiver) = tokio::sync::watch::channel(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        // The "" service is registered as SERVING by the reporter.
        let (_reporter, health) = tonic_health::server::health_reporter();
        let replay = Replay::default();
        let recorded_id_token = Arc::clone(&replay.id_token);
        let serving = transport::serve(
            listener,
            receiver,
            TransportOptions::from(&settings.server),
            tonic::service::Routes::new(health).add_service(TokenBrokerServer::new(replay)),
        );
        Ok(Self {
            addr,
            serving,
            recorded_id_token,
        })
    }

    async fn shutdown(self) {
        self.serving.shutdown(Duration::from_secs(5)).await;
    }
}

/// The ExchangeToken scenario's input: a subject token of the emulator's `dev-oidc` provider,
/// minted once per run, and that provider's STS audience.
#[derive(Debug, Clone)]
pub(crate) struct ExchangeInput {
    /// The provider's STS `audience`, `//iam.googleapis.com/projects/.../providers/dev-oidc`.
    pub(crate) audience: String,
    /// The subject token, a JWT (never printed).
    pub(crate) subject_token: String,
}

impl ExchangeInput {
    fn mint(emulator: &RunningEmulator) -> Result<Self, Error> {
        let audience = emulator
            .federation()
            .oidc
            .into_iter()
            .find(|provider| provider.provider_id == EXCHANGE_PROVIDER)
            .ok_or_else(|| format!("the emulator has no OIDC provider {EXCHANGE_PROVIDER}"))?
            .audience;
        let subject_token = emulator.mint_oidc_token(
            EXCHANGE_PROVIDER,
            EXCHANGE_SUBJECT,
            EXCHANGE_SUBJECT_TTL,
            serde_json::Value::Null,
        )?;
        Ok(Self {
            audience,
            subject_token,
        })
    }
}

/// Everything the scenarios run against.
#[derive(Debug)]
pub(crate) struct World {
    /// The Google emulator.
    pub(crate) emulator: RunningEmulator,
    /// The broker with its cache on.
    pub(crate) hit: RunningBroker,
    /// The broker with its cache off: every request signs and calls the emulator.
    pub(crate) cold: RunningBroker,
    /// The bare tonic service.
    pub(crate) echo: EchoServer,
    /// What the ExchangeToken scenario exchanges.
    pub(crate) exchange: ExchangeInput,
    client_tls: ClientTlsConfig,
    dir: TempDir,
}

impl World {
    /// Starts the emulator, writes the PKI, policy and configurations, and starts the brokers
    /// and the bare service.
    pub(crate) async fn start() -> Result<Self, Error> {
        let dir = TempDir::new()?;
        let path = dir.0.as_path();
        let emulator = Emulator::builder()
            .data_dir(path.join("emulator"))
            .start()
            .await?;

        let ca = CertificateAuthority::new("broker-load CA")?;
        std::fs::write(path.join(CA_FILE), ca.certificate_pem())?;
        let server_cert = ca.issue(&LeafSpec::localhost_server())?;
        std::fs::write(path.join("server.pem"), &server_cert.cert_pem)?;
        std::fs::write(path.join("server-key.pem"), server_cert.key_pem.as_bytes())?;
        let exchange = ExchangeInput::mint(&emulator)?;
        std::fs::write(
            path.join("policy.toml"),
            POLICY.replace("{exchange_audience}", &exchange.audience),
        )?;
        let sidecar = ca.issue(&LeafSpec::spiffe_client(SIDECAR_CALLER))?;
        std::fs::write(path.join(SIDECAR_CERT_FILE), &sidecar.cert_pem)?;
        std::fs::write(path.join(SIDECAR_KEY_FILE), sidecar.key_pem.as_bytes())?;
        let client = ca.issue(&LeafSpec::spiffe_client(CALLER))?;
        let client_tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.certificate_pem()))
            .domain_name("localhost")
            .identity(Identity::from_pem(
                &client.cert_pem,
                client.key_pem.as_bytes(),
            ));

        let hit_settings = settings(path, "hit", emulator.url(), true)?;
        let cold_settings = settings(path, "cold", emulator.url(), false)?;
        let echo = EchoServer::start(&hit_settings).await?;
        let hit = server::start(hit_settings).await?;
        let cold = server::start(cold_settings).await?;
        Ok(Self {
            emulator,
            hit,
            cold,
            echo,
            exchange,
            client_tls,
            dir,
        })
    }

    /// The bare service's address.
    pub(crate) fn echo_addr(&self) -> SocketAddr {
        self.echo.addr
    }

    /// The emulator's STS token endpoint, `http://127.0.0.1:PORT/v1/token` (the brokers'
    /// `sts_url`).
    pub(crate) fn sts_url(&self) -> String {
        format!("{}/v1/token", self.emulator.url())
    }

    /// `name` in the work directory (removed at shutdown).
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    /// The service-account key file the backend signs with.
    pub(crate) fn key_file(&self) -> PathBuf {
        self.dir.0.join(KEY_FILE)
    }

    /// `count` new mTLS connections to `addr`, each its own HTTP/2 connection.
    pub(crate) async fn channels(
        &self,
        addr: SocketAddr,
        count: usize,
    ) -> Result<Vec<Channel>, Error> {
        let mut channels = Vec::with_capacity(count);
        for _ in 0..count {
            let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))?
                .tls_config(self.client_tls.clone())?
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await?;
            channels.push(channel);
        }
        Ok(channels)
    }

    /// Stops everything and removes the work directory.
    pub(crate) async fn shutdown(self) {
        self.echo.shutdown().await;
        self.hit.shutdown().await;
        self.cold.shutdown().await;
        self.emulator.shutdown().await;
        drop(self.dir);
    }
}

/// Writes `broker-NAME.toml` and loads it the way the broker binary does.
fn settings(dir: &Path, name: &str, emulator: &str, cache: bool) -> Result<Settings, Error> {
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[tls]
cert = "server.pem"
key = "server-key.pem"

[[tls.trust_bundles]]
file = "ca.pem"
spiffe_trust_domains = ["example.org"]

[policy]
file = "policy.toml"

[google]
token_url = "{emulator}/token"
sts_url = "{emulator}/v1/token"
iam_credentials_url = "{emulator}"
metadata_url = "{emulator}"

[http]
request_timeout = "5s"

[cache]
enabled = {cache}

[[credentials]]
name = "sa"
kind = "service_account"
key_file = "{KEY_FILE}"
"#
    );
    let path = dir.join(format!("broker-{name}.toml"));
    std::fs::write(&path, config)?;
    Ok(Settings::load(&path, Some(Default::default()), &[])?)
}
