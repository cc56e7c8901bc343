//! Every log line of every crate, at every level, while the broker mints, caches, downscopes,
//! fails and refuses: no token, assertion, key or subject token may appear in it.

use std::io::Write;
use std::sync::{Arc, Mutex};

use broker_proto::tokenbroker::v1 as pb;
use e2e::*;
use gcp_emulator::Fault;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Slices of a PEM's base64 body: any of them in the logs means the key leaked.
fn pem_fragments(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        .map(|l| l[..40].to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_at_any_level() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .init();

    let harness = Harness::start(Options::default()).await;
    let app = harness.identity(APP);
    let mut client = harness.client(Some(&app)).await.expect("connect");
    let mut secrets: Vec<String> = Vec::new();

    // Minted, cached, delegated, downscoped.
    for request in [
        request(&[CLOUD_PLATFORM]),
        request(&[CLOUD_PLATFORM]),
        pb::GetAccessTokenRequest {
            subject: "alice@example.com".into(),
            ..request(&[DIRECTORY_READ])
        },
        pb::GetAccessTokenRequest {
            access_boundary: Some(pb::CredentialAccessBoundary {
                access_boundary_rules: vec![pb::AccessBoundaryRule {
                    available_resource: "//storage.googleapis.com/projects/_/buckets/b".into(),
                    available_permissions: vec!["inRole:roles/storage.objectViewer".into()],
                    availability_condition: None,
                }],
            }),
            ..request(&[STORAGE_READ])
        },
    ] {
        secrets.push(
            client
                .get_access_token(request)
                .await
                .expect("token")
                .into_inner()
                .access_token,
        );
    }

    // A token served as last known good while Google fails (4-second tokens must be refreshed
    // after 2 s), a refusal remembered by the negative cache, a caller's deadline, a rate limit.
    harness
        .emulator
        .set_token_lifetime(Some(std::time::Duration::from_secs(4)));
    let read_write = "https://www.googleapis.com/auth/devstorage.read_write";
    secrets.push(
        client
            .get_access_token(request(&[read_write]))
            .await
            .expect("token")
            .into_inner()
            .access_token,
    );
    let unavailable: Fault =
        serde_json::from_value(serde_json::json!({"endpoint": "oauth2.token", "status": 503}))
            .expect("fault");
    harness.emulator.inject_fault(unavailable).expect("fault");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let stale = client
        .get_access_token(request(&[read_write]))
        .await
        .expect("last known good")
        .into_inner();
    assert!(stale.last_known_good);
    harness.emulator.clear_faults();
    harness.emulator.set_token_lifetime(None);
    let rejected: Fault = serde_json::from_value(serde_json::json!({"endpoint": "oauth2.token",
        "status": 400, "error": "invalid_grant", "error_description": "Invalid JWT Signature."}))
    .expect("fault");
    harness.emulator.inject_fault(rejected).expect("fault");
    for _ in 0..2 {
        assert!(
            client
                .get_access_token(request(&["https://www.googleapis.com/auth/devstorage.x"]))
                .await
                .is_err()
        );
    }
    harness.emulator.clear_faults();
    let slow: Fault = serde_json::from_value(
        serde_json::json!({"endpoint": "oauth2.token", "delay_ms": 1500, "times": 1}),
    )
    .expect("fault");
    harness.emulator.inject_fault(slow).expect("fault");
    let mut impatient =
        tonic::Request::new(request(&["https://www.googleapis.com/auth/devstorage.y"]));
    impatient.set_timeout(std::time::Duration::from_millis(500));
    assert!(client.get_access_token(impatient).await.is_err());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    // Failing upstream, a denial, a connection without a certificate.
    let fault: Fault =
        serde_json::from_value(serde_json::json!({"endpoint": "oauth2.token", "status": 503}))
            .expect("fault");
    harness.emulator.inject_fault(fault).expect("fault");
    let failed = client
        .get_access_token(request(&[
            "https://www.googleapis.com/auth/devstorage.full_control",
        ]))
        .await;
    assert!(failed.is_err());
    harness.emulator.clear_faults();
    let mut reader = harness
        .client(Some(&harness.identity(READER)))
        .await
        .expect("connect");
    assert!(
        reader
            .get_access_token(request(&[CLOUD_PLATFORM]))
            .await
            .is_err()
    );
    if let Ok(mut anonymous) = harness.client(None).await {
        assert!(anonymous.get_access_token(request(&[])).await.is_err());
    }

    let key_file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(harness.dir.path().join("emulator/keys/broker.json"))
            .expect("key file"),
    )
    .expect("json");
    let key_fragments = pem_fragments(key_file["private_key"].as_str().expect("pem"));
    let server_key_fragments = pem_fragments(
        &std::fs::read_to_string(harness.dir.path().join("server-key.pem")).expect("server key"),
    );
    harness.stop().await;

    let logs = String::from_utf8(capture.0.lock().expect("lock").clone()).expect("utf-8");
    assert!(
        logs.len() > 1000,
        "the capture saw the run ({} bytes)",
        logs.len()
    );
    assert!(
        logs.contains("TLS handshake failed"),
        "the refused handshake is logged with its reason"
    );
    assert!(logs.contains("sha256:"), "tokens are logged by fingerprint");
    assert!(
        logs.contains("origin=\"last_known_good\""),
        "the audit event marks a last known good token"
    );
    assert!(
        logs.contains("negative_cache=true"),
        "the audit event marks a refusal served from the negative cache"
    );
    assert!(
        logs.contains("UPSTREAM_DEADLINE_EXCEEDED"),
        "the deadline is audited"
    );
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a token leaked into the logs"
        );
        assert!(
            !logs.contains(&secret[..24]),
            "a token prefix leaked into the logs"
        );
    }
    for fragment in key_fragments.iter().chain(&server_key_fragments) {
        assert!(
            !logs.contains(fragment.as_str()),
            "key material leaked into the logs"
        );
    }
    assert!(
        !logs.contains("PRIVATE KEY"),
        "a PEM key leaked into the logs"
    );
    assert!(
        !logs.contains("eyJ"),
        "a JWT (assertion or ID token) leaked into the logs"
    );
    assert!(
        !logs.contains("assertion="),
        "a form body leaked into the logs"
    );
}
