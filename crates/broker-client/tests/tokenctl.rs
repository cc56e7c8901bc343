//! The `tokenctl` binary against a fake broker over real mutual TLS.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{FakeBroker, PRINCIPAL, Pki, serve, whole_seconds_from_now};

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
