//! Identity that cannot outlive or outreach its certificate: trust bundles bound to trust
//! domains, identities that end with their certificate on open connections, CAs removed while
//! connections stay open, resumed TLS sessions, connection ages and handshake limits.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use broker_proto::tokenbroker::v1::GetAccessTokenRequest;
use e2e::*;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use token_broker::pki::{CertificateAuthority, LeafSpec};
use tonic::Code;

/// A SPIFFE bundle (JWK Set, as SPIRE publishes) holding `ca`'s certificate.
fn spiffe_bundle(ca: &CertificateAuthority) -> String {
    let der = CertificateDer::from_pem_slice(ca.certificate_pem().as_bytes()).expect("pem");
    serde_json::json!({
        "spiffe_sequence": 1,
        "keys": [{
            "use": "x509-svid",
            "kty": "EC",
            "crv": "P-256",
            "x": "",
            "y": "",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(der.as_ref())]
        }]
    })
    .to_string()
}

fn dns_client(name: &str) -> LeafSpec {
    LeafSpec {
        dns_names: vec![name.to_owned()],
        client: true,
        ..LeafSpec::default()
    }
}

#[tokio::test]
async fn each_trust_bundle_vouches_only_for_what_it_is_bound_to() {
    let partner = CertificateAuthority::new("partner CA").expect("ca");
    let legacy = CertificateAuthority::new("legacy CA").expect("ca");
    let harness = Harness::start(Options {
        trust: format!(
            "{DEFAULT_TRUST}
[[tls.trust_bundles]]
name = \"partner\"
file = \"partner.json\"
spiffe_trust_domains = [\"partner.example.net\"]

[[tls.trust_bundles]]
name = \"legacy\"
file = \"legacy.pem\"
dns_names = true
"
        ),
        files: vec![
            ("partner.json".into(), spiffe_bundle(&partner)),
            ("legacy.pem".into(), legacy.certificate_pem()),
        ],
        policy: format!(
            "{DEFAULT_POLICY}
[[grants]]
name = \"batch\"
credential = \"sa\"
default = true
callers = [{{ dns = \"batch.example.org\" }}]
scopes = [\"{STORAGE_READ}\"]
"
        ),
        ..Options::default()
    })
    .await;
    let issued = |authority: &CertificateAuthority, spec: &LeafSpec| {
        ClientIdentity::from_issued(&authority.issue(spec).expect("cert"))
    };

    // The partner's CA (a SPIFFE bundle) minting an ID of our trust domain: refused.
    assert_refused(
        &harness,
        Some(&issued(&partner, &LeafSpec::spiffe_client(APP))),
    )
    .await;
    // Our CA minting an ID of the partner's trust domain: refused.
    assert_refused(
        &harness,
        Some(&harness.identity("spiffe://partner.example.net/ns/app")),
    )
    .await;
    // A trust domain no bundle is bound to: refused.
    assert_refused(
        &harness,
        Some(&harness.identity("spiffe://other.org/ns/x/sa/y")),
    )
    .await;
    // A SPIFFE-only bundle vouching for a DNS name: refused.
    assert_refused(
        &harness,
        Some(&harness.identity_from(&dns_client("batch.example.org"))),
    )
    .await;
    assert_eq!(
        harness.emulator.count(gcp_emulator::Endpoint::OAuth2Token),
        0
    );

    // What each bundle is bound to passes the handshake: the partner's workload reaches the
    // policy (which has no grant for it), the legacy DNS identity gets its token.
    let mut partner_client = harness
        .client(Some(&issued(
            &partner,
            &LeafSpec::spiffe_client("spiffe://partner.example.net/ns/app"),
        )))
        .await
        .expect("connect");
    let status = partner_client
        .get_access_token(request(&[STORAGE_READ]))
        .await
        .expect_err("no grant");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(error_info(&status).1["rule"], "no_grant");
    let mut batch = harness
        .client(Some(&issued(&legacy, &dns_client("batch.example.org"))))
        .await
        .expect("connect");
    let token = batch
        .get_access_token(request(&[STORAGE_READ]))
        .await
        .expect("the legacy bundle vouches for DNS names")
        .into_inner();
    assert_eq!(token.principal, BROKER_SA);
    harness.stop().await;
}

#[tokio::test]
async fn an_identity_ends_with_its_certificate_even_on_an_open_connection() {
    let harness = Harness::start(Options::default()).await;
    let now = SystemTime::now();
    let short_lived = harness.identity_valid(
        APP,
        now - Duration::from_secs(60),
        now + Duration::from_secs(3),
    );
    let mut client = harness.client(Some(&short_lived)).await.expect("connect");
    client
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("valid for now");

    tokio::time::sleep(Duration::from_secs(4)).await;
    let status = client
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect_err("expired on the open connection");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "CLIENT_CERTIFICATE_EXPIRED");
    assert!(metadata["not_after"].ends_with('Z'), "{metadata:?}");
    assert!(status.message().contains("expired"), "{}", status.message());
    harness.stop().await;
}

#[tokio::test]
async fn a_ca_removed_from_a_bundle_stops_working_on_open_connections() {
    let old_ca = CertificateAuthority::new("retiring CA").expect("ca");
    let harness = Harness::start(Options {
        trust: format!(
            "{DEFAULT_TRUST}
[[tls.trust_bundles]]
name = \"retiring\"
file = \"retiring.pem\"
spiffe_trust_domains = [\"example.org\"]
"
        ),
        files: vec![("retiring.pem".into(), old_ca.certificate_pem())],
        ..Options::default()
    })
    .await;
    let old_identity =
        ClientIdentity::from_issued(&old_ca.issue(&LeafSpec::spiffe_client(APP)).expect("cert"));
    let mut open = harness.client(Some(&old_identity)).await.expect("connect");
    open.get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("trusted");
    // A caller of the CA that stays is not affected by what follows.
    let mut current = harness
        .client(Some(&harness.identity(APP)))
        .await
        .expect("connect");

    // The retiring CA is replaced by another one in its bundle file.
    let successor = CertificateAuthority::new("successor CA").expect("ca");
    harness.replace_file("retiring.pem", &successor.certificate_pem());
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut open = open.clone();
            async move {
                open.get_access_token(request(&[CLOUD_PLATFORM]))
                    .await
                    .is_err_and(|status| {
                        status.code() == Code::Unauthenticated
                            && error_info(&status).0 == "CLIENT_CERTIFICATE_NOT_TRUSTED"
                    })
            }
        })
        .await,
        "the open connection of the removed CA stops working"
    );
    current
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("the remaining CA's callers are unaffected");
    assert_refused(&harness, Some(&old_identity)).await;
    harness.stop().await;
}

#[tokio::test]
async fn a_resumed_tls_session_is_verified_again() {
    let harness = Harness::start(Options::default()).await;
    let now = SystemTime::now();
    let identity = harness.identity_valid(
        APP,
        now - Duration::from_secs(60),
        now + Duration::from_secs(3),
    );
    let config = harness.rustls_client(&identity);

    // The first connection completes a full handshake and reads the server's first HTTP/2
    // frame (and, before it, the session tickets); the second resumes its session.
    let mut first = harness
        .tls_connect(config.clone())
        .await
        .expect("full handshake");
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        first
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("preface");
        let mut buffer = [0u8; 9];
        first
            .read_exact(&mut buffer)
            .await
            .expect("server SETTINGS");
    }
    drop(first);
    let second = harness.tls_connect(config.clone()).await.expect("resumed");
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the session cache resumes sessions"
    );
    drop(second);

    // Once the certificate expired, a resumption that rustls would accept from its session
    // cache is refused: the chain is verified again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut resumed = harness
        .tls_connect(config)
        .await
        .expect("rustls resumes the session without looking at the certificate");
    assert_eq!(
        resumed.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    // The broker verifies the restored chain, finds it expired and closes at once: the
    // client's next read sees the end of the stream, not the server's HTTP/2 SETTINGS.
    let refused = {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let _ = resumed.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let mut buffer = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), resumed.read(&mut buffer)).await,
            Ok(Ok(0) | Err(_))
        )
    };
    assert!(
        refused,
        "the resumed session of an expired certificate is refused"
    );
    harness.stop().await;
}

#[tokio::test]
async fn connections_are_sent_goaway_at_their_maximum_age_and_calls_finish_in_the_grace() {
    let harness = Harness::start(Options {
        server: "max_connection_age = \"1s\"\nmax_connection_age_grace = \"5s\"\n".into(),
        ..Options::default()
    })
    .await;
    let identity = harness.identity(APP);

    // An idle HTTP/2 connection is closed by the server at its age.
    let stream = harness
        .tls_connect(harness.rustls_client(&identity))
        .await
        .expect("connect");
    let (_sender, connection) = hyper::client::conn::http2::handshake::<_, _, String>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the server ends the connection")
        .expect("cleanly, with GOAWAY");
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_millis(800) && lived < Duration::from_secs(3),
        "{lived:?}"
    );

    // A call in flight when its connection ages out still finishes; the channel reconnects.
    harness
        .emulator
        .inject_fault(
            serde_json::from_value(serde_json::json!(
                {"endpoint": "oauth2.token", "delay_ms": 1500, "times": 1}
            ))
            .expect("fault"),
        )
        .expect("fault");
    let mut client = harness.client(Some(&identity)).await.expect("connect");
    let response = client
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("finished in the grace period");
    assert!(!response.into_inner().access_token.is_empty());
    client
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("the channel reconnected");
    harness.stop().await;
}

#[tokio::test]
async fn slow_handshakes_and_idle_connections_cannot_exhaust_the_server() {
    let harness = Harness::start(Options {
        server:
            "max_concurrent_handshakes = 2\nhandshake_timeout = \"500ms\"\nmax_connections = 4\n"
                .into(),
        ..Options::default()
    })
    .await;
    let identity = harness.identity(APP);

    // Two clients that open TCP and never speak hold both handshake slots, until the timeout.
    let silent: Vec<tokio::net::TcpStream> =
        futures_join(2, || tokio::net::TcpStream::connect(harness.addr())).await;
    let started = std::time::Instant::now();
    let mut client = harness
        .client(Some(&identity))
        .await
        .expect("connects after the timeout");
    client
        .get_access_token(request(&[CLOUD_PLATFORM]))
        .await
        .expect("served");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    for mut stream in silent {
        use tokio::io::AsyncReadExt as _;
        let mut buffer = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buffer)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "closed by the server: {read:?}"
        );
    }

    // Four open connections (the client above is one) fill the server: a fifth waits in the
    // backlog until one closes.
    let config = harness.rustls_client(&identity);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(harness.tls_connect(config.clone()).await.expect("connect"));
    }
    let waiting = tokio::time::timeout(
        Duration::from_millis(700),
        harness.tls_connect(config.clone()),
    )
    .await;
    assert!(waiting.is_err(), "the fifth connection is not served yet");
    drop(open.pop());
    harness
        .tls_connect(config)
        .await
        .expect("a slot freed: the next connection is served");
    harness.stop().await;
}

#[tokio::test]
async fn one_address_cannot_hold_every_handshake_slot() {
    let harness = Harness::start(Options {
        server: "max_handshakes_per_ip = 2\nhandshake_timeout = \"3s\"\n".into(),
        ..Options::default()
    })
    .await;
    // Two silent connections from 127.0.0.1 use its two handshake slots.
    let _silent: Vec<tokio::net::TcpStream> =
        futures_join(2, || tokio::net::TcpStream::connect(harness.addr())).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third from the same address is closed at once, long before the handshake timeout.
    let mut third = tokio::net::TcpStream::connect(harness.addr())
        .await
        .expect("connect");
    let started = std::time::Instant::now();
    let mut buffer = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(2), {
        use tokio::io::AsyncReadExt as _;
        third.read(&mut buffer)
    })
    .await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "closed: {read:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    harness.stop().await;
}

/// `count` results of `make`, awaited in turn.
async fn futures_join<F, Fut, T, E>(count: usize, mut make: F) -> Vec<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Debug,
{
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(make().await.expect("connect"));
    }
    out
}

#[tokio::test]
async fn a_certificate_without_any_name_is_unauthenticated_with_a_reason() {
    let harness = Harness::start(Options::default()).await;
    let nameless = harness.identity_from(&LeafSpec {
        client: true,
        ..LeafSpec::default()
    });
    let mut client = harness.client(Some(&nameless)).await.expect("connect");
    let status = client
        .get_access_token(GetAccessTokenRequest::default())
        .await
        .expect_err("no identity");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(error_info(&status).0, "CLIENT_CERTIFICATE_REQUIRED");
    harness.stop().await;
}
