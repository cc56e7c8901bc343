//! What the running emulator holds: the world, keys, minted tokens, faults and counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use crate::faults::Faults;
use crate::federation::Material;
use crate::keys::SigningKey;
use crate::requests::RequestLog;
use crate::world::World;

/// How a token was obtained, as `tokeninfo` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Grant {
    /// OAuth2 JWT-bearer grant with a service-account key.
    JwtBearer,
    /// OAuth2 refresh-token grant of an authorized user.
    RefreshToken,
    /// The metadata server's token endpoint.
    Metadata,
    /// STS exchange of a federated subject token.
    StsExchange,
    /// STS downscoping with a Credential Access Boundary.
    StsDownscope,
    /// IAM Credentials generateAccessToken.
    GenerateAccessToken,
}

/// Everything the emulator remembers about an access token it minted.
#[derive(Debug, Clone, Serialize)]
pub struct TokenRecord {
    /// `serviceAccount:EMAIL`, `user:EMAIL` or `principal://…`.
    pub principal: String,
    /// The email, for service accounts and users.
    pub email: Option<String>,
    /// The numeric unique id of the Google account the token is for (the service account's,
    /// or the user's for refresh-token and domain-wide-delegation tokens): tokeninfo's `sub`.
    /// `None` for federated principals, which have no Google account.
    pub unique_id: Option<String>,
    /// The OAuth client (unique id of the account, or the OAuth client id).
    pub client: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// How it was obtained.
    pub grant: Grant,
    /// The domain-wide-delegation subject.
    pub subject: Option<String>,
    /// The impersonation delegate chain.
    pub delegates: Vec<String>,
    /// The Credential Access Boundary applied.
    pub access_boundary: Option<serde_json::Value>,
    /// The workforce `userProject`, if any.
    pub user_project: Option<String>,
}

/// Shared emulator state.
#[derive(Debug)]
pub struct State {
    /// The world definition.
    pub world: World,
    /// The emulator's own base URL, `http://HOST:PORT`.
    pub base_url: String,
    /// Service-account keys by email.
    pub account_keys: HashMap<String, Arc<SigningKey>>,
    /// ID-token signing keys, newest first (at most two are published).
    pub id_token_keys: RwLock<Vec<Arc<SigningKey>>>,
    tokens: Mutex<HashMap<String, TokenRecord>>,
    /// Fault rules and per-endpoint counters.
    pub faults: Faults,
    /// The last requests of every endpoint, normalized.
    pub requests: RequestLog,
    lifetime_override: AtomicU64,
    /// Key material generated for the world's identity providers and the mTLS listener.
    pub(crate) federation: Material,
    /// The mTLS STS listener, `https://HOST:PORT` (empty when there is none).
    pub(crate) sts_mtls_url: String,
    /// The data directory, if any.
    pub(crate) data_dir: Option<std::path::PathBuf>,
    /// IMDSv2 session tokens and their expiry (Unix seconds).
    imds_sessions: Mutex<HashMap<String, i64>>,
}

/// Current Unix time in seconds.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl State {
    /// Builds the state.
    pub fn new(
        world: World,
        base_url: String,
        account_keys: HashMap<String, Arc<SigningKey>>,
        id_token_key: SigningKey,
    ) -> Self {
        Self {
            world,
            base_url,
            account_keys,
            id_token_keys: RwLock::new(vec![Arc::new(id_token_key)]),
            tokens: Mutex::new(HashMap::new()),
            faults: Faults::default(),
            requests: RequestLog::default(),
            lifetime_override: AtomicU64::new(0),
            federation: Material::default(),
            sts_mtls_url: String::new(),
            data_dir: None,
            imds_sessions: Mutex::new(HashMap::new()),
        }
    }

    /// With the federation material, the mTLS STS listener's URL and the data directory.
    pub(crate) fn with_federation(
        mut self,
        material: Material,
        sts_mtls_url: String,
        data_dir: Option<std::path::PathBuf>,
    ) -> Self {
        self.federation = material;
        self.sts_mtls_url = sts_mtls_url;
        self.data_dir = data_dir;
        self
    }

    /// Mints an IMDSv2 session token valid for `ttl` seconds.
    pub(crate) fn mint_imds_session(&self, ttl: i64) -> String {
        let token = format!("AQAEA{}==", crate::random_token(51));
        let mut sessions = self.imds_sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = now();
        sessions.retain(|_, expiry| *expiry > now);
        sessions.insert(token.clone(), now + ttl);
        token
    }

    /// Whether `token` is a valid (known, unexpired) IMDSv2 session token.
    pub(crate) fn valid_imds_session(&self, token: &str) -> bool {
        let sessions = self.imds_sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.get(token).is_some_and(|expiry| *expiry > now())
    }

    /// The mTLS STS listener's URL, `https://HOST:PORT`.
    pub fn sts_mtls_url(&self) -> &str {
        &self.sts_mtls_url
    }

    /// The trusted keys of an OIDC provider: its JWKS, or the key the emulator generated.
    pub(crate) fn oidc_keys(
        &self,
        provider: &crate::world::Provider,
    ) -> Vec<(Option<String>, crate::keys::PublicKey)> {
        if let Some(key) = self.federation.issuer_keys.get(&provider.id)
            && provider.generate_issuer_key
        {
            return vec![(Some(key.kid().to_owned()), key.public_key())];
        }
        if provider.trust_google_id_tokens {
            return self
                .published_id_token_keys()
                .iter()
                .map(|key| (Some(key.kid().to_owned()), key.public_key()))
                .collect();
        }
        let jwks: serde_json::Value = provider
            .jwks_json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or(serde_json::Value::Null);
        jwks.get("keys")
            .and_then(serde_json::Value::as_array)
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| {
                        let key = crate::keys::PublicKey::from_jwk_components(
                            k.get("n")?.as_str()?,
                            k.get("e")?.as_str()?,
                        )?;
                        Some((
                            k.get("kid").and_then(|v| v.as_str()).map(str::to_owned),
                            key,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The URL of the ID-token-protected function, `<base URL>/_emulator/function/hello`: the
    /// `aud` its callers' ID tokens must carry.
    pub fn function_url(&self) -> String {
        format!("{}{}", self.base_url, crate::function::PATH)
    }

    /// The lifetime of a token minted now: `default` seconds, or the admin override.
    pub fn lifetime(&self, default: i64) -> i64 {
        match self.lifetime_override.load(Ordering::Relaxed) {
            0 => default,
            seconds => i64::try_from(seconds).unwrap_or(default),
        }
    }

    /// Sets (`Some`) or clears (`None`) the token lifetime override.
    pub fn set_lifetime_override(&self, seconds: Option<u64>) {
        self.lifetime_override
            .store(seconds.unwrap_or(0), Ordering::Relaxed);
    }

    /// Mints an opaque Google-looking access token and remembers it.
    pub fn mint_access_token(&self, prefix: &str, record: TokenRecord) -> String {
        let token = format!("{prefix}{}", crate::random_token(96));
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let now = now();
        tokens.retain(|_, r| r.expires_at > now);
        tokens.insert(token.clone(), record);
        token
    }

    /// The record of a valid (known, unexpired) access token.
    pub fn lookup_token(&self, token: &str) -> Option<TokenRecord> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.get(token).filter(|r| r.expires_at > now()).cloned()
    }

    /// The current ID-token signing key.
    pub fn id_token_key(&self) -> Arc<SigningKey> {
        let keys = self.id_token_keys.read().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&keys[0])
    }

    /// The published ID-token keys, newest first.
    pub fn published_id_token_keys(&self) -> Vec<Arc<SigningKey>> {
        self.id_token_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes `key` the signing key; the previous one stays published.
    pub fn rotate_id_token_key(&self, key: SigningKey) {
        let mut keys = self
            .id_token_keys
            .write()
            .unwrap_or_else(|e| e.into_inner());
        keys.insert(0, Arc::new(key));
        keys.truncate(2);
    }

    /// Signs a Google ID token for a service account.
    pub fn sign_service_account_id_token(
        &self,
        account: &crate::world::ServiceAccount,
        audience: &str,
        include_email: bool,
        extra: Option<(&str, serde_json::Value)>,
    ) -> Result<(String, i64), crate::keys::KeyError> {
        let iat = now();
        let exp = iat + self.lifetime(3600);
        let mut claims = serde_json::json!({
            "iss": "https://accounts.google.com",
            "aud": audience,
            "azp": account.unique_id(),
            "sub": account.unique_id(),
            "iat": iat,
            "exp": exp,
        });
        if include_email {
            claims["email"] = account.email.clone().into();
            claims["email_verified"] = true.into();
        }
        if let Some((name, value)) = extra {
            claims[name] = value;
        }
        Ok((self.id_token_key().sign_jwt(&claims)?, exp))
    }
}
