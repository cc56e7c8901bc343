//! `metadata-sidecar`: serve the GCE metadata protocol from the token broker, or check a
//! configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use metadata_sidecar::{LogFormat, Settings, Sidecar};

/// The GCE metadata-server protocol on loopback, answered from the token broker over mTLS.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The configuration file (TOML); `SIDECAR__SECTION__KEY` variables override it.
    #[arg(long, env = "SIDECAR_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Override `server.listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the configuration and its TLS files; print every problem.
    CheckConfig,
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(config: &Path, listen: Option<SocketAddr>) -> Result<Settings, ExitCode> {
    let overrides: Vec<(&str, String)> = listen
        .map(|listen| ("server.listen", listen.to_string()))
        .into_iter()
        .collect();
    Settings::load(config, None, &overrides).map_err(|error| {
        eprintln!("metadata-sidecar: {}: {error}", config.display());
        ExitCode::FAILURE
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(config) = cli.config else {
        eprintln!("metadata-sidecar: no configuration: pass --config FILE or set SIDECAR_CONFIG");
        return ExitCode::FAILURE;
    };
    let settings = match load(&config, cli.listen) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    match cli.command {
        Some(Command::CheckConfig) => check_config(&config, &settings),
        None => serve(settings).await,
    }
}

async fn serve(settings: Settings) -> ExitCode {
    init_logging(settings.log.format, &settings.log.filter);
    let sidecar = match Sidecar::start(settings).await {
        Ok(sidecar) => sidecar,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    shutdown_signal().await;
    sidecar.shutdown().await;
    ExitCode::SUCCESS
}

/// The settings are valid (`load` checked); the TLS files and the broker address are read
/// as `start` would.
#[allow(clippy::print_stdout)]
fn check_config(config: &Path, settings: &Settings) -> ExitCode {
    let files = settings.broker.tls_files();
    match broker_client::endpoint(
        &settings.broker.address,
        &files,
        &broker_client::ConnectOptions::default(),
    ) {
        Ok(_) => {
            println!(
                "{}: OK ({} service account(s); broker {}; listening on {})",
                config.display(),
                settings.service_accounts.len(),
                settings.broker.address,
                settings.server.listen
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{}: broker: {error}", config.display());
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
