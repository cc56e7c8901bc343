//! tokenctl as the `executable` credential source of an `external_account` credential
//! configuration (workload identity federation, AIP-4117): `executable-source` prints a
//! broker-issued ID token in the executable-response format that Google's client libraries,
//! gcloud and Terraform read, and `print-external-account-config` writes a configuration that
//! runs it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use broker_client::{ClientError, IdTokenRequest, Secret, generate_id_token, token_type};
use clap::Args;
use clap::error::ErrorKind;
use zeroize::Zeroize as _;

use crate::files::{read_small, write_atomically};
use crate::{
    Cli, EXIT_UNAVAILABLE, EXIT_USAGE, Target, UsageError, call_options, connect_target, exit_code,
    non_empty,
};

/// The executable-response version this tokenctl writes, the only one Google's clients know.
const RESPONSE_VERSION: u32 = 1;

/// The variables Google's client libraries set when they run the executable.
const ENV_AUDIENCE: &str = "GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE";
const ENV_TOKEN_TYPE: &str = "GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE";
const ENV_INTERACTIVE: &str = "GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE";
const ENV_OUTPUT_FILE: &str = "GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE";

/// A token in the output file is reused only while more than this is left: the same margin as
/// the client library's `TokenProvider`, and more than the 225 s after which Google's clients
/// treat a token as stale. A token closer to its expiry is replaced by a fresh one.
const REUSE_MARGIN: Duration = Duration::from_secs(5 * 60);

/// An output file larger than this is not a response tokenctl wrote; it is not read.
const OUTPUT_FILE_LIMIT: u64 = 64 * 1024;

/// Mode of the output file: it holds a token.
const OUTPUT_FILE_MODE: u32 = 0o600;

/// Mode of a configuration written with `--output`: it holds no secret.
const CONFIG_FILE_MODE: u32 = 0o644;

/// Google's Security Token Service.
const DEFAULT_TOKEN_URL: &str = "https://sts.googleapis.com/v1/token";

/// The bounds Google's clients put on `timeout_millis`.
const TIMEOUT_MILLIS_RANGE: std::ops::RangeInclusive<i64> = 5_000..=120_000;

pub(crate) const EXECUTABLE_SOURCE_ABOUT: &str = "\
Act as the `executable` credential source of an external_account credential configuration
(workload identity federation): get a Google-signed ID token from the broker (GenerateIdToken)
and print it in the executable-response format of Google's client libraries, gcloud and
Terraform, which exchange it at Google's Security Token Service. `tokenctl
print-external-account-config` writes a configuration that runs this command.

The ID token's audience is --audience, or else GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE: the workload
identity pool provider that the client exchanges it at
(//iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/ID).
A provider without allowed audiences accepts exactly that name as `aud` (with or without an
https: prefix); for a provider with allowed audiences, pass one of them with --audience.

On success it prints one line and exits 0:
  {\"version\":1,\"success\":true,\"token_type\":\"urn:ietf:params:oauth:token-type:id_token\",
   \"id_token\":\"eyJ...\",\"expiration_time\":<the token's exp, Unix seconds>}
(token_type is ...:jwt when GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE asks for jwt). On failure it
prints {\"version\":1,\"success\":false,\"code\":\"...\",\"message\":\"...\"}, where code is the gRPC
status and the broker's reason (for example PERMISSION_DENIED/POLICY_DENIED) or a tokenctl
code (INTERACTIVE_NOT_SUPPORTED, MISSING_AUDIENCE, UNSUPPORTED_TOKEN_TYPE,
INVALID_CONFIGURATION, DEADLINE_EXCEEDED, ...), and exits non-zero (see `tokenctl --help`).
Nothing is written to standard error: Python's google-auth reads it together with standard
output. No token appears in a failure.

With GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE (the configuration's output_file), a success response
in that file whose token has more than 5 minutes left, and was issued for the same audience
(its aud and exp claims are checked), credential and --include-email, is printed again without
calling the broker; otherwise the new response is also written there (atomically, mode 0600,
with tokenctl_credential and tokenctl_include_email fields, which Google's clients ignore). A file that
cannot be written is skipped silently: the token is still printed.

It runs only non-interactively: GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE=1 fails with
INTERACTIVE_NOT_SUPPORTED. GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL is not used: the client
impersonates that service account itself, after the exchange. The whole run, connecting
included, is bounded by --timeout.";

pub(crate) const PRINT_CONFIG_ABOUT: &str = "\
Print (or write to --output) an external_account credential configuration whose credential
source is `tokenctl executable-source`, so that tools that only support workload identity
federation (every Google client library, gcloud, Terraform's Google provider) get their tokens
through the broker. Point GOOGLE_APPLICATION_CREDENTIALS at the file.

The configuration names this tokenctl by its absolute path, followed by the connection flags
(--addr and the absolute paths of --ca, --cert and --key, from the flags or the TOKEN_BROKER_*
environment; with --connection-from-env none are written and the environment of the program
that runs the command must set TOKEN_BROKER_*) and a --timeout a little below
--timeout-millis. The path is that of the running tokenctl with symbolic links resolved
(often a versioned install path); --tokenctl-path names another, such as a stable link.

Google's clients split the command into words differently (Python's google-auth with shell-like
quoting, Node's at whitespace, stripping quotes; others at whitespace), so no path or value
may contain whitespace, quotes (' or \"), backslashes or control characters: such a
command is refused rather than written.

Google's clients run executables only when GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1 is set
in their environment.";

pub(crate) const PROVIDER_SETUP: &str = "\
The workload identity pool provider (set up once):
  The broker's ID tokens are issued by Google: iss https://accounts.google.com, sub the
  service account's unique ID, aud the audience asked for, and email when it is included.
  Create an OIDC provider for that issuer, and let the broker's policy allow the audience
  (a GenerateIdToken grant whose audiences list the provider's name):

  gcloud iam workload-identity-pools providers create-oidc broker \\
      --location=global --workload-identity-pool=POOL \\
      --issuer-uri=https://accounts.google.com \\
      --attribute-mapping=google.subject=assertion.sub \\
      --attribute-condition=\"assertion.sub == 'SERVICE_ACCOUNT_UNIQUE_ID'\"

  With no --allowed-audiences the provider accepts its own name as aud, which is what
  executable-source asks for by default. Then grant the federated principal
  (principal://iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/subject/UNIQUE_ID)
  access, or roles/iam.workloadIdentityUser on a service account and use --impersonate.

Examples:
  tokenctl print-external-account-config \\
      --audience //iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/POOL/providers/broker \\
      --impersonate deployer@my-project.iam.gserviceaccount.com \\
      --executable-output-file /var/run/tokenctl/id-token.json --output broker-wif.json
  export GOOGLE_APPLICATION_CREDENTIALS=$PWD/broker-wif.json GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1
  terraform plan";

#[derive(Debug, Args)]
pub(crate) struct ExecutableSource {
    /// The audience of the ID token. Default: GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE, the workload
    /// identity pool provider that Google's client exchanges the token at.
    #[arg(long, value_name = "AUDIENCE")]
    audience: Option<String>,

    /// The broker credential whose identity the ID token names. Default: the credential of
    /// the caller's default grant.
    #[arg(long, value_name = "NAME")]
    credential: Option<String>,

    /// Ask for the `email` and `email_verified` claims (for provider attribute mappings that
    /// use assertion.email).
    #[arg(long)]
    include_email: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PrintExternalAccountConfig {
    /// The workload identity pool provider:
    /// //iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/ID.
    #[arg(long, value_name = "PROVIDER")]
    audience: String,

    /// The service account Google's client impersonates with the federated token (IAM
    /// generateAccessToken); it needs roles/iam.workloadIdentityUser for the federated
    /// principal.
    #[arg(
        long,
        value_name = "EMAIL",
        conflicts_with = "service_account_impersonation_url"
    )]
    impersonate: Option<String>,

    /// The impersonation URL itself, instead of --impersonate:
    /// https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/EMAIL:generateAccessToken.
    #[arg(long, value_name = "URL")]
    service_account_impersonation_url: Option<String>,

    /// The Security Token Service endpoint.
    #[arg(long, value_name = "URL", default_value = DEFAULT_TOKEN_URL)]
    token_url: String,

    /// How long Google's client lets the command run, in milliseconds (5000 to 120000).
    #[arg(
        long,
        value_name = "MILLIS",
        default_value_t = 30_000,
        value_parser = clap::value_parser!(u32).range(TIMEOUT_MILLIS_RANGE)
    )]
    timeout_millis: u32,

    /// The executable's output file (the configuration's output_file): Google's client reads a
    /// still-valid token from it before running the command, and the command caches its
    /// response there (mode 0600). Written as an absolute path.
    #[arg(long, value_name = "FILE")]
    executable_output_file: Option<PathBuf>,

    /// The `aud` of the ID token, when the provider does not accept its own name (it lists
    /// allowed audiences). Default: the provider (--audience), as Google's client passes it.
    #[arg(long, value_name = "AUDIENCE")]
    id_token_audience: Option<String>,

    /// The broker credential whose identity the ID token names (passed to
    /// executable-source).
    #[arg(long, value_name = "NAME")]
    credential: Option<String>,

    /// Have executable-source ask for the `email` claim.
    #[arg(long)]
    include_email: bool,

    /// Leave the connection flags out of the command: the environment of the program that
    /// runs it must set TOKEN_BROKER_ADDR, TOKEN_BROKER_CA, TOKEN_BROKER_CERT and
    /// TOKEN_BROKER_KEY.
    #[arg(long)]
    connection_from_env: bool,

    /// Write the configuration to this file (atomically, mode 0644) instead of standard
    /// output.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// The tokenctl the configuration runs (made absolute, symbolic links kept). Default:
    /// this tokenctl, with symbolic links resolved.
    #[arg(long, value_name = "PATH")]
    tokenctl_path: Option<PathBuf>,
}

// ===== executable-source =====

/// What Google's client passes in the environment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ExecutableEnv {
    audience: Option<String>,
    token_type: Option<String>,
    interactive: bool,
    output_file: Option<PathBuf>,
}

impl ExecutableEnv {
    fn read() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        let text = |name: &str| var(name).map(|value| value.to_string_lossy().into_owned());
        Self {
            audience: text(ENV_AUDIENCE),
            token_type: text(ENV_TOKEN_TYPE),
            interactive: var(ENV_INTERACTIVE).is_some_and(|value| value == "1"),
            output_file: var(ENV_OUTPUT_FILE).map(PathBuf::from),
        }
    }
}

/// The executable response for a token (`version` 1, `success` true).
#[derive(serde::Serialize)]
struct SuccessResponse<'a> {
    version: u32,
    success: bool,
    token_type: &'a str,
    id_token: &'a str,
    expiration_time: u64,
}

/// The executable response for a failure (`version` 1, `success` false).
#[derive(Debug, serde::Serialize)]
struct FailureResponse<'a> {
    version: u32,
    success: bool,
    code: &'a str,
    message: &'a str,
}

/// A failure: the response's code and message, and the exit code.
#[derive(Debug, PartialEq, Eq)]
struct Failure {
    code: String,
    message: String,
    exit: u8,
}

impl Failure {
    fn usage(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            exit: EXIT_USAGE,
        }
    }

    fn response(&self) -> String {
        serde_json::to_string(&FailureResponse {
            version: RESPONSE_VERSION,
            success: false,
            code: &self.code,
            message: &self.message,
        })
        .unwrap_or_default()
    }
}

impl From<&ClientError> for Failure {
    /// The gRPC status and the broker's reason, or what failed before a status; the message is
    /// the error's one-line text, which never holds a token.
    fn from(error: &ClientError) -> Self {
        let code = match error {
            ClientError::Status(status) => match &status.reason {
                Some(reason) => format!("{}/{reason}", status.code_name()),
                None => status.code_name().to_owned(),
            },
            ClientError::Config(_) => "INVALID_CONFIGURATION".to_owned(),
            ClientError::TlsFile { .. } => "TLS_FILE".to_owned(),
            ClientError::Tls { .. } => "TLS_HANDSHAKE".to_owned(),
            ClientError::Connect { .. } => "UNAVAILABLE".to_owned(),
            ClientError::Protocol(_) => "INVALID_RESPONSE".to_owned(),
            _ => "UNKNOWN".to_owned(),
        };
        Self {
            code,
            message: error.to_string(),
            exit: exit_code(error),
        }
    }
}

/// The subject token type to answer with: the configuration's, passed in
/// GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE (an ID token is also a JWT); none means id_token.
fn response_token_type(requested: Option<&str>) -> Result<&'static str, Failure> {
    match requested {
        None => Ok(token_type::ID_TOKEN),
        Some(value) if value == token_type::ID_TOKEN => Ok(token_type::ID_TOKEN),
        Some(value) if value == token_type::JWT => Ok(token_type::JWT),
        Some(other) => Err(Failure::usage(
            "UNSUPPORTED_TOKEN_TYPE",
            format!(
                "{ENV_TOKEN_TYPE} is {other:?}; tokenctl supplies Google ID tokens, so the \
                 configuration's subject_token_type must be {} or {}",
                token_type::ID_TOKEN,
                token_type::JWT
            ),
        )),
    }
}

/// A response read back from the output file.
#[derive(serde::Deserialize)]
struct CachedResponse {
    version: Option<u64>,
    success: Option<bool>,
    token_type: Option<String>,
    id_token: Option<String>,
    expiration_time: Option<u64>,
    #[serde(rename = "tokenctl_credential")]
    credential: Option<String>,
    #[serde(rename = "tokenctl_include_email")]
    include_email: Option<bool>,
}

/// The response written to the output file: the contract's fields, and what the token was
/// asked for (the credential as requested, empty for the default grant, and whether the email
/// was included), which Google's clients ignore and tokenctl checks before reusing the token.
#[derive(serde::Serialize)]
struct CachedFile<'a> {
    version: u32,
    success: bool,
    token_type: &'a str,
    id_token: &'a str,
    expiration_time: u64,
    tokenctl_credential: &'a str,
    tokenctl_include_email: bool,
}

/// What a token in the output file must have been issued for to be reused.
#[derive(Debug, Clone, Copy)]
struct CacheKey<'a> {
    token_type: &'a str,
    audience: &'a str,
    /// The requested credential; empty for the caller's default grant.
    credential: &'a str,
    include_email: bool,
}

/// The claims of the cached ID token that decide whether it can be reused.
#[derive(serde::Deserialize)]
struct Claims {
    aud: Option<Audience>,
    exp: Option<u64>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    /// Whether the token is for exactly `audience` (and no other).
    fn is(&self, audience: &str) -> bool {
        match self {
            Self::One(one) => one == audience,
            Self::Many(many) => many.len() == 1 && many[0] == audience,
        }
    }
}

/// Unpadded (or padded) base64url, RFC 4648 §5.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()
}

/// The claims of a compact JWS's payload; `None` if it is not one.
fn jwt_claims(token: &str) -> Option<Claims> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    serde_json::from_slice(&base64url_decode(payload)?).ok()
}

/// A token from the output file that can be handed out again.
struct Reusable {
    id_token: Secret,
    expiration_time: u64,
}

/// The token of a success response for `key` in `contents` that has more than `margin` left
/// at `now`; `None` for anything else (a failure, another type, audience, credential or email
/// setting, an expired or malformed response, a token whose claims disagree with it).
fn reusable(
    contents: &[u8],
    key: CacheKey<'_>,
    now: SystemTime,
    margin: Duration,
) -> Option<Reusable> {
    let cached: CachedResponse = serde_json::from_slice(contents).ok()?;
    let id_token = Secret::new(cached.id_token?);
    let expiration_time = cached.expiration_time?;
    let usable_until = unix_seconds(now + margin);
    let reusable = cached.version == Some(u64::from(RESPONSE_VERSION))
        && cached.success == Some(true)
        && cached.token_type.as_deref() == Some(key.token_type)
        && cached.credential.as_deref() == Some(key.credential)
        && cached.include_email == Some(key.include_email)
        && !id_token.expose().is_empty()
        && expiration_time > usable_until
        && jwt_claims(id_token.expose()).is_some_and(|claims| {
            claims.exp == Some(expiration_time)
                && claims.aud.is_some_and(|aud| aud.is(key.audience))
        });
    reusable.then_some(Reusable {
        id_token,
        expiration_time,
    })
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or_default()
}

fn success_response(token_type: &str, id_token: &str, expiration_time: u64) -> Secret {
    Secret::new(
        serde_json::to_string(&SuccessResponse {
            version: RESPONSE_VERSION,
            success: true,
            token_type,
            id_token,
            expiration_time,
        })
        .unwrap_or_default(),
    )
}

/// The output file's contents: the response with what the token was asked for, and a newline.
fn cached_file(key: CacheKey<'_>, id_token: &str, expiration_time: u64) -> Secret {
    Secret::new(
        serde_json::to_string(&CachedFile {
            version: RESPONSE_VERSION,
            success: true,
            token_type: key.token_type,
            id_token,
            expiration_time,
            tokenctl_credential: key.credential,
            tokenctl_include_email: key.include_email,
        })
        .map(|json| format!("{json}\n"))
        .unwrap_or_default(),
    )
}

/// The checks that need no broker, in the order Google's contract implies: interactive mode,
/// the token type, the audience.
fn settings(
    args: &ExecutableSource,
    env: &ExecutableEnv,
) -> Result<(&'static str, String), Failure> {
    if env.interactive {
        return Err(Failure::usage(
            "INTERACTIVE_NOT_SUPPORTED",
            format!(
                "tokenctl runs only non-interactively, but {ENV_INTERACTIVE}=1; use a \
                 configuration without interactive mode"
            ),
        ));
    }
    let token_type = response_token_type(env.token_type.as_deref())?;
    let audience = non_empty(args.audience.as_ref())
        .or_else(|| env.audience.clone())
        .ok_or_else(|| {
            Failure::usage(
                "MISSING_AUDIENCE",
                format!("no --audience, and {ENV_AUDIENCE} is not set"),
            )
        })?;
    Ok((token_type, audience))
}

/// `tokenctl executable-source`: prints one executable response on standard output and
/// nothing on standard error.
pub(crate) fn executable_source(cli: &Cli, args: &ExecutableSource) -> ExitCode {
    let env = ExecutableEnv::read();
    match respond(cli, args, &env) {
        Ok(response) => print_response(response.expose(), ExitCode::SUCCESS),
        Err(failure) => print_response(&failure.response(), ExitCode::from(failure.exit)),
    }
}

fn print_response(response: &str, code: ExitCode) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{response}").and_then(|()| stdout.flush()) {
        Ok(()) => code,
        Err(_) => ExitCode::from(crate::EXIT_GENERIC),
    }
}

fn respond(cli: &Cli, args: &ExecutableSource, env: &ExecutableEnv) -> Result<Secret, Failure> {
    let (token_type, audience) = settings(args, env)?;
    let credential = non_empty(args.credential.as_ref());
    let key = CacheKey {
        token_type,
        audience: &audience,
        credential: credential.as_deref().unwrap_or_default(),
        include_email: args.include_email,
    };
    if let Some(path) = &env.output_file
        && let Some(mut contents) = read_small(path, OUTPUT_FILE_LIMIT)
    {
        let cached = reusable(&contents, key, SystemTime::now(), REUSE_MARGIN);
        contents.zeroize();
        if let Some(cached) = cached {
            return Ok(success_response(
                token_type,
                cached.id_token.expose(),
                cached.expiration_time,
            ));
        }
    }
    let target = cli
        .target()
        .map_err(|missing| Failure::usage("INVALID_CONFIGURATION", missing))?;
    let request = IdTokenRequest {
        audience: audience.clone(),
        include_email: args.include_email,
        credential: credential.clone(),
        ..IdTokenRequest::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Failure {
            code: "INTERNAL".to_owned(),
            message: format!("cannot start the runtime: {error}"),
            exit: crate::EXIT_GENERIC,
        })?;
    let token = runtime
        .block_on(fetch(&target, &request))
        .map_err(|error| match error {
            Fetch::Failed(error) => Failure::from(&error),
            Fetch::TimedOut => Failure {
                code: "DEADLINE_EXCEEDED".to_owned(),
                message: format!(
                    "no ID token from the broker within {}",
                    humantime::format_duration(target.timeout)
                ),
                exit: EXIT_UNAVAILABLE,
            },
        })?;
    let expiration_time = unix_seconds(token.expire_time);
    let response = success_response(token_type, token.secret(), expiration_time);
    if let Some(path) = &env.output_file {
        let file = cached_file(key, token.secret(), expiration_time);
        // A cache that cannot be written costs a broker call next time, nothing more; and
        // standard error is not the place to say so (google-auth reads it as the response).
        let _ = write_atomically(path, file.expose().as_bytes(), OUTPUT_FILE_MODE);
    }
    Ok(response)
}

enum Fetch {
    Failed(ClientError),
    TimedOut,
}

/// Connects and asks for the ID token, all within `--timeout`.
async fn fetch(target: &Target, request: &IdTokenRequest) -> Result<broker_client::IdToken, Fetch> {
    let call = async {
        let client = connect_target(target).await?;
        generate_id_token(&client, request, &call_options(target)).await
    };
    match tokio::time::timeout(target.timeout, call).await {
        Ok(result) => result.map_err(Fetch::Failed),
        Err(_) => Err(Fetch::TimedOut),
    }
}

// ===== print-external-account-config =====

/// The `external_account` configuration.
#[derive(Debug, serde::Serialize)]
struct ExternalAccountConfig<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    audience: &'a str,
    subject_token_type: &'static str,
    token_url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_account_impersonation_url: Option<String>,
    credential_source: CredentialSource,
}

#[derive(Debug, serde::Serialize)]
struct CredentialSource {
    executable: Executable,
}

#[derive(Debug, serde::Serialize)]
struct Executable {
    command: String,
    timeout_millis: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_file: Option<String>,
}

/// The `--timeout` given to executable-source: below `timeout_millis` by a fifth, at most 5 s,
/// so that it can still print a failure before Google's client kills it.
fn command_timeout(timeout_millis: u32) -> Duration {
    let margin = (timeout_millis / 5).min(5_000);
    Duration::from_millis(u64::from(timeout_millis - margin))
}

/// A path as text, absolute (relative to the current directory; symbolic links are kept, so
/// that a rotated Kubernetes secret is followed).
fn absolute_text(path: &Path, what: &str) -> Result<String, UsageError> {
    let absolute = std::path::absolute(path).map_err(|error| {
        UsageError::Input(format!(
            "cannot make {what} {} absolute: {error}",
            path.display()
        ))
    })?;
    absolute.to_str().map(str::to_owned).ok_or_else(|| {
        UsageError::Input(format!("{what} {} is not UTF-8 text", absolute.display()))
    })
}

/// Whether Google's clients read `word` back as itself: they split the command differently
/// (google-auth with `shlex.split`, which honours quotes and backslashes; Node at whitespace,
/// stripping quotes; Go and Java at whitespace), and agree only on words without whitespace,
/// quotes, backslashes or control characters.
fn is_plain_word(word: &str) -> bool {
    !word.is_empty()
        && !word
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '\'' | '"' | '\\'))
}

/// Joins the command's words with spaces; refuses an empty word or one that Google's clients
/// would split or unquote ([`is_plain_word`]).
fn join_command(words: &[(String, &str)]) -> Result<String, UsageError> {
    for (word, what) in words {
        if !is_plain_word(word) {
            return Err(UsageError::Input(format!(
                "{what} {word:?} is empty or contains whitespace, a quote, a backslash or a \
                 control character: Google's clients split the executable command at \
                 whitespace and some of them interpret quotes and backslashes, so it would not \
                 run as written"
            )));
        }
    }
    Ok(words
        .iter()
        .map(|(word, _)| word.as_str())
        .collect::<Vec<_>>()
        .join(" "))
}

impl PrintExternalAccountConfig {
    /// The configuration, for the tokenctl at `exe` and the connection `target` (`None`: from
    /// the environment at run time).
    fn config(&self, exe: &Path, target: Option<&Target>) -> Result<String, UsageError> {
        let audience = self.audience.trim();
        if !audience.starts_with("//") {
            return Err(UsageError::Flags(
                ErrorKind::InvalidValue,
                format!(
                    "--audience {audience:?} is not a provider name; expected \
                     //iam.googleapis.com/projects/NUMBER/locations/global/\
                     workloadIdentityPools/POOL/providers/ID"
                ),
            ));
        }
        let impersonation_url = match (&self.impersonate, &self.service_account_impersonation_url) {
            (Some(email), _) => {
                let email = email.trim();
                if email.is_empty() || email.contains(['/', ':']) || !email.contains('@') {
                    return Err(UsageError::Flags(
                        ErrorKind::InvalidValue,
                        format!("--impersonate {email:?} is not a service-account email"),
                    ));
                }
                Some(format!(
                    "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/\
                     {email}:generateAccessToken"
                ))
            }
            (None, Some(url)) => Some(url.trim().to_owned()).filter(|url| !url.is_empty()),
            (None, None) => None,
        };

        let mut words = vec![(
            absolute_text(exe, "the path of tokenctl")?,
            "tokenctl's path",
        )];
        if let Some(target) = target {
            words.push(("--addr".to_owned(), "--addr"));
            words.push((target.addr.trim().to_owned(), "the broker address"));
            for (flag, path, what) in [
                ("--ca", &target.files.ca, "the CA file"),
                ("--cert", &target.files.cert, "the certificate file"),
                ("--key", &target.files.key, "the key file"),
            ] {
                words.push((flag.to_owned(), flag));
                words.push((absolute_text(path, what)?, what));
            }
        }
        words.push(("--timeout".to_owned(), "--timeout"));
        words.push((
            format!("{}ms", command_timeout(self.timeout_millis).as_millis()),
            "the timeout",
        ));
        words.push(("executable-source".to_owned(), "the command"));
        if let Some(aud) = non_empty(self.id_token_audience.as_ref()) {
            words.push(("--audience".to_owned(), "--audience"));
            words.push((aud, "the ID-token audience"));
        }
        if let Some(credential) = non_empty(self.credential.as_ref()) {
            words.push(("--credential".to_owned(), "--credential"));
            words.push((credential, "the credential"));
        }
        if self.include_email {
            words.push(("--include-email".to_owned(), "--include-email"));
        }
        let command = join_command(&words)?;

        let output_file = self
            .executable_output_file
            .as_deref()
            .map(|path| absolute_text(path, "the executable output file"))
            .transpose()?;
        let config = ExternalAccountConfig {
            kind: "external_account",
            audience,
            subject_token_type: token_type::ID_TOKEN,
            token_url: self.token_url.trim(),
            service_account_impersonation_url: impersonation_url,
            credential_source: CredentialSource {
                executable: Executable {
                    command,
                    timeout_millis: self.timeout_millis,
                    output_file,
                },
            },
        };
        serde_json::to_string_pretty(&config)
            .map(|json| format!("{json}\n"))
            .map_err(|error| UsageError::Input(format!("cannot render the configuration: {error}")))
    }
}

/// `tokenctl print-external-account-config`.
pub(crate) fn print_external_account_config(
    cli: &Cli,
    args: &PrintExternalAccountConfig,
) -> Result<(), crate::Failed> {
    let target =
        if args.connection_from_env {
            None
        } else {
            Some(cli.target().map_err(|missing| {
                UsageError::Flags(ErrorKind::MissingRequiredArgument, missing)
            })?)
        };
    let exe = match &args.tokenctl_path {
        Some(path) => path.clone(),
        None => std::env::current_exe().map_err(|error| {
            UsageError::Input(format!("cannot find the path of this tokenctl: {error}"))
        })?,
    };
    let config = args.config(&exe, target.as_ref())?;
    match &args.output {
        Some(path) => {
            write_atomically(path, config.as_bytes(), CONFIG_FILE_MODE).map_err(|error| {
                crate::Failed::Other(format!("cannot write {}: {error}", path.display()))
            })
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(config.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|error| {
                    crate::Failed::Other(format!("cannot write to standard output: {error}"))
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use broker_client::{ERROR_DOMAIN, TlsFiles};
    use clap::Parser as _;
    use tonic::Code;
    use tonic_types::{ErrorDetails, StatusExt as _};

    use super::*;

    const PROVIDER: &str =
        "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/providers/b";

    fn args(args: &[&str]) -> Cli {
        match Cli::try_parse_from(std::iter::once("tokenctl").chain(args.iter().copied())) {
            Ok(cli) => cli,
            Err(error) => panic!("{args:?} should parse: {error}"),
        }
    }

    fn executable_source_args(extra: &[&str]) -> ExecutableSource {
        let mut all = vec!["executable-source"];
        all.extend_from_slice(extra);
        match args(&all).command {
            crate::Command::ExecutableSource(args) => args,
            other => panic!("executable-source: {other:?}"),
        }
    }

    fn print_config_args(extra: &[&str]) -> PrintExternalAccountConfig {
        let mut all = vec!["print-external-account-config", "--audience", PROVIDER];
        all.extend_from_slice(extra);
        match args(&all).command {
            crate::Command::PrintExternalAccountConfig(args) => args,
            other => panic!("print-external-account-config: {other:?}"),
        }
    }

    #[test]
    fn interactive_mode_then_the_token_type_then_the_audience_are_checked() {
        let env = ExecutableEnv {
            audience: Some(PROVIDER.to_owned()),
            ..ExecutableEnv::default()
        };
        let plain = executable_source_args(&[]);
        assert_eq!(
            settings(&plain, &env),
            Ok((token_type::ID_TOKEN, PROVIDER.to_owned()))
        );
        // --audience wins over the environment.
        let explicit = executable_source_args(&["--audience", "https://aud"]);
        assert_eq!(
            settings(&explicit, &env).map(|(_, audience)| audience),
            Ok("https://aud".to_owned())
        );

        let interactive = ExecutableEnv {
            interactive: true,
            token_type: Some("urn:x".to_owned()),
            ..ExecutableEnv::default()
        };
        assert_eq!(
            settings(&plain, &interactive).map_err(|f| (f.code, f.exit)),
            Err(("INTERACTIVE_NOT_SUPPORTED".to_owned(), EXIT_USAGE))
        );

        let jwt = ExecutableEnv {
            token_type: Some(token_type::JWT.to_owned()),
            ..env.clone()
        };
        assert_eq!(
            settings(&plain, &jwt).map(|(token_type, _)| token_type),
            Ok(token_type::JWT)
        );
        let saml = ExecutableEnv {
            token_type: Some(token_type::SAML2.to_owned()),
            ..env
        };
        assert_eq!(
            settings(&plain, &saml).map_err(|f| f.code),
            Err("UNSUPPORTED_TOKEN_TYPE".to_owned())
        );
        assert_eq!(
            settings(&plain, &ExecutableEnv::default()).map_err(|f| f.code),
            Err("MISSING_AUDIENCE".to_owned())
        );
    }

    #[test]
    fn responses_have_exactly_the_contract_fields() {
        let success: serde_json::Value = serde_json::from_str(
            success_response(token_type::ID_TOKEN, "eyJ.a.b", 1_800_003_600).expose(),
        )
        .unwrap_or_default();
        assert_eq!(
            success,
            serde_json::json!({
                "version": 1,
                "success": true,
                "token_type": "urn:ietf:params:oauth:token-type:id_token",
                "id_token": "eyJ.a.b",
                "expiration_time": 1_800_003_600_u64,
            })
        );

        let details = ErrorDetails::with_error_info(
            "POLICY_DENIED",
            ERROR_DOMAIN,
            HashMap::from([("rule".to_owned(), "audiences".to_owned())]),
        );
        let error = ClientError::from(tonic::Status::with_error_details(
            Code::PermissionDenied,
            "audience not allowed",
            details,
        ));
        let failure = Failure::from(&error);
        assert_eq!(failure.exit, crate::EXIT_PERMISSION_DENIED);
        let json: serde_json::Value = serde_json::from_str(&failure.response()).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({
                "version": 1,
                "success": false,
                "code": "PERMISSION_DENIED/POLICY_DENIED",
                "message": "PERMISSION_DENIED (POLICY_DENIED): audience not allowed [rule=audiences]",
            })
        );
        let failure = Failure::from(&ClientError::from(tonic::Status::unavailable("down")));
        assert_eq!(
            (failure.code.as_str(), failure.exit),
            ("UNAVAILABLE", EXIT_UNAVAILABLE)
        );
        let failure = Failure::from(&ClientError::Connect {
            endpoint: "https://b:1".to_owned(),
            reason: "refused".to_owned(),
        });
        assert_eq!(failure.code, "UNAVAILABLE");
        assert_eq!(failure.message, "cannot connect to https://b:1: refused");
    }

    /// Unpadded base64url, for test tokens.
    fn base64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut text = String::new();
        for chunk in bytes.chunks(3) {
            let mut buffer = [0_u8; 3];
            buffer[..chunk.len()].copy_from_slice(chunk);
            let n =
                (u32::from(buffer[0]) << 16) | (u32::from(buffer[1]) << 8) | u32::from(buffer[2]);
            for i in 0..=chunk.len() {
                let index = usize::try_from((n >> (18 - 6 * i)) & 63).unwrap_or_default();
                text.push(char::from(ALPHABET[index]));
            }
        }
        text
    }

    /// A JWS-shaped token with these claims.
    fn jwt(claims: &serde_json::Value) -> String {
        format!("e30.{}.sig", base64url(claims.to_string().as_bytes()))
    }

    #[test]
    fn base64url_round_trips() {
        for input in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "\u{ff}\u{fe}?>",
        ] {
            assert_eq!(
                base64url_decode(&base64url(input.as_bytes())).as_deref(),
                Some(input.as_bytes()),
                "{input:?}"
            );
        }
        assert_eq!(base64url_decode("Zm9v").as_deref(), Some(&b"foo"[..]));
        assert_eq!(base64url_decode("Zg==").as_deref(), Some(&b"f"[..]));
        assert!(base64url_decode("Zm9v+").is_none());
        assert!(base64url_decode("Z").is_none());
    }

    #[test]
    fn reuses_only_a_valid_success_of_the_same_request_with_time_left() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let margin = Duration::from_secs(300);
        let key = CacheKey {
            token_type: token_type::ID_TOKEN,
            audience: PROVIDER,
            credential: "prod",
            include_email: false,
        };
        let token = |aud: &str, exp: u64| jwt(&serde_json::json!({"aud": aud, "exp": exp}));
        let file = |key: CacheKey<'_>, id_token: &str, expiration: u64| {
            cached_file(key, id_token, expiration)
                .expose()
                .as_bytes()
                .to_vec()
        };
        let good = token(PROVIDER, 1_800_000_301);
        let valid = file(key, &good, 1_800_000_301);
        let reused = reusable(&valid, key, now, margin);
        assert_eq!(
            reused
                .as_ref()
                .map(|r| (r.id_token.expose(), r.expiration_time)),
            Some((good.as_str(), 1_800_000_301))
        );
        let long = token(PROVIDER, 1_800_003_600);
        for (contents, why) in [
            (
                file(key, &token(PROVIDER, 1_800_000_300), 1_800_000_300),
                "too little left",
            ),
            (
                file(key, &token(PROVIDER, 1_799_999_999), 1_799_999_999),
                "expired",
            ),
            (
                file(
                    CacheKey {
                        token_type: token_type::JWT,
                        ..key
                    },
                    &long,
                    1_800_003_600,
                ),
                "another type",
            ),
            (
                file(key, &token("https://other", 1_800_003_600), 1_800_003_600),
                "another audience",
            ),
            (
                file(key, &long, 1_800_003_599),
                "exp disagrees with expiration_time",
            ),
            (
                file(
                    key,
                    &jwt(&serde_json::json!({"exp": 1_800_003_600_u64})),
                    1_800_003_600,
                ),
                "no aud",
            ),
            (
                file(
                    key,
                    &jwt(&serde_json::json!({"aud": PROVIDER})),
                    1_800_003_600,
                ),
                "no exp",
            ),
            (file(key, "eyJ.not-base64!.sig", 1_800_003_600), "not a JWT"),
            (
                file(
                    CacheKey {
                        credential: "other",
                        ..key
                    },
                    &long,
                    1_800_003_600,
                ),
                "another credential",
            ),
            (
                file(
                    CacheKey {
                        credential: "",
                        ..key
                    },
                    &long,
                    1_800_003_600,
                ),
                "the default credential",
            ),
            (
                file(
                    CacheKey {
                        include_email: true,
                        ..key
                    },
                    &long,
                    1_800_003_600,
                ),
                "with the email",
            ),
            (
                success_response(token_type::ID_TOKEN, &long, 1_800_003_600)
                    .expose()
                    .as_bytes()
                    .to_vec(),
                "no credential recorded",
            ),
            (
                br#"{"version":1,"success":false,"code":"X","message":"m"}"#.to_vec(),
                "a failure",
            ),
            (
                String::from_utf8_lossy(&file(key, &long, 1_800_003_600))
                    .replace("\"version\":1", "\"version\":2")
                    .into_bytes(),
                "another version",
            ),
            (file(key, "", 1_800_003_600), "an empty token"),
            (b"not json".to_vec(), "not JSON"),
            (Vec::new(), "empty"),
        ] {
            assert!(reusable(&contents, key, now, margin).is_none(), "{why}");
        }
        assert!(reusable(&file(key, &long, 1_800_003_600), key, now, margin).is_some());
    }

    fn target() -> Target {
        Target {
            addr: "broker.internal:8443".to_owned(),
            files: TlsFiles {
                ca: "/etc/tokenbroker/ca.pem".into(),
                cert: "certs/client.pem".into(),
                key: "/etc/tokenbroker/client.key".into(),
            },
            timeout: Duration::from_secs(10),
            retry: true,
        }
    }

    #[test]
    fn the_config_runs_this_tokenctl_with_its_connection() {
        let exe = Path::new("/opt/bin/tokenctl");
        let config = print_config_args(&[
            "--impersonate",
            "deployer@p.iam.gserviceaccount.com",
            "--executable-output-file",
            "/run/id-token.json",
            "--timeout-millis",
            "10000",
            "--credential",
            "prod",
            "--include-email",
        ])
        .config(exe, Some(&target()));
        let json: serde_json::Value = config
            .as_deref()
            .ok()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default();
        let cwd = std::env::current_dir().unwrap_or_default();
        let cert = cwd.join("certs/client.pem");
        assert_eq!(
            json,
            serde_json::json!({
                "type": "external_account",
                "audience": PROVIDER,
                "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
                "token_url": "https://sts.googleapis.com/v1/token",
                "service_account_impersonation_url": "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/deployer@p.iam.gserviceaccount.com:generateAccessToken",
                "credential_source": {"executable": {
                    "command": format!(
                        "/opt/bin/tokenctl --addr broker.internal:8443 --ca /etc/tokenbroker/ca.pem \
                         --cert {} --key /etc/tokenbroker/client.key --timeout 8000ms \
                         executable-source --credential prod --include-email",
                        cert.display()
                    ),
                    "timeout_millis": 10000,
                    "output_file": "/run/id-token.json",
                }},
            })
        );

        // From the environment, with an explicit URL, token URL and ID-token audience.
        let config = print_config_args(&[
            "--service-account-impersonation-url",
            "https://iamcredentials.example/v1/x:generateAccessToken",
            "--token-url",
            "https://sts.example/v1/token",
            "--id-token-audience",
            "https://custom-audience",
        ])
        .config(exe, None);
        let json: serde_json::Value = config
            .as_deref()
            .ok()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default();
        assert_eq!(json["token_url"], "https://sts.example/v1/token");
        assert_eq!(
            json["service_account_impersonation_url"],
            "https://iamcredentials.example/v1/x:generateAccessToken"
        );
        assert_eq!(
            json["credential_source"],
            serde_json::json!({"executable": {
                "command": "/opt/bin/tokenctl --timeout 25000ms executable-source \
                            --audience https://custom-audience",
                "timeout_millis": 30000,
            }})
        );
    }

    #[test]
    fn config_usage_errors() {
        let exe = Path::new("/opt/bin/tokenctl");
        let error = print_config_args(&[])
            .config(Path::new("/opt/my tools/tokenctl"), None)
            .err();
        let Some(UsageError::Input(message)) = error else {
            panic!("a path with a space: {error:?}");
        };
        assert!(message.contains("contains whitespace"), "{message}");
        for word in [
            "it's",
            "say\"hi\"",
            "back\\slash",
            "tab\there",
            "bell\u{7}",
            "nl\n",
        ] {
            assert!(
                print_config_args(&["--credential", word])
                    .config(exe, None)
                    .is_err(),
                "{word:?}"
            );
        }
        assert!(
            print_config_args(&["--credential", "ok-name_1.2@x:y/z=w"])
                .config(exe, None)
                .is_ok()
        );
        assert!(
            print_config_args(&["--credential", "a b"])
                .config(exe, None)
                .is_err()
        );
        assert!(
            print_config_args(&["--impersonate", "not-an-email"])
                .config(exe, None)
                .is_err()
        );
        let error = match args(&[
            "print-external-account-config",
            "--audience",
            "https://iam.googleapis.com/projects/1",
        ])
        .command
        {
            crate::Command::PrintExternalAccountConfig(args) => args.config(exe, None).err(),
            other => panic!("{other:?}"),
        };
        assert!(
            matches!(error, Some(UsageError::Flags(ErrorKind::InvalidValue, _))),
            "{error:?}"
        );
        let parse = |extra: &[&str]| {
            let mut all = vec!["print-external-account-config", "--audience", PROVIDER];
            all.extend_from_slice(extra);
            Cli::try_parse_from(std::iter::once("tokenctl").chain(all)).map(drop)
        };
        assert!(parse(&["--timeout-millis", "4999"]).is_err());
        assert!(parse(&["--timeout-millis", "120001"]).is_err());
        assert!(
            parse(&[
                "--impersonate",
                "a@p",
                "--service-account-impersonation-url",
                "https://x"
            ])
            .is_err()
        );
    }

    #[test]
    fn the_command_timeout_leaves_room_to_answer() {
        assert_eq!(command_timeout(30_000), Duration::from_secs(25));
        assert_eq!(command_timeout(5_000), Duration::from_secs(4));
        assert_eq!(command_timeout(120_000), Duration::from_secs(115));
    }
}
