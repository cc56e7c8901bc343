//! Operating the broker: files replaced while running, health, reflection, load shedding,
//! graceful shutdown.

use std::time::Duration;

use e2e::*;
use token_broker::pki::{CertificateAuthority, LeafSpec};
use tonic::Code;

#[tokio::test]
async fn certificates_trust_bundles_and_policy_are_reloaded_while_running() {
    let harness = Harness::start(Options::default()).await;
    let app = harness.identity(APP);
    let mut client = harness.client(Some(&app)).await.expect("connect");
    client
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("allowed");

    // The policy changes: the app loses cloud-platform.
    let narrowed = DEFAULT_POLICY.replace(
        "scopes = [\"https://www.googleapis.com/auth/cloud-platform\", \"https://www.googleapis.com/auth/admin.directory.user.readonly\"]",
        "scopes = []",
    );
    harness.replace_file("policy.toml", &narrowed);
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut client = client.clone();
            async move {
                client
                    .get_access_token(request(&[CLOUD_PLATFORM]))
                    .await
                    .is_err_and(|s| s.code() == Code::PermissionDenied)
            }
        })
        .await,
        "the new policy applies without a restart"
    );

    // A broken policy file is rejected and the current one stays.
    harness.replace_file("policy.toml", "[[grants]]\nname = \"broken\"\n");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = client
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect_err("still the narrowed policy");
    assert_eq!(error_info(&status).1["rule"], "scopes");
    client
        .get_access_token(request(&[STORAGE_READ]))
        .await
        .expect("still allowed by the narrowed policy");

    // A new CA for clients and a new server certificate: new connections need both.
    let new_ca = CertificateAuthority::new("rotated CA").expect("ca");
    let server = new_ca
        .issue(&LeafSpec::localhost_server())
        .expect("server cert");
    harness.replace_file("server-key.pem", &server.key_pem);
    harness.replace_file("server.pem", &server.cert_pem);
    harness.replace_file("ca.pem", &new_ca.certificate_pem());
    let new_identity =
        ClientIdentity::from_issued(&new_ca.issue(&LeafSpec::spiffe_client(APP)).expect("cert"));
    assert!(
        eventually(Duration::from_secs(5), || async {
            match harness
                .client_trusting(&new_ca.certificate_pem(), Some(&new_identity))
                .await
            {
                Ok(mut client) => client
                    .get_access_token(request(&[STORAGE_READ]))
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        })
        .await,
        "the rotated server certificate and client trust bundle apply to new connections"
    );
    let old = harness.client(Some(&app)).await;
    let rejected = match old {
        Ok(mut client) => client
            .get_access_token(request(&[STORAGE_READ]))
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(rejected, "the old CA is no longer trusted either way");

    // A half-written rotation (a certificate without its key) is rejected; the current one stays.
    let other = CertificateAuthority::new("other")
        .expect("ca")
        .issue(&LeafSpec::localhost_server())
        .expect("cert");
    harness.replace_file("server.pem", &other.cert_pem);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut client = harness
        .client_trusting(&new_ca.certificate_pem(), Some(&new_identity))
        .await
        .expect("connect");
    client
        .get_access_token(request(&[STORAGE_READ]))
        .await
        .expect("the last good TLS configuration is still served");
    harness.stop().await;
}

#[tokio::test]
async fn health_and_reflection_work_without_the_proto() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let harness = Harness::start(Options::default()).await;
    let channel = harness
        .channel(&harness.ca.certificate_pem(), Some(&harness.identity(APP)))
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "tokenbroker.v1.TokenBroker".into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let services_v1 = {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel.clone());
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream_once(request))
            .await
            .expect("reflection")
            .into_inner();
        let response = responses.message().await.expect("message").expect("some");
        match response.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    for service in ["tokenbroker.v1.TokenBroker", "grpc.health.v1.Health"] {
        assert!(
            services_v1.iter().any(|s| s == service),
            "{service} in {services_v1:?}"
        );
    }

    let services_v1alpha = {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel.clone());
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "tokenbroker.v1.TokenBroker".into(),
            )),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream_once(request))
            .await
            .expect("reflection")
            .into_inner();
        let response = responses.message().await.expect("message").expect("some");
        match response.message_response {
            Some(MessageResponse::FileDescriptorResponse(files)) => {
                files.file_descriptor_proto.len()
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(services_v1alpha >= 1);
    harness.stop().await;
}

/// A request stream of one message.
fn tokio_stream_once<T: Send + 'static>(
    item: T,
) -> impl tonic::codegen::tokio_stream::Stream<Item = T> + Send + 'static {
    tonic::codegen::tokio_stream::iter([item])
}

#[tokio::test]
async fn overload_is_shed_with_retry_info_and_shutdown_drains_in_flight_calls() {
    let harness = Harness::start(Options {
        server: "max_concurrent_rpcs = 1\nshutdown_grace = \"5s\"\n".into(),
        ..Options::default()
    })
    .await;
    harness
        .emulator
        .inject_fault(fault(
            serde_json::json!({"endpoint": "oauth2.token", "delay_ms": 800, "times": 1}),
        ))
        .expect("fault");
    let mut client = harness
        .client(Some(&harness.identity(APP)))
        .await
        .expect("connect");
    let mut first = client.clone();
    let in_flight =
        tokio::spawn(async move { first.get_access_token(request(&[CLOUD_PLATFORM])).await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let status = client
        .get_access_token(request(&[STORAGE_READ]))
        .await
        .expect_err("shed");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(error_info(&status).0, "OVERLOADED");
    assert!(retry_delay(&status).is_some());

    let addr = harness.addr();
    harness.broker.shutdown().await;
    let response = in_flight.await.expect("join");
    assert!(
        response.is_ok(),
        "the in-flight call finished during shutdown: {response:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
    harness.emulator.shutdown().await;
}
