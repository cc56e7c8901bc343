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
pub mod keys;
pub mod state;
pub mod world;

mod admin;
mod function;
mod iam;
mod metadata;
mod oauth;
mod sigv4;
mod sts;
mod tokeninfo;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use faults::{Endpoint, Fault, FaultError};
pub use keys::SigningKey;
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
    data_dir: Option<PathBuf>,
}

impl Emulator {
    /// An emulator of the default world on `127.0.0.1` with an ephemeral port.
    pub fn builder() -> Self {
        Self {
            world: World::default_world(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
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

    /// Writes key files, authorized users' credential files and `emulator.env` to this
    /// directory (and reuses keys found there).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Generates keys, binds, writes the data directory and starts serving.
    pub async fn start(self) -> Result<RunningEmulator, EmulatorError> {
        self.world.validate()?;
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .map_err(|source| EmulatorError::Bind {
                addr: self.listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EmulatorError::Bind {
                addr: self.listen,
                source,
            })?;
        let url = format!("http://{addr}");

        let world = self.world.clone();
        let data_dir = self.data_dir.clone();
        let (account_keys, id_token_key) =
            tokio::task::spawn_blocking(move || load_or_generate_keys(&world, data_dir.as_deref()))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        let state = Arc::new(State::new(
            self.world,
            url.clone(),
            account_keys,
            id_token_key,
        ));
        if let Some(dir) = &self.data_dir {
            write_data_dir(&state, dir)?;
        }

        let (shutdown, shutdown_signal) = oneshot::channel::<()>();
        let app = router(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = shutdown_signal.await;
            });
            if let Err(error) = serve.await {
                tracing::error!(%error, "emulator server failed");
            }
        });
        tracing::info!(%url, "gcp-emulator listening");
        Ok(RunningEmulator {
            addr,
            url,
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
    data_dir: Option<PathBuf>,
    state: Arc<State>,
    shutdown: oneshot::Sender<()>,
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

    /// Stops accepting, finishes in-flight requests and waits for the server to end.
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
        .route(function::PATH, get(function::hello).post(function::hello))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            faults::middleware,
        ))
        .with_state(state)
}

type Keys = (HashMap<String, Arc<SigningKey>>, SigningKey);

/// One key per service account (user-managed ones are reused from `DIR/keys` when present;
/// accounts without one still get a Google-managed key for signJwt/signBlob) and the ID-token
/// signing key. Keys are generated on all cores.
fn load_or_generate_keys(world: &World, data_dir: Option<&Path>) -> Result<Keys, EmulatorError> {
    let results: Vec<Result<(String, SigningKey), EmulatorError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = world
            .service_accounts
            .iter()
            .map(|account| {
                scope.spawn(move || {
                    let existing = data_dir
                        .filter(|_| account.key)
                        .and_then(|dir| load_key_file(dir, &account.email));
                    let key = match existing {
                        Some(key) => Ok(key),
                        None => SigningKey::generate(&account.email),
                    };
                    key.map(|k| (account.email.clone(), k))
                        .map_err(|source| EmulatorError::Key {
                            account: account.email.clone(),
                            source,
                        })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut keys = HashMap::new();
    for result in results {
        let (email, key) = result?;
        keys.insert(email, Arc::new(key));
    }
    let id_token_key = SigningKey::generate("gcp-emulator id-token signer").map_err(|source| {
        EmulatorError::Key {
            account: "id-token signer".to_owned(),
            source,
        }
    })?;
    Ok((keys, id_token_key))
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

/// Writes `DIR/keys/<account-id>.json` for every account with a key and
/// `DIR/users/<name>.json` for every authorized user, then `DIR/emulator.env`.
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
    let env = format!("GCP_EMULATOR_URL={}\n", state.base_url);
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
