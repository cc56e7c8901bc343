//! What one caller can cost: its token bucket, its distinct cache keys, the negative cache of
//! Google's refusals, and the RPCs its grant names.

use std::time::Duration;

use broker_proto::tokenbroker::v1 as pb;
use e2e::*;
use gcp_emulator::Endpoint;
use tonic::Code;

/// The default policy, with the reader limited to 2 requests a second (burst 3) and the app
/// to 4 distinct tokens per window.
fn limited_policy() -> String {
    DEFAULT_POLICY
        .replace(
            "scopes = [\"https://www.googleapis.com/auth/devstorage.read_only\"]",
            "scopes = [\"https://www.googleapis.com/auth/devstorage.read_only\"]\nrate_limit = { per_second = 2, burst = 3 }",
        )
        .replace(
            "subject_domains = [\"example.com\"]",
            "subject_domains = [\"example.com\"]\ndistinct_keys = 4\nrate_limit = { per_second = 5000, burst = 5000 }",
        )
}

#[tokio::test]
async fn a_caller_over_its_rate_is_refused_and_others_are_unaffected() {
    let harness = Harness::start(Options {
        policy: limited_policy(),
        ..Options::default()
    })
    .await;
    let mut reader = harness
        .client(Some(&harness.identity(READER)))
        .await
        .expect("connect");
    let mut app = harness
        .client(Some(&harness.identity(APP)))
        .await
        .expect("connect");
    for _ in 0..3 {
        reader
            .get_access_token(request(&[STORAGE_READ]))
            .await
            .expect("within the burst");
    }
    let status = reader
        .get_access_token(request(&[STORAGE_READ]))
        .await
        .expect_err("over the rate");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let (reason, metadata) = error_info(&status);
    assert_eq!(
        (reason.as_str(), metadata["limit"].as_str()),
        ("RATE_LIMITED", "caller")
    );
    let delay = retry_delay(&status).expect("RetryInfo");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_millis(500),
        "{delay:?}"
    );

    // The app, another caller, is not affected.
    for _ in 0..20 {
        app.get_access_token(request(&[CLOUD_PLATFORM]))
            .await
            .expect("unaffected");
    }
    // The reader is served again once the bucket refilled.
    tokio::time::sleep(delay + Duration::from_millis(50)).await;
    reader
        .get_access_token(request(&[STORAGE_READ]))
        .await
        .expect("refilled");
    harness.stop().await;
}

#[tokio::test]
async fn a_caller_cannot_mint_a_token_for_every_scope_subset() {
    let harness = Harness::start(Options {
        policy: limited_policy(),
        ..Options::default()
    })
    .await;
    let mut app = harness
        .client(Some(&harness.identity(APP)))
        .await
        .expect("connect");
    let storage = |scope: &str| format!("https://www.googleapis.com/auth/devstorage.{scope}");
    for scope in ["a", "b", "c", "d"] {
        app.get_access_token(request(&[&storage(scope)]))
            .await
            .expect("under the cap");
    }
    let status = app
        .get_access_token(request(&[&storage("e")]))
        .await
        .expect_err("a fifth distinct token");
    assert_eq!(status.code(), Code::ResourceExhausted);
    let (reason, metadata) = error_info(&status);
    assert_eq!(
        (reason.as_str(), metadata["limit"].as_str()),
        ("RATE_LIMITED", "caller_keys")
    );
    assert!(
        status.message().contains("4 different tokens"),
        "{}",
        status.message()
    );
    assert!(retry_delay(&status).is_some_and(|d| d > Duration::from_secs(500)));
    // Tokens it already has stay available.
    let again = app
        .get_access_token(request(&[&storage("a")]))
        .await
        .expect("a known token")
        .into_inner();
    assert!(again.cache_hit);
    assert_eq!(harness.emulator.count(Endpoint::OAuth2Token), 4);
    harness.stop().await;
}

#[tokio::test]
async fn a_request_google_refused_is_not_sent_again_within_the_negative_ttl() {
    let harness = Harness::start(Options {
        policy: limited_policy(),
        cache: "[cache]\nnegative_ttl = \"1s\"\n".into(),
        ..Options::default()
    })
    .await;
    harness
        .emulator
        .inject_fault(fault(
            serde_json::json!({"endpoint": "oauth2.token", "status": 400,
            "error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
        ))
        .expect("fault");
    let mut app = harness
        .client(Some(&harness.identity(APP)))
        .await
        .expect("connect");
    for _ in 0..1000 {
        let status = app
            .get_access_token(request(&[CLOUD_PLATFORM]))
            .await
            .expect_err("rejected");
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(error_info(&status).0, "UPSTREAM_REJECTED");
    }
    assert_eq!(
        harness.emulator.count(Endpoint::OAuth2Token),
        1,
        "1000 identical rejected requests, one call to Google"
    );

    // After the negative TTL the request is tried again; once Google accepts it, it is served.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect_err("still rejected");
    assert_eq!(harness.emulator.count(Endpoint::OAuth2Token), 2);
    harness.emulator.clear_faults();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("accepted now");

    // Transient failures are not remembered: each call retries Google (3 attempts each).
    harness
        .emulator
        .inject_fault(fault(
            serde_json::json!({"endpoint": "oauth2.token", "status": 503}),
        ))
        .expect("fault");
    let before = harness.emulator.count(Endpoint::OAuth2Token);
    for _ in 0..2 {
        app.get_access_token(request(&[STORAGE_READ]))
            .await
            .expect_err("unavailable");
    }
    assert!(harness.emulator.count(Endpoint::OAuth2Token) - before >= 4);
    harness.stop().await;
}

#[tokio::test]
async fn a_grant_allows_only_the_rpcs_it_names() {
    let policy = format!(
        "{DEFAULT_POLICY}
[[grants]]
name = \"signers\"
credential = \"sa\"
callers = [{{ spiffe_prefix = \"spiffe://example.org/ns/prod/signers/\" }}]
rpcs = [\"SignJwt\", \"SignBlob\"]
scopes = [\"{CLOUD_PLATFORM}\"]
"
    );
    let harness = Harness::start(Options {
        policy,
        ..Options::default()
    })
    .await;
    // The default policy's grants list no RPCs: GetAccessToken only.
    let mut app = harness
        .client(Some(&harness.identity(APP)))
        .await
        .expect("connect");
    app.get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("GetAccessToken is the default");

    let mut signer = harness
        .client(Some(
            &harness.identity("spiffe://example.org/ns/prod/signers/release"),
        ))
        .await
        .expect("connect");
    let status = signer
        .get_access_token(pb::GetAccessTokenRequest {
            credential: "sa".into(),
            ..request(&[CLOUD_PLATFORM])
        })
        .await
        .expect_err("not an RPC of its grant");
    assert_eq!(status.code(), Code::PermissionDenied);
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "POLICY_DENIED");
    assert_eq!(metadata["rule"], "rpc");
    assert_eq!(metadata["grant"], "signers");
    assert_eq!(metadata["value"], "GetAccessToken");
    assert_eq!(harness.emulator.count(Endpoint::OAuth2Token), 1);
    harness.stop().await;
}
