//! GetAccessToken end to end: mTLS identity, policy, cache, the service-account backend against
//! the emulator over HTTP.

use std::time::{Duration, SystemTime};

use broker_proto::tokenbroker::v1 as pb;
use e2e::*;
use gcp_emulator::Endpoint;
use tonic::Code;

#[tokio::test]
async fn a_workload_gets_a_real_token_that_google_recognises() {
    let harness = Harness::start(Options::default()).await;
    let mut client = harness
        .client(Some(&harness.identity(APP)))
        .await
        .expect("connect");
    let response = client
        .get_access_token(request(&[STORAGE_READ, CLOUD_PLATFORM, STORAGE_READ]))
        .await
        .expect("token")
        .into_inner();

    assert!(response.access_token.starts_with("ya29."));
    assert_eq!(response.token_type, "Bearer");
    assert_eq!(response.principal, BROKER_SA);
    assert_eq!(response.credential, "sa");
    assert_eq!(response.granted_scopes, vec![CLOUD_PLATFORM, STORAGE_READ]);
    assert!(!response.cache_hit);
    let expire = response.expire_time.expect("expire_time");
    assert_eq!(expire.nanos, 0);

    let info = harness.tokeninfo(&response.access_token).await;
    assert_eq!(info["principal"], format!("serviceAccount:{BROKER_SA}"));
    assert_eq!(info["grant"], "jwt-bearer");
    assert_eq!(info["scope"], format!("{CLOUD_PLATFORM} {STORAGE_READ}"));
    let emulator_exp: i64 = info["exp"].as_str().expect("exp").parse().expect("number");
    assert!(
        (emulator_exp - expire.seconds).abs() <= 2,
        "{emulator_exp} vs {}",
        expire.seconds
    );

    let again = client
        .get_access_token(request(&[CLOUD_PLATFORM, STORAGE_READ]))
        .await
        .expect("token")
        .into_inner();
    assert!(again.cache_hit);
    assert_eq!(again.access_token, response.access_token);
    assert_eq!(harness.emulator.count(Endpoint::OAuth2Token), 1);
    harness.stop().await;
}

#[tokio::test]
async fn connections_without_a_trusted_valid_certificate_are_refused() {
    let harness = Harness::start(Options::default()).await;
    // No client certificate: the handshake (or the first read) fails.
    assert_refused(&harness, None).await;

    // A certificate from another CA.
    let rogue = token_broker::pki::CertificateAuthority::new("rogue").expect("ca");
    let rogue_identity = ClientIdentity::from_issued(
        &rogue
            .issue(&token_broker::pki::LeafSpec::spiffe_client(APP))
            .expect("cert"),
    );
    assert_refused(&harness, Some(&rogue_identity)).await;

    // Expired, and not yet valid.
    let now = SystemTime::now();
    for (from, until) in [
        (
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        ),
        (
            now + Duration::from_secs(3600),
            now + Duration::from_secs(7200),
        ),
    ] {
        assert_refused(&harness, Some(&harness.identity_valid(APP, from, until))).await;
    }
    assert_eq!(harness.emulator.count(Endpoint::OAuth2Token), 0);

    // A certificate without any identity the policy can use.
    let anonymous = ClientIdentity::from_issued(
        &harness
            .ca
            .issue(&token_broker::pki::LeafSpec {
                client: true,
                ..Default::default()
            })
            .expect("cert"),
    );
    let mut client = harness.client(Some(&anonymous)).await.expect("connect");
    let status = client
        .get_access_token(request(&[]))
        .await
        .expect_err("no identity");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(error_info(&status).0, "CLIENT_CERTIFICATE_REQUIRED");
    harness.stop().await;
}

#[tokio::test]
async fn policy_denials_name_the_grant_and_the_rule() {
    let harness = Harness::start(Options::default()).await;
    let mut reader = harness
        .client(Some(&harness.identity(READER)))
        .await
        .expect("connect");
    let status = reader
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect_err("denied");
    assert_eq!(status.code(), Code::PermissionDenied);
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "POLICY_DENIED");
    assert_eq!(metadata["rule"], "scopes");
    assert_eq!(metadata["grant"], "readers");
    assert_eq!(metadata["value"], CLOUD_PLATFORM);
    assert_eq!(metadata["caller"], READER);
    assert!(
        reader
            .get_access_token(request(&[STORAGE_READ]))
            .await
            .is_ok()
    );

    let mut stranger = harness
        .client(Some(&harness.identity(STRANGER)))
        .await
        .expect("connect");
    let status = stranger
        .get_access_token(request(&[STORAGE_READ]))
        .await
        .expect_err("denied");
    let (_, metadata) = error_info(&status);
    assert_eq!(metadata["rule"], "no_grant");
    assert!(!metadata.contains_key("grant"));

    // A credential the caller has no grant for is denied whether or not it exists: the
    // caller learns nothing about the broker's configuration.
    let mut app = harness
        .client(Some(&harness.identity(APP)))
        .await
        .expect("connect");
    for name in ["nope", "sa-prod"] {
        let status = app
            .get_access_token(pb::GetAccessTokenRequest {
                credential: name.into(),
                ..request(&[])
            })
            .await
            .expect_err("no grant");
        assert_eq!(status.code(), Code::PermissionDenied);
        let (reason, metadata) = error_info(&status);
        assert_eq!(
            (reason.as_str(), metadata["rule"].as_str()),
            ("POLICY_DENIED", "no_grant")
        );
    }
    assert_eq!(
        harness.emulator.count(Endpoint::OAuth2Token),
        1,
        "only the allowed reader request went upstream"
    );
    harness.stop().await;
}

#[tokio::test]
async fn malformed_requests_name_the_field() {
    let harness = Harness::start(Options::default()).await;
    let mut client = harness
        .client(Some(&harness.identity(APP)))
        .await
        .expect("connect");
    let seconds = |s| {
        Some(prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
    };
    let cases = [
        (
            request(&[CLOUD_PLATFORM, "cloud-platform"]),
            Code::InvalidArgument,
            "INVALID_SCOPE",
            "scopes[1]",
        ),
        (
            pb::GetAccessTokenRequest {
                lifetime: seconds(30),
                ..request(&[])
            },
            Code::InvalidArgument,
            "INVALID_LIFETIME",
            "lifetime",
        ),
        (
            pb::GetAccessTokenRequest {
                lifetime: Some(prost_types::Duration {
                    seconds: 600,
                    nanos: 1,
                }),
                ..request(&[])
            },
            Code::InvalidArgument,
            "INVALID_LIFETIME",
            "lifetime",
        ),
        (
            pb::GetAccessTokenRequest {
                min_remaining_validity: seconds(3600),
                ..request(&[])
            },
            Code::InvalidArgument,
            "INVALID_LIFETIME",
            "min_remaining_validity",
        ),
        (
            pb::GetAccessTokenRequest {
                subject: "not-an-email".into(),
                ..request(&[])
            },
            Code::InvalidArgument,
            "INVALID_FIELD",
            "subject",
        ),
        (
            pb::GetAccessTokenRequest {
                credential: "Not_A_Name".into(),
                ..request(&[])
            },
            Code::InvalidArgument,
            "INVALID_FIELD",
            "credential",
        ),
        (
            pb::GetAccessTokenRequest {
                access_boundary: Some(pb::CredentialAccessBoundary {
                    access_boundary_rules: vec![],
                }),
                ..request(&[])
            },
            Code::InvalidArgument,
            "INVALID_ACCESS_BOUNDARY",
            "access_boundary.access_boundary_rules",
        ),
        (
            pb::GetAccessTokenRequest {
                lifetime: seconds(7200),
                ..request(&[])
            },
            Code::FailedPrecondition,
            "CREDENTIAL_FLOW_UNSUPPORTED",
            "",
        ),
    ];
    for (request, code, reason, field) in cases {
        let status = client
            .get_access_token(request.clone())
            .await
            .expect_err("invalid");
        let (got_reason, metadata) = error_info(&status);
        assert_eq!(
            (status.code(), got_reason.as_str()),
            (code, reason),
            "{request:?}: {status:?}"
        );
        if !field.is_empty() {
            assert_eq!(metadata["field"], field, "{request:?}");
        }
    }
    assert_eq!(harness.emulator.count(Endpoint::OAuth2Token), 0);
    harness.stop().await;
}

#[tokio::test]
async fn domain_wide_delegation_is_allowed_only_for_granted_subjects() {
    let harness = Harness::start(Options::default()).await;
    let mut client = harness
        .client(Some(&harness.identity(APP)))
        .await
        .expect("connect");
    let response = client
        .get_access_token(pb::GetAccessTokenRequest {
            subject: "alice@example.com".into(),
            ..request(&[DIRECTORY_READ])
        })
        .await
        .expect("delegated")
        .into_inner();
    let info = harness.tokeninfo(&response.access_token).await;
    assert_eq!(info["subject"], "alice@example.com");
    assert_eq!(response.principal, "alice@example.com");

    let status = client
        .get_access_token(pb::GetAccessTokenRequest {
            subject: "mallory@evil-example.com".into(),
            ..request(&[DIRECTORY_READ])
        })
        .await
        .expect_err("denied");
    let (reason, metadata) = error_info(&status);
    assert_eq!(
        (status.code(), reason.as_str(), metadata["rule"].as_str()),
        (Code::PermissionDenied, "POLICY_DENIED", "subjects")
    );
    harness.stop().await;
}

#[tokio::test]
async fn authorized_callers_share_one_token_and_concurrent_misses_make_one_call() {
    let harness = Harness::start(Options::default()).await;
    let app = harness.identity(APP);
    let worker = harness.identity(OTHER_APP);

    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = harness
            .client(Some(if i % 2 == 0 { &app } else { &worker }))
            .await
            .expect("connect");
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            client
                .get_access_token(request(&[CLOUD_PLATFORM]))
                .await
                .map(|r| r.into_inner().access_token)
        }));
    }
    let mut tokens = std::collections::HashSet::new();
    for task in tasks {
        tokens.insert(task.await.expect("join").expect("token"));
    }
    assert_eq!(tokens.len(), 1, "every caller got the same token");
    assert_eq!(
        harness.emulator.count(Endpoint::OAuth2Token),
        1,
        "exactly one upstream call"
    );
    harness.stop().await;
}

#[tokio::test]
async fn google_failures_are_retried_then_unavailable_with_retry_info() {
    let harness = Harness::start(Options::default()).await;
    let mut client = harness
        .client(Some(&harness.identity(APP)))
        .await
        .expect("connect");
    // Tokens that live 1000 s: fresh for the default 5 minutes, short of an 1800 s minimum.
    harness
        .emulator
        .set_token_lifetime(Some(Duration::from_secs(1000)));

    // Two 500s, then success: retried within the call (max_attempts = 3).
    harness
        .emulator
        .inject_fault(fault(
            serde_json::json!({"endpoint": "oauth2.token", "status": 500, "times": 2}),
        ))
        .expect("fault");
    let token = client
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("retried to success")
        .into_inner();
    assert_eq!(harness.emulator.count(Endpoint::OAuth2Token), 3);

    // A timeout (the emulator stalls past the HTTP request timeout) is transient too.
    harness
        .emulator
        .inject_fault(fault(
            serde_json::json!({"endpoint": "oauth2.token", "delay_ms": 2500, "times": 1}),
        ))
        .expect("fault");
    client
        .get_access_token(request(&[STORAGE_READ]))
        .await
        .expect("retried after a timeout");

    // Google keeps failing: UNAVAILABLE with RetryInfo, after max_attempts calls.
    harness
        .emulator
        .inject_fault(fault(
            serde_json::json!({"endpoint": "oauth2.token", "status": 503}),
        ))
        .expect("fault");
    let before = harness.emulator.count(Endpoint::OAuth2Token);
    let status = client
        .get_access_token(request(&[DIRECTORY_READ]))
        .await
        .expect_err("unavailable");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "UPSTREAM_UNAVAILABLE");
    assert_eq!(metadata["upstream"], harness.emulator.addr().to_string());
    assert!(retry_delay(&status).is_some(), "RetryInfo present");
    assert_eq!(
        harness.emulator.count(Endpoint::OAuth2Token) - before,
        3,
        "bounded retries"
    );

    // A Retry-After longer than the call's deadline: no waiting past it, and the client is told.
    harness.emulator.clear_faults();
    harness
        .emulator
        .inject_fault(fault(
            serde_json::json!({"endpoint": "oauth2.token", "status": 429, "retry_after_secs": 7}),
        ))
        .expect("fault");
    let before = harness.emulator.count(Endpoint::OAuth2Token);
    let started = std::time::Instant::now();
    let status = client
        .get_access_token(request(&[DIRECTORY_READ]))
        .await
        .expect_err("unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not sleep past the deadline"
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        retry_delay(&status),
        Some(Duration::from_secs(7)),
        "Google's Retry-After is passed on"
    );
    assert_eq!(harness.emulator.count(Endpoint::OAuth2Token) - before, 1);

    // The token cached earlier is still served while Google fails.
    let cached = client
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("cached token")
        .into_inner();
    assert_eq!(cached.access_token, token.access_token);
    assert!(cached.cache_hit);
    assert!(!cached.last_known_good);

    // A token whose refresh keeps failing is served until it really expires, marked as the
    // last known good token. (4-second tokens: callers need half a lifetime left, so after 2.5 s
    // it must be refreshed, and Google fails.)
    harness.emulator.clear_faults();
    harness
        .emulator
        .set_token_lifetime(Some(Duration::from_secs(4)));
    let full_control = "https://www.googleapis.com/auth/devstorage.full_control";
    let short = client
        .get_access_token(request(&[full_control]))
        .await
        .expect("a short-lived token")
        .into_inner();
    harness
        .emulator
        .inject_fault(fault(
            serde_json::json!({"endpoint": "oauth2.token", "status": 503}),
        ))
        .expect("fault");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stale = client
        .get_access_token(request(&[full_control]))
        .await
        .expect("last known good beats no token")
        .into_inner();
    assert_eq!(stale.access_token, short.access_token);
    assert!(stale.last_known_good, "marked as the last known good token");
    assert!(!stale.cache_hit, "not reported as a cache hit");
    harness.stop().await;
}

#[tokio::test]
async fn google_refusals_are_permanent_and_not_retried() {
    let harness = Harness::start(Options::default()).await;
    let mut client = harness
        .client(Some(&harness.identity(APP)))
        .await
        .expect("connect");
    harness
        .emulator
        .inject_fault(fault(
            serde_json::json!({"endpoint": "oauth2.token", "status": 400,
            "error": "invalid_scope", "error_description": "Invalid OAuth scope.", "times": 1}),
        ))
        .expect("fault");
    let status = client
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect_err("rejected");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(error_info(&status).0, "UPSTREAM_REJECTED");
    assert!(retry_delay(&status).is_none());
    assert_eq!(harness.emulator.count(Endpoint::OAuth2Token), 1, "no retry");
    harness.stop().await;
}
