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
