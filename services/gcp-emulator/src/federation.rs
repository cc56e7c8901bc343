//! Workload and workforce identity federation: the key material the emulator generates for
//! its identity providers (OIDC issuer keys, X.509 CAs and workload certificates, the mTLS
//! STS listener's certificate), what clients need to know to federate ([`Federation`]), and
//! subject-token minting for tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::keys::{KeyError, SigningKey};
use crate::state::State;
use crate::world::{Provider, ProviderKind, Secret, World};
use crate::x509::{Authority, Cert, CertifiedKey, PkiError};

/// The `subject_token_type` of OIDC subject tokens.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The `subject_token_type` of AWS subject tokens.
pub const AWS_TOKEN_TYPE: &str = "urn:ietf:params:aws:token-type:aws4_request";
/// The `subject_token_type` of X.509 subject tokens.
pub const MTLS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:mtls";

/// Why a federation call failed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// No provider has this id or audience.
    #[error("no identity provider has the id or audience {0:?}")]
    UnknownProvider(String),
    /// Several providers have this id; name it by its audience.
    #[error("several providers have the id {0:?}: name one by its audience")]
    Ambiguous(String),
    /// The provider is not an OIDC provider whose issuer key the emulator holds.
    #[error(
        "provider {0} is not an OIDC provider with generate_issuer_key: the emulator does not hold its issuer's key"
    )]
    NoIssuerKey(String),
    /// The extra claims are not a JSON object.
    #[error("extra claims must be a JSON object (or null)")]
    ExtraClaims,
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] KeyError),
}

/// The X.509 material generated for a provider with `generate_ca`.
#[derive(Clone)]
pub(crate) struct GeneratedPki {
    pub(crate) ca: Cert,
    pub(crate) workload: CertifiedKey,
}

/// The mTLS STS listener's certificate and the CA that issued it.
#[derive(Clone)]
pub(crate) struct MtlsServerPki {
    pub(crate) ca: Cert,
    pub(crate) server: CertifiedKey,
}

/// Key material the emulator generated for its identity providers.
#[derive(Default)]
pub(crate) struct Material {
    /// Issuer keys of OIDC providers with `generate_issuer_key`, by provider id.
    pub(crate) issuer_keys: HashMap<String, Arc<SigningKey>>,
    /// CAs and workload certificates of X.509 providers with `generate_ca`, by provider id.
    pub(crate) pkis: HashMap<String, GeneratedPki>,
    /// The mTLS STS listener's PKI.
    pub(crate) mtls: Option<MtlsServerPki>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("issuer_keys", &self.issuer_keys)
            .field("pkis", &self.pkis.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// `DIR/federation`.
pub(crate) fn federation_dir(dir: &Path) -> PathBuf {
    dir.join("federation")
}

/// `DIR/federation/<id>-issuer.pem`: a generated OIDC issuer key (PKCS#8).
pub(crate) fn issuer_key_path(dir: &Path, provider: &str) -> PathBuf {
    federation_dir(dir).join(format!("{provider}-issuer.pem"))
}

fn jwks_path(dir: &Path, provider: &str) -> PathBuf {
    federation_dir(dir).join(format!("{provider}-jwks.json"))
}

fn pki_dir(dir: &Path, provider: &str) -> PathBuf {
    federation_dir(dir).join(provider)
}

fn sts_mtls_ca_path(dir: &Path) -> PathBuf {
    federation_dir(dir).join("sts-mtls-ca.pem")
}

fn summary_path(dir: &Path) -> PathBuf {
    federation_dir(dir).join("federation.json")
}

/// Every provider of the world with its pool: `(workforce, pool resource name, provider)`.
pub(crate) fn providers(world: &World) -> impl Iterator<Item = (bool, String, &Provider)> {
    let workload = world.workload_identity_pools.iter().flat_map(|pool| {
        pool.providers.iter().map(move |provider| {
            (
                false,
                format!(
                    "projects/{}/locations/global/workloadIdentityPools/{}",
                    pool.project_number, pool.pool
                ),
                provider,
            )
        })
    });
    let workforce = world.workforce_pools.iter().flat_map(|pool| {
        pool.providers.iter().map(move |provider| {
            (
                true,
                format!("locations/global/workforcePools/{}", pool.pool),
                provider,
            )
        })
    });
    workload.chain(workforce)
}

/// Loads the issuer key of `provider` from `DIR/federation/<id>-issuer.pem`, or generates
/// one. Its key id is its JWK thumbprint, so a reloaded key keeps its id.
pub(crate) fn load_or_generate_issuer_key(
    provider: &Provider,
    data_dir: Option<&Path>,
) -> Result<SigningKey, KeyError> {
    let issuer = provider.issuer.as_deref().unwrap_or(&provider.id);
    let existing = data_dir
        .and_then(|dir| std::fs::read_to_string(issuer_key_path(dir, &provider.id)).ok())
        .and_then(|pem| SigningKey::from_pkcs8_pem("", &pem, issuer).ok());
    let key = match existing {
        Some(key) => key,
        None => SigningKey::generate(issuer)?,
    };
    let kid = key.public_key().thumbprint();
    Ok(key.with_kid(kid))
}

/// Generates the CA and workload certificate of every X.509 provider with `generate_ca`, and
/// the mTLS listener's certificate for `mtls_ip` (plus `127.0.0.1` and `localhost`).
pub(crate) fn generate_pkis(
    world: &World,
    mtls_ip: std::net::IpAddr,
) -> Result<(HashMap<String, GeneratedPki>, MtlsServerPki), PkiError> {
    let mut pkis = HashMap::new();
    for (_, _, provider) in providers(world).filter(|(_, _, p)| p.generate_ca) {
        let ca = Authority::generate(&format!("gcp-emulator {} CA", provider.id))?;
        let workload = ca.issue_client(
            provider.workload_common_name(),
            &[provider.workload_spiffe_id()],
        )?;
        pkis.insert(
            provider.id.clone(),
            GeneratedPki {
                ca: ca.cert.clone(),
                workload,
            },
        );
    }
    let ca = Authority::generate("gcp-emulator mTLS CA")?;
    let ip = mtls_ip.to_string();
    let mut names = vec![
        "127.0.0.1",
        "localhost",
        "sts.mtls.googleapis.com",
        "iamcredentials.mtls.googleapis.com",
    ];
    if !names.contains(&ip.as_str()) && !mtls_ip.is_unspecified() {
        names.push(&ip);
    }
    let server = ca.issue_server(&names)?;
    Ok((
        pkis,
        MtlsServerPki {
            ca: ca.cert.clone(),
            server,
        },
    ))
}

/// Where and how to federate with the emulator's identity providers: every provider of the
/// world, with what a client needs (audiences, issuers, keys, AWS credentials, certificates),
/// and the mTLS STS endpoint. From [`crate::RunningEmulator::federation`]; also written to
/// `DIR/federation/federation.json` (secrets included, mode 0600).
#[derive(Debug, Clone)]
pub struct Federation {
    /// OIDC providers, workload and workforce.
    pub oidc: Vec<OidcProviderInfo>,
    /// AWS providers.
    pub aws: Vec<AwsProviderInfo>,
    /// X.509 providers.
    pub x509: Vec<X509ProviderInfo>,
    /// The mTLS STS listener, `https://127.0.0.1:PORT` (its token endpoint is `/v1/token`).
    pub sts_mtls_url: String,
    /// The CA certificate (PEM) of the mTLS STS listener's server certificate.
    pub sts_mtls_ca_pem: String,
    /// Where that CA certificate was written, `DIR/federation/sts-mtls-ca.pem`.
    pub sts_mtls_ca_file: Option<PathBuf>,
}

/// An OIDC provider (workload or workforce).
#[derive(Debug, Clone)]
pub struct OidcProviderInfo {
    /// The provider id, e.g. `dev-oidc`.
    pub provider_id: String,
    /// Whether it belongs to a workforce pool.
    pub workforce: bool,
    /// The STS `audience`, `//iam.googleapis.com/<provider resource name>`.
    pub audience: String,
    /// The `aud` its subject tokens must carry (the first allowed audience, else
    /// `https://iam.googleapis.com/<provider resource name>`).
    pub token_audience: String,
    /// The issuer (`iss`).
    pub issuer: String,
    /// The claim mapped to `google.subject`.
    pub subject_claim: String,
    /// The `kid` of the issuer key the emulator generated (`generate_issuer_key`).
    pub key_id: Option<String>,
    /// Where that key was written (PKCS#8 PEM, mode 0600): `DIR/federation/<id>-issuer.pem`.
    pub key_file: Option<PathBuf>,
    /// Where its public JWKS was written: `DIR/federation/<id>-jwks.json`.
    pub jwks_file: Option<PathBuf>,
    /// Workforce: a project STS accepts as `options.userProject` (the world's first project).
    pub user_project: Option<String>,
    /// Workforce: the STS client id for HTTP Basic client authentication, if configured.
    pub client_id: Option<String>,
    /// Workforce: the secret of `client_id`.
    pub client_secret: Option<Secret>,
    principal_prefix: String,
}

impl OidcProviderInfo {
    /// The federated principal of `subject`: `principal://iam.googleapis.com/<pool>/subject/SUB`.
    pub fn principal(&self, subject: &str) -> String {
        format!("{}{subject}", self.principal_prefix)
    }

    /// The `subject_token_type` of its subject tokens.
    pub fn subject_token_type(&self) -> &'static str {
        JWT_TOKEN_TYPE
    }
}

/// An AWS provider, with AWS credentials in its account (if the world has some).
#[derive(Debug, Clone)]
pub struct AwsProviderInfo {
    /// The provider id, e.g. `dev-aws`.
    pub provider_id: String,
    /// The STS `audience`.
    pub audience: String,
    /// The AWS account it trusts.
    pub account_id: String,
    /// The AWS region to sign for: the emulated instance's when it is in this account, else
    /// `us-east-1`.
    pub region: String,
    /// Access key id of the world's credential in this account (the instance role's first).
    pub access_key_id: Option<String>,
    /// Its secret.
    pub secret_access_key: Option<Secret>,
    /// Its session token (temporary credentials), which the signed request must carry.
    pub session_token: Option<Secret>,
    /// Its ARN: `google.subject` of its exchanges.
    pub arn: Option<String>,
    /// The emulator's URL when its IMDSv2 emulation serves this credential (the
    /// `credential_source` URLs are under it), else `None`.
    pub imds_url: Option<String>,
    /// `https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15`.
    pub regional_cred_verification_url: String,
    principal_prefix: String,
}

impl AwsProviderInfo {
    /// The federated principal of `subject` (an ARN).
    pub fn principal(&self, subject: &str) -> String {
        format!("{}{subject}", self.principal_prefix)
    }

    /// The `credential_source` of an `external_account` file for this provider: AWS
    /// environment 1, with the emulator's IMDSv2 URLs when it serves the credential.
    pub fn credential_source(&self) -> Value {
        let mut source = json!({
            "environment_id": "aws1",
            "regional_cred_verification_url": self.regional_cred_verification_url,
        });
        if let Some(imds) = &self.imds_url {
            source["region_url"] =
                format!("{imds}/latest/meta-data/placement/availability-zone").into();
            source["url"] = format!("{imds}/latest/meta-data/iam/security-credentials").into();
            source["imdsv2_session_token_url"] = format!("{imds}/latest/api/token").into();
        }
        source
    }

    /// The `subject_token_type` of its subject tokens.
    pub fn subject_token_type(&self) -> &'static str {
        AWS_TOKEN_TYPE
    }
}

/// An X.509 provider, with the workload certificate the emulator issued when it generated
/// the provider's CA.
#[derive(Debug, Clone)]
pub struct X509ProviderInfo {
    /// The provider id, e.g. `dev-x509`.
    pub provider_id: String,
    /// The STS `audience`.
    pub audience: String,
    /// The mTLS STS token endpoint, `https://127.0.0.1:PORT/v1/token`.
    pub token_url: String,
    /// The assertion path mapped to `google.subject` (`subject.dn.cn` or `san.uri`, ...).
    pub subject_claim: String,
    /// The generated CA certificate (the provider's trust anchor), PEM.
    pub ca_pem: Option<String>,
    /// Where it was written: `DIR/federation/<id>/ca.pem`.
    pub ca_file: Option<PathBuf>,
    /// The generated workload certificate, PEM.
    pub workload_cert_pem: Option<String>,
    /// Its private key, PKCS#8 PEM.
    pub workload_key_pem: Option<Secret>,
    /// `DIR/federation/<id>/workload.pem`.
    pub workload_cert_file: Option<PathBuf>,
    /// `DIR/federation/<id>/workload-key.pem` (mode 0600).
    pub workload_key_file: Option<PathBuf>,
    /// `DIR/federation/<id>/certificate_config.json`, gcloud's format:
    /// `{"cert_configs":{"workload":{"cert_path":…,"key_path":…}}}`.
    pub certificate_config_file: Option<PathBuf>,
    /// The `google.subject` the workload certificate maps to.
    pub workload_subject: Option<String>,
    principal_prefix: String,
}

impl X509ProviderInfo {
    /// The federated principal of `subject`.
    pub fn principal(&self, subject: &str) -> String {
        format!("{}{subject}", self.principal_prefix)
    }

    /// The `credential_source` of an `external_account` file for the generated workload
    /// certificate (needs a data directory).
    pub fn credential_source(&self) -> Option<Value> {
        let config = self.certificate_config_file.as_ref()?;
        Some(json!({"certificate": {"certificate_config_location": config}}))
    }

    /// The `subject_token_type` of its subject tokens.
    pub fn subject_token_type(&self) -> &'static str {
        MTLS_TOKEN_TYPE
    }
}

impl Federation {
    /// Describes the federation of `state`'s world, with the files under `data_dir`.
    pub(crate) fn describe(state: &State, data_dir: Option<&Path>) -> Self {
        let world = &state.world;
        let material = &state.federation;
        let user_project = world.projects.first().map(|p| p.id.clone());
        let mut federation = Federation {
            oidc: Vec::new(),
            aws: Vec::new(),
            x509: Vec::new(),
            sts_mtls_url: state.sts_mtls_url.clone(),
            sts_mtls_ca_pem: material
                .mtls
                .as_ref()
                .map(|m| m.ca.pem.clone())
                .unwrap_or_default(),
            sts_mtls_ca_file: data_dir.map(sts_mtls_ca_path),
        };
        for (workforce, pool, provider) in providers(world) {
            let resource = format!("{pool}/providers/{}", provider.id);
            let audience = format!("//iam.googleapis.com/{resource}");
            let principal_prefix = format!("principal://iam.googleapis.com/{pool}/subject/");
            match provider.kind() {
                ProviderKind::Oidc => {
                    let key = material.issuer_keys.get(&provider.id);
                    let file = |path: fn(&Path, &str) -> PathBuf| {
                        key.and(data_dir).map(|dir| path(dir, &provider.id))
                    };
                    federation.oidc.push(OidcProviderInfo {
                        provider_id: provider.id.clone(),
                        workforce,
                        token_audience: provider
                            .allowed_audiences
                            .first()
                            .cloned()
                            .unwrap_or_else(|| format!("https://iam.googleapis.com/{resource}")),
                        audience,
                        issuer: provider.issuer.clone().unwrap_or_default(),
                        subject_claim: provider.subject_source().to_owned(),
                        key_id: key.map(|k| k.kid().to_owned()),
                        key_file: file(issuer_key_path),
                        jwks_file: file(jwks_path),
                        user_project: user_project.clone().filter(|_| workforce),
                        client_id: provider.client_id.clone(),
                        client_secret: provider.client_secret.clone(),
                        principal_prefix,
                    });
                }
                ProviderKind::Aws => {
                    let account = provider.aws_account_id.clone().unwrap_or_default();
                    let instance = world.aws_instance.as_ref().filter(|instance| {
                        world.aws_credentials.iter().any(|c| {
                            c.access_key_id == instance.access_key_id && c.account_id() == account
                        })
                    });
                    let credential = instance
                        .and_then(|i| {
                            world
                                .aws_credentials
                                .iter()
                                .find(|c| c.access_key_id == i.access_key_id)
                        })
                        .or_else(|| {
                            world
                                .aws_credentials
                                .iter()
                                .find(|c| c.account_id() == account)
                        });
                    let region = instance.map_or("us-east-1", |i| i.region()).to_owned();
                    federation.aws.push(AwsProviderInfo {
                        provider_id: provider.id.clone(),
                        audience,
                        account_id: account.clone(),
                        regional_cred_verification_url: format!(
                            "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
                        ),
                        region,
                        access_key_id: credential.map(|c| c.access_key_id.clone()),
                        secret_access_key: credential
                            .map(|c| Secret::new(c.secret_access_key.clone())),
                        session_token: credential.and_then(|c| c.session_token.clone()),
                        arn: credential.map(|c| c.arn.clone()),
                        imds_url: instance.map(|_| state.base_url.clone()),
                        principal_prefix,
                    });
                }
                ProviderKind::X509 => {
                    let pki = material.pkis.get(&provider.id);
                    let file = |name: &str| {
                        pki.and(data_dir)
                            .map(|dir| pki_dir(dir, &provider.id).join(name))
                    };
                    let workload_subject = pki.and_then(|pki| {
                        let assertion = crate::x509::assertion(&pki.workload.cert.der).ok()?;
                        crate::x509::assertion_str(&assertion, provider.subject_source())
                            .map(str::to_owned)
                    });
                    federation.x509.push(X509ProviderInfo {
                        provider_id: provider.id.clone(),
                        audience,
                        token_url: format!("{}/v1/token", state.sts_mtls_url),
                        subject_claim: provider.subject_source().to_owned(),
                        ca_pem: pki.map(|p| p.ca.pem.clone()),
                        ca_file: file("ca.pem"),
                        workload_cert_pem: pki.map(|p| p.workload.cert.pem.clone()),
                        workload_key_pem: pki.map(|p| Secret::new(p.workload.key_pem.as_str())),
                        workload_cert_file: file("workload.pem"),
                        workload_key_file: file("workload-key.pem"),
                        certificate_config_file: file("certificate_config.json"),
                        workload_subject,
                        principal_prefix,
                    });
                }
            }
        }
        federation
    }

    /// The OIDC provider with this id or audience.
    pub fn oidc_provider(&self, id_or_audience: &str) -> Option<&OidcProviderInfo> {
        self.oidc
            .iter()
            .find(|p| p.audience == id_or_audience || p.provider_id == id_or_audience)
    }

    /// The first workload-pool OIDC provider whose issuer key the emulator holds (the
    /// default world's `dev-oidc`).
    pub fn workload_oidc(&self) -> Option<&OidcProviderInfo> {
        self.oidc
            .iter()
            .find(|p| !p.workforce && p.key_id.is_some())
    }

    /// The first workforce OIDC provider whose issuer key the emulator holds (the default
    /// world's `dev-workforce-oidc`).
    pub fn workforce_oidc(&self) -> Option<&OidcProviderInfo> {
        self.oidc.iter().find(|p| p.workforce && p.key_id.is_some())
    }

    /// The first AWS provider with a credential in its account (the default world's
    /// `dev-aws`).
    pub fn aws_provider(&self) -> Option<&AwsProviderInfo> {
        self.aws.iter().find(|p| p.access_key_id.is_some())
    }

    /// The first X.509 provider with a generated workload certificate (the default world's
    /// `dev-x509`).
    pub fn x509_provider(&self) -> Option<&X509ProviderInfo> {
        self.x509.iter().find(|p| p.workload_cert_pem.is_some())
    }

    /// Everything as JSON, secrets included: what `DIR/federation/federation.json` holds.
    pub fn to_json(&self) -> Value {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let secret = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_owned());
        json!({
            "sts_mtls_url": self.sts_mtls_url,
            "sts_mtls_ca_file": path(&self.sts_mtls_ca_file),
            "oidc": self.oidc.iter().map(|p| json!({
                "provider_id": p.provider_id,
                "workforce": p.workforce,
                "audience": p.audience,
                "token_audience": p.token_audience,
                "issuer": p.issuer,
                "subject_claim": p.subject_claim,
                "subject_token_type": p.subject_token_type(),
                "key_id": p.key_id,
                "key_file": path(&p.key_file),
                "jwks_file": path(&p.jwks_file),
                "user_project": p.user_project,
                "client_id": p.client_id,
                "client_secret": secret(&p.client_secret),
                "principal_prefix": p.principal_prefix,
            })).collect::<Vec<_>>(),
            "aws": self.aws.iter().map(|p| json!({
                "provider_id": p.provider_id,
                "audience": p.audience,
                "account_id": p.account_id,
                "region": p.region,
                "access_key_id": p.access_key_id,
                "secret_access_key": secret(&p.secret_access_key),
                "session_token": secret(&p.session_token),
                "arn": p.arn,
                "imds_url": p.imds_url,
                "regional_cred_verification_url": p.regional_cred_verification_url,
                "subject_token_type": p.subject_token_type(),
                "credential_source": p.credential_source(),
                "principal_prefix": p.principal_prefix,
            })).collect::<Vec<_>>(),
            "x509": self.x509.iter().map(|p| json!({
                "provider_id": p.provider_id,
                "audience": p.audience,
                "token_url": p.token_url,
                "subject_claim": p.subject_claim,
                "subject_token_type": p.subject_token_type(),
                "ca_file": path(&p.ca_file),
                "workload_cert_file": path(&p.workload_cert_file),
                "workload_key_file": path(&p.workload_key_file),
                "certificate_config_file": path(&p.certificate_config_file),
                "workload_subject": p.workload_subject,
                "credential_source": p.credential_source(),
                "principal_prefix": p.principal_prefix,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Signs an OIDC subject token as the issuer of `provider` (its id, or its STS audience):
/// `iss` = the issuer, `sub` = `subject` (also set as the provider's subject claim when that
/// is another claim), `aud` = the audience the provider accepts, `iat` = now, `exp` = now +
/// `ttl`; then `extra_claims` (an object, or null) added over them, so they may override any.
pub(crate) fn mint_oidc_token(
    state: &State,
    provider: &str,
    subject: &str,
    ttl: Duration,
    extra_claims: Value,
) -> Result<String, FederationError> {
    let matches: Vec<_> = providers(&state.world)
        .filter(|(_, pool, p)| {
            p.id == provider
                || format!("//iam.googleapis.com/{pool}/providers/{}", p.id) == provider
        })
        .collect();
    let (_, pool, found) = match matches.as_slice() {
        [] => return Err(FederationError::UnknownProvider(provider.to_owned())),
        [one] => one,
        _ => return Err(FederationError::Ambiguous(provider.to_owned())),
    };
    let key = state
        .federation
        .issuer_keys
        .get(&found.id)
        .ok_or_else(|| FederationError::NoIssuerKey(found.id.clone()))?;
    let audience = found
        .allowed_audiences
        .first()
        .cloned()
        .unwrap_or_else(|| format!("https://iam.googleapis.com/{pool}/providers/{}", found.id));
    let iat = crate::state::now();
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let mut claims = json!({
        "iss": found.issuer,
        "sub": subject,
        "aud": audience,
        "iat": iat,
        "exp": iat.saturating_add(ttl),
    });
    if found.subject_source() != "sub" {
        claims[found.subject_source()] = subject.into();
    }
    match extra_claims {
        Value::Null => {}
        Value::Object(extra) => {
            for (name, value) in extra {
                claims[name] = value;
            }
        }
        _ => return Err(FederationError::ExtraClaims),
    }
    Ok(key.sign_jwt(&claims)?)
}

/// Writes `DIR/federation/`: generated issuer keys (`<id>-issuer.pem`, 0600, and
/// `<id>-jwks.json`), generated X.509 material (`<id>/{ca.pem, workload.pem,
/// workload-key.pem (0600), certificate_config.json}`), `sts-mtls-ca.pem`, and the summary
/// `federation.json` (0600).
pub(crate) fn write_files(
    state: &State,
    dir: &Path,
    write_private: fn(&Path, &str) -> std::io::Result<()>,
) -> Result<(), (PathBuf, std::io::Error)> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| (path, e)
    };
    let federation_dir = federation_dir(dir);
    std::fs::create_dir_all(&federation_dir).map_err(io(&federation_dir))?;
    let material = &state.federation;
    for (id, key) in &material.issuer_keys {
        let path = issuer_key_path(dir, id);
        write_private(&path, key.private_key_pem()).map_err(io(&path))?;
        let path = jwks_path(dir, id);
        let jwks = json!({"keys": [key.jwk()]});
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&jwks).unwrap_or_default(),
        )
        .map_err(io(&path))?;
    }
    for (id, pki) in &material.pkis {
        let pki_dir = pki_dir(dir, id);
        std::fs::create_dir_all(&pki_dir).map_err(io(&pki_dir))?;
        let cert_path = pki_dir.join("workload.pem");
        let key_path = pki_dir.join("workload-key.pem");
        for (name, contents) in [
            ("ca.pem", &pki.ca.pem),
            ("workload.pem", &pki.workload.cert.pem),
        ] {
            let path = pki_dir.join(name);
            std::fs::write(&path, contents).map_err(io(&path))?;
        }
        write_private(&key_path, &pki.workload.key_pem).map_err(io(&key_path))?;
        let config = json!({"cert_configs": {"workload": {
            "cert_path": cert_path.display().to_string(),
            "key_path": key_path.display().to_string(),
        }}});
        let path = pki_dir.join("certificate_config.json");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&config).unwrap_or_default(),
        )
        .map_err(io(&path))?;
    }
    if let Some(mtls) = &material.mtls {
        let path = sts_mtls_ca_path(dir);
        std::fs::write(&path, &mtls.ca.pem).map_err(io(&path))?;
    }
    let path = summary_path(dir);
    let summary = Federation::describe(state, Some(dir)).to_json();
    write_private(
        &path,
        &serde_json::to_string_pretty(&summary).unwrap_or_default(),
    )
    .map_err(io(&path))?;
    Ok(())
}
