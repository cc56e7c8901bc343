//! The service-account key flow: the JWT-bearer grant for access tokens (plain, domain-wide
//! delegation, downscoped) and ID tokens, and everything the shared HTTP client does with
//! Google's failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_backends::{
    BackendError, GoogleEndpoints, HttpClient, HttpConfig, RetryPolicy, ServiceAccountKey,
    ServiceAccountSource, upstream_host,
};
use broker_core::{
    AccessBoundary, Clock, IdTokenRequest, Rejection, ScopeSet, SourceError, TokenRequest,
    TokenSource, UpstreamStatus,
};
use gcp_emulator::{Emulator, Endpoint, World};
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn happy_path_token_is_what_tokeninfo_says() {
    let emulator = emulator().await;
    let clock = clock();
    let source = source(&emulator, http(), &clock);
    assert_eq!(source.principal(), BROKER);

    let token = source
        .fetch(&request(&[STORAGE_RO, CLOUD_PLATFORM]), None)
        .await
        .expect("token");
    assert_eq!(&*token.principal, BROKER);
    assert_eq!(
        token.scopes,
        ScopeSet::parse([CLOUD_PLATFORM, STORAGE_RO]).expect("scopes")
    );
    assert_eq!(token.expires_at, clock.now() + EXPIRES_IN);
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 1);

    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["email"], BROKER);
    assert_eq!(info["principal"], format!("serviceAccount:{BROKER}"));
    assert_eq!(info["grant"], "jwt-bearer");
    assert_eq!(info["scope"], format!("{CLOUD_PLATFORM} {STORAGE_RO}"));
    assert_eq!(info["subject"], Value::Null);
    assert_eq!(info["access_boundary"], Value::Null);
    assert_expiry_matches(&info, &token);
    emulator.shutdown().await;
}

#[tokio::test]
async fn the_configured_token_url_wins_over_the_key_files_token_uri() {
    let emulator = emulator().await;
    let mut file = key_file(&emulator, BROKER);
    // Nothing listens there: were token_uri used, the fetch would fail.
    file["token_uri"] = json!("http://127.0.0.1:9/token");
    let source = source_with(&emulator, &file, http(), &clock());
    source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token from the configured endpoint");
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn domain_wide_delegation_gives_a_token_for_the_user() {
    let emulator = emulator().await;
    let source = source(&emulator, http(), &clock());
    let mut dwd = request(&[CLOUD_PLATFORM]);
    dwd.subject = Some("alice@example.com".into());
    let token = source.fetch(&dwd, None).await.expect("token");
    assert_eq!(&*token.principal, "alice@example.com");

    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["subject"], "alice@example.com");
    assert_eq!(info["principal"], "user:alice@example.com");
    assert_eq!(info["email"], "alice@example.com");
    assert_eq!(info["grant"], "jwt-bearer");
    emulator.shutdown().await;
}

#[tokio::test]
async fn domain_wide_delegation_without_the_grant_is_unauthorized_client() {
    let nodwd = "nodwd@dev-project.iam.gserviceaccount.com";
    let world: World = toml::from_str(&format!(
        r#"
        [[projects]]
        id = "dev-project"
        number = "123456789012"

        [[service_accounts]]
        email = "{nodwd}"

        [metadata]
        service_account = "{nodwd}"
        "#
    ))
    .expect("world");
    let emulator = Emulator::builder()
        .world(world)
        .start()
        .await
        .expect("emulator");
    let source = source_with(&emulator, &key_file(&emulator, nodwd), http(), &clock());
    let mut dwd = request(&[CLOUD_PLATFORM]);
    dwd.subject = Some("alice@example.com".into());

    let refused = rejection(source.fetch(&dwd, None).await);
    assert_eq!(refused.rejection, Rejection::PermissionDenied);
    assert_eq!(refused.error, "unauthorized_client");
    assert_eq!(refused.status, 401);
    assert_eq!(refused.upstream, host(&emulator));
    assert_eq!(refused.field, None);
    assert!(
        refused.message.contains("unauthorized_client"),
        "{}",
        refused.message
    );
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 1, "no retries");

    // Without a subject the same account is fine.
    source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token");
    emulator.shutdown().await;
}

#[tokio::test]
async fn two_internal_errors_then_success_takes_three_attempts() {
    let emulator = emulator().await;
    inject(
        &emulator,
        json!({"endpoint": "oauth2.token", "status": 500, "times": 2}),
    );
    let source = source(&emulator, http(), &clock());
    let token = source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token after retries");
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 3);
    assert_eq!(tokeninfo(&emulator, &token.secret).await["email"], BROKER);
    emulator.shutdown().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let emulator = emulator().await;
    inject(
        &emulator,
        json!({"endpoint": "oauth2.token", "status": 429, "retry_after_secs": 1, "times": 1}),
    );
    let source = source(&emulator, http(), &clock());
    let started = Instant::now();
    source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token after the wait");
    // The one wall-time assertion of the suite: the backoff alone would be at most 10 ms.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retried after {:?}",
        started.elapsed()
    );
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 2);
    emulator.shutdown().await;
}

#[tokio::test]
async fn persistent_unavailability_gives_up_after_max_attempts() {
    let emulator = emulator().await;
    inject(
        &emulator,
        json!({"endpoint": "oauth2.token", "status": 503}),
    );
    let source = source(
        &emulator,
        http_with(policy(3), Duration::from_secs(5)),
        &clock(),
    );
    let error = source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect_err("unavailable");
    match &error {
        SourceError::Unavailable {
            upstream,
            status,
            message,
            retry_after,
        } => {
            assert_eq!(*upstream, host(&emulator));
            assert_eq!(*status, UpstreamStatus::Http(503));
            assert!(message.contains("503"), "{message}");
            assert!(message.contains("temporarily_unavailable"), "{message}");
            assert!(message.contains("3 attempts"), "{message}");
            assert_eq!(*retry_after, None);
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(error.is_transient());
    assert_eq!(
        emulator.count(Endpoint::OAuth2Token),
        3,
        "exactly max_attempts"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn retry_after_beyond_the_deadline_stops_at_once_and_passes_it_on() {
    let emulator = emulator().await;
    inject(
        &emulator,
        json!({"endpoint": "oauth2.token", "status": 503, "retry_after_secs": 30}),
    );
    let source = source(&emulator, http(), &clock());
    let deadline = Instant::now() + Duration::from_secs(3);
    let error = tokio::time::timeout(
        Duration::from_secs(10),
        source.fetch(&request(&[CLOUD_PLATFORM]), Some(deadline)),
    )
    .await
    .expect("no sleeping past the deadline")
    .expect_err("unavailable");
    assert_eq!(
        error.retry_after(),
        Some(Duration::from_secs(30)),
        "{error:?}"
    );
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_deadline_shorter_than_the_backoff_stops_early() {
    let emulator = emulator().await;
    inject(
        &emulator,
        json!({"endpoint": "oauth2.token", "status": 503}),
    );
    // Backoffs of up to 1000 s against a 300 ms deadline: the client must not sleep.
    let slow_backoff = RetryPolicy {
        max_attempts: 10,
        initial_backoff: Duration::from_secs(1000),
        max_backoff: Duration::from_secs(1000),
        default_budget: Duration::from_secs(20),
    };
    let source = source(
        &emulator,
        http_with(slow_backoff, Duration::from_secs(5)),
        &clock(),
    );
    let deadline = Instant::now() + Duration::from_millis(300);
    let error = tokio::time::timeout(
        Duration::from_secs(10),
        source.fetch(&request(&[CLOUD_PLATFORM]), Some(deadline)),
    )
    .await
    .expect("no sleeping past the deadline")
    .expect_err("deadline exceeded");
    let SourceError::DeadlineExceeded {
        upstream,
        attempts,
        last,
    } = &error
    else {
        panic!("expected DeadlineExceeded, got {error:?}");
    };
    assert_eq!(*upstream, host(&emulator));
    // A jittered wait fits in 300 ms with odds of 3 in 10,000; two in a row, never.
    assert!(*attempts >= 1 && *attempts <= 2, "{attempts}");
    assert!(last.contains("503"), "{last}");
    assert_eq!(emulator.count(Endpoint::OAuth2Token), u64::from(*attempts));

    // A deadline already past: no attempt at all.
    let error = source
        .fetch(&request(&[CLOUD_PLATFORM]), Some(Instant::now()))
        .await
        .expect_err("deadline exceeded");
    assert!(
        matches!(error, SourceError::DeadlineExceeded { attempts: 0, .. }),
        "{error:?}"
    );
    assert_eq!(emulator.count(Endpoint::OAuth2Token), u64::from(*attempts));
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_dropped_connection_is_transient() {
    let emulator = emulator().await;
    inject(
        &emulator,
        json!({"endpoint": "oauth2.token", "drop_connection": true, "times": 1}),
    );
    let source = source(&emulator, http(), &clock());
    source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token after a retry");
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 2);
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_slow_answer_times_out_and_is_retried() {
    let emulator = emulator().await;
    inject(
        &emulator,
        json!({"endpoint": "oauth2.token", "delay_ms": 1000, "times": 1}),
    );
    let source = source(
        &emulator,
        http_with(policy(4), Duration::from_millis(200)),
        &clock(),
    );
    source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token after a retry");
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 2);

    // Always slow: every attempt times out, and the error says so.
    inject(
        &emulator,
        json!({"endpoint": "oauth2.token", "delay_ms": 1000}),
    );
    let error = source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect_err("unavailable");
    assert!(
        matches!(&error, SourceError::Unavailable { message, status: UpstreamStatus::Timeout, .. }
            if message.contains("timed out")),
        "{error:?}"
    );
    assert_eq!(error.upstream(), Some(host(&emulator).as_str()));
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 2 + 4);
    emulator.clear_faults();
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_malformed_body_is_malformed_and_not_retried() {
    let emulator = emulator().await;
    inject(
        &emulator,
        json!({"endpoint": "oauth2.token", "malformed_body": true}),
    );
    let source = source(&emulator, http(), &clock());
    let error = source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect_err("malformed");
    let SourceError::Malformed { upstream, message } = &error else {
        panic!("expected Malformed, got {error:?}");
    };
    assert_eq!(*upstream, host(&emulator));
    assert!(!message.contains("ya29"), "{message}");
    assert!(error.is_transient());
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_tampered_key_id_is_a_rejected_credential_and_not_retried() {
    let emulator = emulator().await;
    let mut file = key_file(&emulator, BROKER);
    file["private_key_id"] = json!("0000000000000000000000000000000000000000");
    let source = source_with(&emulator, &file, http(), &clock());
    let refused = rejection(source.fetch(&request(&[CLOUD_PLATFORM]), None).await);
    assert_eq!(refused.rejection, Rejection::CredentialRejected);
    assert_eq!(
        (refused.error.as_str(), refused.status),
        ("invalid_grant", 400)
    );
    assert!(
        refused.message.contains("Invalid JWT Signature"),
        "{}",
        refused.message
    );
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn another_key_is_a_rejected_credential() {
    let emulator = emulator().await;
    let other = gcp_emulator::SigningKey::generate("impostor").expect("key");
    let mut file = key_file(&emulator, BROKER);
    file["private_key"] = json!(other.private_key_pem());
    let source = source_with(&emulator, &file, http(), &clock());
    let refused = rejection(source.fetch(&request(&[CLOUD_PLATFORM]), None).await);
    assert_eq!(refused.rejection, Rejection::CredentialRejected);
    assert_eq!(refused.error, "invalid_grant");
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn permanent_errors_map_to_rejections() {
    let emulator = emulator().await;
    let source = source(&emulator, http(), &clock());
    // The emulator's default bodies: invalid_client for 401, invalid_request otherwise. A code
    // the flow has no rule for is read by its HTTP status.
    for (status, expected, code) in [
        (400, Rejection::Other, "invalid_request"),
        (401, Rejection::CredentialRejected, "invalid_client"),
        (403, Rejection::PermissionDenied, "invalid_request"),
    ] {
        inject(
            &emulator,
            json!({"endpoint": "oauth2.token", "status": status, "times": 1}),
        );
        let refused = rejection(source.fetch(&request(&[CLOUD_PLATFORM]), None).await);
        assert_eq!(refused.rejection, expected, "{status}: {}", refused.message);
        assert_eq!((refused.status, refused.error.as_str()), (status, code));
        assert!(
            refused.message.contains(&status.to_string()),
            "{}",
            refused.message
        );
    }
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 3, "no retries");

    let empty = TokenRequest::new(ScopeSet::parse(Vec::<String>::new()).expect("empty"));
    let refused = rejection(source.fetch(&empty, None).await);
    assert_eq!(refused.rejection, Rejection::InvalidArgument);
    assert_eq!(refused.field.as_deref(), Some("scopes"));
    assert_eq!(refused.error, "invalid_scope");
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_bad_dwd_subject_is_the_callers_argument() {
    let emulator = emulator().await;
    let source = source(&emulator, http(), &clock());
    let mut dwd = request(&[CLOUD_PLATFORM]);
    dwd.subject = Some("not-an-email".into());
    let refused = rejection(source.fetch(&dwd, None).await);
    assert_eq!(refused.rejection, Rejection::InvalidArgument);
    assert_eq!(refused.field.as_deref(), Some("subject"));
    assert_eq!(
        (refused.error.as_str(), refused.status),
        ("invalid_grant", 400)
    );
    assert!(
        refused.message.contains("Invalid email or User ID"),
        "{}",
        refused.message
    );
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 1, "no retries");
    emulator.shutdown().await;
}

#[tokio::test]
async fn googles_oauth_errors_are_classified_per_flow() {
    let emulator = emulator().await;
    let source = source(&emulator, http(), &clock());
    const BAD_SUBJECT: &str = "Invalid email or User ID";
    // (endpoint, status, error, description, subject, boundary, rejection, field)
    #[rustfmt::skip]
    let cases = [
        ("oauth2.token", 403, "access_denied", "", false, false, Rejection::PermissionDenied, None),
        ("oauth2.token", 400, "admin_policy_enforced", "", true, false, Rejection::PermissionDenied, None),
        ("oauth2.token", 403, "org_internal", "", false, false, Rejection::PermissionDenied, None),
        ("oauth2.token", 400, "invalid_grant", BAD_SUBJECT, true, false, Rejection::InvalidArgument, Some("subject")),
        ("oauth2.token", 400, "invalid_grant", BAD_SUBJECT, false, false, Rejection::CredentialRejected, None),
        ("oauth2.token", 401, "disabled_client", "", false, false, Rejection::CredentialRejected, None),
        ("oauth2.token", 400, "unsupported_grant_type", "", false, false, Rejection::Other, None),
        ("sts.token", 400, "invalid_request", "Invalid access boundary", false, true, Rejection::InvalidArgument, Some("access_boundary")),
        ("sts.token", 400, "invalid_scope", "", true, true, Rejection::InvalidArgument, Some("access_boundary")),
        ("sts.token", 400, "invalid_grant", "The subject token is invalid.", false, true, Rejection::CredentialRejected, None),
        ("sts.token", 400, "unauthorized_client", "", false, true, Rejection::PermissionDenied, None),
        ("sts.token", 400, "invalid_target", "", false, true, Rejection::NotFound, None),
        ("sts.token", 401, "invalid_client", "", false, true, Rejection::CredentialRejected, None),
    ];
    for (endpoint, status, code, description, subject, bounded, expected, field) in cases {
        let mut rule = json!({"endpoint": endpoint, "status": status, "error": code, "times": 1});
        if !description.is_empty() {
            rule["error_description"] = json!(description);
        }
        inject(&emulator, rule);
        let mut call = request(&[CLOUD_PLATFORM]);
        if subject {
            call.subject = Some("alice@example.com".into());
        }
        if bounded {
            call.boundary = Some(boundary());
        }
        let before = emulator.counters();
        let refused = rejection(source.fetch(&call, None).await);
        let case = format!("{endpoint} {status} {code} subject={subject}");
        assert_eq!(refused.rejection, expected, "{case}");
        assert_eq!(refused.field.as_deref(), field, "{case}");
        assert_eq!(
            (refused.status, refused.error.as_str()),
            (status, code),
            "{case}"
        );
        assert_eq!(refused.upstream, host(&emulator), "{case}");
        assert!(
            refused.message.contains(code),
            "{case}: {}",
            refused.message
        );
        assert!(
            refused.message.contains(description),
            "{case}: {}",
            refused.message
        );
        let calls = |counters: &std::collections::BTreeMap<Endpoint, u64>, e: Endpoint| {
            counters.get(&e).copied().unwrap_or(0)
        };
        let after = emulator.counters();
        let faulted = if bounded {
            Endpoint::StsToken
        } else {
            Endpoint::OAuth2Token
        };
        assert_eq!(
            calls(&after, faulted) - calls(&before, faulted),
            1,
            "{case}: no retries"
        );
    }
    emulator.shutdown().await;
}

#[tokio::test]
async fn googles_text_is_sanitized_and_odd_codes_are_unknown() {
    let emulator = emulator().await;
    let source = source(&emulator, http(), &clock());
    let description = format!(
        "first\nsecond \u{1b}[31mred\u{1b}[0m {}",
        "x".repeat(10_000)
    );
    for code in ["bad code", "invalid_grant\n", &"e".repeat(65)] {
        inject(
            &emulator,
            json!({"endpoint": "oauth2.token", "status": 400, "error": code,
                   "error_description": description, "times": 1}),
        );
        let refused = rejection(source.fetch(&request(&[CLOUD_PLATFORM]), None).await);
        assert_eq!(refused.error, "unknown", "{code:?}");
        assert_eq!(refused.rejection, Rejection::Other, "{code:?}");
        let message = &refused.message;
        assert!(
            message.contains("first\\nsecond \\u{1b}[31mred\\u{1b}[0m xxx"),
            "{message}"
        );
        assert!(message.ends_with("x…"), "{message}");
        assert!(!message.chars().any(char::is_control), "{message:?}");
        // The prefix, the code (at most 200) and the description (at most 200).
        assert!(message.chars().count() < 450, "{}", message.chars().count());
        let shown = SourceError::Rejected(Box::new(refused.clone())).to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
    }
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_failed_downscoping_names_the_sts_host() {
    let tokens = emulator().await;
    let sts = emulator().await;
    let mut endpoints = GoogleEndpoints::emulator(tokens.url());
    endpoints.sts_url = GoogleEndpoints::emulator(sts.url()).sts_url;
    let source = ServiceAccountSource::new(key(&key_file(&tokens, BROKER)), endpoints, http())
        .expect("source")
        .with_clock(Arc::new(clock()));
    let mut bounded = request(&[CLOUD_PLATFORM]);
    bounded.boundary = Some(boundary());
    assert_ne!(host(&tokens), host(&sts));

    // The second emulator never minted the token: STS refuses the broker's own token.
    let refused = rejection(source.fetch(&bounded, None).await);
    assert_eq!(refused.rejection, Rejection::CredentialRejected);
    assert_eq!(refused.error, "invalid_grant");
    assert_eq!(refused.upstream, host(&sts));
    assert_eq!(refused.upstream, upstream_host(sts.url()));

    inject(&sts, json!({"endpoint": "sts.token", "status": 503}));
    let error = source.fetch(&bounded, None).await.expect_err("unavailable");
    assert!(
        matches!(
            &error,
            SourceError::Unavailable {
                status: UpstreamStatus::Http(503),
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.upstream(), Some(host(&sts).as_str()));
    assert_eq!(tokens.count(Endpoint::StsToken), 0);
    tokens.shutdown().await;
    sts.shutdown().await;
}

#[tokio::test]
async fn retry_after_is_capped_for_the_wait_and_the_error() {
    let emulator = emulator().await;
    inject(
        &emulator,
        json!({"endpoint": "oauth2.token", "status": 503, "retry_after_secs": 3600}),
    );
    let http = HttpClient::new(HttpConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        no_proxy: true,
        max_retry_after: Duration::from_millis(200),
        retry: policy(2),
    })
    .expect("http client");
    let source = source(&emulator, http, &clock());
    let started = Instant::now();
    let error = tokio::time::timeout(
        Duration::from_secs(10),
        source.fetch(&request(&[CLOUD_PLATFORM]), None),
    )
    .await
    .expect("an hour was not waited")
    .expect_err("unavailable");
    assert!(started.elapsed() >= Duration::from_millis(200));
    let SourceError::Unavailable {
        status,
        retry_after,
        upstream,
        ..
    } = &error
    else {
        panic!("expected Unavailable, got {error:?}");
    };
    assert_eq!(*status, UpstreamStatus::Http(503));
    assert_eq!(*retry_after, Some(Duration::from_millis(200)));
    assert_eq!(*upstream, host(&emulator));
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 2);
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_refused_connection_names_the_host_and_connect() {
    let emulator = emulator().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let source = ServiceAccountSource::new(
        key(&key_file(&emulator, BROKER)),
        GoogleEndpoints::emulator(&format!("http://127.0.0.1:{closed}")),
        http_with(policy(2), Duration::from_secs(5)),
    )
    .expect("source");
    let error = source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect_err("unavailable");
    assert!(
        matches!(&error, SourceError::Unavailable { status: UpstreamStatus::Connect, message, .. }
            if message.contains("2 attempts")),
        "{error:?}"
    );
    assert_eq!(
        error.upstream(),
        Some(format!("127.0.0.1:{closed}").as_str())
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn lifetimes_beyond_an_hour_are_unsupported_without_a_call() {
    let emulator = emulator().await;
    let source = source(&emulator, http(), &clock());
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
    assert!(!error.is_transient());
    assert_eq!(error.upstream(), None);
    long.lifetime = Some(Duration::from_secs(3600));
    source.fetch(&long, None).await.expect("one hour is fine");
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_boundary_downscopes_through_sts() {
    let emulator = emulator().await;
    let clock = clock();
    let source = source(&emulator, http(), &clock);
    let mut bounded = request(&[CLOUD_PLATFORM]);
    bounded.boundary = Some(boundary());
    let token = source
        .fetch(&bounded, None)
        .await
        .expect("downscoped token");
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 1);
    assert_eq!(emulator.count(Endpoint::StsToken), 1);
    // STS gives no expires_in: the downscoped token expires with its source.
    assert_eq!(token.expires_at, clock.now() + EXPIRES_IN);
    assert_eq!(&*token.principal, BROKER);

    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["grant"], "sts-downscope");
    assert_eq!(info["email"], BROKER);
    assert_eq!(info["scope"], CLOUD_PLATFORM);
    assert_eq!(
        info["access_boundary"],
        boundary().sts_options()["accessBoundary"]
    );
    assert_expiry_matches(&info, &token);

    // Invalid boundaries are refused before anything is minted.
    let mut invalid = request(&[CLOUD_PLATFORM]);
    invalid.boundary = Some(AccessBoundary { rules: vec![] });
    let error = source.fetch(&invalid, None).await.expect_err("invalid");
    assert!(
        matches!(&error, SourceError::InvalidRequest { field, .. } if field == "access_boundary"),
        "{error:?}"
    );
    assert_eq!(error.upstream(), None);
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn downscoping_retries_sts_like_everything_else() {
    let emulator = emulator().await;
    inject(
        &emulator,
        json!({"endpoint": "sts.token", "status": 503, "times": 1}),
    );
    let source = source(&emulator, http(), &clock());
    let mut bounded = request(&[CLOUD_PLATFORM]);
    bounded.boundary = Some(boundary());
    let token = source
        .fetch(&bounded, None)
        .await
        .expect("downscoped token");
    assert_eq!(emulator.count(Endpoint::StsToken), 2);
    assert_eq!(
        tokeninfo(&emulator, &token.secret).await["grant"],
        "sts-downscope"
    );
    emulator.shutdown().await;
}

#[test]
fn garbage_pem_fails_at_construction_without_quoting_it() {
    let garbage = "Zm9vYmFyLXRoaXMtaXMtbm90LWEta2V5LWF0LWFsbA";
    let pems = [
        format!("-----BEGIN PRIVATE KEY-----\n{garbage}\n-----END PRIVATE KEY-----\n"),
        format!("-----BEGIN RSA PRIVATE KEY-----\n{garbage}\n-----END RSA PRIVATE KEY-----\n"),
        garbage.to_owned(),
    ];
    for pem in pems {
        let file = json!({
            "type": "service_account",
            "client_email": BROKER,
            "private_key_id": "abc",
            "private_key": pem,
        });
        let key = ServiceAccountKey::parse(&file.to_string(), "keys/broker.json").expect("parses");
        let error = ServiceAccountSource::new(key, GoogleEndpoints::google(), http())
            .expect_err("invalid key");
        assert!(
            matches!(error, BackendError::InvalidPrivateKey { .. }),
            "{error:?}"
        );
        let shown = format!("{error} / {error:?}");
        assert!(shown.contains("keys/broker.json"), "{shown}");
        assert!(shown.contains("private_key"), "{shown}");
        assert!(!shown.contains(garbage), "{shown}");
    }
}

#[tokio::test]
async fn debug_output_never_shows_the_key() {
    let emulator = emulator().await;
    let file = key_file(&emulator, BROKER);
    let pem = file["private_key"].as_str().expect("pem");
    // A line from the middle of the base64 body.
    let body_line = pem.lines().nth(5).expect("a long PEM");
    let key = key(&file);
    let source = source(&emulator, http(), &clock());
    for shown in [
        format!("{key:?}"),
        format!("{source:?}"),
        format!("{source:#?}"),
    ] {
        assert!(!shown.contains(body_line), "{shown}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(shown.contains(BROKER), "{shown}");
    }
    assert_eq!(
        source.key_id(),
        file["private_key_id"].as_str(),
        "the key id is shown and sent as kid"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn logs_carry_fingerprints_never_secrets() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("broker_backends=trace")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let emulator = emulator().await;
    inject(
        &emulator,
        json!({"endpoint": "oauth2.token", "status": 500, "times": 1}),
    );
    let file = key_file(&emulator, BROKER);
    let source = source(&emulator, http(), &clock());
    let mut bounded = request(&[CLOUD_PLATFORM]);
    bounded.boundary = Some(boundary());
    let token = source.fetch(&bounded, None).await.expect("token");
    emulator.shutdown().await;

    let logs = String::from_utf8(capture.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
        .expect("utf-8");
    assert!(logs.contains("retrying"), "{logs}");
    assert!(logs.contains(token.secret.fingerprint()), "{logs}");
    assert!(!logs.contains(token.secret.expose()), "{logs}");
    assert!(!logs.contains("ya29."), "{logs}");
    // JWS (the assertion) starts with base64url of '{"' ...
    assert!(!logs.contains("eyJ"), "{logs}");
    let pem = file["private_key"].as_str().expect("pem");
    assert!(!logs.contains(pem.lines().nth(5).expect("line")), "{logs}");
}

#[tokio::test]
async fn a_key_reports_its_kind_and_capabilities() {
    let emulator = emulator().await;
    let source = source(&emulator, http(), &clock());
    assert_eq!(source.kind(), "service_account");
    let capabilities = source.capabilities();
    assert!(capabilities.domain_wide_delegation);
    assert!(capabilities.id_tokens);
    assert!(capabilities.downscoping);
    assert!(!capabilities.chooses_lifetime);
    emulator.shutdown().await;
}

#[tokio::test]
async fn an_id_token_comes_from_the_jwt_bearer_grant_with_target_audience() {
    let emulator = emulator().await;
    let source = source(&emulator, http(), &clock());
    for include_email in [false, true] {
        let request = IdTokenRequest {
            audience: emulator.function_url(),
            include_email,
        };
        let token = source
            .fetch_id_token(&request, None)
            .await
            .expect("ID token");
        assert_eq!(&*token.principal, BROKER);
        assert_id_token_expiry(&token);
        let claims = claims(token.secret.expose());
        assert_eq!(claims["aud"], emulator.function_url());
        assert_eq!(claims["iss"], GOOGLE_ISSUER);
        // The key flow always includes the email, whatever was asked.
        assert_eq!(claims["email"], BROKER);
        assert_eq!(claims["email_verified"], true);

        // The ID-token-protected function accepts it, as Cloud Run would.
        let called = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(emulator.function_url())
            .bearer_auth(token.secret.expose())
            .send()
            .await
            .expect("function");
        assert_eq!(called.status(), 200);
    }
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 2);
    emulator.shutdown().await;
}

#[tokio::test]
async fn id_token_refusals_and_failures_are_classified() {
    let emulator = emulator().await;
    let source = source(&emulator, http(), &clock());
    let id = |audience: &str| IdTokenRequest {
        audience: audience.to_owned(),
        include_email: false,
    };

    // An empty audience: Google's invalid_scope, blamed on the audience.
    let refused = rejection(source.fetch_id_token(&id(""), None).await);
    assert_eq!(refused.rejection, Rejection::InvalidArgument);
    assert_eq!(refused.field.as_deref(), Some("audience"));
    assert_eq!(
        (refused.error.as_str(), refused.status),
        ("invalid_scope", 400)
    );

    // A rejected key, transient failures, a malformed answer.
    inject(
        &emulator,
        json!({"endpoint": "oauth2.token", "status": 400, "error": "invalid_grant",
               "error_description": "Invalid JWT Signature.", "times": 1}),
    );
    let refused = rejection(source.fetch_id_token(&id("https://a.example"), None).await);
    assert_eq!(refused.rejection, Rejection::CredentialRejected);
    assert_eq!(refused.upstream, host(&emulator));

    inject(
        &emulator,
        json!({"endpoint": "oauth2.token", "status": 503, "times": 2}),
    );
    let before = emulator.count(Endpoint::OAuth2Token);
    source
        .fetch_id_token(&id("https://a.example"), None)
        .await
        .expect("ID token after retries");
    assert_eq!(emulator.count(Endpoint::OAuth2Token) - before, 3);

    inject(
        &emulator,
        json!({"endpoint": "oauth2.token", "malformed_body": true, "times": 1}),
    );
    let error = source
        .fetch_id_token(&id("https://a.example"), None)
        .await
        .expect_err("malformed");
    assert!(
        matches!(&error, SourceError::Malformed { upstream, .. } if *upstream == host(&emulator)),
        "{error:?}"
    );
    emulator.shutdown().await;
}
