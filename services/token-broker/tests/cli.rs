//! The `token-broker` binary: `dev` serves real tokens with the files it writes, and
//! `check-config` reports every problem of a configuration with its location.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker_proto::tokenbroker::v1::GetAccessTokenRequest;
use broker_proto::tokenbroker::v1::token_broker_client::TokenBrokerClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const BINARY: &str = env!("CARGO_BIN_EXE_token-broker");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("token-broker-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// Kills the child on drop, so a failed assertion does not leave it running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path, child: &mut Child) -> String {
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "token-broker dev exited early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} did not appear", path.display());
}

fn env_value<'a>(env: &'a str, name: &str) -> &'a str {
    env.lines()
        .find_map(|line| line.strip_prefix(&format!("export {name}=")))
        .unwrap_or_else(|| panic!("{name} missing from env"))
}

#[tokio::test]
async fn dev_mode_serves_tokens_to_the_example_workloads() {
    let dir = temp_dir("dev");
    let child = Command::new(BINARY)
        .args(["dev", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let mut running = Running(child);
    let env = wait_for(&dir.join("env"), &mut running.0);
    let addr = env_value(&env, "TOKEN_BROKER_ADDR");
    let port = addr.rsplit(':').next().expect("port");
    let ca = std::fs::read_to_string(env_value(&env, "TOKEN_BROKER_CA")).expect("ca");

    let client = |cert: &str, key: &str| {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca))
            .identity(Identity::from_pem(
                std::fs::read_to_string(dir.join(cert)).expect("cert"),
                std::fs::read_to_string(dir.join(key)).expect("key"),
            ))
            .domain_name("localhost");
        let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .expect("endpoint")
            .tls_config(tls)
            .expect("tls");
        async move { TokenBrokerClient::new(endpoint.connect().await.expect("connect")) }
    };

    let mut app = client("client.pem", "client-key.pem").await;
    let token = app
        .get_access_token(GetAccessTokenRequest::default())
        .await
        .expect("token")
        .into_inner();
    assert!(token.access_token.starts_with("ya29."));
    assert_eq!(
        token.principal,
        "broker@dev-project.iam.gserviceaccount.com"
    );

    let info: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/tokeninfo", env_value(&env, "GCP_EMULATOR_URL")))
        .query(&[("access_token", token.access_token.as_str())])
        .send()
        .await
        .expect("tokeninfo")
        .json()
        .await
        .expect("json");
    assert_eq!(
        info["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );

    let mut reader = client("readonly.pem", "readonly-key.pem").await;
    let denied = reader
        .get_access_token(GetAccessTokenRequest::default())
        .await
        .expect_err("read-only");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let allowed = GetAccessTokenRequest {
        scopes: vec!["https://www.googleapis.com/auth/devstorage.read_only".into()],
        ..Default::default()
    };
    reader
        .get_access_token(allowed.clone())
        .await
        .expect("read-only storage");
    // The read-only workload has a small budget (10 requests a second, 20 at once), so a
    // burst runs out of it; the app's budget is untouched.
    let mut limited = 0;
    for _ in 0..60 {
        match reader.get_access_token(allowed.clone()).await {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                limited += 1;
            }
        }
    }
    assert!(limited > 0, "the dev reader's rate limit is visible");
    app.get_access_token(GetAccessTokenRequest::default())
        .await
        .expect("the app is not limited by the reader");
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
}

// Multi-threaded: `check-config` asks the metadata server and the token endpoint (the emulator,
// served by this process) while this test waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_accepts_the_dev_configuration_and_lists_every_problem() {
    let dir = temp_dir("check");
    let options = token_broker::dev::DevOptions {
        dir: dir.clone(),
        listen: "127.0.0.1:0".parse().expect("addr"),
    };
    let environment = token_broker::dev::prepare(&options).await.expect("prepare");
    let check = |config: &Path| {
        Command::new(BINARY)
            .arg("check-config")
            .arg(config)
            .output()
            .expect("run")
    };

    let good = check(&environment.config);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("ok (6 credentials, 11 grants)"));

    // Three independent problems: a TLS key that is not a key, a credential whose key file is
    // missing, a policy grant naming an unknown credential.
    std::fs::write(dir.join("server-key.pem"), "not a key").expect("write");
    let config = std::fs::read_to_string(&environment.config).expect("config")
        + "\n[[credentials]]\nname = \"ghost\"\nkind = \"service_account\"\nkey_file = \"missing.json\"\n";
    std::fs::write(&environment.config, config).expect("write");
    let policy = std::fs::read_to_string(dir.join("policy.toml")).expect("policy").replace("credential = \"dev\"\ndefault = true\ncallers = [{ spiffe_id = \"spiffe://dev.token-broker.local/workload/reader\" }]", "credential = \"nowhere\"\ndefault = true\ncallers = [{ spiffe_id = \"spiffe://dev.token-broker.local/workload/reader\" }]");
    std::fs::write(dir.join("policy.toml"), policy).expect("write");
    let bad = check(&environment.config);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    for expected in [
        "tls:",
        "server-key.pem",
        "credentials[6] (ghost)",
        "missing.json",
        "grants[6]",
        "nowhere",
    ] {
        assert!(stderr.contains(expected), "{expected:?} in:\n{stderr}");
    }

    // Settings that cannot keep their promises: plain HTTP to a non-loopback Google, and a
    // background refresh that may outlast the refresh lead.
    let config = std::fs::read_to_string(&environment.config)
        .expect("config")
        .replace(
            "token_url = \"http://127.0.0.1",
            "token_url = \"http://oauth2.example.com",
        )
        + "\n[cache]\nrefresh_lead = \"40s\"\nbackground_deadline = \"35s\"\n";
    std::fs::write(&environment.config, config).expect("write");
    let unsafe_config = check(&environment.config);
    assert!(!unsafe_config.status.success());
    let stderr = String::from_utf8_lossy(&unsafe_config.stderr);
    for expected in ["token_url", "in the clear", "cache.background_deadline"] {
        assert!(stderr.contains(expected), "{expected:?} in:\n{stderr}");
    }

    std::fs::write(&environment.config, "[server]\nlisten = \"nonsense\"\n").expect("write");
    let broken = check(&environment.config);
    assert!(!broken.status.success());
    assert!(String::from_utf8_lossy(&broken.stderr).contains("listen"));
    environment.emulator.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
