//! GenerateIdToken end to end, by every path: a service-account key (JWT-bearer grant with
//! `target_audience`), the metadata server, an `impersonated` credential, a target service
//! account (IAM generateIdToken) with and without a delegation chain. Every token is shown to
//! the emulator's ID-token-protected function, which accepts it only for its own URL.

use broker_proto::tokenbroker::v1 as pb;
use e2e::*;
use gcp_emulator::Endpoint;
use tonic::Code;

const CREDENTIALS: &str = r#"
[[credentials]]
name = "md"
kind = "metadata"

[[credentials]]
name = "imp-reader"
kind = "impersonated"
base = "sa"
target = "reader@dev-project.iam.gserviceaccount.com"

[[credentials]]
name = "user"
kind = "authorized_user"
file = "emulator/users/dev-user.json"
"#;

/// `app` may get ID tokens for the function (exactly) and below `https://api.example.com/`,
/// of `sa` (itself, reader@ and chained@ through reader@) and of the other credentials;
/// `reader` may only get access tokens.
const POLICY: &str = r#"
[[grants]]
name = "ids"
credential = "sa"
default = true
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["GenerateIdToken"]
service_accounts = ["reader@dev-project.iam.gserviceaccount.com", "chained@dev-project.iam.gserviceaccount.com"]
delegates = [["reader@dev-project.iam.gserviceaccount.com"]]
audiences = ["${FUNCTION_URL}"]
audience_prefixes = ["https://api.example.com/"]

[[grants]]
name = "ids-metadata"
credential = "md"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["GenerateIdToken"]
audiences = ["${FUNCTION_URL}"]

[[grants]]
name = "ids-impersonated"
credential = "imp-reader"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["GenerateIdToken"]
audiences = ["${FUNCTION_URL}"]

[[grants]]
name = "ids-user"
credential = "user"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["GenerateIdToken"]
service_accounts = ["reader@dev-project.iam.gserviceaccount.com"]
audiences = ["${FUNCTION_URL}"]

[[grants]]
name = "tokens-only"
credential = "sa"
default = true
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/reader" }]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
"#;

/// Another audience the policy allows (by prefix): not the function's.
const API: &str = "https://api.example.com/v1";

async fn start() -> Harness {
    Harness::start(Options {
        policy: POLICY.to_owned(),
        extra_config: CREDENTIALS.to_owned(),
        world: Some(chain_world()),
        ..Options::default()
    })
    .await
}

fn id_token(audience: &str) -> pb::GenerateIdTokenRequest {
    pb::GenerateIdTokenRequest {
        audience: audience.to_owned(),
        ..Default::default()
    }
}

/// Checks an ID token: Google's issuer, the audience, `expire_time` = its `exp`, the `email`
/// claim (present exactly when `email` is given), and what the function says of it: 200 and
/// the caller for the function's own URL, 403 for any other audience. Returns its claims.
async fn check(
    harness: &Harness,
    response: &pb::GenerateIdTokenResponse,
    audience: &str,
    email: Option<&str>,
) -> serde_json::Value {
    let claims = jwt_claims(&response.id_token);
    assert_eq!(jwt_header(&response.id_token)["alg"], "RS256");
    assert_eq!(claims["iss"], "https://accounts.google.com");
    assert_eq!(claims["aud"], audience);
    let expire = response.expire_time.expect("expire_time");
    assert_eq!(expire.nanos, 0);
    assert_eq!(claims["exp"].as_i64(), Some(expire.seconds), "{claims}");
    let now = unix_now();
    assert!(
        (3500..=3601).contains(&(expire.seconds - now)),
        "Google's ID tokens live an hour: {} s left",
        expire.seconds - now
    );
    assert_eq!(claims["email"].as_str(), email, "{claims}");
    assert_eq!(
        claims.get("email_verified").is_some(),
        email.is_some(),
        "{claims}"
    );

    let (status, body) = harness.call_function(&response.id_token).await;
    if audience == harness.emulator.function_url() {
        assert_eq!(status, 200, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let caller = email.map_or_else(|| claims["sub"].clone(), serde_json::Value::from);
        assert_eq!(body["caller"], caller);
    } else {
        assert_eq!(status, 403, "the function refuses another audience: {body}");
    }
    claims
}

#[tokio::test]
async fn a_key_mints_id_tokens_the_function_accepts_cached_per_audience() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let function = harness.emulator.function_url();

    let first = client
        .generate_id_token(id_token(&function))
        .await
        .expect("ID token")
        .into_inner();
    assert_eq!(first.principal, BROKER_SA);
    assert_eq!(first.credential, "sa", "the default grant's credential");
    assert!(!first.cache_hit);
    assert!(!first.last_known_good);
    // The key flow always includes the email.
    check(&harness, &first, &function, Some(BROKER_SA)).await;
    assert_eq!(harness.emulator.count(Endpoint::OAuth2Token), 1);

    let again = client
        .generate_id_token(id_token(&function))
        .await
        .expect("cached")
        .into_inner();
    assert!(again.cache_hit);
    assert_eq!(again.id_token, first.id_token);
    assert_eq!(harness.emulator.count(Endpoint::OAuth2Token), 1);

    // Another audience is another token.
    let api = client
        .generate_id_token(id_token(API))
        .await
        .expect("ID token")
        .into_inner();
    assert!(!api.cache_hit);
    assert_ne!(api.id_token, first.id_token);
    check(&harness, &api, API, Some(BROKER_SA)).await;
    assert_eq!(harness.emulator.count(Endpoint::OAuth2Token), 2);
    let api_again = client
        .generate_id_token(id_token(API))
        .await
        .expect("cached")
        .into_inner();
    assert!(api_again.cache_hit);
    assert_eq!(api_again.id_token, api.id_token);

    // No token at all, or an access token, is not an ID token.
    let access = harness
        .client_for(READER)
        .await
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("access token")
        .into_inner();
    assert_eq!(harness.call_function(&access.access_token).await.0, 401);
    harness.stop().await;
}

#[tokio::test]
async fn the_metadata_server_and_an_impersonated_credential_mint_their_own() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let function = harness.emulator.function_url();

    let before = harness.emulator.count(Endpoint::Metadata);
    let metadata = client
        .generate_id_token(pb::GenerateIdTokenRequest {
            credential: "md".into(),
            ..id_token(&function)
        })
        .await
        .expect("metadata ID token")
        .into_inner();
    assert_eq!(metadata.principal, BROKER_SA);
    assert_eq!(metadata.credential, "md");
    // The metadata server always includes the email.
    check(&harness, &metadata, &function, Some(BROKER_SA)).await;
    assert_eq!(harness.emulator.count(Endpoint::Metadata), before + 1);

    let plain = client
        .generate_id_token(pb::GenerateIdTokenRequest {
            credential: "imp-reader".into(),
            ..id_token(&function)
        })
        .await
        .expect("impersonated ID token")
        .into_inner();
    assert_eq!(plain.principal, READER_SA);
    assert_eq!(plain.credential, "imp-reader");
    assert!(!plain.cache_hit);
    let claims = check(&harness, &plain, &function, None).await;
    assert_eq!(
        claims["sub"],
        harness
            .emulator
            .state()
            .world
            .service_account(READER_SA)
            .expect("reader@")
            .unique_id()
    );
    let with_email = client
        .generate_id_token(pb::GenerateIdTokenRequest {
            credential: "imp-reader".into(),
            include_email: true,
            ..id_token(&function)
        })
        .await
        .expect("impersonated ID token with email")
        .into_inner();
    assert!(!with_email.cache_hit, "include_email is part of the key");
    check(&harness, &with_email, &function, Some(READER_SA)).await;
    assert_eq!(harness.emulator.count(Endpoint::IamGenerateIdToken), 2);
    harness.stop().await;
}

#[tokio::test]
async fn target_service_accounts_with_and_without_email_and_through_a_chain() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let function = harness.emulator.function_url();
    let target = |email: &str, include_email: bool| pb::GenerateIdTokenRequest {
        target_service_account: email.to_owned(),
        include_email,
        ..id_token(&function)
    };

    let plain = client
        .generate_id_token(target(READER_SA, false))
        .await
        .expect("ID token of reader@")
        .into_inner();
    assert_eq!(plain.principal, READER_SA);
    assert_eq!(plain.credential, "sa");
    check(&harness, &plain, &function, None).await;

    let with_email = client
        .generate_id_token(target(READER_SA, true))
        .await
        .expect("ID token of reader@ with email")
        .into_inner();
    assert!(!with_email.cache_hit);
    check(&harness, &with_email, &function, Some(READER_SA)).await;
    let cached = client
        .generate_id_token(target(READER_SA, true))
        .await
        .expect("cached")
        .into_inner();
    assert!(cached.cache_hit);
    assert_eq!(cached.id_token, with_email.id_token);

    // broker@ -> reader@ -> chained@.
    let chained = client
        .generate_id_token(pb::GenerateIdTokenRequest {
            delegates: vec![READER_SA.into()],
            ..target(CHAINED_SA, true)
        })
        .await
        .expect("ID token through the chain")
        .into_inner();
    assert_eq!(chained.principal, CHAINED_SA);
    check(&harness, &chained, &function, Some(CHAINED_SA)).await;
    // Not directly: broker@ holds no role on chained@.
    let status = client
        .generate_id_token(target(CHAINED_SA, true))
        .await
        .expect_err("IAM refuses");
    let metadata = assert_error(&status, Code::PermissionDenied, "UPSTREAM_REJECTED");
    assert_eq!(metadata["upstream_error"], "IAM_PERMISSION_DENIED");
    assert_eq!(harness.emulator.count(Endpoint::IamGenerateIdToken), 4);

    // Any kind can be the base: the authorized user may try, and IAM says no (dev-user@ holds
    // no role on reader@).
    let status = client
        .generate_id_token(pb::GenerateIdTokenRequest {
            credential: "user".into(),
            ..target(READER_SA, false)
        })
        .await
        .expect_err("IAM refuses the user");
    let metadata = assert_error(&status, Code::PermissionDenied, "UPSTREAM_REJECTED");
    assert_eq!(metadata["upstream_error"], "IAM_PERMISSION_DENIED");
    assert_eq!(metadata["credential"], "user");
    harness.stop().await;
}

#[tokio::test]
async fn refusals_flows_policy_and_fields() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let function = harness.emulator.function_url();

    // A user's refresh token cannot mint ID tokens for arbitrary audiences.
    let status = client
        .generate_id_token(pb::GenerateIdTokenRequest {
            credential: "user".into(),
            ..id_token(&function)
        })
        .await
        .expect_err("not for users");
    let metadata = assert_error(
        &status,
        Code::FailedPrecondition,
        "CREDENTIAL_FLOW_UNSUPPORTED",
    );
    assert_eq!(metadata["flow"], "id_token");
    assert_eq!(metadata["credential"], "user");
    assert_eq!(metadata["credential_type"], "authorized_user");

    // Audiences: exact, or below a prefix that ends with '/'.
    for audience in [
        format!("{function}/other"),
        format!("{function}x"),
        "https://api.example.com".to_owned(),
        "https://api.example.com.evil.example/".to_owned(),
        "http://api.example.com/v1".to_owned(),
    ] {
        let status = client
            .generate_id_token(id_token(&audience))
            .await
            .expect_err(&audience);
        let metadata = assert_denied(&status, "audiences");
        assert_eq!(metadata["grant"], "ids");
    }
    // The other credentials' grants have no prefix.
    let status = client
        .generate_id_token(pb::GenerateIdTokenRequest {
            credential: "md".into(),
            ..id_token(API)
        })
        .await
        .expect_err("exact only");
    assert_denied(&status, "audiences");

    let status = client
        .generate_id_token(pb::GenerateIdTokenRequest {
            target_service_account: WRITER_SA.into(),
            ..id_token(&function)
        })
        .await
        .expect_err("writer@ is not granted");
    assert_denied(&status, "service_accounts");
    let status = client
        .generate_id_token(pb::GenerateIdTokenRequest {
            target_service_account: CHAINED_SA.into(),
            delegates: vec![WRITER_SA.into()],
            ..id_token(&function)
        })
        .await
        .expect_err("chain not granted");
    assert_denied(&status, "delegates");
    let status = harness
        .client_for(READER)
        .await
        .generate_id_token(id_token(&function))
        .await
        .expect_err("not this RPC");
    assert_denied(&status, "rpc");

    // Malformed fields.
    let cases = [
        (
            pb::GenerateIdTokenRequest {
                delegates: vec![READER_SA.into()],
                ..id_token(&function)
            },
            "INVALID_FIELD",
            "delegates",
        ),
        (id_token(""), "INVALID_FIELD", "audience"),
        (id_token("https://a b"), "INVALID_FIELD", "audience"),
        (
            id_token(&format!("https://api.example.com/{}", "a".repeat(2048))),
            "INVALID_FIELD",
            "audience",
        ),
        (
            pb::GenerateIdTokenRequest {
                target_service_account: "reader".into(),
                ..id_token(&function)
            },
            "INVALID_FIELD",
            "target_service_account",
        ),
        (
            pb::GenerateIdTokenRequest {
                min_remaining_validity: seconds(1801),
                ..id_token(&function)
            },
            "INVALID_LIFETIME",
            "min_remaining_validity",
        ),
    ];
    for (request, reason, field) in cases {
        let status = client
            .generate_id_token(request)
            .await
            .expect_err("invalid");
        assert_invalid(&status, reason, field);
    }
    let counters = harness.emulator.counters();
    for endpoint in [Endpoint::OAuth2Token, Endpoint::IamGenerateIdToken] {
        assert_eq!(
            counters.get(&endpoint).copied().unwrap_or(0),
            0,
            "{counters:?}"
        );
    }

    // IAM failing: UNAVAILABLE with RetryInfo.
    harness
        .emulator
        .inject_fault(fault(serde_json::json!({
            "endpoint": "iam.generateIdToken", "status": 503
        })))
        .expect("fault");
    let status = client
        .generate_id_token(pb::GenerateIdTokenRequest {
            target_service_account: READER_SA.into(),
            ..id_token(&function)
        })
        .await
        .expect_err("unavailable");
    let metadata = assert_error(&status, Code::Unavailable, "UPSTREAM_UNAVAILABLE");
    assert_eq!(metadata["upstream_status"], "503");
    assert!(retry_delay(&status).is_some());
    harness.stop().await;
}
