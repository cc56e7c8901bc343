//! `token-broker dev`: everything a newcomer needs, on loopback, in one process: the Google
//! emulator with its default world, a dev PKI, a policy for two example workloads, and the
//! broker itself, configured through the same files a production deployment uses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use broker_backends::Env;

use gcp_emulator::{Emulator, Federation, RunningEmulator};
use serde_json::json;

use crate::pki::{CertificateAuthority, LeafSpec, PkiError};
use crate::server::{self, RunningBroker, StartError};
use crate::settings::{Settings, SettingsError};

/// The trust domain of the dev workloads, the only one the dev CA may vouch for.
pub const TRUST_DOMAIN: &str = "dev.token-broker.local";
/// The SPIFFE ID of the example workload allowed broad scopes.
pub const APP_SPIFFE_ID: &str = "spiffe://dev.token-broker.local/workload/app";
/// The SPIFFE ID of the example workload allowed read-only storage.
pub const READONLY_SPIFFE_ID: &str = "spiffe://dev.token-broker.local/workload/reader";
/// The default credential of dev mode: the emulator's `broker@` service account, by its key.
pub const CREDENTIAL: &str = "dev";
/// The broker's own identity from the emulator's metadata server (`broker@` too).
pub const METADATA_CREDENTIAL: &str = "dev-metadata";
/// The emulator's authorized user (`dev-user@example.com`), by its refresh token.
pub const USER_CREDENTIAL: &str = "dev-user";
/// `reader@`, impersonated with `dev`'s tokens.
pub const READER_CREDENTIAL: &str = "dev-reader";
/// Workload identity federation with a subject-token file dev mode keeps fresh (an OIDC token
/// of the emulator's `dev-pool`), impersonating `reader@`.
pub const FEDERATED_CREDENTIAL: &str = "dev-federated";
/// An AWS workload reaching Google with no Google key: the emulated EC2 instance's role,
/// exchanged through `dev-pool`'s AWS provider.
pub const AWS_CREDENTIAL: &str = "dev-aws";
/// The `sub` of the OIDC tokens in dev mode's subject-token file.
pub const FEDERATED_SUBJECT: &str = "dev-workload";
/// gcloud's OAuth client ID: gcloud on a metadata server asks for an ID token with this
/// audience (for its credential store) even to print an access token.
const GCLOUD_CLIENT_ID: &str = "32555940559.apps.googleusercontent.com";
/// The emulator's service accounts dev mode's policy names.
pub const BROKER_SA: &str = "broker@dev-project.iam.gserviceaccount.com";
/// The service account `broker@` may impersonate (it holds Token Creator on it).
pub const READER_SA: &str = "reader@dev-project.iam.gserviceaccount.com";
/// Another service account `broker@` may impersonate; it holds no role on `reader@`.
pub const WRITER_SA: &str = "writer@dev-project.iam.gserviceaccount.com";

/// Why dev mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The emulator did not start.
    #[error("emulator: {0}")]
    Emulator(#[from] gcp_emulator::EmulatorError),
    /// The emulator's world lacks what dev mode's federation needs, or cannot mint for it.
    #[error("emulator federation: {0}")]
    Federation(String),
    /// Certificates could not be made.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The generated configuration did not load (a bug).
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The broker did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The generated sidecar configuration did not load (a bug).
    #[error("metadata sidecar: {0}")]
    SidecarSettings(#[from] metadata_sidecar::SettingsError),
    /// The metadata sidecar did not start.
    #[error("metadata sidecar: {0}")]
    Sidecar(#[from] metadata_sidecar::StartError),
}

/// Where dev mode puts things and listens.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Directory for certificates, keys, configuration and the `env` file.
    pub dir: PathBuf,
    /// The broker's address.
    pub listen: SocketAddr,
}

/// A prepared dev environment: the emulator running, every file written.
#[derive(Debug)]
pub struct DevEnvironment {
    /// The running emulator.
    pub emulator: RunningEmulator,
    /// The broker configuration file.
    pub config: PathBuf,
    /// The directory holding everything.
    pub dir: PathBuf,
    /// The audience of `dev-pool`'s OIDC provider (for the printed `tokenctl exchange`).
    pub federated_audience: String,
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), DevError> {
    use std::io::Write as _;
    let error = |source| DevError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    options
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(error)
}

/// Starts the emulator and writes the PKI, policy and configuration (the `env` file follows
/// from [`write_env`] once the broker's address is known).
pub async fn prepare(options: &DevOptions) -> Result<DevEnvironment, DevError> {
    let dir = options.dir.clone();
    let _ = std::fs::remove_file(dir.join("env"));
    std::fs::create_dir_all(&dir).map_err(|source| DevError::Write {
        path: dir.clone(),
        source,
    })?;
    let dir = dir.canonicalize().map_err(|source| DevError::Write {
        path: dir.clone(),
        source,
    })?;
    let emulator = Emulator::builder()
        .data_dir(dir.join("emulator"))
        .start()
        .await?;

    let ca = CertificateAuthority::new("token-broker dev CA")?;
    write(&dir.join("ca.pem"), &ca.certificate_pem(), false)?;
    let server_cert = ca.issue(&LeafSpec::localhost_server())?;
    write(&dir.join("server.pem"), &server_cert.cert_pem, false)?;
    write(&dir.join("server-key.pem"), &server_cert.key_pem, true)?;
    for (name, spiffe_id) in [("client", APP_SPIFFE_ID), ("readonly", READONLY_SPIFFE_ID)] {
        let issued = ca.issue(&LeafSpec::spiffe_client(spiffe_id))?;
        write(&dir.join(format!("{name}.pem")), &issued.cert_pem, false)?;
        write(&dir.join(format!("{name}-key.pem")), &issued.key_pem, true)?;
    }

    let providers = DevProviders::of(&emulator.federation())?;
    let federation_dir = dir.join("federation");
    std::fs::create_dir_all(&federation_dir).map_err(|source| DevError::Write {
        path: federation_dir,
        source,
    })?;
    write_federation_files(&dir, emulator.url(), &providers)?;
    write_subject_token(&dir, &emulator)?;
    write(
        &dir.join("policy.toml"),
        &policy(&emulator.function_url(), &providers),
        false,
    )?;
    let config = dir.join("broker.toml");
    write(
        &config,
        &broker_config(options.listen, emulator.url()),
        false,
    )?;
    Ok(DevEnvironment {
        emulator,
        config,
        dir,
        federated_audience: providers.oidc.audience,
    })
}

/// Writes `DIR/env` (atomically): the exports `tokenctl` and Google clients need, for the
/// broker at `addr` and the metadata sidecar at `metadata` (Python's `GCE_METADATA_HOST` and
/// `GCE_METADATA_IP`, Node's `GCE_METADATA_HOST`, gcloud's `GCE_METADATA_ROOT`).
pub fn write_env(
    environment: &DevEnvironment,
    addr: SocketAddr,
    metadata: SocketAddr,
) -> Result<(), DevError> {
    let env = format!(
        "export TOKEN_BROKER_ADDR=https://localhost:{port}\nexport TOKEN_BROKER_CA={dir}/ca.pem\n\
         export TOKEN_BROKER_CERT={dir}/client.pem\nexport TOKEN_BROKER_KEY={dir}/client-key.pem\n\
         export GCP_EMULATOR_URL={url}\nexport GCP_FUNCTION_URL={function}\n\
         export GCE_METADATA_HOST={metadata}\nexport GCE_METADATA_IP={metadata}\n\
         export GCE_METADATA_ROOT={metadata}\n",
        port = addr.port(),
        dir = environment.dir.display(),
        url = environment.emulator.url(),
        function = environment.emulator.function_url(),
    );
    let temporary = environment.dir.join(".env.new");
    write(&temporary, &env, false)?;
    let path = environment.dir.join("env");
    std::fs::rename(&temporary, &path).map_err(|source| DevError::Write { path, source })
}

/// How long dev mode waits for the sidecar's first token before it prints its instructions.
const SIDECAR_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The dev metadata sidecar's configuration: the GCE metadata protocol on a free loopback
/// port, answered by the broker at `broker` as the `app` workload; `default` is broker@ (the
/// `dev` credential), and reader@ (`dev-reader`) can be named by its email.
fn sidecar_config_text(broker: SocketAddr) -> String {
    let port = broker.port();
    format!(
        r#"# The dev metadata sidecar: Google's client libraries, gcloud and curl get the broker's
# tokens from it (source env: GCE_METADATA_HOST, GCE_METADATA_IP, GCE_METADATA_ROOT).

[server]
listen = "127.0.0.1:0"

[broker]
address = "https://localhost:{port}"
ca = "ca.pem"
cert = "client.pem"
key = "client-key.pem"
reload_interval = "2s"

[project]
project_id = "dev-project"
numeric_project_id = "123456789012"
zone = "us-central1-a"

[[service_accounts]]
email = "{BROKER_SA}"
credential = "{CREDENTIAL}"
default = true

[[service_accounts]]
email = "{READER_SA}"
credential = "{READER_CREDENTIAL}"
"#
    )
}

/// How long the OIDC subject tokens in dev mode's subject-token file are valid.
const SUBJECT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// How old it may get before dev mode writes a new one (as a projected Kubernetes token
/// rotates).
const SUBJECT_TOKEN_REFRESH: Duration = Duration::from_secs(20 * 60);
/// How often dev mode checks its age.
const SUBJECT_TOKEN_CHECK: Duration = Duration::from_secs(60);

/// The environment of dev mode's credentials: the process's, without the variables that would
/// send them elsewhere than the emulator (the developer's real AWS keys and region, which
/// `dev-aws` would otherwise sign with instead of the emulated instance's role, and a
/// certificate configuration).
fn dev_env() -> Env {
    Env::from_fn(|name| {
        let hidden = name.starts_with("AWS_") || name == "GOOGLE_API_CERTIFICATE_CONFIG";
        if hidden {
            None
        } else {
            std::env::var(name).ok()
        }
    })
}
/// Where dev mode keeps `dev-federated`'s subject token, under `DIR`.
const SUBJECT_TOKEN_FILE: &str = "federation/dev-subject-token.jwt";

/// The emulator's identity providers dev mode federates with.
struct DevProviders {
    /// `dev-pool`'s OIDC provider.
    oidc: gcp_emulator::OidcProviderInfo,
    /// `dev-pool`'s AWS provider, with the emulated instance's credentials.
    aws: gcp_emulator::AwsProviderInfo,
    /// The workforce pool's OIDC provider.
    workforce: gcp_emulator::OidcProviderInfo,
}

impl DevProviders {
    fn of(federation: &Federation) -> Result<Self, DevError> {
        let missing = |what: &str| {
            DevError::Federation(format!("the emulator's default world has no {what}"))
        };
        Ok(Self {
            oidc: federation
                .workload_oidc()
                .cloned()
                .ok_or_else(|| missing("workload OIDC provider with an issuer key"))?,
            aws: federation
                .aws_provider()
                .filter(|aws| aws.imds_url.is_some())
                .cloned()
                .ok_or_else(|| missing("AWS provider served by its EC2 metadata emulation"))?,
            workforce: federation
                .workforce_oidc()
                .cloned()
                .ok_or_else(|| missing("workforce OIDC provider with an issuer key"))?,
        })
    }
}

/// Writes `DIR/federation.json` (what a person or a test needs to mint subject tokens of
/// their own; it holds the dev AWS secret, so 0600) and the two `external_account` files.
fn write_federation_files(
    dir: &Path,
    emulator_url: &str,
    providers: &DevProviders,
) -> Result<(), DevError> {
    let DevProviders {
        oidc,
        aws,
        workforce,
    } = providers;
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let secret =
        |s: &Option<gcp_emulator::world::Secret>| s.as_ref().map(|s| s.expose().to_owned());
    let federation = json!({
        "oidc": {
            "issuer": oidc.issuer,
            "key_id": oidc.key_id,
            "key_file": path(&oidc.key_file),
            "audience": oidc.audience,
            "token_audience": oidc.token_audience,
            "subject_token_type": oidc.subject_token_type(),
            "subject_token_file": dir.join(SUBJECT_TOKEN_FILE).display().to_string(),
        },
        "aws": {
            "region": aws.region,
            "access_key_id": aws.access_key_id,
            "secret_access_key": secret(&aws.secret_access_key),
            "session_token": secret(&aws.session_token),
            "audience": aws.audience,
            "subject_token_type": aws.subject_token_type(),
            "regional_cred_verification_url": aws.regional_cred_verification_url,
            "credential_source": aws.credential_source(),
        },
        "workforce": {
            "issuer": workforce.issuer,
            "key_id": workforce.key_id,
            "key_file": path(&workforce.key_file),
            "audience": workforce.audience,
            "token_audience": workforce.token_audience,
            "subject_token_type": workforce.subject_token_type(),
            "user_project": workforce.user_project,
        },
    });
    let pretty = |value: &serde_json::Value| format!("{value:#}\n");
    write(&dir.join("federation.json"), &pretty(&federation), true)?;

    let impersonation_url =
        format!("{emulator_url}/v1/projects/-/serviceAccounts/{READER_SA}:generateAccessToken");
    let federated = json!({
        "universe_domain": "googleapis.com",
        "type": "external_account",
        "audience": oidc.audience,
        "subject_token_type": oidc.subject_token_type(),
        "token_url": format!("{emulator_url}/v1/token"),
        "credential_source": {
            "file": dir.join(SUBJECT_TOKEN_FILE).display().to_string(),
            "format": {"type": "text"},
        },
        "service_account_impersonation_url": impersonation_url,
    });
    write(
        &dir.join(format!("federation/{FEDERATED_CREDENTIAL}.json")),
        &pretty(&federated),
        false,
    )?;
    let aws_file = json!({
        "universe_domain": "googleapis.com",
        "type": "external_account",
        "audience": aws.audience,
        "subject_token_type": aws.subject_token_type(),
        "token_url": format!("{emulator_url}/v1/token"),
        "credential_source": aws.credential_source(),
    });
    write(
        &dir.join(format!("federation/{AWS_CREDENTIAL}.json")),
        &pretty(&aws_file),
        false,
    )?;
    write(
        &dir.join("boundary.json"),
        &pretty(&example_boundary()),
        false,
    )
}

/// A Credential Access Boundary that lets a token only read one bucket's objects.
fn example_boundary() -> serde_json::Value {
    json!({"accessBoundary": {"accessBoundaryRules": [{
        "availableResource": format!("//storage.googleapis.com/projects/_/buckets/{DEV_BUCKET}"),
        "availablePermissions": ["inRole:roles/storage.objectViewer"],
    }]}})
}

/// The bucket of dev mode's example boundary.
const DEV_BUCKET: &str = "dev-bucket";

/// Writes a new OIDC subject token for `dev-federated` (atomically, as the kubelet rotates a
/// projected token).
fn write_subject_token(dir: &Path, emulator: &RunningEmulator) -> Result<(), DevError> {
    let token = zeroize::Zeroizing::new(
        emulator
            .mint_oidc_token(
                gcp_emulator::world::DEFAULT_OIDC_PROVIDER,
                FEDERATED_SUBJECT,
                SUBJECT_TOKEN_LIFETIME,
                serde_json::Value::Null,
            )
            .map_err(|e| DevError::Federation(e.to_string()))?,
    );
    let path = dir.join(SUBJECT_TOKEN_FILE);
    let temporary = path.with_extension("new");
    write(&temporary, &token, true)?;
    std::fs::rename(&temporary, &path).map_err(|source| DevError::Write { path, source })
}

fn policy(function_url: &str, providers: &DevProviders) -> String {
    let oidc = &providers.oidc.audience;
    let aws = &providers.aws.audience;
    let workforce = &providers.workforce.audience;
    format!(
        r#"# The dev policy: two example workloads and the emulator's accounts. `app` may use every
# RPC; the read-only workload may only read storage.

[[grants]]
name = "dev-app"
credential = "{CREDENTIAL}"
default = true
callers = [{{ spiffe_id = "{APP_SPIFFE_ID}" }}]
rpcs = ["GetAccessToken"]
scopes = ["https://www.googleapis.com/auth/cloud-platform", "openid", "email"]
scope_prefixes = ["https://www.googleapis.com/auth/devstorage.", "https://www.googleapis.com/auth/admin.directory."]
subject_domains = ["example.com"]

# Impersonation and ID tokens through dev (broker@): reader@ and writer@, directly or through
# any chain of the two (writer@ holds no role on reader@, so Google refuses that chain).
[[grants]]
name = "dev-app-impersonation"
credential = "{CREDENTIAL}"
callers = [{{ spiffe_id = "{APP_SPIFFE_ID}" }}]
rpcs = ["ImpersonateServiceAccount", "GenerateIdToken"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
scope_prefixes = ["https://www.googleapis.com/auth/devstorage."]
service_accounts = ["{READER_SA}", "{WRITER_SA}"]
delegates = [["{READER_SA}"], ["{WRITER_SA}"], ["{READER_SA}", "{WRITER_SA}"], ["{WRITER_SA}", "{READER_SA}"]]
max_lifetime = "12h"
# Any https:// audience, the emulator's ID-token-protected function, and gcloud's client ID
# (gcloud asks the metadata server for an ID token of that audience).
audiences = ["{function_url}", "{GCLOUD_CLIENT_ID}"]
audience_prefixes = ["https://"]

# Signing with Google-managed keys of broker@ and reader@.
[[grants]]
name = "dev-app-signing"
credential = "{CREDENTIAL}"
callers = [{{ spiffe_id = "{APP_SPIFFE_ID}" }}]
rpcs = ["SignJwt", "SignBlob"]
service_accounts = ["{BROKER_SA}", "{READER_SA}"]

# The broker's own identity from the metadata server: access and ID tokens.
[[grants]]
name = "dev-app-metadata"
credential = "{METADATA_CREDENTIAL}"
callers = [{{ spiffe_id = "{APP_SPIFFE_ID}" }}]
rpcs = ["GetAccessToken", "GenerateIdToken"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
audiences = ["{function_url}", "{GCLOUD_CLIENT_ID}"]
audience_prefixes = ["https://"]

# A user's refresh token (gcloud auth application-default login): only the scopes they
# consented to.
[[grants]]
name = "dev-app-user"
credential = "{USER_CREDENTIAL}"
callers = [{{ spiffe_id = "{APP_SPIFFE_ID}" }}]
scopes = ["https://www.googleapis.com/auth/cloud-platform", "https://www.googleapis.com/auth/sqlservice.login"]

# reader@ as a credential of its own (impersonated with dev's tokens): tokens up to 12 hours.
[[grants]]
name = "dev-app-reader"
credential = "{READER_CREDENTIAL}"
callers = [{{ spiffe_id = "{APP_SPIFFE_ID}" }}]
rpcs = ["GetAccessToken", "GenerateIdToken"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
scope_prefixes = ["https://www.googleapis.com/auth/devstorage."]
max_lifetime = "12h"
audiences = ["{function_url}", "{GCLOUD_CLIENT_ID}"]
audience_prefixes = ["https://"]

[[grants]]
name = "dev-readonly"
credential = "{CREDENTIAL}"
default = true
callers = [{{ spiffe_id = "{READONLY_SPIFFE_ID}" }}]
scopes = ["https://www.googleapis.com/auth/devstorage.read_only"]
# A small budget, so the limit can be seen: 10 requests a second, 20 at once.
rate_limit = {{ per_second = 10, burst = 20 }}

# Workload identity federation, as the broker's own credentials: an OIDC token file (then
# reader@ by impersonation), and the emulated EC2 instance's AWS role. The caller may also send
# its own subject tokens through them (ExchangeToken with `credential`).
[[grants]]
name = "dev-app-federated"
credential = "{FEDERATED_CREDENTIAL}"
callers = [{{ spiffe_id = "{APP_SPIFFE_ID}" }}]
rpcs = ["GetAccessToken", "GenerateIdToken", "ExchangeToken"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
scope_prefixes = ["https://www.googleapis.com/auth/devstorage."]
subject_token_types = ["urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token"]
# ID-token audiences, and the credential's provider when an exchange names it too.
audiences = ["{function_url}", "{oidc}"]
audience_prefixes = ["https://"]

[[grants]]
name = "dev-app-aws"
credential = "{AWS_CREDENTIAL}"
callers = [{{ spiffe_id = "{APP_SPIFFE_ID}" }}]
rpcs = ["GetAccessToken", "ExchangeToken"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
scope_prefixes = ["https://www.googleapis.com/auth/devstorage."]
subject_token_types = ["urn:ietf:params:aws:token-type:aws4_request"]
audiences = ["{aws}"]

# Plain exchanges: the caller's own subject tokens (OIDC, AWS, workforce) for the emulator's
# providers, passed through to STS as they are.
[[grants]]
name = "dev-app-exchange"
callers = [{{ spiffe_id = "{APP_SPIFFE_ID}" }}]
rpcs = ["ExchangeToken"]
audiences = ["{oidc}", "{aws}", "{workforce}"]
subject_token_types = ["urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token", "urn:ietf:params:aws:token-type:aws4_request"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
scope_prefixes = ["https://www.googleapis.com/auth/devstorage."]

# Downscoping a Google access token, only ever within reading {DEV_BUCKET}'s objects.
[[grants]]
name = "dev-app-downscope"
callers = [{{ spiffe_id = "{APP_SPIFFE_ID}" }}]
rpcs = ["ExchangeToken"]
subject_token_types = ["urn:ietf:params:oauth:token-type:access_token"]
[[grants.access_boundary.rules]]
available_resource = "//storage.googleapis.com/projects/_/buckets/{DEV_BUCKET}"
available_permissions = ["inRole:roles/storage.objectViewer"]
"#
    )
}

fn broker_config(listen: SocketAddr, emulator_url: &str) -> String {
    format!(
        r#"# The dev broker: loopback only, Google's endpoints on the embedded emulator.

[server]
listen = "{listen}"

[tls]
cert = "server.pem"
key = "server-key.pem"
reload_interval = "2s"

# The dev CA may vouch only for SPIFFE IDs of the dev trust domain.
[[tls.trust_bundles]]
name = "dev"
file = "ca.pem"
spiffe_trust_domains = ["{TRUST_DOMAIN}"]

[policy]
file = "policy.toml"
reload_interval = "2s"

[google]
token_url = "{emulator_url}/token"
sts_url = "{emulator_url}/v1/token"
iam_credentials_url = "{emulator_url}"
metadata_url = "{emulator_url}"

# broker@ by its key (JWT-bearer grant; domain-wide delegation; ID tokens).
[[credentials]]
name = "{CREDENTIAL}"
kind = "service_account"
key_file = "emulator/keys/broker.json"

# The broker's own identity on GCE, GKE or Cloud Run: here the emulator's metadata server.
[[credentials]]
name = "{METADATA_CREDENTIAL}"
kind = "metadata"

# A user's refresh token, as `gcloud auth application-default login` writes it.
[[credentials]]
name = "{USER_CREDENTIAL}"
kind = "authorized_user"
file = "emulator/users/dev-user.json"

# reader@, impersonated with dev's (broker@'s) tokens through IAM Credentials.
[[credentials]]
name = "{READER_CREDENTIAL}"
kind = "impersonated"
base = "{CREDENTIAL}"
target = "{READER_SA}"

# Workload identity federation (gcloud iam workload-identity-pools create-cred-config files):
# an OIDC token file dev mode rotates, then reader@ by impersonation; no Google key.
[[credentials]]
name = "{FEDERATED_CREDENTIAL}"
kind = "external_account"
file = "federation/{FEDERATED_CREDENTIAL}.json"

# An AWS workload: the emulated EC2 instance's role (IMDSv2), a signed GetCallerIdentity
# request exchanged at STS; no Google key at all.
[[credentials]]
name = "{AWS_CREDENTIAL}"
kind = "external_account"
file = "federation/{AWS_CREDENTIAL}.json"
"#
    )
}

/// Runs dev mode until Ctrl-C or SIGTERM.
pub async fn run(options: DevOptions) -> Result<(), DevError> {
    let environment = prepare(&options).await?;
    let settings = Settings::load(&environment.config, Some(config::Map::new()), &[])?;
    let broker: RunningBroker = server::start_with_env(settings, &dev_env()).await?;
    let sidecar_config = environment.dir.join("sidecar.toml");
    write(&sidecar_config, &sidecar_config_text(broker.addr()), false)?;
    let sidecar_settings =
        metadata_sidecar::Settings::load(&sidecar_config, Some(config::Map::new()), &[])?;
    let sidecar = metadata_sidecar::Sidecar::start(sidecar_settings).await?;
    if !sidecar.wait_ready(SIDECAR_READY_TIMEOUT).await {
        tracing::warn!("the metadata sidecar has no token for its default account yet");
    }
    write_env(&environment, broker.addr(), sidecar.addr())?;
    print_instructions(&environment, broker.addr(), sidecar.addr());
    // Keep dev-federated's subject token fresh until asked to stop. Its age is wall-clock
    // time, which goes on while a laptop sleeps (a monotonic interval would not).
    let shutdown = server::shutdown_signal();
    tokio::pin!(shutdown);
    let mut check = tokio::time::interval(SUBJECT_TOKEN_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut minted = SystemTime::now();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = check.tick() => {
                let age = SystemTime::now().duration_since(minted).unwrap_or(Duration::MAX);
                if age < SUBJECT_TOKEN_REFRESH {
                    continue;
                }
                match write_subject_token(&environment.dir, &environment.emulator) {
                    Ok(()) => minted = SystemTime::now(),
                    Err(error) => {
                        tracing::warn!(%error, "could not rotate dev-federated's subject token");
                    }
                }
            }
        }
    }
    sidecar.shutdown().await;
    broker.shutdown().await;
    environment.emulator.shutdown().await;
    Ok(())
}

#[allow(clippy::print_stdout)]
fn print_instructions(environment: &DevEnvironment, addr: SocketAddr, metadata: SocketAddr) {
    let dir = environment.dir.display();
    println!(
        "\ntoken-broker dev is running\n\
         \n  broker    https://localhost:{port}  (mTLS; dev CA {dir}/ca.pem)\
         \n  emulator  {emulator}  (Google's token endpoints, default world)\
         \n  metadata  http://{metadata}  (the GCE metadata protocol, answered by the broker)\
         \n  files     {dir}\n\
         \nIn another shell:\n\
         \n  source {dir}/env\
         \n  tokenctl print-access-token\
         \n  tokenctl print-access-token --scopes https://www.googleapis.com/auth/devstorage.read_only --format json\
         \n  tokenctl print-access-token --subject alice@example.com --scopes https://www.googleapis.com/auth/admin.directory.user.readonly\
         \n  # other kinds of credential: the metadata server, a user's refresh token, impersonation\
         \n  tokenctl print-access-token --credential dev-metadata --format json\
         \n  tokenctl print-access-token --credential dev-user --format json\
         \n  tokenctl print-access-token --credential dev-reader --format json\
         \n  # writer@ by impersonation, for 12 hours (its organization policy allows more than one)\
         \n  tokenctl impersonate --target {writer} --lifetime 12h --format json\
         \n  # an ID token calls the emulator's ID-token-protected function (as Cloud Run would)\
         \n  curl -s -H \"Authorization: Bearer $(tokenctl print-identity-token --audiences \"$GCP_FUNCTION_URL\")\" \"$GCP_FUNCTION_URL\"\
         \n  # signing with Google-managed keys: no key leaves Google\
         \n  echo '{{\"sub\":\"demo\",\"aud\":\"https://example.com\"}}' | tokenctl sign-jwt --service-account {reader}\
         \n  echo hello | tokenctl sign-blob --service-account {broker}\
         \n  # identity federation, no Google key: an OIDC token file (then reader@), an AWS instance role\
         \n  tokenctl print-access-token --credential dev-federated --format json\
         \n  tokenctl print-access-token --credential dev-aws --format json\
         \n  # ExchangeToken: your own OIDC token for a Google token (mint others with {dir}/federation.json)\
         \n  tokenctl exchange --subject-token-file {dir}/{subject_token} --subject-token-type jwt --audience {audience} --format json\
         \n  # downscoping: a token that may only read gs://{bucket}\
         \n  tokenctl print-access-token | tokenctl downscope --boundary {dir}/boundary.json --format json\
         \n  # unmodified Google clients get the broker's tokens from the metadata sidecar\
         \n  python3 -c 'import google.auth, google.auth.transport.requests as r; c, p = google.auth.default(); c.refresh(r.Request()); print(p, c.token[:20])'\
         \n  gcloud auth print-access-token; gcloud auth print-identity-token --audiences=https://example.com\
         \n  curl -s -H 'Metadata-Flavor: Google' \"http://$GCE_METADATA_HOST/computeMetadata/v1/instance/service-accounts/default/token\"\
         \n  # the read-only workload may only read storage; this is denied:\
         \n  TOKEN_BROKER_CERT={dir}/readonly.pem TOKEN_BROKER_KEY={dir}/readonly-key.pem tokenctl print-access-token\
         \n  # it may also make only 10 requests a second (20 at once): a burst of 100 is cut off\
         \n  cargo build -q -p broker-client && seq 100 | xargs -P 20 -I{{}} env TOKEN_BROKER_CERT={dir}/readonly.pem \\\
         \n      TOKEN_BROKER_KEY={dir}/readonly-key.pem target/debug/tokenctl --no-retry print-access-token --scopes https://www.googleapis.com/auth/devstorage.read_only 2>&1 >/dev/null | grep -c RESOURCE_EXHAUSTED\
         \n  # what a token is:\
         \n  curl -s \"$GCP_EMULATOR_URL/tokeninfo?access_token=$(tokenctl print-access-token)\"\n\
         \n(tokenctl is `cargo run -q -p broker-client --bin tokenctl --`.) Ctrl-C stops everything.",
        port = addr.port(),
        emulator = environment.emulator.url(),
        reader = READER_SA,
        writer = WRITER_SA,
        broker = BROKER_SA,
        subject_token = SUBJECT_TOKEN_FILE,
        audience = environment.federated_audience,
        bucket = DEV_BUCKET,
    );
}
