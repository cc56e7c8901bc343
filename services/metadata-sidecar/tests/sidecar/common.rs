//! The test setup: the emulator of Google and a real broker (from the e2e harness, over real
//! mTLS on 127.0.0.1), and the sidecar in front of them with a certificate of its own.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use e2e::{APP, BROKER_SA, Harness, Options, READER_SA, TempDir};
use gcp_emulator::RunningEmulator;
use metadata_sidecar::{
    BrokerSettings, ProjectSettings, RunningSidecar, ServiceAccountSettings, Settings, Sidecar,
};
use token_broker::pki::{CertificateAuthority, LeafSpec};
use token_broker::server::RunningBroker;

/// The project the sidecar reports.
pub(crate) const PROJECT: &str = "dev-project";
/// Its number.
pub(crate) const PROJECT_NUMBER: &str = "123456789012";
/// Its zone.
pub(crate) const ZONE: &str = "us-central1-a";
/// Another audience the broker's policy allows (by prefix): not the function's.
pub(crate) const API_AUDIENCE: &str = "https://api.example.com/v1";

/// `app` (the sidecar's identity) may get tokens of `sa` (broker@): cloud-platform and any
/// storage scope, ID tokens for the function and below `https://api.example.com/`; and of
/// `imp-reader` (reader@): cloud-platform and ID tokens for the function.
const POLICY: &str = r#"
[[grants]]
name = "sidecar"
credential = "sa"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["GetAccessToken", "GenerateIdToken"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
scope_prefixes = ["https://www.googleapis.com/auth/devstorage."]
audiences = ["${FUNCTION_URL}"]
audience_prefixes = ["https://api.example.com/"]

[[grants]]
name = "sidecar-reader"
credential = "imp-reader"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["GetAccessToken", "GenerateIdToken"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
audiences = ["${FUNCTION_URL}"]
"#;

const CREDENTIALS: &str = r#"
[[credentials]]
name = "imp-reader"
kind = "impersonated"
base = "sa"
target = "reader@dev-project.iam.gserviceaccount.com"
"#;

/// Runs a test body with a bound on its time.
pub(crate) async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(Duration::from_secs(90), body)
        .await
        .expect("the test took too long");
}

/// The emulator, the broker, the CA of their PKI, and the sidecar's files.
pub(crate) struct World {
    /// The emulator of Google.
    pub(crate) emulator: RunningEmulator,
    /// The broker, while it runs.
    pub(crate) broker: Option<RunningBroker>,
    /// Its address (kept across restarts).
    pub(crate) broker_addr: SocketAddr,
    /// The CA of the broker's server certificate and of the clients'.
    pub(crate) ca: CertificateAuthority,
    /// The harness directory: the broker's files and the sidecar's.
    pub(crate) dir: TempDir,
}

impl World {
    /// Starts the emulator and the broker, and writes the sidecar's TLS files: the CA that
    /// verifies the broker (`sidecar-ca.pem`) and a certificate for `app` (`sidecar.pem`,
    /// `sidecar-key.pem`).
    pub(crate) async fn start() -> Self {
        let Harness {
            emulator,
            broker,
            ca,
            dir,
        } = Harness::start(Options {
            policy: POLICY.to_owned(),
            extra_config: CREDENTIALS.to_owned(),
            ..Options::default()
        })
        .await;
        std::fs::write(dir.path().join("sidecar-ca.pem"), ca.certificate_pem()).expect("write");
        let world = Self {
            emulator,
            broker_addr: broker.addr(),
            broker: Some(broker),
            ca,
            dir,
        };
        world.issue_sidecar_certificate(&world.ca);
        world
    }

    /// Writes a new certificate and key for `app`, issued by `ca`, in place of the sidecar's
    /// (atomically, each file by rename, as Kubernetes volumes and cert-manager do).
    pub(crate) fn issue_sidecar_certificate(&self, ca: &CertificateAuthority) {
        let issued = ca.issue(&LeafSpec::spiffe_client(APP)).expect("issue");
        self.replace("sidecar.pem", &issued.cert_pem);
        self.replace("sidecar-key.pem", &issued.key_pem);
    }

    /// Replaces a file of the harness directory atomically.
    pub(crate) fn replace(&self, name: &str, contents: &str) {
        let temporary = self.dir.path().join(format!(".{name}.new"));
        std::fs::write(&temporary, contents).expect("write");
        std::fs::rename(&temporary, self.path(name)).expect("rename");
    }

    /// A file of the harness directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The URL of the emulator's ID-token-protected function.
    pub(crate) fn function_url(&self) -> String {
        self.emulator.function_url()
    }

    /// Settings for a sidecar in front of this broker: broker@ (`sa`) as the default account,
    /// reader@ (`imp-reader`) limited to its own scope and the function's audience; both
    /// listeners on ephemeral ports of 127.0.0.1; files checked every 100 ms.
    pub(crate) fn settings(&self) -> Settings {
        let mut broker = BrokerSettings::new(
            format!("https://127.0.0.1:{}", self.broker_addr.port()),
            broker_client::TlsFiles {
                ca: self.path("sidecar-ca.pem"),
                cert: self.path("sidecar.pem"),
                key: self.path("sidecar-key.pem"),
            },
        );
        broker.tls_server_name = Some("localhost".to_owned());
        broker.reload_interval = Duration::from_millis(100);
        let mut project = ProjectSettings::new(PROJECT, PROJECT_NUMBER);
        project.zone = Some(ZONE.to_owned());
        let mut settings = Settings::new(
            broker,
            project,
            vec![
                ServiceAccountSettings {
                    credential: Some("sa".to_owned()),
                    default: true,
                    ..ServiceAccountSettings::new(BROKER_SA)
                },
                ServiceAccountSettings {
                    credential: Some("imp-reader".to_owned()),
                    allowed_scopes: Some(Vec::new()),
                    allowed_audiences: Some(vec![self.function_url()]),
                    ..ServiceAccountSettings::new(READER_SA)
                },
            ],
        );
        settings.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        settings.server.health_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        settings.server.max_connections = 4096;
        settings
    }

    /// Starts a sidecar with `settings`.
    pub(crate) async fn sidecar(&self, settings: Settings) -> RunningSidecar {
        Sidecar::start(settings).await.expect("sidecar starts")
    }

    /// Starts a sidecar with [`World::settings`] and waits until it is ready.
    pub(crate) async fn ready_sidecar(&self) -> RunningSidecar {
        let sidecar = self.sidecar(self.settings()).await;
        assert!(
            sidecar.wait_ready(Duration::from_secs(10)).await,
            "ready once the default token is held"
        );
        sidecar
    }

    /// Stops the broker (connections to its port are refused from now on).
    pub(crate) async fn stop_broker(&mut self) {
        if let Some(broker) = self.broker.take() {
            broker.shutdown().await;
        }
    }

    /// Starts the broker again on the same address, from the same configuration.
    pub(crate) async fn restart_broker(&mut self) {
        let settings = token_broker::settings::Settings::load(
            &self.path("broker.toml"),
            Some(Default::default()),
            &[("server.listen", self.broker_addr.to_string())],
        )
        .expect("broker settings");
        self.broker = Some(
            token_broker::server::start(settings)
                .await
                .expect("broker restarts"),
        );
    }

    /// GetAccessToken and GenerateIdToken calls the broker has answered so far (its cache
    /// sees each call once: a hit or a miss).
    pub(crate) fn broker_calls(&self) -> u64 {
        let metrics = self
            .broker
            .as_ref()
            .expect("the broker runs")
            .service()
            .cache()
            .metrics();
        metrics.hits + metrics.misses
    }

    /// What the emulator says an access token is.
    pub(crate) async fn tokeninfo(&self, token: &str) -> serde_json::Value {
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

    /// The status the emulator's function answers to an ID token.
    pub(crate) async fn call_function(&self, id_token: &str) -> u16 {
        reqwest::Client::new()
            .get(self.function_url())
            .bearer_auth(id_token)
            .send()
            .await
            .expect("function")
            .status()
            .as_u16()
    }

    /// Stops the broker and the emulator.
    pub(crate) async fn stop(mut self) {
        self.stop_broker().await;
        self.emulator.shutdown().await;
    }
}

/// A client of the sidecar as Google's libraries are: plain HTTP/1.1 to loopback, no
/// redirects followed (so that 301s are seen).
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// An answer, read whole.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The status.
    pub(crate) status: u16,
    /// The headers.
    pub(crate) headers: reqwest::header::HeaderMap,
    /// The body.
    pub(crate) body: String,
}

impl Answer {
    /// A header's value, or "".
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The body as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// Asserts the status, the metadata server's headers and the content type.
    pub(crate) fn expect(&self, status: u16, content_type: &str) -> &Self {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("metadata-flavor"), "Google", "{self:?}");
        assert_eq!(self.header("server"), "Metadata Server for VM", "{self:?}");
        assert_eq!(self.header("content-type"), content_type, "{self:?}");
        self
    }
}

/// `GET http://addr{path}` with `Metadata-Flavor: Google`.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(
        http()
            .get(format!("http://{addr}{path}"))
            .header("Metadata-Flavor", "Google"),
    )
    .await
}

/// Sends a request and reads the answer.
pub(crate) async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("an answer");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.expect("body"),
    }
}

/// The path of an account's `leaf`.
pub(crate) fn account_path(account: &str, leaf: &str) -> String {
    format!("/computeMetadata/v1/instance/service-accounts/{account}/{leaf}")
}

/// Percent-encodes a query value.
pub(crate) fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Asserts that `body` is Google's HTML error page for `status` and contains `needle`.
pub(crate) fn assert_error_page(answer: &Answer, status: u16, needle: &str) {
    answer.expect(status, "text/html; charset=UTF-8");
    assert!(
        answer
            .body
            .starts_with("<!DOCTYPE html>\n<html lang=en>\n<title>Error "),
        "{answer:?}"
    );
    assert!(
        answer.body.contains(&format!("<p><b>{status}.</b>")),
        "{answer:?}"
    );
    assert!(
        answer.body.contains(needle),
        "{needle:?} missing: {answer:?}"
    );
}
