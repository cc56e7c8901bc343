//! `tokenctl`: command-line client of the token broker.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use broker_client::{
    AccessToken, BlobSigningRequest, CallOptions, Channel, ClientError, Code, ConnectOptions,
    ExchangeRequest, ExchangedToken, IdToken, IdTokenRequest, ImpersonationRequest,
    JwtSigningRequest, RetryPolicy, Secret, SignedBlob, SignedJwt, TlsFiles, TokenBrokerClient,
    TokenRequest, connect, exchange_token, generate_id_token, get_access_token, impersonate,
    read_access_boundary, sign_blob, sign_jwt, split_scopes, token_type, whole_seconds_ceil,
};
use clap::error::ErrorKind;
use clap::{ArgAction, Args, CommandFactory as _, Parser, Subcommand, ValueEnum};
use zeroize::Zeroize as _;

mod external_account;
mod files;
mod write;

const LONG_ABOUT: &str = "\
Command-line client of the token broker. It authenticates with a TLS client certificate and
prints short-lived Google credentials: access tokens (also of impersonated service accounts),
ID tokens, and JWTs and signatures made with a service account's Google-managed key, as
gcloud's print-access-token, print-identity-token, sign-jwt and sign-blob do. It also exchanges
external tokens for Google access tokens (workload and workforce identity federation) and
downscopes access tokens with Credential Access Boundaries, at Google's Security Token Service.

For programs that cannot call the broker, it delivers tokens the ways Google's tools expect:
as the executable credential source of an external_account (workload identity federation)
configuration (executable-source, and print-external-account-config to write one), and as a
token file kept fresh (write).

The broker's address and the client's TLS files come from flags or from the environment
(TOKEN_BROKER_ADDR, TOKEN_BROKER_CA, TOKEN_BROKER_CERT, TOKEN_BROKER_KEY).

Exit codes:
  0  success
  1  any other error (TLS files, TLS handshake, NOT_FOUND, FAILED_PRECONDITION, an invalid
     response, an output file that cannot be written, ...)
  2  usage error (bad flags or settings, an input file that cannot be read, an empty token
     file, an access boundary file that is not a boundary)
  3  permission denied: PERMISSION_DENIED or UNAUTHENTICATED
  4  invalid argument: INVALID_ARGUMENT (a field, a JWT payload, a blob the broker refused, a
     subject token Google rejected)
  5  unavailable, retry later: UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, or the
     broker could not be reached";

/// The help heading of the flags every command takes.
const GLOBAL: &str = "Connection options";

/// Exit code of any error without a more specific one.
const EXIT_GENERIC: u8 = 1;
/// Exit code of usage errors (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;
/// Exit code of PERMISSION_DENIED and UNAUTHENTICATED.
const EXIT_PERMISSION_DENIED: u8 = 3;
/// Exit code of INVALID_ARGUMENT.
const EXIT_INVALID_ARGUMENT: u8 = 4;
/// Exit code of UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED and connection failures.
const EXIT_UNAVAILABLE: u8 = 5;

#[derive(Debug, Parser)]
#[command(
    name = "tokenctl",
    version,
    about = "Command-line client of the token broker",
    long_about = LONG_ABOUT
)]
struct Cli {
    /// The broker's address: https://host:port or host:port.
    #[arg(long, env = "TOKEN_BROKER_ADDR", global = true, value_name = "ADDR", help_heading = GLOBAL)]
    addr: Option<String>,

    /// PEM file with the CA certificate(s) that verify the broker's certificate.
    #[arg(long, env = "TOKEN_BROKER_CA", global = true, value_name = "FILE", help_heading = GLOBAL)]
    ca: Option<PathBuf>,

    /// PEM file with the client certificate (chain).
    #[arg(long, env = "TOKEN_BROKER_CERT", global = true, value_name = "FILE", help_heading = GLOBAL)]
    cert: Option<PathBuf>,

    /// PEM file with the client certificate's private key.
    #[arg(long, env = "TOKEN_BROKER_KEY", global = true, value_name = "FILE", help_heading = GLOBAL)]
    key: Option<PathBuf>,

    /// Bound on connecting, and on the request including its retries (for example 10s, 1m).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration, value_name = "DURATION", help_heading = GLOBAL)]
    timeout: Duration,

    /// Fail at once on UNAVAILABLE or RESOURCE_EXHAUSTED instead of retrying after the
    /// broker's RetryInfo delay (for scripts that retry themselves).
    #[arg(long, global = true, help_heading = GLOBAL)]
    no_retry: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a Google OAuth 2.0 access token (like `gcloud auth print-access-token`).
    PrintAccessToken(PrintAccessToken),
    /// Print a Google-signed ID token for an audience (like `gcloud auth print-identity-token`).
    #[command(long_about = "\
Print a Google-signed OpenID Connect ID token for an audience, like `gcloud auth
print-identity-token`: send it as `Authorization: Bearer` to a Cloud Run service, a Cloud
Function or anything else that verifies Google ID tokens.

The token identifies the credential's own identity, or with --impersonate-service-account a
service account the credential impersonates (IAM generateIdToken). With --format text only the
JWT is printed.")]
    PrintIdentityToken(PrintIdentityToken),
    /// Print an access token of another service account, by impersonation (IAM
    /// generateAccessToken).
    #[command(long_about = "\
Print an OAuth 2.0 access token of another service account, minted by IAM generateAccessToken
with the identity of the broker credential (like `gcloud auth print-access-token
--impersonate-service-account`). The credential's identity needs the Service Account Token
Creator role on the first delegate, each delegate on the next, and the last (or the
credential itself, without delegates) on the target.

With --format text only the token is printed.")]
    Impersonate(Impersonate),
    /// Sign JWT claims with a service account's Google-managed key (like `gcloud iam
    /// service-accounts sign-jwt`).
    #[command(long_about = "\
Sign JWT claims with a service account's Google-managed key (IAM signJwt), like `gcloud iam
service-accounts sign-jwt`. The claims are a JSON object read from PAYLOAD_FILE, or from
standard input when it is absent or `-`; the broker checks them (a JSON object of at most
64 KiB whose `exp`, if any, is at most 12 hours ahead) and answers INVALID_ARGUMENT (exit 4)
otherwise.

With --format text only the signed JWT is printed; with --format json, also the ID of the key
that signed (the JWT's `kid`).")]
    SignJwt(SignJwt),
    /// Sign bytes with a service account's Google-managed key (like `gcloud iam
    /// service-accounts sign-blob`).
    #[command(long_about = "\
Sign bytes with a service account's Google-managed key (IAM signBlob: RSA-SHA256, PKCS#1 v1.5),
like `gcloud iam service-accounts sign-blob`. The bytes (1 byte to 64 KiB) are read from
INPUT_FILE, or from standard input when it is absent or `-`.

With --format text the signature is printed in base64, or written as raw bytes to --output;
with --format json, a JSON object with the key ID and the base64 signature is printed (and
--output still receives the raw bytes). The certificate of the key is at
https://www.googleapis.com/service_accounts/v1/metadata/x509/SERVICE_ACCOUNT_EMAIL.")]
    SignBlob(SignBlob),
    /// Exchange a token for a Google access token at Google's Security Token Service (workload
    /// or workforce identity federation).
    #[command(long_about = EXCHANGE_ABOUT, after_help = EXCHANGE_EXAMPLES)]
    Exchange(Exchange),
    /// Downscope a Google access token with a Credential Access Boundary.
    #[command(long_about = DOWNSCOPE_ABOUT, after_help = DOWNSCOPE_EXAMPLES)]
    Downscope(Downscope),
    /// Be the executable credential source of an external_account configuration: print a
    /// broker-issued ID token in Google's executable-response format.
    #[command(long_about = external_account::EXECUTABLE_SOURCE_ABOUT, after_help = external_account::PROVIDER_SETUP)]
    ExecutableSource(external_account::ExecutableSource),
    /// Print an external_account (workload identity federation) configuration whose
    /// executable credential source is this tokenctl.
    #[command(long_about = external_account::PRINT_CONFIG_ABOUT, after_help = external_account::PROVIDER_SETUP)]
    PrintExternalAccountConfig(external_account::PrintExternalAccountConfig),
    /// Keep a file holding a fresh access or ID token (atomic replace, refresh ahead of
    /// expiry).
    #[command(long_about = write::WRITE_ABOUT, after_help = write::WRITE_EXAMPLES)]
    Write(write::Write),
}

const EXCHANGE_ABOUT: &str = "\
Exchange a token for a Google access token at Google's Security Token Service (an RFC 8693
token exchange, as https://sts.googleapis.com/v1/token does), for workload or workforce
identity federation: an OIDC ID token or other JWT, a SAML assertion or a signed AWS request,
for the identity provider named by --audience (or by the external_account --credential, which
may also impersonate a service account with the exchanged token).

The subject token is read from --subject-token-file, or from standard input with `-`, as it is
except for trailing line breaks (\\n, \\r\\n), which are removed. An empty or unreadable file is a
usage error (exit 2); Google verifies the token itself (a rejected one is INVALID_ARGUMENT,
exit 4). The token is never printed, not even in errors.

With --format text only the access token is printed; with --format json, also its type, expiry,
principal and credential.";

const EXCHANGE_EXAMPLES: &str = "\
Examples:
  # Workload identity federation with a Kubernetes projected service-account token
  tokenctl exchange --subject-token-type jwt \\
      --subject-token-file /var/run/secrets/tokens/gcp-token \\
      --audience //iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/my-pool/providers/my-provider

  # Through a configured external_account credential (its audience, its impersonation), a
  # Vault-issued OIDC token from standard input, as JSON
  vault read -field=token identity/oidc/token/gcp | tokenctl exchange \\
      --credential vault-federation --subject-token-type id_token --subject-token-file - \\
      --format json

  # Workforce identity federation, billed to a project, downscoped to one bucket
  tokenctl exchange --subject-token-type saml2 --subject-token-file assertion.b64 \\
      --audience //iam.googleapis.com/locations/global/workforcePools/my-pool/providers/my-saml \\
      --user-project my-project --boundary bucket-reader.json";

const DOWNSCOPE_ABOUT: &str = "\
Downscope a Google access token with a Credential Access Boundary: exchange it at Google's
Security Token Service for a token that can do at most what the boundary's rules allow (Cloud
Storage enforces them). The downscoped token expires with the token it was made from, so
--format json shows no expiry.

The access token is read from --access-token-file, or from standard input when that is absent
or `-`, as it is except for trailing line breaks. An empty or unreadable file is a usage error
(exit 2).

The boundary is a JSON file in Google's format:

  {\"accessBoundary\": {\"accessBoundaryRules\": [{
    \"availableResource\": \"//storage.googleapis.com/projects/_/buckets/BUCKET\",
    \"availablePermissions\": [\"inRole:roles/storage.objectViewer\"],
    \"availabilityCondition\": {
      \"expression\": \"resource.name.startsWith('projects/_/buckets/BUCKET/objects/reports/')\",
      \"title\": \"reports only\"}}]}}

or its inner object {\"accessBoundaryRules\": [...]}. tokenctl checks its shape and refuses
unknown keys (exit 2, naming the key at fault); the broker checks its limits (1 to 10 rules,
roles written inRole:..., lengths) and its policy (INVALID_ARGUMENT exit 4, PERMISSION_DENIED
exit 3).";

const DOWNSCOPE_EXAMPLES: &str = "\
Examples:
  # A token that can only read the objects of one bucket
  tokenctl print-access-token | tokenctl downscope --boundary bucket-reader.json

  # From a file, as JSON
  tokenctl downscope --boundary reports-only.json --access-token-file token.txt --format json";

#[derive(Debug, Args)]
struct PrintAccessToken {
    /// OAuth 2.0 scopes; repeat the flag or separate with commas. Default: the broker's
    /// (https://www.googleapis.com/auth/cloud-platform).
    #[arg(long = "scopes", alias = "scope", action = ArgAction::Append, value_name = "SCOPE[,SCOPE...]")]
    scopes: Vec<String>,

    /// The broker credential to use. Default: the credential of the caller's default grant.
    #[arg(long, value_name = "NAME")]
    credential: Option<String>,

    /// Domain-wide delegation: the Google Workspace user to act as.
    #[arg(long, value_name = "EMAIL")]
    subject: Option<String>,

    /// Lifetime of a newly minted token, in whole seconds (for example 30m, 1h).
    #[arg(long, value_parser = parse_whole_seconds, value_name = "DURATION")]
    lifetime: Option<Duration>,

    /// The least validity the token must have left (broker default 5m).
    #[arg(long = "min-remaining", value_parser = parse_whole_seconds, value_name = "DURATION")]
    min_remaining: Option<Duration>,

    /// Output format: `text` prints only the token; `json` prints it with its metadata.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Args)]
struct PrintIdentityToken {
    /// The audience of the token (its `aud` claim): usually the URL of the receiving service,
    /// for example https://hello-abc123-uc.a.run.app.
    #[arg(long = "audiences", alias = "audience", value_name = "AUDIENCE")]
    audience: String,

    /// Ask for the `email` and `email_verified` claims (always present without
    /// impersonation).
    #[arg(long)]
    include_email: bool,

    /// The service account to get the token for, by impersonation. A comma-separated list is a
    /// delegation chain, as in gcloud: the last entry is the target and the ones before it are
    /// the delegates.
    #[arg(long, value_name = "EMAIL[,EMAIL...]")]
    impersonate_service_account: Option<String>,

    /// The delegation chain to the impersonated service account, in order; repeat the flag or
    /// separate with commas. Needs --impersonate-service-account.
    #[arg(
        long,
        action = ArgAction::Append,
        requires = "impersonate_service_account",
        value_name = "EMAIL[,EMAIL...]"
    )]
    delegates: Vec<String>,

    /// The broker credential to use (the base credential when impersonating). Default: the
    /// credential of the caller's default grant.
    #[arg(long, value_name = "NAME")]
    credential: Option<String>,

    /// Output format: `text` prints only the ID token; `json` prints it with its metadata.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Args)]
struct Impersonate {
    /// The email of the service account to impersonate.
    #[arg(
        long = "target",
        alias = "target-service-account",
        value_name = "EMAIL"
    )]
    target: String,

    /// The delegation chain to the target, in order; repeat the flag or separate with commas.
    #[arg(long, action = ArgAction::Append, value_name = "EMAIL[,EMAIL...]")]
    delegates: Vec<String>,

    /// OAuth 2.0 scopes; repeat the flag or separate with commas. Default:
    /// https://www.googleapis.com/auth/cloud-platform.
    #[arg(long = "scopes", alias = "scope", action = ArgAction::Append, value_name = "SCOPE[,SCOPE...]")]
    scopes: Vec<String>,

    /// Lifetime of a newly minted token, in whole seconds, at most 12h (broker default 1h;
    /// more than 1h only where the organization policy allows it).
    #[arg(long, value_parser = parse_whole_seconds, value_name = "DURATION")]
    lifetime: Option<Duration>,

    /// The least validity the token must have left (broker default 5m).
    #[arg(long = "min-remaining", value_parser = parse_whole_seconds, value_name = "DURATION")]
    min_remaining: Option<Duration>,

    /// The base credential, whose identity impersonates. Default: the credential of the
    /// caller's default grant.
    #[arg(long, value_name = "NAME")]
    credential: Option<String>,

    /// Output format: `text` prints only the token; `json` prints it with its metadata.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Args)]
struct SignJwt {
    /// The email of the service account whose Google-managed key signs.
    #[arg(long = "service-account", alias = "iam-account", value_name = "EMAIL")]
    service_account: String,

    /// The delegation chain to the service account, in order; repeat the flag or separate
    /// with commas.
    #[arg(long, action = ArgAction::Append, value_name = "EMAIL[,EMAIL...]")]
    delegates: Vec<String>,

    /// The broker credential whose identity calls IAM. Default: the credential of the
    /// caller's default grant.
    #[arg(long, value_name = "NAME")]
    credential: Option<String>,

    /// The file with the JWT claims (a JSON object). Default, or `-`: standard input.
    #[arg(value_name = "PAYLOAD_FILE")]
    payload_file: Option<PathBuf>,

    /// Output format: `text` prints only the signed JWT; `json` prints it with the key ID.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Args)]
struct SignBlob {
    /// The email of the service account whose Google-managed key signs.
    #[arg(long = "service-account", alias = "iam-account", value_name = "EMAIL")]
    service_account: String,

    /// The delegation chain to the service account, in order; repeat the flag or separate
    /// with commas.
    #[arg(long, action = ArgAction::Append, value_name = "EMAIL[,EMAIL...]")]
    delegates: Vec<String>,

    /// The broker credential whose identity calls IAM. Default: the credential of the
    /// caller's default grant.
    #[arg(long, value_name = "NAME")]
    credential: Option<String>,

    /// The file with the bytes to sign. Default, or `-`: standard input.
    #[arg(value_name = "INPUT_FILE")]
    input_file: Option<PathBuf>,

    /// Write the raw signature bytes to this file (`-`: standard output) instead of printing
    /// it in base64.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Output format: `text` prints only the base64 signature (nothing with --output); `json`
    /// prints it with the key ID.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Args)]
struct Exchange {
    /// The file with the token to exchange (`-`: standard input). Trailing line breaks are
    /// removed.
    #[arg(long, value_name = "FILE")]
    subject_token_file: PathBuf,

    /// The type of the subject token: jwt, id_token, saml2, aws4_request, access_token, or a
    /// token-type URN such as urn:ietf:params:oauth:token-type:jwt.
    #[arg(long, value_parser = parse_token_type, value_name = "TYPE")]
    subject_token_type: String,

    /// The identity provider, for example
    /// //iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER.
    /// Required unless --credential supplies it.
    #[arg(long, value_name = "AUDIENCE")]
    audience: Option<String>,

    /// OAuth 2.0 scopes of the issued token; repeat the flag or separate with commas. Default:
    /// https://www.googleapis.com/auth/cloud-platform.
    #[arg(long = "scopes", alias = "scope", action = ArgAction::Append, value_name = "SCOPE[,SCOPE...]")]
    scopes: Vec<String>,

    /// The project a workforce identity federation exchange is billed to (Google's
    /// userProject).
    #[arg(long, value_name = "PROJECT")]
    user_project: Option<String>,

    /// Downscope the issued token with the Credential Access Boundary in this JSON file
    /// (Google's format; see `tokenctl downscope --help`).
    #[arg(long, value_name = "FILE")]
    boundary: Option<PathBuf>,

    /// An external_account credential of the broker that shapes the exchange (its audience,
    /// workforce client and service-account impersonation). Default: a plain exchange.
    #[arg(long, value_name = "NAME")]
    credential: Option<String>,

    /// Output format: `text` prints only the access token; `json` prints it with its metadata.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Args)]
struct Downscope {
    /// The Credential Access Boundary: a JSON file in Google's format.
    #[arg(long, value_name = "FILE")]
    boundary: PathBuf,

    /// The file with the Google access token to downscope. Default, or `-`: standard input.
    /// Trailing line breaks are removed.
    #[arg(long, value_name = "FILE")]
    access_token_file: Option<PathBuf>,

    /// Output format: `text` prints only the downscoped token; `json` prints it with its
    /// metadata.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Only the credential (token, JWT or base64 signature) and a newline.
    Text,
    /// A JSON object with the credential and its metadata (expiry, principal, key ID, ...).
    Json,
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim()).map_err(|error| error.to_string())
}

/// The short names of the subject token types, and their URNs.
const TOKEN_TYPES: [(&str, &str); 5] = [
    ("jwt", token_type::JWT),
    ("id_token", token_type::ID_TOKEN),
    ("saml2", token_type::SAML2),
    ("aws4_request", token_type::AWS4_REQUEST),
    ("access_token", token_type::ACCESS_TOKEN),
];

/// A short name or any `urn:` (the broker names the types it does not accept).
fn parse_token_type(value: &str) -> Result<String, String> {
    let value = value.trim();
    if let Some((_, urn)) = TOKEN_TYPES.iter().find(|(name, _)| *name == value) {
        return Ok((*urn).to_owned());
    }
    if value.starts_with("urn:") {
        return Ok(value.to_owned());
    }
    let names: Vec<&str> = TOKEN_TYPES.iter().map(|(name, _)| *name).collect();
    Err(format!(
        "expected one of {} or a token-type URN",
        names.join(", ")
    ))
}

fn parse_whole_seconds(value: &str) -> Result<Duration, String> {
    let duration = parse_duration(value)?;
    if duration.subsec_nanos() != 0 {
        return Err("must be whole seconds".to_owned());
    }
    Ok(duration)
}

/// The entries of repeatable, comma-separated flags, trimmed, in order. Duplicates are kept:
/// a delegation chain is the caller's to get right, and the broker names a bad entry.
fn split_list(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(str::to_owned)
        .collect()
}

fn non_empty(value: Option<&String>) -> Option<String> {
    value.filter(|value| !value.is_empty()).cloned()
}

/// The connection settings, once every required one is present.
#[derive(Debug)]
struct Target {
    addr: String,
    files: TlsFiles,
    timeout: Duration,
    retry: bool,
}

impl Cli {
    /// The global settings, or a usage error naming the missing flags.
    fn target(&self) -> Result<Target, String> {
        let mut missing = Vec::new();
        if self.addr.as_deref().is_none_or(str::is_empty) {
            missing.push("--addr (TOKEN_BROKER_ADDR)");
        }
        for (value, name) in [
            (&self.ca, "--ca (TOKEN_BROKER_CA)"),
            (&self.cert, "--cert (TOKEN_BROKER_CERT)"),
            (&self.key, "--key (TOKEN_BROKER_KEY)"),
        ] {
            if value
                .as_ref()
                .is_none_or(|path| path.as_os_str().is_empty())
            {
                missing.push(name);
            }
        }
        match (&self.addr, &self.ca, &self.cert, &self.key) {
            (Some(addr), Some(ca), Some(cert), Some(key)) if missing.is_empty() => Ok(Target {
                addr: addr.clone(),
                files: TlsFiles {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                },
                timeout: self.timeout,
                retry: !self.no_retry,
            }),
            _ => Err(format!("missing {}", missing.join(", "))),
        }
    }
}

/// A usage error found after parsing: exit code 2.
#[derive(Debug, PartialEq, Eq)]
enum UsageError {
    /// A bad combination of flags, reported the way clap reports its own.
    Flags(ErrorKind, String),
    /// An input that cannot be read or used, reported on one line.
    Input(String),
}

/// A request, ready to send: flags checked, input read.
#[derive(Debug)]
enum Prepared {
    AccessToken(TokenRequest),
    IdToken(IdTokenRequest),
    Impersonate(ImpersonationRequest),
    SignJwt(JwtSigningRequest),
    SignBlob(BlobSigningRequest),
    Exchange(ExchangeRequest),
    Downscope(ExchangeRequest),
}

/// What the broker answered.
#[derive(Debug)]
enum Outcome {
    AccessToken(AccessToken),
    IdToken(IdToken),
    Impersonated(AccessToken),
    SignedJwt(SignedJwt),
    SignedBlob(SignedBlob),
    Exchanged(ExchangedToken),
}

impl PrintAccessToken {
    fn request(&self) -> TokenRequest {
        TokenRequest {
            scopes: split_scopes(&self.scopes),
            credential: non_empty(self.credential.as_ref()),
            subject: non_empty(self.subject.as_ref()),
            lifetime: self.lifetime,
            min_remaining_validity: self.min_remaining,
        }
    }
}

impl PrintIdentityToken {
    fn request(&self) -> Result<IdTokenRequest, UsageError> {
        let mut chain = self
            .impersonate_service_account
            .as_ref()
            .map(|value| split_list(std::slice::from_ref(value)))
            .unwrap_or_default();
        let target = chain.pop();
        if self.impersonate_service_account.is_some() && target.is_none() {
            return Err(UsageError::Flags(
                ErrorKind::InvalidValue,
                "--impersonate-service-account needs a service-account email".to_owned(),
            ));
        }
        let mut delegates = split_list(&self.delegates);
        if !chain.is_empty() {
            if !delegates.is_empty() {
                return Err(UsageError::Flags(
                    ErrorKind::ArgumentConflict,
                    "give the delegation chain either with --delegates or as a comma-separated \
                     --impersonate-service-account, not both"
                        .to_owned(),
                ));
            }
            delegates = chain;
        }
        if target.is_none() && !delegates.is_empty() {
            return Err(UsageError::Flags(
                ErrorKind::MissingRequiredArgument,
                "--delegates needs --impersonate-service-account".to_owned(),
            ));
        }
        Ok(IdTokenRequest {
            audience: self.audience.clone(),
            include_email: self.include_email,
            target_service_account: target,
            delegates,
            credential: non_empty(self.credential.as_ref()),
            min_remaining_validity: None,
        })
    }
}

impl Impersonate {
    fn request(&self) -> ImpersonationRequest {
        ImpersonationRequest {
            target_service_account: self.target.trim().to_owned(),
            delegates: split_list(&self.delegates),
            scopes: split_scopes(&self.scopes),
            lifetime: self.lifetime,
            min_remaining_validity: self.min_remaining,
            credential: non_empty(self.credential.as_ref()),
        }
    }
}

impl SignJwt {
    fn request(&self, stdin: &mut dyn std::io::Read) -> Result<JwtSigningRequest, UsageError> {
        let (bytes, source) = read_input(self.payload_file.as_deref(), stdin)?;
        let payload = String::from_utf8(bytes).map_err(|error| {
            UsageError::Input(format!(
                "the JWT payload in {source} is not UTF-8 text ({error}); it must be a JSON object"
            ))
        })?;
        Ok(JwtSigningRequest {
            service_account: self.service_account.trim().to_owned(),
            payload,
            delegates: split_list(&self.delegates),
            credential: non_empty(self.credential.as_ref()),
        })
    }
}

impl SignBlob {
    fn request(&self, stdin: &mut dyn std::io::Read) -> Result<BlobSigningRequest, UsageError> {
        if self.format == Format::Json && self.output.as_deref() == Some(Path::new("-")) {
            return Err(UsageError::Flags(
                ErrorKind::ArgumentConflict,
                "--output - (raw signature bytes on standard output) cannot be combined with \
                 --format json"
                    .to_owned(),
            ));
        }
        let (payload, _) = read_input(self.input_file.as_deref(), stdin)?;
        Ok(BlobSigningRequest {
            service_account: self.service_account.trim().to_owned(),
            payload,
            delegates: split_list(&self.delegates),
            credential: non_empty(self.credential.as_ref()),
        })
    }
}

impl Exchange {
    fn request(&self, stdin: &mut dyn std::io::Read) -> Result<ExchangeRequest, UsageError> {
        let audience = non_empty(self.audience.as_ref());
        let credential = non_empty(self.credential.as_ref());
        if audience.is_none()
            && credential.is_none()
            && self.subject_token_type != token_type::ACCESS_TOKEN
        {
            return Err(UsageError::Flags(
                ErrorKind::MissingRequiredArgument,
                "--audience is required unless --credential names a credential that supplies it"
                    .to_owned(),
            ));
        }
        let access_boundary = self.boundary.as_deref().map(boundary).transpose()?;
        Ok(ExchangeRequest {
            subject_token: read_token(Some(&self.subject_token_file), stdin, "subject token")?,
            subject_token_type: self.subject_token_type.clone(),
            audience,
            scopes: split_scopes(&self.scopes),
            requested_token_type: None,
            user_project: non_empty(self.user_project.as_ref()),
            access_boundary,
            credential,
        })
    }
}

impl Downscope {
    fn request(&self, stdin: &mut dyn std::io::Read) -> Result<ExchangeRequest, UsageError> {
        let boundary = boundary(&self.boundary)?;
        let token = read_token(self.access_token_file.as_deref(), stdin, "access token")?;
        Ok(ExchangeRequest::downscoping(token, boundary))
    }
}

fn boundary(path: &Path) -> Result<broker_client::CredentialAccessBoundary, UsageError> {
    read_access_boundary(path).map_err(|error| UsageError::Input(error.to_string()))
}

/// Reads a token (`what`, for messages) from a file, or standard input for `None` and `-`, as it
/// is except for trailing line breaks. Refuses an empty token and one that is not UTF-8. The
/// final buffer is zeroized when dropped, refused or not (copies left behind by reallocations
/// while reading are not).
fn read_token(
    path: Option<&Path>,
    stdin: &mut dyn std::io::Read,
    what: &str,
) -> Result<Secret, UsageError> {
    let (bytes, source) = read_input(path, stdin)?;
    let mut token = String::from_utf8(bytes).map_err(|error| {
        let reason = error.utf8_error();
        error.into_bytes().zeroize();
        UsageError::Input(format!(
            "the {what} in {source} is not UTF-8 text ({reason})"
        ))
    })?;
    token.truncate(token.trim_end_matches(['\r', '\n']).len());
    let token = Secret::new(token);
    if token.expose().is_empty() {
        return Err(UsageError::Input(format!(
            "the {what} in {source} is empty"
        )));
    }
    Ok(token)
}

/// Reads a whole input file, or standard input for `None` and `-`. Returns the bytes and a name
/// of where they came from, for messages.
fn read_input(
    path: Option<&Path>,
    stdin: &mut dyn std::io::Read,
) -> Result<(Vec<u8>, String), UsageError> {
    match path {
        None => read_stdin(stdin),
        Some(path) if path == Path::new("-") => read_stdin(stdin),
        Some(path) => std::fs::read(path)
            .map(|bytes| (bytes, path.display().to_string()))
            .map_err(|error| UsageError::Input(format!("cannot read {}: {error}", path.display()))),
    }
}

fn read_stdin(stdin: &mut dyn std::io::Read) -> Result<(Vec<u8>, String), UsageError> {
    let mut bytes = Vec::new();
    stdin
        .read_to_end(&mut bytes)
        .map(|_| (bytes, "standard input".to_owned()))
        .map_err(|error| UsageError::Input(format!("cannot read standard input: {error}")))
}

impl Command {
    /// Checks the flags and reads the input, before anything is sent.
    fn prepare(&self, stdin: &mut dyn std::io::Read) -> Result<Prepared, UsageError> {
        Ok(match self {
            Self::PrintAccessToken(args) => Prepared::AccessToken(args.request()),
            Self::PrintIdentityToken(args) => Prepared::IdToken(args.request()?),
            Self::Impersonate(args) => Prepared::Impersonate(args.request()),
            Self::SignJwt(args) => Prepared::SignJwt(args.request(stdin)?),
            Self::SignBlob(args) => Prepared::SignBlob(args.request(stdin)?),
            Self::Exchange(args) => Prepared::Exchange(args.request(stdin)?),
            Self::Downscope(args) => Prepared::Downscope(args.request(stdin)?),
            // `main` runs these itself; they send no single request.
            Self::ExecutableSource(_) | Self::PrintExternalAccountConfig(_) | Self::Write(_) => {
                return Err(UsageError::Input(
                    "this command does not send a single request".to_owned(),
                ));
            }
        })
    }

    fn format(&self) -> Format {
        match self {
            Self::PrintAccessToken(args) => args.format,
            Self::PrintIdentityToken(args) => args.format,
            Self::Impersonate(args) => args.format,
            Self::SignJwt(args) => args.format,
            Self::SignBlob(args) => args.format,
            Self::Exchange(args) => args.format,
            Self::Downscope(args) => args.format,
            Self::Write(args) => args.format(),
            Self::ExecutableSource(_) | Self::PrintExternalAccountConfig(_) => Format::Json,
        }
    }
}

/// The JSON output of `print-access-token` and `impersonate`.
#[derive(Debug, serde::Serialize)]
struct TokenJson<'a> {
    access_token: &'a str,
    token_type: &'a str,
    expire_time: String,
    expires_in: u64,
    principal: &'a str,
    /// Not for `impersonate`: the broker does not list the scopes of impersonated tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    granted_scopes: Option<&'a [String]>,
    credential: &'a str,
    cache_hit: bool,
    last_known_good: bool,
}

fn token_json(token: &AccessToken, now: SystemTime) -> TokenJson<'_> {
    TokenJson {
        access_token: token.secret(),
        token_type: &token.token_type,
        expire_time: rfc3339(token.expire_time),
        expires_in: token.expires_in(now).as_secs(),
        principal: &token.principal,
        granted_scopes: Some(&token.scopes),
        credential: &token.credential,
        cache_hit: token.cache_hit,
        last_known_good: token.last_known_good,
    }
}

/// The JSON output of `print-identity-token`.
#[derive(Debug, serde::Serialize)]
struct IdTokenJson<'a> {
    id_token: &'a str,
    expire_time: String,
    expires_in: u64,
    audience: &'a str,
    principal: &'a str,
    credential: &'a str,
    cache_hit: bool,
    last_known_good: bool,
}

/// The JSON output of `sign-jwt`.
#[derive(Debug, serde::Serialize)]
struct SignedJwtJson<'a> {
    key_id: &'a str,
    signed_jwt: &'a str,
    credential: &'a str,
}

/// The JSON output of `sign-blob`.
#[derive(Debug, serde::Serialize)]
struct SignedBlobJson<'a> {
    key_id: &'a str,
    /// Standard base64 with padding.
    signature: String,
    credential: &'a str,
}

/// The JSON output of `exchange` and `downscope`.
#[derive(Debug, serde::Serialize)]
struct ExchangedJson<'a> {
    access_token: &'a str,
    issued_token_type: &'a str,
    token_type: &'a str,
    /// Absent for a downscoped token, which expires with the token it was made from.
    #[serde(skip_serializing_if = "Option::is_none")]
    expire_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in: Option<u64>,
    principal: &'a str,
    credential: &'a str,
}

fn exchanged_json(token: &ExchangedToken, now: SystemTime) -> ExchangedJson<'_> {
    ExchangedJson {
        access_token: token.secret(),
        issued_token_type: &token.issued_token_type,
        token_type: &token.token_type,
        expire_time: token.expire_time.map(rfc3339),
        expires_in: token.expires_in(now).map(|left| left.as_secs()),
        principal: &token.principal,
        credential: &token.credential,
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

fn write_json(out: &mut impl std::io::Write, value: &impl serde::Serialize) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

fn write_token(
    out: &mut impl std::io::Write,
    token: &AccessToken,
    format: Format,
) -> std::io::Result<()> {
    match format {
        Format::Text => writeln!(out, "{}", token.secret())?,
        Format::Json => write_json(out, &token_json(token, SystemTime::now()))?,
    }
    out.flush()
}

/// Writes the outcome of `prepared` to `out` (standard output) in `format`. A sign-blob
/// `--output` is the caller's: see [`write_signature_file`].
fn write_outcome(
    out: &mut impl std::io::Write,
    prepared: &Prepared,
    outcome: &Outcome,
    format: Format,
    signature_to_file: bool,
) -> std::io::Result<()> {
    let now = SystemTime::now();
    match (outcome, format) {
        (Outcome::AccessToken(token), _) => return write_token(out, token, format),
        (Outcome::Impersonated(token), Format::Text) => writeln!(out, "{}", token.secret())?,
        (Outcome::Impersonated(token), Format::Json) => {
            let mut json = token_json(token, now);
            json.granted_scopes = None;
            write_json(out, &json)?;
        }
        (Outcome::IdToken(token), Format::Text) => writeln!(out, "{}", token.secret())?,
        (Outcome::IdToken(token), Format::Json) => {
            let audience = match prepared {
                Prepared::IdToken(request) => request.audience.as_str(),
                _ => "",
            };
            write_json(
                out,
                &IdTokenJson {
                    id_token: token.secret(),
                    expire_time: rfc3339(token.expire_time),
                    expires_in: token.expires_in(now).as_secs(),
                    audience,
                    principal: &token.principal,
                    credential: &token.credential,
                    cache_hit: token.cache_hit,
                    last_known_good: token.last_known_good,
                },
            )?;
        }
        (Outcome::SignedJwt(jwt), Format::Text) => writeln!(out, "{}", jwt.secret())?,
        (Outcome::SignedJwt(jwt), Format::Json) => write_json(
            out,
            &SignedJwtJson {
                key_id: &jwt.key_id,
                signed_jwt: jwt.secret(),
                credential: &jwt.credential,
            },
        )?,
        (Outcome::SignedBlob(_), Format::Text) if signature_to_file => {}
        (Outcome::SignedBlob(blob), Format::Text) => writeln!(out, "{}", blob.signature_base64())?,
        (Outcome::SignedBlob(blob), Format::Json) => write_json(
            out,
            &SignedBlobJson {
                key_id: &blob.key_id,
                signature: blob.signature_base64(),
                credential: &blob.credential,
            },
        )?,
        (Outcome::Exchanged(token), Format::Text) => writeln!(out, "{}", token.secret())?,
        (Outcome::Exchanged(token), Format::Json) => write_json(out, &exchanged_json(token, now))?,
    }
    out.flush()
}

/// Writes the raw signature to `path` (`-`: standard output).
fn write_signature_file(path: &Path, blob: &SignedBlob) -> Result<(), String> {
    let result = if path == Path::new("-") {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&blob.signature)
            .and_then(|()| stdout.flush())
    } else {
        std::fs::write(path, &blob.signature)
    };
    result.map_err(|error| {
        let name = if path == Path::new("-") {
            "standard output".to_owned()
        } else {
            path.display().to_string()
        };
        format!("cannot write the signature to {name}: {error}")
    })
}

/// The exit code for an error; see `LONG_ABOUT`.
fn exit_code(error: &ClientError) -> u8 {
    match error {
        ClientError::Config(_) => EXIT_USAGE,
        ClientError::Connect { .. } => EXIT_UNAVAILABLE,
        ClientError::Status(status) => match status.code {
            Code::PermissionDenied | Code::Unauthenticated => EXIT_PERMISSION_DENIED,
            Code::InvalidArgument => EXIT_INVALID_ARGUMENT,
            Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded => {
                EXIT_UNAVAILABLE
            }
            _ => EXIT_GENERIC,
        },
        _ => EXIT_GENERIC,
    }
}

/// The metadata keys printed first, in this order, one per line.
const PROMINENT_KEYS: [&str; 5] = ["rule", "grant", "field", "value", "caller"];

/// The text printed on stderr for an error: a headline, then one line per detail.
fn render_error(error: &ClientError) -> String {
    let Some(status) = error.status() else {
        return format!("tokenctl: {error}\n");
    };
    let mut text = format!("tokenctl: {}", status.code_name());
    if let Some(reason) = &status.reason {
        text.push_str(&format!(" ({reason})"));
    }
    if !status.message.is_empty() {
        text.push_str(&format!(": {}", status.message));
    }
    text.push('\n');
    for key in PROMINENT_KEYS {
        if let Some(value) = status.get(key) {
            text.push_str(&format!("  {key}: {value}\n"));
        }
    }
    for (key, value) in &status.metadata {
        if !PROMINENT_KEYS.contains(&key.as_str()) {
            text.push_str(&format!("  {key}: {value}\n"));
        }
    }
    for violation in &status.field_violations {
        if status.get("field") == Some(violation.field.as_str()) && violation.description.is_empty()
        {
            continue;
        }
        text.push_str(&format!(
            "  field {}: {}\n",
            violation.field, violation.description
        ));
    }
    if let Some(delay) = status.retry_after {
        text.push_str(&format!("  retry after {}s\n", whole_seconds_ceil(delay)));
    }
    text
}

/// Connects to the broker per the global flags: `--timeout` bounds connecting.
async fn connect_target(target: &Target) -> Result<TokenBrokerClient<Channel>, ClientError> {
    let mut connect_options = ConnectOptions::default();
    connect_options.connect_timeout = target.timeout;
    connect_options.timeout = Some(target.timeout);
    connect(&target.addr, &target.files, &connect_options).await
}

/// The options of a request per the global flags: `--timeout` bounds each attempt and the
/// retries, `--no-retry` turns retries off.
fn call_options(target: &Target) -> CallOptions {
    let mut options = CallOptions::default();
    options.call_timeout = Some(target.timeout);
    options.retry = if target.retry {
        RetryPolicy::default()
    } else {
        RetryPolicy::never()
    };
    options.retry.deadline = target.timeout;
    options
}

/// Connects and sends the request, retrying per the global flags.
async fn run(target: Target, prepared: &Prepared) -> Result<Outcome, ClientError> {
    let client = connect_target(&target).await?;
    let options = call_options(&target);
    Ok(match prepared {
        Prepared::AccessToken(request) => {
            Outcome::AccessToken(get_access_token(&client, request, &options).await?)
        }
        Prepared::IdToken(request) => {
            Outcome::IdToken(generate_id_token(&client, request, &options).await?)
        }
        Prepared::Impersonate(request) => {
            Outcome::Impersonated(impersonate(&client, request, &options).await?)
        }
        Prepared::SignJwt(request) => {
            Outcome::SignedJwt(sign_jwt(&client, request, &options).await?)
        }
        Prepared::SignBlob(request) => {
            Outcome::SignedBlob(sign_blob(&client, request, &options).await?)
        }
        Prepared::Exchange(request) | Prepared::Downscope(request) => {
            Outcome::Exchanged(exchange_token(&client, request, &options).await?)
        }
    })
}

fn fail(message: &str, code: u8) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "tokenctl: {message}");
    ExitCode::from(code)
}

/// Why a command that `main` does not run through [`Command::prepare`] failed.
#[derive(Debug)]
enum Failed {
    /// Exit code 2.
    Usage(UsageError),
    /// Exit code 1, with this message.
    Other(String),
}

impl From<UsageError> for Failed {
    fn from(error: UsageError) -> Self {
        Self::Usage(error)
    }
}

/// Reports a usage error the way clap reports its own (flags) or on one line (input), and
/// exits 2.
fn usage_exit(error: UsageError) -> ExitCode {
    match error {
        UsageError::Flags(kind, message) => Cli::command().error(kind, message).exit(),
        UsageError::Input(message) => fail(&message, EXIT_USAGE),
    }
}

/// The connection settings, or exit with a usage error naming the missing ones.
fn target_or_exit(cli: &Cli) -> Target {
    match cli.target() {
        Ok(target) => target,
        Err(message) => Cli::command()
            .error(ErrorKind::MissingRequiredArgument, message)
            .exit(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|error| error.exit());
    match &cli.command {
        // Answers on standard output in Google's format, whatever happens.
        Command::ExecutableSource(args) => return external_account::executable_source(&cli, args),
        Command::PrintExternalAccountConfig(args) => {
            return match external_account::print_external_account_config(&cli, args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(Failed::Usage(error)) => usage_exit(error),
                Err(Failed::Other(message)) => fail(&message, EXIT_GENERIC),
            };
        }
        Command::Write(args) => {
            return write::write(target_or_exit(&cli), args).unwrap_or_else(usage_exit);
        }
        _ => {}
    }
    let target = target_or_exit(&cli);
    let prepared = match cli.command.prepare(&mut std::io::stdin().lock()) {
        Ok(prepared) => prepared,
        Err(error) => return usage_exit(error),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the runtime: {error}"), EXIT_GENERIC),
    };
    let outcome = match runtime.block_on(run(target, &prepared)) {
        Ok(outcome) => outcome,
        Err(error) => {
            let _ = std::io::stderr().write_all(render_error(&error).as_bytes());
            return ExitCode::from(exit_code(&error));
        }
    };
    let output_file = match &cli.command {
        Command::SignBlob(args) => args.output.as_deref(),
        _ => None,
    };
    if let (Some(path), Outcome::SignedBlob(blob)) = (output_file, &outcome)
        && let Err(message) = write_signature_file(path, blob)
    {
        return fail(&message, EXIT_GENERIC);
    }
    let mut stdout = std::io::stdout().lock();
    match write_outcome(
        &mut stdout,
        &prepared,
        &outcome,
        cli.command.format(),
        output_file.is_some(),
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(
            &format!("cannot write to standard output: {error}"),
            EXIT_GENERIC,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use broker_client::{ERROR_DOMAIN, Secret};
    use broker_proto::tokenbroker::v1::{
        ExchangeTokenResponse, GenerateIdTokenResponse, GetAccessTokenResponse, SignBlobResponse,
        SignJwtResponse,
    };
    use tonic_types::{ErrorDetails, FieldViolation, StatusExt as _};

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tokenctl").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_print_access_token_with_repeated_and_comma_separated_scopes() {
        let cli = parse(&[
            "--addr",
            "broker:8443",
            "--ca",
            "ca.pem",
            "print-access-token",
            "--scopes",
            "https://a,https://b",
            "--scopes",
            "https://c",
            "--credential",
            "prod",
            "--subject",
            "user@example.com",
            "--lifetime",
            "30m",
            "--min-remaining",
            "5m",
            "--format",
            "json",
            "--cert",
            "client.pem",
            "--key",
            "client.key",
            "--timeout",
            "3s",
        ]);
        let cli = cli.ok();
        let Some(cli) = cli else {
            panic!("the arguments should parse");
        };
        let Command::PrintAccessToken(args) = &cli.command else {
            panic!("print-access-token");
        };
        let request = args.request();
        assert_eq!(request.scopes, vec!["https://a", "https://b", "https://c"]);
        assert_eq!(request.credential.as_deref(), Some("prod"));
        assert_eq!(request.subject.as_deref(), Some("user@example.com"));
        assert_eq!(request.lifetime, Some(Duration::from_secs(1800)));
        assert_eq!(
            request.min_remaining_validity,
            Some(Duration::from_secs(300))
        );
        assert_eq!(args.format, Format::Json);
        let target = cli.target().ok();
        assert_eq!(
            target.as_ref().map(|t| t.addr.as_str()),
            Some("broker:8443")
        );
        assert_eq!(target.map(|t| t.timeout), Some(Duration::from_secs(3)));
    }

    #[test]
    fn defaults_and_usage_errors() {
        let cli = parse(&["print-access-token"]).ok();
        let Some(cli) = cli else {
            panic!("no flags is fine for the parser");
        };
        assert_eq!(cli.timeout, Duration::from_secs(10));
        let Command::PrintAccessToken(args) = &cli.command else {
            panic!("print-access-token");
        };
        assert_eq!(args.format, Format::Text);
        assert!(args.request().scopes.is_empty());
        // Unless the environment provides them, the connection settings are missing.
        if std::env::var_os("TOKEN_BROKER_ADDR").is_none() {
            let missing = cli.target().err().unwrap_or_default();
            assert!(missing.contains("--addr (TOKEN_BROKER_ADDR)"), "{missing}");
        }

        let usage = |args: &[&str]| parse(args).err().map(|e| e.exit_code());
        assert_eq!(
            usage(&["print-access-token", "--lifetime", "1.5s"]),
            Some(2)
        );
        assert_eq!(usage(&["print-access-token", "--format", "yaml"]), Some(2));
        assert_eq!(usage(&["print-access-token", "--bogus"]), Some(2));
        assert_eq!(usage(&[]), Some(2));
    }

    #[test]
    fn long_help_documents_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        for needle in [
            "Exit codes",
            "3  permission denied",
            "4  invalid argument",
            "5  unavailable",
        ] {
            assert!(help.contains(needle), "{needle:?} missing from:\n{help}");
        }
    }

    fn policy_denied() -> tonic::Status {
        let mut details = ErrorDetails::with_error_info(
            "POLICY_DENIED",
            ERROR_DOMAIN,
            HashMap::from([
                ("rule".to_owned(), "scopes".to_owned()),
                ("grant".to_owned(), "ci".to_owned()),
                (
                    "value".to_owned(),
                    "https://www.googleapis.com/auth/admin".to_owned(),
                ),
                ("caller".to_owned(), "spiffe://example.org/ci".to_owned()),
            ]),
        );
        details.set_retry_info(Some(Duration::from_secs(3)));
        tonic::Status::with_error_details(Code::PermissionDenied, "scope not allowed", details)
    }

    #[test]
    fn renders_status_errors_with_details() {
        let error = ClientError::from(policy_denied());
        assert_eq!(
            render_error(&error),
            "tokenctl: PERMISSION_DENIED (POLICY_DENIED): scope not allowed\n\
             \x20 rule: scopes\n\
             \x20 grant: ci\n\
             \x20 value: https://www.googleapis.com/auth/admin\n\
             \x20 caller: spiffe://example.org/ci\n\
             \x20 retry after 3s\n"
        );
        assert_eq!(exit_code(&error), EXIT_PERMISSION_DENIED);

        let mut details = ErrorDetails::with_error_info(
            "INVALID_SCOPE",
            ERROR_DOMAIN,
            HashMap::from([("field".to_owned(), "scopes[1]".to_owned())]),
        );
        details.set_bad_request(vec![FieldViolation::new("scopes[1]", "contains a space")]);
        let error = ClientError::from(tonic::Status::with_error_details(
            Code::InvalidArgument,
            "invalid scope",
            details,
        ));
        assert_eq!(
            render_error(&error),
            "tokenctl: INVALID_ARGUMENT (INVALID_SCOPE): invalid scope\n\
             \x20 field: scopes[1]\n\
             \x20 field scopes[1]: contains a space\n"
        );
        assert_eq!(exit_code(&error), EXIT_INVALID_ARGUMENT);

        let status = tonic::Status::with_error_details(
            Code::Unavailable,
            "Google failed",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(2500))),
        );
        assert!(status.get_error_details().retry_info().is_some());
        let error = ClientError::from(status);
        assert_eq!(
            render_error(&error),
            "tokenctl: UNAVAILABLE: Google failed\n  retry after 3s\n"
        );
        assert_eq!(exit_code(&error), EXIT_UNAVAILABLE);
    }

    #[test]
    fn renders_other_errors_on_one_line_with_their_exit_codes() {
        let error = ClientError::Config("bad endpoint".to_owned());
        assert_eq!(
            render_error(&error),
            "tokenctl: invalid configuration: bad endpoint\n"
        );
        assert_eq!(exit_code(&error), EXIT_USAGE);
        let error = ClientError::Connect {
            endpoint: "https://b:1".to_owned(),
            reason: "refused".to_owned(),
        };
        assert_eq!(exit_code(&error), EXIT_UNAVAILABLE);
        assert_eq!(
            exit_code(&ClientError::from(tonic::Status::not_found("x"))),
            EXIT_GENERIC
        );
    }

    #[test]
    fn writes_text_and_json() {
        let token = AccessToken::from_response(broker_proto_response());
        let Ok(token) = token else {
            panic!("valid response");
        };
        let mut text = Vec::new();
        assert!(write_token(&mut text, &token, Format::Text).is_ok());
        assert_eq!(text, b"ya29.token\n");

        let json = token_json(
            &token,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        );
        let value = serde_json::to_value(&json).unwrap_or_default();
        assert_eq!(value["expire_time"], "2027-01-15T09:00:00Z");
        assert_eq!(value["expires_in"], 3600);
        assert_eq!(value["token_type"], "Bearer");
        assert_eq!(value["granted_scopes"][0], "https://s");
        assert_eq!(Secret::new("x").expose(), "x");
    }

    fn command(args: &[&str]) -> Command {
        match parse(args) {
            Ok(cli) => cli.command,
            Err(error) => panic!("{args:?} should parse: {error}"),
        }
    }

    fn prepare(args: &[&str], stdin: &[u8]) -> Result<Prepared, UsageError> {
        command(args).prepare(&mut std::io::Cursor::new(stdin.to_vec()))
    }

    #[test]
    fn parses_print_identity_token_and_its_impersonation_chain() {
        let prepared = prepare(
            &[
                "print-identity-token",
                "--audiences",
                "https://hello.a.run.app",
                "--include-email",
                "--impersonate-service-account",
                "target@p.iam.gserviceaccount.com",
                "--delegates",
                "d1@p.iam.gserviceaccount.com,d2@p.iam.gserviceaccount.com",
                "--delegates",
                "d3@p.iam.gserviceaccount.com",
                "--credential",
                "base",
            ],
            b"",
        );
        let Ok(Prepared::IdToken(request)) = prepared else {
            panic!("an ID-token request: {prepared:?}");
        };
        assert_eq!(request.audience, "https://hello.a.run.app");
        assert!(request.include_email);
        assert_eq!(
            request.target_service_account.as_deref(),
            Some("target@p.iam.gserviceaccount.com")
        );
        assert_eq!(
            request.delegates,
            vec![
                "d1@p.iam.gserviceaccount.com",
                "d2@p.iam.gserviceaccount.com",
                "d3@p.iam.gserviceaccount.com"
            ]
        );
        assert_eq!(request.credential.as_deref(), Some("base"));

        // gcloud's form: a comma-separated chain whose last entry is the target.
        let prepared = prepare(
            &[
                "print-identity-token",
                "--audience",
                "aud",
                "--impersonate-service-account",
                "d1@p,d2@p,target@p",
            ],
            b"",
        );
        let Ok(Prepared::IdToken(request)) = prepared else {
            panic!("an ID-token request: {prepared:?}");
        };
        assert_eq!(request.target_service_account.as_deref(), Some("target@p"));
        assert_eq!(request.delegates, vec!["d1@p", "d2@p"]);
        assert!(!request.include_email);
        assert_eq!(request.credential, None);

        // Without impersonation: the credential's own identity.
        let prepared = prepare(&["print-identity-token", "--audiences", "aud"], b"");
        let Ok(Prepared::IdToken(request)) = prepared else {
            panic!("an ID-token request: {prepared:?}");
        };
        assert_eq!(request.target_service_account, None);
        assert!(request.delegates.is_empty());
    }

    #[test]
    fn bad_flag_combinations_are_usage_errors() {
        let usage = |args: &[&str]| parse(args).err().map(|e| e.exit_code());
        // --delegates without an impersonation target.
        assert_eq!(
            usage(&[
                "print-identity-token",
                "--audiences",
                "a",
                "--delegates",
                "d@p"
            ]),
            Some(2)
        );
        assert_eq!(usage(&["print-identity-token"]), Some(2), "no audience");
        assert_eq!(usage(&["impersonate"]), Some(2), "no target");
        assert_eq!(
            usage(&["impersonate", "--target", "t@p", "--lifetime", "1.5s"]),
            Some(2)
        );
        assert_eq!(usage(&["sign-jwt"]), Some(2), "no service account");
        assert_eq!(
            usage(&["sign-blob", "--format", "yaml", "--service-account", "s"]),
            Some(2)
        );
        assert_eq!(
            usage(&["sign-jwt", "--service-account", "s", "a", "b"]),
            Some(2)
        );

        // Both forms of a chain at once.
        let error = prepare(
            &[
                "print-identity-token",
                "--audiences",
                "a",
                "--impersonate-service-account",
                "d1@p,t@p",
                "--delegates",
                "d0@p",
            ],
            b"",
        );
        assert!(
            matches!(
                error,
                Err(UsageError::Flags(ErrorKind::ArgumentConflict, _))
            ),
            "{error:?}"
        );
        let error = prepare(
            &[
                "print-identity-token",
                "--audiences",
                "a",
                "--impersonate-service-account",
                ",",
            ],
            b"",
        );
        assert!(
            matches!(error, Err(UsageError::Flags(ErrorKind::InvalidValue, _))),
            "{error:?}"
        );
        // Raw signature bytes and JSON cannot share standard output.
        let error = prepare(
            &[
                "sign-blob",
                "--service-account",
                "s@p",
                "--output",
                "-",
                "--format",
                "json",
            ],
            b"x",
        );
        assert!(
            matches!(
                error,
                Err(UsageError::Flags(ErrorKind::ArgumentConflict, _))
            ),
            "{error:?}"
        );
    }

    #[test]
    fn parses_impersonate() {
        let prepared = prepare(
            &[
                "impersonate",
                "--target",
                "reader@p.iam.gserviceaccount.com",
                "--delegates",
                "d2@p, d1@p",
                "--scopes",
                "https://a,https://b",
                "--scopes",
                "https://a",
                "--lifetime",
                "2h",
                "--min-remaining",
                "10m",
                "--credential",
                "dev",
                "--format",
                "json",
            ],
            b"",
        );
        let Ok(Prepared::Impersonate(request)) = prepared else {
            panic!("an impersonation request: {prepared:?}");
        };
        assert_eq!(
            request.target_service_account,
            "reader@p.iam.gserviceaccount.com"
        );
        assert_eq!(request.delegates, vec!["d2@p", "d1@p"], "the order is kept");
        assert_eq!(request.scopes, vec!["https://a", "https://b"]);
        assert_eq!(request.lifetime, Some(Duration::from_secs(7200)));
        assert_eq!(
            request.min_remaining_validity,
            Some(Duration::from_secs(600))
        );
        assert_eq!(request.credential.as_deref(), Some("dev"));
        assert_eq!(
            command(&[
                "impersonate",
                "--target-service-account",
                "t@p",
                "--format",
                "json"
            ])
            .format(),
            Format::Json
        );
    }

    #[test]
    fn sign_commands_read_stdin_or_a_file() {
        let prepared = prepare(
            &[
                "sign-jwt",
                "--iam-account",
                "s@p",
                "--delegates",
                "d@p",
                "--credential",
                "c",
            ],
            br#"{"aud":"x"}"#,
        );
        let Ok(Prepared::SignJwt(request)) = prepared else {
            panic!("a SignJwt request: {prepared:?}");
        };
        assert_eq!(request.service_account, "s@p");
        assert_eq!(request.payload, r#"{"aud":"x"}"#);
        assert_eq!(request.delegates, vec!["d@p"]);
        assert_eq!(request.credential.as_deref(), Some("c"));

        // `-` is standard input too; the broker, not tokenctl, validates the claims.
        let prepared = prepare(&["sign-jwt", "--service-account", "s@p", "-"], b"not json");
        let Ok(Prepared::SignJwt(request)) = prepared else {
            panic!("a SignJwt request: {prepared:?}");
        };
        assert_eq!(request.payload, "not json");

        let error = prepare(&["sign-jwt", "--service-account", "s@p"], b"\xff\xfe");
        let Err(UsageError::Input(message)) = error else {
            panic!("invalid UTF-8 is refused: {error:?}");
        };
        assert!(message.contains("standard input is not UTF-8"), "{message}");

        let prepared = prepare(&["sign-blob", "--service-account", "s@p"], b"\x00\xffbytes");
        let Ok(Prepared::SignBlob(request)) = prepared else {
            panic!("a SignBlob request: {prepared:?}");
        };
        assert_eq!(request.payload, b"\x00\xffbytes");
        assert_eq!(request.credential, None);

        let dir = std::env::temp_dir().join(format!("tokenctl-unit-{}", std::process::id()));
        assert!(std::fs::create_dir_all(&dir).is_ok());
        let file = dir.join("blob.bin");
        assert!(std::fs::write(&file, b"from a file").is_ok());
        let path = file.to_string_lossy().into_owned();
        let prepared = prepare(&["sign-blob", "--service-account", "s@p", &path], b"stdin");
        let Ok(Prepared::SignBlob(request)) = prepared else {
            panic!("a SignBlob request: {prepared:?}");
        };
        assert_eq!(request.payload, b"from a file");
        let _ = std::fs::remove_dir_all(&dir);

        let missing = dir.join("missing.json");
        let missing = missing.to_string_lossy().into_owned();
        let error = prepare(&["sign-jwt", "--service-account", "s@p", &missing], b"");
        let Err(UsageError::Input(message)) = error else {
            panic!("a missing file is refused: {error:?}");
        };
        assert!(
            message.starts_with(&format!("cannot read {missing}: ")),
            "{message}"
        );
    }

    fn outcome_text(prepared: &Prepared, outcome: &Outcome, format: Format) -> String {
        let mut out = Vec::new();
        assert!(write_outcome(&mut out, prepared, outcome, format, false).is_ok());
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn writes_the_new_outcomes_as_text_and_json() {
        let expire_time = Some(prost_types::Timestamp {
            seconds: 1_800_003_600,
            nanos: 0,
        });
        let prepared = Prepared::IdToken(IdTokenRequest {
            audience: "https://hello".to_owned(),
            ..IdTokenRequest::default()
        });
        let Ok(id_token) = IdToken::from_response(GenerateIdTokenResponse {
            id_token: "eyJ.id.sig".to_owned(),
            expire_time,
            principal: "sa@p".to_owned(),
            cache_hit: false,
            credential: "dev".to_owned(),
            last_known_good: false,
        }) else {
            panic!("valid response");
        };
        let outcome = Outcome::IdToken(id_token);
        assert_eq!(
            outcome_text(&prepared, &outcome, Format::Text),
            "eyJ.id.sig\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&outcome_text(&prepared, &outcome, Format::Json))
                .unwrap_or_default();
        assert_eq!(json["id_token"], "eyJ.id.sig");
        assert_eq!(json["audience"], "https://hello");
        assert_eq!(json["expire_time"], "2027-01-15T09:00:00Z");
        assert_eq!(json["principal"], "sa@p");

        let prepared = Prepared::SignJwt(JwtSigningRequest::default());
        let Ok(jwt) = SignedJwt::from_response(SignJwtResponse {
            key_id: "k1".to_owned(),
            signed_jwt: "eyJ.claims.sig".to_owned(),
            credential: "dev".to_owned(),
        }) else {
            panic!("valid response");
        };
        let outcome = Outcome::SignedJwt(jwt);
        assert_eq!(
            outcome_text(&prepared, &outcome, Format::Text),
            "eyJ.claims.sig\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&outcome_text(&prepared, &outcome, Format::Json))
                .unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"key_id": "k1", "signed_jwt": "eyJ.claims.sig", "credential": "dev"})
        );

        let prepared = Prepared::SignBlob(BlobSigningRequest::default());
        let Ok(blob) = SignedBlob::from_response(SignBlobResponse {
            key_id: "k1".to_owned(),
            signature: b"foobar".to_vec(),
            credential: "dev".to_owned(),
        }) else {
            panic!("valid response");
        };
        let outcome = Outcome::SignedBlob(blob);
        assert_eq!(
            outcome_text(&prepared, &outcome, Format::Text),
            "Zm9vYmFy\n"
        );
        let mut out = Vec::new();
        assert!(write_outcome(&mut out, &prepared, &outcome, Format::Text, true).is_ok());
        assert!(out.is_empty(), "with --output, text mode prints nothing");
        let json: serde_json::Value =
            serde_json::from_str(&outcome_text(&prepared, &outcome, Format::Json))
                .unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"key_id": "k1", "signature": "Zm9vYmFy", "credential": "dev"})
        );

        let Ok(token) = AccessToken::from_response(broker_proto_response()) else {
            panic!("valid response");
        };
        let prepared = Prepared::Impersonate(ImpersonationRequest::default());
        let outcome = Outcome::Impersonated(token);
        assert_eq!(
            outcome_text(&prepared, &outcome, Format::Text),
            "ya29.token\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&outcome_text(&prepared, &outcome, Format::Json))
                .unwrap_or_default();
        assert_eq!(json["access_token"], "ya29.token");
        assert!(json.get("granted_scopes").is_none(), "{json}");
    }

    #[test]
    fn help_lists_every_command() {
        let help = Cli::command().render_long_help().to_string();
        for needle in [
            "print-access-token",
            "print-identity-token",
            "impersonate",
            "sign-jwt",
            "sign-blob",
            "exchange",
            "downscope",
            "executable-source",
            "print-external-account-config",
            "write",
            "2  usage error",
        ] {
            assert!(help.contains(needle), "{needle:?} missing from:\n{help}");
        }
    }

    /// A scratch directory for one test, removed when dropped.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("tokenctl-unit-{name}-{}", std::process::id()));
            assert!(std::fs::create_dir_all(&dir).is_ok());
            Self(dir)
        }

        /// Writes `contents` to `file` and returns its path as a string.
        fn file(&self, file: &str, contents: &[u8]) -> String {
            let path = self.0.join(file);
            assert!(std::fs::write(&path, contents).is_ok());
            path.to_string_lossy().into_owned()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const BOUNDARY: &str = r#"{"accessBoundary": {"accessBoundaryRules": [{
        "availableResource": "//storage.googleapis.com/projects/_/buckets/b",
        "availablePermissions": ["inRole:roles/storage.objectViewer"]}]}}"#;

    #[test]
    fn parses_exchange_with_every_flag() {
        let scratch = Scratch::new("exchange");
        let token = scratch.file("token.jwt", b"eyJ.subject-secret.sig\r\n\n");
        let boundary = scratch.file("boundary.json", BOUNDARY.as_bytes());
        let prepared = prepare(
            &[
                "exchange",
                "--subject-token-file",
                &token,
                "--subject-token-type",
                "jwt",
                "--audience",
                "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q",
                "--scopes",
                "https://a,https://b",
                "--scope",
                "https://a",
                "--user-project",
                "my-project",
                "--boundary",
                &boundary,
                "--credential",
                "federation",
                "--format",
                "json",
            ],
            b"stdin is not read",
        );
        let debug = format!("{prepared:?}");
        assert!(!debug.contains("subject-secret"), "{debug}");
        let Ok(Prepared::Exchange(request)) = prepared else {
            panic!("an exchange request: {debug}");
        };
        assert_eq!(
            request.subject_token.expose(),
            "eyJ.subject-secret.sig",
            "trailing line breaks are removed"
        );
        assert_eq!(request.subject_token_type, token_type::JWT);
        assert_eq!(
            request.audience.as_deref(),
            Some(
                "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q"
            )
        );
        assert_eq!(request.scopes, vec!["https://a", "https://b"]);
        assert_eq!(request.user_project.as_deref(), Some("my-project"));
        assert_eq!(
            request
                .access_boundary
                .map(|b| b.access_boundary_rules[0].available_resource.clone()),
            Some("//storage.googleapis.com/projects/_/buckets/b".to_owned())
        );
        assert_eq!(request.credential.as_deref(), Some("federation"));
        assert_eq!(request.requested_token_type, None);

        // Standard input, kept as it is but for trailing line breaks; a credential may supply
        // the audience.
        let prepared = prepare(
            &[
                "exchange",
                "--subject-token-file",
                "-",
                "--subject-token-type",
                "aws4_request",
                "--credential",
                "aws",
            ],
            b" %7B%22url%22 \n",
        );
        let Ok(Prepared::Exchange(request)) = prepared else {
            panic!("an exchange request: {prepared:?}");
        };
        assert_eq!(request.subject_token.expose(), " %7B%22url%22 ");
        assert_eq!(request.subject_token_type, token_type::AWS4_REQUEST);
        assert_eq!(request.audience, None);
        assert_eq!(request.access_boundary, None);
        assert!(request.scopes.is_empty());
    }

    #[test]
    fn token_types_have_short_names_and_urns_pass_through() {
        for (name, urn) in [
            ("jwt", "urn:ietf:params:oauth:token-type:jwt"),
            ("id_token", "urn:ietf:params:oauth:token-type:id_token"),
            ("saml2", "urn:ietf:params:oauth:token-type:saml2"),
            (
                "aws4_request",
                "urn:ietf:params:aws:token-type:aws4_request",
            ),
            (
                "access_token",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            (
                "urn:ietf:params:oauth:token-type:jwt",
                "urn:ietf:params:oauth:token-type:jwt",
            ),
            // The broker names the types it does not accept.
            (
                "urn:ietf:params:oauth:token-type:mtls",
                "urn:ietf:params:oauth:token-type:mtls",
            ),
        ] {
            assert_eq!(parse_token_type(name).as_deref(), Ok(urn), "{name}");
        }
        assert_eq!(
            parse_token_type("oidc"),
            Err(
                "expected one of jwt, id_token, saml2, aws4_request, access_token or a \
                 token-type URN"
                    .to_owned()
            )
        );
        let error = parse(&[
            "exchange",
            "--subject-token-file",
            "-",
            "--subject-token-type",
            "JWT",
            "--audience",
            "a",
        ])
        .err();
        assert_eq!(error.map(|e| e.exit_code()), Some(2));
    }

    #[test]
    fn exchange_and_downscope_usage_errors() {
        let scratch = Scratch::new("exchange-usage");
        let usage = |args: &[&str]| parse(args).err().map(|e| e.exit_code());
        assert_eq!(
            usage(&["exchange", "--subject-token-type", "jwt", "--audience", "a"]),
            Some(2),
            "no subject token file"
        );
        assert_eq!(
            usage(&["exchange", "--subject-token-file", "-", "--audience", "a"]),
            Some(2),
            "no type"
        );
        assert_eq!(usage(&["downscope"]), Some(2), "no boundary");

        // No audience, and no credential to supply one.
        let error = prepare(
            &[
                "exchange",
                "--subject-token-file",
                "-",
                "--subject-token-type",
                "id_token",
            ],
            b"t",
        );
        let Err(UsageError::Flags(ErrorKind::MissingRequiredArgument, message)) = error else {
            panic!("--audience is required: {error:?}");
        };
        assert!(message.starts_with("--audience is required"), "{message}");
        // ... unless it is an access token (downscoping through exchange).
        let boundary = scratch.file("boundary.json", BOUNDARY.as_bytes());
        let prepared = prepare(
            &[
                "exchange",
                "--subject-token-file",
                "-",
                "--subject-token-type",
                "access_token",
                "--boundary",
                &boundary,
            ],
            b"ya29.t",
        );
        assert!(
            matches!(prepared, Ok(Prepared::Exchange(_))),
            "{prepared:?}"
        );

        let input_error = |args: &[&str], stdin: &[u8]| match prepare(args, stdin) {
            Err(UsageError::Input(message)) => message,
            other => panic!("{args:?} should be an input error: {other:?}"),
        };
        let exchange = |file: &str| {
            vec![
                "exchange".to_owned(),
                "--subject-token-type".to_owned(),
                "jwt".to_owned(),
                "--audience".to_owned(),
                "a".to_owned(),
                "--subject-token-file".to_owned(),
                file.to_owned(),
            ]
        };

        let empty = scratch.file("empty.jwt", b"\r\n\n");
        assert_eq!(
            input_error(&args(&exchange(&empty)), b""),
            format!("the subject token in {empty} is empty")
        );
        assert_eq!(
            input_error(&args(&exchange("-")), b""),
            "the subject token in standard input is empty"
        );
        let binary = scratch.file("binary.jwt", b"eyJ\xff.secret");
        assert_eq!(
            input_error(&args(&exchange(&binary)), b""),
            format!(
                "the subject token in {binary} is not UTF-8 text (invalid utf-8 sequence of 1 \
                 bytes from index 3)"
            )
        );
        let missing = scratch.0.join("missing.jwt").to_string_lossy().into_owned();
        assert!(
            input_error(&args(&exchange(&missing)), b"")
                .starts_with(&format!("cannot read {missing}: ")),
        );

        // A boundary file that is not a boundary, checked before the token is read.
        let bad = scratch.file(
            "bad.json",
            br#"{"accessBoundary": {"accessBoundaryRules": [{"availableResource": "//r",
                "availablePermissions": ["inRole:roles/x"], "availabilityCondition": {}}]}}"#,
        );
        let mut with_bad_boundary = exchange("-");
        with_bad_boundary.extend(["--boundary".to_owned(), bad.clone()]);
        assert_eq!(
            input_error(&args(&with_bad_boundary), b""),
            format!(
                "access boundary file {bad}: \
                 accessBoundary.accessBoundaryRules[0].availabilityCondition.expression: missing"
            )
        );
        assert_eq!(
            input_error(&["downscope", "--boundary", &bad], b"ya29.t"),
            format!(
                "access boundary file {bad}: \
                 accessBoundary.accessBoundaryRules[0].availabilityCondition.expression: missing"
            )
        );
        let missing_boundary = scratch.0.join("none.json").to_string_lossy().into_owned();
        assert!(
            input_error(&["downscope", "--boundary", &missing_boundary], b"ya29.t").starts_with(
                &format!("access boundary file {missing_boundary}: cannot be read: ")
            )
        );
        assert_eq!(
            input_error(&["downscope", "--boundary", &boundary], b"\n"),
            "the access token in standard input is empty"
        );
    }

    fn args(args: &[String]) -> Vec<&str> {
        args.iter().map(String::as_str).collect()
    }

    #[test]
    fn parses_downscope_from_stdin_or_a_file() {
        let scratch = Scratch::new("downscope");
        let boundary = scratch.file("boundary.json", BOUNDARY.as_bytes());
        let prepared = prepare(
            &["downscope", "--boundary", &boundary],
            b"ya29.access-secret\n",
        );
        let debug = format!("{prepared:?}");
        assert!(!debug.contains("access-secret"), "{debug}");
        let Ok(Prepared::Downscope(request)) = prepared else {
            panic!("a downscoping request: {debug}");
        };
        assert_eq!(request.subject_token.expose(), "ya29.access-secret");
        assert_eq!(request.subject_token_type, token_type::ACCESS_TOKEN);
        assert_eq!(request.audience, None);
        assert!(request.scopes.is_empty());
        assert_eq!(
            request
                .access_boundary
                .map(|b| b.access_boundary_rules[0].available_permissions.clone()),
            Some(vec!["inRole:roles/storage.objectViewer".to_owned()])
        );

        let token = scratch.file("token.txt", b"ya29.from-a-file");
        for file in [token.as_str(), "-"] {
            let prepared = prepare(
                &[
                    "downscope",
                    "--access-token-file",
                    file,
                    "--boundary",
                    &boundary,
                    "--format",
                    "json",
                ],
                b"ya29.from-a-file",
            );
            let Ok(Prepared::Downscope(request)) = prepared else {
                panic!("a downscoping request: {prepared:?}");
            };
            assert_eq!(request.subject_token.expose(), "ya29.from-a-file");
        }
        assert_eq!(
            command(&["downscope", "--boundary", &boundary, "--format", "json"]).format(),
            Format::Json
        );
    }

    #[test]
    fn writes_exchanged_tokens_as_text_and_json() {
        let Ok(token) = ExchangedToken::from_response(ExchangeTokenResponse {
            access_token: "ya29.exchanged".to_owned(),
            issued_token_type: token_type::ACCESS_TOKEN.to_owned(),
            token_type: "Bearer".to_owned(),
            expire_time: Some(prost_types::Timestamp {
                seconds: 1_800_003_600,
                nanos: 0,
            }),
            principal: "sa@p.iam.gserviceaccount.com".to_owned(),
            credential: "federation".to_owned(),
        }) else {
            panic!("valid response");
        };
        let prepared = Prepared::Exchange(ExchangeRequest::default());
        let outcome = Outcome::Exchanged(token.clone());
        assert_eq!(
            outcome_text(&prepared, &outcome, Format::Text),
            "ya29.exchanged\n"
        );
        let json = serde_json::to_value(exchanged_json(
            &token,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ))
        .unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({
                "access_token": "ya29.exchanged",
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "token_type": "Bearer",
                "expire_time": "2027-01-15T09:00:00Z",
                "expires_in": 3600,
                "principal": "sa@p.iam.gserviceaccount.com",
                "credential": "federation",
            })
        );

        // A downscoped token: no expiry to show.
        let Ok(token) = ExchangedToken::from_response(ExchangeTokenResponse {
            access_token: "ya29.downscoped".to_owned(),
            issued_token_type: token_type::ACCESS_TOKEN.to_owned(),
            token_type: "Bearer".to_owned(),
            ..ExchangeTokenResponse::default()
        }) else {
            panic!("valid response");
        };
        let prepared = Prepared::Downscope(ExchangeRequest::default());
        let outcome = Outcome::Exchanged(token);
        let json: serde_json::Value =
            serde_json::from_str(&outcome_text(&prepared, &outcome, Format::Json))
                .unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({
                "access_token": "ya29.downscoped",
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "token_type": "Bearer",
                "principal": "",
                "credential": "",
            })
        );
    }

    fn broker_proto_response() -> GetAccessTokenResponse {
        GetAccessTokenResponse {
            access_token: "ya29.token".to_owned(),
            token_type: "Bearer".to_owned(),
            expire_time: Some(prost_types::Timestamp {
                seconds: 1_800_003_600,
                nanos: 0,
            }),
            granted_scopes: vec!["https://s".to_owned()],
            principal: "sa@p.iam.gserviceaccount.com".to_owned(),
            cache_hit: true,
            credential: "prod".to_owned(),
            last_known_good: false,
        }
    }
}
