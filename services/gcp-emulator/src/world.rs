//! The emulated world: projects, service accounts, the Google Workspace user directory,
//! authorized users, identity pools and the metadata server's instance, as read from a TOML
//! file or the documented default.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

/// Google's `cloud-platform` scope.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's `iam` scope, enough for IAM Credentials calls.
pub const IAM_SCOPE: &str = "https://www.googleapis.com/auth/iam";
/// The authorized user of the default world (also a user of its Workspace directory).
pub const DEFAULT_USER: &str = "dev-user@example.com";
/// The scopes `gcloud auth application-default login` asks consent for: what the default
/// world's authorized user consented to.
pub const GCLOUD_ADC_SCOPES: [&str; 4] = [
    "openid",
    "https://www.googleapis.com/auth/userinfo.email",
    CLOUD_PLATFORM_SCOPE,
    "https://www.googleapis.com/auth/sqlservice.login",
];

/// The project of the default world.
pub const DEFAULT_PROJECT_ID: &str = "dev-project";
/// The project number of the default world's project.
pub const DEFAULT_PROJECT_NUMBER: &str = "123456789012";
/// The default world's workload identity pool (in `dev-project`).
pub const DEFAULT_WORKLOAD_POOL: &str = "dev-pool";
/// The default world's OIDC provider of `dev-pool`, with an emulator-generated issuer key.
pub const DEFAULT_OIDC_PROVIDER: &str = "dev-oidc";
/// The issuer of [`DEFAULT_OIDC_PROVIDER`].
pub const DEFAULT_OIDC_ISSUER: &str = "https://oidc.dev.token-broker.local";
/// The issuer of the ID tokens Google signs for service accounts.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
/// The default world's OIDC provider of `dev-pool` that trusts Google-signed ID tokens (the
/// emulator's own): a service account's ID token is a subject token for it.
pub const DEFAULT_GOOGLE_PROVIDER: &str = "dev-google";
/// The default world's AWS provider of `dev-pool`.
pub const DEFAULT_AWS_PROVIDER: &str = "dev-aws";
/// The emulated AWS account [`DEFAULT_AWS_PROVIDER`] trusts.
pub const DEFAULT_AWS_ACCOUNT: &str = "123456789012";
/// The default world's AWS access key id (temporary credentials of the instance role).
pub const DEFAULT_AWS_ACCESS_KEY_ID: &str = "ASIADEVEMULATOR00001";
/// The secret of [`DEFAULT_AWS_ACCESS_KEY_ID`].
pub const DEFAULT_AWS_SECRET_ACCESS_KEY: &str = "devEmulatorSecretAccessKey/0000000000000";
/// The session token of [`DEFAULT_AWS_ACCESS_KEY_ID`].
pub const DEFAULT_AWS_SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjEDEVEMULATORSESSIONTOKEN//dev+token=";
/// The caller ARN of [`DEFAULT_AWS_ACCESS_KEY_ID`].
pub const DEFAULT_AWS_ARN: &str =
    "arn:aws:sts::123456789012:assumed-role/dev-role/i-0123456789abcdef0";
/// The availability zone of the emulated EC2 instance.
pub const DEFAULT_AWS_AVAILABILITY_ZONE: &str = "us-east-2b";
/// The id of the emulated EC2 instance.
pub const DEFAULT_AWS_INSTANCE_ID: &str = "i-0123456789abcdef0";
/// The default world's X.509 provider of `dev-pool`, with an emulator-generated CA.
pub const DEFAULT_X509_PROVIDER: &str = "dev-x509";
/// The subject common name of the workload certificate a generated CA issues.
pub const DEFAULT_WORKLOAD_COMMON_NAME: &str = "dev-workload";
/// The URI SAN of the workload certificate a generated CA issues.
pub const DEFAULT_WORKLOAD_SPIFFE_ID: &str =
    "spiffe://dev.token-broker.local/workload/dev-workload";
/// The default world's workforce pool.
pub const DEFAULT_WORKFORCE_POOL: &str = "dev-workforce";
/// The default world's OIDC provider of `dev-workforce`, with an emulator-generated key.
pub const DEFAULT_WORKFORCE_PROVIDER: &str = "dev-workforce-oidc";
/// The issuer of [`DEFAULT_WORKFORCE_PROVIDER`].
pub const DEFAULT_WORKFORCE_ISSUER: &str = "https://idp.dev.token-broker.local";
/// The STS client id of [`DEFAULT_WORKFORCE_PROVIDER`] (HTTP Basic client authentication).
pub const DEFAULT_WORKFORCE_CLIENT_ID: &str = "dev-workforce-client";
/// The secret of [`DEFAULT_WORKFORCE_CLIENT_ID`].
pub const DEFAULT_WORKFORCE_CLIENT_SECRET: &str = "dev-workforce-secret";

/// Why a world definition could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    /// The file could not be read.
    #[error("cannot read world file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a world.
    #[error("invalid world file {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The parse error, with its location.
        source: toml::de::Error,
    },
    /// The world is well-formed but inconsistent.
    #[error("invalid world: {0}")]
    Invalid(String),
}

/// Everything the emulator knows about.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct World {
    /// Projects by id and number.
    #[serde(default)]
    pub projects: Vec<Project>,
    /// Service accounts.
    #[serde(default)]
    pub service_accounts: Vec<ServiceAccount>,
    /// The GCE instance the metadata server describes.
    #[serde(default)]
    pub metadata: MetadataInstance,
    /// The Google Workspace user directory: the users domain-wide delegation can act as.
    #[serde(default)]
    pub workspace_users: Vec<WorkspaceUser>,
    /// Users with OAuth refresh tokens.
    #[serde(default)]
    pub authorized_users: Vec<AuthorizedUser>,
    /// AWS credentials the emulated AWS STS knows, for `aws4_request` subject tokens.
    #[serde(default)]
    pub aws_credentials: Vec<AwsCredential>,
    /// Workload identity pools.
    #[serde(default)]
    pub workload_identity_pools: Vec<WorkloadIdentityPool>,
    /// Workforce pools.
    #[serde(default)]
    pub workforce_pools: Vec<WorkforcePool>,
    /// The EC2 instance the emulated AWS instance metadata service (IMDSv2) speaks for; without
    /// it `/latest/...` answers 404.
    #[serde(default)]
    pub aws_instance: Option<AwsInstance>,
}

/// A Google Cloud project.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// Project id, e.g. `dev-project`.
    pub id: String,
    /// Project number, all digits.
    pub number: String,
}

/// A service account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccount {
    /// `NAME@PROJECT.iam.gserviceaccount.com`.
    pub email: String,
    /// Whether the account has a (generated) key.
    #[serde(default = "yes")]
    pub key: bool,
    /// Domain-wide delegation enabled.
    #[serde(default)]
    pub dwd: bool,
    /// Scopes allowed with domain-wide delegation; empty means any.
    #[serde(default)]
    pub dwd_scopes: Vec<String>,
    /// Members holding `roles/iam.serviceAccountTokenCreator` on this account.
    #[serde(default)]
    pub token_creators: Vec<String>,
    /// Whether generateAccessToken may mint tokens for up to 12 hours.
    #[serde(default)]
    pub allow_extended_lifetime: bool,
    /// A disabled account gets no tokens.
    #[serde(default)]
    pub disabled: bool,
}

fn yes() -> bool {
    true
}

impl ServiceAccount {
    /// The account id: the part of the email before `@`.
    pub fn account_id(&self) -> &str {
        self.email.split('@').next().unwrap_or_default()
    }

    /// The project id, from the email's domain.
    pub fn project_id(&self) -> &str {
        self.email
            .split('@')
            .nth(1)
            .and_then(|domain| domain.strip_suffix(".iam.gserviceaccount.com"))
            .unwrap_or_default()
    }

    /// A stable 21-digit numeric unique id derived from the email.
    pub fn unique_id(&self) -> String {
        numeric_id(&self.email)
    }
}

/// A stable 21-digit numeric id derived from an email (Google's unique ids of accounts and
/// users have that shape). Users' ids are derived from the lowercased email: see
/// [`World::user_id`].
pub fn numeric_id(email: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, email.as_bytes());
    let mut id = String::from("1");
    for byte in digest.as_ref().iter().take(20) {
        id.push(char::from(b'0' + byte % 10));
    }
    id
}

/// The instance the metadata server speaks for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataInstance {
    /// The instance's default service account (must exist in the world).
    #[serde(default = "default_metadata_account")]
    pub service_account: String,
    /// The scopes of its tokens.
    #[serde(default = "default_metadata_scopes")]
    pub scopes: Vec<String>,
    /// Zone name, e.g. `us-central1-a`.
    #[serde(default = "default_zone")]
    pub zone: String,
    /// Instance name.
    #[serde(default = "default_instance_name")]
    pub instance_name: String,
    /// Numeric instance id.
    #[serde(default = "default_instance_id")]
    pub instance_id: String,
}

impl Default for MetadataInstance {
    fn default() -> Self {
        Self {
            service_account: default_metadata_account(),
            scopes: default_metadata_scopes(),
            zone: default_zone(),
            instance_name: default_instance_name(),
            instance_id: default_instance_id(),
        }
    }
}

fn default_metadata_account() -> String {
    "broker@dev-project.iam.gserviceaccount.com".to_owned()
}
fn default_metadata_scopes() -> Vec<String> {
    vec![CLOUD_PLATFORM_SCOPE.to_owned()]
}
fn default_zone() -> String {
    "us-central1-a".to_owned()
}
fn default_instance_name() -> String {
    "dev-instance".to_owned()
}
fn default_instance_id() -> String {
    "4520031799277581759".to_owned()
}

/// A user of the Google Workspace directory (Admin SDK `users`): someone domain-wide
/// delegation can act as.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceUser {
    /// The user's primary email, e.g. `alice@example.com` (matched case-insensitively).
    pub email: String,
    /// The user's numeric unique id (Google's are 21 digits); by default a stable id derived
    /// from the lowercased email. A JWT-bearer `sub` may name the user by email or by this id.
    #[serde(default)]
    pub id: Option<String>,
}

impl WorkspaceUser {
    /// The user's numeric unique id: `id` when the world gives one, else derived from the email.
    pub fn unique_id(&self) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| numeric_id(&self.email.to_ascii_lowercase()))
    }
}

/// A user with an OAuth client and refresh token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizedUser {
    /// The user's email.
    pub email: String,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: String,
    /// The refresh token.
    pub refresh_token: String,
    /// Scopes the user consented to; empty means any.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The `quota_project_id` of the user's credential file (optional, as in gcloud's).
    #[serde(default)]
    pub quota_project_id: Option<String>,
}

impl AuthorizedUser {
    /// The name of the user's credential file, `DIR/users/<name>.json`: the email's local part.
    pub fn file_name(&self) -> &str {
        self.email.split('@').next().unwrap_or_default()
    }
}

/// A secret string (a client secret, an AWS session token) that `Debug` never shows.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// AWS credentials known to the emulated AWS STS.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsCredential {
    /// `AKIA...` (long-term) / `ASIA...` (temporary).
    pub access_key_id: String,
    /// The secret used for SigV4.
    pub secret_access_key: String,
    /// The session token of temporary credentials: when set, a signed request must carry it
    /// as a signed `x-amz-security-token` header, as AWS requires. Without it, any (or no)
    /// session token is accepted.
    #[serde(default)]
    pub session_token: Option<Secret>,
    /// The caller ARN GetCallerIdentity would return.
    pub arn: String,
}

impl std::fmt::Debug for AwsCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredential")
            .field("access_key_id", &self.access_key_id)
            .field("arn", &self.arn)
            .finish_non_exhaustive()
    }
}

impl AwsCredential {
    /// The AWS account id from the ARN.
    pub fn account_id(&self) -> &str {
        self.arn.split(':').nth(4).unwrap_or_default()
    }

    /// The IAM role of the ARN: `ROLE` of `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION` or
    /// `arn:aws:iam::ACCOUNT:role/ROLE`.
    pub fn role_name(&self) -> Option<&str> {
        let resource = self.arn.splitn(6, ':').nth(5)?;
        let mut parts = resource.split('/');
        let name = match parts.next()? {
            "assumed-role" | "role" => parts.next()?,
            _ => return None,
        };
        (!name.is_empty()).then_some(name)
    }
}

/// The EC2 instance of the emulated instance metadata service (IMDSv2), whose instance role
/// credentials are one of the world's `[[aws_credentials]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsInstance {
    /// The access key id of the `[[aws_credentials]]` entry served as the instance role's
    /// credentials; its ARN names the role (`assumed-role/ROLE/...`).
    pub access_key_id: String,
    /// The availability zone, e.g. `us-east-2b` (the region is it without the last letter).
    #[serde(default = "default_availability_zone")]
    pub availability_zone: String,
    /// The instance id.
    #[serde(default = "default_aws_instance_id")]
    pub instance_id: String,
}

impl AwsInstance {
    /// The region: the availability zone without its last letter (`us-east-2b` → `us-east-2`).
    pub fn region(&self) -> &str {
        let zone = self.availability_zone.as_str();
        zone.get(..zone.len().saturating_sub(1)).unwrap_or_default()
    }
}

fn default_availability_zone() -> String {
    DEFAULT_AWS_AVAILABILITY_ZONE.to_owned()
}
fn default_aws_instance_id() -> String {
    DEFAULT_AWS_INSTANCE_ID.to_owned()
}

/// A workload identity pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadIdentityPool {
    /// The owning project's number.
    pub project_number: String,
    /// Pool id.
    pub pool: String,
    /// A disabled pool rejects every exchange (`invalid_target`).
    #[serde(default)]
    pub disabled: bool,
    /// Providers of the pool.
    #[serde(default)]
    pub providers: Vec<Provider>,
}

/// A workforce pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkforcePool {
    /// Pool id.
    pub pool: String,
    /// A disabled pool rejects every exchange (`invalid_target`).
    #[serde(default)]
    pub disabled: bool,
    /// Providers of the pool.
    #[serde(default)]
    pub providers: Vec<Provider>,
}

/// What kind of identity provider a [`Provider`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OIDC: `issuer` with `jwks_json` or `generate_issuer_key`.
    Oidc,
    /// AWS: `aws_account_id`.
    Aws,
    /// X.509: `trust_anchors_pem` or `generate_ca`.
    X509,
}

/// An identity provider of a pool: OIDC (issuer + JWKS), AWS, or X.509 (a trust store).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Provider id.
    pub id: String,
    /// OIDC issuer (`iss` of subject tokens).
    #[serde(default)]
    pub issuer: Option<String>,
    /// The issuer's JWKS as JSON.
    #[serde(default)]
    pub jwks_json: Option<String>,
    /// OIDC: instead of `jwks_json`, the emulator generates the issuer's RSA-2048 signing key
    /// at start (reused from `DIR/federation/<id>-issuer.pem` when present) and trusts its
    /// JWKS; tests mint subject tokens with it (`RunningEmulator::mint_oidc_token`).
    #[serde(default)]
    pub generate_issuer_key: bool,
    /// OIDC: instead of `jwks_json`, trust the ID tokens Google signs (here: the emulator's own
    /// ID-token keys, as published at `/oauth2/v3/certs`); `issuer` must be
    /// [`GOOGLE_ISSUER`]. This is how a provider accepts a Google service account's ID token,
    /// for example one `tokenctl executable-source` prints.
    #[serde(default)]
    pub trust_google_id_tokens: bool,
    /// Accepted `aud` values; empty means `https://iam.googleapis.com/<provider name>`.
    #[serde(default)]
    pub allowed_audiences: Vec<String>,
    /// The attribute condition (a CEL subset).
    #[serde(default)]
    pub attribute_condition: Option<String>,
    /// What is mapped to `google.subject`: for OIDC the claim (default `sub`); for X.509 a
    /// path of the certificate assertion, `subject.dn.cn` (the default, the leaf's subject
    /// common name) or `san.uri` (its first URI SAN, e.g. a SPIFFE ID), see the README.
    /// Ignored for AWS (the caller's ARN).
    #[serde(default)]
    pub subject_claim: Option<String>,
    /// For AWS providers: the AWS account whose callers are accepted.
    #[serde(default)]
    pub aws_account_id: Option<String>,
    /// X.509: the trust anchors (root CAs) of the provider's trust store, PEM (one or more
    /// certificates).
    #[serde(default)]
    pub trust_anchors_pem: Option<String>,
    /// X.509: intermediate CAs of the trust store, PEM (optional).
    #[serde(default)]
    pub intermediates_pem: Option<String>,
    /// X.509: instead of `trust_anchors_pem`, the emulator generates a CA at start, trusts
    /// it, and issues a workload certificate from it (`DIR/federation/<id>/`).
    #[serde(default)]
    pub generate_ca: bool,
    /// X.509 with `generate_ca`: the subject common name of the generated workload
    /// certificate (default `dev-workload`).
    #[serde(default)]
    pub workload_common_name: Option<String>,
    /// X.509 with `generate_ca`: the URI SAN (SPIFFE ID) of the generated workload
    /// certificate (default `spiffe://dev.token-broker.local/workload/dev-workload`).
    #[serde(default)]
    pub workload_spiffe_id: Option<String>,
    /// Workforce providers: the OAuth client STS accepts as client authentication (HTTP
    /// Basic, or `client_id`/`client_secret` in the body).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Workforce providers: the secret of `client_id`.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// A disabled provider rejects every exchange.
    #[serde(default)]
    pub disabled: bool,
}

/// The assertion paths an X.509 provider may map to `google.subject`.
pub const X509_SUBJECT_PATHS: [&str; 4] = ["subject.dn.cn", "san.uri", "san.dns", "subject.dn.o"];

impl Provider {
    /// A provider with this id and nothing else set (a starting point for struct updates).
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            issuer: None,
            jwks_json: None,
            generate_issuer_key: false,
            trust_google_id_tokens: false,
            allowed_audiences: Vec::new(),
            attribute_condition: None,
            subject_claim: None,
            aws_account_id: None,
            trust_anchors_pem: None,
            intermediates_pem: None,
            generate_ca: false,
            workload_common_name: None,
            workload_spiffe_id: None,
            client_id: None,
            client_secret: None,
            disabled: false,
        }
    }

    /// The provider's kind, from the fields set (validation makes it unambiguous).
    pub fn kind(&self) -> ProviderKind {
        if self.aws_account_id.is_some() {
            ProviderKind::Aws
        } else if self.trust_anchors_pem.is_some() || self.generate_ca {
            ProviderKind::X509
        } else {
            ProviderKind::Oidc
        }
    }

    /// What `google.subject` is mapped from: the OIDC claim (default `sub`) or the X.509
    /// assertion path (default `subject.dn.cn`).
    pub fn subject_source(&self) -> &str {
        match (&self.subject_claim, self.kind()) {
            (Some(claim), _) => claim,
            (None, ProviderKind::X509) => "subject.dn.cn",
            (None, _) => "sub",
        }
    }

    /// The common name of the workload certificate `generate_ca` issues.
    pub fn workload_common_name(&self) -> &str {
        self.workload_common_name
            .as_deref()
            .unwrap_or(DEFAULT_WORKLOAD_COMMON_NAME)
    }

    /// The URI SAN of the workload certificate `generate_ca` issues.
    pub fn workload_spiffe_id(&self) -> &str {
        self.workload_spiffe_id
            .as_deref()
            .unwrap_or(DEFAULT_WORKLOAD_SPIFFE_ID)
    }

    /// Whether the emulator generates key material for this provider (an issuer key or a CA),
    /// written under `DIR/federation/`.
    pub fn is_generated(&self) -> bool {
        self.generate_issuer_key || self.generate_ca
    }

    fn validate(&self, workforce: bool) -> Result<(), WorldError> {
        let invalid = |why: &str| Err(WorldError::Invalid(format!("provider {}: {why}", self.id)));
        let safe_id = !self.id.is_empty()
            && self.id.len() <= 63
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if self.is_generated() && !safe_id {
            return invalid(
                "the id of a provider with generated keys (it names files) must be 1 to 63 \
                 lowercase letters, digits and -",
            );
        }
        let oidc = self.issuer.is_some()
            || self.jwks_json.is_some()
            || self.generate_issuer_key
            || self.trust_google_id_tokens;
        let aws = self.aws_account_id.is_some();
        let x509 = self.trust_anchors_pem.is_some()
            || self.intermediates_pem.is_some()
            || self.generate_ca
            || self.workload_common_name.is_some()
            || self.workload_spiffe_id.is_some();
        if usize::from(oidc) + usize::from(aws) + usize::from(x509) != 1 {
            return invalid(
                "needs exactly one kind: issuer with jwks_json or generate_issuer_key (OIDC),                  aws_account_id (AWS), or trust_anchors_pem or generate_ca (X.509)",
            );
        }
        let key_sources = usize::from(self.jwks_json.is_some())
            + usize::from(self.generate_issuer_key)
            + usize::from(self.trust_google_id_tokens);
        if oidc && (self.issuer.is_none() || key_sources != 1) {
            return invalid(
                "an OIDC provider needs issuer and one of jwks_json, generate_issuer_key, trust_google_id_tokens",
            );
        }
        if self.trust_google_id_tokens && self.issuer.as_deref() != Some(GOOGLE_ISSUER) {
            return invalid(
                "trust_google_id_tokens needs issuer = \"https://accounts.google.com\"",
            );
        }
        if x509 {
            if self.trust_anchors_pem.is_some() == self.generate_ca {
                return invalid(
                    "an X.509 provider needs exactly one of trust_anchors_pem, generate_ca",
                );
            }
            if !self.generate_ca
                && (self.workload_common_name.is_some() || self.workload_spiffe_id.is_some())
            {
                return invalid("workload_common_name and workload_spiffe_id need generate_ca");
            }
            if workforce {
                return invalid("workforce pools have no X.509 providers");
            }
            if !X509_SUBJECT_PATHS.contains(&self.subject_source()) {
                return invalid(&format!(
                    "subject_claim of an X.509 provider must be one of {}",
                    X509_SUBJECT_PATHS.join(", ")
                ));
            }
            for (name, pem) in [
                ("trust_anchors_pem", &self.trust_anchors_pem),
                ("intermediates_pem", &self.intermediates_pem),
            ] {
                if let Some(pem) = pem
                    && crate::keys::pem_decode_all(pem, "CERTIFICATE").is_empty()
                {
                    return invalid(&format!("{name} holds no PEM certificate"));
                }
            }
        }
        if aws && workforce {
            return invalid("workforce pools have no AWS providers");
        }
        if self.client_id.is_some() != self.client_secret.is_some() {
            return invalid("client_id and client_secret go together");
        }
        if self.client_id.is_some() && !workforce {
            return invalid(
                "client_id/client_secret (STS client authentication) are for workforce providers",
            );
        }
        if let Some(jwks) = &self.jwks_json {
            serde_json::from_str::<serde_json::Value>(jwks).map_err(|e| {
                WorldError::Invalid(format!("provider {}: jwks_json: {e}", self.id))
            })?;
        }
        if let Some(condition) = &self.attribute_condition {
            crate::cel::Expr::parse(condition).map_err(|e| {
                WorldError::Invalid(format!("provider {}: attribute_condition: {e}", self.id))
            })?;
        }
        Ok(())
    }
}

impl World {
    /// Reads and validates a world file.
    pub fn from_file(path: &Path) -> Result<Self, WorldError> {
        let text = std::fs::read_to_string(path).map_err(|source| WorldError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let world: World = toml::from_str(&text).map_err(|source| WorldError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        world.validate()?;
        Ok(world)
    }

    /// The documented default world (see the crate README).
    pub fn default_world() -> Self {
        let broker = "broker@dev-project.iam.gserviceaccount.com";
        let workload_pool = format!(
            "principalSet://iam.googleapis.com/projects/{DEFAULT_PROJECT_NUMBER}/locations/global/workloadIdentityPools/{DEFAULT_WORKLOAD_POOL}/*"
        );
        let workforce_pool = format!(
            "principalSet://iam.googleapis.com/locations/global/workforcePools/{DEFAULT_WORKFORCE_POOL}/*"
        );
        let target = |email: &str| ServiceAccount {
            email: email.to_owned(),
            key: false,
            dwd: false,
            dwd_scopes: Vec::new(),
            token_creators: vec![format!("serviceAccount:{broker}")],
            allow_extended_lifetime: false,
            disabled: false,
        };
        World {
            projects: vec![Project {
                id: DEFAULT_PROJECT_ID.to_owned(),
                number: DEFAULT_PROJECT_NUMBER.to_owned(),
            }],
            service_accounts: vec![
                ServiceAccount {
                    email: broker.to_owned(),
                    key: true,
                    dwd: true,
                    dwd_scopes: Vec::new(),
                    // Token Creator on itself, as a service account that signs with its own
                    // Google-managed keys (signBlob, signJwt) needs.
                    token_creators: vec![format!("serviceAccount:{broker}")],
                    allow_extended_lifetime: false,
                    disabled: false,
                },
                // Federated identities of the default pools may impersonate reader@.
                ServiceAccount {
                    token_creators: vec![
                        format!("serviceAccount:{broker}"),
                        workload_pool,
                        workforce_pool,
                    ],
                    ..target("reader@dev-project.iam.gserviceaccount.com")
                },
                // Exempted from the one-hour limit by the organization policy
                // `iam.allowServiceAccountCredentialLifetimeExtension`: tokens up to 12 hours.
                ServiceAccount {
                    allow_extended_lifetime: true,
                    ..target("writer@dev-project.iam.gserviceaccount.com")
                },
            ],
            metadata: MetadataInstance::default(),
            workspace_users: [
                "alice@example.com",
                "bob@example.com",
                "carol@example.com",
                DEFAULT_USER,
            ]
            .into_iter()
            .map(|email| WorkspaceUser {
                email: email.to_owned(),
                id: None,
            })
            .collect(),
            authorized_users: vec![AuthorizedUser {
                email: DEFAULT_USER.to_owned(),
                client_id: "dev-client.apps.googleusercontent.com".to_owned(),
                client_secret: "dev-secret".to_owned(),
                refresh_token: "1//dev-refresh-token".to_owned(),
                scopes: GCLOUD_ADC_SCOPES.map(str::to_owned).to_vec(),
                quota_project_id: Some("dev-project".to_owned()),
            }],
            aws_credentials: vec![AwsCredential {
                access_key_id: DEFAULT_AWS_ACCESS_KEY_ID.to_owned(),
                secret_access_key: DEFAULT_AWS_SECRET_ACCESS_KEY.to_owned(),
                session_token: Some(Secret::new(DEFAULT_AWS_SESSION_TOKEN)),
                arn: DEFAULT_AWS_ARN.to_owned(),
            }],
            workload_identity_pools: vec![WorkloadIdentityPool {
                project_number: DEFAULT_PROJECT_NUMBER.to_owned(),
                pool: DEFAULT_WORKLOAD_POOL.to_owned(),
                disabled: false,
                providers: vec![
                    Provider {
                        issuer: Some(DEFAULT_OIDC_ISSUER.to_owned()),
                        generate_issuer_key: true,
                        ..Provider::new(DEFAULT_OIDC_PROVIDER)
                    },
                    Provider {
                        aws_account_id: Some(DEFAULT_AWS_ACCOUNT.to_owned()),
                        ..Provider::new(DEFAULT_AWS_PROVIDER)
                    },
                    Provider {
                        issuer: Some(GOOGLE_ISSUER.to_owned()),
                        trust_google_id_tokens: true,
                        ..Provider::new(DEFAULT_GOOGLE_PROVIDER)
                    },
                    Provider {
                        generate_ca: true,
                        ..Provider::new(DEFAULT_X509_PROVIDER)
                    },
                ],
            }],
            workforce_pools: vec![WorkforcePool {
                pool: DEFAULT_WORKFORCE_POOL.to_owned(),
                disabled: false,
                providers: vec![Provider {
                    issuer: Some(DEFAULT_WORKFORCE_ISSUER.to_owned()),
                    generate_issuer_key: true,
                    client_id: Some(DEFAULT_WORKFORCE_CLIENT_ID.to_owned()),
                    client_secret: Some(Secret::new(DEFAULT_WORKFORCE_CLIENT_SECRET)),
                    ..Provider::new(DEFAULT_WORKFORCE_PROVIDER)
                }],
            }],
            aws_instance: Some(AwsInstance {
                access_key_id: DEFAULT_AWS_ACCESS_KEY_ID.to_owned(),
                availability_zone: DEFAULT_AWS_AVAILABILITY_ZONE.to_owned(),
                instance_id: DEFAULT_AWS_INSTANCE_ID.to_owned(),
            }),
        }
    }

    /// Checks references between the parts of the world.
    pub fn validate(&self) -> Result<(), WorldError> {
        let mut emails = HashSet::new();
        for account in &self.service_accounts {
            if account.account_id().is_empty() || account.project_id().is_empty() {
                return Err(WorldError::Invalid(format!(
                    "service account {:?} is not NAME@PROJECT.iam.gserviceaccount.com",
                    account.email
                )));
            }
            if !self.projects.iter().any(|p| p.id == account.project_id()) {
                return Err(WorldError::Invalid(format!(
                    "service account {} names project {:?}, which is not in [[projects]]",
                    account.email,
                    account.project_id()
                )));
            }
            if !emails.insert(account.email.as_str()) {
                return Err(WorldError::Invalid(format!(
                    "service account {} is defined twice",
                    account.email
                )));
            }
        }
        if !emails.contains(self.metadata.service_account.as_str()) {
            return Err(WorldError::Invalid(format!(
                "metadata.service_account {} is not a service account of the world",
                self.metadata.service_account
            )));
        }
        self.validate_users()?;
        for pool in &self.workload_identity_pools {
            if !self
                .projects
                .iter()
                .any(|p| p.number == pool.project_number)
            {
                return Err(WorldError::Invalid(format!(
                    "workload identity pool {} names project number {}, which is not in [[projects]]",
                    pool.pool, pool.project_number
                )));
            }
        }
        self.validate_federation()
    }

    /// Checks pools, providers, AWS credentials and the AWS instance.
    fn validate_federation(&self) -> Result<(), WorldError> {
        let mut pools = HashSet::new();
        for pool in &self.workload_identity_pools {
            if !pools.insert((pool.project_number.as_str(), pool.pool.as_str())) {
                return Err(WorldError::Invalid(format!(
                    "workload identity pool {} is defined twice",
                    pool.pool
                )));
            }
        }
        let mut workforce_pools = HashSet::new();
        for pool in &self.workforce_pools {
            if !workforce_pools.insert(pool.pool.as_str()) {
                return Err(WorldError::Invalid(format!(
                    "workforce pool {} is defined twice",
                    pool.pool
                )));
            }
        }
        let providers = self
            .workload_identity_pools
            .iter()
            .map(|p| (false, &p.pool, &p.providers))
            .chain(
                self.workforce_pools
                    .iter()
                    .map(|p| (true, &p.pool, &p.providers)),
            );
        let mut generated = HashSet::new();
        for (workforce, pool, providers) in providers {
            let mut ids = HashSet::new();
            for provider in providers {
                provider.validate(workforce)?;
                if !ids.insert(provider.id.as_str()) {
                    return Err(WorldError::Invalid(format!(
                        "provider {} is defined twice in pool {pool}",
                        provider.id
                    )));
                }
                // Generated material is written to DIR/federation/<id>...: one name each.
                if provider.is_generated() && !generated.insert(provider.id.as_str()) {
                    return Err(WorldError::Invalid(format!(
                        "provider {}: the ids of providers with generate_issuer_key or \
                         generate_ca must be unique in the world (they name their files)",
                        provider.id
                    )));
                }
            }
        }
        let mut keys = HashSet::new();
        for credential in &self.aws_credentials {
            if !keys.insert(credential.access_key_id.as_str()) {
                return Err(WorldError::Invalid(format!(
                    "AWS access key {} is defined twice",
                    credential.access_key_id
                )));
            }
            if credential.account_id().len() != 12
                || !credential.account_id().bytes().all(|b| b.is_ascii_digit())
            {
                return Err(WorldError::Invalid(format!(
                    "AWS credential {}: arn {:?} names no 12-digit account",
                    credential.access_key_id, credential.arn
                )));
            }
        }
        if let Some(instance) = &self.aws_instance {
            let credential = self
                .aws_credentials
                .iter()
                .find(|c| c.access_key_id == instance.access_key_id)
                .ok_or_else(|| {
                    WorldError::Invalid(format!(
                        "aws_instance.access_key_id {} is not one of [[aws_credentials]]",
                        instance.access_key_id
                    ))
                })?;
            if credential.role_name().is_none() {
                return Err(WorldError::Invalid(format!(
                    "aws_instance: the ARN {} of its credential names no role \
                     (arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION)",
                    credential.arn
                )));
            }
            let zone = instance.availability_zone.as_bytes();
            if zone.len() < 2
                || !zone[zone.len() - 1].is_ascii_lowercase()
                || !zone[zone.len() - 2].is_ascii_digit()
            {
                return Err(WorldError::Invalid(format!(
                    "aws_instance.availability_zone {:?} is not a zone such as us-east-2b",
                    instance.availability_zone
                )));
            }
        }
        Ok(())
    }

    /// Checks the Workspace directory (emails, unique emails and ids) and the authorized users
    /// (emails, and credential file names that are safe and distinct).
    fn validate_users(&self) -> Result<(), WorldError> {
        let mut emails = HashSet::new();
        let mut ids = HashSet::new();
        for user in &self.workspace_users {
            if !looks_like_email(&user.email) {
                return Err(WorldError::Invalid(format!(
                    "workspace user {:?} is not an email address",
                    user.email
                )));
            }
            if !emails.insert(user.email.to_ascii_lowercase()) {
                return Err(WorldError::Invalid(format!(
                    "workspace user {} is listed twice",
                    user.email
                )));
            }
            if let Some(id) = &user.id
                && (id.is_empty() || id.len() > 30 || !id.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(WorldError::Invalid(format!(
                    "workspace user {}: id {id:?} is not a numeric id (1 to 30 digits)",
                    user.email
                )));
            }
            if !ids.insert(user.unique_id()) {
                return Err(WorldError::Invalid(format!(
                    "workspace user {}: id {} is another user's",
                    user.email,
                    user.unique_id()
                )));
            }
        }
        let mut files = HashSet::new();
        for user in &self.authorized_users {
            let name = user.file_name();
            let safe_name = !name.starts_with('.')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
            if !looks_like_email(&user.email) || !safe_name {
                return Err(WorldError::Invalid(format!(
                    "authorized user {:?} is not an email address whose local part (the name \
                     of its file users/<name>.json) is letters, digits and ._+-",
                    user.email
                )));
            }
            if !files.insert(name.to_ascii_lowercase()) {
                return Err(WorldError::Invalid(format!(
                    "authorized user {}: another authorized user's file is also users/{name}.json",
                    user.email
                )));
            }
        }
        Ok(())
    }

    /// The Workspace user with this email (case-insensitive) or numeric unique id.
    pub fn workspace_user(&self, email_or_id: &str) -> Option<&WorkspaceUser> {
        self.workspace_users.iter().find(|u| {
            u.email.eq_ignore_ascii_case(email_or_id)
                || (email_or_id.bytes().all(|b| b.is_ascii_digit()) && u.unique_id() == email_or_id)
        })
    }

    /// The numeric unique id of the user with this email: the directory's id when the user is
    /// listed in `workspace_users`, else a stable id derived from the lowercased email.
    pub fn user_id(&self, email: &str) -> String {
        self.workspace_user(email).map_or_else(
            || numeric_id(&email.to_ascii_lowercase()),
            WorkspaceUser::unique_id,
        )
    }

    /// The authorized user with this email (case-insensitive).
    pub fn authorized_user(&self, email: &str) -> Option<&AuthorizedUser> {
        self.authorized_users
            .iter()
            .find(|u| u.email.eq_ignore_ascii_case(email))
    }

    /// The service account with this email or numeric unique id.
    pub fn service_account(&self, email_or_id: &str) -> Option<&ServiceAccount> {
        self.service_accounts
            .iter()
            .find(|a| a.email == email_or_id || a.unique_id() == email_or_id)
    }

    /// The project with this id.
    pub fn project(&self, id: &str) -> Option<&Project> {
        self.projects.iter().find(|p| p.id == id)
    }
}

/// Whether `value` looks like an email address: a non-empty local part, `@`, a dotted domain,
/// no whitespace.
pub(crate) fn looks_like_email(value: &str) -> bool {
    !value.contains(char::is_whitespace)
        && matches!(value.split_once('@'), Some((local, domain))
            if !local.is_empty() && !domain.contains('@') && domain.contains('.')
                && !domain.starts_with('.') && !domain.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_world_is_valid() {
        World::default_world().validate().expect("default world");
    }

    #[test]
    fn unique_ids_are_21_digits_and_stable() {
        let world = World::default_world();
        let a = world.service_accounts[0].unique_id();
        assert_eq!(a.len(), 21);
        assert!(a.chars().all(|c| c.is_ascii_digit()));
        assert_eq!(a, world.service_accounts[0].unique_id());
        assert_ne!(a, world.service_accounts[1].unique_id());
    }

    #[test]
    fn the_default_world_has_a_directory_and_an_authorized_user_in_it() {
        let world = World::default_world();
        for user in [
            "alice@example.com",
            "bob@example.com",
            "carol@example.com",
            DEFAULT_USER,
        ] {
            assert!(world.workspace_user(user).is_some(), "{user}");
        }
        let dev = world.authorized_user(DEFAULT_USER).expect("dev-user");
        assert_eq!(dev.file_name(), "dev-user");
        assert!(dev.scopes.iter().any(|s| s == CLOUD_PLATFORM_SCOPE));
        assert!(world.authorized_user("Dev-User@Example.com").is_some());
    }

    #[test]
    fn users_are_found_by_any_case_of_the_email_or_by_numeric_id() {
        let world: World = toml::from_str(
            "[[workspace_users]]\nemail = 'Alice@Example.com'\n\
             [[workspace_users]]\nemail = 'bob@example.com'\nid = '42'\n",
        )
        .expect("parses");
        let alice = world.workspace_user("alice@EXAMPLE.com").expect("alice");
        assert_eq!(alice.email, "Alice@Example.com");
        let id = alice.unique_id();
        assert_eq!(id, numeric_id("alice@example.com"));
        assert_eq!(id.len(), 21);
        assert_eq!(
            world.workspace_user(&id).map(|u| u.email.as_str()),
            Some("Alice@Example.com")
        );
        assert_eq!(
            world.workspace_user("42").map(|u| u.email.as_str()),
            Some("bob@example.com")
        );
        assert_eq!(world.user_id("BOB@example.com"), "42");
        assert!(world.workspace_user("carol@example.com").is_none());
        assert!(world.workspace_user("").is_none());
        assert_eq!(
            world.user_id("Carol@Example.com"),
            numeric_id("carol@example.com"),
            "users outside the directory get a stable id too"
        );
    }

    #[test]
    fn invalid_users_are_rejected() {
        let invalid = [
            ("[[workspace_users]]\nemail = 'alice'\n", "not an email"),
            (
                "[[workspace_users]]\nemail = 'a@example.com'\n[[workspace_users]]\nemail = 'A@example.com'\n",
                "twice",
            ),
            (
                "[[workspace_users]]\nemail = 'a@example.com'\nid = '12x'\n",
                "numeric id",
            ),
            (
                "[[workspace_users]]\nemail = 'a@example.com'\nid = '7'\n[[workspace_users]]\nemail = 'b@example.com'\nid = '7'\n",
                "another user's",
            ),
            (
                "[[authorized_users]]\nemail = '../x@example.com'\nclient_id = 'c'\nclient_secret = 's'\nrefresh_token = 'r'\n",
                "not an email",
            ),
            (
                "[[authorized_users]]\nemail = 'a@example.com'\nclient_id = 'c'\nclient_secret = 's'\nrefresh_token = 'r'\n\
                 [[authorized_users]]\nemail = 'A@example.org'\nclient_id = 'c'\nclient_secret = 's'\nrefresh_token = 'q'\n",
                "users/A.json",
            ),
        ];
        for (users, why) in invalid {
            let text = format!(
                "[[projects]]\nid = 'p'\nnumber = '1'\n\
                 [[service_accounts]]\nemail = 'a@p.iam.gserviceaccount.com'\n\
                 [metadata]\nservice_account = 'a@p.iam.gserviceaccount.com'\n{users}"
            );
            let world: World = toml::from_str(&text).expect("parses");
            let error = world.validate().expect_err(why).to_string();
            assert!(error.contains(why), "{users}: {error}");
        }
    }

    #[test]
    fn emails_are_recognised() {
        for good in ["a@example.com", "first.last+tag@mail.example.co.uk"] {
            assert!(looks_like_email(good), "{good}");
        }
        for bad in [
            "",
            "alice",
            "@example.com",
            "a@example",
            "a@@example.com",
            "a@b@example.com",
            "a b@example.com",
            "a@.example.com",
            "a@example.com.",
        ] {
            assert!(!looks_like_email(bad), "{bad}");
        }
    }

    #[test]
    fn unknown_fields_and_dangling_references_are_rejected() {
        let err = toml::from_str::<World>("[[projects]]\nid='p'\nnumber='1'\ncolour='red'\n")
            .expect_err("unknown field");
        assert!(err.to_string().contains("colour"), "{err}");

        let world: World = toml::from_str(
            "[[projects]]\nid='p'\nnumber='1'\n[[service_accounts]]\nemail='a@q.iam.gserviceaccount.com'\n",
        )
        .expect("parses");
        let err = world.validate().expect_err("dangling project");
        assert!(err.to_string().contains("\"q\""), "{err}");
    }
}
