//! `external_account` credentials against the emulator's identity federation: every
//! credential source (a rotated file, a URL, an executable, AWS from the environment and from
//! IMDSv2, an X.509 certificate over mutual TLS), workforce pools with a user project or an
//! OAuth client, impersonation after the exchange (access and ID tokens), the broker's
//! ExchangeToken path (`ExternalAccountSource::exchange`) and downscoping. What STS received
//! is read back from the emulator's request log, what it minted from `tokeninfo`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use broker_backends::{
    AWS_ACCESS_KEY_ID, AWS_DEFAULT_REGION, AWS_REGION, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
    BackendError, Env, ExternalAccountConfig, ExternalAccountOptions, ExternalAccountSource,
    GOOGLE_API_CERTIFICATE_CONFIG, GoogleEndpoints, HOME, IAM_SCOPE,
    MAX_SUBJECT_TOKEN_SOURCE_BYTES,
};
use broker_core::{
    IdTokenRequest, ManualClock, Rejection, ScopeSet, Secret, SourceError, TokenSource,
    UpstreamStatus,
};
use gcp_emulator::{Emulator, Endpoint, RecordedRequest, RunningEmulator};
use serde_json::{Value, json};

use crate::support::*;

pub(crate) const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
pub(crate) const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
pub(crate) const AWS4_TYPE: &str = "urn:ietf:params:aws:token-type:aws4_request";
pub(crate) const MTLS_TYPE: &str = "urn:ietf:params:oauth:token-type:mtls";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The default world's OIDC provider of `dev-pool`, and its workforce provider.
pub(crate) const DEV_OIDC: &str = "dev-oidc";
pub(crate) const DEV_WORKFORCE_OIDC: &str = "dev-workforce-oidc";
/// The pool principal set of `dev-pool` and of `dev-workforce`.
const WORKLOAD_POOL_SET: &str = "principalSet://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/dev-pool/*";
const WORKFORCE_POOL_SET: &str =
    "principalSet://iam.googleapis.com/locations/global/workforcePools/dev-workforce/*";

/// A subject token of `provider`'s issuer for `subject`, valid an hour.
pub(crate) fn subject_token(emulator: &RunningEmulator, provider: &str, subject: &str) -> String {
    emulator
        .mint_oidc_token(provider, subject, Duration::from_secs(3600), Value::Null)
        .expect("subject token")
}

/// The STS audience of a provider of the emulator's world.
pub(crate) fn audience(emulator: &RunningEmulator, provider: &str) -> String {
    let federation = emulator.federation();
    if let Some(oidc) = federation.oidc_provider(provider) {
        return oidc.audience.clone();
    }
    federation
        .aws
        .iter()
        .map(|p| (&p.provider_id, &p.audience))
        .chain(
            federation
                .x509
                .iter()
                .map(|p| (&p.provider_id, &p.audience)),
        )
        .find(|(id, _)| *id == provider)
        .map(|(_, audience)| audience.clone())
        .unwrap_or_else(|| panic!("no provider {provider}"))
}

/// An `external_account` file of `provider` whose STS is the emulator's.
pub(crate) fn file_for(
    emulator: &RunningEmulator,
    provider: &str,
    subject_token_type: &str,
    credential_source: Value,
) -> Value {
    json!({
        "universe_domain": "googleapis.com",
        "type": "external_account",
        "audience": audience(emulator, provider),
        "subject_token_type": subject_token_type,
        "token_url": format!("{}/v1/token", emulator.url()),
        "credential_source": credential_source,
    })
}

/// The same file, impersonating `email` through the emulator's IAM Credentials.
pub(crate) fn impersonating(emulator: &RunningEmulator, mut file: Value, email: &str) -> Value {
    file["service_account_impersonation_url"] = json!(format!(
        "{}/v1/projects/-/serviceAccounts/{email}:generateAccessToken",
        emulator.url()
    ));
    file
}

pub(crate) fn options_with(env: Env) -> ExternalAccountOptions {
    ExternalAccountOptions {
        env,
        ..ExternalAccountOptions::default()
    }
}

/// The source of `file` (its downscoping and default STS at the emulator).
pub(crate) fn external(
    emulator: &RunningEmulator,
    file: &Value,
    options: ExternalAccountOptions,
    clock: &ManualClock,
) -> ExternalAccountSource {
    ExternalAccountConfig::parse(&file.to_string(), "wif.json")
        .unwrap_or_else(|e| panic!("{e}"))
        .into_source(GoogleEndpoints::emulator(emulator.url()), http(), options)
        .unwrap_or_else(|e| panic!("{e}"))
        .with_clock(Arc::new(clock.clone()))
}

/// The last request an endpoint of the emulator received.
fn last(emulator: &RunningEmulator, endpoint: Endpoint) -> RecordedRequest {
    emulator
        .requests(endpoint)
        .pop()
        .unwrap_or_else(|| panic!("no request to {}", endpoint.name()))
}

/// The `sub` claim of the JWT subject token a recorded STS request carried.
fn subject_sub(request: &RecordedRequest) -> &str {
    request.fields["subject_token"]["jwt"]["claims"]["sub"]
        .as_str()
        .expect("a JWT subject token")
}

fn lifetime_left(token: &broker_core::Token, since: SystemTime) -> Duration {
    token.expires_at.duration_since(since).expect("future")
}

fn assert_about(actual: Duration, expected: Duration) {
    assert!(
        actual.abs_diff(expected) <= Duration::from_secs(3),
        "{actual:?} is not about {expected:?}"
    );
}

/// Executables get only the variables the broker passes on: give them a PATH.
fn executable_env() -> Env {
    Env::from_vars([
        ("PATH", "/usr/bin:/bin"),
        ("LANG", "C.UTF-8"),
        // Not on the list of variables passed to the program.
        ("AWS_SECRET_ACCESS_KEY", "never-for-the-program"),
        ("SOME_OTHER_VARIABLE", "never-for-the-program"),
    ])
}

fn allow_executables() -> ExternalAccountOptions {
    ExternalAccountOptions {
        allow_executables: true,
        ..options_with(executable_env())
    }
}

/// A `/bin/sh` script in `dir` and the command that runs it (through `/bin/sh`, so the file
/// is never executed while another test thread may still hold it open for writing).
pub(crate) fn script(dir: &TempDir, name: &str, body: &str) -> String {
    let path = dir.write(name, &format!("#!/bin/sh\n{body}\n"));
    format!("/bin/sh {}", path.display())
}

/// A successful version 1 executable response.
pub(crate) fn executable_response(token: &str, expires: Option<SystemTime>) -> Value {
    let mut response = json!({
        "version": 1,
        "success": true,
        "token_type": JWT_TYPE,
        "id_token": token,
    });
    if let Some(expires) = expires {
        response["expiration_time"] = json!(unix(expires));
    }
    response
}

/// A script that prints `response`.
fn printing(response: &Value) -> String {
    format!("cat <<'RESPONSE'\n{response}\nRESPONSE")
}

fn executable_source(
    command: &str,
    timeout_millis: Option<u64>,
    output_file: Option<&str>,
) -> Value {
    let mut executable = json!({"command": command});
    if let Some(timeout) = timeout_millis {
        executable["timeout_millis"] = json!(timeout);
    }
    if let Some(path) = output_file {
        executable["output_file"] = json!(path);
    }
    json!({"executable": executable})
}

#[tokio::test]
async fn a_file_source_is_read_again_for_every_exchange_in_text_and_json() {
    let emulator = emulator().await;
    let dir = TempDir::new();
    let oidc = emulator
        .federation()
        .oidc_provider(DEV_OIDC)
        .expect("dev-oidc")
        .clone();
    for format in ["text", "json"] {
        let content = |token: &str| match format {
            // A trailing newline, as `echo` or an agent writes it: trimmed.
            "text" => format!("{token}\n"),
            _ => json!({"id_token": token, "expires_in": 3600}).to_string(),
        };
        let alice = subject_token(&emulator, DEV_OIDC, "alice");
        let path = dir.write(&format!("token-{format}"), &content(&alice));
        let mut credential_source = json!({"file": path});
        if format == "json" {
            credential_source["format"] =
                json!({"type": "json", "subject_token_field_name": "id_token"});
        }
        let file = file_for(&emulator, DEV_OIDC, JWT_TYPE, credential_source);
        // A clock at the real time of the exchange: the federated token's expiry is exact.
        let clock = clock();
        let source = external(&emulator, &file, options_with(no_env()), &clock);
        assert_eq!(source.kind(), "external_account");
        assert_eq!(source.principal(), WORKLOAD_POOL_SET);
        assert_eq!(source.federated_principal(), WORKLOAD_POOL_SET);
        assert_eq!(source.audience(), oidc.audience);
        assert!(!source.is_workforce());
        assert_eq!(source.token_url(), format!("{}/v1/token", emulator.url()));

        let started = SystemTime::now();
        let token = source
            .fetch(&request(&[STORAGE_RO]), None)
            .await
            .expect("token");
        assert_eq!(&*token.principal, WORKLOAD_POOL_SET);
        assert_eq!(token.scopes.joined(), STORAGE_RO);
        assert_about(lifetime_left(&token, started), Duration::from_secs(3600));
        let info = tokeninfo(&emulator, &token.secret).await;
        assert_eq!(info["grant"], "sts-exchange");
        assert_eq!(info["principal"], oidc.principal("alice"));
        assert_eq!(info["scope"], STORAGE_RO);
        assert_expiry_matches(&info, &token);
        let sent = last(&emulator, Endpoint::StsToken);
        assert_eq!(sent.body_format, "form");
        assert_eq!(
            sent.fields["grant_type"],
            "urn:ietf:params:oauth:grant-type:token-exchange"
        );
        assert_eq!(sent.fields["audience"], oidc.audience);
        assert_eq!(sent.fields["scope"], STORAGE_RO);
        assert_eq!(sent.fields["requested_token_type"], ACCESS_TOKEN_TYPE);
        assert_eq!(sent.fields["subject_token_type"], JWT_TYPE);
        assert_eq!(
            sent.fields["subject_token"]["sha256"],
            sha256_hex(alice.as_bytes())
        );
        assert!(sent.fields.get("options").is_none(), "{:?}", sent.fields);
        assert!(sent.client_auth.is_none() && sent.authorization.is_none());

        // The file is rotated between two exchanges: the second carries the new token.
        let bob = subject_token(&emulator, DEV_OIDC, "bob");
        std::fs::write(&path, content(&bob)).expect("rotate");
        let token = source
            .fetch(&request(&[STORAGE_RO]), None)
            .await
            .expect("token after rotation");
        assert_eq!(
            tokeninfo(&emulator, &token.secret).await["principal"],
            oidc.principal("bob")
        );
        let requests = emulator.requests(Endpoint::StsToken);
        let [.., first, second] = requests.as_slice() else {
            panic!("two exchanges");
        };
        assert_eq!((subject_sub(first), subject_sub(second)), ("alice", "bob"));
        assert_eq!(
            second.fields["subject_token"]["sha256"],
            sha256_hex(bob.as_bytes())
        );
    }
    // A request without scopes gets cloud-platform.
    let clock = clock();
    let path = dir.write("token", &subject_token(&emulator, DEV_OIDC, "carol"));
    let source = external(
        &emulator,
        &file_for(&emulator, DEV_OIDC, JWT_TYPE, json!({"file": path})),
        options_with(no_env()),
        &clock,
    );
    let token = source.fetch(&request(&[]), None).await.expect("token");
    assert_eq!(token.scopes.joined(), CLOUD_PLATFORM);
    assert_eq!(
        last(&emulator, Endpoint::StsToken).fields["scope"],
        CLOUD_PLATFORM
    );

    // A file being rotated (gone for a moment) is a transient failure; an empty one is
    // malformed. Neither is quoted, nor reaches STS.
    let before = emulator.count(Endpoint::StsToken);
    std::fs::remove_file(&path).expect("remove");
    let error = source
        .fetch(&request(&[]), None)
        .await
        .expect_err("no file");
    assert!(
        matches!(&error, SourceError::Unavailable { upstream, status: UpstreamStatus::Io, .. } if upstream == "credential_source.file"),
        "{error:?}"
    );
    assert!(error.is_transient());
    std::fs::write(&path, "\n").expect("empty");
    let error = source
        .fetch(&request(&[]), None)
        .await
        .expect_err("empty file");
    assert!(
        matches!(&error, SourceError::Malformed { message, .. } if message.contains("empty subject token")),
        "{error:?}"
    );
    std::fs::write(&path, "x".repeat(MAX_SUBJECT_TOKEN_SOURCE_BYTES + 1)).expect("large");
    let error = source
        .fetch(&request(&[]), None)
        .await
        .expect_err("too large");
    assert!(
        matches!(&error, SourceError::Malformed { message, .. } if message.contains("is larger than 65536 bytes")),
        "{error:?}"
    );
    assert_eq!(emulator.count(Endpoint::StsToken), before);
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_url_source_sends_its_headers_and_reads_the_format() {
    let emulator = emulator().await;
    let clock = clock();
    let alice = subject_token(&emulator, DEV_OIDC, "alice");
    let server = TokenServer::start(
        200,
        &json!({"access_token": alice, "token_type": "Bearer"}).to_string(),
    )
    .await;
    let file = file_for(
        &emulator,
        DEV_OIDC,
        JWT_TYPE,
        json!({
            "url": format!("{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=api%3A%2F%2Fwif", server.url),
            "headers": {"Metadata": "True", "X-Agent-Key": "agent-key-value"},
            "format": {"type": "json", "subject_token_field_name": "access_token"},
        }),
    );
    let source = external(&emulator, &file, options_with(no_env()), &clock);
    let token = source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token");
    let oidc = emulator
        .federation()
        .oidc_provider(DEV_OIDC)
        .expect("dev-oidc")
        .clone();
    assert_eq!(
        tokeninfo(&emulator, &token.secret).await["principal"],
        oidc.principal("alice")
    );
    assert_eq!(subject_sub(&last(&emulator, Endpoint::StsToken)), "alice");
    let seen = server.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "GET");
    assert_eq!(
        seen[0].target,
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=api%3A%2F%2Fwif"
    );
    assert_eq!(seen[0].header("metadata"), Some("True"));
    assert_eq!(seen[0].header("x-agent-key"), Some("agent-key-value"));

    // Fetched again for every exchange.
    let bob = subject_token(&emulator, DEV_OIDC, "bob");
    server.answer(200, &json!({"access_token": bob}).to_string());
    let token = source.fetch(&request(&[]), None).await.expect("token");
    assert_eq!(
        tokeninfo(&emulator, &token.secret).await["principal"],
        oidc.principal("bob")
    );
    assert_eq!(server.requests().len(), 2);

    // Another status than 200 is refused (a 5xx retried first); an answer without the field
    // is malformed; neither reaches STS, and neither quotes the answer.
    let before = emulator.count(Endpoint::StsToken);
    server.answer(404, r#"{"error":"agent-secret-detail"}"#);
    let error = source.fetch(&request(&[]), None).await.expect_err("404");
    assert!(
        matches!(
            &error,
            SourceError::Unavailable {
                status: UpstreamStatus::Http(404),
                ..
            }
        ),
        "{error:?}"
    );
    server.answer(503, "{}");
    let seen_before = server.requests().len();
    let error = source.fetch(&request(&[]), None).await.expect_err("503");
    assert!(error.is_transient(), "{error:?}");
    assert_eq!(
        server.requests().len() - seen_before,
        4,
        "retried up to the policy"
    );
    server.answer(200, r#"{"id_token": "agent-secret-detail"}"#);
    let error = source
        .fetch(&request(&[]), None)
        .await
        .expect_err("no field");
    assert!(
        matches!(&error, SourceError::Malformed { message, .. } if message.contains("has no field \"access_token\"")),
        "{error:?}"
    );
    assert!(!format!("{error} {error:?}").contains("agent-secret-detail"));
    assert_eq!(emulator.count(Endpoint::StsToken), before);
    emulator.shutdown().await;
}

#[tokio::test]
async fn an_executable_prints_the_subject_token_with_googles_environment() {
    let emulator = emulator().await;
    let clock = clock();
    let dir = TempDir::new();
    let alice = subject_token(&emulator, DEV_OIDC, "alice");
    let env_file = dir.0.join("env.txt");
    let output_file = dir.0.join("output.json");
    let command = script(
        &dir,
        "get-token.sh",
        &format!(
            "env > '{}'\n{}",
            env_file.display(),
            printing(&executable_response(
                &alice,
                Some(SystemTime::now() + Duration::from_secs(3600))
            ))
        ),
    );
    let file = file_for(
        &emulator,
        DEV_OIDC,
        JWT_TYPE,
        executable_source(
            &format!("{command} --audience=dev"),
            Some(5000),
            Some(&output_file.display().to_string()),
        ),
    );
    let file = impersonating(&emulator, file, READER);
    let source = external(&emulator, &file, allow_executables(), &clock);
    let token = source
        .fetch(&request(&[STORAGE_RO]), None)
        .await
        .expect("token");
    assert_eq!(&*token.principal, READER);
    assert_eq!(subject_sub(&last(&emulator, Endpoint::StsToken)), "alice");
    assert_eq!(tokeninfo(&emulator, &token.secret).await["email"], READER);

    let env = std::fs::read_to_string(&env_file).expect("the program ran");
    let vars: Vec<(&str, &str)> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let var = |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    assert_eq!(
        var("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE"),
        Some(audience(&emulator, DEV_OIDC).as_str())
    );
    assert_eq!(var("GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE"), Some(JWT_TYPE));
    assert_eq!(var("GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE"), Some("0"));
    assert_eq!(
        var("GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL"),
        Some(READER)
    );
    assert_eq!(var("GOOGLE_EXTERNAL_ACCOUNT_ID"), Some(READER));
    assert_eq!(var("GOOGLE_EXTERNAL_ACCOUNT_REVOKE"), Some("0"));
    assert_eq!(
        var("GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE"),
        Some(output_file.display().to_string().as_str())
    );
    assert_eq!(var("PATH"), Some("/usr/bin:/bin"));
    assert_eq!(var("LANG"), Some("C.UTF-8"));
    assert!(!env.contains("never-for-the-program"), "{env}");
    assert!(
        var("SOME_OTHER_VARIABLE").is_none() && var("HOME").is_none(),
        "{env}"
    );

    // Without impersonation nor an output file, those variables are not set.
    let plain = file_for(
        &emulator,
        DEV_OIDC,
        JWT_TYPE,
        executable_source(&command, None, None),
    );
    let source = external(&emulator, &plain, allow_executables(), &clock);
    assert_eq!(source.principal(), WORKLOAD_POOL_SET);
    source.fetch(&request(&[]), None).await.expect("token");
    let env = std::fs::read_to_string(&env_file).expect("the program ran");
    assert!(
        !env.contains("GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL"),
        "{env}"
    );
    assert!(
        !env.contains("GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE"),
        "{env}"
    );
    assert!(env.contains("GOOGLE_EXTERNAL_ACCOUNT_ID=\n"), "{env}");
    emulator.shutdown().await;
}

#[tokio::test]
async fn executable_failures_are_reported_and_never_reach_sts() {
    let emulator = emulator().await;
    let clock = clock();
    let dir = TempDir::new();
    let alice = subject_token(&emulator, DEV_OIDC, "alice");
    let run = |name: &str, body: &str, timeout: Option<u64>| {
        let command = script(&dir, name, body);
        external(
            &emulator,
            &file_for(
                &emulator,
                DEV_OIDC,
                JWT_TYPE,
                executable_source(&command, timeout, None),
            ),
            allow_executables(),
            &clock,
        )
    };

    // The program's own failure: its code and message are surfaced.
    let failure = run(
        "failure.sh",
        &printing(
            &json!({"version": 1, "success": false, "code": "401", "message": "Caller not authorized."}),
        ),
        None,
    );
    let error = failure
        .fetch(&request(&[]), None)
        .await
        .expect_err("failure");
    match &error {
        SourceError::Unavailable {
            upstream,
            status,
            message,
            ..
        } => {
            assert_eq!(upstream, "credential_source.executable");
            assert_eq!(*status, UpstreamStatus::Io);
            assert!(
                message.ends_with("reported a failure: 401: Caller not authorized."),
                "{message}"
            );
            assert!(message.contains("/bin/sh"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    // Output that is not a response; an expired token; a failing exit status.
    let cases = [
        (
            "garbage.sh",
            "echo 'not json at all'".to_owned(),
            "is not JSON",
        ),
        (
            "expired.sh",
            printing(&executable_response(
                &alice,
                Some(SystemTime::now() - Duration::from_secs(60)),
            )),
            "has expired",
        ),
        (
            "version.sh",
            printing(&json!({"version": 2, "success": true})),
            "only 1",
        ),
        ("silent.sh", "exit 0".to_owned(), "printed nothing"),
    ];
    for (name, body, expected) in cases {
        let error = run(name, &body, None)
            .fetch(&request(&[]), None)
            .await
            .expect_err(name);
        assert!(
            matches!(&error, SourceError::Malformed { upstream, message } if upstream == "credential_source.executable" && message.contains(expected)),
            "{name}: {error:?}"
        );
        assert!(!format!("{error} {error:?}").contains(&alice), "{error}");
    }
    let error = run("exit.sh", "echo partial; exit 3", None)
        .fetch(&request(&[]), None)
        .await
        .expect_err("exit 3");
    assert!(
        matches!(&error, SourceError::Unavailable { message, .. } if message.contains("failed: exit status: 3")),
        "{error:?}"
    );

    // The program runs past its timeout (5 s, the shortest Google allows): killed.
    let slow = run("slow.sh", "exec sleep 30", Some(5000));
    let started = Instant::now();
    let error = slow.fetch(&request(&[]), None).await.expect_err("timeout");
    let elapsed = started.elapsed();
    assert!(
        matches!(&error, SourceError::Unavailable { status: UpstreamStatus::Timeout, message, .. } if message.contains("did not finish within 5000 ms")),
        "{error:?}"
    );
    assert!(
        (Duration::from_millis(4900)..Duration::from_secs(9)).contains(&elapsed),
        "{elapsed:?}"
    );
    // The call's deadline comes first.
    let started = Instant::now();
    let error = slow
        .fetch(
            &request(&[]),
            Some(Instant::now() + Duration::from_millis(300)),
        )
        .await
        .expect_err("deadline");
    assert!(
        matches!(&error, SourceError::DeadlineExceeded { upstream, .. } if upstream == "credential_source.executable"),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    assert_eq!(emulator.count(Endpoint::StsToken), 0);
    emulator.shutdown().await;
}

#[tokio::test]
async fn an_executables_output_file_is_a_cache_until_it_expires() {
    let emulator = emulator().await;
    let clock = clock();
    let dir = TempDir::new();
    let oidc = emulator
        .federation()
        .oidc_provider(DEV_OIDC)
        .expect("dev-oidc")
        .clone();
    let alice = subject_token(&emulator, DEV_OIDC, "alice");
    let bob = subject_token(&emulator, DEV_OIDC, "bob");
    let runs = dir.0.join("runs");
    let output_file = dir.0.join("cache.json");
    let command = script(
        &dir,
        "get-token.sh",
        &format!(
            "echo run >> '{}'\n{}",
            runs.display(),
            printing(&executable_response(
                &bob,
                Some(SystemTime::now() + Duration::from_secs(3600))
            ))
        ),
    );
    let file = file_for(
        &emulator,
        DEV_OIDC,
        JWT_TYPE,
        executable_source(&command, None, Some(&output_file.display().to_string())),
    );
    let source = external(&emulator, &file, allow_executables(), &clock);
    let runs_so_far = || {
        std::fs::read_to_string(&runs)
            .map(|text| text.lines().count())
            .unwrap_or(0)
    };

    // A valid cached response: the program does not run.
    let cached = executable_response(&alice, Some(SystemTime::now() + Duration::from_secs(600)));
    std::fs::write(&output_file, cached.to_string()).expect("cache");
    let token = source.fetch(&request(&[]), None).await.expect("cached");
    assert_eq!(
        tokeninfo(&emulator, &token.secret).await["principal"],
        oidc.principal("alice")
    );
    assert_eq!(runs_so_far(), 0);

    // Once the clock passes its expiration_time, the program runs again.
    clock.advance(Duration::from_secs(601));
    let token = source.fetch(&request(&[]), None).await.expect("ran");
    assert_eq!(
        tokeninfo(&emulator, &token.secret).await["principal"],
        oidc.principal("bob")
    );
    assert_eq!(runs_so_far(), 1);
    clock.set(SystemTime::now());

    // An expired (or failed, or broken) cached response: the program runs.
    for cached in [
        executable_response(&alice, Some(SystemTime::now() - Duration::from_secs(10))),
        json!({"version": 1, "success": false, "code": "x", "message": "y"}),
        json!("garbage"),
        executable_response(&alice, None),
    ] {
        std::fs::write(&output_file, cached.to_string()).expect("cache");
        let before = runs_so_far();
        let token = source.fetch(&request(&[]), None).await.expect("ran");
        assert_eq!(runs_so_far(), before + 1, "{cached}");
        assert_eq!(
            tokeninfo(&emulator, &token.secret).await["principal"],
            oidc.principal("bob"),
            "{cached}"
        );
    }

    // A program that writes the output file and prints nothing: the file is read.
    let writer = script(
        &dir,
        "write-file.sh",
        &format!(
            "cat > \"$GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE\" <<'RESPONSE'\n{}\nRESPONSE",
            executable_response(&alice, Some(SystemTime::now() + Duration::from_secs(3600)))
        ),
    );
    let fresh = dir.0.join("fresh.json");
    let file = file_for(
        &emulator,
        DEV_OIDC,
        JWT_TYPE,
        executable_source(&writer, None, Some(&fresh.display().to_string())),
    );
    let source = external(&emulator, &file, allow_executables(), &clock);
    let token = source
        .fetch(&request(&[]), None)
        .await
        .expect("from the file");
    assert_eq!(
        tokeninfo(&emulator, &token.secret).await["principal"],
        oidc.principal("alice")
    );
    assert!(fresh.exists());

    // With an output file the response must say when it expires.
    let undated = script(
        &dir,
        "undated.sh",
        &printing(&executable_response(&bob, None)),
    );
    let file = file_for(
        &emulator,
        DEV_OIDC,
        JWT_TYPE,
        executable_source(
            &undated,
            None,
            Some(&dir.0.join("undated.json").display().to_string()),
        ),
    );
    let error = external(&emulator, &file, allow_executables(), &clock)
        .fetch(&request(&[]), None)
        .await
        .expect_err("undated");
    assert!(
        matches!(&error, SourceError::Malformed { message, .. } if message.contains("no expiration_time")),
        "{error:?}"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn executables_are_refused_unless_allowed() {
    let emulator = emulator().await;
    let dir = TempDir::new();
    let command = script(&dir, "get-token.sh", "echo never");
    let file = file_for(
        &emulator,
        DEV_OIDC,
        JWT_TYPE,
        executable_source(
            &format!("{command} --secret-arg=exec-arg-value"),
            None,
            None,
        ),
    );
    let config = ExternalAccountConfig::parse(&file.to_string(), "wif.json").expect("config");
    let error = ExternalAccountSource::new(
        config,
        GoogleEndpoints::emulator(emulator.url()),
        http(),
        options_with(executable_env()),
    )
    .expect_err("not allowed");
    assert!(
        matches!(&error, BackendError::ExecutableNotAllowed { origin, command } if origin == "wif.json" && command == "/bin/sh"),
        "{error:?}"
    );
    assert!(!error.to_string().contains("exec-arg-value"), "{error}");
    emulator.shutdown().await;
}

#[tokio::test]
async fn aws_credentials_from_the_environment_are_signed_and_verified() {
    let emulator = emulator().await;
    let clock = clock();
    let aws = emulator
        .federation()
        .aws_provider()
        .expect("dev-aws")
        .clone();
    let access_key_id = aws.access_key_id.clone().expect("key id");
    let secret = aws.secret_access_key.clone().expect("secret");
    let session = aws.session_token.clone().expect("session token");
    let credential_source = json!({
        "environment_id": "aws1",
        "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
    });
    let file = file_for(&emulator, "dev-aws", AWS4_TYPE, credential_source);
    let env = |secret: &str, session: Option<&str>| {
        let mut vars = vec![
            (AWS_REGION, aws.region.clone()),
            (AWS_ACCESS_KEY_ID, access_key_id.clone()),
            (AWS_SECRET_ACCESS_KEY, secret.to_owned()),
        ];
        if let Some(session) = session {
            vars.push((AWS_SESSION_TOKEN, session.to_owned()));
        }
        options_with(Env::from_vars(vars))
    };
    let source = external(
        &emulator,
        &file,
        env(secret.expose(), Some(session.expose())),
        &clock,
    );
    let token = source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token");
    assert_eq!(&*token.principal, WORKLOAD_POOL_SET);
    let arn = aws.arn.clone().expect("arn");
    assert_eq!(
        tokeninfo(&emulator, &token.secret).await["principal"],
        aws.principal(&arn)
    );
    // Nothing asked of the instance metadata service.
    assert_eq!(emulator.count(Endpoint::AwsImds), 0);
    let sent = last(&emulator, Endpoint::StsToken);
    assert_eq!(sent.fields["subject_token_type"], AWS4_TYPE);
    let signed = &sent.fields["subject_token"]["aws"];
    assert_eq!(sent.fields["subject_token"]["format"], "aws4_request");
    assert_eq!(signed["method"], "POST");
    assert_eq!(
        signed["url"],
        format!(
            "https://sts.{}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
            aws.region
        )
    );
    let header = |name: &str| {
        signed["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .find(|h| h["key"] == name)
            .map(|h| h["value"].as_str().expect("value").to_owned())
            .unwrap_or_else(|| panic!("no header {name} in {signed}"))
    };
    let authorization = header("Authorization");
    let date = &header("x-amz-date")[..8];
    assert!(
        authorization.starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential={access_key_id}/{date}/{}/sts/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=",
            aws.region
        )),
        "{authorization}"
    );
    assert_eq!(header("x-goog-cloud-target-resource"), aws.audience);
    assert_eq!(header("host"), format!("sts.{}.amazonaws.com", aws.region));
    // Python's encoding: no `+` for spaces, `/` left as it is.
    assert_eq!(signed["url_encoding"]["plus_for_space"], false);
    assert_eq!(signed["url_encoding"]["slash_escaped"], false);

    // AWS_REGION, else AWS_DEFAULT_REGION: the region signed for and put in the URL.
    for (vars, region) in [
        (vec![(AWS_DEFAULT_REGION, "eu-west-1")], "eu-west-1"),
        (
            vec![
                (AWS_REGION, "ap-south-1"),
                (AWS_DEFAULT_REGION, "eu-west-1"),
            ],
            "ap-south-1",
        ),
    ] {
        let mut vars: Vec<(&str, String)> =
            vars.into_iter().map(|(k, v)| (k, v.to_owned())).collect();
        vars.extend([
            (AWS_ACCESS_KEY_ID, access_key_id.clone()),
            (AWS_SECRET_ACCESS_KEY, secret.expose().to_owned()),
            (AWS_SESSION_TOKEN, session.expose().to_owned()),
        ]);
        let source = external(&emulator, &file, options_with(Env::from_vars(vars)), &clock);
        source.fetch(&request(&[]), None).await.expect("token");
        let signed = &last(&emulator, Endpoint::StsToken).fields["subject_token"]["aws"];
        assert_eq!(
            signed["url"],
            format!(
                "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
            )
        );
        assert!(
            signed["headers"][0]["value"]
                .as_str()
                .expect("authorization")
                .contains(&format!("/{region}/sts/aws4_request")),
            "{signed}"
        );
    }

    // The emulator checks the signature and the session token: a wrong secret, a missing
    // session token, another account's key are refused, and the fault is the credential's.
    for (secret, session, expected) in [
        (
            "wrongSecretAccessKey/000000000000000000000",
            Some(session.expose()),
            "signature does not match",
        ),
        (
            secret.expose(),
            None,
            "security token included in the request is invalid",
        ),
    ] {
        let source = external(&emulator, &file, env(secret, session), &clock);
        let rejection = rejection(source.fetch(&request(&[]), None).await);
        assert_eq!(
            rejection.rejection,
            Rejection::CredentialRejected,
            "{rejection:?}"
        );
        assert_eq!(rejection.error, "invalid_grant");
        assert!(
            rejection.message.contains(expected),
            "{}",
            rejection.message
        );
    }
    emulator.shutdown().await;
}

#[tokio::test]
async fn aws_credentials_from_imdsv2_need_its_session_token() {
    let emulator = emulator().await;
    let clock = clock();
    let aws = emulator
        .federation()
        .aws_provider()
        .expect("dev-aws")
        .clone();
    assert!(aws.imds_url.is_some(), "the emulator serves the instance");
    let file = file_for(&emulator, "dev-aws", AWS4_TYPE, aws.credential_source());
    let source = external(&emulator, &file, options_with(no_env()), &clock);
    let token = source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token");
    let arn = aws.arn.clone().expect("arn");
    assert_eq!(
        tokeninfo(&emulator, &token.secret).await["principal"],
        aws.principal(&arn)
    );
    let imds = emulator.requests(Endpoint::AwsImds);
    let calls: Vec<(&str, &str)> = imds
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("PUT", "/latest/api/token"),
            ("GET", "/latest/meta-data/placement/availability-zone"),
            ("GET", "/latest/meta-data/iam/security-credentials"),
            ("GET", "/latest/meta-data/iam/security-credentials/dev-role"),
        ]
    );
    assert_eq!(
        imds[0].headers["x-aws-ec2-metadata-token-ttl-seconds"],
        "300"
    );
    let session = imds[1].headers["x-aws-ec2-metadata-token"]["sha256"].clone();
    assert!(session.is_string());
    for request in &imds[1..] {
        assert_eq!(request.status, 200);
        assert_eq!(
            request.headers["x-aws-ec2-metadata-token"]["sha256"],
            session
        );
    }
    // The signature is by the instance role's temporary credentials, for its region.
    let signed = &last(&emulator, Endpoint::StsToken).fields["subject_token"]["aws"];
    assert!(
        signed["url"]
            .as_str()
            .expect("url")
            .contains("sts.us-east-2.amazonaws.com"),
        "{signed}"
    );

    // The region is kept; a new session and the credentials are fetched for each exchange.
    emulator.clear_requests(Some(Endpoint::AwsImds));
    source.fetch(&request(&[]), None).await.expect("token");
    let paths: Vec<String> = emulator
        .requests(Endpoint::AwsImds)
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        paths,
        [
            "/latest/api/token",
            "/latest/meta-data/iam/security-credentials",
            "/latest/meta-data/iam/security-credentials/dev-role",
        ]
    );

    // The environment's region or credentials spare their metadata calls.
    let env_region = Env::from_vars([(AWS_REGION, "us-east-2")]);
    let access_key_id = aws.access_key_id.clone().expect("key id");
    let secret = aws.secret_access_key.clone().expect("secret");
    let session = aws.session_token.clone().expect("session token");
    let env_credentials = Env::from_vars([
        (AWS_ACCESS_KEY_ID, access_key_id.as_str()),
        (AWS_SECRET_ACCESS_KEY, secret.expose()),
        (AWS_SESSION_TOKEN, session.expose()),
    ]);
    for (env, expected) in [
        (
            env_region,
            vec![
                "/latest/api/token",
                "/latest/meta-data/iam/security-credentials",
                "/latest/meta-data/iam/security-credentials/dev-role",
            ],
        ),
        (
            env_credentials,
            vec![
                "/latest/api/token",
                "/latest/meta-data/placement/availability-zone",
            ],
        ),
    ] {
        emulator.clear_requests(Some(Endpoint::AwsImds));
        let source = external(&emulator, &file, options_with(env), &clock);
        let token = source.fetch(&request(&[]), None).await.expect("token");
        assert_eq!(
            tokeninfo(&emulator, &token.secret).await["principal"],
            aws.principal(&arn)
        );
        let paths: Vec<String> = emulator
            .requests(Endpoint::AwsImds)
            .iter()
            .map(|r| r.path.clone())
            .collect();
        assert_eq!(paths, expected);
    }

    // Without imdsv2_session_token_url the instance (IMDSv2 only) refuses: 401.
    let mut v1 = aws.credential_source();
    v1.as_object_mut()
        .expect("object")
        .remove("imdsv2_session_token_url");
    let file = file_for(&emulator, "dev-aws", AWS4_TYPE, v1);
    let error = external(&emulator, &file, options_with(no_env()), &clock)
        .fetch(&request(&[]), None)
        .await
        .expect_err("IMDSv1");
    assert!(
        matches!(&error, SourceError::Unavailable { upstream, status: UpstreamStatus::Http(401), .. } if *upstream == host(&emulator)),
        "{error:?}"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_certificate_is_exchanged_over_mutual_tls() {
    let dir = TempDir::new();
    let emulator = Emulator::builder()
        .data_dir(dir.0.join("emulator"))
        .start()
        .await
        .expect("emulator");
    let clock = clock();
    let x509 = emulator
        .federation()
        .x509_provider()
        .expect("dev-x509")
        .clone();
    let subject = x509.workload_subject.clone().expect("subject");
    let file = json!({
        "type": "external_account",
        "audience": x509.audience,
        "subject_token_type": MTLS_TYPE,
        "token_url": x509.token_url,
        "credential_source": x509.credential_source().expect("certificate_config.json"),
    });
    let options = ExternalAccountOptions {
        mtls_root_certificates: Some(emulator.sts_mtls_ca_pem().as_bytes().to_vec()),
        ..options_with(no_env())
    };
    let source = external(&emulator, &file, options.clone(), &clock);
    let token = source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token");
    assert_eq!(&*token.principal, WORKLOAD_POOL_SET);
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["principal"], x509.principal(&subject));
    assert_eq!(emulator.count(Endpoint::StsToken), 0);
    let sent = last(&emulator, Endpoint::StsMtlsToken);
    let presented = sent
        .client_certificate
        .clone()
        .expect("a client certificate");
    assert!(
        presented["subject"]
            .as_str()
            .expect("subject")
            .contains("dev-workload"),
        "{presented}"
    );
    let chain = &sent.fields["subject_token"];
    assert_eq!(chain["format"], "x509");
    assert_eq!(chain["certificates"][0]["sha256"], presented["sha256"]);
    assert_eq!(sent.fields["subject_token_type"], MTLS_TYPE);

    // gcloud's default configuration: GOOGLE_API_CERTIFICATE_CONFIG, else under HOME.
    let config_file = x509.certificate_config_file.clone().expect("config file");
    let home = TempDir::new();
    home.write(
        ".config/gcloud/certificate_config.json",
        &std::fs::read_to_string(&config_file).expect("config"),
    );
    let mut default = file.clone();
    default["credential_source"] = json!({"certificate": {"use_default_certificate_config": true}});
    for env in [
        Env::from_vars([(
            GOOGLE_API_CERTIFICATE_CONFIG,
            config_file.display().to_string(),
        )]),
        Env::from_vars([(HOME, home.0.display().to_string())]),
    ] {
        let options = ExternalAccountOptions {
            mtls_root_certificates: Some(emulator.sts_mtls_ca_pem().as_bytes().to_vec()),
            ..options_with(env)
        };
        let token = external(&emulator, &default, options, &clock)
            .fetch(&request(&[]), None)
            .await
            .expect("token from the default configuration");
        assert_eq!(
            tokeninfo(&emulator, &token.secret).await["principal"],
            x509.principal(&subject)
        );
    }
    let error = external(&emulator, &default, options_with(no_env()), &clock)
        .fetch(&request(&[]), None)
        .await
        .expect_err("no configuration");
    assert!(
        matches!(&error, SourceError::Internal(message) if message.contains("GOOGLE_API_CERTIFICATE_CONFIG")),
        "{error:?}"
    );

    // With a trust chain: the leaf, then the chain's certificates.
    let mut chained = file.clone();
    chained["credential_source"]["certificate"]["trust_chain_path"] =
        json!(x509.ca_file.clone().expect("CA file"));
    let token = external(&emulator, &chained, options.clone(), &clock)
        .fetch(&request(&[]), None)
        .await
        .expect("token with a chain");
    assert_eq!(
        tokeninfo(&emulator, &token.secret).await["principal"],
        x509.principal(&subject)
    );
    let certificates =
        last(&emulator, Endpoint::StsMtlsToken).fields["subject_token"]["certificates"]
            .as_array()
            .expect("certificates")
            .clone();
    assert_eq!(certificates.len(), 2, "{certificates:?}");
    assert!(
        certificates[1]["subject"]
            .as_str()
            .expect("subject")
            .contains("dev-x509 CA"),
        "{certificates:?}"
    );

    // Impersonation after the exchange goes over mutual TLS too.
    let mut impersonating = file.clone();
    impersonating["service_account_impersonation_url"] = json!(format!(
        "{}/v1/projects/-/serviceAccounts/{READER}:generateAccessToken",
        emulator.sts_mtls_url()
    ));
    let source = external(&emulator, &impersonating, options.clone(), &clock);
    let token = source
        .fetch(&request(&[STORAGE_RO]), None)
        .await
        .expect("impersonated");
    assert_eq!(&*token.principal, READER);
    assert_eq!(tokeninfo(&emulator, &token.secret).await["email"], READER);
    assert!(
        last(&emulator, Endpoint::IamGenerateAccessToken)
            .client_certificate
            .is_some()
    );

    // STS refuses an X.509 subject token that did not come over mutual TLS.
    let mut plain = file.clone();
    plain["token_url"] = json!(format!("{}/v1/token", emulator.url()));
    let rejection = rejection(
        external(&emulator, &plain, options, &clock)
            .fetch(&request(&[]), None)
            .await,
    );
    assert_eq!(
        rejection.rejection,
        Rejection::CredentialRejected,
        "{rejection:?}"
    );
    assert!(
        rejection.message.contains("mutual TLS"),
        "{}",
        rejection.message
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn workforce_pools_with_a_user_project_or_a_client() {
    let emulator = emulator().await;
    let clock = clock();
    let dir = TempDir::new();
    let workforce = emulator
        .federation()
        .oidc_provider(DEV_WORKFORCE_OIDC)
        .expect("workforce")
        .clone();
    let path = dir.write(
        "idp-token",
        &subject_token(&emulator, DEV_WORKFORCE_OIDC, "carol"),
    );
    let base = file_for(
        &emulator,
        DEV_WORKFORCE_OIDC,
        ID_TOKEN_TYPE,
        json!({"file": path}),
    );

    // workforce_pool_user_project: options.userProject.
    let mut with_project = base.clone();
    with_project["workforce_pool_user_project"] = json!("dev-project");
    let source = external(&emulator, &with_project, options_with(no_env()), &clock);
    assert!(source.is_workforce());
    assert_eq!(source.principal(), WORKFORCE_POOL_SET);
    let token = source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token");
    assert_eq!(&*token.principal, WORKFORCE_POOL_SET);
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["principal"], workforce.principal("carol"));
    assert_eq!(info["user_project"], "dev-project");
    let sent = last(&emulator, Endpoint::StsToken);
    assert_eq!(
        sent.fields["options"],
        json!({"userProject": "dev-project"})
    );
    assert_eq!(sent.options_encoding.as_deref(), Some("json"));
    assert_eq!(sent.fields["subject_token_type"], ID_TOKEN_TYPE);
    assert!(sent.client_auth.is_none());

    // Neither a project nor a client: STS refuses, and it is the credential's fault.
    let source = external(&emulator, &base, options_with(no_env()), &clock);
    let refused = rejection(source.fetch(&request(&[]), None).await);
    assert_eq!(
        refused.rejection,
        Rejection::CredentialRejected,
        "{refused:?}"
    );
    assert!(
        refused.message.contains("userProject"),
        "{}",
        refused.message
    );

    // The client authenticates with HTTP Basic; then no userProject is sent.
    let client_id = workforce.client_id.clone().expect("client id");
    let client_secret = workforce.client_secret.clone().expect("client secret");
    let mut with_client = with_project.clone();
    with_client["client_id"] = json!(client_id);
    with_client["client_secret"] = json!(client_secret.expose());
    let source = external(&emulator, &with_client, options_with(no_env()), &clock);
    let token = source.fetch(&request(&[]), None).await.expect("token");
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["principal"], workforce.principal("carol"));
    assert_eq!(info["user_project"], Value::Null);
    let sent = last(&emulator, Endpoint::StsToken);
    let auth = sent.client_auth.clone().expect("client authentication");
    assert_eq!(
        (
            auth.method.as_str(),
            auth.client_id.as_str(),
            auth.secret_present
        ),
        ("basic", client_id.as_str(), true)
    );
    assert!(sent.fields.get("options").is_none(), "{:?}", sent.fields);
    assert!(sent.fields.get("client_secret").is_none());

    // A wrong secret: the credential's fault, and the secret is never shown.
    with_client["client_secret"] = json!("not-the-workforce-secret");
    let source = external(&emulator, &with_client, options_with(no_env()), &clock);
    let error = source
        .fetch(&request(&[]), None)
        .await
        .expect_err("wrong secret");
    let shown = format!("{error} {error:?} {source:?}");
    let SourceError::Rejected(refused) = error else {
        panic!("{error:?}");
    };
    assert_eq!(
        (refused.rejection, refused.error.as_str()),
        (Rejection::CredentialRejected, "invalid_client")
    );
    assert!(!shown.contains("not-the-workforce-secret"), "{shown}");
    assert!(!shown.contains(client_secret.expose()), "{shown}");

    // A caller's user project through exchange(); one STS does not know is the caller's.
    let source = external(&emulator, &base, options_with(no_env()), &clock);
    let carol = Secret::new(subject_token(&emulator, DEV_WORKFORCE_OIDC, "carol"));
    let scopes = ScopeSet::parse([CLOUD_PLATFORM]).expect("scopes");
    let token = source
        .exchange(
            &carol,
            ID_TOKEN_TYPE,
            &scopes,
            Some("123456789012"),
            None,
            None,
        )
        .await
        .expect("exchanged");
    assert_eq!(
        tokeninfo(&emulator, &token.secret).await["user_project"],
        "123456789012"
    );
    let refused = rejection(
        source
            .exchange(
                &carol,
                ID_TOKEN_TYPE,
                &scopes,
                Some("no-such-project"),
                None,
                None,
            )
            .await,
    );
    assert_eq!(
        (refused.rejection, refused.field.as_deref()),
        (Rejection::InvalidArgument, Some("options.user_project"))
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn impersonation_follows_the_exchange_with_the_files_lifetime() {
    let emulator = emulator().await;
    let clock = clock();
    let dir = TempDir::new();
    let path = dir.write("token", &subject_token(&emulator, DEV_OIDC, "alice"));
    let mut file = impersonating(
        &emulator,
        file_for(&emulator, DEV_OIDC, JWT_TYPE, json!({"file": path})),
        READER,
    );
    file["service_account_impersonation"] = json!({"token_lifetime_seconds": 1800});
    file["quota_project_id"] = json!("dev-project");
    let source = external(&emulator, &file, options_with(no_env()), &clock);
    assert_eq!(source.principal(), READER);
    assert_eq!(source.impersonated_email(), Some(READER));
    let capabilities = source.capabilities();
    assert!(capabilities.id_tokens && capabilities.downscoping);
    assert!(!capabilities.chooses_lifetime && !capabilities.domain_wide_delegation);

    let started = SystemTime::now();
    let token = source
        .fetch(&request(&[STORAGE_RO]), None)
        .await
        .expect("token");
    assert_eq!(&*token.principal, READER);
    assert_eq!(token.scopes.joined(), STORAGE_RO);
    assert_about(lifetime_left(&token, started), Duration::from_secs(1800));
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["grant"], "generate-access-token");
    assert_eq!(info["email"], READER);
    assert_eq!(info["principal"], format!("serviceAccount:{READER}"));
    assert_eq!(info["scope"], STORAGE_RO);
    assert_expiry_matches(&info, &token);
    // STS is asked for the IAM scope (as Python google-auth asks), IAM for the caller's.
    assert_eq!(
        last(&emulator, Endpoint::StsToken).fields["scope"],
        IAM_SCOPE
    );
    let iam = last(&emulator, Endpoint::IamGenerateAccessToken);
    assert_eq!(iam.fields["lifetime"], "1800s");
    assert_eq!(iam.fields["scope"], json!([STORAGE_RO]));
    assert_eq!(iam.headers["x-goog-user-project"], "dev-project");
    assert_eq!(
        iam.authorization.as_ref().map(|a| a["scheme"].clone()),
        Some(json!("Bearer"))
    );

    // A request may ask for less than the file's lifetime, never more.
    let mut longer = request(&[STORAGE_RO]);
    longer.lifetime = Some(Duration::from_secs(3600));
    let error = source.fetch(&longer, None).await.expect_err("longer");
    assert!(
        matches!(
            &error,
            SourceError::Unsupported {
                flow: "extended_lifetime",
                ..
            }
        ),
        "{error:?}"
    );

    // A lifetime the account may not have (reader@ is not exempted from one hour): IAM
    // refuses the credential's configuration.
    file["service_account_impersonation"] = json!({"token_lifetime_seconds": 7200});
    let source = external(&emulator, &file, options_with(no_env()), &clock);
    let refused = rejection(source.fetch(&request(&[]), None).await);
    assert_eq!(
        (refused.rejection, refused.field.as_deref()),
        (Rejection::CredentialRejected, None),
        "{refused:?}"
    );
    assert!(
        refused.message.contains("token_lifetime_seconds"),
        "{}",
        refused.message
    );

    // An account the pool may not impersonate: IAM's permission refusal.
    let writer = impersonating(
        &emulator,
        file_for(&emulator, DEV_OIDC, JWT_TYPE, json!({"file": path})),
        WRITER,
    );
    let refused = rejection(
        external(&emulator, &writer, options_with(no_env()), &clock)
            .fetch(&request(&[]), None)
            .await,
    );
    assert_eq!(
        refused.rejection,
        Rejection::PermissionDenied,
        "{refused:?}"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn id_tokens_come_only_through_impersonation() {
    let emulator = emulator().await;
    let clock = clock();
    let dir = TempDir::new();
    let path = dir.write("token", &subject_token(&emulator, DEV_OIDC, "alice"));
    let plain = file_for(&emulator, DEV_OIDC, JWT_TYPE, json!({"file": path}));
    let audience = IdTokenRequest {
        audience: "https://svc.example.com".into(),
        include_email: true,
    };

    let source = external(
        &emulator,
        &impersonating(&emulator, plain.clone(), READER),
        options_with(no_env()),
        &clock,
    );
    let token = source
        .fetch_id_token(&audience, None)
        .await
        .expect("ID token");
    assert_eq!(&*token.principal, READER);
    let minted = claims(token.secret.expose());
    assert_eq!(minted["aud"], "https://svc.example.com");
    assert_eq!(minted["email"], READER);
    assert_eq!(minted["iss"], GOOGLE_ISSUER);
    assert_id_token_expiry(&token);
    assert_eq!(
        last(&emulator, Endpoint::StsToken).fields["scope"],
        IAM_SCOPE
    );
    let iam = last(&emulator, Endpoint::IamGenerateIdToken);
    assert_eq!(
        iam.path,
        format!("/v1/projects/-/serviceAccounts/{READER}:generateIdToken")
    );
    assert_eq!(iam.fields["audience"], "https://svc.example.com");
    assert_eq!(iam.fields["includeEmail"], true);
    let without_email = IdTokenRequest {
        include_email: false,
        ..audience.clone()
    };
    let token = source
        .fetch_id_token(&without_email, None)
        .await
        .expect("ID token");
    assert!(claims(token.secret.expose()).get("email").is_none());

    let source = external(&emulator, &plain, options_with(no_env()), &clock);
    assert!(!source.capabilities().id_tokens);
    let before = emulator.count(Endpoint::StsToken);
    let error = source
        .fetch_id_token(&audience, None)
        .await
        .expect_err("no impersonation");
    assert!(
        matches!(
            &error,
            SourceError::Unsupported {
                flow: "id_token",
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(emulator.count(Endpoint::StsToken), before);
    emulator.shutdown().await;
}

/// `dev-oidc`, and `ci-oidc` whose attribute condition admits only `ci-` subjects; the pool
/// may impersonate reader@.
const CONDITIONAL_WORLD: &str = r#"
[[projects]]
id = "dev-project"
number = "123456789012"

[[service_accounts]]
email = "broker@dev-project.iam.gserviceaccount.com"

[[service_accounts]]
email = "reader@dev-project.iam.gserviceaccount.com"
key = false
token_creators = ["principalSet://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/ci-pool/*"]

[[workload_identity_pools]]
project_number = "123456789012"
pool = "ci-pool"

[[workload_identity_pools.providers]]
id = "ci-oidc"
issuer = "https://ci.example.com"
generate_issuer_key = true
attribute_condition = "assertion.sub.startsWith('ci-')"
"#;
const CI_POOL_SET: &str = "principalSet://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/ci-pool/*";

#[tokio::test]
async fn exchange_passes_a_callers_subject_token_through() {
    let emulator = emulator_with(CONDITIONAL_WORLD).await;
    let clock = clock();
    let provider = emulator
        .federation()
        .oidc_provider("ci-oidc")
        .expect("ci-oidc")
        .clone();
    // The credential's own source is never read by exchange(): its file does not exist.
    let credential = file_for(
        &emulator,
        "ci-oidc",
        JWT_TYPE,
        json!({"file": "/nonexistent/subject-token"}),
    );
    let source = external(&emulator, &credential, options_with(no_env()), &clock);
    let scopes = ScopeSet::parse([STORAGE_RO]).expect("scopes");
    let caller = Secret::new(subject_token(&emulator, "ci-oidc", "ci-build-42"));

    let started = SystemTime::now();
    let token = source
        .exchange(&caller, JWT_TYPE, &scopes, None, None, None)
        .await
        .expect("exchanged");
    assert_eq!(&*token.principal, CI_POOL_SET);
    assert_eq!(token.scopes.joined(), STORAGE_RO);
    assert_about(lifetime_left(&token, started), Duration::from_secs(3600));
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["principal"], provider.principal("ci-build-42"));
    assert_eq!(info["scope"], STORAGE_RO);
    let sent = last(&emulator, Endpoint::StsToken);
    assert_eq!(
        sent.fields["subject_token"]["sha256"],
        sha256_hex(caller.expose().as_bytes())
    );
    assert_eq!(sent.fields["audience"], provider.audience);
    // No scopes: cloud-platform.
    let token = source
        .exchange(&caller, JWT_TYPE, &ScopeSet::empty(), None, None, None)
        .await
        .expect("exchanged");
    assert_eq!(token.scopes.joined(), CLOUD_PLATFORM);

    // With the credential's impersonation.
    let impersonated = external(
        &emulator,
        &impersonating(&emulator, credential.clone(), READER),
        options_with(no_env()),
        &clock,
    );
    let token = impersonated
        .exchange(&caller, JWT_TYPE, &scopes, None, None, None)
        .await
        .expect("impersonated");
    assert_eq!(&*token.principal, READER);
    assert_eq!(tokeninfo(&emulator, &token.secret).await["email"], READER);
    assert_eq!(
        last(&emulator, Endpoint::StsToken).fields["scope"],
        IAM_SCOPE
    );

    // An expired subject token is the caller's: InvalidArgument, field subject_token.
    let now = unix(SystemTime::now());
    let expired = emulator
        .mint_oidc_token(
            "ci-oidc",
            "ci-build-42",
            Duration::from_secs(60),
            json!({"iat": now - 7200, "exp": now - 3600}),
        )
        .expect("expired token");
    let refused = rejection(
        source
            .exchange(&Secret::new(expired), JWT_TYPE, &scopes, None, None, None)
            .await,
    );
    assert_eq!(
        (
            refused.rejection,
            refused.field.as_deref(),
            refused.error.as_str()
        ),
        (
            Rejection::InvalidArgument,
            Some("subject_token"),
            "invalid_grant"
        )
    );
    assert!(refused.message.contains("expired"), "{}", refused.message);
    // Not a JWT of the provider's issuer at all.
    let refused = rejection(
        source
            .exchange(
                &Secret::new("not-a-jwt"),
                JWT_TYPE,
                &scopes,
                None,
                None,
                None,
            )
            .await,
    );
    assert_eq!(refused.field.as_deref(), Some("subject_token"));

    // The provider's attribute condition refuses the subject: PermissionDenied.
    let mallory = Secret::new(subject_token(&emulator, "ci-oidc", "mallory"));
    let refused = rejection(
        source
            .exchange(&mallory, JWT_TYPE, &scopes, None, None, None)
            .await,
    );
    assert_eq!(
        (
            refused.rejection,
            refused.field.as_deref(),
            refused.error.as_str()
        ),
        (Rejection::PermissionDenied, None, "unauthorized_client")
    );
    assert!(
        refused.message.contains("attribute condition"),
        "{}",
        refused.message
    );

    // A provider that does not exist: InvalidArgument, field audience.
    let mut unknown = credential.clone();
    unknown["audience"] = json!(
        provider
            .audience
            .replace("/providers/ci-oidc", "/providers/nope")
    );
    let unknown = external(&emulator, &unknown, options_with(no_env()), &clock);
    let refused = rejection(
        unknown
            .exchange(&caller, JWT_TYPE, &scopes, None, None, None)
            .await,
    );
    assert_eq!(
        (
            refused.rejection,
            refused.field.as_deref(),
            refused.error.as_str()
        ),
        (
            Rejection::InvalidArgument,
            Some("audience"),
            "invalid_target"
        )
    );
    // The same refusal of the credential's own exchange is the credential's fault.
    let dir = TempDir::new();
    let mut own_file = credential.clone();
    own_file["audience"] = json!(unknown.audience());
    own_file["credential_source"] = json!({"file": dir.write("token", caller.expose())});
    let refused = rejection(
        external(&emulator, &own_file, options_with(no_env()), &clock)
            .fetch(&request(&[]), None)
            .await,
    );
    assert_eq!(
        (refused.rejection, refused.field.as_deref()),
        (Rejection::CredentialRejected, None)
    );

    // A user project for a workload pool is refused before anything is sent.
    let before = emulator.count(Endpoint::StsToken);
    let error = source
        .exchange(&caller, JWT_TYPE, &scopes, Some("dev-project"), None, None)
        .await
        .expect_err("user project");
    assert!(
        matches!(&error, SourceError::InvalidRequest { field, .. } if field == "options.user_project"),
        "{error:?}"
    );
    assert_eq!(emulator.count(Endpoint::StsToken), before);
    emulator.shutdown().await;
}

#[tokio::test]
async fn tokens_are_downscoped_with_an_access_boundary() {
    let emulator = emulator().await;
    let clock = clock();
    let dir = TempDir::new();
    let path = dir.write("token", &subject_token(&emulator, DEV_OIDC, "alice"));
    let file = file_for(&emulator, DEV_OIDC, JWT_TYPE, json!({"file": path}));
    let oidc = emulator
        .federation()
        .oidc_provider(DEV_OIDC)
        .expect("dev-oidc")
        .clone();
    let boundary = boundary();
    let expected_boundary = boundary.sts_options()["accessBoundary"].clone();

    let source = external(&emulator, &file, options_with(no_env()), &clock);
    let mut bounded = request(&[CLOUD_PLATFORM]);
    bounded.boundary = Some(boundary.clone());
    let started = SystemTime::now();
    let token = source.fetch(&bounded, None).await.expect("downscoped");
    assert_eq!(&*token.principal, WORKLOAD_POOL_SET);
    assert_about(lifetime_left(&token, started), Duration::from_secs(3600));
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["grant"], "sts-downscope");
    assert_eq!(info["principal"], oidc.principal("alice"));
    assert_eq!(info["access_boundary"], expected_boundary);
    let requests = emulator.requests(Endpoint::StsToken);
    let [.., exchange, downscope] = requests.as_slice() else {
        panic!("an exchange, then a downscoping");
    };
    assert_eq!(exchange.fields["subject_token_type"], JWT_TYPE);
    assert_eq!(downscope.fields["subject_token_type"], ACCESS_TOKEN_TYPE);
    assert!(downscope.fields.get("audience").is_none());
    assert_eq!(
        downscope.fields["options"],
        json!({"accessBoundary": expected_boundary})
    );

    // Impersonated tokens are downscoped after the impersonation.
    let impersonated = external(
        &emulator,
        &impersonating(&emulator, file.clone(), READER),
        options_with(no_env()),
        &clock,
    );
    let token = impersonated
        .fetch(&bounded, None)
        .await
        .expect("downscoped");
    assert_eq!(&*token.principal, READER);
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(
        (info["grant"].clone(), info["email"].clone()),
        (json!("sts-downscope"), json!(READER))
    );
    assert_eq!(info["access_boundary"], expected_boundary);

    // And exchange() downscopes the caller's federated token.
    let caller = Secret::new(subject_token(&emulator, DEV_OIDC, "bob"));
    let token = source
        .exchange(
            &caller,
            JWT_TYPE,
            &ScopeSet::parse([CLOUD_PLATFORM]).expect("scopes"),
            None,
            Some(&boundary),
            None,
        )
        .await
        .expect("downscoped");
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["grant"], "sts-downscope");
    assert_eq!(info["principal"], oidc.principal("bob"));
    assert_eq!(info["access_boundary"], expected_boundary);
    emulator.shutdown().await;
}
