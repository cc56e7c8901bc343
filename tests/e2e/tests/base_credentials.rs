//! What the broker does with the credentials behind impersonation and signing: a grant's
//! access boundary reaches impersonated tokens, keyless domain-wide delegation keeps Google's
//! one-hour lifetime under the grant's cap, a credential's own tokens never share a cache entry
//! with tokens impersonated from it, and a base token IAM no longer accepts is replaced.

use broker_proto::tokenbroker::v1 as pb;
use e2e::*;
use gcp_emulator::Endpoint;
use tonic::Code;

const AUDIENCE: &str = "https://svc.example.com";

/// `app`: reader@ by impersonation, always downscoped to one bucket; ID tokens of `sa` itself
/// and of broker@ by impersonation; SignBlob as broker@; users' directory through the keyless
/// credential, capped at 15 minutes. `worker`: the same directory scope without a cap.
const POLICY: &str = r#"
[[grants]]
name = "bounded-impersonation"
credential = "sa"
default = true
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["ImpersonateServiceAccount"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
service_accounts = ["reader@dev-project.iam.gserviceaccount.com"]
[[grants.access_boundary.rules]]
available_resource = "//storage.googleapis.com/projects/_/buckets/build-artifacts"
available_permissions = ["inRole:roles/storage.objectViewer"]

[[grants]]
name = "id-tokens"
credential = "sa"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["GenerateIdToken"]
service_accounts = ["broker@dev-project.iam.gserviceaccount.com"]
audiences = ["https://svc.example.com"]

[[grants]]
name = "blob-signing"
credential = "sa"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["SignBlob"]
service_accounts = ["broker@dev-project.iam.gserviceaccount.com"]

[[grants]]
name = "directory-capped"
credential = "keyless"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
scopes = ["https://www.googleapis.com/auth/admin.directory.user.readonly"]
subject_domains = ["example.com"]
max_lifetime = "15m"

[[grants]]
name = "directory"
credential = "keyless"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/worker" }]
scopes = ["https://www.googleapis.com/auth/admin.directory.user.readonly"]
subject_domains = ["example.com"]
max_lifetime = "12h"
"#;

/// broker@ impersonated with `sa`'s tokens: it holds domain-wide delegation, and Token Creator
/// on itself, so this is keyless delegation.
const KEYLESS: &str = r#"
[[credentials]]
name = "keyless"
kind = "impersonated"
base = "sa"
target = "broker@dev-project.iam.gserviceaccount.com"
"#;

async fn start() -> Harness {
    Harness::start(Options {
        policy: POLICY.to_owned(),
        extra_config: KEYLESS.to_owned(),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn the_grants_boundary_downscopes_impersonated_tokens() {
    let harness = start().await;
    let mut app = harness.client_for(APP).await;
    let token = app
        .impersonate_service_account(pb::ImpersonateServiceAccountRequest {
            target_service_account: READER_SA.to_owned(),
            ..Default::default()
        })
        .await
        .expect("impersonated")
        .into_inner();
    let info = harness.tokeninfo(&token.access_token).await;
    assert!(
        info["access_boundary"]
            .to_string()
            .contains("build-artifacts"),
        "{info}"
    );
    assert_eq!(info["email"], READER_SA, "{info}");
    harness.stop().await;
}

#[tokio::test]
async fn keyless_delegation_keeps_googles_hour_under_the_grants_cap() {
    let harness = start().await;
    let delegated = |lifetime: Option<i64>| pb::GetAccessTokenRequest {
        credential: "keyless".to_owned(),
        scopes: vec![DIRECTORY_READ.to_owned()],
        subject: "alice@example.com".to_owned(),
        lifetime: lifetime.and_then(seconds),
        ..Default::default()
    };

    // The JWT-bearer grant gives an hour: a grant capped below that is refused, not served a
    // longer token than it allows.
    let mut app = harness.client_for(APP).await;
    let status = app
        .get_access_token(delegated(None))
        .await
        .expect_err("capped below an hour");
    assert_denied(&status, "max_lifetime");

    // More than an hour is impossible with a subject, even for a credential that chooses
    // lifetimes otherwise; nothing reaches Google.
    let mut worker = harness.client_for(OTHER_APP).await;
    let before = harness.emulator.count(Endpoint::IamSignJwt);
    let status = worker
        .get_access_token(delegated(Some(7200)))
        .await
        .expect_err("two hours with a subject");
    let metadata = assert_error(
        &status,
        Code::FailedPrecondition,
        "CREDENTIAL_FLOW_UNSUPPORTED",
    );
    assert_eq!(metadata["flow"], "extended_lifetime", "{metadata:?}");
    assert_eq!(harness.emulator.count(Endpoint::IamSignJwt), before);

    let token = worker
        .get_access_token(delegated(None))
        .await
        .expect("delegated")
        .into_inner();
    let info = harness.tokeninfo(&token.access_token).await;
    assert_eq!(info["email"], "alice@example.com", "{info}");
    assert_eq!(harness.emulator.count(Endpoint::IamSignJwt), before + 1);
    harness.stop().await;
}

#[tokio::test]
async fn own_tokens_and_impersonated_ones_never_share_an_entry() {
    let harness = start().await;
    let mut app = harness.client_for(APP).await;
    let id_token = |target: &str| pb::GenerateIdTokenRequest {
        audience: AUDIENCE.to_owned(),
        credential: "sa".to_owned(),
        target_service_account: target.to_owned(),
        include_email: true,
        ..Default::default()
    };
    let own = app
        .generate_id_token(id_token(""))
        .await
        .expect("own identity")
        .into_inner();
    assert!(!own.cache_hit);
    // broker@ impersonating itself: the same principal, another flow (IAM generateIdToken),
    // so another entry; and a refusal of that flow could not evict the credential's own.
    let iam_calls = harness.emulator.count(Endpoint::IamGenerateIdToken);
    let impersonated = app
        .generate_id_token(id_token(BROKER_SA))
        .await
        .expect("impersonated")
        .into_inner();
    assert!(!impersonated.cache_hit);
    assert_eq!(
        harness.emulator.count(Endpoint::IamGenerateIdToken),
        iam_calls + 1
    );
    // (The two JWTs may be byte-identical: the same claims signed in the same second.)
    let again = app
        .generate_id_token(id_token(""))
        .await
        .expect("own identity again")
        .into_inner();
    assert!(again.cache_hit);
    assert_eq!(again.id_token, own.id_token);
    harness.stop().await;
}

#[tokio::test]
async fn a_base_token_iam_refuses_is_replaced_once() {
    let harness = start().await;
    let mut app = harness.client_for(APP).await;
    let sign = || pb::SignBlobRequest {
        service_account: BROKER_SA.to_owned(),
        payload: b"hello".to_vec(),
        credential: "sa".to_owned(),
        ..Default::default()
    };
    app.sign_blob(sign()).await.expect("first signature");
    let minted = harness.emulator.count(Endpoint::OAuth2Token);

    // IAM refuses the cached base token once (as after a revocation): the broker drops it,
    // mints a new one and signs.
    harness
        .emulator
        .inject_fault(fault(
            serde_json::json!({"endpoint": "iam.signBlob", "status": 401, "times": 1}),
        ))
        .expect("fault");
    let signed = app
        .sign_blob(sign())
        .await
        .expect("signed with a new base token")
        .into_inner();
    assert_eq!(signed.signature.len(), 256);
    assert_eq!(harness.emulator.count(Endpoint::OAuth2Token), minted + 1);

    // Twice in a row is not a stale token: the refusal is the broker's credential failing.
    harness
        .emulator
        .inject_fault(fault(
            serde_json::json!({"endpoint": "iam.signBlob", "status": 401, "times": 2}),
        ))
        .expect("fault");
    let status = app.sign_blob(sign()).await.expect_err("refused twice");
    let metadata = assert_error(&status, Code::FailedPrecondition, "UPSTREAM_REJECTED");
    assert_eq!(metadata["upstream_status"], "401", "{metadata:?}");
    harness.stop().await;
}
