//! `external_account` credentials (workload and workforce identity federation) configured in
//! the broker and used through GetAccessToken and GenerateIdToken, one per credential source:
//! a token file rotated between fetches, a token URL, AWS through the emulator's IMDSv2, an
//! X.509 workload certificate over mutual TLS, an executable (and the refusal to start one
//! that is not allowed), and a workforce pool billed to a user project.
//!
//! The AWS source reads `AWS_*` variables of the process before the metadata service; these
//! tests need them unset (nothing here sets them) to exercise the metadata path.

use std::path::Path;

use broker_proto::tokenbroker::v1 as pb;
use e2e::*;
use gcp_emulator::{Endpoint, RunningEmulator};
use serde_json::json;
use tonic::Code;

/// The credentials: each file is written by [`write_credential_files`], except `wif-url.json`
/// (made by [`start`] for its token server).
const CREDENTIALS: &str = r#"
[[credentials]]
name = "wif-file"
kind = "external_account"
file = "wif-file.json"

[[credentials]]
name = "wif-url"
kind = "external_account"
file = "wif-url.json"

[[credentials]]
name = "wif-aws"
kind = "external_account"
file = "wif-aws.json"

[[credentials]]
name = "wif-x509"
kind = "external_account"
file = "wif-x509.json"
mtls_roots_file = "emulator/federation/sts-mtls-ca.pem"

[[credentials]]
name = "wif-x509-reader"
kind = "external_account"
file = "wif-x509-reader.json"
mtls_roots_file = "emulator/federation/sts-mtls-ca.pem"

[[credentials]]
name = "wif-exec"
kind = "external_account"
file = "wif-exec.json"
allow_executable = true

[[credentials]]
name = "wif-workforce"
kind = "external_account"
file = "wif-workforce.json"
allow_executable = false
"#;

const NAMES: [&str; 7] = [
    "wif-file",
    "wif-url",
    "wif-aws",
    "wif-x509",
    "wif-x509-reader",
    "wif-exec",
    "wif-workforce",
];

/// One grant of `app` per credential: access tokens, and ID tokens for the function.
fn policy() -> String {
    NAMES
        .iter()
        .map(|name| {
            format!(
                "[[grants]]\nname = \"{name}\"\ncredential = \"{name}\"\ncallers = [{{ spiffe_id = \"{APP}\" }}]\nrpcs = [\"GetAccessToken\", \"GenerateIdToken\"]\nscopes = [\"{CLOUD_PLATFORM}\"]\nscope_prefixes = [\"https://www.googleapis.com/auth/devstorage.\"]\naudiences = [\"${{FUNCTION_URL}}\"]\n\n"
            )
        })
        .collect()
}

/// The subject of the token first in `subject-token`.
const FIRST_WORKLOAD: &str = "workload-1";

/// An `external_account` file as gcloud writes it (`create-cred-config`), STS and IAM at the
/// emulator (`base`).
fn external_account(
    audience: &str,
    token_type: &str,
    token_url: &str,
    source: serde_json::Value,
) -> serde_json::Value {
    json!({
        "type": "external_account",
        "audience": audience,
        "subject_token_type": token_type,
        "token_url": token_url,
        "credential_source": source,
        "universe_domain": "googleapis.com",
    })
}

/// `service_account_impersonation_url` of reader@ at `base`.
fn impersonating_reader(base: &str) -> String {
    format!("{base}/v1/projects/-/serviceAccounts/{READER_SA}:generateAccessToken")
}

/// Writes every credential file whose content depends on the emulator or on this directory.
fn write_credential_files(emulator: &RunningEmulator, dir: &Path) {
    let federation = emulator.federation();
    let sts = format!("{}/v1/token", emulator.url());
    let token = |provider: &str, subject: &str| {
        emulator
            .mint_oidc_token(
                provider,
                subject,
                std::time::Duration::from_secs(600),
                serde_json::Value::Null,
            )
            .expect("subject token")
    };
    let path = |name: &str| dir.join(name).display().to_string();

    // A token file, text.
    std::fs::write(dir.join("subject-token"), token("dev-oidc", FIRST_WORKLOAD)).expect("write");
    write_json(
        dir,
        "wif-file.json",
        &external_account(
            &workload_provider("dev-oidc"),
            JWT_TOKEN_TYPE,
            &sts,
            json!({"file": path("subject-token"), "format": {"type": "text"}}),
        ),
    );

    // AWS: the emulator's IMDSv2, and Google's template of the verification URL.
    let aws = federation.aws_provider().expect("dev-aws");
    let mut source = aws.credential_source();
    source["regional_cred_verification_url"] =
        "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15".into();
    write_json(
        dir,
        "wif-aws.json",
        &external_account(&aws.audience, AWS4_TOKEN_TYPE, &sts, source),
    );

    // X.509: the generated workload certificate, STS (and IAM) over mutual TLS.
    let x509 = federation.x509_provider().expect("dev-x509");
    let source = x509.credential_source().expect("certificate_config.json");
    let plain = external_account(&x509.audience, MTLS_TOKEN_TYPE, &x509.token_url, source);
    write_json(dir, "wif-x509.json", &plain);
    let mut reader = plain;
    reader["service_account_impersonation_url"] =
        impersonating_reader(&federation.sts_mtls_url).into();
    write_json(dir, "wif-x509-reader.json", &reader);

    // An executable printing Google's executable response.
    write_json(
        dir,
        "exec-response.json",
        &json!({
            "version": 1,
            "success": true,
            "token_type": JWT_TOKEN_TYPE,
            "id_token": token("dev-oidc", "executable-workload"),
            "expiration_time": unix_now() + 600,
        }),
    );
    write_json(
        dir,
        "wif-exec.json",
        &external_account(
            &workload_provider("dev-oidc"),
            JWT_TOKEN_TYPE,
            &sts,
            json!({"executable": {
                "command": format!("cat {}", path("exec-response.json")),
                "timeout_millis": 5000,
            }}),
        ),
    );

    // A workforce pool: no OAuth client, so the user project is sent to STS.
    std::fs::write(
        dir.join("workforce-token"),
        token("dev-workforce-oidc", "alice"),
    )
    .expect("write");
    let mut workforce = external_account(
        &workforce_provider("dev-workforce-oidc"),
        JWT_TOKEN_TYPE,
        &sts,
        json!({"file": path("workforce-token")}),
    );
    workforce["workforce_pool_user_project"] = "dev-project".into();
    write_json(dir, "wif-workforce.json", &workforce);
}

/// The harness, with `wif-url` reading `server` (a JSON answer whose `access_token` is the
/// subject token, sent only with `Metadata: True`) and impersonating reader@.
async fn start(server: &TokenServer) -> Harness {
    let mut url = external_account(
        &workload_provider("dev-oidc"),
        JWT_TOKEN_TYPE,
        "${EMULATOR_URL}/v1/token",
        json!({
            "url": format!("{}/token?resource=gcp", server.url()),
            "headers": {"Metadata": "True"},
            "format": {"type": "json", "subject_token_field_name": "access_token"},
        }),
    );
    url["service_account_impersonation_url"] = impersonating_reader("${EMULATOR_URL}").into();
    url["service_account_impersonation"] = json!({"token_lifetime_seconds": 1800});
    Harness::start(Options {
        policy: policy(),
        extra_config: CREDENTIALS.to_owned(),
        files: vec![("wif-url.json".to_owned(), url.to_string())],
        setup: Some(write_credential_files),
        ..Options::default()
    })
    .await
}

fn access(credential: &str, scopes: &[&str]) -> pb::GetAccessTokenRequest {
    pb::GetAccessTokenRequest {
        credential: credential.to_owned(),
        ..request(scopes)
    }
}

fn id_token(credential: &str, harness: &Harness) -> pb::GenerateIdTokenRequest {
    pb::GenerateIdTokenRequest {
        audience: harness.emulator.function_url(),
        credential: credential.to_owned(),
        include_email: true,
        ..Default::default()
    }
}

/// The principal set the broker reports for tokens of `dev-pool` without impersonation.
fn workload_set() -> String {
    format!("principalSet://{WORKLOAD_POOL}/*")
}

/// Asserts that `expire` is `lifetime` seconds after a moment between `before` and now, and
/// that tokeninfo agrees.
async fn assert_expiry(
    harness: &Harness,
    token: &str,
    expire: Option<prost_types::Timestamp>,
    before: i64,
    lifetime: i64,
) -> serde_json::Value {
    let expire = expire.expect("expire_time").seconds;
    let after = unix_now();
    assert!(
        expire >= before + lifetime - 1 && expire <= after + lifetime + 1,
        "expires at {expire}, asked between {before} and {after} for {lifetime} s"
    );
    let info = harness.tokeninfo(token).await;
    let exp: i64 = info["exp"].as_str().expect("exp").parse().expect("number");
    assert!((exp - expire).abs() <= 1, "{info}");
    info
}

/// Asserts the ID-token refusal of a credential that does not impersonate.
fn assert_no_id_tokens(status: &tonic::Status, credential: &str) {
    let metadata = assert_error(
        status,
        Code::FailedPrecondition,
        "CREDENTIAL_FLOW_UNSUPPORTED",
    );
    assert_eq!(metadata["flow"], "id_token");
    assert_eq!(metadata["credential"], credential);
    assert_eq!(metadata["credential_type"], "external_account");
}

#[tokio::test]
async fn a_token_file_is_read_again_for_every_fetch() {
    let server = TokenServer::start().await;
    let harness = start(&server).await;
    let mut client = harness.client_for(APP).await;

    let before = unix_now();
    let first = client
        .get_access_token(access("wif-file", &[CLOUD_PLATFORM]))
        .await
        .expect("federated token")
        .into_inner();
    assert_eq!(first.principal, workload_set());
    assert_eq!(first.credential, "wif-file");
    assert!(!first.cache_hit);
    let info = assert_expiry(
        &harness,
        &first.access_token,
        first.expire_time,
        before,
        3600,
    )
    .await;
    assert_eq!(info["principal"], workload_principal(FIRST_WORKLOAD));
    assert_eq!(info["grant"], "sts-exchange");
    assert_eq!(info["scope"], CLOUD_PLATFORM);
    let sent = harness.sts_requests().pop().expect("STS");
    assert_eq!(sent.fields["audience"], workload_provider("dev-oidc"));
    assert_eq!(sent.fields["scope"], CLOUD_PLATFORM);
    assert_eq!(sent.fields["subject_token_type"], JWT_TOKEN_TYPE);

    // The file is rotated: the next fetch (another scope, so not the cached token) reads it.
    let rotated = harness.oidc_token("dev-oidc", "workload-2", serde_json::Value::Null);
    harness.replace_file("subject-token", &format!("{rotated}\n"));
    let second = client
        .get_access_token(access("wif-file", &[STORAGE_READ]))
        .await
        .expect("federated token")
        .into_inner();
    let info = harness.tokeninfo(&second.access_token).await;
    assert_eq!(info["principal"], workload_principal("workload-2"));
    assert_eq!(info["scope"], STORAGE_READ);
    let sent = harness.sts_requests().pop().expect("STS");
    assert_eq!(
        sent.fields["subject_token"]["sha256"],
        sha256_hex(rotated.as_bytes()),
        "the token without the newline around it"
    );

    // The first token is cached: no read, no exchange.
    let exchanges = harness.sts_requests().len();
    let cached = client
        .get_access_token(access("wif-file", &[CLOUD_PLATFORM]))
        .await
        .expect("cached")
        .into_inner();
    assert!(cached.cache_hit);
    assert_eq!(cached.access_token, first.access_token);
    assert_eq!(harness.sts_requests().len(), exchanges);

    // A federated identity has no ID token of Google's.
    let status = client
        .generate_id_token(id_token("wif-file", &harness))
        .await
        .expect_err("no impersonation");
    assert_no_id_tokens(&status, "wif-file");

    // An expired token in the file is the credential's failure, not the caller's.
    harness.replace_file(
        "subject-token",
        &harness.expired_oidc_token("dev-oidc", "workload-3"),
    );
    let status = client
        .get_access_token(access(
            "wif-file",
            &["https://www.googleapis.com/auth/devstorage.read_write"],
        ))
        .await
        .expect_err("expired subject token");
    let metadata = assert_error(&status, Code::FailedPrecondition, "UPSTREAM_REJECTED");
    assert_eq!(metadata["upstream_error"], "invalid_grant");
    assert_eq!(metadata["credential"], "wif-file");
    assert!(!metadata.contains_key("field"), "{metadata:?}");

    // No file at all: unavailable, naming the source.
    std::fs::remove_file(harness.dir.path().join("subject-token")).expect("remove");
    let status = client
        .get_access_token(access(
            "wif-file",
            &["https://www.googleapis.com/auth/devstorage.full_control"],
        ))
        .await
        .expect_err("no file");
    let metadata = assert_error(&status, Code::Unavailable, "UPSTREAM_UNAVAILABLE");
    assert_eq!(metadata["upstream"], "credential_source.file");
    harness.stop().await;
}

#[tokio::test]
async fn a_token_url_is_asked_with_its_headers_and_the_credential_impersonates() {
    let server = TokenServer::start().await;
    let harness = start(&server).await;
    let mut client = harness.client_for(APP).await;
    let subject_token = harness.oidc_token("dev-oidc", "url-workload", serde_json::Value::Null);
    server.serve(&json!({"access_token": subject_token, "token_type": "Bearer"}).to_string());

    let before = unix_now();
    let response = client
        .get_access_token(access("wif-url", &[CLOUD_PLATFORM]))
        .await
        .expect("impersonated token")
        .into_inner();
    assert_eq!(response.principal, READER_SA);
    assert_eq!(response.credential, "wif-url");
    let info = assert_expiry(
        &harness,
        &response.access_token,
        response.expire_time,
        before,
        1800,
    )
    .await;
    assert_eq!(info["principal"], format!("serviceAccount:{READER_SA}"));
    assert_eq!(info["grant"], "generate-access-token");
    assert_eq!(info["scope"], CLOUD_PLATFORM);

    let heads = server.requests();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].starts_with("GET /token?resource=gcp HTTP/1.1\r\n"),
        "{}",
        heads[0]
    );
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("\r\nmetadata: true\r\n"),
        "{}",
        heads[0]
    );
    let sent = harness.sts_requests().pop().expect("STS");
    assert_eq!(
        sent.fields["scope"], IAM_SCOPE,
        "the federated token only calls IAM"
    );
    assert_eq!(
        sent.fields["subject_token"]["sha256"],
        sha256_hex(subject_token.as_bytes())
    );

    // ID tokens of the impersonated account, from IAM generateIdToken.
    let id = client
        .generate_id_token(id_token("wif-url", &harness))
        .await
        .expect("ID token")
        .into_inner();
    assert_eq!(id.principal, READER_SA);
    let claims = jwt_claims(&id.id_token);
    assert_eq!(claims["aud"], harness.emulator.function_url());
    assert_eq!(claims["email"], READER_SA);
    let (status, _) = harness.call_function(&id.id_token).await;
    assert_eq!(status, 200);
    assert_eq!(
        harness
            .emulator
            .requests(Endpoint::IamGenerateIdToken)
            .pop()
            .map(|r| r.path)
            .as_deref(),
        Some(format!("/v1/projects/-/serviceAccounts/{READER_SA}:generateIdToken").as_str())
    );

    // The server fails: unavailable, naming its host.
    server.serve("");
    let status = client
        .get_access_token(access("wif-url", &[STORAGE_READ]))
        .await
        .expect_err("the token server fails");
    let metadata = assert_error(&status, Code::Unavailable, "UPSTREAM_UNAVAILABLE");
    assert_eq!(
        metadata["upstream"],
        server.url().trim_start_matches("http://")
    );
    harness.stop().await;
}

#[tokio::test]
async fn aws_credentials_come_from_the_instance_metadata_service() {
    for variable in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ] {
        assert!(
            std::env::var_os(variable).is_none(),
            "{variable} is set: the aws source would read it instead of the emulator's IMDSv2; unset it to run this test"
        );
    }
    let server = TokenServer::start().await;
    let harness = start(&server).await;
    let mut client = harness.client_for(APP).await;
    let federation = harness.emulator.federation();
    let aws = federation.aws_provider().expect("dev-aws");

    let before = unix_now();
    let response = client
        .get_access_token(access("wif-aws", &[CLOUD_PLATFORM]))
        .await
        .expect("federated token")
        .into_inner();
    assert_eq!(response.principal, workload_set());
    let info = assert_expiry(
        &harness,
        &response.access_token,
        response.expire_time,
        before,
        3600,
    )
    .await;
    assert_eq!(
        info["principal"],
        workload_principal(aws.arn.as_deref().expect("arn"))
    );

    // IMDSv2: a session, then the region and the role's credentials, each with the session.
    let imds = harness.emulator.requests(Endpoint::AwsImds);
    let calls: Vec<(&str, &str)> = imds
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("PUT", "/latest/api/token"),
            ("GET", "/latest/meta-data/placement/availability-zone"),
            ("GET", "/latest/meta-data/iam/security-credentials"),
            ("GET", "/latest/meta-data/iam/security-credentials/dev-role"),
        ]
    );
    assert_eq!(
        imds[0].headers["x-aws-ec2-metadata-token-ttl-seconds"],
        "300"
    );
    for call in &imds[1..] {
        assert!(
            call.headers.contains_key("x-aws-ec2-metadata-token"),
            "{call:?}"
        );
        assert_eq!(call.status, 200);
    }

    // The signed request: the region from the availability zone, the session token signed.
    let sent = harness.sts_requests().pop().expect("STS");
    let signed = &sent.fields["subject_token"]["aws"];
    assert_eq!(sent.fields["subject_token"]["format"], "aws4_request");
    assert_eq!(
        signed["url"],
        "https://sts.us-east-2.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
    );
    let header = |name: &str| {
        signed["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .find(|h| {
                h["key"]
                    .as_str()
                    .is_some_and(|k| k.eq_ignore_ascii_case(name))
            })
            .map(|h| h["value"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(
        header("x-goog-cloud-target-resource").as_deref(),
        Some(aws.audience.as_str())
    );
    assert_eq!(header("x-amz-security-token").as_deref(), Some("REDACTED"));
    let authorization = header("authorization").expect("signed");
    assert!(
        authorization.contains(&format!(
            "Credential={}/",
            aws.access_key_id.as_deref().expect("key id")
        )) && authorization.contains("/us-east-2/sts/aws4_request"),
        "{authorization}"
    );
    assert!(
        authorization.contains("x-amz-security-token"),
        "{authorization}"
    );

    // The region is kept; the credentials are asked for again at the next fetch.
    client
        .get_access_token(access("wif-aws", &[STORAGE_READ]))
        .await
        .expect("second token");
    let paths: Vec<String> = harness
        .emulator
        .requests(Endpoint::AwsImds)
        .iter()
        .skip(4)
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        paths,
        [
            "/latest/api/token",
            "/latest/meta-data/iam/security-credentials",
            "/latest/meta-data/iam/security-credentials/dev-role",
        ]
    );

    let status = client
        .generate_id_token(id_token("wif-aws", &harness))
        .await
        .expect_err("no impersonation");
    assert_no_id_tokens(&status, "wif-aws");
    harness.stop().await;
}

#[tokio::test]
async fn an_x509_workload_certificate_federates_over_mutual_tls() {
    let server = TokenServer::start().await;
    let harness = start(&server).await;
    let mut client = harness.client_for(APP).await;
    let federation = harness.emulator.federation();
    let x509 = federation.x509_provider().expect("dev-x509");
    let workload = x509
        .workload_subject
        .clone()
        .expect("the workload's subject");
    assert_eq!(workload, "dev-workload");

    let response = client
        .get_access_token(access("wif-x509", &[CLOUD_PLATFORM]))
        .await
        .expect("federated token")
        .into_inner();
    assert_eq!(response.principal, workload_set());
    let info = harness.tokeninfo(&response.access_token).await;
    assert_eq!(info["principal"], workload_principal(&workload));
    let sent = harness
        .emulator
        .requests(Endpoint::StsMtlsToken)
        .pop()
        .expect("STS over mTLS");
    assert!(harness.sts_requests().is_empty(), "not the plain listener");
    assert_eq!(sent.fields["subject_token_type"], MTLS_TOKEN_TYPE);
    assert_eq!(sent.fields["subject_token"]["format"], "x509");
    let presented = sent
        .client_certificate
        .as_ref()
        .expect("a client certificate");
    assert!(
        presented["subject"]
            .as_str()
            .is_some_and(|s| s.contains("CN=dev-workload")),
        "{presented}"
    );
    assert_eq!(
        sent.fields["subject_token"]["certificates"][0]["sha256"], presented["sha256"],
        "the subject token starts with the TLS client certificate"
    );

    // Impersonation over the same mutual TLS: access and ID tokens of reader@.
    let before = unix_now();
    let reader = client
        .get_access_token(access("wif-x509-reader", &[CLOUD_PLATFORM]))
        .await
        .expect("impersonated")
        .into_inner();
    assert_eq!(reader.principal, READER_SA);
    let info = assert_expiry(
        &harness,
        &reader.access_token,
        reader.expire_time,
        before,
        3600,
    )
    .await;
    assert_eq!(info["principal"], format!("serviceAccount:{READER_SA}"));
    let id = client
        .generate_id_token(id_token("wif-x509-reader", &harness))
        .await
        .expect("ID token")
        .into_inner();
    assert_eq!(jwt_claims(&id.id_token)["email"], READER_SA);
    assert_eq!(harness.call_function(&id.id_token).await.0, 200);

    let status = client
        .generate_id_token(id_token("wif-x509", &harness))
        .await
        .expect_err("no impersonation");
    assert_no_id_tokens(&status, "wif-x509");
    harness.stop().await;
}

#[tokio::test]
async fn an_allowed_executable_prints_the_subject_token() {
    let server = TokenServer::start().await;
    let harness = start(&server).await;
    let mut client = harness.client_for(APP).await;
    let response = client
        .get_access_token(access("wif-exec", &[CLOUD_PLATFORM]))
        .await
        .expect("federated token")
        .into_inner();
    assert_eq!(response.principal, workload_set());
    let info = harness.tokeninfo(&response.access_token).await;
    assert_eq!(info["principal"], workload_principal("executable-workload"));

    // A failure it reports is UNAVAILABLE, quoting its code.
    write_json(
        harness.dir.path(),
        "exec-response.json",
        &json!({"version": 1, "success": false, "code": "401", "message": "The caller is not authorized."}),
    );
    let status = client
        .get_access_token(access("wif-exec", &[STORAGE_READ]))
        .await
        .expect_err("the executable fails");
    let metadata = assert_error(&status, Code::Unavailable, "UPSTREAM_UNAVAILABLE");
    assert_eq!(metadata["upstream"], "credential_source.executable");
    assert!(status.message().contains("not authorized"), "{status:?}");
    harness.stop().await;
}

#[tokio::test]
async fn an_executable_that_is_not_allowed_stops_the_broker() {
    let server = TokenServer::start().await;
    let harness = start(&server).await;
    let config = std::fs::read_to_string(harness.dir.path().join("broker.toml")).expect("config");
    for allow in ["", "allow_executable = false\n"] {
        let path = harness.dir.path().join("refused.toml");
        std::fs::write(
            &path,
            format!(
                "{config}\n[[credentials]]\nname = \"wif-exec-refused\"\nkind = \"external_account\"\nfile = \"wif-exec.json\"\n{allow}"
            ),
        )
        .expect("write");
        let settings = token_broker::settings::Settings::load(&path, Some(Default::default()), &[])
            .expect("valid settings");
        let error = token_broker::server::start(settings)
            .await
            .expect_err("the executable is not allowed")
            .to_string();
        for text in [
            "(wif-exec-refused)",
            "runs an executable (\"cat\")",
            "allow_executable = true",
        ] {
            assert!(error.contains(text), "{text:?} in: {error}");
        }
        assert!(
            !error.contains("(wif-exec)"),
            "the allowed one loads: {error}"
        );
    }
    harness.stop().await;
}

#[tokio::test]
async fn a_workforce_pool_is_billed_to_its_user_project() {
    let server = TokenServer::start().await;
    let harness = start(&server).await;
    let mut client = harness.client_for(APP).await;
    let response = client
        .get_access_token(access("wif-workforce", &[CLOUD_PLATFORM]))
        .await
        .expect("workforce token")
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
        sent.fields["audience"],
        workforce_provider("dev-workforce-oidc")
    );
    assert_eq!(
        sent.fields["options"],
        json!({"userProject": "dev-project"})
    );
    assert!(sent.client_auth.is_none());

    // Workforce tokens cannot be downscoped (Google refuses); the broker says so first.
    let status = client
        .get_access_token(pb::GetAccessTokenRequest {
            access_boundary: Some(boundary(
                "//storage.googleapis.com/projects/_/buckets/b",
                &["inRole:roles/storage.objectViewer"],
            )),
            ..access("wif-workforce", &[STORAGE_READ])
        })
        .await
        .expect_err("no downscoping");
    let metadata = assert_error(
        &status,
        Code::FailedPrecondition,
        "CREDENTIAL_FLOW_UNSUPPORTED",
    );
    assert_eq!(metadata["flow"], "access_boundary");
    let status = client
        .generate_id_token(id_token("wif-workforce", &harness))
        .await
        .expect_err("no impersonation");
    assert_no_id_tokens(&status, "wif-workforce");
    harness.stop().await;
}
