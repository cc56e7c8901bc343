//! A strict local emulator of Google's token endpoints: the OAuth2 token endpoint, ID-token
//! keys, STS, IAM Credentials, the GCE metadata server and `tokeninfo`, with fault injection.
//!
//! It is the oracle the broker is tested against, so it follows Google's wire formats and is
//! strict where Google is strict (signatures, audiences, lifetimes, scopes, permissions), and it
//! shares no code with the broker. See the crate README for the endpoints, the admin API and the
//! world file.
//!
//! ```no_run
//! # async fn demo() -> Result<(), gcp_emulator::EmulatorError> {
//! let emulator = gcp_emulator::Emulator::builder().start().await?;
//! println!("token endpoint: {}/token", emulator.url());
//! println!("ID-token-protected function: {}", emulator.function_url());
//! emulator.shutdown().await;
//! # Ok(()) }
//! ```

pub mod cel;
pub mod errors;
pub mod faults;
pub mod federation;
pub mod keys;
pub mod requests;
pub mod state;
pub mod world;

mod admin;
mod function;
mod iam;
mod imds;
mod metadata;
mod mtls;
mod oauth;
mod sigv4;
mod sts;
mod tokeninfo;
mod x509;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get, post};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use faults::{Endpoint, Fault, FaultError};
pub use federation::{
    AwsProviderInfo, Federation, FederationError, OidcProviderInfo, X509ProviderInfo,
};
pub use keys::SigningKey;
pub use requests::{ClientAuth, RecordedRequest};
pub use state::{Grant, State, TokenRecord};
pub use world::World;

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The world is invalid.
    #[error(transparent)]
    World(#[from] world::WorldError),
    /// A key could not be generated or loaded.
    #[error("service account {account}: {source}")]
    Key {
        /// The account.
        account: String,
        /// What failed.
        source: keys::KeyError,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificates of the X.509 providers or of the mTLS listener could not be made.
    #[error("{0}")]
    Certificates(String),
    /// The mTLS listener could not be configured.
    #[error("mTLS listener: {0}")]
    Tls(String),
    /// The data directory could not be written.
    #[error("cannot write {path}: {source}")]
    DataDir {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Starts emulators.
#[derive(Debug)]
pub struct Emulator {
    world: World,
    listen: SocketAddr,
    sts_mtls_listen: SocketAddr,
    data_dir: Option<PathBuf>,
}

impl Emulator {
    /// An emulator of the default world on `127.0.0.1` with an ephemeral port.
    pub fn builder() -> Self {
        Self {
            world: World::default_world(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            sts_mtls_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: None,
        }
    }

    /// Serves this world instead of the default one.
    pub fn world(mut self, world: World) -> Self {
        self.world = world;
        self
    }

    /// Listens on this address.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// The mutual-TLS listener (STS for X.509 federation, IAM Credentials) listens on this
    /// address (default `127.0.0.1:0`).
    pub fn sts_mtls_listen(mut self, addr: SocketAddr) -> Self {
        self.sts_mtls_listen = addr;
        self
    }

    /// Writes key files, authorized users' credential files, the federation material
    /// (`federation/`) and `emulator.env` to this directory (and reuses keys found there).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Generates keys, binds, writes the data directory and starts serving.
    pub async fn start(self) -> Result<RunningEmulator, EmulatorError> {
        self.world.validate()?;
        let bind = |addr: SocketAddr| async move {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| EmulatorError::Bind { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| EmulatorError::Bind { addr, source })?;
            Ok::<_, EmulatorError>((listener, local))
        };
        let (listener, addr) = bind(self.listen).await?;
        let (mtls_listener, mtls_addr) = bind(self.sts_mtls_listen).await?;
        let url = format!("http://{addr}");
        let sts_mtls_url = format!("https://{mtls_addr}");

        let world = self.world.clone();
        let data_dir = self.data_dir.clone();
        let (keys, pkis, mtls_pki) = tokio::task::spawn_blocking(move || {
            let keys = load_or_generate_keys(&world, data_dir.as_deref())?;
            let (pkis, mtls) = federation::generate_pkis(&world, mtls_addr.ip())
                .map_err(|e| EmulatorError::Certificates(e.to_string()))?;
            Ok::<_, EmulatorError>((keys, pkis, mtls))
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        let tls_config =
            mtls::server_config(&mtls_pki).map_err(|e| EmulatorError::Tls(e.to_string()))?;
        let material = federation::Material {
            issuer_keys: keys.issuers,
            pkis,
            mtls: Some(mtls_pki),
        };
        let state = Arc::new(
            State::new(self.world, url.clone(), keys.accounts, keys.id_token).with_federation(
                material,
                sts_mtls_url.clone(),
                self.data_dir.clone(),
            ),
        );
        if let Some(dir) = &self.data_dir {
            write_data_dir(&state, dir)?;
        }
        let mtls_listener =
            mtls::MtlsListener::new(mtls_listener, tls_config).map_err(|source| {
                EmulatorError::Bind {
                    addr: mtls_addr,
                    source,
                }
            })?;

        let (shutdown, shutdown_signal) = watch::channel(());
        let app = router(Arc::clone(&state));
        let mtls_app =
            mtls_router(Arc::clone(&state)).into_make_service_with_connect_info::<mtls::Peer>();
        let task = tokio::spawn(async move {
            let signal = |mut receiver: watch::Receiver<()>| async move {
                let _ = receiver.changed().await;
            };
            let serve =
                axum::serve(listener, app).with_graceful_shutdown(signal(shutdown_signal.clone()));
            let serve_mtls = axum::serve(mtls_listener, mtls_app)
                .with_graceful_shutdown(signal(shutdown_signal));
            let (plain, tls) = tokio::join!(serve.into_future(), serve_mtls.into_future());
            if let Err(error) = plain {
                tracing::error!(%error, "emulator server failed");
            }
            if let Err(error) = tls {
                tracing::error!(%error, "emulator mTLS server failed");
            }
        });
        tracing::info!(%url, %sts_mtls_url, "gcp-emulator listening");
        Ok(RunningEmulator {
            addr,
            url,
            sts_mtls_addr: mtls_addr,
            data_dir: self.data_dir,
            state,
            shutdown,
            task,
        })
    }
}

/// A running emulator; dropping it leaves the server running until the runtime ends, so call
/// [`RunningEmulator::shutdown`].
#[derive(Debug)]
pub struct RunningEmulator {
    addr: SocketAddr,
    url: String,
    sts_mtls_addr: SocketAddr,
    data_dir: Option<PathBuf>,
    state: Arc<State>,
    shutdown: watch::Sender<()>,
    task: JoinHandle<()>,
}

impl RunningEmulator {
    /// `http://HOST:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The emulator's state (world, tokens, keys).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Adds a fault rule.
    pub fn inject_fault(&self, fault: Fault) -> Result<(), FaultError> {
        self.state.faults.inject(fault)
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.state.faults.clear();
    }

    /// Requests seen per endpoint.
    pub fn counters(&self) -> BTreeMap<Endpoint, u64> {
        self.state.faults.counters()
    }

    /// Requests seen by one endpoint.
    pub fn count(&self, endpoint: Endpoint) -> u64 {
        self.state.faults.count(endpoint)
    }

    /// Every token minted from now on lives `lifetime` (`None`: Google's lifetimes).
    pub fn set_token_lifetime(&self, lifetime: Option<Duration>) {
        self.state
            .set_lifetime_override(lifetime.map(|d| d.as_secs().max(1)));
    }

    /// Rotates the ID-token signing key; returns the new key id.
    pub fn rotate_signing_key(&self) -> Result<String, keys::KeyError> {
        let key = SigningKey::generate("gcp-emulator id-token signer")?;
        let kid = key.kid().to_owned();
        self.state.rotate_id_token_key(key);
        Ok(kid)
    }

    /// The Google-format key file of a service account that has a key.
    pub fn key_file(&self, email: &str) -> Option<serde_json::Value> {
        key_file_json(&self.state, email)
    }

    /// Where the key file of a service account that has a key was written,
    /// `DIR/keys/<account-id>.json` (`None` without a data directory).
    pub fn key_file_path(&self, email: &str) -> Option<PathBuf> {
        let account = self.state.world.service_account(email).filter(|a| a.key)?;
        Some(key_path(self.data_dir.as_deref()?, account.account_id()))
    }

    /// The credential file of an authorized user (email case-insensitive), as
    /// `gcloud auth application-default login` writes it.
    pub fn authorized_user_file(&self, email: &str) -> Option<serde_json::Value> {
        self.state
            .world
            .authorized_user(email)
            .map(authorized_user_json)
    }

    /// Where an authorized user's credential file was written, `DIR/users/<name>.json` with the
    /// email's local part as the name (`None` without a data directory).
    pub fn authorized_user_file_path(&self, email: &str) -> Option<PathBuf> {
        let user = self.state.world.authorized_user(email)?;
        Some(user_path(self.data_dir.as_deref()?, user))
    }

    /// The URL of the ID-token-protected function, `<url>/_emulator/function/hello`: the
    /// audience an ID token must name to call it.
    pub fn function_url(&self) -> String {
        self.state.function_url()
    }

    /// The mutual-TLS listener, `https://127.0.0.1:PORT`: STS (`POST /v1/token`, for X.509
    /// subject tokens among others, as `sts.mtls.googleapis.com`) and IAM Credentials. Its
    /// certificate is issued by [`RunningEmulator::sts_mtls_ca_pem`] for `127.0.0.1` and
    /// `localhost`; it requires a client certificate.
    pub fn sts_mtls_url(&self) -> &str {
        self.state.sts_mtls_url()
    }

    /// The mutual-TLS listener's address.
    pub fn sts_mtls_addr(&self) -> SocketAddr {
        self.sts_mtls_addr
    }

    /// The CA certificate (PEM) that issued the mTLS listener's server certificate: what its
    /// clients trust.
    pub fn sts_mtls_ca_pem(&self) -> &str {
        self.state
            .federation
            .mtls
            .as_ref()
            .map_or("", |m| m.ca.pem.as_str())
    }

    /// Every identity provider of the world and what a client needs to federate with it
    /// (audiences, issuers and their generated keys, AWS credentials and region, X.509
    /// certificates, file paths in the data directory).
    pub fn federation(&self) -> Federation {
        Federation::describe(&self.state, self.data_dir.as_deref())
    }

    /// A subject token from the issuer of an OIDC provider whose key the emulator generated
    /// (`generate_issuer_key`; the default world's `dev-oidc` and `dev-workforce-oidc`),
    /// named by its id or its STS audience: a JWT with `iss`, `sub` = `subject` (and the
    /// provider's subject claim, when that is another), `aud` = the audience the provider
    /// accepts, `iat` = now and `exp` = now + `ttl`, then `extra_claims` (an object, or
    /// null) set over them.
    pub fn mint_oidc_token(
        &self,
        provider: &str,
        subject: &str,
        ttl: Duration,
        extra_claims: serde_json::Value,
    ) -> Result<String, FederationError> {
        federation::mint_oidc_token(&self.state, provider, subject, ttl, extra_claims)
    }

    /// The last requests (at most [`requests::MAX_REQUESTS_PER_ENDPOINT`]) of an endpoint,
    /// oldest first, normalized (see [`requests`]).
    pub fn requests(&self, endpoint: Endpoint) -> Vec<RecordedRequest> {
        self.state.requests.requests(endpoint)
    }

    /// Forgets the recorded requests of an endpoint, or (`None`) of every endpoint.
    pub fn clear_requests(&self, endpoint: Option<Endpoint>) {
        self.state.requests.clear(endpoint);
    }

    /// Stops accepting, finishes in-flight requests and waits for the servers to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }
}

/// The emulator's routes, with fault injection in front of every Google endpoint.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/token", post(oauth::token))
        .route("/oauth2/v4/token", post(oauth::token))
        .route("/o/oauth2/token", post(oauth::token))
        .route("/oauth2/v1/certs", get(oauth::certs_v1))
        .route("/oauth2/v3/certs", get(oauth::certs_v3))
        .route(
            "/.well-known/openid-configuration",
            get(oauth::openid_configuration),
        )
        .route("/robot/v1/metadata/x509/{email}", get(oauth::robot_x509))
        .route(
            "/tokeninfo",
            get(tokeninfo::tokeninfo).post(tokeninfo::tokeninfo),
        )
        .route(
            "/oauth2/v3/tokeninfo",
            get(tokeninfo::tokeninfo).post(tokeninfo::tokeninfo),
        )
        .route("/v1/token", post(sts::token))
        .route(
            "/v1/projects/{project}/serviceAccounts/{name}",
            post(iam::dispatch),
        )
        .route("/", get(metadata::ping))
        .route("/computeMetadata/{*path}", get(metadata::serve))
        .route("/latest/{*path}", any(imds::serve))
        .route(
            "/_emulator/faults",
            post(admin::add_fault).delete(admin::clear_faults),
        )
        .route(
            "/_emulator/counters",
            get(admin::counters).delete(admin::reset_counters),
        )
        .route(
            "/_emulator/token-lifetime",
            axum::routing::put(admin::set_token_lifetime).delete(admin::clear_token_lifetime),
        )
        .route(
            "/_emulator/rotate-signing-key",
            post(admin::rotate_signing_key),
        )
        .route(
            "/_emulator/requests",
            get(admin::requests).delete(admin::clear_requests),
        )
        .route("/_emulator/federation", get(admin::federation))
        .route(function::PATH, get(function::hello).post(function::hello))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            faults::middleware,
        ))
        .with_state(state)
}

/// The mutual-TLS listener's routes: STS and IAM Credentials, with fault injection (its
/// `/v1/token` is the endpoint `sts.mtls.token`).
pub(crate) fn mtls_router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/token", post(sts::token_mtls))
        .route(
            "/v1/projects/{project}/serviceAccounts/{name}",
            post(iam::dispatch),
        )
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            faults::middleware,
        ))
        .with_state(state)
}

/// The RSA keys the emulator holds.
struct Keys {
    /// Service-account keys by email.
    accounts: HashMap<String, Arc<SigningKey>>,
    /// The ID-token signing key.
    id_token: SigningKey,
    /// Generated OIDC issuer keys by provider id.
    issuers: HashMap<String, Arc<SigningKey>>,
}

/// One key per service account (user-managed ones are reused from `DIR/keys` when present;
/// accounts without one still get a Google-managed key for signJwt/signBlob), the issuer key
/// of every OIDC provider with `generate_issuer_key` (reused from `DIR/federation`), and the
/// ID-token signing key. Keys are generated on all cores.
fn load_or_generate_keys(world: &World, data_dir: Option<&Path>) -> Result<Keys, EmulatorError> {
    type Generated = Result<(bool, String, SigningKey), EmulatorError>;
    let results: Vec<Generated> = std::thread::scope(|scope| {
        let mut handles: Vec<std::thread::ScopedJoinHandle<'_, Generated>> = Vec::new();
        for account in &world.service_accounts {
            handles.push(scope.spawn(move || {
                let existing = data_dir
                    .filter(|_| account.key)
                    .and_then(|dir| load_key_file(dir, &account.email));
                let key = match existing {
                    Some(key) => Ok(key),
                    None => SigningKey::generate(&account.email),
                };
                key.map(|k| (false, account.email.clone(), k))
                    .map_err(|source| EmulatorError::Key {
                        account: account.email.clone(),
                        source,
                    })
            }));
        }
        for (_, _, provider) in
            federation::providers(world).filter(|(_, _, p)| p.generate_issuer_key)
        {
            handles.push(scope.spawn(move || {
                federation::load_or_generate_issuer_key(provider, data_dir)
                    .map(|key| (true, provider.id.clone(), key))
                    .map_err(|source| EmulatorError::Key {
                        account: format!("issuer of provider {}", provider.id),
                        source,
                    })
            }));
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut accounts = HashMap::new();
    let mut issuers = HashMap::new();
    for result in results {
        let (issuer, name, key) = result?;
        if issuer {
            issuers.insert(name, Arc::new(key));
        } else {
            accounts.insert(name, Arc::new(key));
        }
    }
    let id_token = SigningKey::generate("gcp-emulator id-token signer").map_err(|source| {
        EmulatorError::Key {
            account: "id-token signer".to_owned(),
            source,
        }
    })?;
    Ok(Keys {
        accounts,
        id_token,
        issuers,
    })
}

fn key_path(dir: &Path, account_id: &str) -> PathBuf {
    dir.join("keys").join(format!("{account_id}.json"))
}

fn load_key_file(dir: &Path, email: &str) -> Option<SigningKey> {
    let account_id = email.split('@').next()?;
    let text = std::fs::read_to_string(key_path(dir, account_id)).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    if json.get("client_email")?.as_str()? != email {
        return None;
    }
    SigningKey::from_pkcs8_pem(
        json.get("private_key_id")?.as_str()?,
        json.get("private_key")?.as_str()?,
        email,
    )
    .ok()
}

fn user_path(dir: &Path, user: &world::AuthorizedUser) -> PathBuf {
    dir.join("users").join(format!("{}.json", user.file_name()))
}

/// An `authorized_user` credential file exactly as `gcloud auth application-default login`
/// writes it (keys sorted, no `token_uri`: clients use Google's token URL unless told).
fn authorized_user_json(user: &world::AuthorizedUser) -> serde_json::Value {
    let mut file = serde_json::json!({
        "type": "authorized_user",
        "account": user.email,
        "client_id": user.client_id,
        "client_secret": user.client_secret,
        "refresh_token": user.refresh_token,
        "universe_domain": "googleapis.com",
    });
    if let Some(project) = &user.quota_project_id {
        file["quota_project_id"] = project.clone().into();
    }
    file
}

fn key_file_json(state: &State, email: &str) -> Option<serde_json::Value> {
    let account = state.world.service_account(email).filter(|a| a.key)?;
    let key = state.account_keys.get(&account.email)?;
    let encoded_email =
        percent_encoding::utf8_percent_encode(&account.email, percent_encoding::NON_ALPHANUMERIC);
    Some(serde_json::json!({
        "type": "service_account",
        "project_id": account.project_id(),
        "private_key_id": key.kid(),
        "private_key": key.private_key_pem(),
        "client_email": account.email,
        "client_id": account.unique_id(),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": format!("{}/token", state.base_url),
        "auth_provider_x509_cert_url": format!("{}/oauth2/v1/certs", state.base_url),
        "client_x509_cert_url": format!("{}/robot/v1/metadata/x509/{encoded_email}", state.base_url),
        "universe_domain": "googleapis.com",
    }))
}

/// Writes `DIR/keys/<account-id>.json` for every account with a key,
/// `DIR/users/<name>.json` for every authorized user, `DIR/federation/` (see
/// [`federation`]), then `DIR/emulator.env`.
fn write_data_dir(state: &State, dir: &Path) -> Result<(), EmulatorError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EmulatorError::DataDir { path, source }
    };
    let keys_dir = dir.join("keys");
    std::fs::create_dir_all(&keys_dir).map_err(io(&keys_dir))?;
    if !state.world.authorized_users.is_empty() {
        let users_dir = dir.join("users");
        std::fs::create_dir_all(&users_dir).map_err(io(&users_dir))?;
    }
    let env_path = dir.join("emulator.env");
    match std::fs::remove_file(&env_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&env_path)(e)),
        _ => {}
    }
    for account in state.world.service_accounts.iter().filter(|a| a.key) {
        let Some(json) = key_file_json(state, &account.email) else {
            continue;
        };
        let path = key_path(dir, account.account_id());
        write_private_file(
            &path,
            &serde_json::to_string_pretty(&json).unwrap_or_default(),
        )
        .map_err(io(&path))?;
    }
    for user in &state.world.authorized_users {
        let path = user_path(dir, user);
        let json = authorized_user_json(user);
        write_private_file(
            &path,
            &serde_json::to_string_pretty(&json).unwrap_or_default(),
        )
        .map_err(io(&path))?;
    }
    federation::write_files(state, dir, write_private_file)
        .map_err(|(path, source)| EmulatorError::DataDir { path, source })?;
    let env = format!(
        "GCP_EMULATOR_URL={}\nGCP_EMULATOR_STS_MTLS_URL={}\n",
        state.base_url,
        state.sts_mtls_url()
    );
    let temporary = dir.join(".emulator.env.tmp");
    std::fs::write(&temporary, env).map_err(io(&temporary))?;
    std::fs::rename(&temporary, &env_path).map_err(io(&env_path))?;
    Ok(())
}

/// Writes a file only its owner can read (it holds a private key or a refresh token); a file
/// that already exists is made private too.
fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(contents.as_bytes())
}

/// `len` random characters of the URL-safe alphabet Google's opaque tokens use.
pub(crate) fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = vec![0u8; len];
    fill_random(&mut bytes);
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

/// `n` random bytes as lowercase hex.
pub(crate) fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    fill_random(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A uniform random number in `[0, 1)`.
pub(crate) fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    fill_random(&mut bytes);
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

fn fill_random(bytes: &mut [u8]) {
    if aws_lc_rs::rand::fill(bytes).is_err() {
        // aws-lc's DRBG does not fail in practice; a failure here must not yield predictable tokens.
        std::process::abort();
    }
}
