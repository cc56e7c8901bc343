//! The `metadata-sidecar` binary: `check-config`, a configuration file with `SIDECAR__`
//! overrides, and a graceful stop on SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::{BROKER_SA, eventually};

use crate::common::*;

const BINARY: &str = env!("CARGO_BIN_EXE_metadata-sidecar");

/// Kills the child (SIGKILL) if the test ends before it exits.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_checks_its_configuration_serves_and_stops_on_sigterm() {
    bounded(async {
        let world = World::start().await;
        let config = world.path("sidecar.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[broker]
address = "https://127.0.0.1:{port}"
tls_server_name = "localhost"
ca = "sidecar-ca.pem"
cert = "sidecar.pem"
key = "sidecar-key.pem"

[project]
project_id = "{PROJECT}"
numeric_project_id = "{PROJECT_NUMBER}"

[[service_accounts]]
email = "{BROKER_SA}"
credential = "sa"
"#,
                port = world.broker_addr.port()
            ),
        )
        .expect("write");

        let check = Command::new(BINARY)
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .expect("runs");
        assert!(check.status.success(), "{check:?}");
        assert!(
            String::from_utf8_lossy(&check.stdout).contains(": OK"),
            "{check:?}"
        );

        let check = Command::new(BINARY)
            .args(["check-config", "--config"])
            .arg(&config)
            .env("SIDECAR__PROJECT__NUMERIC_PROJECT_ID", "12ab")
            .output()
            .expect("runs");
        assert!(!check.status.success(), "{check:?}");
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert!(stderr.contains("project.numeric_project_id"), "{stderr}");

        let port = free_port();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut child = Running(
            Command::new(BINARY)
                .arg("--config")
                .arg(&config)
                .args(["--listen", &addr.to_string()])
                .env("SIDECAR__PROJECT__PROJECT_ID", "from-env")
                .env("SIDECAR__LOG__FILTER", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starts"),
        );
        assert!(
            eventually(Duration::from_secs(15), || async {
                match http().get(format!("http://{addr}/readyz")).send().await {
                    Ok(response) => response.status() == 200,
                    Err(_) => false,
                }
            })
            .await,
            "ready"
        );
        let project = get(addr, "/computeMetadata/v1/project/project-id").await;
        assert_eq!(project.body, "from-env");
        let token = get(addr, &account_path("default", "token")).await;
        assert_eq!(token.status, 200, "{token:?}");

        let pid = child.0.id().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(killed.success());
        let exited = eventually(Duration::from_secs(10), || {
            let status = child.0.try_wait().expect("wait");
            async move { status.is_some_and(|status| status.success()) }
        })
        .await;
        assert!(exited, "exits cleanly on SIGTERM");
        assert!(
            http().get(format!("http://{addr}/")).send().await.is_err(),
            "no longer listening"
        );
        world.stop().await;
    })
    .await;
}
