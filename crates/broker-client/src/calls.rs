//! One request to the broker, with retries: every RPC.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use broker_proto::tokenbroker::v1::token_broker_client::TokenBrokerClient;
use broker_proto::tokenbroker::v1::{
    ExchangeTokenRequest, GenerateIdTokenRequest, GetAccessTokenRequest,
    ImpersonateServiceAccountRequest, SignBlobRequest, SignJwtRequest,
};
use tonic::transport::Channel;
use zeroize::Zeroize as _;

use crate::error::ClientError;
use crate::requests::{
    BlobSigningRequest, ExchangeRequest, IdTokenRequest, ImpersonationRequest, JwtSigningRequest,
    TokenRequest,
};
use crate::retry::{CallOptions, with_retries};
use crate::tokens::{AccessToken, ExchangedToken, IdToken, SignedBlob, SignedJwt};

/// A protobuf request, the RPC that takes it, and the checked result of its response.
pub(crate) trait Rpc: Clone + fmt::Debug + Send + Sync + 'static {
    /// The RPC's name, for logs.
    const NAME: &'static str;
    /// What a response converts to.
    type Output: Clone + fmt::Debug + Send + Sync + 'static;
    /// One attempt: sends the request and converts the response.
    fn send(
        client: TokenBrokerClient<Channel>,
        request: tonic::Request<Self>,
    ) -> impl Future<Output = Result<Self::Output, ClientError>> + Send;
}

impl Rpc for GetAccessTokenRequest {
    const NAME: &'static str = "GetAccessToken";
    type Output = AccessToken;
    async fn send(
        mut client: TokenBrokerClient<Channel>,
        request: tonic::Request<Self>,
    ) -> Result<AccessToken, ClientError> {
        AccessToken::from_response(client.get_access_token(request).await?.into_inner())
    }
}

impl Rpc for ExchangeTokenRequest {
    const NAME: &'static str = "ExchangeToken";
    type Output = ExchangedToken;
    async fn send(
        mut client: TokenBrokerClient<Channel>,
        request: tonic::Request<Self>,
    ) -> Result<ExchangedToken, ClientError> {
        ExchangedToken::from_response(client.exchange_token(request).await?.into_inner())
    }
}

impl Rpc for ImpersonateServiceAccountRequest {
    const NAME: &'static str = "ImpersonateServiceAccount";
    type Output = AccessToken;
    async fn send(
        mut client: TokenBrokerClient<Channel>,
        request: tonic::Request<Self>,
    ) -> Result<AccessToken, ClientError> {
        AccessToken::from_impersonation_response(
            client
                .impersonate_service_account(request)
                .await?
                .into_inner(),
        )
    }
}

impl Rpc for GenerateIdTokenRequest {
    const NAME: &'static str = "GenerateIdToken";
    type Output = IdToken;
    async fn send(
        mut client: TokenBrokerClient<Channel>,
        request: tonic::Request<Self>,
    ) -> Result<IdToken, ClientError> {
        IdToken::from_response(client.generate_id_token(request).await?.into_inner())
    }
}

impl Rpc for SignJwtRequest {
    const NAME: &'static str = "SignJwt";
    type Output = SignedJwt;
    async fn send(
        mut client: TokenBrokerClient<Channel>,
        request: tonic::Request<Self>,
    ) -> Result<SignedJwt, ClientError> {
        SignedJwt::from_response(client.sign_jwt(request).await?.into_inner())
    }
}

impl Rpc for SignBlobRequest {
    const NAME: &'static str = "SignBlob";
    type Output = SignedBlob;
    async fn send(
        mut client: TokenBrokerClient<Channel>,
        request: tonic::Request<Self>,
    ) -> Result<SignedBlob, ClientError> {
        SignedBlob::from_response(client.sign_blob(request).await?.into_inner())
    }
}

/// One attempt of `request`, with `timeout` as its deadline.
pub(crate) async fn attempt<R: Rpc>(
    client: &TokenBrokerClient<Channel>,
    request: &R,
    timeout: Option<Duration>,
) -> Result<R::Output, ClientError> {
    let mut request = tonic::Request::new(request.clone());
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    R::send(client.clone(), request).await
}

/// `request`, retried per `options`.
pub(crate) async fn call<R: Rpc>(
    client: &TokenBrokerClient<Channel>,
    request: &R,
    options: &CallOptions,
) -> Result<R::Output, ClientError> {
    with_retries(R::NAME, options, |timeout| {
        attempt(client, request, timeout)
    })
    .await
}

/// One `GetAccessToken` request, retried per `options` (no caching: for a token used more than
/// once, see [`TokenProvider`](crate::TokenProvider)).
pub async fn get_access_token(
    client: &TokenBrokerClient<Channel>,
    request: &TokenRequest,
    options: &CallOptions,
) -> Result<AccessToken, ClientError> {
    call(client, &request.to_proto()?, options).await
}

/// A Google access token for a token the caller holds (`ExchangeToken`): workload or workforce
/// identity federation, or downscoping (see [`ExchangeRequest::downscoping`]); retried per
/// `options`. Never cached, by the broker or here.
pub async fn exchange_token(
    client: &TokenBrokerClient<Channel>,
    request: &ExchangeRequest,
    options: &CallOptions,
) -> Result<ExchangedToken, ClientError> {
    let proto = SubjectTokenGuard(request.to_proto());
    call(client, &proto.0, options).await
}

/// Zeroizes the subject token of its request when dropped, even if the call is cancelled. (The
/// copies that tonic encodes for each attempt are not.)
struct SubjectTokenGuard(ExchangeTokenRequest);

impl Drop for SubjectTokenGuard {
    fn drop(&mut self) {
        self.0.subject_token.zeroize();
    }
}

/// An access token of another service account (`ImpersonateServiceAccount`), retried per
/// `options`. The result's [`scopes`](AccessToken::scopes) is empty: the broker does not list
/// them.
pub async fn impersonate(
    client: &TokenBrokerClient<Channel>,
    request: &ImpersonationRequest,
    options: &CallOptions,
) -> Result<AccessToken, ClientError> {
    call(client, &request.to_proto()?, options).await
}

/// A Google-signed ID token (`GenerateIdToken`), retried per `options` (no caching: for a token
/// used more than once, see [`IdTokenProvider`](crate::IdTokenProvider)).
pub async fn generate_id_token(
    client: &TokenBrokerClient<Channel>,
    request: &IdTokenRequest,
    options: &CallOptions,
) -> Result<IdToken, ClientError> {
    call(client, &request.to_proto()?, options).await
}

/// JWT claims signed with a service account's Google-managed key (`SignJwt`), retried per
/// `options`.
pub async fn sign_jwt(
    client: &TokenBrokerClient<Channel>,
    request: &JwtSigningRequest,
    options: &CallOptions,
) -> Result<SignedJwt, ClientError> {
    call(client, &request.to_proto(), options).await
}

/// Bytes signed with a service account's Google-managed key (`SignBlob`), retried per
/// `options`.
pub async fn sign_blob(
    client: &TokenBrokerClient<Channel>,
    request: &BlobSigningRequest,
    options: &CallOptions,
) -> Result<SignedBlob, ClientError> {
    call(client, &request.to_proto(), options).await
}
