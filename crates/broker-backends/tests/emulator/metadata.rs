//! The metadata server: the broker's own identity, its access tokens and ID tokens, and
//! `GCE_METADATA_HOST`.

use std::sync::Arc;
use std::time::Duration;

use broker_backends::{
    BackendError, Env, GCE_METADATA_HOST, GOOGLE_METADATA_URL, GoogleEndpoints, HttpClient,
    MetadataSource,
};
use broker_core::{
    Clock, IdTokenRequest, ManualClock, Rejection, ScopeSet, SourceError, TokenSource,
    UpstreamStatus,
};
use gcp_emulator::{Endpoint, RunningEmulator};
use serde_json::{Value, json};

use crate::support::*;

/// The metadata server's `expires_in` for a fresh token.
const METADATA_EXPIRES_IN: Duration = Duration::from_secs(3599);

async fn metadata(
    emulator: &RunningEmulator,
    http: HttpClient,
    clock: &ManualClock,
) -> MetadataSource {
    MetadataSource::discover(
        "default",
        GoogleEndpoints::emulator(emulator.url()),
        http,
        &no_env(),
    )
    .await
    .expect("metadata source")
    .with_clock(Arc::new(clock.clone()))
}

#[tokio::test]
async fn discovery_reads_the_accounts_email_and_tokens_are_what_tokeninfo_says() {
    let emulator = emulator().await;
    let clock = clock();
    let source = metadata(&emulator, http(), &clock).await;
    assert_eq!(source.principal(), BROKER);
    assert_eq!(source.account(), "default");
    assert_eq!(source.kind(), "metadata");
    let capabilities = source.capabilities();
    assert!(capabilities.id_tokens && capabilities.downscoping);
    assert!(!capabilities.domain_wide_delegation && !capabilities.chooses_lifetime);
    assert_eq!(emulator.count(Endpoint::Metadata), 1);

    let token = source
        .fetch(&request(&[STORAGE_RO, CLOUD_PLATFORM]), None)
        .await
        .expect("token");
    assert_eq!(&*token.principal, BROKER);
    assert_eq!(token.expires_at, clock.now() + METADATA_EXPIRES_IN);
    assert_eq!(
        token.scopes,
        ScopeSet::parse([CLOUD_PLATFORM, STORAGE_RO]).expect("scopes")
    );
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["grant"], "metadata");
    assert_eq!(info["email"], BROKER);
    assert_eq!(info["scope"], format!("{CLOUD_PLATFORM} {STORAGE_RO}"));
    assert_expiry_matches(&info, &token);
    assert_eq!(emulator.count(Endpoint::Metadata), 2);

    // The account may also be named by its email.
    let by_email = MetadataSource::discover(
        BROKER,
        GoogleEndpoints::emulator(emulator.url()),
        http(),
        &no_env(),
    )
    .await
    .expect("by email");
    assert_eq!(by_email.principal(), BROKER);
    let token = by_email
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token");
    assert_eq!(
        tokeninfo(&emulator, &token.secret).await["grant"],
        "metadata"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn gce_metadata_host_replaces_googles_default_address() {
    let emulator = emulator().await;
    let mut endpoints = GoogleEndpoints::emulator(emulator.url());
    endpoints.metadata_url = GOOGLE_METADATA_URL.to_owned();
    let env = Env::from_vars([(GCE_METADATA_HOST, host(&emulator))]);
    let source = MetadataSource::discover("default", endpoints.clone(), http(), &env)
        .await
        .expect("metadata source through GCE_METADATA_HOST");
    assert_eq!(source.base_url().trim_end_matches('/'), emulator.url());
    assert_eq!(source.principal(), BROKER);
    let token = source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token");
    assert_eq!(
        tokeninfo(&emulator, &token.secret).await["grant"],
        "metadata"
    );

    // A configured metadata_url wins over the variable.
    let closed = format!("127.0.0.1:{}", closed_port());
    let configured = GoogleEndpoints::emulator(emulator.url());
    let env = Env::from_vars([(GCE_METADATA_HOST, closed.as_str())]);
    let source = MetadataSource::discover("default", configured, http(), &env)
        .await
        .expect("configured URL");
    assert_eq!(source.base_url().trim_end_matches('/'), emulator.url());

    // A variable that is not host[:port] is refused before any call.
    let env = Env::from_vars([(GCE_METADATA_HOST, "http://127.0.0.1/x")]);
    let error = MetadataSource::discover("default", endpoints, http(), &env)
        .await
        .expect_err("invalid");
    assert!(
        matches!(&error, BackendError::InvalidEnvironment { name, .. } if *name == GCE_METADATA_HOST),
        "{error:?}"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn an_unknown_account_is_not_found_at_discovery() {
    let emulator = emulator().await;
    let error = MetadataSource::discover(
        READER,
        GoogleEndpoints::emulator(emulator.url()),
        http(),
        &no_env(),
    )
    .await
    .expect_err("not an account of the instance");
    let BackendError::Discovery { what, source } = &error else {
        panic!("expected Discovery, got {error:?}");
    };
    assert!(what.contains(READER), "{what}");
    let SourceError::Rejected(refused) = source else {
        panic!("expected a rejection, got {source:?}");
    };
    assert_eq!(refused.rejection, Rejection::NotFound);
    assert_eq!(refused.status, 404);
    assert_eq!(refused.upstream, host(&emulator));
    assert!(!error.is_transient());
    assert!(!error.to_string().contains('<'), "{error}");

    // The metadata server down: transient, after the retries.
    let closed = format!("http://127.0.0.1:{}", closed_port());
    let error = MetadataSource::discover(
        "default",
        GoogleEndpoints::emulator(&closed),
        http_with(policy(2), Duration::from_secs(2)),
        &no_env(),
    )
    .await
    .expect_err("nothing there");
    assert!(error.is_transient(), "{error:?}");
    emulator.shutdown().await;
}

#[tokio::test]
async fn id_tokens_come_from_the_identity_endpoint_in_full_format() {
    let emulator = emulator().await;
    let source = metadata(&emulator, http(), &clock()).await;
    for include_email in [false, true] {
        let token = source
            .fetch_id_token(
                &IdTokenRequest {
                    audience: emulator.function_url(),
                    include_email,
                },
                None,
            )
            .await
            .expect("ID token");
        assert_eq!(&*token.principal, BROKER);
        assert_id_token_expiry(&token);
        let claims = claims(token.secret.expose());
        assert_eq!(claims["aud"], emulator.function_url());
        assert_eq!(claims["iss"], GOOGLE_ISSUER);
        // The metadata server always includes the email.
        assert_eq!(claims["email"], BROKER);
        // format=full: the instance's details.
        assert_eq!(
            claims["google"]["compute_engine"]["project_id"],
            "dev-project"
        );
    }

    // An empty audience is the caller's argument.
    let refused = rejection(
        source
            .fetch_id_token(
                &IdTokenRequest {
                    audience: String::new(),
                    include_email: true,
                },
                None,
            )
            .await,
    );
    assert_eq!(refused.rejection, Rejection::InvalidArgument);
    assert_eq!(refused.field.as_deref(), Some("audience"));
    assert_eq!(refused.status, 400);
    assert!(refused.message.contains("audience"), "{}", refused.message);
    emulator.shutdown().await;
}

#[tokio::test]
async fn what_the_metadata_server_cannot_do_is_refused_without_a_call() {
    let emulator = emulator().await;
    let source = metadata(&emulator, http(), &clock()).await;
    let calls = emulator.count(Endpoint::Metadata);

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
    long.lifetime = Some(Duration::from_secs(7200));
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
    assert_eq!(error.upstream(), None);
    assert_eq!(emulator.count(Endpoint::Metadata), calls);
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_boundary_downscopes_the_metadata_token_through_sts() {
    let emulator = emulator().await;
    let clock = clock();
    let source = metadata(&emulator, http(), &clock).await;
    let mut bounded = request(&[CLOUD_PLATFORM]);
    bounded.boundary = Some(boundary());
    let token = source.fetch(&bounded, None).await.expect("downscoped");
    assert_eq!(token.expires_at, clock.now() + METADATA_EXPIRES_IN);
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["grant"], "sts-downscope");
    assert_eq!(info["email"], BROKER);
    assert_eq!(
        info["access_boundary"],
        boundary().sts_options()["accessBoundary"]
    );
    assert_eq!(emulator.count(Endpoint::StsToken), 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn metadata_failures_are_retried_or_classified() {
    let emulator = emulator().await;
    let source = metadata(&emulator, http(), &clock()).await;
    let call = request(&[CLOUD_PLATFORM]);
    let fetch = || source.fetch(&call, None);

    inject(
        &emulator,
        json!({"endpoint": "metadata", "status": 503, "times": 2}),
    );
    let before = emulator.count(Endpoint::Metadata);
    fetch().await.expect("token after retries");
    assert_eq!(emulator.count(Endpoint::Metadata) - before, 3);

    for (status, expected) in [
        (403, Rejection::PermissionDenied),
        (404, Rejection::NotFound),
        (401, Rejection::CredentialRejected),
        (409, Rejection::Other),
    ] {
        inject(
            &emulator,
            json!({"endpoint": "metadata", "status": status, "times": 1}),
        );
        let before = emulator.count(Endpoint::Metadata);
        let refused = rejection(fetch().await);
        assert_eq!(refused.rejection, expected, "{status}");
        assert_eq!(
            (refused.status, refused.error.as_str()),
            (status, "unknown")
        );
        assert_eq!(refused.upstream, host(&emulator));
        assert!(
            refused.message.contains(&format!("HTTP {status}")),
            "{}",
            refused.message
        );
        assert_eq!(emulator.count(Endpoint::Metadata) - before, 1, "no retries");
    }

    inject(&emulator, json!({"endpoint": "metadata", "status": 500}));
    let error = fetch().await.expect_err("unavailable");
    assert!(
        matches!(&error, SourceError::Unavailable { status: UpstreamStatus::Http(500), upstream, .. }
            if *upstream == host(&emulator)),
        "{error:?}"
    );
    emulator.clear_faults();

    inject(
        &emulator,
        json!({"endpoint": "metadata", "malformed_body": true, "times": 1}),
    );
    let error = fetch().await.expect_err("malformed");
    assert!(matches!(&error, SourceError::Malformed { .. }), "{error:?}");
    emulator.shutdown().await;
}

#[tokio::test]
async fn the_metadata_flavor_header_is_sent() {
    // The emulator refuses (403) any request without it, like the real server: every call
    // above succeeding proves it is sent; a plain GET without it is refused.
    let emulator = emulator().await;
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!(
            "{}/computeMetadata/v1/instance/service-accounts/default/email",
            emulator.url()
        ))
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 403);
    let source = metadata(&emulator, http(), &clock()).await;
    let token = source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token");
    let info: Value = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["email"], BROKER);
    emulator.shutdown().await;
}
