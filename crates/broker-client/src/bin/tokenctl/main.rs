//! `tokenctl`: command-line client of the token broker.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use broker_client::{
    AccessToken, ClientError, Code, ConnectOptions, ProviderOptions, RetryPolicy, TlsFiles,
    TokenProvider, TokenRequest, connect, split_scopes, whole_seconds_ceil,
};
use clap::{ArgAction, Args, CommandFactory as _, Parser, Subcommand, ValueEnum};

const LONG_ABOUT: &str = "\
Command-line client of the token broker. It authenticates with a TLS client certificate and
prints short-lived Google credentials.

The broker's address and the client's TLS files come from flags or from the environment
(TOKEN_BROKER_ADDR, TOKEN_BROKER_CA, TOKEN_BROKER_CERT, TOKEN_BROKER_KEY).

Exit codes:
  0  success
  1  any other error (TLS files, TLS handshake, NOT_FOUND, FAILED_PRECONDITION, ...)
  2  usage error (bad flags or settings)
  3  permission denied: PERMISSION_DENIED or UNAUTHENTICATED
  4  invalid argument: INVALID_ARGUMENT
  5  unavailable, retry later: UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, or the
     broker could not be reached";

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
    #[arg(long, env = "TOKEN_BROKER_ADDR", global = true, value_name = "ADDR")]
    addr: Option<String>,

    /// PEM file with the CA certificate(s) that verify the broker's certificate.
    #[arg(long, env = "TOKEN_BROKER_CA", global = true, value_name = "FILE")]
    ca: Option<PathBuf>,

    /// PEM file with the client certificate (chain).
    #[arg(long, env = "TOKEN_BROKER_CERT", global = true, value_name = "FILE")]
    cert: Option<PathBuf>,

    /// PEM file with the client certificate's private key.
    #[arg(long, env = "TOKEN_BROKER_KEY", global = true, value_name = "FILE")]
    key: Option<PathBuf>,

    /// Bound on connecting, and on the request including its retries (for example 10s, 1m).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    timeout: Duration,

    /// Fail at once on UNAVAILABLE or RESOURCE_EXHAUSTED instead of retrying after the
    /// broker's RetryInfo delay (for scripts that retry themselves).
    #[arg(long, global = true)]
    no_retry: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a Google OAuth 2.0 access token (like `gcloud auth print-access-token`).
    PrintAccessToken(PrintAccessToken),
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Only the token and a newline.
    Text,
    /// A JSON object with the token, its expiry, principal and scopes.
    Json,
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim()).map_err(|error| error.to_string())
}

fn parse_whole_seconds(value: &str) -> Result<Duration, String> {
    let duration = parse_duration(value)?;
    if duration.subsec_nanos() != 0 {
        return Err("must be whole seconds".to_owned());
    }
    Ok(duration)
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

impl PrintAccessToken {
    fn request(&self) -> TokenRequest {
        TokenRequest {
            scopes: split_scopes(&self.scopes),
            credential: self.credential.clone().filter(|c| !c.is_empty()),
            subject: self.subject.clone().filter(|s| !s.is_empty()),
            lifetime: self.lifetime,
            min_remaining_validity: self.min_remaining,
        }
    }
}

/// The JSON output of `print-access-token --format json`.
#[derive(Debug, serde::Serialize)]
struct TokenJson<'a> {
    access_token: &'a str,
    token_type: &'a str,
    expire_time: String,
    expires_in: u64,
    principal: &'a str,
    granted_scopes: &'a [String],
    credential: &'a str,
    cache_hit: bool,
    last_known_good: bool,
}

fn token_json(token: &AccessToken, now: SystemTime) -> TokenJson<'_> {
    TokenJson {
        access_token: token.secret(),
        token_type: &token.token_type,
        expire_time: humantime::format_rfc3339_seconds(token.expire_time).to_string(),
        expires_in: token.expires_in(now).as_secs(),
        principal: &token.principal,
        granted_scopes: &token.scopes,
        credential: &token.credential,
        cache_hit: token.cache_hit,
        last_known_good: token.last_known_good,
    }
}

fn write_token(
    out: &mut impl std::io::Write,
    token: &AccessToken,
    format: Format,
) -> std::io::Result<()> {
    match format {
        Format::Text => writeln!(out, "{}", token.secret())?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &token_json(token, SystemTime::now()))?;
            writeln!(out)?;
        }
    }
    out.flush()
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

async fn print_access_token(
    target: Target,
    args: &PrintAccessToken,
) -> Result<AccessToken, ClientError> {
    let mut connect_options = ConnectOptions::default();
    connect_options.connect_timeout = target.timeout;
    connect_options.timeout = Some(target.timeout);
    let client = connect(&target.addr, &target.files, &connect_options).await?;

    let mut retry = if target.retry {
        RetryPolicy::default()
    } else {
        RetryPolicy::never()
    };
    retry.deadline = target.timeout;
    let mut options = ProviderOptions::default();
    options.call_timeout = Some(target.timeout);
    options.retry = retry;
    let provider = TokenProvider::with_options(client, args.request(), options)?;
    provider.token().await
}

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|error| error.exit());
    let target = match cli.target() {
        Ok(target) => target,
        Err(message) => Cli::command()
            .error(clap::error::ErrorKind::MissingRequiredArgument, message)
            .exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = writeln!(
                std::io::stderr(),
                "tokenctl: cannot start the runtime: {error}"
            );
            return ExitCode::from(EXIT_GENERIC);
        }
    };
    match &cli.command {
        Command::PrintAccessToken(args) => {
            match runtime.block_on(print_access_token(target, args)) {
                Ok(token) => {
                    let mut stdout = std::io::stdout().lock();
                    match write_token(&mut stdout, &token, args.format) {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(error) => {
                            let _ = writeln!(
                                std::io::stderr(),
                                "tokenctl: cannot write the token to stdout: {error}"
                            );
                            ExitCode::from(EXIT_GENERIC)
                        }
                    }
                }
                Err(error) => {
                    let _ = std::io::stderr().write_all(render_error(&error).as_bytes());
                    ExitCode::from(exit_code(&error))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use broker_client::{ERROR_DOMAIN, Secret};
    use broker_proto::tokenbroker::v1::GetAccessTokenResponse;
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
        let Command::PrintAccessToken(args) = &cli.command;
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
        let Command::PrintAccessToken(args) = &cli.command;
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
