//! The `tokenbroker.v1.TokenBroker` service: one file per RPC, shared request plumbing here.

mod get_access_token;
mod validate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_authz::{CallerIdentity, Policy};
use broker_cache::TokenCache;
use broker_core::{CredentialName, TokenSource};
use broker_proto::tokenbroker::v1 as pb;
use tokio::sync::{Semaphore, watch};
use tonic::{Request, Response, Status};

use crate::status::RpcError;
use crate::tls::ConnectionInfo;

/// A configured credential: its token source and what it is.
#[derive(Debug, Clone)]
pub struct Credential {
    /// Where its tokens come from.
    pub source: Arc<dyn TokenSource>,
    /// Its kind, as in configuration (`service_account`, …).
    pub kind: &'static str,
    /// The Google host its tokens come from, for errors and audit.
    pub upstream: String,
    /// Whether its flow lets the caller choose the token lifetime.
    pub chooses_lifetime: bool,
    /// Whether it can do domain-wide delegation (`subject`).
    pub delegates_domain: bool,
}

impl Credential {
    /// FAILED_PRECONDITION when the credential's flow cannot do what the request asks.
    fn check_flows(
        &self,
        name: &CredentialName,
        subject: bool,
        lifetime: Option<Duration>,
    ) -> Result<(), RpcError> {
        let unsupported = |flow: &'static str, message: &str| RpcError::FlowUnsupported {
            credential: name.to_string(),
            kind: self.kind,
            flow,
            message: message.to_owned(),
        };
        if subject && !self.delegates_domain {
            return Err(unsupported(
                "domain_wide_delegation",
                "this kind of credential cannot act for a Workspace user",
            ));
        }
        if lifetime.is_some_and(|l| l > Duration::from_secs(3600)) && !self.chooses_lifetime {
            return Err(unsupported(
                "extended_lifetime",
                "Google gives this kind of credential 1-hour tokens; only impersonation can mint longer ones",
            ));
        }
        Ok(())
    }
}

/// The service implementation, shared by every connection.
#[derive(Debug, Clone)]
pub struct TokenBrokerService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    policy: watch::Receiver<Arc<Policy>>,
    credentials: HashMap<CredentialName, Credential>,
    cache: TokenCache,
    in_flight: Semaphore,
    rpc_timeout: Duration,
}

impl TokenBrokerService {
    /// A service over these credentials, policy and cache.
    pub fn new(
        policy: watch::Receiver<Arc<Policy>>,
        credentials: HashMap<CredentialName, Credential>,
        cache: TokenCache,
        max_concurrent_rpcs: usize,
        rpc_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                policy,
                credentials,
                cache,
                in_flight: Semaphore::new(max_concurrent_rpcs),
                rpc_timeout,
            }),
        }
    }

    /// The cache (for metrics).
    pub fn cache(&self) -> &TokenCache {
        &self.inner.cache
    }
}

/// What every RPC starts with: who is calling, and until when it may run.
struct CallContext {
    caller: Arc<CallerIdentity>,
    deadline: Instant,
    started: Instant,
}

impl CallContext {
    fn new<T>(request: &Request<T>, rpc_timeout: Duration) -> Result<Self, RpcError> {
        let caller = request
            .extensions()
            .get::<ConnectionInfo>()
            .and_then(|info| info.caller.clone())
            .ok_or(RpcError::NoClientIdentity)?;
        let started = Instant::now();
        let timeout = grpc_timeout(request).map_or(rpc_timeout, |t| t.min(rpc_timeout));
        Ok(Self {
            caller,
            deadline: started + timeout,
            started,
        })
    }
}

/// The caller's deadline from the `grpc-timeout` header.
fn grpc_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[tonic::async_trait]
impl pb::token_broker_server::TokenBroker for TokenBrokerService {
    async fn get_access_token(
        &self,
        request: Request<pb::GetAccessTokenRequest>,
    ) -> Result<Response<pb::GetAccessTokenResponse>, Status> {
        let _permit = self
            .inner
            .in_flight
            .try_acquire()
            .map_err(|_| RpcError::Overloaded)?;
        let context = CallContext::new(&request, self.inner.rpc_timeout)?;
        get_access_token::handle(&self.inner, &context, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn exchange_token(
        &self,
        _request: Request<pb::ExchangeTokenRequest>,
    ) -> Result<Response<pb::ExchangeTokenResponse>, Status> {
        Err(RpcError::Unimplemented("ExchangeToken").into())
    }

    async fn impersonate_service_account(
        &self,
        _request: Request<pb::ImpersonateServiceAccountRequest>,
    ) -> Result<Response<pb::ImpersonateServiceAccountResponse>, Status> {
        Err(RpcError::Unimplemented("ImpersonateServiceAccount").into())
    }

    async fn generate_id_token(
        &self,
        _request: Request<pb::GenerateIdTokenRequest>,
    ) -> Result<Response<pb::GenerateIdTokenResponse>, Status> {
        Err(RpcError::Unimplemented("GenerateIdToken").into())
    }

    async fn sign_jwt(
        &self,
        _request: Request<pb::SignJwtRequest>,
    ) -> Result<Response<pb::SignJwtResponse>, Status> {
        Err(RpcError::Unimplemented("SignJwt").into())
    }

    async fn sign_blob(
        &self,
        _request: Request<pb::SignBlobRequest>,
    ) -> Result<Response<pb::SignBlobResponse>, Status> {
        Err(RpcError::Unimplemented("SignBlob").into())
    }
}
