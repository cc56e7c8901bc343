//! `gcp-emulator`: serve Google's token endpoints on a local address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gcp_emulator::{Emulator, World};

/// A strict local emulator of Google's token endpoints (OAuth2, STS, IAM Credentials, the GCE
/// metadata server), for tests and local development.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; emulator.env tells which).
    #[arg(long, default_value = "127.0.0.1:8085")]
    listen: SocketAddr,
    /// Directory for what clients need: key files (keys/<account-id>.json), authorized users
    /// (users/<name>.json), federation material (federation/: issuer keys, the AWS and X.509
    /// credentials, federation.json) and emulator.env.
    #[arg(long)]
    data_dir: PathBuf,
    /// World definition (TOML); without it, the documented default world.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let world = match &args.config {
        Some(path) => match World::from_file(path) {
            Ok(world) => world,
            Err(error) => {
                tracing::error!(%error, "invalid world");
                return ExitCode::FAILURE;
            }
        },
        None => World::default_world(),
    };
    let emulator = match Emulator::builder()
        .world(world)
        .listen(args.listen)
        .data_dir(&args.data_dir)
        .start()
        .await
    {
        Ok(emulator) => emulator,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(url = emulator.url(), data_dir = %args.data_dir.display(), "ready");
    wait_for_shutdown_signal().await;
    tracing::info!("shutting down");
    emulator.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
