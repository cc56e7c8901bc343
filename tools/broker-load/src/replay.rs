//! A bare `TokenBroker` service that answers `GenerateIdToken` with one fixed response (the
//! broker's own answer, recorded once): the transport's ceiling for a response of an ID
//! token's size, which is about ten times an access token's. Every other RPC is UNIMPLEMENTED.

use std::sync::{Arc, OnceLock};

use broker_proto::tokenbroker::v1 as pb;
use tonic::{Request, Response, Status};

/// The recorded response, shared with the load tool that sets it.
pub(crate) type Recorded = Arc<OnceLock<pb::GenerateIdTokenResponse>>;

/// The service.
#[derive(Debug, Clone, Default)]
pub(crate) struct Replay {
    /// What `GenerateIdToken` answers, once recorded.
    pub(crate) id_token: Recorded,
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "the replay service answers GenerateIdToken only",
    ))
}

#[tonic::async_trait]
impl pb::token_broker_server::TokenBroker for Replay {
    async fn get_access_token(
        &self,
        _: Request<pb::GetAccessTokenRequest>,
    ) -> Result<Response<pb::GetAccessTokenResponse>, Status> {
        unimplemented()
    }

    async fn exchange_token(
        &self,
        _: Request<pb::ExchangeTokenRequest>,
    ) -> Result<Response<pb::ExchangeTokenResponse>, Status> {
        unimplemented()
    }

    async fn impersonate_service_account(
        &self,
        _: Request<pb::ImpersonateServiceAccountRequest>,
    ) -> Result<Response<pb::ImpersonateServiceAccountResponse>, Status> {
        unimplemented()
    }

    async fn generate_id_token(
        &self,
        _: Request<pb::GenerateIdTokenRequest>,
    ) -> Result<Response<pb::GenerateIdTokenResponse>, Status> {
        self.id_token
            .get()
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::unavailable("no response recorded yet"))
    }

    async fn sign_jwt(
        &self,
        _: Request<pb::SignJwtRequest>,
    ) -> Result<Response<pb::SignJwtResponse>, Status> {
        unimplemented()
    }

    async fn sign_blob(
        &self,
        _: Request<pb::SignBlobRequest>,
    ) -> Result<Response<pb::SignBlobResponse>, Status> {
        unimplemented()
    }
}
