//! The metadata sidecar as its own process: the `metadata-sidecar` binary built next to
//! broker-load, configured (a TOML file in the work directory) to answer from the cache-on
//! broker over mTLS with a client certificate of its own, listening on a free loopback port.
//! Its own process, so that its memory (VmRSS, VmHWM) is its own and its runtime does not share
//! threads with the load generator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Error;
use crate::load::MetadataCall;
use crate::setup::{self, World};

/// The binary's name.
const BINARY: &str = "metadata-sidecar";
/// Names the binary when it is not next to broker-load (as `--sidecar-bin` does).
pub(crate) const BINARY_ENV: &str = "BROKER_LOAD_SIDECAR_BIN";
/// The configuration file, in the work directory.
const CONFIG_FILE: &str = "sidecar.toml";
/// Its log (standard error), in the work directory; its tail is shown if it fails to start.
const LOG_FILE: &str = "sidecar.log";
/// How long the sidecar may take to be ready (its first token fetched).
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The sidecar binary: `explicit` (`--sidecar-bin` or its variable), or `metadata-sidecar` in
/// the directory of the running executable (where cargo builds it with broker-load).
pub(crate) fn locate(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => {
            let exe = std::env::current_exe()?;
            let dir = exe
                .parent()
                .ok_or("the running executable has no directory")?;
            dir.join(format!("{BINARY}{}", std::env::consts::EXE_SUFFIX))
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "the sidecar scenario runs the {BINARY} binary, and there is none at {}: build it \
             next to broker-load (`cargo build --release -p broker-load -p metadata-sidecar`, \
             then run target/release/broker-load), or name it with --sidecar-bin or \
             {BINARY_ENV}; or leave `sidecar` out of --scenarios",
            path.display()
        )
        .into())
    }
}

/// The memory of a process, from `/proc/PID/status` (Linux).
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Memory {
    /// Resident set size now, KiB (`VmRSS`).
    pub(crate) rss_kib: u64,
    /// Its peak, KiB (`VmHWM`).
    pub(crate) hwm_kib: u64,
    /// Threads.
    pub(crate) threads: u64,
}

impl Memory {
    fn of(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix(name)?.strip_prefix(':')?;
                value.split_whitespace().next()?.parse::<u64>().ok()
            })
        };
        Some(Self {
            rss_kib: field("VmRSS")?,
            hwm_kib: field("VmHWM")?,
            threads: field("Threads")?,
        })
    }
}

/// The running sidecar; killed when dropped.
#[derive(Debug)]
pub(crate) struct Sidecar {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    /// The token it serves: the one of its start, fetched from the broker once.
    token: Arc<str>,
}

impl Sidecar {
    /// Writes its configuration, starts `binary`, waits until `/readyz` answers 200 (its default
    /// account's token fetched from the broker) and fetches that token once.
    pub(crate) async fn start(
        binary: &Path,
        world: &World,
        log_filter: &str,
    ) -> Result<Self, Error> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config = world.path(CONFIG_FILE);
        std::fs::write(&config, configuration(world, addr, log_filter))?;
        let log = world.path(LOG_FILE);
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            // Only the file configures it.
            .env_remove("RUST_LOG")
            .env_remove("SIDECAR_CONFIG");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SIDECAR__") {
                command.env_remove(name);
            }
        }
        let child = command
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", binary.display()))?;
        let mut sidecar = Self {
            child,
            addr,
            log,
            token: Arc::from(""),
        };
        sidecar.wait_ready().await?;
        let mut call = MetadataCall::connect(addr, None).await?;
        sidecar.token = Arc::from(call.token().await?);
        Ok(sidecar)
    }

    async fn wait_ready(&mut self) -> Result<(), Error> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("http://{}/readyz", self.addr);
        let until = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!(
                    "the sidecar exited at start ({status}); its log:\n{}",
                    self.log_tail()
                )
                .into());
            }
            if let Ok(response) = client.get(&url).send().await
                && response.status() == reqwest::StatusCode::OK
            {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(format!(
                    "the sidecar was not ready within {READY_TIMEOUT:?}; its log:\n{}",
                    self.log_tail()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `count` new keep-alive connections, each primed with one request (not measured) that
    /// must answer the sidecar's token.
    pub(crate) async fn connections(&self, count: usize) -> Result<Vec<MetadataCall>, Error> {
        let mut calls = Vec::with_capacity(count);
        for _ in 0..count {
            let mut call = MetadataCall::connect(self.addr, Some(Arc::clone(&self.token))).await?;
            call.token().await?;
            calls.push(call);
        }
        Ok(calls)
    }

    /// Its memory now; `None` if `/proc` does not say.
    pub(crate) fn memory(&self) -> Option<Memory> {
        Memory::of(self.child.id())
    }

    /// Whether it is still running.
    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free now (the sidecar binds it a moment later).
fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    Ok(listener.local_addr()?.port())
}

/// The sidecar's configuration: the cache-on broker, the default account `sa` with
/// cloud-platform, everything else its defaults (paths relative to the file).
fn configuration(world: &World, listen: SocketAddr, log_filter: &str) -> String {
    let broker = world.hit.addr().port();
    let (ca, cert, key) = (
        setup::CA_FILE,
        setup::SIDECAR_CERT_FILE,
        setup::SIDECAR_KEY_FILE,
    );
    let (project, number) = (
        gcp_emulator::world::DEFAULT_PROJECT_ID,
        gcp_emulator::world::DEFAULT_PROJECT_NUMBER,
    );
    let email = setup::SERVICE_ACCOUNT;
    let filter = toml_string(log_filter);
    format!(
        r#"
[server]
listen = "{listen}"

[broker]
address = "https://127.0.0.1:{broker}"
tls_server_name = "localhost"
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[project]
project_id = "{project}"
numeric_project_id = "{number}"

[[service_accounts]]
email = "{email}"
credential = "sa"
default = true

[log]
filter = {filter}
"#
    )
}

/// `value` as a TOML basic string.
fn toml_string(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}
