//! User credentials: the refresh-token grant from the file `gcloud auth application-default
//! login` writes.

use std::sync::Arc;
use std::time::Duration;

use broker_backends::{
    AuthorizedUserCredentials, AuthorizedUserSource, BackendError, GoogleEndpoints,
};
use broker_core::{Clock, IdTokenRequest, Rejection, ScopeSet, SourceError, TokenSource};
use gcp_emulator::{Endpoint, RunningEmulator};
use serde_json::{Value, json};

use crate::support::*;

/// The default user's credential file, as the emulator hands it out (with `account`).
fn user_file(emulator: &RunningEmulator) -> Value {
    emulator
        .authorized_user_file(DEFAULT_USER)
        .expect("the default world has an authorized user")
}

fn credentials(file: &Value) -> AuthorizedUserCredentials {
    AuthorizedUserCredentials::from_json(&file.to_string()).expect("credentials")
}

async fn user_source(emulator: &RunningEmulator, file: &Value) -> AuthorizedUserSource {
    AuthorizedUserSource::discover(
        credentials(file),
        GoogleEndpoints::emulator(emulator.url()),
        http(),
    )
    .await
    .expect("source")
}

#[tokio::test]
async fn the_refresh_grant_gives_a_token_for_the_user() {
    let emulator = emulator().await;
    let file = user_file(&emulator);
    let clock = clock();
    let source = user_source(&emulator, &file)
        .await
        .with_clock(Arc::new(clock.clone()));
    // The file names the account: nothing was discovered.
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 0);
    assert_eq!(source.principal(), DEFAULT_USER);
    assert_eq!(source.kind(), "authorized_user");
    assert_eq!(source.quota_project_id(), Some("dev-project"));
    let capabilities = source.capabilities();
    assert!(capabilities.downscoping);
    assert!(
        !capabilities.id_tokens
            && !capabilities.domain_wide_delegation
            && !capabilities.chooses_lifetime
    );

    let token = source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token");
    assert_eq!(&*token.principal, DEFAULT_USER);
    assert_eq!(token.expires_at, clock.now() + EXPIRES_IN);
    assert_eq!(
        token.scopes,
        ScopeSet::parse([CLOUD_PLATFORM]).expect("scope")
    );
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["grant"], "refresh-token");
    assert_eq!(info["email"], DEFAULT_USER);
    assert_eq!(info["principal"], format!("user:{DEFAULT_USER}"));
    assert_eq!(info["scope"], CLOUD_PLATFORM);
    assert_expiry_matches(&info, &token);
    emulator.shutdown().await;
}

#[tokio::test]
async fn without_an_account_the_email_is_discovered_once_through_openid() {
    let emulator = emulator().await;
    let mut file = user_file(&emulator);
    file.as_object_mut().expect("object").remove("account");
    let source = user_source(&emulator, &file).await;
    assert_eq!(source.principal(), DEFAULT_USER);
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 1);
    source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token");
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 2);

    // A revoked refresh token fails the discovery, for good.
    file["refresh_token"] = json!("1//revoked");
    let error = AuthorizedUserSource::discover(
        credentials(&file),
        GoogleEndpoints::emulator(emulator.url()),
        http(),
    )
    .await
    .expect_err("revoked");
    let BackendError::Discovery { what, source } = &error else {
        panic!("expected Discovery, got {error:?}");
    };
    assert!(what.contains("authorized user"), "{what}");
    assert!(
        matches!(source, SourceError::Rejected(r) if r.rejection == Rejection::CredentialRejected
            && r.error == "invalid_grant"),
        "{source:?}"
    );
    assert!(!error.is_transient());
    emulator.shutdown().await;
}

#[tokio::test]
async fn googles_refusals_of_the_refresh_grant_are_classified() {
    let emulator = emulator().await;
    let file = user_file(&emulator);

    // A revoked refresh token: the broker's own credential.
    let mut revoked = file.clone();
    revoked["refresh_token"] = json!("1//revoked");
    let source = user_source(&emulator, &revoked).await;
    let refused = rejection(source.fetch(&request(&[CLOUD_PLATFORM]), None).await);
    assert_eq!(refused.rejection, Rejection::CredentialRejected);
    assert_eq!(
        (refused.error.as_str(), refused.status),
        ("invalid_grant", 400)
    );
    assert!(
        refused
            .message
            .contains("Token has been expired or revoked."),
        "{}",
        refused.message
    );
    assert_eq!(refused.upstream, host(&emulator));

    // An unknown OAuth client.
    let mut unknown_client = file.clone();
    unknown_client["client_id"] = json!("unknown.apps.googleusercontent.com");
    let source = user_source(&emulator, &unknown_client).await;
    let refused = rejection(source.fetch(&request(&[CLOUD_PLATFORM]), None).await);
    assert_eq!(refused.rejection, Rejection::CredentialRejected);
    assert_eq!(
        (refused.error.as_str(), refused.status),
        ("invalid_client", 401)
    );

    // A scope the user did not consent to: the caller's argument.
    let source = user_source(&emulator, &file).await;
    let before = emulator.count(Endpoint::OAuth2Token);
    let refused = rejection(source.fetch(&request(&[STORAGE_RO]), None).await);
    assert_eq!(refused.rejection, Rejection::InvalidArgument);
    assert_eq!(refused.field.as_deref(), Some("scopes"));
    assert_eq!(refused.error, "invalid_scope");
    assert_eq!(
        emulator.count(Endpoint::OAuth2Token) - before,
        1,
        "no retries"
    );

    // Injected: reauthentication required, then Google unavailable for a moment.
    inject(
        &emulator,
        json!({"endpoint": "oauth2.token", "status": 400, "error": "invalid_grant",
               "error_description": "reauth related error (invalid_rapt)", "times": 1}),
    );
    let refused = rejection(source.fetch(&request(&[CLOUD_PLATFORM]), None).await);
    assert_eq!(refused.rejection, Rejection::CredentialRejected);
    assert!(
        refused.message.contains("invalid_rapt"),
        "{}",
        refused.message
    );
    inject(
        &emulator,
        json!({"endpoint": "oauth2.token", "status": 403, "error": "access_denied", "times": 1}),
    );
    let refused = rejection(source.fetch(&request(&[CLOUD_PLATFORM]), None).await);
    assert_eq!(refused.rejection, Rejection::PermissionDenied);
    inject(
        &emulator,
        json!({"endpoint": "oauth2.token", "status": 503, "times": 1}),
    );
    let before = emulator.count(Endpoint::OAuth2Token);
    source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token after a retry");
    assert_eq!(emulator.count(Endpoint::OAuth2Token) - before, 2);
    emulator.shutdown().await;
}

#[tokio::test]
async fn what_a_user_credential_cannot_do_is_refused_without_a_call() {
    let emulator = emulator().await;
    let source = user_source(&emulator, &user_file(&emulator)).await;
    let mut dwd = request(&[CLOUD_PLATFORM]);
    dwd.subject = Some("alice@example.com".into());
    let error = source.fetch(&dwd, None).await.expect_err("unsupported");
    assert!(
        matches!(
            error,
            SourceError::Unsupported {
                flow: "domain_wide_delegation",
                ..
            }
        ),
        "{error:?}"
    );
    let mut long = request(&[CLOUD_PLATFORM]);
    long.lifetime = Some(Duration::from_secs(4000));
    let error = source.fetch(&long, None).await.expect_err("unsupported");
    assert!(
        matches!(
            error,
            SourceError::Unsupported {
                flow: "extended_lifetime",
                ..
            }
        ),
        "{error:?}"
    );
    let error = source
        .fetch_id_token(
            &IdTokenRequest {
                audience: "https://a.example".into(),
                include_email: true,
            },
            None,
        )
        .await
        .expect_err("unsupported");
    assert!(
        matches!(
            error,
            SourceError::Unsupported {
                flow: "id_token",
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 0);
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_boundary_downscopes_the_users_token() {
    let emulator = emulator().await;
    let clock = clock();
    let source = user_source(&emulator, &user_file(&emulator))
        .await
        .with_clock(Arc::new(clock.clone()));
    let mut bounded = request(&[CLOUD_PLATFORM]);
    bounded.boundary = Some(boundary());
    let token = source.fetch(&bounded, None).await.expect("downscoped");
    assert_eq!(token.expires_at, clock.now() + EXPIRES_IN);
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["grant"], "sts-downscope");
    assert_eq!(info["email"], DEFAULT_USER);
    emulator.shutdown().await;
}
