//! Code generated from the token broker's public gRPC API, `proto/tokenbroker/v1/*.proto`:
//! the prost messages, the tonic client ([`tokenbroker::v1::token_broker_client`]) and server
//! ([`tokenbroker::v1::token_broker_server`]), and the encoded descriptor set for gRPC
//! reflection ([`FILE_DESCRIPTOR_SET`]).
//!
//! The proto files are the contract; the documentation of every RPC and field below is copied
//! from their comments. Start with the `TokenBroker` service documentation (on
//! [`tokenbroker::v1::token_broker_server::TokenBroker`]), which describes authentication,
//! authorization, caching and the error model.
//!
//! This crate holds no hand-written logic. It enables no tonic transport; the generated client
//! and server work with `tonic::transport::Channel` and `tonic::transport::Server` in crates
//! that enable tonic's transport features.

/// The `tokenbroker` proto package.
pub mod tokenbroker {
    /// The `tokenbroker.v1` proto package: the version 1 API.
    #[allow(
        missing_docs,
        unreachable_pub,
        clippy::all,
        clippy::pedantic,
        clippy::nursery,
        reason = "generated code"
    )]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/tokenbroker.v1.rs"));
    }
}

/// The encoded `google.protobuf.FileDescriptorSet` of the `tokenbroker.v1` API, including the
/// files it imports (`google/protobuf/duration.proto`, `google/protobuf/timestamp.proto`) and
/// source info (comments).
///
/// Register it with `tonic_reflection::server::Builder::register_encoded_file_descriptor_set`
/// so that reflection clients (grpcurl, grpcio's reflection client) can discover the service.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tokenbroker_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_types::FileDescriptorSet;

    use super::FILE_DESCRIPTOR_SET;

    #[test]
    fn descriptor_set_has_the_token_broker_service_with_six_methods() {
        let fds = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
            .expect("FILE_DESCRIPTOR_SET is a valid FileDescriptorSet");

        let services: Vec<_> = fds
            .file
            .iter()
            .filter(|file| file.package() == "tokenbroker.v1")
            .flat_map(|file| file.service.iter())
            .collect();
        assert_eq!(
            services.len(),
            1,
            "tokenbroker.v1 defines exactly one service"
        );
        let service = services[0];
        assert_eq!(service.name(), "TokenBroker");

        let methods: Vec<(&str, &str, &str)> = service
            .method
            .iter()
            .map(|m| (m.name(), m.input_type(), m.output_type()))
            .collect();
        assert_eq!(
            methods,
            [
                (
                    "GetAccessToken",
                    ".tokenbroker.v1.GetAccessTokenRequest",
                    ".tokenbroker.v1.GetAccessTokenResponse",
                ),
                (
                    "ExchangeToken",
                    ".tokenbroker.v1.ExchangeTokenRequest",
                    ".tokenbroker.v1.ExchangeTokenResponse",
                ),
                (
                    "ImpersonateServiceAccount",
                    ".tokenbroker.v1.ImpersonateServiceAccountRequest",
                    ".tokenbroker.v1.ImpersonateServiceAccountResponse",
                ),
                (
                    "GenerateIdToken",
                    ".tokenbroker.v1.GenerateIdTokenRequest",
                    ".tokenbroker.v1.GenerateIdTokenResponse",
                ),
                (
                    "SignJwt",
                    ".tokenbroker.v1.SignJwtRequest",
                    ".tokenbroker.v1.SignJwtResponse",
                ),
                (
                    "SignBlob",
                    ".tokenbroker.v1.SignBlobRequest",
                    ".tokenbroker.v1.SignBlobResponse",
                ),
            ]
        );
        assert!(
            service
                .method
                .iter()
                .all(|m| !m.client_streaming() && !m.server_streaming()),
            "every RPC is unary"
        );
    }
}
