//! The `tokenctl` binary against a fake broker over real mutual TLS.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{
    FEDERATED_PRINCIPAL, FakeBroker, KEY_ID, PRINCIPAL, Pki, serve, whole_seconds_from_now,
};

const ENV: [&str; 4] = [
    "TOKEN_BROKER_ADDR",
    "TOKEN_BROKER_CA",
    "TOKEN_BROKER_CERT",
    "TOKEN_BROKER_KEY",
];

/// `tokenctl` with a clean environment for its own variables.
fn tokenctl() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokenctl"));
    for name in ENV {
        command.env_remove(name);
    }
    command
}

/// `tokenctl` with the connection flags for the fake broker.
fn tokenctl_for(pki: &Pki, addr: SocketAddr) -> Command {
    tokenctl_with_ca(pki, addr, &pki.client.ca)
}

/// `tokenctl` with the connection flags for the fake broker, but the given CA file.
fn tokenctl_with_ca(pki: &Pki, addr: SocketAddr, ca: &Path) -> Command {
    let mut command = tokenctl();
    command
        .arg("--addr")
        .arg(format!("localhost:{}", addr.port()))
        .arg("--ca")
        .arg(ca)
        .arg("--cert")
        .arg(&pki.client.cert)
        .arg("--key")
        .arg(&pki.client.key)
        .arg("--timeout")
        .arg("5s");
    command
}

async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("run tokenctl"))
        .await
        .expect("join")
}

/// Runs `command` with `stdin` as its standard input.
async fn run_with_stdin(mut command: Command, stdin: &[u8]) -> Output {
    let stdin = stdin.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tokenctl");
        let mut pipe = child.stdin.take().expect("stdin pipe");
        // tokenctl may exit (usage error) before it reads: a broken pipe is fine.
        let _ = pipe.write_all(&stdin);
        drop(pipe);
        child.wait_with_output().expect("run tokenctl")
    })
    .await
    .expect("join")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn prints_only_the_token_as_text() {
    let pki = Pki::new("cli-text");
    let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
    let addr = serve(&pki, broker.clone()).await;

    let mut command = tokenctl_for(&pki, addr);
    command.args([
        "print-access-token",
        "--scopes",
        "https://www.googleapis.com/auth/devstorage.read_only,https://www.googleapis.com/auth/cloud-platform",
        "--scopes",
        "https://www.googleapis.com/auth/pubsub",
        "--credential",
        "prod-reader",
        "--lifetime",
        "30m",
        "--min-remaining",
        "5m",
    ]);
    let output = run(command).await;
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "ya29.fake-1\n");
    assert_eq!(text(&output.stderr), "");

    let request = broker.requests().pop().expect("a request");
    assert_eq!(
        request.scopes,
        vec![
            "https://www.googleapis.com/auth/devstorage.read_only",
            "https://www.googleapis.com/auth/cloud-platform",
            "https://www.googleapis.com/auth/pubsub",
        ]
    );
    assert_eq!(request.credential, "prod-reader");
    assert_eq!(request.lifetime.map(|d| d.seconds), Some(1800));
    assert_eq!(request.min_remaining_validity.map(|d| d.seconds), Some(300));
}

#[tokio::test(flavor = "multi_thread")]
async fn prints_json_and_reads_the_environment() {
    let pki = Pki::new("cli-json");
    let expire_time = whole_seconds_from_now(Duration::from_secs(3600));
    let broker = FakeBroker::new(expire_time);
    let addr = serve(&pki, broker.clone()).await;

    let mut command = tokenctl();
    command
        .env(
            "TOKEN_BROKER_ADDR",
            format!("https://127.0.0.1:{}", addr.port()),
        )
        .env("TOKEN_BROKER_CA", &pki.client.ca)
        .env("TOKEN_BROKER_CERT", &pki.client.cert)
        .env("TOKEN_BROKER_KEY", &pki.client.key)
        .args(["print-access-token", "--format", "json"]);
    let output = run(command).await;
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));

    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON output");
    assert_eq!(json["access_token"], "ya29.fake-1");
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(
        json["expire_time"],
        humantime::format_rfc3339_seconds(expire_time).to_string()
    );
    let expires_in = json["expires_in"].as_u64().expect("expires_in is a number");
    assert!((3500..=3600).contains(&expires_in), "{expires_in}");
    assert_eq!(json["principal"], PRINCIPAL);
    assert_eq!(
        json["granted_scopes"],
        serde_json::json!(["https://www.googleapis.com/auth/cloud-platform"])
    );
    assert_eq!(json["credential"], "default-credential");
    assert_eq!(json["cache_hit"], false);
    assert_eq!(broker.calls(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn permission_denied_exits_3_with_details_on_stderr() {
    let pki = Pki::new("cli-denied");
    let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
    let addr = serve(&pki, broker.clone()).await;
    broker.fail_with([common::policy_denied(
        "scopes",
        "ci",
        "https://www.googleapis.com/auth/admin",
    )]);

    let mut command = tokenctl_for(&pki, addr);
    command.args([
        "print-access-token",
        "--scopes",
        "https://www.googleapis.com/auth/admin",
    ]);
    let output = run(command).await;
    assert_eq!(
        output.status.code(),
        Some(3),
        "stderr: {}",
        text(&output.stderr)
    );
    assert_eq!(text(&output.stdout), "");
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with(
            "tokenctl: PERMISSION_DENIED (POLICY_DENIED): grant ci does not allow \
             https://www.googleapis.com/auth/admin\n"
        ),
        "{stderr}"
    );
    for line in [
        "  rule: scopes\n",
        "  grant: ci\n",
        "  value: https://www.googleapis.com/auth/admin\n",
        "  caller: ci-runner.example.com\n",
    ] {
        assert!(stderr.contains(line), "{line:?} missing from:\n{stderr}");
    }
    assert!(!stderr.contains("ya29"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unavailable_exits_5_with_retry_after() {
    let pki = Pki::new("cli-unavailable");
    let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
    let addr = serve(&pki, broker.clone()).await;
    // RetryInfo says 30 s; the 5 s --timeout leaves no room for a retry.
    broker.fail_with([common::upstream_unavailable(Duration::from_secs(30))]);

    let mut command = tokenctl_for(&pki, addr);
    command.arg("print-access-token");
    let output = run(command).await;
    assert_eq!(
        output.status.code(),
        Some(5),
        "stderr: {}",
        text(&output.stderr)
    );
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with("tokenctl: UNAVAILABLE (UPSTREAM_UNAVAILABLE): Google is unavailable\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("  upstream: oauth2.googleapis.com\n"),
        "{stderr}"
    );
    assert!(stderr.contains("  retry after 30s\n"), "{stderr}");
    assert_eq!(broker.calls(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_after_the_retry_delay_unless_told_not_to() {
    let pki = Pki::new("cli-retry");
    let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
    let addr = serve(&pki, broker.clone()).await;

    // A short RetryInfo: retried, and the second attempt succeeds.
    broker.fail_with([common::upstream_unavailable(Duration::from_millis(100))]);
    let mut command = tokenctl_for(&pki, addr);
    command.arg("print-access-token");
    let output = run(command).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(broker.calls(), 2);

    // With --no-retry the first refusal is final.
    broker.fail_with([common::upstream_unavailable(Duration::from_millis(100))]);
    let mut command = tokenctl_for(&pki, addr);
    command.args(["--no-retry", "print-access-token"]);
    let output = run(command).await;
    assert_eq!(output.status.code(), Some(5), "{}", text(&output.stderr));
    assert_eq!(broker.calls(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_and_tls_errors() {
    // Missing connection settings: usage error.
    let mut command = tokenctl();
    command.arg("print-access-token");
    let output = run(command).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("--addr (TOKEN_BROKER_ADDR)"));

    // The wrong CA: a TLS error naming the problem.
    let pki = Pki::new("cli-wrong-ca");
    let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
    let addr = serve(&pki, broker.clone()).await;
    let mut command = tokenctl_with_ca(&pki, addr, &pki.wrong_ca.ca);
    command.arg("print-access-token");
    let output = run(command).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with("tokenctl: TLS handshake with"),
        "{stderr}"
    );
    assert!(stderr.contains("not trusted"), "{stderr}");
    assert_eq!(broker.calls(), 0);

    // --help documents the exit codes.
    let mut command = tokenctl();
    command.arg("--help");
    let output = run(command).await;
    assert!(output.status.success());
    assert!(text(&output.stdout).contains("Exit codes"));
}

const TARGET: &str = "reader@my-project.iam.gserviceaccount.com";
const DELEGATE: &str = "writer@my-project.iam.gserviceaccount.com";
const CLAIMS: &str =
    r#"{"iss":"reader@my-project.iam.gserviceaccount.com","aud":"https://x","exp":1800000600}"#;

/// Every secret the fake broker hands out in a test with fewer than 10 tokens; none may reach
/// stderr.
fn assert_no_secret(stderr: &str) {
    for secret in [
        "ya29.",
        "eyJ",
        "fake-id-token",
        "fake-signed-jwt",
        "AP9zaWc6",
        "sig:",
    ] {
        assert!(!stderr.contains(secret), "{secret:?} on stderr:\n{stderr}");
    }
}

/// Asserts a successful run with nothing on stderr, and returns stdout.
fn success(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}, stderr: {}",
        output.status.code(),
        text(&output.stderr)
    );
    assert_eq!(text(&output.stderr), "", "nothing on stderr on success");
    text(&output.stdout)
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_str(&success(output)).expect("JSON output")
}

fn expires_in(json: &serde_json::Value) -> u64 {
    let expires_in = json["expires_in"].as_u64().expect("expires_in is a number");
    assert!((3500..=3600).contains(&expires_in), "{expires_in}");
    expires_in
}

#[tokio::test(flavor = "multi_thread")]
async fn print_identity_token_prints_the_jwt_or_json() {
    let pki = Pki::new("cli-id-token");
    let expire_time = whole_seconds_from_now(Duration::from_secs(3600));
    let broker = FakeBroker::new(expire_time);
    let addr = serve(&pki, broker.clone()).await;

    let mut command = tokenctl_for(&pki, addr);
    command.args([
        "print-identity-token",
        "--audiences",
        "https://hello-abc123-uc.a.run.app",
    ]);
    let output = run(command).await;
    assert_eq!(success(&output), format!("{}\n", FakeBroker::id_token(1)));
    let request = broker.id_token_requests().pop().expect("a request");
    assert_eq!(request.audience, "https://hello-abc123-uc.a.run.app");
    assert!(!request.include_email);
    assert_eq!(request.target_service_account, "");
    assert!(request.delegates.is_empty());
    assert_eq!(request.credential, "");

    let mut command = tokenctl_for(&pki, addr);
    command.args([
        "print-identity-token",
        "--audiences",
        "https://hello-abc123-uc.a.run.app",
        "--include-email",
        "--impersonate-service-account",
        TARGET,
        "--delegates",
        DELEGATE,
        "--credential",
        "dev",
        "--format",
        "json",
    ]);
    let json = json(&run(command).await);
    assert_eq!(json["id_token"], FakeBroker::id_token(2).as_str());
    assert_eq!(json["audience"], "https://hello-abc123-uc.a.run.app");
    assert_eq!(json["principal"], TARGET);
    assert_eq!(json["credential"], "dev");
    assert_eq!(
        json["expire_time"],
        humantime::format_rfc3339_seconds(expire_time).to_string()
    );
    expires_in(&json);
    assert_eq!(json["cache_hit"], true);
    assert_eq!(json["last_known_good"], false);
    let request = broker.id_token_requests().pop().expect("a request");
    assert!(request.include_email);
    assert_eq!(request.target_service_account, TARGET);
    assert_eq!(request.delegates, vec![DELEGATE]);
    assert_eq!(request.credential, "dev");

    // gcloud's chain form.
    let mut command = tokenctl_for(&pki, addr);
    command.args([
        "print-identity-token",
        "--audiences=https://a",
        &format!("--impersonate-service-account={DELEGATE},{TARGET}"),
    ]);
    success(&run(command).await);
    let request = broker.id_token_requests().pop().expect("a request");
    assert_eq!(request.target_service_account, TARGET);
    assert_eq!(request.delegates, vec![DELEGATE]);
}

#[tokio::test(flavor = "multi_thread")]
async fn impersonate_prints_the_token_or_json() {
    let pki = Pki::new("cli-impersonate");
    let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
    let addr = serve(&pki, broker.clone()).await;

    let mut command = tokenctl_for(&pki, addr);
    command.args([
        "impersonate",
        "--target",
        TARGET,
        "--delegates",
        DELEGATE,
        "--scopes",
        "https://www.googleapis.com/auth/devstorage.read_only,https://www.googleapis.com/auth/pubsub",
        "--lifetime",
        "1h",
        "--min-remaining",
        "5m",
        "--credential",
        "dev",
    ]);
    let output = run(command).await;
    assert_eq!(
        success(&output),
        format!("{}\n", FakeBroker::impersonated_token(1))
    );
    let request = broker.impersonate_requests().pop().expect("a request");
    assert_eq!(request.target_service_account, TARGET);
    assert_eq!(request.delegates, vec![DELEGATE]);
    assert_eq!(
        request.scopes,
        vec![
            "https://www.googleapis.com/auth/devstorage.read_only",
            "https://www.googleapis.com/auth/pubsub"
        ]
    );
    assert_eq!(request.lifetime.map(|d| d.seconds), Some(3600));
    assert_eq!(request.min_remaining_validity.map(|d| d.seconds), Some(300));
    assert_eq!(request.credential, "dev");

    let mut command = tokenctl_for(&pki, addr);
    command.args(["impersonate", "--target", TARGET, "--format", "json"]);
    let json = json(&run(command).await);
    assert_eq!(
        json["access_token"],
        FakeBroker::impersonated_token(2).as_str()
    );
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["principal"], TARGET);
    assert_eq!(json["credential"], "default-credential");
    assert_eq!(json["cache_hit"], true);
    expires_in(&json);
    assert!(json.get("granted_scopes").is_none(), "{json}");
    let request = broker.impersonate_requests().pop().expect("a request");
    assert!(request.delegates.is_empty() && request.scopes.is_empty());
    assert_eq!(request.lifetime, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_jwt_reads_stdin_or_a_file() {
    let pki = Pki::new("cli-sign-jwt");
    let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
    let addr = serve(&pki, broker.clone()).await;

    // From standard input, as text.
    let mut command = tokenctl_for(&pki, addr);
    command.args([
        "sign-jwt",
        "--service-account",
        TARGET,
        "--delegates",
        DELEGATE,
        "--credential",
        "dev",
    ]);
    let output = run_with_stdin(command, CLAIMS.as_bytes()).await;
    assert_eq!(success(&output), format!("{}\n", FakeBroker::signed_jwt(1)));
    let request = broker.sign_jwt_requests().pop().expect("a request");
    assert_eq!(request.service_account, TARGET);
    assert_eq!(request.payload, CLAIMS);
    assert_eq!(request.delegates, vec![DELEGATE]);
    assert_eq!(request.credential, "dev");

    // From a file (with its trailing newline, sent as it is), as JSON.
    let file = pki.dir.join("claims.json");
    std::fs::write(&file, format!("{CLAIMS}\n")).expect("write claims");
    let mut command = tokenctl_for(&pki, addr);
    command
        .args(["sign-jwt", "--service-account", TARGET, "--format", "json"])
        .arg(&file);
    let json = json(&run_with_stdin(command, b"ignored").await);
    assert_eq!(
        json,
        serde_json::json!({
            "key_id": KEY_ID,
            "signed_jwt": FakeBroker::signed_jwt(2),
            "credential": "default-credential",
        })
    );
    let request = broker.sign_jwt_requests().pop().expect("a request");
    assert_eq!(request.payload, format!("{CLAIMS}\n"));

    // `-` is standard input.
    let mut command = tokenctl_for(&pki, addr);
    command.args(["sign-jwt", "--service-account", TARGET, "-"]);
    success(&run_with_stdin(command, br#"{"a":1}"#).await);
    let request = broker.sign_jwt_requests().pop().expect("a request");
    assert_eq!(request.payload, r#"{"a":1}"#);
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_blob_prints_base64_or_writes_raw_bytes() {
    let pki = Pki::new("cli-sign-blob");
    let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
    let addr = serve(&pki, broker.clone()).await;

    // From standard input: the base64 signature.
    let mut command = tokenctl_for(&pki, addr);
    command.args([
        "sign-blob",
        "--service-account",
        TARGET,
        "--delegates",
        DELEGATE,
        "--credential",
        "dev",
    ]);
    let output = run_with_stdin(command, b"hello blob").await;
    assert_eq!(success(&output), "AP9zaWc6aGVsbG8gYmxvYg==\n");
    let request = broker.sign_blob_requests().pop().expect("a request");
    assert_eq!(request.service_account, TARGET);
    assert_eq!(request.payload, b"hello blob");
    assert_eq!(request.delegates, vec![DELEGATE]);
    assert_eq!(request.credential, "dev");

    // From a file, raw bytes to --output: nothing on stdout.
    let input = pki.dir.join("blob.bin");
    let payload = b"\x00\x01binary\xff payload";
    std::fs::write(&input, payload).expect("write input");
    let signature_file = pki.dir.join("blob.sig");
    let mut command = tokenctl_for(&pki, addr);
    command
        .args(["sign-blob", "--service-account", TARGET])
        .arg(&input)
        .arg("--output")
        .arg(&signature_file);
    assert_eq!(success(&run(command).await), "");
    assert_eq!(
        std::fs::read(&signature_file).expect("the signature file"),
        FakeBroker::signature(payload)
    );
    assert_eq!(
        broker
            .sign_blob_requests()
            .pop()
            .expect("a request")
            .payload,
        payload
    );

    // JSON, with --output still receiving the raw bytes.
    std::fs::remove_file(&signature_file).expect("remove");
    let mut command = tokenctl_for(&pki, addr);
    command
        .args(["sign-blob", "--service-account", TARGET, "--format", "json"])
        .arg("--output")
        .arg(&signature_file)
        .arg(&input);
    let json = json(&run(command).await);
    assert_eq!(
        json,
        serde_json::json!({
            "key_id": KEY_ID,
            "signature": "AP9zaWc6AAFiaW5hcnn/IHBheWxvYWQ=",
            "credential": "default-credential",
        })
    );
    assert_eq!(
        std::fs::read(&signature_file).expect("the signature file"),
        FakeBroker::signature(payload)
    );

    // `--output -`: raw bytes on stdout.
    let mut command = tokenctl_for(&pki, addr);
    command.args([
        "sign-blob",
        "--service-account",
        TARGET,
        "--output",
        "-",
        "-",
    ]);
    let output = run_with_stdin(command, b"hello blob").await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(output.stdout, FakeBroker::signature(b"hello blob"));
}

/// Each new command, ready to run (the sign commands read `CLAIMS` or a blob from stdin, the
/// exchange commands take it as their token).
fn new_commands(pki: &Pki, addr: SocketAddr) -> Vec<(&'static str, Command)> {
    let mut id_token = tokenctl_for(pki, addr);
    id_token.args(["print-identity-token", "--audiences", "https://a"]);
    let mut impersonate = tokenctl_for(pki, addr);
    impersonate.args(["impersonate", "--target", TARGET]);
    let mut jwt = tokenctl_for(pki, addr);
    jwt.args(["sign-jwt", "--service-account", TARGET]);
    let mut blob = tokenctl_for(pki, addr);
    blob.args(["sign-blob", "--service-account", TARGET]);
    let boundary = boundary_file(pki);
    let mut exchange = tokenctl_for(pki, addr);
    exchange.args([
        "exchange",
        "--subject-token-file",
        "-",
        "--subject-token-type",
        "jwt",
        "--audience",
        AUDIENCE,
    ]);
    let mut downscope = tokenctl_for(pki, addr);
    downscope.arg("downscope").arg("--boundary").arg(&boundary);
    vec![
        ("print-identity-token", id_token),
        ("impersonate", impersonate),
        ("sign-jwt", jwt),
        ("sign-blob", blob),
        ("exchange", exchange),
        ("downscope", downscope),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn denials_exit_3_with_the_rule_and_no_secret() {
    let pki = Pki::new("cli-new-denied");
    let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
    let addr = serve(&pki, broker.clone()).await;

    for (name, command) in new_commands(&pki, addr) {
        broker.fail_with([common::policy_denied("service_accounts", "app", TARGET)]);
        let output = run_with_stdin(command, CLAIMS.as_bytes()).await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{name}: {stderr}");
        assert_eq!(text(&output.stdout), "", "{name}");
        assert!(
            stderr.starts_with(&format!(
                "tokenctl: PERMISSION_DENIED (POLICY_DENIED): grant app does not allow {TARGET}\n"
            )),
            "{name}: {stderr}"
        );
        assert!(
            stderr.contains("  rule: service_accounts\n"),
            "{name}: {stderr}"
        );
        assert!(stderr.contains("  grant: app\n"), "{name}: {stderr}");
        assert_no_secret(&stderr);
    }
    assert_eq!(broker.id_token_requests().len(), 1);
    assert_eq!(broker.impersonate_requests().len(), 1);
    assert_eq!(broker.sign_jwt_requests().len(), 1);
    assert_eq!(broker.sign_blob_requests().len(), 1);
    assert_eq!(broker.exchange_requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_arguments_exit_4_naming_the_field() {
    let pki = Pki::new("cli-new-invalid");
    let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
    let addr = serve(&pki, broker.clone()).await;

    // The broker, not tokenctl, validates the claims.
    let mut command = tokenctl_for(&pki, addr);
    command.args(["sign-jwt", "--service-account", TARGET]);
    let output = run_with_stdin(command, b"not json").await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.starts_with("tokenctl: INVALID_ARGUMENT (INVALID_FIELD): invalid payload"),
        "{stderr}"
    );
    assert!(stderr.contains("  field: payload\n"), "{stderr}");
    assert!(
        stderr.contains("  field payload: must be a JSON object\n"),
        "{stderr}"
    );
    assert_eq!(
        broker.sign_jwt_requests().pop().map(|r| r.payload),
        Some("not json".to_owned())
    );

    // An empty blob is sent, and refused by the broker.
    let mut command = tokenctl_for(&pki, addr);
    command.args(["sign-blob", "--service-account", TARGET]);
    let output = run_with_stdin(command, b"").await;
    assert_eq!(output.status.code(), Some(4), "{}", text(&output.stderr));
    assert_eq!(broker.sign_blob_requests().len(), 1);

    // Any new command, with a field the broker refuses.
    for (name, command) in new_commands(&pki, addr) {
        broker.fail_with([common::invalid_argument(
            "delegates[0]",
            "INVALID_FIELD",
            "not a service-account email",
        )]);
        let output = run_with_stdin(command, CLAIMS.as_bytes()).await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(4), "{name}: {stderr}");
        assert!(
            stderr.contains("  field: delegates[0]\n"),
            "{name}: {stderr}"
        );
        assert_eq!(text(&output.stdout), "", "{name}");
        assert_no_secret(&stderr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unavailable_exits_5_after_retrying() {
    let pki = Pki::new("cli-new-unavailable");
    let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
    let addr = serve(&pki, broker.clone()).await;

    for (name, command) in new_commands(&pki, addr) {
        // RetryInfo says 30 s; the 5 s --timeout leaves no room for a retry.
        broker.fail_with([common::upstream_unavailable(Duration::from_secs(30))]);
        let output = run_with_stdin(command, CLAIMS.as_bytes()).await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(5), "{name}: {stderr}");
        assert!(
            stderr.starts_with("tokenctl: UNAVAILABLE (UPSTREAM_UNAVAILABLE): "),
            "{name}: {stderr}"
        );
        assert!(stderr.contains("  retry after 30s\n"), "{name}: {stderr}");
        assert_no_secret(&stderr);
    }
    assert_eq!(broker.sign_blob_requests().len(), 1, "not retried");

    // A short RetryInfo is retried, and the answer printed with nothing on stderr.
    for (name, command) in new_commands(&pki, addr) {
        broker.fail_with([common::upstream_unavailable(Duration::from_millis(100))]);
        let output = run_with_stdin(command, CLAIMS.as_bytes()).await;
        assert!(!success(&output).is_empty(), "{name}");
    }
    assert_eq!(broker.sign_blob_requests().len(), 3);

    // ... unless --no-retry.
    let mut command = tokenctl_for(&pki, addr);
    command.args(["--no-retry", "impersonate", "--target", TARGET]);
    broker.fail_with([common::upstream_unavailable(Duration::from_millis(100))]);
    let output = run(command).await;
    assert_eq!(output.status.code(), Some(5), "{}", text(&output.stderr));
    assert_eq!(broker.impersonate_requests().len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_errors_exit_2_before_anything_is_sent() {
    let pki = Pki::new("cli-new-usage");
    let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
    let addr = serve(&pki, broker.clone()).await;

    // --delegates without an impersonation target.
    let mut command = tokenctl_for(&pki, addr);
    command.args([
        "print-identity-token",
        "--audiences",
        "https://a",
        "--delegates",
        DELEGATE,
    ]);
    let output = run(command).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--impersonate-service-account"), "{stderr}");

    // Both forms of a chain.
    let mut command = tokenctl_for(&pki, addr);
    command.args([
        "print-identity-token",
        "--audiences",
        "https://a",
        "--impersonate-service-account",
        &format!("{DELEGATE},{TARGET}"),
        "--delegates",
        DELEGATE,
    ]);
    let output = run(command).await;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));

    // An input file that cannot be read.
    let missing = pki.dir.join("missing.json");
    let mut command = tokenctl_for(&pki, addr);
    command
        .args(["sign-jwt", "--service-account", TARGET])
        .arg(&missing);
    let output = run(command).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!("tokenctl: cannot read {}: ", missing.display())),
        "{stderr}"
    );
    let mut command = tokenctl_for(&pki, addr);
    command
        .args(["sign-blob", "--service-account", TARGET])
        .arg(&pki.dir);
    let output = run(command).await;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));

    // JWT claims that are not even UTF-8 cannot be sent.
    let mut command = tokenctl_for(&pki, addr);
    command.args(["sign-jwt", "--service-account", TARGET]);
    let output = run_with_stdin(command, b"{\"a\":\"\xff\"}").await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("tokenctl: the JWT payload in standard input is not UTF-8"),
        "{stderr}"
    );

    // Raw bytes and JSON on the same stdout.
    let mut command = tokenctl_for(&pki, addr);
    command.args([
        "sign-blob",
        "--service-account",
        TARGET,
        "--format",
        "json",
        "--output",
        "-",
    ]);
    let output = run_with_stdin(command, b"x").await;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));

    assert!(broker.id_token_requests().is_empty());
    assert!(broker.sign_jwt_requests().is_empty());
    assert!(broker.sign_blob_requests().is_empty());

    // An unwritable --output is an error after the fact: exit 1.
    let mut command = tokenctl_for(&pki, addr);
    command
        .args(["sign-blob", "--service-account", TARGET, "--output"])
        .arg(pki.dir.join("no-such-dir").join("out.bin"));
    let output = run_with_stdin(command, b"hello blob").await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("tokenctl: cannot write the signature to "),
        "{stderr}"
    );
    assert_no_secret(&stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_answers_exit_1() {
    let pki = Pki::new("cli-new-malformed");
    let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
    let addr = serve(&pki, broker.clone()).await;
    broker.set_malformed(true);
    for (name, command) in new_commands(&pki, addr) {
        let output = run_with_stdin(command, CLAIMS.as_bytes()).await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.starts_with("tokenctl: invalid response from the broker: "),
            "{name}: {stderr}"
        );
        assert_eq!(text(&output.stdout), "", "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn help_documents_the_new_commands() {
    let mut command = tokenctl();
    command.arg("--help");
    let stdout = success(&run(command).await);
    for needle in [
        "print-identity-token",
        "impersonate",
        "sign-jwt",
        "sign-blob",
        "Exit codes",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
    for (name, needles) in [
        (
            "print-identity-token",
            &[
                "--audiences <AUDIENCE>",
                "--include-email",
                "--impersonate-service-account",
                "--delegates",
            ][..],
        ),
        (
            "impersonate",
            &[
                "--target <EMAIL>",
                "--scopes",
                "--lifetime",
                "--min-remaining",
            ][..],
        ),
        (
            "sign-jwt",
            &[
                "--service-account <EMAIL>",
                "[PAYLOAD_FILE]",
                "--credential",
            ][..],
        ),
        (
            "sign-blob",
            &[
                "--service-account <EMAIL>",
                "[INPUT_FILE]",
                "--output <FILE>",
            ][..],
        ),
    ] {
        let mut command = tokenctl();
        command.args([name, "--help"]);
        let stdout = success(&run(command).await);
        for needle in needles
            .iter()
            .chain(&["--format <FORMAT>", "--addr <ADDR>"])
        {
            assert!(
                stdout.contains(needle),
                "{name}: {needle:?} missing from:\n{stdout}"
            );
        }
    }
}

const AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/ci/providers/gitlab";
const SUBJECT_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.subject-token-secret.c2ln";
const BOUNDARY: &str = r#"{
  "accessBoundary": {
    "accessBoundaryRules": [
      {
        "availableResource": "//storage.googleapis.com/projects/_/buckets/reports",
        "availablePermissions": ["inRole:roles/storage.objectViewer"],
        "availabilityCondition": {
          "expression": "resource.name.startsWith('projects/_/buckets/reports/objects/2026/')",
          "title": "2026 only"
        }
      }
    ]
  }
}
"#;

/// `BOUNDARY` in a file of the PKI's directory.
fn boundary_file(pki: &Pki) -> std::path::PathBuf {
    let path = pki.dir.join("boundary.json");
    std::fs::write(&path, BOUNDARY).expect("write the boundary");
    path
}

/// Asserts that the subject token (or any token) never reached `stderr`.
fn assert_no_subject_token(stderr: &str) {
    assert!(!stderr.contains("subject-token-secret"), "{stderr}");
    assert_no_secret(stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn exchange_prints_the_token_or_json() {
    let pki = Pki::new("cli-exchange");
    let expire_time = whole_seconds_from_now(Duration::from_secs(3600));
    let broker = FakeBroker::new(expire_time);
    let addr = serve(&pki, broker.clone()).await;
    let token_file = pki.dir.join("token.jwt");
    std::fs::write(&token_file, format!("{SUBJECT_TOKEN}\n")).expect("write the token");
    let boundary = boundary_file(&pki);

    // From a file, as text, with every flag.
    let mut command = tokenctl_for(&pki, addr);
    command
        .args(["exchange", "--subject-token-file"])
        .arg(&token_file)
        .args([
            "--subject-token-type",
            "jwt",
            "--audience",
            AUDIENCE,
            "--scopes",
            "https://www.googleapis.com/auth/devstorage.read_only",
            "--user-project",
            "billing-project",
            "--boundary",
        ])
        .arg(&boundary);
    let output = run(command).await;
    assert_eq!(
        success(&output),
        format!("{}\n", FakeBroker::exchanged_token(1))
    );
    let request = broker.exchange_requests().pop().expect("a request");
    assert_eq!(
        request.subject_token, SUBJECT_TOKEN,
        "the newline is trimmed"
    );
    assert_eq!(
        request.subject_token_type,
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert_eq!(request.audience, AUDIENCE);
    assert_eq!(
        request.scopes,
        vec!["https://www.googleapis.com/auth/devstorage.read_only"]
    );
    assert_eq!(request.requested_token_type, "");
    assert_eq!(request.credential, "");
    let options = request.options.expect("options");
    assert_eq!(options.user_project, "billing-project");
    let rules = options
        .access_boundary
        .expect("a boundary")
        .access_boundary_rules;
    assert_eq!(
        rules[0].available_resource,
        "//storage.googleapis.com/projects/_/buckets/reports"
    );
    assert_eq!(
        rules[0]
            .availability_condition
            .as_ref()
            .map(|c| c.title.as_str()),
        Some("2026 only")
    );

    // From stdin, through a credential that supplies the audience, as JSON.
    let mut command = tokenctl_for(&pki, addr);
    command.args([
        "exchange",
        "--subject-token-file",
        "-",
        "--subject-token-type",
        "urn:ietf:params:oauth:token-type:id_token",
        "--credential",
        "gitlab-federation",
        "--format",
        "json",
    ]);
    let json = json(&run_with_stdin(command, SUBJECT_TOKEN.as_bytes()).await);
    assert_eq!(
        json["access_token"],
        FakeBroker::exchanged_token(2).as_str()
    );
    assert_eq!(
        json["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(
        json["expire_time"],
        humantime::format_rfc3339_seconds(expire_time).to_string()
    );
    expires_in(&json);
    assert_eq!(json["principal"], PRINCIPAL);
    assert_eq!(json["credential"], "gitlab-federation");
    let request = broker.exchange_requests().pop().expect("a request");
    assert_eq!(request.subject_token, SUBJECT_TOKEN);
    assert_eq!(
        request.subject_token_type,
        "urn:ietf:params:oauth:token-type:id_token"
    );
    assert_eq!((request.audience.as_str(), request.options), ("", None));
    assert_eq!(request.credential, "gitlab-federation");

    // A plain exchange names no credential; the principal is the federated one.
    let mut command = tokenctl_for(&pki, addr);
    command.args([
        "exchange",
        "--subject-token-file=-",
        "--subject-token-type=saml2",
        &format!("--audience={AUDIENCE}"),
        "--format=json",
    ]);
    let plain = self::json(&run_with_stdin(command, b"PHNhbWw+\r\n").await);
    assert_eq!(plain["principal"], FEDERATED_PRINCIPAL);
    assert_eq!(plain["credential"], "");
    assert_eq!(
        broker
            .exchange_requests()
            .pop()
            .map(|r| (r.subject_token, r.subject_token_type)),
        Some((
            "PHNhbWw+".to_owned(),
            "urn:ietf:params:oauth:token-type:saml2".to_owned()
        ))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn downscope_prints_the_downscoped_token_or_json() {
    let pki = Pki::new("cli-downscope");
    let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
    let addr = serve(&pki, broker.clone()).await;
    let boundary = boundary_file(&pki);

    // `tokenctl print-access-token | tokenctl downscope --boundary FILE`
    let mut command = tokenctl_for(&pki, addr);
    command.arg("print-access-token");
    let access_token = success(&run(command).await);
    assert_eq!(access_token, "ya29.fake-1\n");
    let mut command = tokenctl_for(&pki, addr);
    command.arg("downscope").arg("--boundary").arg(&boundary);
    let output = run_with_stdin(command, access_token.as_bytes()).await;
    assert_eq!(
        success(&output),
        format!("{}\n", FakeBroker::downscoped_token(2))
    );
    let request = broker.exchange_requests().pop().expect("a request");
    assert_eq!(request.subject_token, "ya29.fake-1");
    assert_eq!(
        request.subject_token_type,
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert!(request.audience.is_empty() && request.scopes.is_empty());
    assert_eq!(request.credential, "");
    let options = request.options.expect("options");
    assert_eq!(options.user_project, "");
    assert_eq!(
        options
            .access_boundary
            .map(|b| b.access_boundary_rules[0].available_permissions.clone()),
        Some(vec!["inRole:roles/storage.objectViewer".to_owned()])
    );

    // From a file, as JSON: no expiry, principal or credential.
    let token_file = pki.dir.join("token.txt");
    std::fs::write(&token_file, "ya29.from-a-file\r\n").expect("write the token");
    let mut command = tokenctl_for(&pki, addr);
    command
        .arg("downscope")
        .arg("--access-token-file")
        .arg(&token_file)
        .arg("--boundary")
        .arg(&boundary)
        .args(["--format", "json"]);
    let json = json(&run(command).await);
    assert_eq!(
        json,
        serde_json::json!({
            "access_token": FakeBroker::downscoped_token(3),
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "Bearer",
            "principal": "",
            "credential": "",
        })
    );
    assert_eq!(
        broker.exchange_requests().pop().map(|r| r.subject_token),
        Some("ya29.from-a-file".to_owned())
    );

    // The inner form of the boundary is accepted too; so is `-`.
    let inner = pki.dir.join("inner.json");
    std::fs::write(
        &inner,
        r#"{"accessBoundaryRules": [{"availableResource": "//storage.googleapis.com/projects/_/buckets/b",
            "availablePermissions": ["inRole:roles/storage.objectViewer"]}]}"#,
    )
    .expect("write the boundary");
    let mut command = tokenctl_for(&pki, addr);
    command
        .arg("downscope")
        .arg("--boundary")
        .arg(&inner)
        .args(["--access-token-file", "-"]);
    success(&run_with_stdin(command, b"ya29.t").await);
    let request = broker.exchange_requests().pop().expect("a request");
    assert_eq!(
        request
            .options
            .and_then(|o| o.access_boundary)
            .map(|b| b.access_boundary_rules[0].available_resource.clone()),
        Some("//storage.googleapis.com/projects/_/buckets/b".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exchange_errors_never_show_the_subject_token() {
    let pki = Pki::new("cli-exchange-errors");
    let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
    let addr = serve(&pki, broker.clone()).await;
    let exchange = |token_type: &str| {
        let mut command = tokenctl_for(&pki, addr);
        command.args([
            "exchange",
            "--subject-token-file",
            "-",
            "--subject-token-type",
            token_type,
            "--audience",
            AUDIENCE,
        ]);
        command
    };

    // Google rejected the subject token: exit 4 with the broker's details.
    broker.fail_with([common::invalid_argument(
        "subject_token",
        "UPSTREAM_REJECTED",
        "Google refused the token: invalid_grant",
    )]);
    let output = run_with_stdin(exchange("jwt"), SUBJECT_TOKEN.as_bytes()).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.starts_with("tokenctl: INVALID_ARGUMENT (UPSTREAM_REJECTED): invalid subject_token"),
        "{stderr}"
    );
    assert!(stderr.contains("  field: subject_token\n"), "{stderr}");
    assert_no_subject_token(&stderr);

    // A type the broker does not accept: the broker, not tokenctl, says so.
    let output = run_with_stdin(
        exchange("urn:ietf:params:oauth:token-type:mtls"),
        SUBJECT_TOKEN.as_bytes(),
    )
    .await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("(UNSUPPORTED_TOKEN_TYPE)")
            && stderr.contains("  field: subject_token_type\n"),
        "{stderr}"
    );
    assert_no_subject_token(&stderr);

    // Denied for the audience: exit 3.
    broker.fail_with([common::policy_denied("audiences", "ci", AUDIENCE)]);
    let output = run_with_stdin(exchange("jwt"), SUBJECT_TOKEN.as_bytes()).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("  rule: audiences\n"), "{stderr}");
    assert_no_subject_token(&stderr);
    assert_eq!(broker.exchange_requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn exchange_usage_errors_exit_2_before_anything_is_sent() {
    let pki = Pki::new("cli-exchange-usage");
    let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
    let addr = serve(&pki, broker.clone()).await;
    let boundary = boundary_file(&pki);

    let usage = |output: &Output, starts: &str| {
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.starts_with(starts), "{starts:?} expected:\n{stderr}");
        assert_eq!(text(&output.stdout), "");
        assert_no_subject_token(&stderr);
    };

    // An empty token, from stdin or a file.
    let mut command = tokenctl_for(&pki, addr);
    command.args([
        "exchange",
        "--subject-token-file",
        "-",
        "--subject-token-type",
        "jwt",
        "--audience",
        AUDIENCE,
    ]);
    usage(
        &run_with_stdin(command, b"\n").await,
        "tokenctl: the subject token in standard input is empty\n",
    );
    let empty = pki.dir.join("empty.txt");
    std::fs::write(&empty, "").expect("write");
    let mut command = tokenctl_for(&pki, addr);
    command
        .arg("downscope")
        .arg("--boundary")
        .arg(&boundary)
        .arg("--access-token-file")
        .arg(&empty);
    usage(
        &run(command).await,
        &format!(
            "tokenctl: the access token in {} is empty\n",
            empty.display()
        ),
    );

    // An unreadable token file.
    let missing = pki.dir.join("missing.jwt");
    let mut command = tokenctl_for(&pki, addr);
    command
        .args([
            "exchange",
            "--subject-token-type",
            "jwt",
            "--audience",
            AUDIENCE,
        ])
        .arg("--subject-token-file")
        .arg(&missing);
    usage(
        &run(command).await,
        &format!("tokenctl: cannot read {}: ", missing.display()),
    );

    // A boundary file with a misspelt key, with the path to it.
    let bad = pki.dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"accessBoundary": {"accessBoundaryRules": [{"availableResource": "//r",
            "availablePermissions": ["inRole:roles/x"], "availabilityConditions": {}}]}}"#,
    )
    .expect("write");
    let mut command = tokenctl_for(&pki, addr);
    command.arg("downscope").arg("--boundary").arg(&bad);
    usage(
        &run_with_stdin(command, b"ya29.t").await,
        &format!(
            "tokenctl: access boundary file {}: accessBoundary.accessBoundaryRules[0]: unknown \
             key \"availabilityConditions\"; expected availableResource, availablePermissions or \
             availabilityCondition\n",
            bad.display()
        ),
    );
    let not_json = pki.dir.join("not-json.json");
    std::fs::write(&not_json, SUBJECT_TOKEN).expect("write");
    let mut command = tokenctl_for(&pki, addr);
    command
        .args([
            "exchange",
            "--subject-token-file",
            "-",
            "--subject-token-type",
            "jwt",
            "--audience",
            AUDIENCE,
            "--boundary",
        ])
        .arg(&not_json);
    usage(
        &run_with_stdin(command, SUBJECT_TOKEN.as_bytes()).await,
        &format!(
            "tokenctl: access boundary file {}: not JSON: ",
            not_json.display()
        ),
    );

    // Flags: no audience and no credential; an unknown token type; no boundary.
    let mut command = tokenctl_for(&pki, addr);
    command.args([
        "exchange",
        "--subject-token-file",
        "-",
        "--subject-token-type",
        "jwt",
    ]);
    let output = run_with_stdin(command, SUBJECT_TOKEN.as_bytes()).await;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("--audience is required unless --credential"));
    let mut command = tokenctl_for(&pki, addr);
    command.args([
        "exchange",
        "--subject-token-file",
        "-",
        "--subject-token-type",
        "oidc",
        "--audience",
        AUDIENCE,
    ]);
    let output = run_with_stdin(command, SUBJECT_TOKEN.as_bytes()).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("expected one of jwt, id_token, saml2, aws4_request, access_token"),
        "{stderr}"
    );
    let mut command = tokenctl_for(&pki, addr);
    command.arg("downscope");
    let output = run_with_stdin(command, b"ya29.t").await;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));

    assert!(broker.exchange_requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn help_documents_exchange_and_downscope_with_examples() {
    for (name, needles) in [
        (
            "exchange",
            &[
                "--subject-token-file <FILE>",
                "--subject-token-type <TYPE>",
                "jwt, id_token, saml2, aws4_request, access_token",
                "--audience <AUDIENCE>",
                "--scopes",
                "--user-project <PROJECT>",
                "--boundary <FILE>",
                "--credential <NAME>",
                "trailing line breaks",
                "Examples:",
                "tokenctl exchange --subject-token-type jwt",
            ][..],
        ),
        (
            "downscope",
            &[
                "--boundary <FILE>",
                "--access-token-file <FILE>",
                "\"accessBoundaryRules\"",
                "inRole:roles/storage.objectViewer",
                "Examples:",
                "tokenctl print-access-token | tokenctl downscope --boundary",
            ][..],
        ),
    ] {
        let mut command = tokenctl();
        command.args([name, "--help"]);
        let stdout = success(&run(command).await);
        for needle in needles
            .iter()
            .chain(&["--format <FORMAT>", "--addr <ADDR>"])
        {
            assert!(
                stdout.contains(needle),
                "{name}: {needle:?} missing from:\n{stdout}"
            );
        }
    }
    let mut command = tokenctl();
    command.arg("--help");
    let stdout = success(&run(command).await);
    assert!(
        stdout.contains("exchange") && stdout.contains("downscope"),
        "{stdout}"
    );
}

/// Delivery to programs that cannot call the broker: `executable-source`,
/// `print-external-account-config` and `write`.
#[cfg(unix)]
mod delivery {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    use std::process::{Child, ExitStatus};
    use std::time::SystemTime;

    use super::*;

    const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
    const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

    /// Every variable Google's clients pass to an executable.
    const GOOGLE_ENV: [&str; 7] = [
        "GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE",
        "GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE",
        "GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE",
        "GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE",
        "GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL",
        "GOOGLE_EXTERNAL_ACCOUNT_ID",
        "GOOGLE_EXTERNAL_ACCOUNT_REVOKE",
    ];

    /// The environment a Google client gives a non-interactive executable for the provider
    /// `AUDIENCE` (impersonating `TARGET` after the exchange).
    fn google_env(command: &mut Command, output_file: Option<&Path>) {
        for name in GOOGLE_ENV {
            command.env_remove(name);
        }
        command
            .env("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE", AUDIENCE)
            .env("GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE", ID_TOKEN_TYPE)
            .env("GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE", "0")
            .env("GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL", TARGET)
            .env("GOOGLE_EXTERNAL_ACCOUNT_REVOKE", "0");
        if let Some(file) = output_file {
            command.env("GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE", file);
        }
    }

    fn unix_seconds(time: SystemTime) -> u64 {
        time.duration_since(SystemTime::UNIX_EPOCH)
            .expect("after the epoch")
            .as_secs()
    }

    /// The exact success response for the fake broker's `number`th ID token.
    fn success_line(number: usize, token_type: &str, expiration_time: u64) -> String {
        format!(
            "{{\"version\":1,\"success\":true,\"token_type\":\"{token_type}\",\"id_token\":\"{}\",\
             \"expiration_time\":{expiration_time}}}\n",
            FakeBroker::id_token(number)
        )
    }

    /// The exact success response for `id_token`.
    fn jwt_line(id_token: &str, token_type: &str, expiration_time: u64) -> String {
        format!(
            "{{\"version\":1,\"success\":true,\"token_type\":\"{token_type}\",\"id_token\":\"{id_token}\",\
             \"expiration_time\":{expiration_time}}}\n"
        )
    }

    /// The exact output file for an ID token asked for with `credential` (empty: the default)
    /// and `include_email`.
    fn cached_line(id_token: &str, expiration_time: u64, credential: &str, email: bool) -> String {
        format!(
            "{{\"version\":1,\"success\":true,\"token_type\":\"{ID_TOKEN_TYPE}\",\"id_token\":\"{id_token}\",\
             \"expiration_time\":{expiration_time},\"tokenctl_credential\":\"{credential}\",\
             \"tokenctl_include_email\":{email}}}\n"
        )
    }

    /// Asserts a failure response with exactly the contract's fields, `code`, the exit code,
    /// nothing on stderr and no secret; returns the message.
    fn failure(output: &Output, exit: i32, code: &str) -> String {
        let stdout = text(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(exit),
            "stdout: {stdout} stderr: {}",
            text(&output.stderr)
        );
        assert_eq!(
            text(&output.stderr),
            "",
            "nothing on stderr: google-auth reads it together with stdout"
        );
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        let json: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON response");
        let mut keys: Vec<&str> = json
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["code", "message", "success", "version"], "{stdout}");
        assert_eq!(json["version"], 1);
        assert_eq!(json["success"], false);
        assert_eq!(json["code"], code, "{stdout}");
        let message = json["message"].as_str().expect("a message").to_owned();
        assert!(!message.is_empty());
        assert_no_secret(&stdout);
        message
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read the directory")
            .map(|entry| {
                entry
                    .expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn help_documents_the_delivery_commands() {
        for (name, needles) in [
            (
                "executable-source",
                &[
                    "--audience <AUDIENCE>",
                    "GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE",
                    "GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE",
                    "GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE=1",
                    "INTERACTIVE_NOT_SUPPORTED",
                    "{\"version\":1,\"success\":true",
                    "--issuer-uri=https://accounts.google.com",
                ][..],
            ),
            (
                "print-external-account-config",
                &[
                    "--audience <PROVIDER>",
                    "--impersonate <EMAIL>",
                    "--service-account-impersonation-url <URL>",
                    "--token-url <URL>",
                    "--timeout-millis <MILLIS>",
                    "--executable-output-file <FILE>",
                    "--output <FILE>",
                    "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1",
                    "absolute path",
                    "--tokenctl-path <PATH>",
                    "shell-like",
                    "backslashes",
                    "--issuer-uri=https://accounts.google.com",
                ][..],
            ),
            (
                "write",
                &[
                    "--output <FILE>",
                    "--kind <KIND>",
                    "--audience <AUDIENCE>",
                    "--scopes",
                    "--format <FORMAT>",
                    "--once",
                    "--refresh-margin <DURATION>",
                    "0600",
                    "SIGTERM",
                    "without a trailing newline",
                    "earlier run",
                ][..],
            ),
        ] {
            let mut command = tokenctl();
            command.args([name, "--help"]);
            let stdout = success(&run(command).await);
            for needle in needles.iter().chain(&["--addr <ADDR>"]) {
                assert!(
                    stdout.contains(needle),
                    "{name}: {needle:?} missing from:\n{stdout}"
                );
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn executable_source_prints_the_success_response() {
        let pki = Pki::new("cli-exec-success");
        let expire_time = whole_seconds_from_now(Duration::from_secs(3600));
        let broker = FakeBroker::new(expire_time);
        let addr = serve(&pki, broker.clone()).await;

        let mut command = tokenctl_for(&pki, addr);
        command.arg("executable-source");
        google_env(&mut command, None);
        let output = run(command).await;
        assert_eq!(
            success(&output),
            success_line(1, ID_TOKEN_TYPE, unix_seconds(expire_time))
        );
        let request = broker.id_token_requests().pop().expect("a request");
        assert_eq!(
            request.audience, AUDIENCE,
            "the provider, as the client passes it"
        );
        assert!(!request.include_email);
        assert_eq!(request.target_service_account, "");
        assert_eq!(request.credential, "");

        // The flags, and a configuration whose subject_token_type is jwt.
        let mut command = tokenctl_for(&pki, addr);
        command.args([
            "executable-source",
            "--audience",
            "https://iam.googleapis.com/custom",
            "--credential",
            "dev",
            "--include-email",
        ]);
        google_env(&mut command, None);
        command.env("GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE", JWT_TYPE);
        let output = run(command).await;
        assert_eq!(
            success(&output),
            success_line(2, JWT_TYPE, unix_seconds(expire_time))
        );
        let request = broker.id_token_requests().pop().expect("a request");
        assert_eq!(request.audience, "https://iam.googleapis.com/custom");
        assert!(request.include_email);
        assert_eq!(request.credential, "dev");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn executable_source_failures_are_json_with_a_non_zero_exit() {
        let pki = Pki::new("cli-exec-failure");
        let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
        let addr = serve(&pki, broker.clone()).await;

        // The broker refuses: its status and reason.
        broker.fail_with([common::policy_denied("audiences", "ci", AUDIENCE)]);
        let mut command = tokenctl_for(&pki, addr);
        command.arg("executable-source");
        google_env(&mut command, None);
        let message = failure(&run(command).await, 3, "PERMISSION_DENIED/POLICY_DENIED");
        assert!(
            message.starts_with("PERMISSION_DENIED (POLICY_DENIED): grant ci does not allow"),
            "{message}"
        );
        assert!(message.contains("rule=audiences"), "{message}");
        assert_eq!(broker.id_token_requests().len(), 1);

        // Interactive mode is refused before anything else.
        let mut command = tokenctl_for(&pki, addr);
        command.arg("executable-source");
        google_env(&mut command, None);
        command.env("GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE", "1");
        let message = failure(&run(command).await, 2, "INTERACTIVE_NOT_SUPPORTED");
        assert!(message.contains("non-interactively"), "{message}");

        // No audience at all.
        let mut command = tokenctl_for(&pki, addr);
        command.arg("executable-source");
        google_env(&mut command, None);
        command.env_remove("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE");
        failure(&run(command).await, 2, "MISSING_AUDIENCE");

        // A SAML configuration.
        let mut command = tokenctl_for(&pki, addr);
        command.arg("executable-source");
        google_env(&mut command, None);
        command.env(
            "GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE",
            "urn:ietf:params:oauth:token-type:saml2",
        );
        failure(&run(command).await, 2, "UNSUPPORTED_TOKEN_TYPE");

        // No connection settings.
        let mut command = tokenctl();
        command.arg("executable-source");
        google_env(&mut command, None);
        let message = failure(&run(command).await, 2, "INVALID_CONFIGURATION");
        assert!(message.contains("--addr (TOKEN_BROKER_ADDR)"), "{message}");
        assert_eq!(broker.id_token_requests().len(), 1, "none of these called");

        // A broker that cannot be reached.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address")
        };
        let mut command = tokenctl_for(&pki, closed);
        command.arg("executable-source");
        google_env(&mut command, None);
        let message = failure(&run(command).await, 5, "UNAVAILABLE");
        assert!(message.starts_with("cannot connect to"), "{message}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn executable_source_reuses_a_valid_output_file_and_refreshes_an_expired_one() {
        let pki = Pki::new("cli-exec-output-file");
        let expire_time = whole_seconds_from_now(Duration::from_secs(3600));
        let broker = FakeBroker::new(expire_time);
        let addr = serve(&pki, broker.clone()).await;
        let file = pki.dir.join("id-token.json");
        let exec = |file: &Path| {
            let mut command = tokenctl_for(&pki, addr);
            command.arg("executable-source");
            google_env(&mut command, Some(file));
            command
        };

        broker.set_jwt_id_tokens(true);
        let exp = unix_seconds(expire_time);
        let token = |number: usize| FakeBroker::jwt_id_token(number, AUDIENCE, exp);

        // No file yet: the broker is called and the response cached, mode 0600, with what
        // the token was asked for.
        let first = success(&run(exec(&file)).await);
        assert_eq!(first, jwt_line(&token(1), ID_TOKEN_TYPE, exp));
        assert_eq!(
            std::fs::read_to_string(&file).expect("the file"),
            cached_line(&token(1), exp, "", false)
        );
        assert_eq!(mode(&file), 0o600);
        assert_eq!(broker.id_token_requests().len(), 1);

        // Still valid: reused, the broker is not called.
        assert_eq!(success(&run(exec(&file)).await), first);
        assert_eq!(broker.id_token_requests().len(), 1);

        // Expired, about to expire, for another audience, an expiry its token disagrees with,
        // no record of the request, a failure, or not a response: a new token.
        let now = unix_seconds(SystemTime::now());
        let old = |aud: &str, exp: u64| FakeBroker::jwt_id_token(99, aud, exp);
        for (number, stale) in [
            (
                2,
                cached_line(&old(AUDIENCE, now - 10), now - 10, "", false),
            ),
            (
                3,
                cached_line(&old(AUDIENCE, now + 60), now + 60, "", false),
            ),
            (
                4,
                cached_line(&old("https://another.example", exp), exp, "", false),
            ),
            (5, cached_line(&old(AUDIENCE, exp + 60), exp, "", false)),
            (6, jwt_line(&old(AUDIENCE, exp), ID_TOKEN_TYPE, exp)),
            (
                7,
                r#"{"version":1,"success":false,"code":"UNAVAILABLE","message":"m"}"#.to_owned(),
            ),
            (8, "{".to_owned()),
        ] {
            std::fs::write(&file, &stale).expect("write a stale response");
            let fresh = success(&run(exec(&file)).await);
            assert_eq!(
                fresh,
                jwt_line(&token(number), ID_TOKEN_TYPE, exp),
                "after {stale}"
            );
            assert_eq!(
                std::fs::read_to_string(&file).expect("the file"),
                cached_line(&token(number), exp, "", false)
            );
            assert_eq!(mode(&file), 0o600);
            assert_eq!(broker.id_token_requests().len(), number);
        }

        // Another credential, or the email asked for: not the cached token, which is then
        // replaced; the same request again reuses it.
        let mut other = exec(&file);
        other.args(["--credential", "other"]);
        let fresh = success(&run(other).await);
        assert_eq!(fresh, jwt_line(&token(9), ID_TOKEN_TYPE, exp));
        assert_eq!(broker.id_token_requests().len(), 9);
        assert_eq!(
            broker.id_token_requests().pop().map(|r| r.credential),
            Some("other".to_owned())
        );
        assert_eq!(
            std::fs::read_to_string(&file).expect("the file"),
            cached_line(&token(9), exp, "other", false)
        );
        let mut again = exec(&file);
        again.args(["--credential", "other"]);
        assert_eq!(success(&run(again).await), fresh);
        assert_eq!(broker.id_token_requests().len(), 9);
        let mut email = exec(&file);
        email.args(["--credential", "other", "--include-email"]);
        assert_eq!(
            success(&run(email).await),
            jwt_line(&token(10), ID_TOKEN_TYPE, exp)
        );
        assert_eq!(broker.id_token_requests().len(), 10);
        // The default credential after another: the broker again.
        assert_eq!(
            success(&run(exec(&file)).await),
            jwt_line(&token(11), ID_TOKEN_TYPE, exp)
        );
        assert_eq!(broker.id_token_requests().len(), 11);
        assert_eq!(
            entries(&pki.dir)
                .iter()
                .filter(|n| n.contains(".tmp"))
                .count(),
            0
        );

        // A file that cannot be written: the token is still printed, and nothing on stderr.
        let unwritable = pki.dir.join("missing-dir").join("id-token.json");
        let output = run(exec(&unwritable)).await;
        assert_eq!(success(&output), jwt_line(&token(12), ID_TOKEN_TYPE, exp));
        assert!(!unwritable.exists());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn print_external_account_config_writes_a_configuration_that_works() {
        let pki = Pki::new("cli-wif-config");
        let expire_time = whole_seconds_from_now(Duration::from_secs(3600));
        let broker = FakeBroker::new(expire_time);
        let addr = serve(&pki, broker.clone()).await;
        std::fs::create_dir_all(pki.dir.join("cache")).expect("cache directory");

        // Relative paths, made absolute against the current directory.
        let mut command = tokenctl();
        command.current_dir(&pki.dir).args([
            "--addr",
            &format!("localhost:{}", addr.port()),
            "--ca",
            "ca.pem",
            "--cert",
            "client.pem",
            "--key",
            "client.key",
            "print-external-account-config",
            "--audience",
            AUDIENCE,
            "--impersonate",
            TARGET,
            "--executable-output-file",
            "cache/id-token.json",
            "--output",
            "wif.json",
        ]);
        assert_eq!(success(&run(command).await), "");
        let config_file = pki.dir.join("wif.json");
        assert_eq!(mode(&config_file), 0o644);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_file).expect("the config"))
                .expect("JSON");

        let dir = std::fs::canonicalize(&pki.dir).expect("canonical directory");
        let command_line = config["credential_source"]["executable"]["command"]
            .as_str()
            .expect("a command")
            .to_owned();
        let words: Vec<&str> = command_line.split_whitespace().collect();
        assert_eq!(
            std::fs::canonicalize(words[0]).expect("tokenctl exists"),
            std::fs::canonicalize(env!("CARGO_BIN_EXE_tokenctl")).expect("tokenctl"),
            "the absolute path of this tokenctl"
        );
        assert_eq!(
            words[1..].join(" "),
            format!(
                "--addr localhost:{} --ca {dir}/ca.pem --cert {dir}/client.pem --key \
                 {dir}/client.key --timeout 25000ms executable-source",
                addr.port(),
                dir = dir.display()
            )
        );
        let output_file = dir.join("cache").join("id-token.json");
        assert_eq!(
            config,
            serde_json::json!({
                "type": "external_account",
                "audience": AUDIENCE,
                "subject_token_type": ID_TOKEN_TYPE,
                "token_url": "https://sts.googleapis.com/v1/token",
                "service_account_impersonation_url": format!(
                    "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/\
                     {TARGET}:generateAccessToken"
                ),
                "credential_source": {"executable": {
                    "command": command_line,
                    "timeout_millis": 30000,
                    "output_file": output_file.to_string_lossy(),
                }},
            })
        );

        // Run it as Google's clients do: split at whitespace, the variables set, from
        // elsewhere, with nothing of tokenctl's in the environment.
        let exec = || {
            let mut command = Command::new(words[0]);
            command.args(&words[1..]).current_dir("/");
            for name in ENV {
                command.env_remove(name);
            }
            google_env(&mut command, Some(&output_file));
            command
        };
        broker.set_jwt_id_tokens(true);
        let exp = unix_seconds(expire_time);
        let first = success(&run(exec()).await);
        assert_eq!(
            first,
            jwt_line(
                &FakeBroker::jwt_id_token(1, AUDIENCE, exp),
                ID_TOKEN_TYPE,
                exp
            )
        );
        assert_eq!(
            broker
                .id_token_requests()
                .pop()
                .map(|r| r.audience)
                .as_deref(),
            Some(AUDIENCE)
        );
        assert_eq!(
            std::fs::read_to_string(&output_file).expect("cached"),
            cached_line(&FakeBroker::jwt_id_token(1, AUDIENCE, exp), exp, "", false)
        );
        assert_eq!(
            success(&run(exec()).await),
            first,
            "reused from output_file"
        );
        assert_eq!(
            broker.id_token_requests().len(),
            1,
            "one broker call for both runs"
        );

        // To standard output, the connection left to the environment, with the other knobs.
        let mut command = tokenctl();
        command.args([
            "print-external-account-config",
            "--audience",
            AUDIENCE,
            "--service-account-impersonation-url",
            "http://127.0.0.1:1/v1/projects/-/serviceAccounts/sa@p:generateAccessToken",
            "--token-url",
            "http://127.0.0.1:1/v1/token",
            "--timeout-millis",
            "10000",
            "--id-token-audience",
            "https://iam.googleapis.com/custom",
            "--credential",
            "dev",
            "--include-email",
            "--connection-from-env",
        ]);
        let config: serde_json::Value =
            serde_json::from_str(&success(&run(command).await)).expect("JSON on stdout");
        assert_eq!(config["token_url"], "http://127.0.0.1:1/v1/token");
        assert_eq!(
            config["service_account_impersonation_url"],
            "http://127.0.0.1:1/v1/projects/-/serviceAccounts/sa@p:generateAccessToken"
        );
        let executable = &config["credential_source"]["executable"];
        assert_eq!(executable["timeout_millis"], 10000);
        assert!(executable.get("output_file").is_none(), "{executable}");
        let command_line = executable["command"].as_str().expect("a command");
        let (_, rest) = command_line.split_once(' ').expect("flags");
        assert_eq!(
            rest,
            "--timeout 8000ms executable-source --audience https://iam.googleapis.com/custom \
             --credential dev --include-email"
        );

        // --tokenctl-path names the executable as given (made absolute, links kept).
        let mut command = tokenctl();
        command.current_dir(&pki.dir).args([
            "print-external-account-config",
            "--audience",
            AUDIENCE,
            "--connection-from-env",
            "--tokenctl-path",
            "bin/tokenctl",
        ]);
        let config: serde_json::Value =
            serde_json::from_str(&success(&run(command).await)).expect("JSON on stdout");
        let command_line = config["credential_source"]["executable"]["command"]
            .as_str()
            .expect("a command");
        assert_eq!(
            command_line,
            format!(
                "{} --timeout 25000ms executable-source",
                std::path::absolute(pki.dir.join("bin/tokenctl"))
                    .expect("absolute")
                    .display()
            )
        );

        // A word that google-auth's shlex.split or Node would unquote: refused.
        for credential in ["it's", "a\\b", "\"q\""] {
            let mut command = tokenctl();
            command.args([
                "print-external-account-config",
                "--audience",
                AUDIENCE,
                "--connection-from-env",
                "--credential",
                credential,
            ]);
            let output = run(command).await;
            assert_eq!(output.status.code(), Some(2), "{credential}");
            assert_eq!(text(&output.stdout), "");
            assert!(
                text(&output.stderr).contains("a quote, a backslash"),
                "{}",
                text(&output.stderr)
            );
        }

        // Without connection settings (and without --connection-from-env): a usage error.
        let mut command = tokenctl();
        command.args(["print-external-account-config", "--audience", AUDIENCE]);
        let output = run(command).await;
        assert_eq!(output.status.code(), Some(2));
        assert!(text(&output.stderr).contains("--addr (TOKEN_BROKER_ADDR)"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn write_once_replaces_the_file_atomically_with_mode_0600() {
        let pki = Pki::new("cli-write-once");
        let expire_time = whole_seconds_from_now(Duration::from_secs(3600));
        let broker = FakeBroker::new(expire_time);
        let addr = serve(&pki, broker.clone()).await;
        let dir = pki.dir.join("tokens");
        std::fs::create_dir_all(&dir).expect("token directory");
        let file = dir.join("access-token");
        std::fs::write(&file, "old").expect("an old file");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let reader = dir.join("held-by-a-reader");
        std::fs::hard_link(&file, &reader).expect("a second name for the old file");
        let old_inode = std::fs::metadata(&file).expect("metadata").ino();

        let mut command = tokenctl_for(&pki, addr);
        command
            .args([
                "write",
                "--once",
                "--scopes",
                "https://www.googleapis.com/auth/pubsub",
                "--output",
            ])
            .arg(&file);
        assert_eq!(success(&run(command).await), "");
        assert_eq!(
            std::fs::read_to_string(&file).expect("the token file"),
            "ya29.fake-1",
            "only the token, no newline"
        );
        assert_eq!(mode(&file), 0o600);
        assert_ne!(std::fs::metadata(&file).expect("metadata").ino(), old_inode);
        assert_eq!(
            std::fs::read_to_string(&reader).expect("the old file"),
            "old",
            "replaced by a rename, not rewritten in place"
        );
        assert_eq!(entries(&dir), ["access-token", "held-by-a-reader"]);
        assert_eq!(
            broker.requests().pop().map(|r| r.scopes),
            Some(vec!["https://www.googleapis.com/auth/pubsub".to_owned()])
        );

        // An ID token, as JSON.
        let id_file = dir.join("id-token.json");
        let mut command = tokenctl_for(&pki, addr);
        command
            .args([
                "write",
                "--once",
                "--kind",
                "id",
                "--audience",
                "https://hello-abc123-uc.a.run.app",
                "--credential",
                "dev",
                "--format",
                "json",
                "--output",
            ])
            .arg(&id_file);
        assert_eq!(success(&run(command).await), "");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&id_file).expect("the file"))
                .expect("JSON");
        assert_eq!(
            json,
            serde_json::json!({
                "id_token": FakeBroker::id_token(2),
                "expire_time": humantime::format_rfc3339_seconds(expire_time).to_string(),
                "audience": "https://hello-abc123-uc.a.run.app",
                "principal": PRINCIPAL,
                "credential": "dev",
            })
        );
        assert_eq!(mode(&id_file), 0o600);

        // Refused, with or without --once (before anything was written): the error's exit
        // code, no file, no secret.
        for once in [true, false] {
            broker.fail_with([common::policy_denied("scopes", "ci", "https://x")]);
            let denied = dir.join(format!("denied-{once}"));
            let mut command = tokenctl_for(&pki, addr);
            command.args(["write", "--output"]).arg(&denied);
            if once {
                command.arg("--once");
            }
            let output = run(command).await;
            assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
            let stderr = text(&output.stderr);
            assert!(
                stderr.contains("PERMISSION_DENIED (POLICY_DENIED)"),
                "{stderr}"
            );
            assert_no_secret(&stderr);
            assert!(!denied.exists());
        }

        // Usage errors.
        let mut command = tokenctl_for(&pki, addr);
        command
            .args(["write", "--kind", "id", "--output"])
            .arg(&file);
        let output = run(command).await;
        assert_eq!(output.status.code(), Some(2));
        assert!(text(&output.stderr).contains("--kind id needs --audience"));
    }

    /// Kills the child if the test ends before it exited.
    struct Running(Child);

    impl Drop for Running {
        fn drop(&mut self) {
            if matches!(self.0.try_wait(), Ok(None)) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }

    /// Waits until `path` holds `expected`. Whenever the file exists it must hold a whole
    /// token: readers never see a partial write.
    async fn wait_for_token(path: &Path, expected: &str, child: &mut Running) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match std::fs::read_to_string(path) {
                Ok(contents) if contents == expected => return,
                Ok(contents) => {
                    let number = contents.strip_prefix("ya29.fake-").unwrap_or_default();
                    assert!(
                        !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()),
                        "a partial or foreign token: {contents:?}"
                    );
                }
                Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::NotFound),
            }
            assert!(
                matches!(child.0.try_wait(), Ok(None)),
                "tokenctl write exited early"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never held {expected:?}",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_for_exit(child: &mut Running) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.0.try_wait().expect("wait") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tokenctl write did not stop"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn write_refreshes_ahead_survives_failures_and_stops_on_sigterm() {
        let pki = Pki::new("cli-write-daemon");
        let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
        // Tokens that live 4 s (3 to 4, in whole seconds): refreshed half-way.
        broker.set_lifetime(Some(Duration::from_secs(4)));
        let addr = serve(&pki, broker.clone()).await;
        let dir = pki.dir.join("tokens");
        std::fs::create_dir_all(&dir).expect("token directory");
        let file = dir.join("access-token");
        let log = pki.dir.join("write.log");

        let mut command = tokenctl_for(&pki, addr);
        command
            .args(["--no-retry", "write", "--output"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = Running(command.spawn().expect("spawn tokenctl write"));

        wait_for_token(&file, "ya29.fake-1", &mut child).await;
        assert_eq!(mode(&file), 0o600);
        wait_for_token(&file, "ya29.fake-2", &mut child).await;
        assert_eq!(mode(&file), 0o600);

        // The next two refreshes fail: retried with backoff until the broker answers again.
        let calls = broker.calls();
        broker.fail_with([
            common::upstream_unavailable(Duration::from_millis(100)),
            common::upstream_unavailable(Duration::from_millis(100)),
        ]);
        wait_for_token(&file, "ya29.fake-3", &mut child).await;
        assert_eq!(broker.calls(), calls + 3, "two failures, then the token");
        wait_for_token(&file, "ya29.fake-4", &mut child).await;

        let killed = Command::new("kill")
            .args(["-TERM", &child.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success());
        let status = wait_for_exit(&mut child).await;
        assert_eq!(status.code(), Some(0), "a clean exit on SIGTERM");
        assert!(file.exists(), "the file is left in place");
        assert_eq!(entries(&dir), ["access-token"], "no temporary file left");

        let log = std::fs::read_to_string(&log).expect("the log");
        for needle in [
            "tokenctl: wrote ",
            "next refresh at",
            "failed: UNAVAILABLE (UPSTREAM_UNAVAILABLE): Google is unavailable",
            "retrying in ",
            "SIGTERM received; stopping",
        ] {
            assert!(log.contains(needle), "{needle:?} missing from:\n{log}");
        }
        assert_no_secret(&log);
    }

    /// Waits until `path` is gone, with `child` still running.
    async fn wait_for_removal(path: &Path, child: &mut Running) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while path.exists() {
            assert!(
                matches!(child.0.try_wait(), Ok(None)),
                "tokenctl write exited early"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} was never removed",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn write_removes_an_expired_file_left_by_an_earlier_run_while_the_broker_is_down() {
        let pki = Pki::new("cli-write-leftover");
        let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
        broker.fail_with((0..200).map(|_| common::upstream_unavailable(Duration::ZERO)));
        let addr = serve(&pki, broker.clone()).await;
        let json = pki.dir.join("token.json");
        std::fs::write(
            &json,
            r#"{"access_token":"ya29.old","expire_time":"2020-01-01T00:00:00Z"}"#,
        )
        .expect("an expired JSON file");
        let text = pki.dir.join("token");
        let file = std::fs::File::create(&text).expect("a text file");
        std::io::Write::write_all(&mut &file, b"ya29.old").expect("write");
        file.set_modified(SystemTime::now() - Duration::from_secs(2 * 3600))
            .expect("set the modification time");
        drop(file);
        // A text file written recently is presumed valid and kept.
        let fresh = pki.dir.join("fresh-token");
        std::fs::write(&fresh, "ya29.recent").expect("a fresh text file");

        for (path, format) in [(&json, "json"), (&text, "text"), (&fresh, "text")] {
            let mut command = tokenctl_for(&pki, addr);
            command
                .args(["--no-retry", "write", "--format", format, "--output"])
                .arg(path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = Running(command.spawn().expect("spawn tokenctl write"));
            if path == &fresh {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                assert!(matches!(child.0.try_wait(), Ok(None)), "still running");
                assert_eq!(std::fs::read_to_string(path).expect("kept"), "ya29.recent");
            } else {
                wait_for_removal(path, &mut child).await;
            }
        }
        assert!(broker.calls() > 0, "the broker was asked");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn write_keeps_running_after_its_token_expired_and_a_permanent_error() {
        let pki = Pki::new("cli-write-expired-permanent");
        let broker = FakeBroker::new(whole_seconds_from_now(Duration::from_secs(3600)));
        broker.set_lifetime(Some(Duration::from_secs(2)));
        let addr = serve(&pki, broker.clone()).await;
        let file = pki.dir.join("access-token");
        let mut command = tokenctl_for(&pki, addr);
        command
            .args(["--no-retry", "write", "--output"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = Running(command.spawn().expect("spawn tokenctl write"));
        wait_for_token(&file, "ya29.fake-1", &mut child).await;

        // Refreshing fails until the token has expired and the file is removed, then with an
        // error retrying cannot fix: after a first write, that does not end the writer.
        broker.fail_with([
            common::upstream_unavailable(Duration::from_millis(1500)),
            common::upstream_unavailable(Duration::from_millis(1500)),
            common::policy_denied("scopes", "default", "https://x"),
        ]);
        wait_for_removal(&file, &mut child).await;
        wait_for_token(&file, "ya29.fake-2", &mut child).await;
        assert!(broker.calls() >= 4, "{}", broker.calls());
    }
}
