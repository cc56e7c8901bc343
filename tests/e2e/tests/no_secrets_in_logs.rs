//! Every log line of every crate, at every level, while the broker mints, caches, downscopes,
//! fails and refuses: no token, assertion, key or subject token may appear in it. Nor, on the
//! paths of impersonation, ID tokens and signing (every kind of credential, successes and
//! injected IAM, token-endpoint and metadata failures): an ID token, an impersonated token, a
//! signed JWT, a signature (raw or encoded), a refresh token or a client secret. Nor, on the
//! paths of identity federation (ExchangeToken, plain, shaped by a credential and downscoping,
//! and `external_account` credentials of file and AWS sources, with Google's refusals and
//! failures): a subject token (OIDC or a signed AWS request), an exchanged or downscoped
//! token, an AWS secret access key, session token or request signature, or a workforce
//! client secret.

use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use broker_proto::tokenbroker::v1 as pb;
use e2e::*;
use gcp_emulator::{Fault, RunningEmulator, World};
use serde_json::json;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Slices of a PEM's base64 body: any of them in the logs means the key leaked.
fn pem_fragments(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        .map(|l| l[..40].to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_at_any_level() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .init();

    let harness = Harness::start(Options::default()).await;
    let app = harness.identity(APP);
    let mut client = harness.client(Some(&app)).await.expect("connect");
    let mut secrets: Vec<String> = Vec::new();

    // Minted, cached, delegated, downscoped.
    for request in [
        request(&[CLOUD_PLATFORM]),
        request(&[CLOUD_PLATFORM]),
        pb::GetAccessTokenRequest {
            subject: "alice@example.com".into(),
            ..request(&[DIRECTORY_READ])
        },
        pb::GetAccessTokenRequest {
            access_boundary: Some(pb::CredentialAccessBoundary {
                access_boundary_rules: vec![pb::AccessBoundaryRule {
                    available_resource: "//storage.googleapis.com/projects/_/buckets/b".into(),
                    available_permissions: vec!["inRole:roles/storage.objectViewer".into()],
                    availability_condition: None,
                }],
            }),
            ..request(&[STORAGE_READ])
        },
    ] {
        secrets.push(
            client
                .get_access_token(request)
                .await
                .expect("token")
                .into_inner()
                .access_token,
        );
    }

    // A token served as last known good while Google fails (4-second tokens must be refreshed
    // after 2 s), a refusal remembered by the negative cache, a caller's deadline, a rate limit.
    harness
        .emulator
        .set_token_lifetime(Some(std::time::Duration::from_secs(4)));
    let read_write = "https://www.googleapis.com/auth/devstorage.read_write";
    secrets.push(
        client
            .get_access_token(request(&[read_write]))
            .await
            .expect("token")
            .into_inner()
            .access_token,
    );
    let unavailable: Fault =
        serde_json::from_value(json!({"endpoint": "oauth2.token", "status": 503})).expect("fault");
    harness.emulator.inject_fault(unavailable).expect("fault");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let stale = client
        .get_access_token(request(&[read_write]))
        .await
        .expect("last known good")
        .into_inner();
    assert!(stale.last_known_good);
    harness.emulator.clear_faults();
    harness.emulator.set_token_lifetime(None);
    let rejected: Fault = serde_json::from_value(json!({"endpoint": "oauth2.token",
        "status": 400, "error": "invalid_grant", "error_description": "Invalid JWT Signature."}))
    .expect("fault");
    harness.emulator.inject_fault(rejected).expect("fault");
    for _ in 0..2 {
        assert!(
            client
                .get_access_token(request(&["https://www.googleapis.com/auth/devstorage.x"]))
                .await
                .is_err()
        );
    }
    harness.emulator.clear_faults();
    let slow: Fault =
        serde_json::from_value(json!({"endpoint": "oauth2.token", "delay_ms": 1500, "times": 1}))
            .expect("fault");
    harness.emulator.inject_fault(slow).expect("fault");
    let mut impatient =
        tonic::Request::new(request(&["https://www.googleapis.com/auth/devstorage.y"]));
    impatient.set_timeout(std::time::Duration::from_millis(500));
    assert!(client.get_access_token(impatient).await.is_err());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    // Failing upstream, a denial, a connection without a certificate.
    let fault: Fault =
        serde_json::from_value(json!({"endpoint": "oauth2.token", "status": 503})).expect("fault");
    harness.emulator.inject_fault(fault).expect("fault");
    let failed = client
        .get_access_token(request(&[
            "https://www.googleapis.com/auth/devstorage.full_control",
        ]))
        .await;
    assert!(failed.is_err());
    harness.emulator.clear_faults();
    let mut reader = harness
        .client(Some(&harness.identity(READER)))
        .await
        .expect("connect");
    assert!(
        reader
            .get_access_token(request(&[CLOUD_PLATFORM]))
            .await
            .is_err()
    );
    if let Ok(mut anonymous) = harness.client(None).await {
        assert!(anonymous.get_access_token(request(&[])).await.is_err());
    }

    let key_file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(harness.dir.path().join("emulator/keys/broker.json"))
            .expect("key file"),
    )
    .expect("json");
    let key_fragments = pem_fragments(key_file["private_key"].as_str().expect("pem"));
    let server_key_fragments = pem_fragments(
        &std::fs::read_to_string(harness.dir.path().join("server-key.pem")).expect("server key"),
    );
    harness.stop().await;

    // Impersonation, ID tokens and signing, by every kind of credential.
    let mut signatures: Vec<Vec<u8>> = Vec::new();
    let more_key_fragments = new_paths(&mut secrets, &mut signatures).await;

    // Identity federation.
    let federation_secrets = federation_paths(&mut secrets).await;

    let logs = String::from_utf8(capture.0.lock().expect("lock").clone()).expect("utf-8");
    assert!(
        logs.len() > 1000,
        "the capture saw the run ({} bytes)",
        logs.len()
    );
    assert!(
        logs.contains("TLS handshake failed"),
        "the refused handshake is logged with its reason"
    );
    assert!(logs.contains("sha256:"), "tokens are logged by fingerprint");
    assert!(
        logs.contains("origin=\"last_known_good\""),
        "the audit event marks a last known good token"
    );
    assert!(
        logs.contains("negative_cache=true"),
        "the audit event marks a refusal served from the negative cache"
    );
    assert!(
        logs.contains("UPSTREAM_DEADLINE_EXCEEDED"),
        "the deadline is audited"
    );
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a token leaked into the logs"
        );
        assert!(
            !logs.contains(&secret[..24]),
            "a token prefix leaked into the logs"
        );
    }
    for secret in &federation_secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a federation secret leaked into the logs ({} characters of it)",
            secret.len()
        );
    }
    for rpc in [
        "ImpersonateServiceAccount",
        "GenerateIdToken",
        "SignJwt",
        "SignBlob",
        "ExchangeToken",
    ] {
        assert!(
            logs.contains(&format!("rpc=\"{rpc}\"")),
            "the capture saw {rpc}"
        );
    }
    assert!(
        logs.contains("IAM_PERMISSION_DENIED"),
        "the capture saw the IAM refusal"
    );
    for seen in [
        "exchange=\"federation\"",
        "exchange=\"downscoping\"",
        "subject_token_sub=repo:org/app",
    ] {
        assert!(logs.contains(seen), "the capture saw {seen}");
    }
    for reason in [
        "UPSTREAM_REJECTED",
        "UPSTREAM_UNAVAILABLE",
        "UPSTREAM_DEADLINE_EXCEEDED",
    ] {
        assert!(
            logs.lines()
                .any(|line| line.contains("rpc=\"ExchangeToken\"")
                    && line.contains("outcome=\"error\"")
                    && line.contains(&format!("reason=\"{reason}\""))),
            "the capture saw an ExchangeToken failing with {reason}"
        );
    }
    for signature in &signatures {
        for encoded in encodings(signature) {
            assert!(
                !logs.contains(&encoded),
                "a signature leaked into the logs ({} bytes of an encoding)",
                encoded.len()
            );
        }
    }
    // The authorized user's secrets (from its own file and nested in an impersonated one).
    for secret in ["dev-refresh-token", "dev-secret"] {
        assert!(
            !logs.contains(secret),
            "a user's secret leaked into the logs"
        );
    }
    for fragment in key_fragments
        .iter()
        .chain(&server_key_fragments)
        .chain(&more_key_fragments)
    {
        assert!(
            !logs.contains(fragment.as_str()),
            "key material leaked into the logs"
        );
    }
    assert!(
        !logs.contains("PRIVATE KEY"),
        "a PEM key leaked into the logs"
    );
    assert!(
        !logs.contains("eyJ"),
        "a JWT (assertion or ID token) leaked into the logs"
    );
    assert!(
        !logs.contains("assertion="),
        "a form body leaked into the logs"
    );
}

/// The forms a signature could take in a log line: base64 (standard, padded or not, and
/// URL-safe), hex, and the `Debug` of its bytes; each cut to a prefix long enough to be unique.
fn encodings(signature: &[u8]) -> Vec<String> {
    let engines = [
        base64::engine::general_purpose::STANDARD.encode(signature),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature),
    ];
    let hex: String = signature.iter().map(|b| format!("{b:02x}")).collect();
    let debug = format!("{:?}", &signature[..16]);
    let mut forms: Vec<String> = engines.iter().map(|e| e[..24].to_owned()).collect();
    forms.push(hex[..32].to_owned());
    forms.push(hex[..32].to_uppercase());
    forms.push(debug[..debug.len() - 1].to_owned());
    forms
}

/// Credentials of every kind besides `sa`.
const NEW_CREDENTIALS: &str = r#"
[[credentials]]
name = "md"
kind = "metadata"

[[credentials]]
name = "user"
kind = "authorized_user"
file = "emulator/users/dev-user.json"

[[credentials]]
name = "imp-reader"
kind = "impersonated"
base = "sa"
target = "reader@dev-project.iam.gserviceaccount.com"

[[credentials]]
name = "file-user"
kind = "impersonated"
file = "impersonated-user.json"

[[credentials]]
name = "keyless"
kind = "impersonated"
base = "sa"
target = "broker@dev-project.iam.gserviceaccount.com"
"#;

const NEW_POLICY: &str = r#"
[[grants]]
name = "everything"
credential = "sa"
default = true
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["GetAccessToken", "ImpersonateServiceAccount", "GenerateIdToken", "SignJwt", "SignBlob"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
scope_prefixes = ["https://www.googleapis.com/auth/devstorage."]
service_accounts = [
  "broker@dev-project.iam.gserviceaccount.com",
  "reader@dev-project.iam.gserviceaccount.com",
  "writer@dev-project.iam.gserviceaccount.com",
  "chained@dev-project.iam.gserviceaccount.com",
]
delegates = [["reader@dev-project.iam.gserviceaccount.com"]]
audiences = ["${FUNCTION_URL}"]
audience_prefixes = ["https://"]

[[grants]]
name = "md"
credential = "md"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["GetAccessToken", "GenerateIdToken"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
scope_prefixes = ["https://www.googleapis.com/auth/devstorage."]
audiences = ["${FUNCTION_URL}"]

[[grants]]
name = "imp-reader"
credential = "imp-reader"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["GetAccessToken", "GenerateIdToken"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
audiences = ["${FUNCTION_URL}"]

[[grants]]
name = "user"
credential = "user"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
scopes = ["https://www.googleapis.com/auth/cloud-platform", "https://www.googleapis.com/auth/sqlservice.login"]

[[grants]]
name = "file-user"
credential = "file-user"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]

[[grants]]
name = "keyless"
credential = "keyless"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
scopes = ["https://www.googleapis.com/auth/admin.directory.user.readonly"]
subject_domains = ["example.com"]
"#;

/// gcloud's impersonated_service_account file whose source is the authorized user.
fn write_impersonated_user_file(emulator: &RunningEmulator, dir: &std::path::Path) {
    let json = json!({
        "type": "impersonated_service_account",
        "service_account_impersonation_url": format!(
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{READER_SA}:generateAccessToken"
        ),
        "source_credentials": emulator.authorized_user_file(DEV_USER).expect("user file"),
    });
    std::fs::write(dir.join("impersonated-user.json"), json.to_string()).expect("write");
}

fn inject(harness: &Harness, json: serde_json::Value) {
    harness.emulator.clear_faults();
    let fault: Fault = serde_json::from_value(json).expect("fault");
    harness.emulator.inject_fault(fault).expect("fault");
}

/// Mints, caches, signs and fails through every new path; collects what must stay secret.
/// Returns fragments of this harness's service-account key.
async fn new_paths(secrets: &mut Vec<String>, signatures: &mut Vec<Vec<u8>>) -> Vec<String> {
    let mut world = chain_world();
    for account in &mut world.service_accounts {
        if account.email == READER_SA {
            account.token_creators.push(format!("user:{DEV_USER}"));
        }
    }
    let harness = Harness::start(Options {
        policy: NEW_POLICY.to_owned(),
        extra_config: NEW_CREDENTIALS.to_owned(),
        world: Some::<World>(world),
        setup: Some(write_impersonated_user_file),
        ..Options::default()
    })
    .await;
    let mut client = harness.client_for(APP).await;
    let function = harness.emulator.function_url();

    // Access tokens: the IAM bearer token of `sa`, every kind, impersonation, keyless
    // delegation; each twice (minted, then cached).
    let access = |credential: &str, scopes: &[&str], subject: &str| pb::GetAccessTokenRequest {
        credential: credential.to_owned(),
        subject: subject.to_owned(),
        ..request(scopes)
    };
    for request in [
        access("sa", &[CLOUD_PLATFORM], ""),
        access("md", &[CLOUD_PLATFORM], ""),
        access("user", &[CLOUD_PLATFORM], ""),
        access("imp-reader", &[CLOUD_PLATFORM], ""),
        access("file-user", &[CLOUD_PLATFORM], ""),
        access("keyless", &[DIRECTORY_READ], "alice@example.com"),
    ] {
        for _ in 0..2 {
            secrets.push(
                client
                    .get_access_token(request.clone())
                    .await
                    .unwrap_or_else(|e| panic!("{request:?}: {e:?}"))
                    .into_inner()
                    .access_token,
            );
        }
    }
    let impersonate =
        |target: &str, delegates: &[&str], lifetime| pb::ImpersonateServiceAccountRequest {
            target_service_account: target.to_owned(),
            delegates: delegates.iter().map(|d| (*d).to_owned()).collect(),
            lifetime,
            ..Default::default()
        };
    for request in [
        impersonate(READER_SA, &[], None),
        impersonate(WRITER_SA, &[], seconds(43_200)),
        impersonate(CHAINED_SA, &[READER_SA], None),
    ] {
        for _ in 0..2 {
            secrets.push(
                client
                    .impersonate_service_account(request.clone())
                    .await
                    .expect("impersonated")
                    .into_inner()
                    .access_token,
            );
        }
    }

    // ID tokens of every path, each twice.
    let id = |credential: &str, target: &str, delegates: &[&str]| pb::GenerateIdTokenRequest {
        audience: function.clone(),
        credential: credential.to_owned(),
        target_service_account: target.to_owned(),
        delegates: delegates.iter().map(|d| (*d).to_owned()).collect(),
        include_email: true,
        ..Default::default()
    };
    for request in [
        id("sa", "", &[]),
        id("md", "", &[]),
        id("imp-reader", "", &[]),
        id("sa", READER_SA, &[]),
        id("sa", CHAINED_SA, &[READER_SA]),
    ] {
        for _ in 0..2 {
            secrets.push(
                client
                    .generate_id_token(request.clone())
                    .await
                    .expect("ID token")
                    .into_inner()
                    .id_token,
            );
        }
    }

    // Signatures.
    for account in [BROKER_SA, READER_SA] {
        let claims = json!({"iss": account, "aud": "https://api.example.com",
            "exp": unix_now() + 600, "secret-ish": "claims"});
        secrets.push(
            client
                .sign_jwt(pb::SignJwtRequest {
                    service_account: account.to_owned(),
                    payload: claims.to_string(),
                    ..Default::default()
                })
                .await
                .expect("signed JWT")
                .into_inner()
                .signed_jwt,
        );
        signatures.push(
            client
                .sign_blob(pb::SignBlobRequest {
                    service_account: account.to_owned(),
                    payload: b"a blob".to_vec(),
                    ..Default::default()
                })
                .await
                .expect("signature")
                .into_inner()
                .signature,
        );
    }

    // Failures: IAM refusing and failing on each method, the token endpoint refusing the
    // user's refresh token, the metadata server failing, a caller's deadline.
    inject(
        &harness,
        json!({"endpoint": "iam.generateAccessToken", "status": 403,
            "error": "IAM_PERMISSION_DENIED",
            "error_description": "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist)."}),
    );
    client
        .impersonate_service_account(pb::ImpersonateServiceAccountRequest {
            scopes: vec![STORAGE_READ.into()],
            ..impersonate(WRITER_SA, &[], None)
        })
        .await
        .expect_err("fails");
    inject(
        &harness,
        json!({"endpoint": "iam.generateIdToken", "status": 503}),
    );
    client
        .generate_id_token(pb::GenerateIdTokenRequest {
            audience: "https://other.example.com/".into(),
            ..id("sa", READER_SA, &[])
        })
        .await
        .expect_err("fails");
    inject(&harness, json!({"endpoint": "iam.signJwt", "status": 500}));
    client
        .sign_jwt(pb::SignJwtRequest {
            service_account: BROKER_SA.into(),
            payload: "{\"sub\":\"x\"}".into(),
            ..Default::default()
        })
        .await
        .expect_err("fails");
    // Keyless delegation signs its assertion with signJwt, which still fails.
    client
        .get_access_token(access("keyless", &[DIRECTORY_READ], "bob@example.com"))
        .await
        .expect_err("fails");
    inject(
        &harness,
        json!({"endpoint": "iam.signBlob", "malformed_body": true}),
    );
    client
        .sign_blob(pb::SignBlobRequest {
            service_account: BROKER_SA.into(),
            payload: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .expect_err("fails");
    inject(
        &harness,
        json!({"endpoint": "oauth2.token", "status": 400, "error": "invalid_grant",
            "error_description": "Token has been expired or revoked."}),
    );
    client
        .get_access_token(access(
            "user",
            &["https://www.googleapis.com/auth/sqlservice.login"],
            "",
        ))
        .await
        .expect_err("fails");
    inject(&harness, json!({"endpoint": "metadata", "status": 503}));
    client
        .get_access_token(access("md", &[STORAGE_READ], ""))
        .await
        .expect_err("fails");
    inject(
        &harness,
        json!({"endpoint": "iam.signBlob", "delay_ms": 1000}),
    );
    let mut hurried = tonic::Request::new(pb::SignBlobRequest {
        service_account: READER_SA.into(),
        payload: b"late".to_vec(),
        ..Default::default()
    });
    hurried.set_timeout(std::time::Duration::from_millis(300));
    assert!(client.sign_blob(hurried).await.is_err());
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    harness.emulator.clear_faults();

    let key_file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(harness.dir.path().join("emulator/keys/broker.json"))
            .expect("key file"),
    )
    .expect("json");
    let fragments = pem_fragments(key_file["private_key"].as_str().expect("pem"));
    harness.stop().await;
    fragments
}

/// `app` may exchange anything of the default pools and downscope, use `ext-reader` (an
/// `external_account` credential impersonating reader@ whose source is a token file) for both
/// RPCs, `wif-aws` (the emulator's IMDSv2) and `ext-workforce` (a workforce OAuth client).
const FEDERATION_POLICY: &str = r#"
[[grants]]
name = "tokens"
credential = "sa"
default = true
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]

[[grants]]
name = "plain"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["ExchangeToken"]
audience_prefixes = [
  "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/dev-pool/",
  "//iam.googleapis.com/locations/global/workforcePools/dev-workforce/",
]
subject_token_types = [
  "urn:ietf:params:oauth:token-type:jwt",
  "urn:ietf:params:aws:token-type:aws4_request",
  "urn:ietf:params:oauth:token-type:access_token",
]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
scope_prefixes = ["https://www.googleapis.com/auth/devstorage."]

[[grants]]
name = "ext-reader"
credential = "ext-reader"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["GetAccessToken", "ExchangeToken"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
scope_prefixes = ["https://www.googleapis.com/auth/devstorage."]
subject_token_types = ["urn:ietf:params:oauth:token-type:jwt"]

[[grants]]
name = "wif-aws"
credential = "wif-aws"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
scope_prefixes = ["https://www.googleapis.com/auth/devstorage."]

[[grants]]
name = "ext-workforce"
credential = "ext-workforce"
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["ExchangeToken"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
subject_token_types = ["urn:ietf:params:oauth:token-type:jwt"]
"#;

const FEDERATION_CREDENTIALS: &str = r#"
[[credentials]]
name = "ext-reader"
kind = "external_account"
file = "ext-reader.json"

[[credentials]]
name = "wif-aws"
kind = "external_account"
file = "wif-aws.json"

[[credentials]]
name = "ext-workforce"
kind = "external_account"
file = "ext-workforce.json"
"#;

/// The workforce provider's OAuth client secret in the default world.
const WORKFORCE_CLIENT_SECRET: &str = "dev-workforce-secret";

/// The `external_account` files: `ext-reader` reads `subject-token` (a dev-oidc token),
/// `wif-aws` the emulator's IMDSv2, `ext-workforce` authenticates its client.
fn write_federation_files(emulator: &RunningEmulator, dir: &std::path::Path) {
    let federation = emulator.federation();
    let sts = format!("{}/v1/token", emulator.url());
    let token = emulator
        .mint_oidc_token(
            "dev-oidc",
            "file-workload",
            std::time::Duration::from_secs(600),
            serde_json::Value::Null,
        )
        .expect("subject token");
    std::fs::write(dir.join("subject-token"), token).expect("write");
    write_json(
        dir,
        "ext-reader.json",
        &json!({
            "type": "external_account",
            "audience": workload_provider("dev-oidc"),
            "subject_token_type": JWT_TOKEN_TYPE,
            "token_url": sts,
            "service_account_impersonation_url": format!(
                "{}/v1/projects/-/serviceAccounts/{READER_SA}:generateAccessToken",
                emulator.url()
            ),
            "credential_source": {"file": dir.join("subject-token").display().to_string()},
        }),
    );
    let aws = federation.aws_provider().expect("dev-aws");
    write_json(
        dir,
        "wif-aws.json",
        &json!({
            "type": "external_account",
            "audience": aws.audience,
            "subject_token_type": AWS4_TOKEN_TYPE,
            "token_url": sts,
            "credential_source": aws.credential_source(),
        }),
    );
    write_json(
        dir,
        "ext-workforce.json",
        &json!({
            "type": "external_account",
            "audience": workforce_provider("dev-workforce-oidc"),
            "subject_token_type": JWT_TOKEN_TYPE,
            "client_id": "dev-workforce-client",
            "client_secret": WORKFORCE_CLIENT_SECRET,
            "token_url": sts,
            "credential_source": {"file": dir.join("subject-token").display().to_string()},
        }),
    );
}

/// Exchanges, federates and downscopes, and fails doing so; collects the tokens that must
/// stay secret into `secrets` and returns the other federation secrets: the subject tokens
/// (and, of signed AWS requests, the signature), the AWS secret access key and session token,
/// the workforce client secret.
async fn federation_paths(secrets: &mut Vec<String>) -> Vec<String> {
    let harness = Harness::start(Options {
        policy: FEDERATION_POLICY.to_owned(),
        extra_config: FEDERATION_CREDENTIALS.to_owned(),
        setup: Some(write_federation_files),
        ..Options::default()
    })
    .await;
    let mut client = harness.client_for(APP).await;
    let keys = AwsKeys::of(&harness.emulator);
    let mut other: Vec<String> = vec![
        keys.secret_access_key.clone(),
        "devEmulatorSecretAccessKey".to_owned(),
        WORKFORCE_CLIENT_SECRET.to_owned(),
    ];
    let session = keys.session_token.clone().expect("a session token");
    other.push(session.clone());
    other.push(session[..24].to_owned());
    let dev_oidc = workload_provider("dev-oidc");
    let dev_aws = workload_provider("dev-aws");
    let mut subject_tokens: Vec<String> = Vec::new();

    // Plain federation: OIDC and AWS, each twice (never cached).
    let oidc = harness.oidc_token("dev-oidc", "repo:org/app", serde_json::Value::Null);
    let aws = aws4_request_token(&keys, &dev_aws, std::time::SystemTime::now());
    for (token, token_type, audience) in [
        (&oidc, JWT_TOKEN_TYPE, &dev_oidc),
        (&aws, AWS4_TOKEN_TYPE, &dev_aws),
    ] {
        for _ in 0..2 {
            secrets.push(
                client
                    .exchange_token(exchange(token, token_type, audience))
                    .await
                    .unwrap_or_else(|e| panic!("{token_type}: {e:?}"))
                    .into_inner()
                    .access_token,
            );
        }
    }
    subject_tokens.push(oidc.clone());
    subject_tokens.push(aws.clone());
    let signature = aws
        .split("Signature%3D")
        .nth(1)
        .map(|rest| rest[..64].to_owned())
        .expect("the AWS signature");
    other.push(signature);

    // Shaped by credentials: impersonation, and a workforce client.
    secrets.push(
        client
            .exchange_token(broker_proto::tokenbroker::v1::ExchangeTokenRequest {
                credential: "ext-reader".into(),
                ..exchange(&oidc, JWT_TOKEN_TYPE, "")
            })
            .await
            .expect("impersonated")
            .into_inner()
            .access_token,
    );
    let alice = harness.oidc_token("dev-workforce-oidc", "alice", serde_json::Value::Null);
    secrets.push(
        client
            .exchange_token(broker_proto::tokenbroker::v1::ExchangeTokenRequest {
                credential: "ext-workforce".into(),
                ..exchange(&alice, JWT_TOKEN_TYPE, "")
            })
            .await
            .expect("workforce")
            .into_inner()
            .access_token,
    );
    subject_tokens.push(alice);

    // Configured credentials: a token file, AWS through IMDSv2; minted, then cached.
    for credential in ["ext-reader", "wif-aws"] {
        for _ in 0..2 {
            secrets.push(
                client
                    .get_access_token(pb::GetAccessTokenRequest {
                        credential: credential.to_owned(),
                        ..request(&[CLOUD_PLATFORM])
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{credential}: {e:?}"))
                    .into_inner()
                    .access_token,
            );
        }
    }
    subject_tokens.push(
        std::fs::read_to_string(harness.dir.path().join("subject-token")).expect("token file"),
    );

    // Downscoping a broker token.
    let broker_token = client
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("sa")
        .into_inner()
        .access_token;
    secrets.push(broker_token.clone());
    let downscope = broker_proto::tokenbroker::v1::ExchangeTokenRequest {
        options: Some(broker_proto::tokenbroker::v1::ExchangeTokenOptions {
            user_project: String::new(),
            access_boundary: Some(boundary(
                "//storage.googleapis.com/projects/_/buckets/b",
                &["inRole:roles/storage.objectViewer"],
            )),
        }),
        ..exchange(&broker_token, ACCESS_TOKEN_TYPE, "")
    };
    for _ in 0..2 {
        secrets.push(
            client
                .exchange_token(downscope.clone())
                .await
                .expect("downscoped")
                .into_inner()
                .access_token,
        );
    }

    // Refusals and failures: an expired subject token, a forged AWS request, an unknown
    // provider, STS failing and refusing with a description, the caller's deadline, an expired
    // token file.
    let expired = harness.expired_oidc_token("dev-oidc", "repo:org/app");
    let forged = aws4_request_token(
        &AwsKeys {
            secret_access_key: "forged-secret-access-key/0000000000000000".into(),
            ..keys.clone()
        },
        &dev_aws,
        std::time::SystemTime::now(),
    );
    for (token, token_type, audience) in [
        (&expired, JWT_TOKEN_TYPE, dev_oidc.clone()),
        (&forged, AWS4_TOKEN_TYPE, dev_aws.clone()),
        (&oidc, JWT_TOKEN_TYPE, workload_provider("nope")),
    ] {
        client
            .exchange_token(exchange(token, token_type, &audience))
            .await
            .expect_err("refused");
    }
    subject_tokens.push(expired.clone());
    subject_tokens.push(forged);
    inject(&harness, json!({"endpoint": "sts.token", "status": 503}));
    client
        .exchange_token(exchange(&oidc, JWT_TOKEN_TYPE, &dev_oidc))
        .await
        .expect_err("unavailable");
    inject(
        &harness,
        json!({"endpoint": "sts.token", "status": 400, "error": "invalid_grant",
            "error_description": "The subject token is invalid."}),
    );
    client
        .exchange_token(downscope.clone())
        .await
        .expect_err("refused");
    inject(&harness, json!({"endpoint": "sts.token", "delay_ms": 1000}));
    let mut hurried = tonic::Request::new(exchange(&oidc, JWT_TOKEN_TYPE, &dev_oidc));
    hurried.set_timeout(std::time::Duration::from_millis(300));
    assert!(client.exchange_token(hurried).await.is_err());
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    harness.emulator.clear_faults();
    harness.replace_file("subject-token", &expired);
    client
        .get_access_token(pb::GetAccessTokenRequest {
            credential: "ext-reader".to_owned(),
            ..request(&[STORAGE_READ])
        })
        .await
        .expect_err("the token file holds an expired token");
    harness.stop().await;

    for token in &subject_tokens {
        other.push(token.clone());
        other.push(token[token.len() - 24..].to_owned());
    }
    other
}
