//! The `tokenbroker.v1.TokenBroker` service: one file per RPC, shared request plumbing here.
//!
//! Every RPC checks, in this order, answering with the first failure (the order the proto
//! documents): the caller's certificate (`UNAUTHENTICATED`: no identity, expired, or no longer
//! trusted), the request's fields (`INVALID_ARGUMENT`), the policy (`PERMISSION_DENIED`); then,
//! only for a caller the policy allows, the credential (`NOT_FOUND`, `FAILED_PRECONDITION`),
//! the caller's limits (`RESOURCE_EXHAUSTED`), and finally the cache and Google. So a caller
//! without a grant learns nothing about the broker's credentials. Calls are bounded by the
//! caller's deadline or the broker's `rpc_timeout`, and end with `DEADLINE_EXCEEDED` (the
//! caller's) or `UNAVAILABLE` with `RetryInfo` (the broker's), never `CANCELLED`.

mod exchange_token;
mod generate_id_token;
mod get_access_token;
mod impersonate_service_account;
mod impersonation;
mod sign_blob;
mod sign_jwt;
mod validate;

use std::collections::HashMap;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use broker_authz::{CallerIdentity, Decision, Denial, Policy, Rpc};
use broker_backends::{
    ExternalAccountSource, GoogleEndpoints, HttpClient, IamCredentials, upstream_host,
};
use broker_cache::{CacheError, TokenCache};
use broker_core::{Capabilities, Clock, CredentialName, SourceError, TokenKey, TokenSource};
use broker_proto::tokenbroker::v1 as pb;
use tokio::sync::{Semaphore, SemaphorePermit, watch};
use tonic::{Request, Response, Status};

use self::impersonation::Impersonation;
use crate::limits::{CallerLimits, Limited};
use crate::status::{DeadlineSource, RpcError};
use crate::tls::ConnectionInfo;

/// A configured credential: its token source, and the same source seen through the cache.
#[derive(Debug, Clone)]
pub struct Credential {
    /// Where its tokens come from (it reports its own kind and capabilities).
    pub source: Arc<dyn TokenSource>,
    /// The same source with its access tokens served through the cache: the base of
    /// impersonation and of IAM signing calls, so that these share one cached token.
    pub cached: Arc<dyn TokenSource>,
    /// The source's principal, shared by every cache key of this credential.
    pub principal: Arc<str>,
    /// The `external_account` source itself, for ExchangeToken with this credential.
    pub federation: Option<Arc<ExternalAccountSource>>,
    /// The Google host its tokens come from, for errors and audit.
    pub upstream: String,
}

/// What a request asks a credential's flow to do.
#[derive(Debug, Clone, Copy, Default)]
struct Asks {
    subject: bool,
    lifetime: Option<Duration>,
    boundary: bool,
    id_token: bool,
}

impl Credential {
    /// FAILED_PRECONDITION when the credential's flow cannot do what the request asks; the
    /// source says what it can do.
    fn check_flows(&self, name: &CredentialName, asks: Asks) -> Result<(), RpcError> {
        let can = self.source.capabilities();
        let unsupported = |flow: &'static str, message: &str| RpcError::FlowUnsupported {
            credential: name.to_string(),
            kind: self.source.kind(),
            flow,
            message: message.to_owned(),
        };
        if asks.subject && !can.domain_wide_delegation {
            return Err(unsupported(
                "domain_wide_delegation",
                "this kind of credential cannot act for a Workspace user",
            ));
        }
        if asks.lifetime.is_some_and(|l| l > Duration::from_secs(3600))
            && !chooses_lifetime(can, asks.subject)
        {
            return Err(unsupported(
                "extended_lifetime",
                if asks.subject {
                    "domain-wide delegation tokens come from the JWT-bearer grant, which gives 1-hour tokens"
                } else {
                    "Google gives this kind of credential 1-hour tokens; only impersonation can mint longer ones"
                },
            ));
        }
        if asks.boundary && !can.downscoping {
            return Err(unsupported(
                "access_boundary",
                "Google does not downscope this kind of credential's tokens",
            ));
        }
        if asks.id_token && !can.id_tokens {
            return Err(unsupported(
                "id_token",
                "Google mints ID tokens for arbitrary audiences only for service accounts; name a target_service_account to impersonate",
            ));
        }
        Ok(())
    }
}

/// Whether the flow that serves a request can mint a token of a chosen lifetime: domain-wide
/// delegation is always the JWT-bearer grant (an hour), even through impersonation.
fn chooses_lifetime(can: Capabilities, subject: bool) -> bool {
    can.chooses_lifetime && !subject
}

/// What the service is made of.
#[derive(Debug)]
pub struct ServiceParts {
    /// The policy, kept current by its file watcher.
    pub policy: watch::Receiver<Arc<Policy>>,
    /// The configured credentials.
    pub credentials: HashMap<CredentialName, Credential>,
    /// The token cache.
    pub cache: TokenCache,
    /// The per-caller limits.
    pub limits: CallerLimits,
    /// The clock of audit events, certificate expiry and limits.
    pub clock: Arc<dyn Clock>,
    /// RPCs served at once; more are refused with UNAVAILABLE (OVERLOADED).
    pub max_concurrent_rpcs: usize,
    /// The longest any RPC may take.
    pub rpc_timeout: Duration,
    /// Google's endpoints (IAM Credentials for impersonation and signing).
    pub google: GoogleEndpoints,
    /// The HTTP client of every call to Google.
    pub http: HttpClient,
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
    limits: CallerLimits,
    clock: Arc<dyn Clock>,
    in_flight: Semaphore,
    rpc_timeout: Duration,
    /// IAM Credentials, for SignJwt and SignBlob.
    iam: IamCredentials,
    /// Impersonation by the RPCs that name a target service account.
    impersonation: Arc<Impersonation>,
    /// The IAM Credentials host, for errors and audit.
    iam_upstream: String,
    /// The HTTP client of ExchangeToken's calls to STS.
    http: HttpClient,
    /// The Security Token Service of plain exchanges and downscoping.
    sts_url: String,
    /// Its host, for errors and audit.
    sts_upstream: String,
}

impl TokenBrokerService {
    /// A service made of `parts`.
    ///
    /// # Errors
    ///
    /// The IAM Credentials endpoint URL is unusable.
    pub fn new(parts: ServiceParts) -> Result<Self, broker_backends::BackendError> {
        let iam = IamCredentials::new(&parts.google, parts.http.clone())?;
        let iam_upstream = upstream_host(&parts.google.iam_credentials_url);
        let sts_url = parts.google.sts_url.clone();
        let sts_upstream = upstream_host(&sts_url);
        Ok(Self {
            inner: Arc::new(Inner {
                policy: parts.policy,
                credentials: parts.credentials,
                cache: parts.cache,
                limits: parts.limits,
                in_flight: Semaphore::new(parts.max_concurrent_rpcs),
                rpc_timeout: parts.rpc_timeout,
                iam,
                impersonation: Arc::new(Impersonation::new(
                    parts.google,
                    parts.http.clone(),
                    Arc::clone(&parts.clock),
                )),
                iam_upstream,
                http: parts.http,
                sts_url,
                sts_upstream,
                clock: parts.clock,
            }),
        })
    }

    /// The cache (for metrics).
    pub fn cache(&self) -> &TokenCache {
        &self.inner.cache
    }
}

/// The least and the most of a call's time kept to send its answer.
const ANSWER_MARGIN_MIN: Duration = Duration::from_millis(10);
const ANSWER_MARGIN_MAX: Duration = Duration::from_millis(250);

/// What every RPC starts with: who is calling, and until when it may run.
struct CallContext {
    rpc: Rpc,
    caller: Arc<CallerIdentity>,
    /// When the call must be answered: its deadline, less a tenth (10 ms to 250 ms) to send
    /// the answer back.
    deadline: Instant,
    /// Whose deadline that is.
    deadline_source: DeadlineSource,
    /// The deadline of a fetch this call starts, which other callers may join: the broker's
    /// maximum for a call, whatever this caller's own deadline.
    fetch_deadline: Instant,
    /// How long the call had.
    timeout: Duration,
    started: Instant,
    /// The time the call started, by the service's clock.
    now: SystemTime,
}

impl CallContext {
    fn new<T>(
        rpc: Rpc,
        request: &Request<T>,
        rpc_timeout: Duration,
        now: SystemTime,
    ) -> Result<Self, RpcError> {
        let info = request
            .extensions()
            .get::<ConnectionInfo>()
            .ok_or(RpcError::NoCertificate)?;
        let caller = info.peer.caller(now)?;
        let started = Instant::now();
        let (timeout, deadline_source) = match grpc_timeout(request) {
            Some(timeout) if timeout <= rpc_timeout => (timeout, DeadlineSource::Caller),
            _ => (rpc_timeout, DeadlineSource::Broker),
        };
        // Answer a little before the deadline, so that the answer (with its details) reaches
        // the caller before the caller's own timer gives up on the call.
        let margin = (timeout / 10).clamp(ANSWER_MARGIN_MIN, ANSWER_MARGIN_MAX);
        Ok(Self {
            rpc,
            caller,
            deadline: started + timeout.saturating_sub(margin),
            deadline_source,
            fetch_deadline: started + rpc_timeout,
            timeout,
            started,
            now,
        })
    }

    /// Runs `work` (a wait on Google, through the cache) until the call's deadline. Work that
    /// is done at once (a cache hit) needs no timer.
    async fn bounded<T>(
        &self,
        upstream: &str,
        work: impl Future<Output = Result<T, RpcError>>,
    ) -> Result<T, RpcError> {
        let mut work = std::pin::pin!(work);
        let ready = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
        if let Poll::Ready(result) = ready {
            return result;
        }
        tokio::time::timeout_at(self.deadline.into(), work)
            .await
            .unwrap_or_else(|_| {
                Err(RpcError::DeadlineExceeded {
                    deadline: self.deadline_source,
                    upstream: upstream.to_owned(),
                    waited: self.timeout,
                })
            })
    }

    /// Microseconds since the call started, for audit events.
    fn latency_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The audit event of a call that failed after it started.
    fn audit_error(&self, error: &RpcError) {
        let negative = matches!(error, RpcError::Upstream { error, .. } if error.is_negative());
        tracing::info!(
            target: "audit",
            rpc = self.rpc.name(),
            caller = %self.caller,
            outcome = "error",
            reason = error.reason().unwrap_or("INTERNAL"),
            negative_cache = negative,
            error = %error,
            latency_us = self.latency_us(),
        );
    }

    /// The error of a failed fetch (through the cache or straight from a source) made with
    /// the credential `name`, of `kind`, waiting on `upstream`.
    fn upstream_error(
        &self,
        error: CacheError,
        name: &CredentialName,
        kind: &'static str,
        upstream: &str,
    ) -> RpcError {
        RpcError::Upstream {
            error,
            credential: name.to_string(),
            kind,
            upstream: upstream.to_owned(),
            deadline: self.deadline_source,
            timeout: self.timeout,
        }
    }

    /// [`CallContext::upstream_error`] of a source's own error (a call that is not cached).
    fn source_error(
        &self,
        error: SourceError,
        name: &CredentialName,
        kind: &'static str,
        upstream: &str,
    ) -> RpcError {
        self.upstream_error(CacheError::Source(Arc::new(error)), name, kind, upstream)
    }
}

/// Runs a call's `work`, and writes the audit event of its failure (a success writes its own,
/// with what it served).
async fn audited<T>(
    context: &CallContext,
    work: impl Future<Output = Result<T, RpcError>>,
) -> Result<T, RpcError> {
    let result = work.await;
    if let Err(error) = &result {
        context.audit_error(error);
    }
    result
}

/// The caller's deadline from the `grpc-timeout` header.
fn grpc_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
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

/// PERMISSION_DENIED for a policy denial.
fn denied(denial: Denial) -> RpcError {
    RpcError::PolicyDenied {
        caller: denial.caller.clone(),
        grant: denial.grant.clone(),
        rule: denial.rule_name(),
        value: denial.value().map(str::to_owned),
        message: denial.to_string(),
    }
}

/// RESOURCE_EXHAUSTED for a caller over its limits.
fn limited(caller: &CallerIdentity, grant: &str, limited: Limited) -> RpcError {
    match limited {
        Limited::Rate { limit, retry_after } => RpcError::RateLimited {
            limit: "caller",
            retry_after,
            message: format!(
                "caller {caller} exceeded its rate limit under grant {grant} ({limit}); retry after {} ms",
                retry_after.as_millis()
            ),
        },
        Limited::DistinctKeys {
            max,
            window,
            retry_after,
        } => RpcError::RateLimited {
            limit: "caller_keys",
            retry_after,
            message: format!(
                "caller {caller} asked for {max} different tokens (credential, scopes, subject, boundary, lifetime) under grant {grant} within {}, the most it may; reuse one of them, or retry a new one after {} s",
                humantime::format_duration(window),
                retry_after.as_secs()
            ),
        },
    }
}

impl Inner {
    /// The configured credential `name` the policy decided on (NOT_FOUND if it is not
    /// configured: told only to callers whose grant names it).
    fn credential(&self, name: &CredentialName) -> Result<&Credential, RpcError> {
        self.credentials
            .get(name)
            .ok_or_else(|| RpcError::CredentialNotFound(name.to_string()))
    }

    /// Counts the call against the caller's limits under the grant that allowed it (and, for
    /// a cached RPC, the distinct tokens it asks for): RESOURCE_EXHAUSTED when over.
    fn admit(
        &self,
        context: &CallContext,
        decision: &Decision,
        key: Option<&TokenKey>,
    ) -> Result<(), RpcError> {
        self.limits
            .admit(
                &context.caller,
                &decision.grant,
                decision.rate_limit,
                decision.distinct_keys,
                key,
                context.now,
            )
            .map_err(|l| limited(&context.caller, &decision.grant, l))
    }

    /// Starts a call of `rpc`: the caller's certificate first (expired or no longer trusted:
    /// UNAUTHENTICATED), then a slot among the RPCs in flight (or OVERLOADED). A refusal here
    /// is audited like any other.
    fn begin<T>(
        &self,
        rpc: Rpc,
        request: &Request<T>,
    ) -> Result<(CallContext, SemaphorePermit<'_>), Status> {
        let started = CallContext::new(rpc, request, self.rpc_timeout, self.clock.now()).and_then(
            |context| {
                let permit = self
                    .in_flight
                    .try_acquire()
                    .map_err(|_| RpcError::Overloaded)?;
                Ok((context, permit))
            },
        );
        started.map_err(|error| self.refuse(rpc, request, error))
    }

    /// The audit event and status of a call refused before it could be served.
    fn refuse<T>(&self, rpc: Rpc, request: &Request<T>, error: RpcError) -> Status {
        let info = request.extensions().get::<ConnectionInfo>();
        let caller = info
            .and_then(|info| info.peer.identity().ok())
            .map_or_else(|| "-".to_owned(), ToString::to_string);
        tracing::info!(
            target: "audit",
            rpc = rpc.name(),
            caller = %caller,
            peer = %info.map_or_else(|| "-".to_owned(), |info| info.remote_addr.to_string()),
            outcome = "error",
            reason = error.reason().unwrap_or("INTERNAL"),
            error = %error,
        );
        error.into()
    }
}

#[tonic::async_trait]
impl pb::token_broker_server::TokenBroker for TokenBrokerService {
    async fn get_access_token(
        &self,
        request: Request<pb::GetAccessTokenRequest>,
    ) -> Result<Response<pb::GetAccessTokenResponse>, Status> {
        let inner = &self.inner;
        let (context, _permit) = inner.begin(Rpc::GetAccessToken, &request)?;
        audited(
            &context,
            get_access_token::serve(inner, &context, request.into_inner()),
        )
        .await
        .map(Response::new)
        .map_err(Status::from)
    }

    async fn exchange_token(
        &self,
        request: Request<pb::ExchangeTokenRequest>,
    ) -> Result<Response<pb::ExchangeTokenResponse>, Status> {
        let inner = &self.inner;
        let (context, _permit) = inner.begin(Rpc::ExchangeToken, &request)?;
        let mut request = request.into_inner();
        let presented = exchange_token::Presented::take(&mut request);
        let result = exchange_token::serve(inner, &context, request, &presented).await;
        if let Err(error) = &result {
            presented.audit_error(&context, error);
        }
        result.map(Response::new).map_err(Status::from)
    }

    async fn impersonate_service_account(
        &self,
        request: Request<pb::ImpersonateServiceAccountRequest>,
    ) -> Result<Response<pb::ImpersonateServiceAccountResponse>, Status> {
        let inner = &self.inner;
        let (context, _permit) = inner.begin(Rpc::ImpersonateServiceAccount, &request)?;
        audited(
            &context,
            impersonate_service_account::serve(inner, &context, request.into_inner()),
        )
        .await
        .map(Response::new)
        .map_err(Status::from)
    }

    async fn generate_id_token(
        &self,
        request: Request<pb::GenerateIdTokenRequest>,
    ) -> Result<Response<pb::GenerateIdTokenResponse>, Status> {
        let inner = &self.inner;
        let (context, _permit) = inner.begin(Rpc::GenerateIdToken, &request)?;
        audited(
            &context,
            generate_id_token::serve(inner, &context, request.into_inner()),
        )
        .await
        .map(Response::new)
        .map_err(Status::from)
    }

    async fn sign_jwt(
        &self,
        request: Request<pb::SignJwtRequest>,
    ) -> Result<Response<pb::SignJwtResponse>, Status> {
        let inner = &self.inner;
        let (context, _permit) = inner.begin(Rpc::SignJwt, &request)?;
        audited(
            &context,
            sign_jwt::serve(inner, &context, request.into_inner()),
        )
        .await
        .map(Response::new)
        .map_err(Status::from)
    }

    async fn sign_blob(
        &self,
        request: Request<pb::SignBlobRequest>,
    ) -> Result<Response<pb::SignBlobResponse>, Status> {
        let inner = &self.inner;
        let (context, _permit) = inner.begin(Rpc::SignBlob, &request)?;
        audited(
            &context,
            sign_blob::serve(inner, &context, request.into_inner()),
        )
        .await
        .map(Response::new)
        .map_err(Status::from)
    }
}
