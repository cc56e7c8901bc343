//! ExchangeToken end to end, against the emulator's Security Token Service: plain federation
//! of every subject-token type the emulator verifies (OIDC JWTs and ID tokens, signed AWS
//! requests; SAML is refused by its providers), an `external_account` credential shaping the
//! exchange and impersonating, downscoping a broker-issued token, every policy rule of the RPC,
//! Google's refusals, malformed requests, and the STS request itself compared field by field
//! with what Google documents. Nothing is ever cached.

use std::time::SystemTime;

use broker_proto::tokenbroker::v1 as pb;
use e2e::*;
use gcp_emulator::world::Provider;
use gcp_emulator::{Endpoint, World};
use serde_json::json;
use tonic::Code;

/// A second OIDC provider of `dev-pool` whose attribute condition admits only the
/// repository `org/app`.
const CONDITIONED: &str = "conditioned-oidc";

/// `app` may make plain exchanges with every provider of `dev-pool` and `dev-workforce` (all
/// federation token types), may downscope anything, and may use two `external_account`
/// credentials and (to show it cannot) `sa`; `worker` may exchange only JWTs of `dev-oidc`
/// and downscope only within a bucket; `reader` has a default grant and no plain-exchange
/// grant.
const POLICY: &str = r#"
[[grants]]
name = "tokens"
credential = "sa"
default = true
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }, { spiffe_id = "spiffe://example.org/ns/prod/sa/worker" }]
rpcs = ["GetAccessToken", "ExchangeToken"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
scope_prefixes = ["https://www.googleapis.com/auth/devstorage."]
subject_token_types = ["urn:ietf:params:oauth:token-type:jwt"]

[[grants]]
name = "readers"
credential = "sa"
default = true
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/reader" }]
scopes = ["https://www.googleapis.com/auth/devstorage.read_only"]

[[grants]]
name = "federation"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["ExchangeToken"]
audience_prefixes = [
  "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/dev-pool/",
  "//iam.googleapis.com/locations/global/workforcePools/dev-workforce/",
]
subject_token_types = [
  "urn:ietf:params:oauth:token-type:jwt",
  "urn:ietf:params:oauth:token-type:id_token",
  "urn:ietf:params:oauth:token-type:saml2",
  "urn:ietf:params:aws:token-type:aws4_request",
]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
scope_prefixes = ["https://www.googleapis.com/auth/devstorage."]

[[grants]]
name = "downscoping"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["ExchangeToken"]
subject_token_types = ["urn:ietf:params:oauth:token-type:access_token"]

[[grants]]
name = "ext-reader"
credential = "ext-reader"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["ExchangeToken"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
subject_token_types = ["urn:ietf:params:oauth:token-type:jwt"]
# A request that names the audience as well as the credential is checked against these
# (and must then be the credential's: dev-aws is allowed here only to show that).
audiences = [
  "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/dev-pool/providers/dev-oidc",
  "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/dev-pool/providers/dev-aws",
]

[[grants]]
name = "ext-workforce"
credential = "ext-workforce"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["ExchangeToken"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
subject_token_types = ["urn:ietf:params:oauth:token-type:jwt"]

[[grants]]
name = "narrow"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/worker" }]
rpcs = ["ExchangeToken"]
audiences = ["//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/dev-pool/providers/dev-oidc"]
subject_token_types = ["urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:access_token"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
access_boundary = { rules = [{ available_resource = "//storage.googleapis.com/projects/_/buckets/allowed", available_permissions = ["inRole:roles/storage.objectViewer", "inRole:roles/storage.objectCreator"] }] }

[[grants]]
name = "limited"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/limited" }]
rpcs = ["ExchangeToken"]
audiences = ["//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/dev-pool/providers/dev-oidc"]
subject_token_types = ["urn:ietf:params:oauth:token-type:jwt"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
rate_limit = { per_second = 0.001, burst = 1 }

[[grants]]
name = "short"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/short" }]
rpcs = ["ExchangeToken"]
audiences = ["//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/dev-pool/providers/dev-oidc"]
subject_token_types = ["urn:ietf:params:oauth:token-type:jwt"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
max_lifetime = "30m"
"#;

/// A caller whose plain-exchange grant allows one exchange, then one every 1000 s.
const LIMITED: &str = "spiffe://example.org/ns/prod/sa/limited";
/// A caller whose plain-exchange grant caps tokens at 30 minutes: shorter than Google's hour.
const SHORT: &str = "spiffe://example.org/ns/prod/sa/short";

/// `ext-reader`: `dev-oidc` impersonating reader@ (its own source, a file, is never read by
/// ExchangeToken); `ext-workforce`: the workforce provider with its OAuth client, STS at the
/// broker's configured URL.
const CREDENTIALS: &str = r#"
[[credentials]]
name = "ext-reader"
kind = "external_account"
file = "ext-reader.json"

[[credentials]]
name = "ext-workforce"
kind = "external_account"
file = "ext-workforce.json"
"#;

fn credential_files() -> Vec<(String, String)> {
    let reader = json!({
        "type": "external_account",
        "audience": workload_provider("dev-oidc"),
        "subject_token_type": JWT_TOKEN_TYPE,
        "token_url": "${EMULATOR_URL}/v1/token",
        "service_account_impersonation_url": format!(
            "${{EMULATOR_URL}}/v1/projects/-/serviceAccounts/{READER_SA}:generateAccessToken"
        ),
        "credential_source": {"file": "never-read-by-exchange-token"},
    });
    let workforce = json!({
        "type": "external_account",
        "audience": workforce_provider("dev-workforce-oidc"),
        "subject_token_type": JWT_TOKEN_TYPE,
        "client_id": "dev-workforce-client",
        "client_secret": "dev-workforce-secret",
        "credential_source": {"file": "never-read-by-exchange-token"},
    });
    vec![
        ("ext-reader.json".to_owned(), reader.to_string()),
        ("ext-workforce.json".to_owned(), workforce.to_string()),
    ]
}

/// The default world, plus [`CONDITIONED`] in `dev-pool`.
fn world() -> World {
    let mut world = World::default_world();
    world.workload_identity_pools[0].providers.push(Provider {
        issuer: Some("https://ci.dev.token-broker.local".to_owned()),
        generate_issuer_key: true,
        attribute_condition: Some("assertion.repository == 'org/app'".to_owned()),
        ..Provider::new(CONDITIONED)
    });
    world
}

async fn start() -> Harness {
    Harness::start(Options {
        policy: POLICY.to_owned(),
        extra_config: CREDENTIALS.to_owned(),
        files: credential_files(),
        world: Some(world()),
        ..Options::default()
    })
    .await
}

fn dev_oidc() -> String {
    workload_provider("dev-oidc")
}

/// The principal set the broker reports for plain workload federation.
fn workload_set() -> String {
    format!("principalSet://{WORKLOAD_POOL}/*")
}

/// Asserts that `expire` is `lifetime` seconds after a moment between `before` and now.
fn assert_expires(expire: Option<prost_types::Timestamp>, before: i64, lifetime: i64) -> i64 {
    let expire = expire.expect("expire_time");
    let after = unix_now();
    assert_eq!(expire.nanos, 0);
    assert!(
        expire.seconds >= before + lifetime - 1 && expire.seconds <= after + lifetime + 1,
        "expires at {}, asked between {before} and {after} for {lifetime} s",
        expire.seconds
    );
    expire.seconds
}

/// The number of STS requests so far.
fn sts_count(harness: &Harness) -> usize {
    harness.sts_requests().len()
}

#[tokio::test]
async fn oidc_jwts_and_id_tokens_become_federated_tokens() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;

    for (token_type, subject, scopes, expected_scope) in [
        (JWT_TOKEN_TYPE, "repo:org/app", vec![], CLOUD_PLATFORM),
        (
            ID_TOKEN_TYPE,
            "system:serviceaccount:ns:app",
            vec![STORAGE_READ.to_owned()],
            STORAGE_READ,
        ),
    ] {
        let subject_token = harness.oidc_token("dev-oidc", subject, serde_json::Value::Null);
        let before = unix_now();
        let response = client
            .exchange_token(pb::ExchangeTokenRequest {
                scopes,
                ..exchange(&subject_token, token_type, &dev_oidc())
            })
            .await
            .unwrap_or_else(|e| panic!("{token_type}: {e:?}"))
            .into_inner();
        assert_eq!(response.issued_token_type, ACCESS_TOKEN_TYPE);
        assert_eq!(response.token_type, "Bearer");
        assert_eq!(response.principal, workload_set());
        assert_eq!(
            response.credential, "",
            "a plain exchange uses no credential"
        );
        let expire = assert_expires(response.expire_time, before, 3600);
        assert_ne!(response.access_token, subject_token);

        let info = harness.tokeninfo(&response.access_token).await;
        assert_eq!(info["grant"], "sts-exchange", "{info}");
        assert_eq!(info["principal"], workload_principal(subject), "{info}");
        assert_eq!(info["scope"], expected_scope, "{info}");
        assert_eq!(
            info["aud"],
            format!(
                "{}/providers/dev-oidc",
                WORKLOAD_POOL.trim_start_matches("iam.googleapis.com/")
            ),
            "{info}"
        );
        let exp: i64 = info["exp"].as_str().expect("exp").parse().expect("number");
        assert!((exp - expire).abs() <= 1, "{info}");

        let sent = harness.sts_requests().pop().expect("an STS request");
        assert_eq!(sent.fields["subject_token_type"], token_type);
        assert_eq!(
            sent.fields["subject_token"]["sha256"],
            sha256_hex(subject_token.as_bytes()),
            "the subject token is passed through unchanged"
        );
    }
    harness.stop().await;
}

#[tokio::test]
async fn a_signed_aws_request_becomes_a_federated_token() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let keys = AwsKeys::of(&harness.emulator);
    let arn = harness
        .emulator
        .federation()
        .aws_provider()
        .and_then(|aws| aws.arn.clone())
        .expect("the AWS caller");
    let audience = workload_provider("dev-aws");

    let subject_token = aws4_request_token(&keys, &audience, SystemTime::now());
    let before = unix_now();
    let response = client
        .exchange_token(exchange(&subject_token, AWS4_TOKEN_TYPE, &audience))
        .await
        .expect("federated")
        .into_inner();
    assert_eq!(response.principal, workload_set());
    assert_expires(response.expire_time, before, 3600);
    let info = harness.tokeninfo(&response.access_token).await;
    assert_eq!(info["principal"], workload_principal(&arn), "{info}");
    assert_eq!(info["grant"], "sts-exchange");

    let sent = harness.sts_requests().pop().expect("an STS request");
    let summary = &sent.fields["subject_token"];
    assert_eq!(summary["format"], "aws4_request", "{summary}");
    assert_eq!(summary["sha256"], sha256_hex(subject_token.as_bytes()));
    assert_eq!(summary["aws"]["method"], "POST");
    assert_eq!(
        summary["aws"]["url"],
        format!(
            "https://sts.{}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
            keys.region
        )
    );

    // Signed with another secret, or for another provider: Google refuses the subject token.
    let forged = AwsKeys {
        secret_access_key: "not-the-secret-of-this-key/000000000000000".to_owned(),
        ..keys.clone()
    };
    for (token, what) in [
        (
            aws4_request_token(&forged, &audience, SystemTime::now()),
            "another secret",
        ),
        (
            aws4_request_token(&keys, &dev_oidc(), SystemTime::now()),
            "signed for another audience",
        ),
    ] {
        let status = client
            .exchange_token(exchange(&token, AWS4_TOKEN_TYPE, &audience))
            .await
            .expect_err(what);
        let metadata = assert_error(&status, Code::InvalidArgument, "UPSTREAM_REJECTED");
        assert_eq!(metadata["upstream_error"], "invalid_grant", "{what}");
        assert_eq!(metadata["field"], "subject_token", "{what}");
        assert_eq!(bad_request_field(&status).as_deref(), Some("subject_token"));
    }
    harness.stop().await;
}

#[tokio::test]
async fn saml_assertions_are_passed_on_and_the_emulators_providers_refuse_them() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    use base64::Engine as _;
    let assertion = base64::engine::general_purpose::STANDARD
        .encode("<saml2:Assertion xmlns:saml2=\"urn:oasis:names:tc:SAML:2.0:assertion\"/>");
    let status = client
        .exchange_token(exchange(&assertion, SAML2_TOKEN_TYPE, &dev_oidc()))
        .await
        .expect_err("no SAML provider");
    let metadata = assert_error(&status, Code::InvalidArgument, "UPSTREAM_REJECTED");
    assert_eq!(metadata["upstream_error"], "invalid_request");
    assert_eq!(metadata["upstream_status"], "400");
    assert_eq!(metadata["field"], "subject_token_type");
    assert_eq!(
        bad_request_field(&status).as_deref(),
        Some("subject_token_type")
    );
    assert!(
        status
            .message()
            .contains("not supported by provider dev-oidc"),
        "{status:?}"
    );
    let sent = harness.sts_requests().pop().expect("asked Google");
    assert_eq!(sent.fields["subject_token_type"], SAML2_TOKEN_TYPE);
    assert_eq!(
        sent.fields["subject_token"]["sha256"],
        sha256_hex(assertion.as_bytes())
    );
    harness.stop().await;
}

#[tokio::test]
async fn the_providers_attribute_condition_decides() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let audience = workload_provider(CONDITIONED);

    let admitted = harness.oidc_token(CONDITIONED, "build-1", json!({"repository": "org/app"}));
    let response = client
        .exchange_token(exchange(&admitted, JWT_TOKEN_TYPE, &audience))
        .await
        .expect("the condition holds")
        .into_inner();
    let info = harness.tokeninfo(&response.access_token).await;
    assert_eq!(info["principal"], workload_principal("build-1"));

    for claims in [json!({"repository": "org/evil"}), serde_json::Value::Null] {
        let refused = harness.oidc_token(CONDITIONED, "build-2", claims.clone());
        let status = client
            .exchange_token(exchange(&refused, JWT_TOKEN_TYPE, &audience))
            .await
            .expect_err("the condition fails");
        let metadata = assert_error(&status, Code::PermissionDenied, "UPSTREAM_REJECTED");
        assert_eq!(
            metadata["upstream_error"], "unauthorized_client",
            "{claims}"
        );
        assert_eq!(metadata["upstream_status"], "400");
        assert!(!metadata.contains_key("field"), "{metadata:?}");
        assert!(!metadata.contains_key("credential"), "{metadata:?}");
    }
    harness.stop().await;
}

#[tokio::test]
async fn google_refusals_name_the_field_at_fault() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let sts_host = harness
        .emulator
        .url()
        .trim_start_matches("http://")
        .replacen("127.0.0.1", "localhost", 1);

    // Expired, signed by another issuer's key, or for another provider's audience.
    let expired = harness.expired_oidc_token("dev-oidc", "repo:org/app");
    let foreign = harness.oidc_token(CONDITIONED, "x", json!({"repository": "org/app"}));
    for (token, what) in [
        (expired.as_str(), "expired"),
        (foreign.as_str(), "another provider's"),
        ("not-a-jwt", "not a JWT"),
    ] {
        let status = client
            .exchange_token(exchange(token, JWT_TOKEN_TYPE, &dev_oidc()))
            .await
            .expect_err(what);
        let metadata = assert_error(&status, Code::InvalidArgument, "UPSTREAM_REJECTED");
        assert_eq!(metadata["upstream_error"], "invalid_grant", "{what}");
        assert_eq!(metadata["field"], "subject_token", "{what}");
        assert_eq!(metadata["upstream"], sts_host, "{what}");
        assert_eq!(
            bad_request_field(&status).as_deref(),
            Some("subject_token"),
            "{what}"
        );
    }
    let status = client
        .exchange_token(exchange(&expired, JWT_TOKEN_TYPE, &dev_oidc()))
        .await
        .expect_err("expired");
    assert!(status.message().contains("expired"), "{status:?}");

    // A provider the pool does not have.
    let token = harness.oidc_token("dev-oidc", "repo:org/app", serde_json::Value::Null);
    let status = client
        .exchange_token(exchange(
            &token,
            JWT_TOKEN_TYPE,
            &workload_provider("no-such-provider"),
        ))
        .await
        .expect_err("unknown provider");
    let metadata = assert_error(&status, Code::InvalidArgument, "UPSTREAM_REJECTED");
    assert_eq!(metadata["upstream_error"], "invalid_target");
    assert_eq!(metadata["field"], "audience");
    assert_eq!(bad_request_field(&status).as_deref(), Some("audience"));

    // A workforce exchange needs a user project (or client authentication).
    let workforce_token =
        harness.oidc_token("dev-workforce-oidc", "alice", serde_json::Value::Null);
    let status = client
        .exchange_token(exchange(
            &workforce_token,
            JWT_TOKEN_TYPE,
            &workforce_provider("dev-workforce-oidc"),
        ))
        .await
        .expect_err("no user project");
    let metadata = assert_error(&status, Code::InvalidArgument, "UPSTREAM_REJECTED");
    assert_eq!(metadata["upstream_error"], "invalid_request");
    assert_eq!(metadata["field"], "options.user_project");
    harness.stop().await;
}

#[tokio::test]
async fn the_policy_decides_who_may_exchange_what() {
    let harness = start().await;
    let mut app = harness.client_for(APP).await;
    let mut worker = harness.client_for(OTHER_APP).await;
    let token = harness.oidc_token("dev-oidc", "repo:org/app", serde_json::Value::Null);
    let other_pool = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/other-pool/providers/oidc";

    // An audience outside the grant: named, with the audience.
    let status = app
        .exchange_token(exchange(&token, JWT_TOKEN_TYPE, other_pool))
        .await
        .expect_err("another pool");
    let metadata = assert_denied(&status, "audiences");
    assert_eq!(metadata["value"], other_pool);
    assert_eq!(metadata["caller"], APP);
    let status = worker
        .exchange_token(exchange(
            &token,
            JWT_TOKEN_TYPE,
            &workload_provider("dev-aws"),
        ))
        .await
        .expect_err("worker: dev-oidc only");
    let metadata = assert_denied(&status, "audiences");
    assert_eq!(metadata["grant"], "narrow");

    // A subject-token type the grant does not list, for an audience it does.
    let status = worker
        .exchange_token(exchange(&token, ID_TOKEN_TYPE, &dev_oidc()))
        .await
        .expect_err("worker: JWTs only");
    let metadata = assert_denied(&status, "subject_token_types");
    assert_eq!(metadata["grant"], "narrow");
    assert_eq!(metadata["value"], ID_TOKEN_TYPE);

    // A scope the grant does not allow.
    let status = worker
        .exchange_token(pb::ExchangeTokenRequest {
            scopes: vec![STORAGE_READ.into()],
            ..exchange(&token, JWT_TOKEN_TYPE, &dev_oidc())
        })
        .await
        .expect_err("worker: cloud-platform only");
    let metadata = assert_denied(&status, "scopes");
    assert_eq!(metadata["value"], STORAGE_READ);

    // No plain-exchange grant: the caller's default grant plays no part; nor does a grant
    // that names no caller.
    for (caller, has_default) in [(READER, true), (STRANGER, false)] {
        let mut client = harness.client_for(caller).await;
        let status = client
            .exchange_token(exchange(&token, JWT_TOKEN_TYPE, &dev_oidc()))
            .await
            .expect_err("no plain-exchange grant");
        let metadata = assert_denied(&status, "no_grant");
        assert_eq!(metadata["caller"], caller, "default grant: {has_default}");
        assert!(!metadata.contains_key("grant"), "{metadata:?}");
    }

    // A credential the caller has no grant for, existing or not, is not revealed.
    for credential in ["ext-reader", "ghost"] {
        let status = worker
            .exchange_token(pb::ExchangeTokenRequest {
                credential: credential.into(),
                ..exchange(&token, JWT_TOKEN_TYPE, "")
            })
            .await
            .expect_err("no grant for the credential");
        let metadata = assert_denied(&status, "no_grant");
        assert_eq!(metadata["value"], credential);
    }

    assert_eq!(sts_count(&harness), 0, "no denied request reached Google");

    // What the grants allow still works: exchanged, then downscoped by the grant's boundary,
    // which the token really carries.
    let narrowed = worker
        .exchange_token(exchange(&token, JWT_TOKEN_TYPE, &dev_oidc()))
        .await
        .expect("worker: a JWT of dev-oidc")
        .into_inner();
    assert_eq!(sts_count(&harness), 2);
    let info = harness.tokeninfo(&narrowed.access_token).await;
    assert_eq!(
        info["access_boundary"]["accessBoundaryRules"][0]["availableResource"],
        "//storage.googleapis.com/projects/_/buckets/allowed",
        "{info}"
    );
    harness.stop().await;
}

#[tokio::test]
async fn rate_limits_and_lifetime_caps_apply_to_exchanges() {
    let harness = start().await;
    let token = harness.oidc_token("dev-oidc", "repo:org/app", serde_json::Value::Null);

    let mut limited = harness.client_for(LIMITED).await;
    limited
        .exchange_token(exchange(&token, JWT_TOKEN_TYPE, &dev_oidc()))
        .await
        .expect("the burst");
    let status = limited
        .exchange_token(exchange(&token, JWT_TOKEN_TYPE, &dev_oidc()))
        .await
        .expect_err("over the rate");
    let metadata = assert_error(&status, Code::ResourceExhausted, "RATE_LIMITED");
    assert_eq!(metadata["limit"], "caller");
    let delay = retry_delay(&status).expect("RetryInfo");
    assert!(
        delay.as_secs() > 900 && delay.as_secs() <= 1000,
        "{delay:?}"
    );

    // Google gives federated tokens an hour, which a 30-minute cap cannot shorten.
    let mut short = harness.client_for(SHORT).await;
    let status = short
        .exchange_token(exchange(&token, JWT_TOKEN_TYPE, &dev_oidc()))
        .await
        .expect_err("an hour is above the cap");
    let metadata = assert_denied(&status, "max_lifetime");
    assert_eq!(metadata["grant"], "short");
    assert_eq!(sts_count(&harness), 1, "only the first call reached Google");
    harness.stop().await;
}

#[tokio::test]
async fn google_failing_is_unavailable_and_the_callers_deadline_holds() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let token = harness.oidc_token("dev-oidc", "repo:org/app", serde_json::Value::Null);
    let sts_host = harness
        .emulator
        .url()
        .trim_start_matches("http://")
        .replacen("127.0.0.1", "localhost", 1);

    harness
        .emulator
        .inject_fault(fault(json!({"endpoint": "sts.token", "status": 503})))
        .expect("fault");
    let status = client
        .exchange_token(exchange(&token, JWT_TOKEN_TYPE, &dev_oidc()))
        .await
        .expect_err("STS fails");
    let metadata = assert_error(&status, Code::Unavailable, "UPSTREAM_UNAVAILABLE");
    assert_eq!(metadata["upstream"], sts_host);
    assert_eq!(metadata["upstream_status"], "503");
    assert!(retry_delay(&status).is_some(), "RetryInfo");
    assert_eq!(
        sts_count(&harness),
        3,
        "retried as configured (max_attempts = 3)"
    );

    harness.emulator.clear_faults();
    harness
        .emulator
        .inject_fault(fault(
            json!({"endpoint": "sts.token", "delay_ms": 1500, "times": 1}),
        ))
        .expect("fault");
    let mut hurried = tonic::Request::new(exchange(&token, JWT_TOKEN_TYPE, &dev_oidc()));
    hurried.set_timeout(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let status = client
        .exchange_token(hurried)
        .await
        .expect_err("the caller's deadline");
    assert!(started.elapsed() < std::time::Duration::from_millis(1200));
    let metadata = assert_error(
        &status,
        Code::DeadlineExceeded,
        "UPSTREAM_DEADLINE_EXCEEDED",
    );
    assert_eq!(metadata["upstream"], sts_host);
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;

    // The same request once STS is well again.
    client
        .exchange_token(exchange(&token, JWT_TOKEN_TYPE, &dev_oidc()))
        .await
        .expect("recovered");
    harness.stop().await;
}

#[tokio::test]
async fn workforce_exchanges_carry_a_user_project_and_workload_ones_refuse_it() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let audience = workforce_provider("dev-workforce-oidc");
    let token = harness.oidc_token("dev-workforce-oidc", "alice", serde_json::Value::Null);

    let response = client
        .exchange_token(pb::ExchangeTokenRequest {
            options: Some(pb::ExchangeTokenOptions {
                user_project: "dev-project".into(),
                access_boundary: None,
            }),
            ..exchange(&token, JWT_TOKEN_TYPE, &audience)
        })
        .await
        .expect("workforce")
        .into_inner();
    assert_eq!(
        response.principal,
        format!("principalSet://{WORKFORCE_POOL}/*")
    );
    let info = harness.tokeninfo(&response.access_token).await;
    assert_eq!(
        info["principal"],
        format!("principal://{WORKFORCE_POOL}/subject/alice")
    );
    assert_eq!(info["user_project"], "dev-project");
    let sent = harness.sts_requests().pop().expect("STS");
    assert_eq!(
        sent.fields["options"],
        json!({"userProject": "dev-project"})
    );
    assert_eq!(sent.options_encoding.as_deref(), Some("json"));
    assert!(
        sent.client_auth.is_none(),
        "a plain exchange adds no client"
    );

    // A project STS does not know: Google's refusal, naming the option.
    let status = client
        .exchange_token(pb::ExchangeTokenRequest {
            options: Some(pb::ExchangeTokenOptions {
                user_project: "someone-elses".into(),
                access_boundary: None,
            }),
            ..exchange(&token, JWT_TOKEN_TYPE, &audience)
        })
        .await
        .expect_err("unknown project");
    let metadata = assert_error(&status, Code::InvalidArgument, "UPSTREAM_REJECTED");
    assert_eq!(metadata["upstream_error"], "invalid_request");

    // For a workload pool, or malformed: refused before Google is asked.
    let before = sts_count(&harness);
    let workload_token = harness.oidc_token("dev-oidc", "repo:org/app", serde_json::Value::Null);
    let too_long = "p".repeat(33);
    for (token, audience, project) in [
        (workload_token.as_str(), dev_oidc(), "dev-project"),
        (token.as_str(), audience.clone(), "Not A Project!"),
        (token.as_str(), audience.clone(), too_long.as_str()),
    ] {
        let status = client
            .exchange_token(pb::ExchangeTokenRequest {
                options: Some(pb::ExchangeTokenOptions {
                    user_project: project.to_owned(),
                    access_boundary: None,
                }),
                ..exchange(token, JWT_TOKEN_TYPE, &audience)
            })
            .await
            .expect_err(project);
        assert_invalid(&status, "INVALID_FIELD", "options.user_project");
    }
    assert_eq!(sts_count(&harness), before);
    harness.stop().await;
}

#[tokio::test]
async fn an_external_account_credential_shapes_the_exchange_and_impersonates() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let token = harness.oidc_token("dev-oidc", "repo:org/app", serde_json::Value::Null);

    // The credential supplies the audience, or the request repeats it.
    for audience in [String::new(), dev_oidc()] {
        let before = unix_now();
        let response = client
            .exchange_token(pb::ExchangeTokenRequest {
                credential: "ext-reader".into(),
                ..exchange(&token, JWT_TOKEN_TYPE, &audience)
            })
            .await
            .unwrap_or_else(|e| panic!("audience {audience:?}: {e:?}"))
            .into_inner();
        assert_eq!(response.principal, READER_SA);
        assert_eq!(response.credential, "ext-reader");
        assert_eq!(response.issued_token_type, ACCESS_TOKEN_TYPE);
        let expire = assert_expires(response.expire_time, before, 3600);
        let info = harness.tokeninfo(&response.access_token).await;
        assert_eq!(info["principal"], format!("serviceAccount:{READER_SA}"));
        assert_eq!(info["email"], READER_SA);
        assert_eq!(info["grant"], "generate-access-token");
        assert_eq!(info["scope"], CLOUD_PLATFORM);
        let exp: i64 = info["exp"].as_str().expect("exp").parse().expect("number");
        assert!((exp - expire).abs() <= 1, "{info}");

        // STS was asked with the credential's audience, for the IAM scope; then IAM.
        let sent = harness.sts_requests().pop().expect("STS");
        assert_eq!(sent.fields["audience"], dev_oidc());
        assert_eq!(sent.fields["scope"], IAM_SCOPE);
        assert_eq!(
            sent.fields["subject_token"]["sha256"],
            sha256_hex(token.as_bytes())
        );
        let iam = harness
            .emulator
            .requests(Endpoint::IamGenerateAccessToken)
            .pop()
            .expect("IAM");
        assert!(
            iam.path
                .ends_with(&format!("{READER_SA}:generateAccessToken"))
        );
    }
    assert_eq!(
        harness
            .emulator
            .requests(Endpoint::IamGenerateAccessToken)
            .len(),
        2,
        "never cached"
    );

    // A workforce credential authenticates its OAuth client at the broker's STS.
    let alice = harness.oidc_token("dev-workforce-oidc", "alice", serde_json::Value::Null);
    let response = client
        .exchange_token(pb::ExchangeTokenRequest {
            credential: "ext-workforce".into(),
            ..exchange(&alice, JWT_TOKEN_TYPE, "")
        })
        .await
        .expect("workforce credential")
        .into_inner();
    assert_eq!(
        response.principal,
        format!("principalSet://{WORKFORCE_POOL}/*")
    );
    assert_eq!(response.credential, "ext-workforce");
    let info = harness.tokeninfo(&response.access_token).await;
    assert_eq!(
        info["principal"],
        format!("principal://{WORKFORCE_POOL}/subject/alice")
    );
    let sent = harness.sts_requests().pop().expect("STS");
    let auth = sent.client_auth.as_ref().expect("client authentication");
    assert_eq!(
        (
            auth.method.as_str(),
            auth.client_id.as_str(),
            auth.secret_present
        ),
        ("basic", "dev-workforce-client", true)
    );
    assert!(sent.fields.get("options").is_none(), "{:?}", sent.fields);

    // Its OAuth client determines the user project, and Google does not downscope workforce
    // tokens: both refused before anything is sent.
    let before = sts_count(&harness);
    let status = client
        .exchange_token(pb::ExchangeTokenRequest {
            credential: "ext-workforce".into(),
            options: Some(pb::ExchangeTokenOptions {
                user_project: "dev-project".into(),
                access_boundary: None,
            }),
            ..exchange(&alice, JWT_TOKEN_TYPE, "")
        })
        .await
        .expect_err("a user project with a client id");
    assert_invalid(&status, "INVALID_FIELD", "options.user_project");
    let status = client
        .exchange_token(pb::ExchangeTokenRequest {
            credential: "ext-workforce".into(),
            options: Some(pb::ExchangeTokenOptions {
                user_project: String::new(),
                access_boundary: Some(boundary(
                    "//storage.googleapis.com/projects/_/buckets/b",
                    &["inRole:roles/storage.objectViewer"],
                )),
            }),
            ..exchange(&alice, JWT_TOKEN_TYPE, "")
        })
        .await
        .expect_err("a boundary on a workforce token");
    let metadata = assert_error(
        &status,
        Code::FailedPrecondition,
        "CREDENTIAL_FLOW_UNSUPPORTED",
    );
    assert_eq!(metadata["flow"], "access_boundary");
    assert_eq!(metadata["credential"], "ext-workforce");
    assert_eq!(sts_count(&harness), before);

    // A subject-token type the credential's grant does not list.
    let status = client
        .exchange_token(pb::ExchangeTokenRequest {
            credential: "ext-reader".into(),
            ..exchange(&token, ID_TOKEN_TYPE, "")
        })
        .await
        .expect_err("JWTs only");
    let metadata = assert_denied(&status, "subject_token_types");
    assert_eq!(metadata["grant"], "ext-reader");

    // An audience other than the credential's.
    let status = client
        .exchange_token(pb::ExchangeTokenRequest {
            credential: "ext-reader".into(),
            ..exchange(&token, JWT_TOKEN_TYPE, &workload_provider("dev-aws"))
        })
        .await
        .expect_err("audience mismatch");
    assert_invalid(&status, "INVALID_FIELD", "audience");
    assert!(status.message().contains(&dev_oidc()), "{status:?}");

    // A credential of another kind cannot shape an exchange.
    let status = client
        .exchange_token(pb::ExchangeTokenRequest {
            credential: "sa".into(),
            ..exchange(&token, JWT_TOKEN_TYPE, "")
        })
        .await
        .expect_err("a service account key");
    let metadata = assert_error(
        &status,
        Code::FailedPrecondition,
        "CREDENTIAL_FLOW_UNSUPPORTED",
    );
    assert_eq!(metadata["flow"], "token_exchange");
    assert_eq!(metadata["credential"], "sa");
    assert_eq!(metadata["credential_type"], "service_account");
    assert_eq!(sts_count(&harness), before, "nothing was sent");

    // Google's refusal of the caller's token is the caller's: INVALID_ARGUMENT, naming the
    // credential.
    let expired = harness.expired_oidc_token("dev-oidc", "repo:org/app");
    let status = client
        .exchange_token(pb::ExchangeTokenRequest {
            credential: "ext-reader".into(),
            ..exchange(&expired, JWT_TOKEN_TYPE, "")
        })
        .await
        .expect_err("expired");
    let metadata = assert_error(&status, Code::InvalidArgument, "UPSTREAM_REJECTED");
    assert_eq!(metadata["upstream_error"], "invalid_grant");
    assert_eq!(metadata["field"], "subject_token");
    assert_eq!(metadata["credential"], "ext-reader");
    harness.stop().await;
}

/// The boundary `app` downscopes with.
fn bucket_boundary(bucket: &str, roles: &[&str]) -> pb::CredentialAccessBoundary {
    boundary(
        &format!("//storage.googleapis.com/projects/_/buckets/{bucket}"),
        roles,
    )
}

fn downscope(token: &str, boundary: pb::CredentialAccessBoundary) -> pb::ExchangeTokenRequest {
    pb::ExchangeTokenRequest {
        options: Some(pb::ExchangeTokenOptions {
            user_project: String::new(),
            access_boundary: Some(boundary),
        }),
        ..exchange(token, ACCESS_TOKEN_TYPE, "")
    }
}

#[tokio::test]
async fn a_broker_token_is_downscoped() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let token = client
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("a token of sa")
        .into_inner()
        .access_token;

    let response = client
        .exchange_token(downscope(
            &token,
            bucket_boundary("reports", &["inRole:roles/storage.objectViewer"]),
        ))
        .await
        .expect("downscoped")
        .into_inner();
    assert_eq!(response.expire_time, None, "expires with its subject token");
    assert_eq!(response.principal, "");
    assert_eq!(response.credential, "");
    assert_eq!(response.issued_token_type, ACCESS_TOKEN_TYPE);
    assert_eq!(response.token_type, "Bearer");
    assert_ne!(response.access_token, token);
    let info = harness.tokeninfo(&response.access_token).await;
    assert_eq!(info["grant"], "sts-downscope", "{info}");
    assert_eq!(info["principal"], format!("serviceAccount:{BROKER_SA}"));
    assert_eq!(
        info["access_boundary"],
        json!({"accessBoundaryRules": [{
            "availableResource": "//storage.googleapis.com/projects/_/buckets/reports",
            "availablePermissions": ["inRole:roles/storage.objectViewer"],
        }]})
    );
    let original = harness.tokeninfo(&token).await;
    assert_eq!(original["access_boundary"], serde_json::Value::Null);
    assert_eq!(
        info["exp"], original["exp"],
        "the same expiry as its subject"
    );

    // A token Google does not know.
    let status = client
        .exchange_token(downscope(
            "ya29.not-a-token-of-this-emulator",
            bucket_boundary("reports", &["inRole:roles/storage.objectViewer"]),
        ))
        .await
        .expect_err("unknown token");
    let metadata = assert_error(&status, Code::InvalidArgument, "UPSTREAM_REJECTED");
    assert_eq!(metadata["upstream_error"], "invalid_grant");
    assert_eq!(metadata["field"], "subject_token");
    harness.stop().await;
}

#[tokio::test]
async fn downscoping_stays_within_the_grants_boundary() {
    let harness = start().await;
    let mut worker = harness.client_for(OTHER_APP).await;
    let token = worker
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("a token of sa")
        .into_inner()
        .access_token;

    for (wider, resource) in [
        (
            bucket_boundary("other", &["inRole:roles/storage.objectViewer"]),
            "//storage.googleapis.com/projects/_/buckets/other",
        ),
        (
            bucket_boundary("allowed", &["inRole:roles/storage.admin"]),
            "//storage.googleapis.com/projects/_/buckets/allowed",
        ),
    ] {
        let status = worker
            .exchange_token(downscope(&token, wider))
            .await
            .expect_err("wider than the grant's boundary");
        let metadata = assert_denied(&status, "access_boundary");
        assert_eq!(metadata["grant"], "narrow");
        assert_eq!(metadata["value"], resource);
    }
    assert_eq!(sts_count(&harness), 0);

    // Within it: a subset of its roles on its bucket.
    let response = worker
        .exchange_token(downscope(
            &token,
            bucket_boundary("allowed", &["inRole:roles/storage.objectViewer"]),
        ))
        .await
        .expect("within the boundary")
        .into_inner();
    let info = harness.tokeninfo(&response.access_token).await;
    assert_eq!(
        info["access_boundary"]["accessBoundaryRules"][0]["availablePermissions"],
        json!(["inRole:roles/storage.objectViewer"])
    );
    harness.stop().await;
}

#[tokio::test]
async fn downscoping_takes_only_a_token_and_a_boundary() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let token = client
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("a token of sa")
        .into_inner()
        .access_token;
    let viewer = || bucket_boundary("reports", &["inRole:roles/storage.objectViewer"]);

    for (request, field) in [
        (
            pb::ExchangeTokenRequest {
                audience: dev_oidc(),
                ..downscope(&token, viewer())
            },
            "audience",
        ),
        (
            pb::ExchangeTokenRequest {
                scopes: vec![STORAGE_READ.into()],
                ..downscope(&token, viewer())
            },
            "scopes",
        ),
        (
            pb::ExchangeTokenRequest {
                credential: "ext-reader".into(),
                ..downscope(&token, viewer())
            },
            "credential",
        ),
    ] {
        let status = client.exchange_token(request).await.expect_err(field);
        assert_invalid(&status, "INVALID_FIELD", field);
    }
    let status = client
        .exchange_token(exchange(&token, ACCESS_TOKEN_TYPE, ""))
        .await
        .expect_err("no boundary");
    assert_invalid(
        &status,
        "INVALID_ACCESS_BOUNDARY",
        "options.access_boundary",
    );
    let status = client
        .exchange_token(downscope(
            &token,
            bucket_boundary("reports", &["roles/storage.objectViewer"]),
        ))
        .await
        .expect_err("a role without inRole:");
    let metadata = assert_error(&status, Code::InvalidArgument, "INVALID_ACCESS_BOUNDARY");
    assert!(
        metadata["field"].starts_with("options.access_boundary.access_boundary_rules[0]"),
        "{metadata:?}"
    );
    assert_eq!(sts_count(&harness), 0);
    harness.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_refused_before_google_is_asked() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let token = harness.oidc_token("dev-oidc", "repo:org/app", serde_json::Value::Null);

    let status = client
        .exchange_token(exchange("", JWT_TOKEN_TYPE, &dev_oidc()))
        .await
        .expect_err("empty subject token");
    assert_invalid(&status, "INVALID_FIELD", "subject_token");
    let status = client
        .exchange_token(exchange(
            &"x".repeat(64 * 1024 + 1),
            JWT_TOKEN_TYPE,
            &dev_oidc(),
        ))
        .await
        .expect_err("too long a subject token");
    assert_invalid(&status, "INVALID_FIELD", "subject_token");

    for token_type in [
        MTLS_TOKEN_TYPE,
        "",
        "urn:ietf:params:oauth:token-type:refresh_token",
    ] {
        let status = client
            .exchange_token(exchange(&token, token_type, &dev_oidc()))
            .await
            .expect_err(token_type);
        assert_invalid(&status, "UNSUPPORTED_TOKEN_TYPE", "subject_token_type");
    }
    let status = client
        .exchange_token(exchange(
            &token,
            MTLS_TOKEN_TYPE,
            &workload_provider("dev-x509"),
        ))
        .await
        .expect_err("X.509");
    assert!(status.message().contains("TLS"), "{status:?}");

    let status = client
        .exchange_token(pb::ExchangeTokenRequest {
            requested_token_type: INTERMEDIATE_TOKEN_TYPE.into(),
            ..exchange(&token, JWT_TOKEN_TYPE, &dev_oidc())
        })
        .await
        .expect_err("intermediate token");
    let metadata = assert_error(&status, Code::Unimplemented, "FEATURE_NOT_IMPLEMENTED");
    assert_eq!(
        metadata["feature"],
        "requested_token_type=urn:ietf:params:oauth:token-type:access_boundary_intermediate_token"
    );
    let status = client
        .exchange_token(pb::ExchangeTokenRequest {
            requested_token_type: JWT_TOKEN_TYPE.into(),
            ..exchange(&token, JWT_TOKEN_TYPE, &dev_oidc())
        })
        .await
        .expect_err("a JWT is not issued");
    assert_invalid(&status, "UNSUPPORTED_TOKEN_TYPE", "requested_token_type");

    for audience in [
        "",
        "https://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/dev-pool/providers/dev-oidc",
        "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/dev-pool",
        "//iam.googleapis.com/projects//locations/global/workloadIdentityPools/dev-pool/providers/dev-oidc",
        "//iam.googleapis.com/locations/global/workforcePools/dev-workforce",
        "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/a b",
    ] {
        let status = client
            .exchange_token(exchange(&token, JWT_TOKEN_TYPE, audience))
            .await
            .expect_err(audience);
        assert_invalid(&status, "INVALID_FIELD", "audience");
    }
    let status = client
        .exchange_token(pb::ExchangeTokenRequest {
            scopes: vec!["cloud-platform".into()],
            ..exchange(&token, JWT_TOKEN_TYPE, &dev_oidc())
        })
        .await
        .expect_err("not a scope");
    assert_invalid(&status, "INVALID_SCOPE", "scopes[0]");
    let status = client
        .exchange_token(pb::ExchangeTokenRequest {
            credential: "Not_A_Name".into(),
            ..exchange(&token, JWT_TOKEN_TYPE, "")
        })
        .await
        .expect_err("not a credential name");
    assert_invalid(&status, "INVALID_FIELD", "credential");

    assert_eq!(sts_count(&harness), 0, "nothing malformed reached Google");
    harness.stop().await;
}

/// The contract: UNSUPPORTED_TOKEN_TYPE carries the rejected value as metadata `token_type`
/// (proto/tokenbroker/v1/error_reason.proto).
#[tokio::test]
async fn unsupported_token_types_name_the_rejected_value() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let status = client
        .exchange_token(exchange("token", MTLS_TOKEN_TYPE, &dev_oidc()))
        .await
        .expect_err("X.509");
    let metadata = assert_error(&status, Code::InvalidArgument, "UNSUPPORTED_TOKEN_TYPE");
    assert_eq!(
        metadata.get("token_type").map(String::as_str),
        Some(MTLS_TOKEN_TYPE)
    );
    let status = client
        .exchange_token(pb::ExchangeTokenRequest {
            requested_token_type: JWT_TOKEN_TYPE.into(),
            ..exchange("token", JWT_TOKEN_TYPE, &dev_oidc())
        })
        .await
        .expect_err("requested JWT");
    let metadata = assert_error(&status, Code::InvalidArgument, "UNSUPPORTED_TOKEN_TYPE");
    assert_eq!(
        metadata.get("token_type").map(String::as_str),
        Some(JWT_TOKEN_TYPE)
    );
    harness.stop().await;
}

#[tokio::test]
async fn exchanges_are_never_cached() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let token = harness.oidc_token("dev-oidc", "repo:org/app", serde_json::Value::Null);
    let broker_token = client
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("a token of sa")
        .into_inner()
        .access_token;

    for (request, what) in [
        (exchange(&token, JWT_TOKEN_TYPE, &dev_oidc()), "federation"),
        (
            downscope(
                &broker_token,
                bucket_boundary("reports", &["inRole:roles/storage.objectViewer"]),
            ),
            "downscoping",
        ),
    ] {
        let before = sts_count(&harness);
        let first = client
            .exchange_token(request.clone())
            .await
            .expect(what)
            .into_inner();
        let second = client
            .exchange_token(request)
            .await
            .expect(what)
            .into_inner();
        assert_eq!(sts_count(&harness), before + 2, "{what}: two STS requests");
        assert_ne!(first.access_token, second.access_token, "{what}");
        let requests = harness.sts_requests();
        let [.., one, two] = requests.as_slice() else {
            panic!("two requests");
        };
        assert_eq!(one.fields, two.fields, "{what}: the same request twice");
    }
    harness.stop().await;
}

#[tokio::test]
async fn the_sts_request_is_the_form_google_documents() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let token = harness.oidc_token("dev-oidc", "repo:org/app", serde_json::Value::Null);
    let subject = |token: &str, format: &str| json!({"sha256": sha256_hex(token.as_bytes()), "length": token.len(), "format": format});
    // The recorded subject token without the decoded JWT (compared through its fingerprint).
    let fields = |request: &gcp_emulator::RecordedRequest| {
        let mut fields = request.fields.clone();
        if let Some(serde_json::Value::Object(summary)) = fields.get_mut("subject_token") {
            summary.remove("jwt");
        }
        serde_json::Value::Object(fields)
    };

    // Federation: the caller's scopes (sorted, de-duplicated), no options.
    client
        .exchange_token(pb::ExchangeTokenRequest {
            scopes: vec![
                STORAGE_READ.into(),
                CLOUD_PLATFORM.into(),
                STORAGE_READ.into(),
            ],
            ..exchange(&token, JWT_TOKEN_TYPE, &dev_oidc())
        })
        .await
        .expect("federation");
    let sent = harness.sts_requests().pop().expect("STS");
    assert_eq!(
        fields(&sent),
        json!({
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "audience": dev_oidc(),
            "scope": format!("{CLOUD_PLATFORM} {STORAGE_READ}"),
            "requested_token_type": ACCESS_TOKEN_TYPE,
            "subject_token": subject(&token, "jwt"),
            "subject_token_type": JWT_TOKEN_TYPE,
        })
    );
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/v1/token");
    assert_eq!(sent.body_format, "form");
    assert_eq!(
        sent.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert!(sent.client_auth.is_none());
    assert!(sent.authorization.is_none(), "no Authorization header");
    assert_eq!(sent.options_encoding, None);
    assert_eq!(sent.status, 200);
    let claims =
        &harness.sts_requests().pop().expect("STS").fields["subject_token"]["jwt"]["claims"];
    assert_eq!(claims["sub"], "repo:org/app");

    // Federation with the options: the default scope, a user project. (A boundary is not
    // sent with a federation exchange: the federated token is downscoped afterwards, and
    // Google does not downscope workforce tokens at all.)
    let alice = harness.oidc_token("dev-workforce-oidc", "alice", serde_json::Value::Null);
    let audience = workforce_provider("dev-workforce-oidc");
    let reports = bucket_boundary("reports", &["inRole:roles/storage.objectViewer"]);
    let status = client
        .exchange_token(pb::ExchangeTokenRequest {
            options: Some(pb::ExchangeTokenOptions {
                user_project: "dev-project".into(),
                access_boundary: Some(reports.clone()),
            }),
            ..exchange(&alice, ID_TOKEN_TYPE, &audience)
        })
        .await
        .expect_err("workforce tokens cannot be downscoped");
    assert_invalid(&status, "INVALID_FIELD", "audience");
    client
        .exchange_token(pb::ExchangeTokenRequest {
            options: Some(pb::ExchangeTokenOptions {
                user_project: "dev-project".into(),
                access_boundary: None,
            }),
            ..exchange(&alice, ID_TOKEN_TYPE, &audience)
        })
        .await
        .expect("workforce with options");
    let sent = harness.sts_requests().pop().expect("STS");
    assert_eq!(
        fields(&sent),
        json!({
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "audience": audience,
            "scope": CLOUD_PLATFORM,
            "requested_token_type": ACCESS_TOKEN_TYPE,
            "subject_token": subject(&alice, "jwt"),
            "subject_token_type": ID_TOKEN_TYPE,
            "options": {"userProject": "dev-project"},
        })
    );
    assert_eq!(sent.options_encoding.as_deref(), Some("json"));

    // A workload federation with a boundary: the exchange, then its token downscoped.
    harness.clear_sts_requests();
    let response = client
        .exchange_token(pb::ExchangeTokenRequest {
            options: Some(pb::ExchangeTokenOptions {
                user_project: String::new(),
                access_boundary: Some(reports),
            }),
            ..exchange(&token, JWT_TOKEN_TYPE, &dev_oidc())
        })
        .await
        .expect("workload federation with a boundary")
        .into_inner();
    let sent = harness.sts_requests();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(
        !fields(&sent[0])
            .as_object()
            .expect("form")
            .contains_key("options")
    );
    assert_eq!(fields(&sent[1])["subject_token_type"], ACCESS_TOKEN_TYPE);
    assert_eq!(
        fields(&sent[1])["options"]["accessBoundary"]["accessBoundaryRules"][0]["availableResource"],
        "//storage.googleapis.com/projects/_/buckets/reports"
    );
    let info = harness.tokeninfo(&response.access_token).await;
    assert_eq!(
        info["access_boundary"]["accessBoundaryRules"][0]["availableResource"],
        "//storage.googleapis.com/projects/_/buckets/reports"
    );

    // Downscoping: no audience, no scope.
    let broker_token = client
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("a token of sa")
        .into_inner()
        .access_token;
    let mut with_condition = bucket_boundary(
        "reports",
        &[
            "inRole:roles/storage.objectViewer",
            "inRole:roles/storage.objectCreator",
        ],
    );
    with_condition.access_boundary_rules[0].availability_condition =
        Some(pb::AvailabilityCondition {
            expression: "resource.name.startsWith('projects/_/buckets/reports/objects/2026/')"
                .into(),
            title: "2026".into(),
            description: String::new(),
        });
    client
        .exchange_token(downscope(&broker_token, with_condition))
        .await
        .expect("downscoped");
    let sent = harness.sts_requests().pop().expect("STS");
    assert_eq!(
        fields(&sent),
        json!({
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "requested_token_type": ACCESS_TOKEN_TYPE,
            "subject_token": subject(&broker_token, "opaque"),
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "options": {"accessBoundary": {"accessBoundaryRules": [{
                "availableResource": "//storage.googleapis.com/projects/_/buckets/reports",
                "availablePermissions": ["inRole:roles/storage.objectViewer", "inRole:roles/storage.objectCreator"],
                "availabilityCondition": {
                    "expression": "resource.name.startsWith('projects/_/buckets/reports/objects/2026/')",
                    "title": "2026",
                },
            }]}},
        })
    );
    harness.stop().await;
}
