//! The library against a fake broker over real mutual TLS.

mod common;

use std::sync::Arc;
use std::time::Duration;

use broker_client::{
    ClientError, Code, ConnectOptions, ProviderOptions, RetryPolicy, TokenProvider, TokenRequest,
    connect,
};
use broker_core::ManualClock;
use broker_proto::tokenbroker::v1::GetAccessTokenRequest;
use common::{FakeBroker, PRINCIPAL, Pki, base_time, serve};

const HOUR: Duration = Duration::from_secs(3600);

fn provider_options(clock: &ManualClock) -> ProviderOptions {
    let mut retry = RetryPolicy::default();
    retry.initial_backoff = Duration::from_millis(10);
    retry.max_backoff = Duration::from_millis(50);
    retry.deadline = Duration::from_secs(5);
    let mut options = ProviderOptions::default();
    options.clock = Arc::new(clock.clone());
    options.retry = retry;
    options
}

#[tokio::test]
async fn get_access_token_round_trip_over_mtls() {
    let pki = Pki::new("round-trip");
    let broker = FakeBroker::new(base_time() + HOUR);
    let addr = serve(&pki, broker.clone()).await;

    for endpoint in [
        format!("https://127.0.0.1:{}", addr.port()),
        format!("localhost:{}", addr.port()),
    ] {
        let mut client = connect(&endpoint, &pki.client, &ConnectOptions::default())
            .await
            .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"));
        let response = client
            .get_access_token(GetAccessTokenRequest {
                scopes: vec!["https://www.googleapis.com/auth/devstorage.read_only".to_owned()],
                credential: "prod-reader".to_owned(),
                ..GetAccessTokenRequest::default()
            })
            .await
            .expect("GetAccessToken")
            .into_inner();
        assert!(response.access_token.starts_with("ya29.fake-"));
        assert_eq!(response.principal, PRINCIPAL);
        assert_eq!(response.credential, "prod-reader");
        assert_eq!(response.expire_time.map(|t| t.seconds), Some(1_800_003_600));
    }
    assert_eq!(broker.calls(), 2);

    let other = connect(
        &format!("https://127.0.0.1:{}", addr.port()),
        &pki.client,
        &ConnectOptions::default(),
    )
    .await
    .expect("connect");
    let status = other
        .clone()
        .sign_blob(broker_proto::tokenbroker::v1::SignBlobRequest::default())
        .await
        .expect_err("SignBlob is not implemented by the fake");
    assert_eq!(status.code(), Code::Unimplemented);
}

#[tokio::test]
async fn a_client_with_the_wrong_ca_gets_a_clear_tls_error() {
    let pki = Pki::new("wrong-ca");
    let broker = FakeBroker::new(base_time() + HOUR);
    let addr = serve(&pki, broker.clone()).await;

    let error = connect(
        &format!("https://127.0.0.1:{}", addr.port()),
        &pki.wrong_ca,
        &ConnectOptions::default(),
    )
    .await
    .expect_err("the broker's certificate is not issued by that CA");
    let message = error.to_string();
    assert!(matches!(error, ClientError::Tls { .. }), "{error:?}");
    assert!(
        message.contains("UnknownIssuer") && message.contains("not trusted"),
        "{message}"
    );
    assert!(
        message.contains(&format!("https://127.0.0.1:{}", addr.port())),
        "{message}"
    );
    assert_eq!(broker.calls(), 0);
}

#[tokio::test]
async fn a_client_certificate_the_broker_does_not_trust_is_refused() {
    let pki = Pki::new("untrusted-client");
    let broker = FakeBroker::new(base_time() + HOUR);
    let addr = serve(&pki, broker.clone()).await;

    // With TLS 1.3 the server checks the client certificate after the client's side of the
    // handshake is done: the refusal shows up at connect or on the first RPC.
    let endpoint = format!("https://127.0.0.1:{}", addr.port());
    let result = match connect(&endpoint, &pki.untrusted_client, &ConnectOptions::default()).await {
        Err(error) => Err(error),
        Ok(client) => {
            let mut options = ProviderOptions::default();
            options.retry = RetryPolicy::never();
            TokenProvider::with_options(client, TokenRequest::default(), options)
                .expect("provider")
                .token()
                .await
                .map(|_| ())
        }
    };
    let error = result.expect_err("the broker refuses the certificate");
    let message = error.to_string();
    assert!(matches!(error, ClientError::Tls { .. }), "{error:?}");
    assert!(
        message.contains("UnknownCA") && message.contains("refused"),
        "{message}"
    );
    assert_eq!(broker.calls(), 0);
}

#[tokio::test]
async fn tls_file_errors_name_the_file() {
    let pki = Pki::new("files");
    let mut files = pki.client.clone();
    files.key = pki.untrusted_client.key.clone();
    let error = connect("localhost:1", &files, &ConnectOptions::default())
        .await
        .expect_err("the key belongs to another certificate");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("client key file {}", files.key.display()))
            && message.contains("does not match"),
        "{message}"
    );
    assert!(!message.contains("PRIVATE KEY"), "{message}");

    let mut files = pki.client.clone();
    files.ca = pki.client.key.clone();
    let message = connect("localhost:1", &files, &ConnectOptions::default())
        .await
        .expect_err("a key is not a CA certificate")
        .to_string();
    assert!(
        message.starts_with(&format!("CA certificate file {}", files.ca.display()))
            && message.contains("no PEM CERTIFICATE"),
        "{message}"
    );
}

#[tokio::test]
async fn the_provider_makes_one_rpc_for_concurrent_callers_and_refreshes_near_expiry() {
    let pki = Pki::new("provider");
    let broker = FakeBroker::new(base_time() + HOUR);
    broker.set_delay(Duration::from_millis(100));
    let addr = serve(&pki, broker.clone()).await;
    let client = connect(
        &format!("localhost:{}", addr.port()),
        &pki.client,
        &ConnectOptions::default(),
    )
    .await
    .expect("connect");

    let clock = ManualClock::new(base_time());
    let provider = TokenProvider::with_options(
        client,
        TokenRequest {
            scopes: vec!["https://www.googleapis.com/auth/cloud-platform".to_owned()],
            credential: Some("prod".to_owned()),
            ..TokenRequest::default()
        },
        provider_options(&clock),
    )
    .expect("provider");

    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let provider = provider.clone();
            tokio::spawn(async move { provider.token().await })
        })
        .collect();
    for task in tasks {
        let token = task.await.expect("task").expect("token");
        assert_eq!(token.secret(), "ya29.fake-1");
        assert_eq!(token.expire_time, base_time() + HOUR);
        assert_eq!(token.principal, PRINCIPAL);
        assert_eq!(token.credential, "prod");
    }
    assert_eq!(broker.calls(), 1, "50 concurrent callers share one RPC");

    // More than the 5-minute margin left: served from the provider's cache.
    clock.set(base_time() + HOUR - Duration::from_secs(301));
    let token = provider.token().await.expect("cached token");
    assert_eq!(token.secret(), "ya29.fake-1");
    assert_eq!(broker.calls(), 1);

    // Less than 5 minutes left: refreshed.
    broker.set_expire_time(base_time() + 2 * HOUR);
    clock.set(base_time() + HOUR - Duration::from_secs(299));
    let token = provider.token().await.expect("refreshed token");
    assert_eq!(token.secret(), "ya29.fake-2");
    assert_eq!(token.expire_time, base_time() + 2 * HOUR);
    assert_eq!(broker.calls(), 2);
    assert_eq!(
        provider.token().await.expect("cached").secret(),
        "ya29.fake-2"
    );
    assert_eq!(broker.calls(), 2);

    // A token that expires soon is refreshed half-way through its life, not on every call.
    provider.invalidate();
    let now = base_time() + HOUR;
    clock.set(now);
    broker.set_expire_time(now + Duration::from_secs(120));
    assert_eq!(
        provider.token().await.expect("short").secret(),
        "ya29.fake-3"
    );
    clock.set(now + Duration::from_secs(59));
    assert_eq!(
        provider.token().await.expect("cached").secret(),
        "ya29.fake-3"
    );
    clock.set(now + Duration::from_secs(61));
    assert_eq!(
        provider.token().await.expect("refreshed").secret(),
        "ya29.fake-4"
    );
    assert_eq!(broker.calls(), 4);
}

#[tokio::test]
async fn the_provider_retries_unavailable_honouring_retry_info() {
    let pki = Pki::new("retry");
    let broker = FakeBroker::new(base_time() + HOUR);
    let addr = serve(&pki, broker.clone()).await;
    let client = connect(
        &format!("localhost:{}", addr.port()),
        &pki.client,
        &ConnectOptions::default(),
    )
    .await
    .expect("connect");
    let clock = ManualClock::new(base_time());
    let provider =
        TokenProvider::with_options(client, TokenRequest::default(), provider_options(&clock))
            .expect("provider");

    broker.fail_with([
        common::upstream_unavailable(Duration::from_millis(150)),
        common::upstream_unavailable(Duration::from_millis(150)),
    ]);
    let started = std::time::Instant::now();
    let token = provider.token().await.expect("token after two retries");
    assert_eq!(token.secret(), "ya29.fake-1");
    assert_eq!(broker.calls(), 3);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "RetryInfo delays honoured: {:?}",
        started.elapsed()
    );

    // A refresh that keeps failing returns the cached token while it has not expired.
    clock.set(base_time() + HOUR - Duration::from_secs(60));
    broker.fail_with((0..3).map(|_| common::upstream_unavailable(Duration::from_secs(10))));
    let token = provider.token().await.expect("the cached token");
    assert_eq!(token.secret(), "ya29.fake-1");
    assert_eq!(
        broker.calls(),
        4,
        "a 10 s RetryInfo does not fit in the 5 s deadline"
    );

    // ... but not once it has expired.
    clock.set(base_time() + HOUR + Duration::from_secs(1));
    let error = provider.token().await.expect_err("nothing valid is left");
    assert_eq!(error.code(), Some(Code::Unavailable));
    let status = error.status().expect("a status");
    assert_eq!(status.reason.as_deref(), Some("UPSTREAM_UNAVAILABLE"));
    assert_eq!(status.retry_after, Some(Duration::from_secs(10)));
    assert_eq!(broker.calls(), 5);
}

#[tokio::test]
async fn permission_denied_is_decoded_and_not_retried() {
    let pki = Pki::new("denied");
    let broker = FakeBroker::new(base_time() + HOUR);
    let addr = serve(&pki, broker.clone()).await;
    let client = connect(
        &format!("localhost:{}", addr.port()),
        &pki.client,
        &ConnectOptions::default(),
    )
    .await
    .expect("connect");
    let clock = ManualClock::new(base_time());
    let provider = TokenProvider::with_options(
        client,
        TokenRequest {
            scopes: vec!["https://www.googleapis.com/auth/admin".to_owned()],
            min_remaining_validity: Some(Duration::from_secs(600)),
            lifetime: Some(Duration::from_secs(1800)),
            ..TokenRequest::default()
        },
        provider_options(&clock),
    )
    .expect("provider");

    broker.fail_with([common::policy_denied(
        "scopes",
        "ci",
        "https://www.googleapis.com/auth/admin",
    )]);
    let error = provider.token().await.expect_err("denied");
    assert_eq!(broker.calls(), 1, "PERMISSION_DENIED is not retried");
    let status = error.status().expect("a status");
    assert_eq!(status.code, Code::PermissionDenied);
    assert_eq!(status.reason.as_deref(), Some("POLICY_DENIED"));
    assert_eq!(status.domain.as_deref(), Some(broker_client::ERROR_DOMAIN));
    assert_eq!(status.get("rule"), Some("scopes"));
    assert_eq!(status.get("grant"), Some("ci"));
    assert_eq!(status.get("caller"), Some("ci-runner.example.com"));
    assert_eq!(
        error.to_string(),
        "PERMISSION_DENIED (POLICY_DENIED): grant ci does not allow \
         https://www.googleapis.com/auth/admin [caller=ci-runner.example.com, grant=ci, \
         rule=scopes, value=https://www.googleapis.com/auth/admin]"
    );

    // The request carried the template's durations.
    let request = broker.requests().pop().expect("a request");
    assert_eq!(request.min_remaining_validity.map(|d| d.seconds), Some(600));
    assert_eq!(request.lifetime.map(|d| d.seconds), Some(1800));
}
