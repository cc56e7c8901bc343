//! `kind = "application_default"`: the `token-broker` binary finds Google's Application Default
//! Credentials in its own environment, in Google's order. It runs as a child process with a
//! controlled environment: `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's well-known file under
//! `CLOUDSDK_CONFIG`, else the metadata server at `GCE_METADATA_HOST`, which is always the
//! in-process emulator on loopback (as is every other Google endpoint), so that nothing is
//! sent to 169.254.169.254 or off the machine. What was found is read from the broker's
//! "credential loaded" log line and checked through an RPC and the emulator's tokeninfo.
#![cfg(feature = "dev")]

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use broker_proto::tokenbroker::v1::GetAccessTokenRequest;
use broker_proto::tokenbroker::v1::token_broker_client::TokenBrokerClient;
use gcp_emulator::{Emulator, Endpoint, RunningEmulator};
use token_broker::pki::{CertificateAuthority, IssuedCertificate, LeafSpec};
use tokio::sync::mpsc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint as GrpcEndpoint, Identity};

const BINARY: &str = env!("CARGO_BIN_EXE_token-broker");
const APP: &str = "spiffe://example.org/app";
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const BROKER_SA: &str = "broker@dev-project.iam.gserviceaccount.com";
const DEV_USER: &str = "dev-user@example.com";
/// The longest any step may take: starting, logging, answering.
const PATIENCE: Duration = Duration::from_secs(30);

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "token-broker-adc-{name}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The emulator, a PKI and the broker's files.
struct World {
    emulator: RunningEmulator,
    ca: CertificateAuthority,
    client: IssuedCertificate,
    dir: TempDir,
}

impl World {
    async fn start() -> Self {
        let dir = TempDir::new("world");
        let emulator = Emulator::builder()
            .data_dir(dir.path().join("emulator"))
            .start()
            .await
            .expect("emulator");
        let ca = CertificateAuthority::new("adc test CA").expect("ca");
        let server = ca.issue(&LeafSpec::localhost_server()).expect("server");
        let client = ca.issue(&LeafSpec::spiffe_client(APP)).expect("client");
        let write = |name: &str, contents: &str| {
            std::fs::write(dir.path().join(name), contents).expect("write");
        };
        write("ca.pem", &ca.certificate_pem());
        write("server.pem", &server.cert_pem);
        write("server-key.pem", &server.key_pem);
        write(
            "policy.toml",
            &format!(
                "[[grants]]\nname = \"app\"\ncredential = \"adc\"\ndefault = true\n\
                 callers = [{{ spiffe_id = \"{APP}\" }}]\nscopes = [\"{CLOUD_PLATFORM}\"]\n"
            ),
        );
        // Every Google endpoint on the emulator, except the metadata server's, which is left
        // at Google's default so that GCE_METADATA_HOST decides where it is.
        let url = emulator.url();
        write(
            "broker.toml",
            &format!(
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
token_url = "{url}/token"
sts_url = "{url}/v1/token"
iam_credentials_url = "{url}"

[http]
request_timeout = "5s"

[log]
format = "json"
filter = "info"

[[credentials]]
name = "adc"
kind = "application_default"
"#
            ),
        );
        Self {
            emulator,
            ca,
            client,
            dir,
        }
    }

    /// Starts `token-broker serve` with only these variables besides the safe defaults: no
    /// variable of this process leaks in, the metadata server is the emulator, gcloud's
    /// directories are empty ones of this test.
    fn spawn(&self, vars: &[(&str, String)]) -> Broker {
        let empty = TempDir::new("home");
        let emulator = self.emulator.addr().to_string();
        let mut command = Command::new(BINARY);
        command
            .arg("serve")
            .arg("--config")
            .arg(self.dir.path().join("broker.toml"))
            .env_clear()
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("GCE_METADATA_HOST", &emulator)
            .env("GCE_METADATA_IP", &emulator)
            .env("HOME", empty.path())
            .env("CLOUDSDK_CONFIG", empty.path());
        for (name, value) in vars {
            command.env(name, value);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn token-broker");
        let stderr = child.stderr.take().expect("stderr");
        let (lines, receiver) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        Broker {
            child,
            receiver,
            seen: Vec::new(),
            _home: empty,
        }
    }

    async fn client(&self, addr: &str) -> TokenBrokerClient<tonic::transport::Channel> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.certificate_pem()))
            .identity(Identity::from_pem(
                &self.client.cert_pem,
                self.client.key_pem.as_bytes(),
            ))
            .domain_name("localhost");
        let channel = GrpcEndpoint::from_shared(format!("https://{addr}"))
            .expect("endpoint")
            .tls_config(tls)
            .expect("tls")
            .connect_timeout(PATIENCE)
            .timeout(PATIENCE)
            .connect()
            .await
            .expect("connect");
        TokenBrokerClient::new(channel)
    }

    async fn tokeninfo(&self, token: &str) -> serde_json::Value {
        reqwest::Client::new()
            .get(format!("{}/tokeninfo", self.emulator.url()))
            .query(&[("access_token", token)])
            .timeout(PATIENCE)
            .send()
            .await
            .expect("tokeninfo")
            .json()
            .await
            .expect("json")
    }
}

/// A running `token-broker`, killed on drop.
struct Broker {
    child: Child,
    receiver: mpsc::UnboundedReceiver<String>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
    _home: TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    /// The fields of the first log line (JSON) whose message is `message`, within
    /// [`PATIENCE`]; `None` if the broker ended first.
    async fn wait_for(&mut self, message: &str) -> Option<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let line = tokio::time::timeout_at(deadline, self.receiver.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("no {message:?} within {PATIENCE:?}: {:#?}", self.seen)
                })?;
            self.seen.push(line.clone());
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if json["fields"]["message"] == message {
                return Some(json["fields"].clone());
            }
        }
    }

    /// What it found ("credential loaded") and where it serves ("token broker serving").
    async fn started(&mut self) -> (serde_json::Value, String) {
        let loaded = self
            .wait_for("credential loaded")
            .await
            .unwrap_or_else(|| panic!("exited before loading: {:#?}", self.seen));
        let serving = self
            .wait_for("token broker serving")
            .await
            .unwrap_or_else(|| panic!("exited before serving: {:#?}", self.seen));
        let addr = serving["addr"].as_str().expect("addr").to_owned();
        (loaded, addr)
    }
}

async fn token(world: &World, addr: &str) -> (String, String) {
    let mut client = world.client(addr).await;
    let response = client
        .get_access_token(GetAccessTokenRequest::default())
        .await
        .expect("token")
        .into_inner();
    assert_eq!(response.credential, "adc");
    (response.access_token, response.principal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_default_credentials_come_from_the_environment_in_googles_order() {
    let world = World::start().await;

    // 1. GOOGLE_APPLICATION_CREDENTIALS: broker@'s key file.
    let key_file = world
        .emulator
        .key_file_path(BROKER_SA)
        .expect("key file path");
    let mut broker = world.spawn(&[(
        "GOOGLE_APPLICATION_CREDENTIALS",
        key_file.display().to_string(),
    )]);
    let (loaded, addr) = broker.started().await;
    assert_eq!(loaded["credential"], "adc");
    assert_eq!(loaded["kind"], "service_account", "{loaded}");
    assert_eq!(loaded["principal"], BROKER_SA);
    let found = loaded["found"].as_str().expect("found");
    assert!(found.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{found}");
    assert!(found.contains(&key_file.display().to_string()), "{found}");
    let (access_token, principal) = token(&world, &addr).await;
    assert_eq!(principal, BROKER_SA);
    let info = world.tokeninfo(&access_token).await;
    assert_eq!(info["grant"], "jwt-bearer");
    assert_eq!(info["principal"], format!("serviceAccount:{BROKER_SA}"));
    drop(broker);

    // 2. gcloud's well-known file in CLOUDSDK_CONFIG: the authorized user.
    let gcloud = TempDir::new("gcloud");
    let user_file = world
        .emulator
        .authorized_user_file_path(DEV_USER)
        .expect("user file");
    std::fs::copy(
        &user_file,
        gcloud.path().join("application_default_credentials.json"),
    )
    .expect("copy");
    let mut broker = world.spawn(&[("CLOUDSDK_CONFIG", gcloud.path().display().to_string())]);
    let (loaded, addr) = broker.started().await;
    assert_eq!(loaded["kind"], "authorized_user", "{loaded}");
    assert_eq!(loaded["principal"], DEV_USER);
    let found = loaded["found"].as_str().expect("found");
    assert!(found.contains("well-known file"), "{found}");
    let (access_token, principal) = token(&world, &addr).await;
    assert_eq!(principal, DEV_USER);
    assert_eq!(
        world.tokeninfo(&access_token).await["grant"],
        "refresh-token"
    );
    drop(broker);

    // 3. Neither: the metadata server at GCE_METADATA_HOST (the emulator).
    let before = world.emulator.count(Endpoint::Metadata);
    let mut broker = world.spawn(&[]);
    let (loaded, addr) = broker.started().await;
    assert_eq!(loaded["kind"], "metadata", "{loaded}");
    assert_eq!(loaded["principal"], BROKER_SA);
    let found = loaded["found"].as_str().expect("found");
    assert!(
        found.contains(&format!(
            "the metadata server at http://{}",
            world.emulator.addr()
        )),
        "{found}"
    );
    assert!(world.emulator.count(Endpoint::Metadata) > before);
    let (access_token, principal) = token(&world, &addr).await;
    assert_eq!(principal, BROKER_SA);
    assert_eq!(world.tokeninfo(&access_token).await["grant"], "metadata");
    drop(broker);

    // A GOOGLE_APPLICATION_CREDENTIALS that names no file ends the search, and the broker.
    let missing = world.dir.path().join("missing.json");
    let mut broker = world.spawn(&[(
        "GOOGLE_APPLICATION_CREDENTIALS",
        missing.display().to_string(),
    )]);
    let error = broker
        .wait_for("cannot start")
        .await
        .unwrap_or_else(|| panic!("no error logged: {:#?}", broker.seen));
    let error = error["error"].as_str().expect("error").to_owned();
    assert!(error.contains("credentials[0] (adc)"), "{error}");
    assert!(error.contains("missing.json"), "{error}");
    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = broker.child.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    world.emulator.shutdown().await;
}
