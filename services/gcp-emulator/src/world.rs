//! The emulated world: projects, service accounts, authorized users, identity pools and the
//! metadata server's instance, as read from a TOML file or the documented default.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

/// Google's `cloud-platform` scope.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's `iam` scope, enough for IAM Credentials calls.
pub const IAM_SCOPE: &str = "https://www.googleapis.com/auth/iam";

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
/// users have that shape).
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
}

/// AWS credentials known to the emulated AWS STS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsCredential {
    /// `AKIA...` / `ASIA...`.
    pub access_key_id: String,
    /// The secret used for SigV4.
    pub secret_access_key: String,
    /// The caller ARN GetCallerIdentity would return.
    pub arn: String,
}

impl AwsCredential {
    /// The AWS account id from the ARN.
    pub fn account_id(&self) -> &str {
        self.arn.split(':').nth(4).unwrap_or_default()
    }
}

/// A workload identity pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadIdentityPool {
    /// The owning project's number.
    pub project_number: String,
    /// Pool id.
    pub pool: String,
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
    /// Providers of the pool.
    #[serde(default)]
    pub providers: Vec<Provider>,
}

/// An identity provider of a pool: OIDC (issuer + JWKS) or AWS.
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
    /// Accepted `aud` values; empty means `https://iam.googleapis.com/<provider name>`.
    #[serde(default)]
    pub allowed_audiences: Vec<String>,
    /// The attribute condition (a CEL subset).
    #[serde(default)]
    pub attribute_condition: Option<String>,
    /// The claim mapped to `google.subject`.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// For AWS providers: the AWS account whose callers are accepted.
    #[serde(default)]
    pub aws_account_id: Option<String>,
    /// A disabled provider rejects every exchange.
    #[serde(default)]
    pub disabled: bool,
}

fn default_subject_claim() -> String {
    "sub".to_owned()
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
                id: "dev-project".to_owned(),
                number: "123456789012".to_owned(),
            }],
            service_accounts: vec![
                ServiceAccount {
                    email: broker.to_owned(),
                    key: true,
                    dwd: true,
                    dwd_scopes: Vec::new(),
                    token_creators: Vec::new(),
                    allow_extended_lifetime: false,
                    disabled: false,
                },
                target("reader@dev-project.iam.gserviceaccount.com"),
                target("writer@dev-project.iam.gserviceaccount.com"),
            ],
            metadata: MetadataInstance::default(),
            authorized_users: Vec::new(),
            aws_credentials: Vec::new(),
            workload_identity_pools: Vec::new(),
            workforce_pools: Vec::new(),
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
        let providers = self
            .workload_identity_pools
            .iter()
            .flat_map(|p| &p.providers)
            .chain(self.workforce_pools.iter().flat_map(|p| &p.providers));
        for provider in providers {
            match (
                &provider.aws_account_id,
                &provider.issuer,
                &provider.jwks_json,
            ) {
                (Some(_), None, None) | (None, Some(_), Some(_)) => {}
                _ => {
                    return Err(WorldError::Invalid(format!(
                        "provider {} needs either aws_account_id, or issuer and jwks_json",
                        provider.id
                    )));
                }
            }
            if let Some(jwks) = &provider.jwks_json {
                serde_json::from_str::<serde_json::Value>(jwks).map_err(|e| {
                    WorldError::Invalid(format!("provider {}: jwks_json: {e}", provider.id))
                })?;
            }
            if let Some(condition) = &provider.attribute_condition {
                crate::cel::Expr::parse(condition).map_err(|e| {
                    WorldError::Invalid(format!(
                        "provider {}: attribute_condition: {e}",
                        provider.id
                    ))
                })?;
            }
        }
        Ok(())
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
