//! No flow lets a secret out: not in a log line at any level, not in an error's `Display` or
//! `Debug`, not in a source's `Debug`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use broker_backends::{
    AWS_ACCESS_KEY_ID, AWS_REGION, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
    AuthorizedUserCredentials, AuthorizedUserSource, CredentialFile, Env, ExternalAccountConfig,
    ExternalAccountOptions, GoogleEndpoints, IamCredentials, ImpersonatedSource, MetadataSource,
};
use broker_core::{IdTokenRequest, ManualClock, ScopeSet, Secret, SourceError, TokenSource};
use gcp_emulator::{Emulator, RunningEmulator};
use serde_json::{Value, json};

use crate::external_account::{
    AWS4_TYPE, DEV_OIDC, DEV_WORKFORCE_OIDC, ID_TOKEN_TYPE, JWT_TYPE, MTLS_TYPE,
    executable_response, external, file_for, impersonating, options_with, script, subject_token,
};
use crate::impersonated::WORLD;
use crate::support::*;

const DELEGATOR: &str = "delegator@dev-project.iam.gserviceaccount.com";

#[tokio::test]
async fn no_flow_logs_a_secret() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("broker_backends=trace")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let emulator = emulator_with(WORLD).await;
    let endpoints = GoogleEndpoints::emulator(emulator.url());
    // A transient failure on every endpoint, so that retries log too.
    for endpoint in [
        "oauth2.token",
        "metadata",
        "iam.generateAccessToken",
        "iam.generateIdToken",
        "iam.signJwt",
        "iam.signBlob",
        "sts.token",
    ] {
        inject(
            &emulator,
            json!({"endpoint": endpoint, "status": 503, "times": 1}),
        );
    }
    let mut secrets: Vec<String> = Vec::new();
    let audience = IdTokenRequest {
        audience: "https://svc.example".into(),
        include_email: true,
    };
    let mut bounded = request(&[CLOUD_PLATFORM]);
    bounded.boundary = Some(boundary());
    let mut dwd = request(&[CLOUD_PLATFORM]);
    dwd.subject = Some("alice@example.com".into());

    let key = key_file(&emulator, BROKER);
    let pem_line = key["private_key"]
        .as_str()
        .and_then(|pem| pem.lines().nth(5))
        .expect("a PEM line")
        .to_owned();
    let key_source = Arc::new(source(&emulator, http(), &clock()));
    secrets.push(
        key_source
            .fetch_id_token(&audience, None)
            .await
            .expect("id")
            .secret
            .expose()
            .to_owned(),
    );
    secrets.push(
        key_source
            .fetch(&bounded, None)
            .await
            .expect("token")
            .secret
            .expose()
            .to_owned(),
    );

    let metadata = MetadataSource::discover("default", endpoints.clone(), http(), &no_env())
        .await
        .expect("metadata");
    secrets.push(
        metadata
            .fetch(&bounded, None)
            .await
            .expect("token")
            .secret
            .expose()
            .to_owned(),
    );
    secrets.push(
        metadata
            .fetch_id_token(&audience, None)
            .await
            .expect("id")
            .secret
            .expose()
            .to_owned(),
    );

    let user_file = emulator.authorized_user_file(DEFAULT_USER).expect("user");
    for field in ["client_secret", "refresh_token"] {
        secrets.push(user_file[field].as_str().expect(field).to_owned());
    }
    let mut without_account = user_file.clone();
    without_account
        .as_object_mut()
        .expect("object")
        .remove("account");
    let user = AuthorizedUserSource::discover(
        AuthorizedUserCredentials::from_json(&without_account.to_string()).expect("user"),
        endpoints.clone(),
        http(),
    )
    .await
    .expect("user source");
    secrets.push(
        user.fetch(&bounded, None)
            .await
            .expect("token")
            .secret
            .expose()
            .to_owned(),
    );

    let reader =
        ImpersonatedSource::new(key_source.clone(), READER, &[], endpoints.clone(), http())
            .expect("impersonated");
    secrets.push(
        reader
            .fetch(&bounded, None)
            .await
            .expect("token")
            .secret
            .expose()
            .to_owned(),
    );
    secrets.push(
        reader
            .fetch_id_token(&audience, None)
            .await
            .expect("id")
            .secret
            .expose()
            .to_owned(),
    );
    let delegator = ImpersonatedSource::new(
        key_source.clone(),
        DELEGATOR,
        &[],
        endpoints.clone(),
        http(),
    )
    .expect("impersonated");
    secrets.push(
        delegator
            .fetch(&dwd, None)
            .await
            .expect("token")
            .secret
            .expose()
            .to_owned(),
    );

    let iam = IamCredentials::new(&endpoints, http()).expect("iam");
    let base = key_source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("base");
    secrets.push(base.secret.expose().to_owned());
    let signed = iam
        .sign_jwt(&base.secret, READER, &[], r#"{"sub":"x"}"#, None)
        .await
        .expect("signed");
    secrets.push(signed.signed_jwt.expose().to_owned());
    let blob = iam
        .sign_blob(&base.secret, READER, &[], b"blob", None)
        .await
        .expect("signed");
    secrets.push(STANDARD.encode(&blob.signature));
    // And a refusal, whose error is logged.
    let _ = iam
        .generate_access_token(
            &Secret::new("ya29.forged-bearer"),
            READER,
            &[],
            &base.scopes,
            None,
            None,
        )
        .await
        .expect_err("refused");
    secrets.push("ya29.forged-bearer".to_owned());
    emulator.shutdown().await;

    let logs = String::from_utf8(capture.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
        .expect("utf-8");
    assert!(logs.contains("retrying"), "{logs}");
    assert!(logs.contains("sha256:"), "{logs}");
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret in the logs:\n{logs}"
        );
    }
    assert!(!logs.contains(&pem_line), "{logs}");
    assert!(!logs.contains("ya29."), "{logs}");
    // No JWT (ID tokens, assertions, signed JWTs all start with base64url of '{"').
    assert!(!logs.contains("eyJ"), "{logs}");
}

#[tokio::test]
async fn no_error_or_debug_output_shows_a_secret() {
    let emulator = emulator_with(WORLD).await;
    let endpoints = GoogleEndpoints::emulator(emulator.url());
    let user_file = emulator.authorized_user_file(DEFAULT_USER).expect("user");
    let client_secret = user_file["client_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let refresh_token = user_file["refresh_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let key = key_file(&emulator, BROKER);
    let pem_line = key["private_key"]
        .as_str()
        .and_then(|pem| pem.lines().nth(5))
        .expect("a PEM line")
        .to_owned();
    let mut shown: Vec<String> = Vec::new();

    let user = AuthorizedUserSource::discover(
        AuthorizedUserCredentials::from_json(&user_file.to_string()).expect("user"),
        endpoints.clone(),
        http(),
    )
    .await
    .expect("source");
    shown.push(format!("{user:?} {user:#?}"));
    let impersonated_file = json!({
        "type": "impersonated_service_account",
        "service_account_impersonation_url": format!(
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{READER}:generateAccessToken"),
        "source_credentials": user_file,
    })
    .to_string();
    let file = CredentialFile::parse(&impersonated_file, "f").expect("file");
    shown.push(format!("{file:?}"));
    let source = file
        .into_source(&endpoints, &http(), None, &Env::process())
        .await
        .expect("source");
    shown.push(format!("{source:?}"));
    let key_file = CredentialFile::parse(&key.to_string(), "k").expect("key");
    shown.push(format!("{key_file:?}"));

    // Errors: a broken file, a refused refresh token, a refused bearer token.
    let mut broken = user_file.clone();
    broken["type"] = json!(5);
    let error = CredentialFile::parse(&broken.to_string(), "f").expect_err("broken");
    shown.push(format!("{error} {error:?}"));
    let mut revoked = user_file.clone();
    revoked.as_object_mut().expect("object").remove("account");
    revoked["client_secret"] = json!("another-very-secret-secret");
    let error = AuthorizedUserSource::discover(
        AuthorizedUserCredentials::from_json(&revoked.to_string()).expect("user"),
        endpoints.clone(),
        http(),
    )
    .await
    .expect_err("refused");
    shown.push(format!("{error} {error:?}"));
    let iam = IamCredentials::new(&endpoints, http()).expect("iam");
    shown.push(format!("{iam:?}"));
    let error: SourceError = iam
        .sign_blob(&Secret::new("ya29.forged-bearer"), READER, &[], b"x", None)
        .await
        .expect_err("refused");
    shown.push(format!("{error} {error:?}"));
    emulator.shutdown().await;

    for text in &shown {
        for secret in [
            client_secret.as_str(),
            refresh_token.as_str(),
            "another-very-secret-secret",
            "ya29.forged-bearer",
            &pem_line,
            "PRIVATE KEY",
        ] {
            assert!(!text.contains(secret), "{secret:?} in {text}");
        }
    }
}

/// What the federation flows were given and minted that must never be shown.
struct Federated {
    /// Subject tokens, AWS secrets, client secrets, header values, tokens minted.
    secrets: Vec<String>,
    /// Debug output and error Display/Debug of sources and failures.
    shown: Vec<String>,
}

impl Federated {
    fn push(&mut self, token: &broker_core::Token) {
        self.secrets.push(token.secret.expose().to_owned());
    }

    fn show(&mut self, error: &SourceError) {
        self.shown.push(format!("{error} {error:?}"));
    }
}

/// Every `external_account` flow, successful and failing: a file (impersonating; access
/// token, ID token, downscoped), a URL with a secret header, an executable, AWS from the
/// environment and from IMDSv2, a certificate over mutual TLS, a workforce OAuth client,
/// `exchange()` of a caller's token, and refusals of an expired subject token, a wrong AWS
/// secret, a wrong client secret and a failing executable.
async fn federate_every_way(emulator: &RunningEmulator, dir: &TempDir) -> Federated {
    let clock = ManualClock::new(SystemTime::now());
    let none = || options_with(no_env());
    let federation = emulator.federation();
    let mut seen = Federated {
        secrets: Vec::new(),
        shown: Vec::new(),
    };
    let audience = IdTokenRequest {
        audience: "https://svc.example".into(),
        include_email: true,
    };
    let mut bounded = request(&[CLOUD_PLATFORM]);
    bounded.boundary = Some(boundary());

    let alice = subject_token(emulator, DEV_OIDC, "alice");
    seen.secrets.push(alice.clone());
    let path = dir.write("subject-token", &alice);
    let file = file_for(emulator, DEV_OIDC, JWT_TYPE, json!({"file": path}));
    let plain = external(emulator, &file, none(), &clock);
    let impersonated = external(
        emulator,
        &impersonating(emulator, file, READER),
        none(),
        &clock,
    );
    for source in [&plain, &impersonated] {
        seen.push(
            &source
                .fetch(&request(&[STORAGE_RO]), None)
                .await
                .expect("token"),
        );
        seen.push(&source.fetch(&bounded, None).await.expect("downscoped"));
        seen.shown.push(format!("{source:?}"));
    }
    seen.push(
        &impersonated
            .fetch_id_token(&audience, None)
            .await
            .expect("ID token"),
    );

    let bob = subject_token(emulator, DEV_OIDC, "bob");
    let server = TokenServer::start(200, &json!({"access_token": bob}).to_string()).await;
    seen.secrets
        .extend([bob, "agent-key-value-secret".to_owned()]);
    let url = file_for(
        emulator,
        DEV_OIDC,
        JWT_TYPE,
        json!({
            "url": format!("{}/token", server.url),
            "headers": {"X-Agent-Key": "agent-key-value-secret"},
            "format": {"type": "json", "subject_token_field_name": "access_token"},
        }),
    );
    let source = external(emulator, &url, none(), &clock);
    seen.push(&source.fetch(&request(&[]), None).await.expect("url"));
    seen.shown.push(format!("{source:?}"));
    server.answer(404, r#"{"error": "agent-key-value-secret"}"#);
    seen.show(&source.fetch(&request(&[]), None).await.expect_err("404"));

    let carol = subject_token(emulator, DEV_OIDC, "carol");
    seen.secrets.push(carol.clone());
    let expires = SystemTime::now() + Duration::from_secs(3600);
    let printing = |response: &Value| format!("cat <<'R'\n{response}\nR");
    let allowed = ExternalAccountOptions {
        allow_executables: true,
        ..options_with(Env::from_vars([("PATH", "/usr/bin:/bin")]))
    };
    for (name, body) in [
        (
            "ok.sh",
            printing(&executable_response(&carol, Some(expires))),
        ),
        (
            "failing.sh",
            printing(&json!({"version": 1, "success": false, "code": "403", "message": "denied"})),
        ),
        // A token in output that is not a response: never quoted.
        ("garbage.sh", format!("echo 'token={carol}'")),
    ] {
        let command = format!("{} --api-key=exec-arg-secret", script(dir, name, &body));
        let file = file_for(
            emulator,
            DEV_OIDC,
            JWT_TYPE,
            json!({"executable": {"command": command}}),
        );
        let source = external(emulator, &file, allowed.clone(), &clock);
        seen.shown.push(format!("{source:?}"));
        match source.fetch(&request(&[]), None).await {
            Ok(token) => seen.push(&token),
            Err(error) => seen.show(&error),
        }
    }
    seen.secrets.push("exec-arg-secret".to_owned());

    let aws = federation.aws_provider().expect("dev-aws").clone();
    let secret = aws.secret_access_key.clone().expect("secret");
    let session = aws.session_token.clone().expect("session token");
    seen.secrets
        .extend([secret.expose().to_owned(), session.expose().to_owned()]);
    let env_source = json!({
        "environment_id": "aws1",
        "regional_cred_verification_url": aws.regional_cred_verification_url,
    });
    let aws_env = |secret: &str| {
        options_with(Env::from_vars([
            (AWS_REGION, aws.region.clone()),
            (
                AWS_ACCESS_KEY_ID,
                aws.access_key_id.clone().expect("key id"),
            ),
            (AWS_SECRET_ACCESS_KEY, secret.to_owned()),
            (AWS_SESSION_TOKEN, session.expose().to_owned()),
        ]))
    };
    let from_env = file_for(emulator, "dev-aws", AWS4_TYPE, env_source);
    let source = external(emulator, &from_env, aws_env(secret.expose()), &clock);
    seen.push(&source.fetch(&request(&[]), None).await.expect("aws env"));
    seen.shown.push(format!("{source:?}"));
    let wrong = external(
        emulator,
        &from_env,
        aws_env("wrongAwsSecretAccessKey/00000000000"),
        &clock,
    );
    seen.secrets
        .push("wrongAwsSecretAccessKey/00000000000".to_owned());
    seen.show(
        &wrong
            .fetch(&request(&[]), None)
            .await
            .expect_err("wrong secret"),
    );
    let imds = file_for(emulator, "dev-aws", AWS4_TYPE, aws.credential_source());
    let source = external(emulator, &imds, none(), &clock);
    seen.push(&source.fetch(&request(&[]), None).await.expect("aws imds"));

    let x509 = federation.x509_provider().expect("dev-x509").clone();
    let key_pem = x509.workload_key_pem.clone().expect("workload key");
    seen.secrets.extend(
        key_pem
            .expose()
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .map(str::to_owned),
    );
    let certificate = json!({
        "type": "external_account",
        "audience": x509.audience,
        "subject_token_type": MTLS_TYPE,
        "token_url": x509.token_url,
        "credential_source": x509.credential_source().expect("certificate config"),
    });
    let mtls = ExternalAccountOptions {
        mtls_root_certificates: Some(emulator.sts_mtls_ca_pem().as_bytes().to_vec()),
        ..none()
    };
    let source = external(emulator, &certificate, mtls, &clock);
    seen.push(
        &source
            .fetch(&request(&[]), None)
            .await
            .expect("certificate"),
    );
    seen.shown.push(format!("{source:?}"));

    let workforce = federation
        .oidc_provider(DEV_WORKFORCE_OIDC)
        .expect("workforce")
        .clone();
    let client_secret = workforce.client_secret.clone().expect("client secret");
    seen.secrets.push(client_secret.expose().to_owned());
    let erin = subject_token(emulator, DEV_WORKFORCE_OIDC, "erin");
    seen.secrets.push(erin.clone());
    let path = dir.write("workforce-token", &erin);
    let mut client = file_for(
        emulator,
        DEV_WORKFORCE_OIDC,
        ID_TOKEN_TYPE,
        json!({"file": path}),
    );
    client["client_id"] = json!(workforce.client_id.clone().expect("client id"));
    client["client_secret"] = json!(client_secret.expose());
    let source = external(emulator, &client, none(), &clock);
    seen.push(&source.fetch(&request(&[]), None).await.expect("workforce"));
    seen.shown.push(format!("{source:?} {:?}", source.config()));
    client["client_secret"] = json!("wrong-workforce-client-secret");
    seen.secrets
        .push("wrong-workforce-client-secret".to_owned());
    let wrong = external(emulator, &client, none(), &clock);
    seen.show(
        &wrong
            .fetch(&request(&[]), None)
            .await
            .expect_err("wrong client secret"),
    );
    let error = ExternalAccountConfig::parse(
        &json!({"type": "external_account", "client_secret": "wrong-workforce-client-secret", "audience": 5}).to_string(),
        "wif.json",
    )
    .expect_err("broken file");
    seen.shown.push(format!("{error} {error:?}"));

    let dave = subject_token(emulator, DEV_OIDC, "dave");
    seen.secrets.push(dave.clone());
    let scopes = ScopeSet::parse([CLOUD_PLATFORM]).expect("scopes");
    let exchanged = plain
        .exchange(
            &Secret::new(dave.clone()),
            JWT_TYPE,
            &scopes,
            None,
            Some(&boundary()),
            None,
        )
        .await
        .expect("exchanged");
    seen.push(&exchanged);
    let now = unix(SystemTime::now());
    let expired = emulator
        .mint_oidc_token(
            DEV_OIDC,
            "dave",
            Duration::from_secs(1),
            json!({"iat": now - 7200, "exp": now - 3600}),
        )
        .expect("expired");
    seen.secrets.push(expired.clone());
    seen.show(
        &plain
            .exchange(&Secret::new(expired), JWT_TYPE, &scopes, None, None, None)
            .await
            .expect_err("expired"),
    );
    seen
}

#[tokio::test]
async fn no_federation_flow_logs_or_shows_a_secret() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("broker_backends=trace")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = TempDir::new();
    let emulator = Emulator::builder()
        .data_dir(dir.0.join("emulator"))
        .start()
        .await
        .expect("emulator");
    // A transient failure on every endpoint, so that retries log too.
    for endpoint in [
        "sts.token",
        "sts.mtls.token",
        "aws.imds",
        "iam.generateAccessToken",
        "iam.generateIdToken",
    ] {
        inject(
            &emulator,
            json!({"endpoint": endpoint, "status": 503, "times": 1}),
        );
    }
    let seen = federate_every_way(&emulator, &dir).await;
    emulator.shutdown().await;

    let logs = String::from_utf8(capture.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
        .expect("utf-8");
    for expected in [
        "retrying",
        "sha256:",
        "federated token minted",
        "subject token read from a file",
        "subject token fetched from a URL",
        "subject token printed by the executable",
        "AWS GetCallerIdentity request signed",
        "workload certificate read",
        "token downscoped",
        "impersonated token minted",
    ] {
        assert!(logs.contains(expected), "{expected:?} not logged:\n{logs}");
    }
    // Everything was minted and refused as planned.
    assert!(seen.secrets.len() > 20, "{}", seen.secrets.len());
    assert_eq!(
        seen.shown.iter().filter(|s| s.contains("Rejected")).count(),
        3
    );
    for secret in &seen.secrets {
        assert!(!secret.is_empty());
        assert!(
            !logs.contains(secret.as_str()),
            "{secret:?} in the logs:\n{logs}"
        );
        for text in &seen.shown {
            assert!(!text.contains(secret.as_str()), "{secret:?} in {text}");
        }
    }
    assert!(!logs.contains("ya29."), "{logs}");
    assert!(!logs.contains("eyJ"), "{logs}");
    assert!(!logs.contains("PRIVATE KEY"), "{logs}");
    for text in &seen.shown {
        assert!(!text.contains("ya29.") && !text.contains("eyJ"), "{text}");
    }
}
