//! The broker side: an mTLS client made from the pod's certificate files and rebuilt when they
//! change, and the two calls the sidecar makes (`GetAccessToken`, `GenerateIdToken`), each one
//! attempt bounded in time, their failures classified for the HTTP answer.
//!
//! Rotation: the CA, certificate and key files are read every `reload_interval`; when their
//! contents change, a new channel is built from them and every later call uses it, so new
//! connections present the new certificate (calls in flight finish on the old one). Files that
//! cannot be used are logged and the current channel stays.

use std::path::PathBuf;
use std::time::Duration;

use broker_client::{
    CallOptions, Channel, ClientError, Code, ConnectOptions, IdTokenRequest, RetryPolicy,
    TokenBrokerClient, TokenRequest,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::accounts::Accounts;
use crate::cache::{Fetch, FetchError, FetchedToken, TokenKey};
use crate::config::BrokerSettings;

/// The largest `min_remaining_validity` the broker accepts.
const MAX_MIN_REMAINING_VALIDITY: Duration = Duration::from_secs(30 * 60);

/// How much more than `refresh_ahead` a token from the broker is asked to have left, so that
/// it is not due for refresh as soon as it arrives.
const VALIDITY_SLACK: Duration = Duration::from_secs(60);

/// Fetches tokens from the broker.
#[derive(Debug)]
pub(crate) struct Broker {
    client: watch::Receiver<TokenBrokerClient<Channel>>,
    accounts: Accounts,
    call: CallOptions,
    /// What every request asks the broker for as `min_remaining_validity`.
    min_remaining_validity: Duration,
    /// The bound on one call, connecting included.
    deadline: Duration,
}

impl Broker {
    /// Reads the TLS files, builds the channel (it connects on the first call) and starts
    /// watching the files. Fails if the files are unusable or the address is invalid.
    pub(crate) fn start(
        settings: &BrokerSettings,
        accounts: Accounts,
        refresh_ahead: Duration,
    ) -> Result<(Self, JoinHandle<()>), ClientError> {
        let paths = tls_paths(settings);
        let digest = digest(&paths).ok();
        let client = connect(settings)?;
        let (sender, receiver) = watch::channel(client);
        let watcher = tokio::spawn(watch_files(settings.clone(), paths, digest, sender));
        let mut call = CallOptions::default();
        call.call_timeout = Some(settings.call_timeout);
        call.retry = RetryPolicy::never();
        let min_remaining_validity =
            whole_seconds(refresh_ahead + VALIDITY_SLACK).min(MAX_MIN_REMAINING_VALIDITY);
        let broker = Self {
            client: receiver,
            accounts,
            call,
            min_remaining_validity,
            deadline: settings.connect_timeout + settings.call_timeout,
        };
        Ok((broker, watcher))
    }

    async fn call(&self, key: &TokenKey) -> Result<FetchedToken, ClientError> {
        let client = self.client.borrow().clone();
        let credential = self
            .accounts
            .get(key.account())
            .and_then(|account| account.credential.clone());
        match key {
            TokenKey::Access { scopes, .. } => {
                let request = TokenRequest {
                    scopes: scopes.iter().map(str::to_owned).collect(),
                    credential,
                    min_remaining_validity: Some(self.min_remaining_validity),
                    ..TokenRequest::default()
                };
                let token = broker_client::get_access_token(&client, &request, &self.call).await?;
                self.check_principal(key, &token.principal);
                Ok(FetchedToken {
                    secret: token.token,
                    expire_time: token.expire_time,
                })
            }
            TokenKey::Identity { audience, .. } => {
                let request = IdTokenRequest {
                    audience: audience.clone(),
                    include_email: true,
                    credential,
                    min_remaining_validity: Some(self.min_remaining_validity),
                    ..IdTokenRequest::default()
                };
                let token = broker_client::generate_id_token(&client, &request, &self.call).await?;
                self.check_principal(key, &token.principal);
                Ok(FetchedToken {
                    secret: token.token,
                    expire_time: token.expire_time,
                })
            }
        }
    }

    /// Warns when the broker's token acts as someone else than the configured email: clients
    /// would be told one identity and get another.
    fn check_principal(&self, key: &TokenKey, principal: &str) {
        if let Some(account) = self.accounts.get(key.account())
            && !principal.is_empty()
            && !principal.eq_ignore_ascii_case(&account.email)
        {
            tracing::warn!(
                account = %account.email,
                %principal,
                "the broker's token acts as another principal than the account's configured email; check the account's credential"
            );
        }
    }
}

impl Fetch for Broker {
    async fn fetch(&self, key: &TokenKey) -> Result<FetchedToken, FetchError> {
        let email = self
            .accounts
            .get(key.account())
            .map(|account| account.email.as_str())
            .unwrap_or_default();
        let result = match tokio::time::timeout(self.deadline, self.call(key)).await {
            Ok(result) => result.map_err(classify),
            Err(_) => Err(FetchError::Unavailable {
                message: format!(
                    "no answer within {}",
                    humantime::format_duration(self.deadline)
                ),
                retry_after: None,
            }),
        };
        let (kind, wanted) = describe(key);
        match &result {
            Ok(token) => tracing::info!(
                account = email,
                kind,
                wanted,
                fingerprint = token.secret.fingerprint(),
                expires_in = token.expires_in(std::time::SystemTime::now()),
                "token from the broker"
            ),
            Err(error) => {
                tracing::warn!(account = email, kind, wanted, %error, "no token from the broker")
            }
        }
        result
    }
}

/// A key's kind and what it asks for, for logs.
fn describe(key: &TokenKey) -> (&'static str, String) {
    match key {
        TokenKey::Access { scopes, .. } => ("access", scopes.joined()),
        TokenKey::Identity { audience, .. } => ("identity", audience.clone()),
    }
}

/// What a failed call means for the local client.
fn classify(error: ClientError) -> FetchError {
    let message = error.to_string();
    match &error {
        ClientError::Status(status) => match status.code {
            Code::PermissionDenied => FetchError::Denied(message),
            Code::InvalidArgument | Code::OutOfRange => FetchError::Invalid(message),
            // UNAUTHENTICATED: the broker refused this pod's certificate (expired, rotated
            // away, not trusted yet); not the local client's fault.
            Code::Unavailable
            | Code::ResourceExhausted
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled
            | Code::Unauthenticated => FetchError::Unavailable {
                message,
                retry_after: status.retry_after,
            },
            _ => FetchError::Failed(message),
        },
        ClientError::Connect { .. } | ClientError::Tls { .. } => FetchError::Unavailable {
            message,
            retry_after: None,
        },
        _ => FetchError::Failed(message),
    }
}

/// A lazy channel to the broker with the files' identity.
pub(crate) fn connect(
    settings: &BrokerSettings,
) -> Result<TokenBrokerClient<Channel>, ClientError> {
    let mut options = ConnectOptions::default();
    options.connect_timeout = settings.connect_timeout;
    options.timeout = Some(settings.call_timeout);
    options.tls_server_name = settings.tls_server_name.clone();
    broker_client::connect_lazy(&settings.address, &settings.tls_files(), &options)
}

fn tls_paths(settings: &BrokerSettings) -> Vec<PathBuf> {
    vec![
        settings.ca.clone(),
        settings.cert.clone(),
        settings.key.clone(),
    ]
}

/// A SHA-256 over the contents of `paths` (lengths included), or the first read error.
fn digest(paths: &[PathBuf]) -> Result<Vec<u8>, (PathBuf, std::io::Error)> {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for path in paths {
        let bytes = std::fs::read(path).map_err(|error| (path.clone(), error))?;
        context.update(&(bytes.len() as u64).to_le_bytes());
        context.update(&bytes);
    }
    Ok(context.finish().as_ref().to_vec())
}

/// Rebuilds the channel whenever the files' contents change, until every receiver is gone.
async fn watch_files(
    settings: BrokerSettings,
    paths: Vec<PathBuf>,
    mut current: Option<Vec<u8>>,
    sender: watch::Sender<TokenBrokerClient<Channel>>,
) {
    let mut ticker = tokio::time::interval(settings.reload_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if sender.is_closed() {
            return;
        }
        let latest = match digest(&paths) {
            Ok(latest) => latest,
            Err((path, error)) => {
                if current.is_some() {
                    tracing::error!(path = %path.display(), %error, "TLS file unreadable; keeping the current broker connection settings");
                }
                current = None;
                continue;
            }
        };
        if current.as_ref() == Some(&latest) {
            continue;
        }
        current = Some(latest);
        match connect(&settings) {
            Ok(client) => {
                sender.send_replace(client);
                let certificate = std::fs::read(&settings.cert)
                    .map(|pem| broker_core::fingerprint(&pem))
                    .unwrap_or_default();
                tracing::info!(
                    cert = %settings.cert.display(),
                    certificate,
                    "TLS files changed: new broker connections use them"
                );
            }
            Err(error) => {
                tracing::error!(%error, "changed TLS files rejected; keeping the current ones");
            }
        }
    }
}

/// `duration` rounded up to whole seconds (the broker takes no fractions).
fn whole_seconds(duration: Duration) -> Duration {
    Duration::from_secs(broker_client::whole_seconds_ceil(duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code) -> ClientError {
        ClientError::from(tonic::Status::new(code, "message"))
    }

    #[test]
    fn failures_map_to_what_the_local_client_can_do() {
        assert!(matches!(
            classify(status(Code::PermissionDenied)),
            FetchError::Denied(_)
        ));
        assert!(matches!(
            classify(status(Code::InvalidArgument)),
            FetchError::Invalid(_)
        ));
        for code in [
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
            Code::Unauthenticated,
        ] {
            assert!(
                matches!(classify(status(code)), FetchError::Unavailable { .. }),
                "{code:?}"
            );
        }
        for code in [Code::NotFound, Code::FailedPrecondition, Code::Internal] {
            assert!(
                matches!(classify(status(code)), FetchError::Failed(_)),
                "{code:?}"
            );
        }
        assert!(matches!(
            classify(ClientError::Connect {
                endpoint: "https://127.0.0.1:1".to_owned(),
                reason: "connection refused".to_owned(),
            }),
            FetchError::Unavailable {
                retry_after: None,
                ..
            }
        ));
        assert_eq!(
            whole_seconds(Duration::from_millis(300_001)),
            Duration::from_secs(301)
        );
    }
}
