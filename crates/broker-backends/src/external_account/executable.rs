//! The `executable` credential source ("pluggable auth"): a program of the operator's that
//! prints a subject token (google-protocols.md §2.4). It runs only where the broker's
//! configuration allows executables for the credential, the equivalent of
//! `GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1`.
//!
//! ```json
//! "credential_source": {
//!   "executable": {
//!     "command": "/usr/local/bin/get-token --audience=gcp",
//!     "timeout_millis": 5000,
//!     "output_file": "/var/cache/broker/token.json"
//!   }
//! }
//! ```
//!
//! The program prints version 1 of Google's executable response on stdout:
//! `{"version": 1, "success": true, "token_type": "urn:ietf:params:oauth:token-type:jwt",
//! "id_token": "...", "expiration_time": 1767225600}` (`saml_response` for SAML), or
//! `{"version": 1, "success": false, "code": "...", "message": "..."}`.
//!
//! See <https://cloud.google.com/iam/docs/workload-identity-federation-with-other-providers#executable-sourced-credentials>.

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use broker_core::{Secret, SourceError, UpstreamStatus};
use serde_json::{Map, Value};
use tokio::io::AsyncReadExt as _;
use zeroize::Zeroizing;

use super::fields::Fields;
use super::{MAX_SUBJECT_TOKEN_SOURCE_BYTES, ReadError, SubjectContext, read_bounded};
use crate::{BackendError, sanitize};

/// How errors of this source name it as their `upstream`.
pub(crate) const UPSTREAM: &str = "credential_source.executable";
/// `timeout_millis` when the file gives none (Google's default).
pub const DEFAULT_EXECUTABLE_TIMEOUT: Duration = Duration::from_millis(30_000);
/// The shortest `timeout_millis` Google's clients accept.
const MIN_TIMEOUT_MILLIS: u64 = 5_000;
/// The longest `timeout_millis` Google's clients accept.
const MAX_TIMEOUT_MILLIS: u64 = 120_000;
/// The version of the executable response this source reads.
const RESPONSE_VERSION: u64 = 1;
/// OIDC token types, whose token is the response's `id_token`.
const OIDC_TYPES: [&str; 2] = [
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
];
/// The SAML token type, whose token is the response's `saml_response`.
const SAML_TYPE: &str = "urn:ietf:params:oauth:token-type:saml2";

/// The variables of the broker's environment passed on to the program; nothing else of it
/// is (the broker's environment may hold credentials of its own).
pub const EXECUTABLE_ENVIRONMENT: [&str; 17] = [
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "https_proxy",
    "http_proxy",
    "no_proxy",
];

/// A program run for every exchange (unless its output file still holds an unexpired
/// token), without a shell, killed when it outlives its timeout.
pub(crate) struct ExecutableSource {
    argv: Vec<String>,
    timeout: Duration,
    output_file: Option<PathBuf>,
}

impl fmt::Debug for ExecutableSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The program only: its arguments may carry something secret.
        f.debug_struct("ExecutableSource")
            .field("program", &self.program())
            .field("arguments", &self.argv.len().saturating_sub(1))
            .field("timeout", &self.timeout)
            .field("output_file", &self.output_file)
            .finish()
    }
}

/// Why the program's answer is no token.
#[derive(Debug)]
enum Refusal {
    /// The program reported a failure (`success: false`): its code and message, sanitized.
    Failed(String),
    /// The answer is not a valid response, or its token has expired.
    Malformed(String),
}

impl ExecutableSource {
    /// Reads `credential_source.executable`: `command` (required, split into words as a
    /// POSIX shell would, without running one), `timeout_millis` (default 30 s; 5 s to
    /// 120 s, as Google's clients require) and `output_file`. `interactive_timeout_millis`
    /// is refused: interactive mode needs a person at a terminal, which a broker never has.
    pub(crate) fn parse(source: &mut Fields<'_>) -> Result<Self, BackendError> {
        let Some(mut executable) = source.object("credential_source.executable")? else {
            return Err(source.error("credential_source.executable", "is missing"));
        };
        let command = executable.required_string("credential_source.executable.command")?;
        let argv = split_command(&command).map_err(|problem| {
            executable.error(
                "credential_source.executable.command",
                &format!("cannot be split into words: {problem}"),
            )
        })?;
        let timeout = match executable.integer("credential_source.executable.timeout_millis")? {
            None | Some(0) => DEFAULT_EXECUTABLE_TIMEOUT,
            Some(millis) if (MIN_TIMEOUT_MILLIS..=MAX_TIMEOUT_MILLIS).contains(&millis) => {
                Duration::from_millis(millis)
            }
            Some(_) => {
                return Err(executable.error(
                    "credential_source.executable.timeout_millis",
                    "must be between 5000 and 120000 (5 s to 2 min)",
                ));
            }
        };
        if executable.has("credential_source.executable.interactive_timeout_millis") {
            return Err(executable.error(
                "credential_source.executable.interactive_timeout_millis",
                "configures interactive mode, which needs a person at a terminal; the broker runs executables non-interactively",
            ));
        }
        let output_file = executable
            .string("credential_source.executable.output_file")?
            .map(PathBuf::from);
        executable.finish()?;
        Ok(Self {
            argv,
            timeout,
            output_file,
        })
    }

    /// The program run: the command's first word.
    pub(crate) fn program(&self) -> &str {
        self.argv.first().map_or("", String::as_str)
    }

    /// The token: from the output file when it holds a successful response with an
    /// `expiration_time` still in the future; otherwise from a run of the program.
    ///
    /// The program runs with stdin closed, stderr discarded, and an environment of only the
    /// variables [`EXECUTABLE_ENVIRONMENT`] lists (from the source's environment) plus
    /// Google's: `GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE`, `GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE`,
    /// `GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE=0`, `GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL`
    /// (when the credential impersonates), `GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE` (when
    /// configured) and, as Python google-auth sets them, `GOOGLE_EXTERNAL_ACCOUNT_ID` (the
    /// impersonated email, or empty) and `GOOGLE_EXTERNAL_ACCOUNT_REVOKE=0`. Its stdout is
    /// read up to [`MAX_SUBJECT_TOKEN_SOURCE_BYTES`]; when it prints nothing, the output file
    /// is read instead. It is killed when it runs past its timeout or the call's deadline.
    ///
    /// # Errors
    ///
    /// - [`SourceError::Unavailable`] (upstream `credential_source.executable`): the program
    ///   could not start (status `io`), ran too long (status `timeout`, the program killed),
    ///   exited with a failure status (status `io`), or answered `success: false` (its code
    ///   and message quoted, sanitized);
    /// - [`SourceError::DeadlineExceeded`] when the call's deadline ended the run;
    /// - [`SourceError::Malformed`]: an answer that is not a version 1 response, a token
    ///   type it cannot hold, an expired token, no `expiration_time` though an output file is
    ///   configured, or more than [`MAX_SUBJECT_TOKEN_SOURCE_BYTES`] of output.
    pub(crate) async fn subject_token(
        &self,
        context: &SubjectContext<'_>,
    ) -> Result<Secret, SourceError> {
        let now = context.clock.now();
        if let Some(token) = self.cached(now).await {
            return Ok(token);
        }
        let started = Instant::now();
        let output = self.run(context).await?;
        let text = if output.iter().all(u8::is_ascii_whitespace) {
            match &self.output_file {
                Some(path) => read_bounded(path, MAX_SUBJECT_TOKEN_SOURCE_BYTES)
                    .await
                    .map_err(|error| {
                        malformed(&format!(
                            "printed nothing, and its output file {} cannot be read: {error}",
                            path.display()
                        ))
                    })?,
                None => return Err(malformed("printed nothing")),
            }
        } else {
            Zeroizing::new(
                std::str::from_utf8(&output)
                    .map_err(|_| malformed("printed something that is not UTF-8"))?
                    .to_owned(),
            )
        };
        let token = parse_response(&text, context.clock.now(), self.output_file.is_some())
            .map_err(|refusal| match refusal {
                Refusal::Failed(message) => SourceError::Unavailable {
                    upstream: UPSTREAM.to_owned(),
                    status: UpstreamStatus::Io,
                    message: format!("the executable {} {message}", self.program()),
                    retry_after: None,
                },
                Refusal::Malformed(problem) => malformed(&problem),
            })?;
        tracing::debug!(
            program = self.program(),
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            subject_token = %token.fingerprint(),
            "subject token printed by the executable"
        );
        Ok(token)
    }

    /// The token of the output file, when it holds a successful response with an
    /// `expiration_time` after `now`. Anything else (no file, a failure, an expired or
    /// broken response) means the program runs: it rewrites the file. (Python google-auth
    /// raises on a response missing `version` or `success` instead.)
    async fn cached(&self, now: SystemTime) -> Option<Secret> {
        let path = self.output_file.as_ref()?;
        let text = match read_bounded(path, MAX_SUBJECT_TOKEN_SOURCE_BYTES).await {
            Ok(text) => text,
            Err(ReadError::Io(error)) if error.kind() == std::io::ErrorKind::NotFound => {
                return None;
            }
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "the executable's output file is unusable; running it");
                return None;
            }
        };
        match parse_response(&text, now, true) {
            Ok(token) => {
                tracing::debug!(
                    path = %path.display(),
                    subject_token = %token.fingerprint(),
                    "subject token reused from the executable's output file"
                );
                Some(token)
            }
            Err(refusal) => {
                tracing::debug!(path = %path.display(), ?refusal, "the executable's output file holds no valid token; running it");
                None
            }
        }
    }

    /// Runs the program and returns its stdout.
    async fn run(&self, context: &SubjectContext<'_>) -> Result<Zeroizing<Vec<u8>>, SourceError> {
        let mut command = tokio::process::Command::new(self.program());
        command
            .args(&self.argv[1..])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        for name in EXECUTABLE_ENVIRONMENT {
            if let Some(value) = context.env.get(name) {
                command.env(name, value);
            }
        }
        command
            .env("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE", context.audience)
            .env(
                "GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE",
                context.subject_token_type,
            )
            .env("GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE", "0")
            .env("GOOGLE_EXTERNAL_ACCOUNT_REVOKE", "0")
            .env(
                "GOOGLE_EXTERNAL_ACCOUNT_ID",
                context.impersonated_email.unwrap_or_default(),
            );
        if let Some(email) = context.impersonated_email {
            command.env("GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL", email);
        }
        if let Some(path) = &self.output_file {
            command.env("GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE", path);
        }
        let mut child = command.spawn().map_err(|error| SourceError::Unavailable {
            upstream: UPSTREAM.to_owned(),
            status: UpstreamStatus::Io,
            message: format!("cannot run the executable {}: {error}", self.program()),
            retry_after: None,
        })?;
        let left = context
            .deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()));
        let (limit, by_deadline) = match left {
            Some(left) if left < self.timeout => (left, true),
            _ => (self.timeout, false),
        };
        let stdout = child.stdout.take();
        let finished = tokio::time::timeout(limit, async {
            let mut output = Zeroizing::new(Vec::new());
            if let Some(stdout) = stdout {
                let limit = u64::try_from(MAX_SUBJECT_TOKEN_SOURCE_BYTES).unwrap_or(u64::MAX);
                stdout
                    .take(limit + 1)
                    .read_to_end(&mut output)
                    .await
                    .map_err(|e| e.to_string())?;
                if output.len() > MAX_SUBJECT_TOKEN_SOURCE_BYTES {
                    return Ok((output, None));
                }
            }
            let status = child.wait().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((output, Some(status)))
        })
        .await;
        let program = self.program();
        match finished {
            Err(_elapsed) => {
                kill(&mut child).await;
                let millis = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
                tracing::warn!(
                    program,
                    timeout_ms = millis,
                    "the executable ran too long; killed"
                );
                if by_deadline {
                    Err(SourceError::DeadlineExceeded {
                        upstream: UPSTREAM.to_owned(),
                        attempts: 1,
                        last: format!(
                            "the executable {program} was still running when the deadline passed ({millis} ms); killed"
                        ),
                    })
                } else {
                    Err(SourceError::Unavailable {
                        upstream: UPSTREAM.to_owned(),
                        status: UpstreamStatus::Timeout,
                        message: format!(
                            "the executable {program} did not finish within {millis} ms; killed"
                        ),
                        retry_after: None,
                    })
                }
            }
            Ok(Err(error)) => {
                kill(&mut child).await;
                Err(SourceError::Unavailable {
                    upstream: UPSTREAM.to_owned(),
                    status: UpstreamStatus::Io,
                    message: format!("cannot read the output of the executable {program}: {error}"),
                    retry_after: None,
                })
            }
            Ok(Ok((_, None))) => {
                kill(&mut child).await;
                Err(malformed(&format!(
                    "printed more than {MAX_SUBJECT_TOKEN_SOURCE_BYTES} bytes"
                )))
            }
            Ok(Ok((_, Some(status)))) if !status.success() => Err(SourceError::Unavailable {
                upstream: UPSTREAM.to_owned(),
                status: UpstreamStatus::Io,
                message: format!("the executable {program} failed: {status}"),
                retry_after: None,
            }),
            Ok(Ok((output, Some(_)))) => Ok(output),
        }
    }
}

/// Kills the program and reaps it.
async fn kill(child: &mut tokio::process::Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

fn malformed(problem: &str) -> SourceError {
    SourceError::Malformed {
        upstream: UPSTREAM.to_owned(),
        message: format!("the executable's answer {problem}"),
    }
}

/// Reads an executable response (version 1) at `now`: the token of a success, or why there
/// is none. `expiration_time` (seconds since the epoch) must be in the future when given, and
/// must be given when `needs_expiration` (an output file is configured). Nothing of the
/// response but the failure's code and message is ever quoted.
fn parse_response(text: &str, now: SystemTime, needs_expiration: bool) -> Result<Secret, Refusal> {
    let bad = |problem: &str| Refusal::Malformed(problem.to_owned());
    let mut value: Value = serde_json::from_str(text)
        .map_err(|_| bad("is not JSON (a version 1 executable response was expected)"))?;
    let response = value
        .as_object_mut()
        .ok_or_else(|| bad("is not a JSON object"))?;
    match response.get("version") {
        Some(version) if version.as_u64() == Some(RESPONSE_VERSION) => {}
        Some(version) if version.is_number() => {
            return Err(bad("has a version this broker does not read (only 1)"));
        }
        _ => return Err(bad("has no integer version")),
    }
    match response.get("success") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            let text = |name: &str| response.get(name).and_then(Value::as_str);
            return match (text("code"), text("message")) {
                (Some(code), Some(message)) => Err(Refusal::Failed(format!(
                    "reported a failure: {}: {}",
                    sanitize::quote(code),
                    sanitize::quote(message)
                ))),
                _ => Err(bad("reports a failure without a code and a message")),
            };
        }
        _ => return Err(bad("has no boolean success")),
    }
    let expires = match response.get("expiration_time") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite() && *f >= 0.0)
                        .map(|f| f as u64)
                })
                .ok_or_else(|| bad("has an expiration_time that is not a time"))?,
        ),
        Some(_) => return Err(bad("has an expiration_time that is not a number")),
    };
    match expires {
        Some(expires)
            if SystemTime::UNIX_EPOCH
                .checked_add(Duration::from_secs(expires))
                .is_none_or(|at| at <= now) =>
        {
            return Err(bad("holds a token that has expired (expiration_time)"));
        }
        None if needs_expiration => {
            return Err(bad(
                "has no expiration_time, which is required when an output file is configured",
            ));
        }
        _ => {}
    }
    let field = match response.get("token_type").and_then(Value::as_str) {
        Some(kind) if OIDC_TYPES.contains(&kind) => "id_token",
        Some(SAML_TYPE) => "saml_response",
        Some(_) => return Err(bad("has a token_type that is not jwt, id_token or saml2")),
        None => return Err(bad("has no token_type")),
    };
    take_token(response, field)
        .ok_or_else(|| Refusal::Malformed(format!("has no {field}, or an empty one")))
}

/// Moves the token out of the response into a [`Secret`].
fn take_token(response: &mut Map<String, Value>, field: &str) -> Option<Secret> {
    match response.remove(field) {
        Some(Value::String(token)) if !token.is_empty() => Some(Secret::new(token)),
        _ => None,
    }
}

/// Splits a command line into words as a POSIX shell would (Python's `shlex.split`): blanks
/// separate words; single quotes keep everything; double quotes keep everything but `\"` and
/// `\\`; a backslash outside quotes keeps the next character. No variables, globs or
/// comments. (Python google-auth and Go split on whitespace only, which agrees whenever the
/// command has no quotes or backslashes.)
fn split_command(command: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_ascii_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("a single quote is not closed"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("a double quote is not closed"),
                        },
                        Some(c) => word.push(c),
                        None => return Err("a double quote is not closed"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("it ends with a backslash"),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if words.first().is_none_or(String::is_empty) {
        return Err("it names no program");
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_split_like_a_posix_shell_without_one() {
        let cases: [(&str, &[&str]); 7] = [
            ("/bin/get-token", &["/bin/get-token"]),
            (
                "  /bin/get-token --arg1=value1   --arg2=value2 ",
                &["/bin/get-token", "--arg1=value1", "--arg2=value2"],
            ),
            (
                r#"/bin/tool 'a b' "c \"d\" \\ \e" f\ g"#,
                &["/bin/tool", "a b", r#"c "d" \ \e"#, "f g"],
            ),
            (r#"x '' "" y"#, &["x", "", "", "y"]),
            (
                "x $HOME *.txt # not a comment",
                &["x", "$HOME", "*.txt", "#", "not", "a", "comment"],
            ),
            ("x a'b'c", &["x", "abc"]),
            ("x\ty\nz", &["x", "y", "z"]),
        ];
        for (command, words) in cases {
            assert_eq!(split_command(command).expect(command), words, "{command}");
        }
        for bad in ["", "   ", "x 'open", "x \"open", "x \\", "'' x"] {
            assert!(split_command(bad).is_err(), "{bad:?}");
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn parse(response: Value, needs_expiration: bool) -> Result<Secret, Refusal> {
        parse_response(&response.to_string(), now(), needs_expiration)
    }

    #[test]
    fn successful_responses_give_their_token() {
        let later = 1_800_000_600_u64;
        for (response, token) in [
            (
                json!({"version": 1, "success": true, "token_type": OIDC_TYPES[0], "id_token": "eyJ.a", "expiration_time": later}),
                "eyJ.a",
            ),
            (
                json!({"version": 1, "success": true, "token_type": OIDC_TYPES[1], "id_token": "eyJ.b"}),
                "eyJ.b",
            ),
            (
                json!({"version": 1, "success": true, "token_type": SAML_TYPE, "saml_response": "PHNhbWw+", "expiration_time": later}),
                "PHNhbWw+",
            ),
        ] {
            assert_eq!(
                parse(response.clone(), false).expect("token").expose(),
                token
            );
        }
    }

    #[test]
    fn failures_and_malformed_responses_are_refused_without_quoting_tokens() {
        let later = 1_800_000_600_u64;
        let Err(Refusal::Failed(message)) = parse(
            json!({"version": 1, "success": false, "code": "401", "message": "Caller not authorized.\u{1b}[31m"}),
            false,
        ) else {
            panic!("a failure");
        };
        assert_eq!(
            message,
            "reported a failure: 401: Caller not authorized.\\u{1b}[31m"
        );
        for (response, needs_expiration, expected) in [
            (json!({"success": true}), false, "no integer version"),
            (json!({"version": 2, "success": true}), false, "only 1"),
            (
                json!({"version": "1", "success": true}),
                false,
                "no integer version",
            ),
            (json!({"version": 1}), false, "no boolean success"),
            (
                json!({"version": 1, "success": false}),
                false,
                "without a code and a message",
            ),
            (
                json!({"version": 1, "success": true, "token_type": OIDC_TYPES[0], "id_token": "eyJ.secret", "expiration_time": 1_799_999_999}),
                false,
                "expired",
            ),
            (
                json!({"version": 1, "success": true, "token_type": OIDC_TYPES[0], "id_token": "eyJ.secret", "expiration_time": 1_800_000_000}),
                false,
                "expired",
            ),
            (
                json!({"version": 1, "success": true, "token_type": OIDC_TYPES[0], "id_token": "eyJ.secret"}),
                true,
                "required when an output file",
            ),
            (
                json!({"version": 1, "success": true, "id_token": "eyJ.secret", "expiration_time": later}),
                false,
                "no token_type",
            ),
            (
                json!({"version": 1, "success": true, "token_type": "urn:x", "id_token": "eyJ.secret"}),
                false,
                "not jwt, id_token or saml2",
            ),
            (
                json!({"version": 1, "success": true, "token_type": SAML_TYPE, "id_token": "eyJ.secret"}),
                false,
                "no saml_response",
            ),
            (
                json!({"version": 1, "success": true, "token_type": OIDC_TYPES[0], "id_token": ""}),
                false,
                "no id_token",
            ),
            (
                json!({"version": 1, "success": true, "token_type": OIDC_TYPES[0], "id_token": "eyJ.secret", "expiration_time": "soon"}),
                false,
                "not a number",
            ),
        ] {
            match parse(response.clone(), needs_expiration) {
                Err(Refusal::Malformed(problem)) => {
                    assert!(problem.contains(expected), "{response}: {problem}");
                    assert!(!problem.contains("eyJ"), "{problem}");
                }
                other => panic!("{response}: {other:?}"),
            }
        }
        assert!(matches!(
            parse_response("eyJ.secret", now(), false),
            Err(Refusal::Malformed(problem)) if !problem.contains("eyJ")
        ));
    }
}
