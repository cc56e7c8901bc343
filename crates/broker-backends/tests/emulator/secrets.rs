//! No flow lets a secret out: not in a log line at any level, not in an error's `Display` or
//! `Debug`, not in a source's `Debug`.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use broker_backends::{
    AuthorizedUserCredentials, AuthorizedUserSource, CredentialFile, GoogleEndpoints,
    IamCredentials, ImpersonatedSource, MetadataSource,
};
use broker_core::{IdTokenRequest, Secret, SourceError, TokenSource};
use serde_json::json;

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
        .into_source(&endpoints, &http(), None)
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
