//! `token-broker`: serve, check a configuration, or run the one-command dev environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use token_broker::settings::{LogFormat, Settings};
use token_broker::{server, tls};

/// Short-lived Google Cloud tokens for workloads that authenticate with mutual TLS.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    Serve {
        /// The configuration file (TOML); `BROKER__SECTION__KEY` variables override it.
        #[arg(long, env = "BROKER_CONFIG")]
        config: PathBuf,
        /// Override `server.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Check a configuration, its policy, TLS files and credentials; print every problem.
    CheckConfig {
        /// The configuration file.
        config: PathBuf,
    },
    /// Run everything on loopback: the Google emulator, a dev PKI, a policy and the broker.
    #[cfg(feature = "dev")]
    Dev {
        /// Where to write certificates, keys, configuration and the `env` file.
        #[arg(long, default_value = ".token-broker-dev")]
        dir: PathBuf,
        /// The broker's address.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
    },
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    // Colours only for a person at a terminal: escape codes in collected logs are noise, and
    // cost about a third of formatting an audit event.
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

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve { config, listen } => {
            let overrides: Vec<(&str, String)> = listen
                .map(|l| ("server.listen", l.to_string()))
                .into_iter()
                .collect();
            let settings = match Settings::load(&config, None, &overrides) {
                Ok(settings) => settings,
                Err(error) => {
                    eprintln!("token-broker: {}: {error}", config.display());
                    return ExitCode::FAILURE;
                }
            };
            init_logging(settings.log.format, &settings.log.filter);
            let broker = match server::start(settings).await {
                Ok(broker) => broker,
                Err(error) => {
                    tracing::error!(%error, "cannot start");
                    return ExitCode::FAILURE;
                }
            };
            server::shutdown_signal().await;
            broker.shutdown().await;
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => check_config(&config).await,
        #[cfg(feature = "dev")]
        Command::Dev { dir, listen } => {
            init_logging(LogFormat::Text, "info");
            match token_broker::dev::run(token_broker::dev::DevOptions { dir, listen }).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "dev mode failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[allow(clippy::print_stdout)]
async fn check_config(path: &std::path::Path) -> ExitCode {
    let settings = match Settings::load(path, None, &[]) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let mut problems = Vec::new();
    if let Err(error) = tls::load(&settings.tls) {
        problems.push(format!("tls: {error}"));
    }
    let loaded = match broker_backends::HttpClient::new(settings.http.clone()) {
        Ok(http) => {
            let clock: Arc<dyn broker_core::Clock> = Arc::new(broker_core::SystemClock);
            let cache = broker_cache::TokenCache::new(settings.cache.config(), Arc::clone(&clock));
            server::load_credentials(
                &settings,
                &cache,
                &http,
                clock,
                &broker_backends::Env::process(),
            )
            .await
        }
        Err(error) => Err(server::StartError::Http(error.to_string())),
    };
    let credentials: Vec<broker_core::CredentialName> = match loaded {
        Ok(credentials) => credentials.keys().cloned().collect(),
        Err(error) => {
            problems.push(error.to_string());
            settings
                .credentials
                .iter()
                .filter_map(|c| broker_core::CredentialName::new(c.name()).ok())
                .collect()
        }
    };
    let grants = match server::load_policy(&settings.policy.file, &credentials) {
        Ok(policy) => policy.grants().len(),
        Err(error) => {
            problems.push(format!("policy: {error}"));
            0
        }
    };
    if problems.is_empty() {
        println!(
            "{}: ok ({} credentials, {grants} grants)",
            path.display(),
            settings.credentials.len()
        );
        ExitCode::SUCCESS
    } else {
        for problem in &problems {
            eprintln!("{}: {problem}", path.display());
        }
        ExitCode::FAILURE
    }
}
