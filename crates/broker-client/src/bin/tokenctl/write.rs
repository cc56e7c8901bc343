//! `tokenctl write`: keeps a file holding a fresh token, for tools that read tokens from files.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use broker_client::{
    AccessToken, ClientError, IdToken, IdTokenRequest, Secret, TokenRequest, generate_id_token,
    get_access_token, split_scopes,
};
use clap::error::ErrorKind;
use clap::{ArgAction, Args, ValueEnum};
use zeroize::Zeroize as _;

use crate::files::{read_small, write_atomically};
use crate::{
    EXIT_GENERIC, Format, Target, UsageError, call_options, connect_target, exit_code, non_empty,
    parse_duration, rfc3339,
};

/// Mode of the token file: only its owner may read it.
const TOKEN_FILE_MODE: u32 = 0o600;

/// The first wait after a failed refresh; it doubles with every further failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest wait between attempts while refreshing fails.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Never ask the broker again sooner than this after a token was written, whatever its
/// lifetime (a broker handing out tokens that are about to expire must not cause a busy loop).
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The most `min_remaining_validity` asked of the broker (see [`min_remaining_validity`]).
const MAX_MIN_REMAINING_VALIDITY: Duration = Duration::from_secs(30 * 60);

/// How long a text token file left by an earlier run is taken to be valid after it was last
/// written: the usual lifetime of Google's tokens (the file does not say).
const TEXT_FILE_VALIDITY: Duration = Duration::from_secs(3600);

/// A JSON token file larger than this is not one tokenctl wrote; its expiry is not read.
const JSON_FILE_LIMIT: u64 = 64 * 1024;

/// The longest single sleep: the wall clock is checked again at least this often, so that a
/// machine that was suspended refreshes soon after it wakes up.
const MAX_SLEEP: Duration = Duration::from_secs(30);

pub(crate) const WRITE_ABOUT: &str = "\
Keep a file holding a fresh token, for tools that read tokens from files (a file-sourced
external_account credential, a proxy, a script). The file is replaced atomically (a temporary
file in the same directory, then a rename, so readers never see a partial token) with mode
0600, and refreshed ahead of expiry: when the refresh margin (--refresh-margin, default 5m) is
left, or half of the token's lifetime, whichever comes later.

With --format text the file holds only the token, without a trailing newline (Python's
google-auth reads token files as they are); with --format json, a JSON object with the token,
its expire_time and principal.

With --once it exits after the first write (0, or the exit code of the error). Otherwise it
runs until SIGTERM or SIGINT, then exits 0 and leaves the file in place. If a refresh fails it
logs the error on standard error (never a token) and retries with backoff, keeping the last
good file while its token is valid; once that token has expired the file is removed, so that
no tool uses an expired token, and written again when the broker answers. An error the broker
will not change its mind about (PERMISSION_DENIED, INVALID_ARGUMENT, ...) before the first
write ends it, as a configuration error should. A file an earlier run left is kept while its
token is presumed valid (with --format json until its expire_time; with --format text for an
hour after it was written), and removed at once if that has passed. The TLS files are read again for every
refresh, so rotated certificates are picked up.";

pub(crate) const WRITE_EXAMPLES: &str = "\
Examples:
  # An access token for a tool that reads a file, refreshed until the pod stops
  tokenctl write --output /var/run/tokens/google-access-token --scopes https://www.googleapis.com/auth/devstorage.read_only

  # An ID token for a Cloud Run service, written once, as JSON
  tokenctl write --output run-token.json --kind id --audience https://hello-abc123-uc.a.run.app --format json --once";

/// Which token to keep in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Kind {
    /// An OAuth 2.0 access token (GetAccessToken).
    Access,
    /// A Google-signed ID token for --audience (GenerateIdToken).
    Id,
}

#[derive(Debug, Args)]
pub(crate) struct Write {
    /// The file to keep fresh.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,

    /// Which token: `access` or `id` (needs --audience).
    #[arg(long, value_enum, default_value_t = Kind::Access)]
    kind: Kind,

    /// The audience of the ID token (--kind id): usually the URL of the receiving service.
    #[arg(long, value_name = "AUDIENCE")]
    audience: Option<String>,

    /// OAuth 2.0 scopes of the access token (--kind access); repeat the flag or separate with
    /// commas. Default: the broker's (https://www.googleapis.com/auth/cloud-platform).
    #[arg(long = "scopes", alias = "scope", action = ArgAction::Append, value_name = "SCOPE[,SCOPE...]")]
    scopes: Vec<String>,

    /// Ask for the `email` claim in the ID token (--kind id).
    #[arg(long)]
    include_email: bool,

    /// The broker credential to use. Default: the credential of the caller's default grant.
    #[arg(long, value_name = "NAME")]
    credential: Option<String>,

    /// What the file holds: `text` only the token (no trailing newline); `json` the token with
    /// its expiry and principal.
    #[arg(long, value_enum, default_value_t = Format::Text, hide_possible_values = true)]
    format: Format,

    /// Exit after the first write.
    #[arg(long)]
    once: bool,

    /// Refresh once this much of the token's lifetime is left (or half of its lifetime, if
    /// that comes later).
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    refresh_margin: Duration,
}

/// The request for the kind of token asked for.
#[derive(Debug)]
enum Wanted {
    Access(TokenRequest),
    Id(IdTokenRequest),
}

impl Write {
    /// What the file holds.
    pub(crate) fn format(&self) -> Format {
        self.format
    }

    /// Checks the flags that belong to one kind only.
    fn wanted(&self) -> Result<Wanted, UsageError> {
        let conflict = |flag: &str, kind: &str| {
            Err(UsageError::Flags(
                ErrorKind::ArgumentConflict,
                format!("{flag} applies only to --kind {kind}"),
            ))
        };
        if self.refresh_margin.is_zero() {
            return Err(UsageError::Flags(
                ErrorKind::InvalidValue,
                "--refresh-margin must be more than zero".to_owned(),
            ));
        }
        let credential = non_empty(self.credential.as_ref());
        let min_remaining_validity = Some(min_remaining_validity(self.refresh_margin));
        match self.kind {
            Kind::Access => {
                if self.audience.is_some() {
                    return conflict("--audience", "id");
                }
                if self.include_email {
                    return conflict("--include-email", "id");
                }
                Ok(Wanted::Access(TokenRequest {
                    scopes: split_scopes(&self.scopes),
                    credential,
                    min_remaining_validity,
                    ..TokenRequest::default()
                }))
            }
            Kind::Id => {
                if !self.scopes.is_empty() {
                    return conflict("--scopes", "access");
                }
                let audience = non_empty(self.audience.as_ref()).ok_or_else(|| {
                    UsageError::Flags(
                        ErrorKind::MissingRequiredArgument,
                        "--kind id needs --audience".to_owned(),
                    )
                })?;
                Ok(Wanted::Id(IdTokenRequest {
                    audience,
                    include_email: self.include_email,
                    credential,
                    min_remaining_validity,
                    ..IdTokenRequest::default()
                }))
            }
        }
    }
}

/// The least validity to ask the broker for: a minute more than the refresh margin (in whole
/// seconds), so that a token the broker hands out from its cache is not due for refresh as it
/// arrives, capped at [`MAX_MIN_REMAINING_VALIDITY`].
fn min_remaining_validity(refresh_margin: Duration) -> Duration {
    let seconds = refresh_margin.as_secs() + u64::from(refresh_margin.subsec_nanos() > 0) + 60;
    Duration::from_secs(seconds).min(MAX_MIN_REMAINING_VALIDITY)
}

/// The expiry of the token in a file left at `path` by an earlier run, if there is one: the
/// `expire_time` (RFC 3339) or `expires_at` (RFC 3339 or Unix seconds) of a JSON file, or
/// else the file's modification time plus [`TEXT_FILE_VALIDITY`].
fn existing_expiry(path: &Path, format: Format) -> Option<SystemTime> {
    let modified = std::fs::metadata(path).ok()?.modified().ok();
    if format == Format::Json
        && let Some(mut contents) = read_small(path, JSON_FILE_LIMIT)
    {
        let expiry = json_expiry(&contents);
        contents.zeroize();
        if expiry.is_some() {
            return expiry;
        }
    }
    modified.map(|modified| modified + TEXT_FILE_VALIDITY)
}

/// The `expire_time` or `expires_at` of a JSON token file.
fn json_expiry(contents: &[u8]) -> Option<SystemTime> {
    #[derive(serde::Deserialize)]
    struct Expiry {
        expire_time: Option<serde_json::Value>,
        expires_at: Option<serde_json::Value>,
    }
    let expiry: Expiry = serde_json::from_slice(contents).ok()?;
    [expiry.expire_time, expiry.expires_at]
        .into_iter()
        .flatten()
        .find_map(|value| match value {
            serde_json::Value::String(text) => humantime::parse_rfc3339(text.trim()).ok(),
            serde_json::Value::Number(number) => number
                .as_u64()
                .map(|seconds| SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)),
            _ => None,
        })
}

/// A token, rendered as the file's contents.
#[derive(Debug)]
struct Rendered {
    contents: Secret,
    expire_time: SystemTime,
    principal: String,
}

/// The JSON file of an access token.
#[derive(serde::Serialize)]
struct AccessTokenFile<'a> {
    access_token: &'a str,
    token_type: &'a str,
    expire_time: String,
    principal: &'a str,
    granted_scopes: &'a [String],
    credential: &'a str,
}

/// The JSON file of an ID token.
#[derive(serde::Serialize)]
struct IdTokenFile<'a> {
    id_token: &'a str,
    expire_time: String,
    audience: &'a str,
    principal: &'a str,
    credential: &'a str,
}

fn pretty(value: &impl serde::Serialize) -> Secret {
    Secret::new(
        serde_json::to_string_pretty(value)
            .map(|json| format!("{json}\n"))
            .unwrap_or_default(),
    )
}

fn render_access(token: &AccessToken, format: Format) -> Rendered {
    let contents = match format {
        Format::Text => Secret::new(token.secret()),
        Format::Json => pretty(&AccessTokenFile {
            access_token: token.secret(),
            token_type: &token.token_type,
            expire_time: rfc3339(token.expire_time),
            principal: &token.principal,
            granted_scopes: &token.scopes,
            credential: &token.credential,
        }),
    };
    Rendered {
        contents,
        expire_time: token.expire_time,
        principal: token.principal.clone(),
    }
}

fn render_id(token: &IdToken, audience: &str, format: Format) -> Rendered {
    let contents = match format {
        Format::Text => Secret::new(token.secret()),
        Format::Json => pretty(&IdTokenFile {
            id_token: token.secret(),
            expire_time: rfc3339(token.expire_time),
            audience,
            principal: &token.principal,
            credential: &token.credential,
        }),
    };
    Rendered {
        contents,
        expire_time: token.expire_time,
        principal: token.principal.clone(),
    }
}

/// When a token fetched at `fetched_at` is due for refresh: `margin` before it expires, but no
/// earlier than half-way through its lifetime (the rule of the library's `TokenProvider`), and
/// never sooner than [`MIN_REFRESH_INTERVAL`] after `fetched_at`.
fn refresh_at(expire_time: SystemTime, fetched_at: SystemTime, margin: Duration) -> SystemTime {
    let lifetime = expire_time
        .duration_since(fetched_at)
        .unwrap_or(Duration::ZERO);
    let due = expire_time
        .checked_sub(margin.min(lifetime / 2))
        .unwrap_or(fetched_at);
    due.max(fetched_at + MIN_REFRESH_INTERVAL)
}

/// The wait before retry number `failures` (1-based): [`FIRST_BACKOFF`] doubled per failure,
/// capped at [`MAX_BACKOFF`], with jitter (half to all of it), and never less than the
/// broker's `RetryInfo` delay.
fn backoff(failures: u32, retry_after: Option<Duration>) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let ceiling = FIRST_BACKOFF
        .saturating_mul(1_u32 << exponent)
        .min(MAX_BACKOFF);
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(ceiling_ms / 2..=ceiling_ms))
        .max(retry_after.unwrap_or_default())
}

/// SIGTERM and SIGINT, registered before anything else happens so that neither kills the
/// process while it works.
struct Shutdown {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Registers the handlers; must run inside the runtime.
    fn register() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Waits for a signal and names it. Cancel-safe.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => "SIGTERM",
                _ = self.interrupt.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// Writes a line on standard error; a closed standard error is ignored.
fn log(message: &str) {
    let _ = writeln!(std::io::stderr(), "tokenctl: {message}");
}

/// Connects (reading the TLS files again) and asks for the token.
async fn fetch(target: &Target, wanted: &Wanted, format: Format) -> Result<Rendered, ClientError> {
    let client = connect_target(target).await?;
    let options = call_options(target);
    Ok(match wanted {
        Wanted::Access(request) => {
            render_access(&get_access_token(&client, request, &options).await?, format)
        }
        Wanted::Id(request) => render_id(
            &generate_id_token(&client, request, &options).await?,
            &request.audience,
            format,
        ),
    })
}

/// `tokenctl write`.
pub(crate) fn write(target: Target, args: &Write) -> Result<ExitCode, UsageError> {
    let wanted = args.wanted()?;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            log(&format!("cannot start the runtime: {error}"));
            return Ok(ExitCode::from(EXIT_GENERIC));
        }
    };
    Ok(runtime.block_on(run(&target, args, &wanted)))
}

/// The token in the file, if any.
struct Current {
    expire_time: SystemTime,
}

async fn run(target: &Target, args: &Write, wanted: &Wanted) -> ExitCode {
    let mut shutdown = match Shutdown::register() {
        Ok(shutdown) => shutdown,
        Err(error) => {
            log(&format!("cannot handle signals: {error}"));
            return ExitCode::from(EXIT_GENERIC);
        }
    };
    let path = args.output.as_path();
    // A file left by an earlier run is kept while its token is valid, and removed once it is
    // not (now, if it already has expired).
    let mut current = existing_expiry(path, args.format).map(|expire_time| Current { expire_time });
    if let Some(token) = &current {
        if token.expire_time <= SystemTime::now() {
            current = None;
            remove_expired(path);
        } else if !args.once {
            log(&format!(
                "{} exists, its token presumed valid until {}",
                path.display(),
                rfc3339(token.expire_time)
            ));
        }
    }
    // Whether this run has written the file: until it has, an error that retrying cannot fix
    // ends it.
    let mut written_once = false;
    let mut failures: u32 = 0;
    loop {
        let fetched_at = SystemTime::now();
        let result = tokio::select! {
            signal = shutdown.recv() => return stopped(signal, path, args.once),
            result = fetch(target, wanted, args.format) => result,
        };
        let wake_at = match result {
            Ok(rendered) => {
                match write_atomically(path, rendered.contents.expose().as_bytes(), TOKEN_FILE_MODE)
                {
                    Ok(()) => {
                        failures = 0;
                        written_once = true;
                        if args.once {
                            return ExitCode::SUCCESS;
                        }
                        current = Some(Current {
                            expire_time: rendered.expire_time,
                        });
                        let next =
                            refresh_at(rendered.expire_time, fetched_at, args.refresh_margin);
                        log(&format!(
                            "wrote {} (token of {}, expires {}); next refresh at {}",
                            path.display(),
                            if rendered.principal.is_empty() {
                                "the credential"
                            } else {
                                rendered.principal.as_str()
                            },
                            rfc3339(rendered.expire_time),
                            rfc3339(next)
                        ));
                        next
                    }
                    Err(error) => {
                        log(&format!("cannot write {}: {error}", path.display()));
                        if args.once {
                            return ExitCode::from(EXIT_GENERIC);
                        }
                        failures += 1;
                        SystemTime::now() + backoff(failures, None)
                    }
                }
            }
            Err(error) => {
                // One line, never with a token: the status with its reason, metadata and
                // retry delay, or what failed before a status.
                log(&format!(
                    "getting a token for {} failed: {error}",
                    path.display()
                ));
                // Before anything was written, an error that retrying cannot fix is a
                // configuration error: report it as the one-shot commands do.
                if args.once || (!written_once && !error.is_retryable()) {
                    return ExitCode::from(exit_code(&error));
                }
                failures += 1;
                let delay = backoff(
                    failures,
                    error.status().and_then(|status| status.retry_after),
                );
                log(&format!(
                    "retrying in {}s{}",
                    delay.as_secs_f32().ceil(),
                    match &current {
                        Some(current) => format!(
                            "; {} keeps its token until {}",
                            path.display(),
                            rfc3339(current.expire_time)
                        ),
                        None => String::new(),
                    }
                ));
                SystemTime::now() + delay
            }
        };

        // Sleep until `wake_at`, removing the file if its token expires first.
        loop {
            let now = SystemTime::now();
            if let Some(token) = &current
                && token.expire_time <= now
            {
                current = None;
                remove_expired(path);
            }
            if now >= wake_at {
                break;
            }
            let mut until = wake_at;
            if let Some(token) = &current {
                until = until.min(token.expire_time);
            }
            let sleep = until
                .duration_since(now)
                .unwrap_or(Duration::ZERO)
                .min(MAX_SLEEP);
            tokio::select! {
                signal = shutdown.recv() => return stopped(signal, path, args.once),
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }
}

/// Removes the file, whose token has expired, so that no tool uses it.
fn remove_expired(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => log(&format!(
            "removed {}: its token has expired",
            path.display()
        )),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => log(&format!(
            "cannot remove {}, whose token has expired: {error}",
            path.display()
        )),
    }
}

/// Ends on a signal: cleanly, keeping the file; with `--once`, nothing was written yet.
fn stopped(signal: &str, path: &Path, once: bool) -> ExitCode {
    if once {
        log(&format!(
            "{signal} received before {} was written",
            path.display()
        ));
        return ExitCode::from(EXIT_GENERIC);
    }
    log(&format!("{signal} received; stopping"));
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use broker_proto::tokenbroker::v1::{GenerateIdTokenResponse, GetAccessTokenResponse};
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Write, String> {
        let mut all = vec!["tokenctl", "write"];
        all.extend_from_slice(args);
        match crate::Cli::try_parse_from(all) {
            Ok(cli) => match cli.command {
                crate::Command::Write(args) => Ok(args),
                other => Err(format!("not write: {other:?}")),
            },
            Err(error) => Err(error.to_string()),
        }
    }

    fn wanted(args: &[&str]) -> Result<Wanted, UsageError> {
        match parse(args) {
            Ok(write) => write.wanted(),
            Err(error) => panic!("{args:?} should parse: {error}"),
        }
    }

    #[test]
    fn parses_each_kind_and_refuses_flags_of_the_other() {
        let Ok(Wanted::Access(request)) = wanted(&[
            "--output",
            "t",
            "--scopes",
            "https://a,https://b",
            "--scope",
            "https://c",
            "--credential",
            "prod",
        ]) else {
            panic!("an access-token request");
        };
        assert_eq!(request.scopes, vec!["https://a", "https://b", "https://c"]);
        assert_eq!(request.credential.as_deref(), Some("prod"));

        let Ok(Wanted::Id(request)) = wanted(&[
            "--output",
            "t",
            "--kind",
            "id",
            "--audience",
            "https://run",
            "--include-email",
        ]) else {
            panic!("an ID-token request");
        };
        assert_eq!(request.audience, "https://run");
        assert!(request.include_email);
        assert_eq!(request.credential, None);

        let defaults = parse(&["--output", "t"]).ok();
        assert_eq!(defaults.as_ref().map(|w| w.kind), Some(Kind::Access));
        assert_eq!(defaults.as_ref().map(|w| w.format), Some(Format::Text));
        assert_eq!(
            defaults.as_ref().map(|w| w.refresh_margin),
            Some(Duration::from_secs(300))
        );
        assert_eq!(defaults.map(|w| w.once), Some(false));

        for (args, kind) in [
            (
                &["--output", "t", "--kind", "id"][..],
                ErrorKind::MissingRequiredArgument,
            ),
            (
                &["--output", "t", "--audience", "a"][..],
                ErrorKind::ArgumentConflict,
            ),
            (
                &["--output", "t", "--include-email"][..],
                ErrorKind::ArgumentConflict,
            ),
            (
                &[
                    "--output",
                    "t",
                    "--kind",
                    "id",
                    "--audience",
                    "a",
                    "--scopes",
                    "s",
                ][..],
                ErrorKind::ArgumentConflict,
            ),
            (
                &["--output", "t", "--refresh-margin", "0s"][..],
                ErrorKind::InvalidValue,
            ),
        ] {
            let error = wanted(args).err();
            assert!(
                matches!(&error, Some(UsageError::Flags(k, _)) if *k == kind),
                "{args:?}: {error:?}"
            );
        }
        assert!(parse(&[]).is_err(), "--output is required");
        assert!(parse(&["--output", "t", "--kind", "refresh"]).is_err());
    }

    #[test]
    fn refreshes_at_the_margin_or_half_way_and_never_in_a_busy_loop() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let margin = Duration::from_secs(300);
        // An hour-long token: 5 minutes before it expires.
        assert_eq!(
            refresh_at(start + Duration::from_secs(3600), start, margin),
            start + Duration::from_secs(3300)
        );
        // A short-lived one: half-way.
        assert_eq!(
            refresh_at(start + Duration::from_secs(4), start, margin),
            start + Duration::from_secs(2)
        );
        // One that has (nearly) expired: not before a second has passed.
        assert_eq!(
            refresh_at(start, start, margin),
            start + MIN_REFRESH_INTERVAL
        );
        assert_eq!(
            refresh_at(start - Duration::from_secs(10), start, margin),
            start + MIN_REFRESH_INTERVAL
        );
    }

    #[test]
    fn asks_for_a_minute_more_than_the_margin_up_to_half_an_hour() {
        assert_eq!(
            min_remaining_validity(Duration::from_secs(300)),
            Duration::from_secs(360)
        );
        assert_eq!(
            min_remaining_validity(Duration::from_millis(1500)),
            Duration::from_secs(62)
        );
        assert_eq!(
            min_remaining_validity(Duration::from_secs(3600)),
            MAX_MIN_REMAINING_VALIDITY
        );
        let Ok(Wanted::Id(request)) = wanted(&[
            "--output",
            "t",
            "--kind",
            "id",
            "--audience",
            "a",
            "--refresh-margin",
            "10m",
        ]) else {
            panic!("an ID-token request");
        };
        assert_eq!(
            request.min_remaining_validity,
            Some(Duration::from_secs(660))
        );
        let Ok(Wanted::Access(request)) = wanted(&["--output", "t"]) else {
            panic!("an access-token request");
        };
        assert_eq!(
            request.min_remaining_validity,
            Some(Duration::from_secs(360))
        );
    }

    #[test]
    fn reads_the_expiry_of_a_file_left_by_an_earlier_run() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_003_600);
        assert_eq!(
            json_expiry(br#"{"id_token":"e","expire_time":"2027-01-15T09:00:00Z"}"#),
            Some(at)
        );
        assert_eq!(json_expiry(br#"{"expires_at":1800003600}"#), Some(at));
        assert_eq!(
            json_expiry(br#"{"expires_at":"2027-01-15T09:00:00Z"}"#),
            Some(at)
        );
        assert_eq!(json_expiry(br#"{"expire_time":"soon"}"#), None);
        assert_eq!(json_expiry(b"ya29.text"), None);

        let dir = std::env::temp_dir().join(format!(
            "tokenctl-write-existing-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        assert!(std::fs::create_dir_all(&dir).is_ok());
        let json = dir.join("token.json");
        let text = dir.join("token");
        assert!(std::fs::write(&json, r#"{"expire_time":"2027-01-15T09:00:00Z"}"#).is_ok());
        assert!(std::fs::write(&text, "ya29.text").is_ok());
        assert_eq!(existing_expiry(&json, Format::Json), Some(at));
        let modified = std::fs::metadata(&text).and_then(|m| m.modified()).ok();
        assert!(modified.is_some());
        assert_eq!(
            existing_expiry(&text, Format::Text),
            modified.map(|m| m + TEXT_FILE_VALIDITY)
        );
        // A JSON file without an expiry: as a text file.
        assert_eq!(
            existing_expiry(&text, Format::Json),
            modified.map(|m| m + TEXT_FILE_VALIDITY)
        );
        assert_eq!(existing_expiry(&dir.join("missing"), Format::Text), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_a_minute_and_honours_retry_info() {
        for _ in 0..50 {
            let first = backoff(1, None);
            assert!(first >= Duration::from_millis(500) && first <= FIRST_BACKOFF);
            let third = backoff(3, None);
            assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4));
            let late = backoff(40, None);
            assert!(late >= Duration::from_secs(30) && late <= MAX_BACKOFF);
        }
        assert_eq!(
            backoff(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn text_files_hold_only_the_token_and_json_files_its_metadata() {
        let expire = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_003_600);
        let access = AccessToken::from_response(GetAccessTokenResponse {
            access_token: "ya29.file".to_owned(),
            token_type: "Bearer".to_owned(),
            expire_time: Some(expire.into()),
            granted_scopes: vec!["https://s".to_owned()],
            principal: "sa@p.iam.gserviceaccount.com".to_owned(),
            credential: "prod".to_owned(),
            ..GetAccessTokenResponse::default()
        });
        let Ok(access) = access else {
            panic!("a valid response");
        };
        let text = render_access(&access, Format::Text);
        assert_eq!(text.contents.expose(), "ya29.file");
        assert_eq!(text.expire_time, expire);
        let json: serde_json::Value =
            serde_json::from_str(render_access(&access, Format::Json).contents.expose())
                .unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({
                "access_token": "ya29.file",
                "token_type": "Bearer",
                "expire_time": "2027-01-15T09:00:00Z",
                "principal": "sa@p.iam.gserviceaccount.com",
                "granted_scopes": ["https://s"],
                "credential": "prod",
            })
        );

        let id = IdToken::from_response(GenerateIdTokenResponse {
            id_token: "eyJ.id.sig".to_owned(),
            expire_time: Some(expire.into()),
            principal: "sa@p.iam.gserviceaccount.com".to_owned(),
            credential: "prod".to_owned(),
            ..GenerateIdTokenResponse::default()
        });
        let Ok(id) = id else {
            panic!("a valid response");
        };
        assert_eq!(
            render_id(&id, "https://run", Format::Text)
                .contents
                .expose(),
            "eyJ.id.sig"
        );
        let json: serde_json::Value = serde_json::from_str(
            render_id(&id, "https://run", Format::Json)
                .contents
                .expose(),
        )
        .unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({
                "id_token": "eyJ.id.sig",
                "expire_time": "2027-01-15T09:00:00Z",
                "audience": "https://run",
                "principal": "sa@p.iam.gserviceaccount.com",
                "credential": "prod",
            })
        );
    }
}
