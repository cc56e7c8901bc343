//! The library against a fake broker over real mutual TLS.

mod common;

use std::sync::Arc;
use std::time::Duration;

use broker_client::Channel;
use broker_client::{
    AccessBoundaryRule, AvailabilityCondition, BlobSigningRequest, CallOptions, ClientError, Code,
    ConnectOptions, CredentialAccessBoundary, ExchangeRequest, IdTokenProvider, IdTokenRequest,
    ImpersonationRequest, JwtSigningRequest, ProviderOptions, RetryPolicy, Secret,
    TokenBrokerClient, TokenProvider, TokenRequest, connect, exchange_token, generate_id_token,
    get_access_token, impersonate, parse_access_boundary, sign_blob, sign_jwt, token_type,
};
use broker_core::ManualClock;
use broker_proto::tokenbroker::v1::{ExchangeTokenOptions, GetAccessTokenRequest};
use common::{FEDERATED_PRINCIPAL, FakeBroker, KEY_ID, PRINCIPAL, Pki, base_time, serve};

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
    // The raw generated client's errors decode like the library's own.
    let status = other
        .clone()
        .exchange_token(broker_proto::tokenbroker::v1::ExchangeTokenRequest::default())
        .await
        .expect_err("an empty subject token is refused");
    let error = ClientError::from(status);
    let status = error.status().expect("a status");
    assert_eq!(status.code, Code::InvalidArgument);
    assert_eq!(status.reason.as_deref(), Some("INVALID_FIELD"));
    assert_eq!(status.get("field"), Some("subject_token"));
    assert_eq!(status.field_violations[0].field, "subject_token");
    assert_eq!(broker.exchange_requests().len(), 1);
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

const TARGET: &str = "reader@my-project.iam.gserviceaccount.com";
const DELEGATE: &str = "writer@my-project.iam.gserviceaccount.com";

async fn client_for(pki: &Pki, broker: &std::sync::Arc<FakeBroker>) -> TokenBrokerClient<Channel> {
    let addr = serve(pki, broker.clone()).await;
    connect(
        &format!("localhost:{}", addr.port()),
        &pki.client,
        &ConnectOptions::default(),
    )
    .await
    .expect("connect")
}

fn fast_retries() -> CallOptions {
    let mut options = CallOptions::default();
    options.retry.initial_backoff = Duration::from_millis(10);
    options.retry.max_backoff = Duration::from_millis(50);
    options.retry.deadline = Duration::from_secs(5);
    options
}

#[tokio::test]
async fn one_shot_calls_send_every_field_and_check_the_answers() {
    let pki = Pki::new("one-shot");
    let broker = FakeBroker::new(base_time() + HOUR);
    let client = client_for(&pki, &broker).await;
    let options = CallOptions::default();

    let token = impersonate(
        &client,
        &ImpersonationRequest {
            target_service_account: TARGET.to_owned(),
            delegates: vec![DELEGATE.to_owned()],
            scopes: vec!["https://www.googleapis.com/auth/devstorage.read_only".to_owned()],
            lifetime: Some(Duration::from_secs(7200)),
            min_remaining_validity: Some(Duration::from_secs(600)),
            credential: Some("dev".to_owned()),
        },
        &options,
    )
    .await
    .expect("ImpersonateServiceAccount");
    assert_eq!(token.secret(), FakeBroker::impersonated_token(1));
    assert_eq!(token.principal, TARGET);
    assert_eq!(token.credential, "dev");
    assert_eq!(token.expire_time, base_time() + HOUR);
    assert_eq!(token.token_type, "Bearer");
    assert!(token.scopes.is_empty(), "the response does not list them");
    assert!(!token.cache_hit);
    let sent = broker.impersonate_requests().pop().expect("a request");
    assert_eq!(sent.target_service_account, TARGET);
    assert_eq!(sent.delegates, vec![DELEGATE]);
    assert_eq!(
        sent.scopes,
        vec!["https://www.googleapis.com/auth/devstorage.read_only"]
    );
    assert_eq!(sent.lifetime.map(|d| d.seconds), Some(7200));
    assert_eq!(sent.min_remaining_validity.map(|d| d.seconds), Some(600));
    assert_eq!(sent.credential, "dev");

    let id_token = generate_id_token(
        &client,
        &IdTokenRequest {
            audience: "https://hello-abc123-uc.a.run.app".to_owned(),
            include_email: true,
            target_service_account: Some(TARGET.to_owned()),
            delegates: vec![DELEGATE.to_owned()],
            credential: None,
            min_remaining_validity: Some(Duration::from_secs(120)),
        },
        &options,
    )
    .await
    .expect("GenerateIdToken");
    assert_eq!(id_token.secret(), FakeBroker::id_token(2));
    assert_eq!(id_token.principal, TARGET);
    assert_eq!(id_token.credential, "default-credential");
    assert_eq!(id_token.expire_time, base_time() + HOUR);
    assert!(id_token.cache_hit);
    assert!(!format!("{id_token:?}").contains("fake-id-token"));
    let sent = broker.id_token_requests().pop().expect("a request");
    assert_eq!(sent.audience, "https://hello-abc123-uc.a.run.app");
    assert!(sent.include_email);
    assert_eq!(sent.target_service_account, TARGET);
    assert_eq!(sent.delegates, vec![DELEGATE]);
    assert_eq!(sent.credential, "");
    assert_eq!(sent.min_remaining_validity.map(|d| d.seconds), Some(120));

    let claims =
        r#"{"iss":"reader@my-project.iam.gserviceaccount.com","aud":"https://x","exp":1800000600}"#;
    let jwt = sign_jwt(
        &client,
        &JwtSigningRequest {
            service_account: TARGET.to_owned(),
            payload: claims.to_owned(),
            delegates: vec![DELEGATE.to_owned()],
            credential: Some("dev".to_owned()),
        },
        &options,
    )
    .await
    .expect("SignJwt");
    assert_eq!(jwt.secret(), FakeBroker::signed_jwt(3));
    assert_eq!(jwt.key_id, KEY_ID);
    assert_eq!(jwt.credential, "dev");
    let sent = broker.sign_jwt_requests().pop().expect("a request");
    assert_eq!(
        (sent.service_account.as_str(), sent.payload.as_str()),
        (TARGET, claims)
    );
    assert_eq!(
        (sent.delegates, sent.credential.as_str()),
        (vec![DELEGATE.to_owned()], "dev")
    );

    let payload = b"\x00\x01binary\xff payload".to_vec();
    let blob = sign_blob(
        &client,
        &BlobSigningRequest {
            service_account: TARGET.to_owned(),
            payload: payload.clone(),
            ..BlobSigningRequest::default()
        },
        &options,
    )
    .await
    .expect("SignBlob");
    assert_eq!(blob.signature, FakeBroker::signature(&payload));
    assert_eq!(blob.signature_base64(), "AP9zaWc6AAFiaW5hcnn/IHBheWxvYWQ=");
    assert_eq!(blob.key_id, KEY_ID);
    assert_eq!(blob.credential, "default-credential");
    let sent = broker.sign_blob_requests().pop().expect("a request");
    assert_eq!(sent.payload, payload);
    assert!(sent.delegates.is_empty());

    let token = get_access_token(&client, &TokenRequest::default(), &options)
        .await
        .expect("GetAccessToken");
    assert_eq!(token.secret(), "ya29.fake-5");
    assert_eq!(broker.calls(), 1);

    // Refused before anything is sent.
    let error = generate_id_token(
        &client,
        &IdTokenRequest {
            audience: "a".to_owned(),
            delegates: vec![DELEGATE.to_owned()],
            ..IdTokenRequest::default()
        },
        &options,
    )
    .await
    .expect_err("delegates without a target");
    assert!(matches!(error, ClientError::Config(_)), "{error:?}");
    assert_eq!(broker.id_token_requests().len(), 1);
}

#[tokio::test]
async fn one_shot_calls_share_the_retry_policy() {
    let pki = Pki::new("one-shot-retry");
    let broker = FakeBroker::new(base_time() + HOUR);
    let client = client_for(&pki, &broker).await;

    broker.fail_with([
        common::upstream_unavailable(Duration::from_millis(150)),
        tonic::Status::resource_exhausted("slow down"),
    ]);
    let started = std::time::Instant::now();
    let blob = sign_blob(
        &client,
        &BlobSigningRequest {
            service_account: TARGET.to_owned(),
            payload: b"hello blob".to_vec(),
            ..BlobSigningRequest::default()
        },
        &fast_retries(),
    )
    .await
    .expect("signed after two retries");
    assert_eq!(blob.signature_base64(), "AP9zaWc6aGVsbG8gYmxvYg==");
    assert_eq!(broker.sign_blob_requests().len(), 3);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "RetryInfo honoured: {:?}",
        started.elapsed()
    );

    // Not retried: PERMISSION_DENIED, INVALID_ARGUMENT, and a RetryInfo beyond the deadline.
    broker.fail_with([common::policy_denied(
        "service_accounts",
        "app",
        "admin@my-project.iam.gserviceaccount.com",
    )]);
    let request = ImpersonationRequest {
        target_service_account: "admin@my-project.iam.gserviceaccount.com".to_owned(),
        ..ImpersonationRequest::default()
    };
    let error = impersonate(&client, &request, &fast_retries())
        .await
        .expect_err("denied");
    let status = error.status().expect("a status");
    assert_eq!(status.code, Code::PermissionDenied);
    assert_eq!(status.get("rule"), Some("service_accounts"));
    assert_eq!(broker.impersonate_requests().len(), 1);

    let error = sign_jwt(
        &client,
        &JwtSigningRequest {
            service_account: TARGET.to_owned(),
            payload: "[1]".to_owned(),
            ..JwtSigningRequest::default()
        },
        &fast_retries(),
    )
    .await
    .expect_err("not a JSON object");
    assert_eq!(error.code(), Some(Code::InvalidArgument));
    let status = error.status().expect("a status");
    assert_eq!(status.field_violations[0].field, "payload");
    assert_eq!(broker.sign_jwt_requests().len(), 1);

    broker.fail_with([common::upstream_unavailable(Duration::from_secs(30))]);
    let error = generate_id_token(
        &client,
        &IdTokenRequest {
            audience: "https://a".to_owned(),
            ..IdTokenRequest::default()
        },
        &fast_retries(),
    )
    .await
    .expect_err("a 30 s RetryInfo does not fit in the 5 s deadline");
    assert_eq!(error.code(), Some(Code::Unavailable));
    assert_eq!(broker.id_token_requests().len(), 1);

    let mut never = fast_retries();
    never.retry = RetryPolicy::never();
    broker.fail_with([common::upstream_unavailable(Duration::from_millis(1))]);
    let error = impersonate(&client, &request, &never)
        .await
        .expect_err("no retries");
    assert!(error.is_retryable());
    assert_eq!(broker.impersonate_requests().len(), 2);
}

#[tokio::test]
async fn malformed_answers_are_protocol_errors() {
    let pki = Pki::new("malformed");
    let broker = FakeBroker::new(base_time() + HOUR);
    let client = client_for(&pki, &broker).await;
    broker.set_malformed(true);
    let options = fast_retries();

    let errors = [
        impersonate(
            &client,
            &ImpersonationRequest {
                target_service_account: TARGET.to_owned(),
                ..ImpersonationRequest::default()
            },
            &options,
        )
        .await
        .map(drop),
        generate_id_token(
            &client,
            &IdTokenRequest {
                audience: "https://a".to_owned(),
                ..IdTokenRequest::default()
            },
            &options,
        )
        .await
        .map(drop),
        sign_jwt(
            &client,
            &JwtSigningRequest {
                service_account: TARGET.to_owned(),
                payload: "{}".to_owned(),
                ..JwtSigningRequest::default()
            },
            &options,
        )
        .await
        .map(drop),
        sign_blob(
            &client,
            &BlobSigningRequest {
                service_account: TARGET.to_owned(),
                payload: b"x".to_vec(),
                ..BlobSigningRequest::default()
            },
            &options,
        )
        .await
        .map(drop),
    ];
    for (error, field) in
        errors
            .into_iter()
            .zip(["access_token", "id_token", "signed_jwt", "signature"])
    {
        match error {
            Err(ClientError::Protocol(message)) => {
                assert!(message.contains(field), "{message}");
            }
            other => panic!("expected a protocol error naming {field}, got {other:?}"),
        }
    }
    assert_eq!(broker.impersonate_requests().len(), 1, "not retried");
}

#[tokio::test]
async fn the_id_token_provider_caches_coalesces_and_refreshes() {
    let pki = Pki::new("id-provider");
    let broker = FakeBroker::new(base_time() + HOUR);
    broker.set_delay(Duration::from_millis(100));
    let client = client_for(&pki, &broker).await;
    let clock = ManualClock::new(base_time());
    let provider = IdTokenProvider::with_options(
        client,
        IdTokenRequest {
            audience: "https://hello-abc123-uc.a.run.app".to_owned(),
            credential: Some("dev".to_owned()),
            ..IdTokenRequest::default()
        },
        provider_options(&clock),
    )
    .expect("provider");
    assert!(provider.cached().is_none());

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let provider = provider.clone();
            tokio::spawn(async move { provider.token().await })
        })
        .collect();
    for task in tasks {
        let token = task.await.expect("task").expect("ID token");
        assert_eq!(token.secret(), FakeBroker::id_token(1));
        assert_eq!(token.principal, PRINCIPAL);
        assert_eq!(
            token.authorization_header().expose(),
            format!("Bearer {}", FakeBroker::id_token(1))
        );
    }
    assert_eq!(broker.id_token_requests().len(), 1, "one RPC for all");

    clock.set(base_time() + HOUR - Duration::from_secs(301));
    assert_eq!(
        provider.token().await.expect("cached").secret(),
        FakeBroker::id_token(1)
    );
    assert_eq!(broker.id_token_requests().len(), 1);

    broker.set_expire_time(base_time() + 2 * HOUR);
    clock.set(base_time() + HOUR - Duration::from_secs(299));
    assert_eq!(
        provider.token().await.expect("refreshed").secret(),
        FakeBroker::id_token(2)
    );
    assert_eq!(broker.id_token_requests().len(), 2);

    // A failing refresh falls back on the unexpired cached token; a denial does not.
    clock.set(base_time() + 2 * HOUR - Duration::from_secs(60));
    // (A 10 s RetryInfo does not fit in the 5 s deadline: one attempt.)
    broker.fail_with([common::upstream_unavailable(Duration::from_secs(10))]);
    assert_eq!(
        provider.token().await.expect("the cached token").secret(),
        FakeBroker::id_token(2)
    );
    assert_eq!(broker.id_token_requests().len(), 3);
    provider.invalidate();
    assert!(provider.cached().is_none());
    broker.fail_with([common::policy_denied("audiences", "app", "https://hello")]);
    let error = provider.token().await.expect_err("denied");
    assert_eq!(error.code(), Some(Code::PermissionDenied));
}

const AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/pool/providers/ci";
const SUBJECT_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.subject-token-secret.c2ln";

fn bucket_reader() -> CredentialAccessBoundary {
    CredentialAccessBoundary {
        access_boundary_rules: vec![AccessBoundaryRule {
            available_resource: "//storage.googleapis.com/projects/_/buckets/reports".to_owned(),
            available_permissions: vec!["inRole:roles/storage.objectViewer".to_owned()],
            availability_condition: Some(AvailabilityCondition {
                expression: "resource.name.startsWith('projects/_/buckets/reports/objects/2026/')"
                    .to_owned(),
                title: "2026 only".to_owned(),
                description: String::new(),
            }),
        }],
    }
}

#[tokio::test]
async fn exchange_token_federates_and_downscopes() {
    let pki = Pki::new("exchange");
    let broker = FakeBroker::new(base_time() + HOUR);
    let client = client_for(&pki, &broker).await;
    let options = CallOptions::default();

    // A plain federation exchange: every field reaches the broker.
    let request = ExchangeRequest {
        subject_token: Secret::new(SUBJECT_TOKEN),
        subject_token_type: token_type::JWT.to_owned(),
        audience: Some(AUDIENCE.to_owned()),
        scopes: vec!["https://www.googleapis.com/auth/devstorage.read_only".to_owned()],
        requested_token_type: Some(token_type::ACCESS_TOKEN.to_owned()),
        user_project: Some("billing-project".to_owned()),
        access_boundary: Some(bucket_reader()),
        credential: None,
    };
    assert!(!format!("{request:?}").contains("subject-token-secret"));
    let token = exchange_token(&client, &request, &options)
        .await
        .expect("ExchangeToken");
    assert_eq!(token.secret(), FakeBroker::exchanged_token(1));
    assert_eq!(token.issued_token_type, token_type::ACCESS_TOKEN);
    assert_eq!(token.token_type, "Bearer");
    assert_eq!(token.expire_time, Some(base_time() + HOUR));
    assert_eq!(token.principal, FEDERATED_PRINCIPAL);
    assert_eq!(token.credential, "", "a plain exchange names no credential");
    assert!(!format!("{token:?}").contains("exchanged-1"));
    let sent = broker.exchange_requests().pop().expect("a request");
    assert_eq!(sent.subject_token, SUBJECT_TOKEN);
    assert_eq!(
        sent.subject_token_type,
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert_eq!(sent.audience, AUDIENCE);
    assert_eq!(
        sent.scopes,
        vec!["https://www.googleapis.com/auth/devstorage.read_only"]
    );
    assert_eq!(
        sent.requested_token_type,
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(
        sent.options,
        Some(ExchangeTokenOptions {
            user_project: "billing-project".to_owned(),
            access_boundary: Some(bucket_reader()),
        })
    );
    assert_eq!(sent.credential, "");

    // Through an external_account credential, which supplies the audience and impersonates.
    let token = exchange_token(
        &client,
        &ExchangeRequest {
            subject_token: Secret::new(SUBJECT_TOKEN),
            subject_token_type: token_type::ID_TOKEN.to_owned(),
            credential: Some("federation".to_owned()),
            ..ExchangeRequest::default()
        },
        &options,
    )
    .await
    .expect("ExchangeToken with a credential");
    assert_eq!(token.principal, PRINCIPAL);
    assert_eq!(token.credential, "federation");
    let sent = broker.exchange_requests().pop().expect("a request");
    assert_eq!(
        (sent.audience.as_str(), sent.options),
        ("", None),
        "nothing set, nothing sent"
    );

    // Downscoping an access token from GetAccessToken, with a boundary from Google's JSON.
    let access_token = get_access_token(&client, &TokenRequest::default(), &options)
        .await
        .expect("GetAccessToken");
    let boundary = parse_access_boundary(
        r#"{"accessBoundary": {"accessBoundaryRules": [{
            "availableResource": "//storage.googleapis.com/projects/_/buckets/reports",
            "availablePermissions": ["inRole:roles/storage.objectViewer"],
            "availabilityCondition": {
                "expression": "resource.name.startsWith('projects/_/buckets/reports/objects/2026/')",
                "title": "2026 only"}}]}}"#,
    )
    .expect("a boundary");
    assert_eq!(boundary, bucket_reader());
    let downscoped = exchange_token(
        &client,
        &ExchangeRequest::downscoping(access_token.token.clone(), boundary),
        &options,
    )
    .await
    .expect("downscoping");
    assert_eq!(downscoped.secret(), FakeBroker::downscoped_token(4));
    assert_eq!(
        downscoped.expire_time, None,
        "expires with the access token"
    );
    assert_eq!(downscoped.expires_in(base_time()), None);
    assert!(downscoped.principal.is_empty() && downscoped.credential.is_empty());
    let sent = broker.exchange_requests().pop().expect("a request");
    assert_eq!(sent.subject_token, access_token.secret());
    assert_eq!(
        sent.subject_token_type,
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(
        sent.options.and_then(|o| o.access_boundary),
        Some(bucket_reader())
    );
    assert!(sent.audience.is_empty() && sent.scopes.is_empty());
    assert_eq!(broker.exchange_requests().len(), 3);
}

#[tokio::test]
async fn exchange_token_errors_are_decoded_retried_and_free_of_the_subject_token() {
    let pki = Pki::new("exchange-errors");
    let broker = FakeBroker::new(base_time() + HOUR);
    let client = client_for(&pki, &broker).await;
    let request = ExchangeRequest {
        subject_token: Secret::new(SUBJECT_TOKEN),
        subject_token_type: token_type::SAML2.to_owned(),
        audience: Some(AUDIENCE.to_owned()),
        ..ExchangeRequest::default()
    };

    // Retried like every call.
    broker.fail_with([
        common::upstream_unavailable(Duration::from_millis(100)),
        tonic::Status::resource_exhausted("slow down"),
    ]);
    let token = exchange_token(&client, &request, &fast_retries())
        .await
        .expect("exchanged after two retries");
    assert_eq!(token.secret(), FakeBroker::exchanged_token(1));
    assert_eq!(broker.exchange_requests().len(), 3);

    // Not retried: a denial, and the broker's own refusals of the request's shape.
    broker.fail_with([common::policy_denied("audiences", "ci", AUDIENCE)]);
    let error = exchange_token(&client, &request, &fast_retries())
        .await
        .expect_err("denied");
    assert_eq!(
        error.status().and_then(|s| s.get("rule")),
        Some("audiences")
    );
    assert!(!format!("{error} {error:?}").contains("subject-token-secret"));
    assert_eq!(broker.exchange_requests().len(), 4);

    let error = exchange_token(
        &client,
        &ExchangeRequest {
            subject_token_type: "urn:ietf:params:oauth:token-type:mtls".to_owned(),
            ..request.clone()
        },
        &fast_retries(),
    )
    .await
    .expect_err("an unsupported type");
    let status = error.status().expect("a status");
    assert_eq!(status.code, Code::InvalidArgument);
    assert_eq!(status.reason.as_deref(), Some("UNSUPPORTED_TOKEN_TYPE"));
    assert_eq!(status.get("field"), Some("subject_token_type"));

    let error = exchange_token(
        &client,
        &ExchangeRequest::downscoping(Secret::new("ya29.t"), CredentialAccessBoundary::default()),
        &fast_retries(),
    )
    .await
    .expect_err("a boundary without rules");
    assert_eq!(
        error.status().and_then(|s| s.get("field")),
        Some("options.access_boundary.access_boundary_rules")
    );
    assert_eq!(broker.exchange_requests().len(), 6);

    // A response without a token is refused, and not retried.
    broker.set_malformed(true);
    let error = exchange_token(&client, &request, &fast_retries())
        .await
        .expect_err("malformed");
    assert_eq!(
        error,
        ClientError::Protocol("ExchangeTokenResponse has an empty access_token".to_owned())
    );
    assert_eq!(broker.exchange_requests().len(), 7);
}
