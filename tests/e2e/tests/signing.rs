//! SignJwt and SignBlob end to end: IAM Credentials signJwt and signBlob at the emulator, with
//! the base credential's token. Every signature is verified independently of the broker and
//! the emulator's code (x509-parser and aws-lc-rs) against the certificate the emulator
//! publishes for the signing account under `key_id`.

use broker_proto::tokenbroker::v1 as pb;
use e2e::*;
use gcp_emulator::Endpoint;
use tonic::Code;

/// `app` may sign as broker@, reader@ and chained@ (through reader@); `worker` may sign JWTs as
/// broker@ only for one audience and at most 15 minutes ahead; `reader` may do neither.
const POLICY: &str = r#"
[[grants]]
name = "signing"
credential = "sa"
default = true
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/app" }]
rpcs = ["SignJwt", "SignBlob"]
service_accounts = [
  "broker@dev-project.iam.gserviceaccount.com",
  "reader@dev-project.iam.gserviceaccount.com",
  "chained@dev-project.iam.gserviceaccount.com",
]
delegates = [["reader@dev-project.iam.gserviceaccount.com"]]

[[grants]]
name = "constrained"
credential = "sa"
default = true
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/worker" }]
rpcs = ["SignJwt"]
service_accounts = ["broker@dev-project.iam.gserviceaccount.com"]

[grants.sign_jwt]
required_audiences = ["https://api.example.com"]
max_expiry = "15m"

[[grants]]
name = "tokens-only"
credential = "sa"
default = true
callers = [{ spiffe_id = "spiffe://example.org/ns/prod/sa/reader" }]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
"#;

const API: &str = "https://api.example.com";

async fn start() -> Harness {
    Harness::start(Options {
        policy: POLICY.to_owned(),
        world: Some(chain_world()),
        ..Options::default()
    })
    .await
}

fn sign_blob(account: &str, payload: &[u8]) -> pb::SignBlobRequest {
    pb::SignBlobRequest {
        service_account: account.to_owned(),
        payload: payload.to_vec(),
        ..Default::default()
    }
}

fn sign_jwt(account: &str, claims: &serde_json::Value) -> pb::SignJwtRequest {
    pb::SignJwtRequest {
        service_account: account.to_owned(),
        payload: claims.to_string(),
        ..Default::default()
    }
}

/// The certificate the emulator publishes for `email` under `key_id`, as Google does at
/// `https://www.googleapis.com/service_accounts/v1/metadata/x509/{email}`.
async fn certificate(harness: &Harness, email: &str, key_id: &str) -> String {
    let certificates: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}/robot/v1/metadata/x509/{email}",
            harness.emulator.url()
        ))
        .send()
        .await
        .expect("x509 certificates")
        .json()
        .await
        .expect("JSON");
    certificates[key_id]
        .as_str()
        .unwrap_or_else(|| panic!("no certificate {key_id} for {email}: {certificates}"))
        .to_owned()
}

/// Whether `signature` is an RSASSA-PKCS1-v1_5 SHA-256 signature of `message` by the key of
/// the certificate `certificate_pem`.
fn verifies(certificate_pem: &str, message: &[u8], signature: &[u8]) -> bool {
    let (_, pem) = x509_parser::pem::parse_x509_pem(certificate_pem.as_bytes()).expect("PEM");
    let certificate = pem.parse_x509().expect("X.509");
    let key = &certificate.public_key().subject_public_key.data;
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        key.as_ref(),
    )
    .verify(message, signature)
    .is_ok()
}

/// Verifies a compact JWS (`header.claims.signature`) with a certificate.
fn jwt_verifies(certificate_pem: &str, jwt: &str) -> bool {
    use base64::Engine as _;
    let (signed, signature) = jwt.rsplit_once('.').expect("a JWS");
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .expect("base64url");
    verifies(certificate_pem, signed.as_bytes(), &signature)
}

#[tokio::test]
async fn signed_blobs_verify_against_the_published_certificate_and_are_never_cached() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let payload = b"a manifest to sign\x00\xff\xfe".to_vec();

    let signed = client
        .sign_blob(sign_blob(BROKER_SA, &payload))
        .await
        .expect("signed")
        .into_inner();
    assert_eq!(signed.credential, "sa");
    assert_eq!(signed.signature.len(), 256, "raw RSA-2048 signature bytes");
    let broker_certificate = certificate(&harness, BROKER_SA, &signed.key_id).await;
    assert!(verifies(&broker_certificate, &payload, &signed.signature));
    let mut tampered = payload.clone();
    tampered[0] ^= 1;
    assert!(!verifies(&broker_certificate, &tampered, &signed.signature));

    // Another account signs with its own key.
    let reader = client
        .sign_blob(sign_blob(READER_SA, &payload))
        .await
        .expect("signed as reader@")
        .into_inner();
    assert_ne!(reader.key_id, signed.key_id);
    let reader_certificate = certificate(&harness, READER_SA, &reader.key_id).await;
    assert!(verifies(&reader_certificate, &payload, &reader.signature));
    assert!(!verifies(&broker_certificate, &payload, &reader.signature));

    // Never cached: the same request is signed again by IAM.
    let again = client
        .sign_blob(sign_blob(BROKER_SA, &payload))
        .await
        .expect("signed again")
        .into_inner();
    assert!(verifies(&broker_certificate, &payload, &again.signature));
    assert_eq!(harness.emulator.count(Endpoint::IamSignBlob), 3);
    assert_eq!(
        harness.emulator.count(Endpoint::OAuth2Token),
        1,
        "the base token is cached"
    );

    // The limits of the field: 1 byte and 64 KiB.
    for size in [1, 64 * 1024] {
        let payload = vec![0x5a; size];
        let signed = client
            .sign_blob(sign_blob(BROKER_SA, &payload))
            .await
            .unwrap_or_else(|e| panic!("{size} bytes: {e:?}"))
            .into_inner();
        assert!(verifies(&broker_certificate, &payload, &signed.signature));
    }

    // Through a delegate: chained@'s key, reached by way of reader@.
    let chained = client
        .sign_blob(pb::SignBlobRequest {
            delegates: vec![READER_SA.into()],
            ..sign_blob(CHAINED_SA, &payload)
        })
        .await
        .expect("signed through reader@")
        .into_inner();
    let chained_certificate = certificate(&harness, CHAINED_SA, &chained.key_id).await;
    assert!(verifies(&chained_certificate, &payload, &chained.signature));
    harness.stop().await;
}

#[tokio::test]
async fn signed_jwts_carry_the_claims_unchanged_and_verify() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let claims = |iat: i64| {
        serde_json::json!({
            "iss": BROKER_SA, "sub": BROKER_SA, "aud": API,
            "iat": iat, "exp": iat + 600, "custom": {"nested": [1, 2, 3]}
        })
    };
    let now = unix_now();

    let signed = client
        .sign_jwt(sign_jwt(BROKER_SA, &claims(now)))
        .await
        .expect("signed")
        .into_inner();
    assert_eq!(signed.credential, "sa");
    let header = jwt_header(&signed.signed_jwt);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["kid"], signed.key_id.as_str());
    assert_eq!(
        jwt_claims(&signed.signed_jwt),
        claims(now),
        "claims unchanged"
    );
    let broker_certificate = certificate(&harness, BROKER_SA, &signed.key_id).await;
    assert!(jwt_verifies(&broker_certificate, &signed.signed_jwt));
    let (head, rest) = signed.signed_jwt.split_once('.').expect("JWS");
    let (_, signature) = rest.split_once('.').expect("JWS");
    let forged = {
        use base64::Engine as _;
        let other =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims(now + 1).to_string());
        format!("{head}.{other}.{signature}")
    };
    assert!(!jwt_verifies(&broker_certificate, &forged));

    // Never cached: each call is one signJwt; new claims, a new JWT.
    let next = client
        .sign_jwt(sign_jwt(BROKER_SA, &claims(now + 1)))
        .await
        .expect("signed")
        .into_inner();
    assert_ne!(next.signed_jwt, signed.signed_jwt);
    assert!(jwt_verifies(&broker_certificate, &next.signed_jwt));
    client
        .sign_jwt(sign_jwt(BROKER_SA, &claims(now)))
        .await
        .expect("signed again");
    assert_eq!(harness.emulator.count(Endpoint::IamSignJwt), 3);

    // Without `exp` (the grant has no sign_jwt constraints), and as another account.
    let no_exp = client
        .sign_jwt(sign_jwt(READER_SA, &serde_json::json!({"sub": "x"})))
        .await
        .expect("no exp is fine")
        .into_inner();
    let reader_certificate = certificate(&harness, READER_SA, &no_exp.key_id).await;
    assert!(jwt_verifies(&reader_certificate, &no_exp.signed_jwt));
    assert!(!jwt_verifies(&broker_certificate, &no_exp.signed_jwt));
    harness.stop().await;
}

#[tokio::test]
async fn payloads_and_fields_are_validated_before_anything_else() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let now = unix_now();
    let jwt = |payload: String| pb::SignJwtRequest {
        service_account: BROKER_SA.into(),
        payload,
        ..Default::default()
    };
    let jwt_cases = [
        (jwt("not json".into()), "payload"),
        (jwt("[1, 2]".into()), "payload"),
        (jwt("\"a string\"".into()), "payload"),
        (jwt("{".into()), "payload"),
        (jwt(String::new()), "payload"),
        (jwt(format!(r#"{{"exp":{}}}"#, now - 60)), "payload"),
        (
            jwt(format!(r#"{{"exp":{}}}"#, now + 12 * 3600 + 120)),
            "payload",
        ),
        (jwt(r#"{"exp":"soon"}"#.into()), "payload"),
        (jwt(format!(r#"{{"exp":{}.5}}"#, now + 60)), "payload"),
        (
            jwt(serde_json::json!({"pad": "x".repeat(64 * 1024)}).to_string()),
            "payload",
        ),
        (
            pb::SignJwtRequest {
                service_account: String::new(),
                ..jwt("{}".into())
            },
            "service_account",
        ),
        (
            pb::SignJwtRequest {
                service_account: "broker".into(),
                ..jwt("{}".into())
            },
            "service_account",
        ),
        (
            pb::SignJwtRequest {
                delegates: vec![READER_SA.into(), READER_SA.into()],
                ..jwt("{}".into())
            },
            "delegates[1]",
        ),
    ];
    for (request, field) in jwt_cases {
        let shown = request.payload.chars().take(60).collect::<String>();
        let status = client.sign_jwt(request).await.expect_err(&shown);
        assert_invalid(&status, "INVALID_FIELD", field);
    }
    let blob_cases = [
        (sign_blob(BROKER_SA, b""), "payload"),
        (sign_blob(BROKER_SA, &vec![0; 64 * 1024 + 1]), "payload"),
        (sign_blob("", b"x"), "service_account"),
        (sign_blob("broker@localhost", b"x"), "service_account"),
        (
            pb::SignBlobRequest {
                delegates: (0..11)
                    .map(|i| format!("hop{i}@dev-project.iam.gserviceaccount.com"))
                    .collect(),
                ..sign_blob(BROKER_SA, b"x")
            },
            "delegates",
        ),
    ];
    for (request, field) in blob_cases {
        let status = client.sign_blob(request).await.expect_err(field);
        assert_invalid(&status, "INVALID_FIELD", field);
    }

    // Fields come before the policy: a caller without the RPC learns only that.
    let status = harness
        .client_for(READER)
        .await
        .sign_blob(sign_blob(BROKER_SA, b""))
        .await
        .expect_err("empty");
    assert_invalid(&status, "INVALID_FIELD", "payload");
    let counters = harness.emulator.counters();
    for endpoint in [
        Endpoint::IamSignJwt,
        Endpoint::IamSignBlob,
        Endpoint::OAuth2Token,
    ] {
        assert_eq!(
            counters.get(&endpoint).copied().unwrap_or(0),
            0,
            "{counters:?}"
        );
    }
    harness.stop().await;
}

#[tokio::test]
async fn payloads_of_64_kib_are_signed_with_the_default_configuration() {
    // The default `server.max_request_bytes` must leave room for the largest payload the
    // proto allows (65536 bytes) and the request's other fields; one byte more is the
    // field's error, with its details, not the transport's.
    let harness = Harness::start(Options {
        policy: POLICY.to_owned(),
        ..Options::default()
    })
    .await;
    let mut client = harness.client_for(APP).await;
    let largest = vec![0xa5; 64 * 1024];
    let signed = client
        .sign_blob(pb::SignBlobRequest {
            delegates: vec![READER_SA.into()],
            ..sign_blob(BROKER_SA, &largest)
        })
        .await;
    // (A chain broker@ -> reader@ -> broker@ is refused by IAM: the request got through.)
    let status = signed.expect_err("IAM refuses the chain");
    assert_error(&status, Code::PermissionDenied, "UPSTREAM_REJECTED");
    let signed = client
        .sign_blob(sign_blob(BROKER_SA, &largest))
        .await
        .expect("64 KiB signed")
        .into_inner();
    let certificate = certificate(&harness, BROKER_SA, &signed.key_id).await;
    assert!(verifies(&certificate, &largest, &signed.signature));
    let status = client
        .sign_blob(sign_blob(BROKER_SA, &vec![0xa5; 64 * 1024 + 1]))
        .await
        .expect_err("too large");
    assert_invalid(&status, "INVALID_FIELD", "payload");

    let claims = |size: usize| {
        let padding = size - r#"{"pad":""}"#.len();
        serde_json::json!({ "pad": "x".repeat(padding) }).to_string()
    };
    let payload = claims(64 * 1024);
    assert_eq!(payload.len(), 64 * 1024);
    client
        .sign_jwt(pb::SignJwtRequest {
            service_account: BROKER_SA.into(),
            payload,
            ..Default::default()
        })
        .await
        .expect("64 KiB of claims signed");
    let status = client
        .sign_jwt(pb::SignJwtRequest {
            service_account: BROKER_SA.into(),
            payload: claims(64 * 1024 + 1),
            ..Default::default()
        })
        .await
        .expect_err("too large");
    assert_invalid(&status, "INVALID_FIELD", "payload");
    harness.stop().await;
}

#[tokio::test]
async fn the_grant_constrains_signers_audiences_and_expiry() {
    let harness = start().await;
    let mut worker = harness.client_for(OTHER_APP).await;
    let now = unix_now();

    for allowed in [
        serde_json::json!({"aud": API, "exp": now + 600}),
        serde_json::json!({"aud": [API], "exp": now + 900}),
    ] {
        worker
            .sign_jwt(sign_jwt(BROKER_SA, &allowed))
            .await
            .unwrap_or_else(|e| panic!("{allowed}: {e:?}"));
    }
    let denied = [
        (serde_json::json!({"exp": now + 600}), "aud"),
        (
            serde_json::json!({"aud": "https://evil.example.com", "exp": now + 600}),
            "aud",
        ),
        (
            serde_json::json!({"aud": [API, "https://evil.example.com"], "exp": now + 600}),
            "aud",
        ),
        (serde_json::json!({"aud": [], "exp": now + 600}), "aud"),
        (serde_json::json!({"aud": API}), "exp"),
        (serde_json::json!({"aud": API, "exp": now + 3600}), "exp"),
        // `aud` is checked before `exp`.
        (
            serde_json::json!({"aud": "https://evil.example.com", "exp": now + 3600}),
            "aud",
        ),
    ];
    for (claims, claim) in denied {
        let status = worker
            .sign_jwt(sign_jwt(BROKER_SA, &claims))
            .await
            .expect_err("denied");
        let metadata = assert_denied(&status, "jwt_claims");
        assert_eq!(metadata["value"], claim, "{claims}");
        assert_eq!(metadata["grant"], "constrained");
    }

    let status = worker
        .sign_jwt(sign_jwt(
            READER_SA,
            &serde_json::json!({"aud": API, "exp": now + 600}),
        ))
        .await
        .expect_err("not reader@");
    assert_denied(&status, "service_accounts");
    let status = worker
        .sign_blob(sign_blob(BROKER_SA, b"x"))
        .await
        .expect_err("not SignBlob");
    assert_denied(&status, "rpc");
    let mut app = harness.client_for(APP).await;
    let status = app
        .sign_blob(sign_blob(WRITER_SA, b"x"))
        .await
        .expect_err("writer@ is not granted");
    assert_denied(&status, "service_accounts");
    let status = app
        .sign_blob(pb::SignBlobRequest {
            delegates: vec![WRITER_SA.into()],
            ..sign_blob(READER_SA, b"x")
        })
        .await
        .expect_err("chain not granted");
    assert_denied(&status, "delegates");
    let mut reader = harness.client_for(READER).await;
    let status = reader
        .sign_jwt(sign_jwt(BROKER_SA, &serde_json::json!({})))
        .await
        .expect_err("no signing");
    assert_denied(&status, "rpc");
    assert_eq!(harness.emulator.count(Endpoint::IamSignJwt), 2);
    assert_eq!(harness.emulator.count(Endpoint::IamSignBlob), 0);
    harness.stop().await;
}

#[tokio::test]
async fn iam_refusals_and_failures() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;

    // broker@ holds no Token Creator on chained@.
    let status = client
        .sign_blob(sign_blob(CHAINED_SA, b"x"))
        .await
        .expect_err("IAM refuses");
    let metadata = assert_error(&status, Code::PermissionDenied, "UPSTREAM_REJECTED");
    assert_eq!(metadata["upstream_error"], "IAM_PERMISSION_DENIED");
    assert_eq!(metadata["upstream_status"], "403");
    assert_eq!(metadata["upstream"], harness.emulator.addr().to_string());
    assert!(retry_delay(&status).is_none());
    let status = client
        .sign_jwt(sign_jwt(CHAINED_SA, &serde_json::json!({"sub": "x"})))
        .await
        .expect_err("IAM refuses");
    let metadata = assert_error(&status, Code::PermissionDenied, "UPSTREAM_REJECTED");
    assert_eq!(metadata["upstream_error"], "IAM_PERMISSION_DENIED");

    // IAM failing: retried, then UNAVAILABLE with RetryInfo.
    for endpoint in ["iam.signBlob", "iam.signJwt"] {
        harness
            .emulator
            .inject_fault(fault(
                serde_json::json!({"endpoint": endpoint, "status": 503}),
            ))
            .expect("fault");
    }
    let before = harness.emulator.count(Endpoint::IamSignBlob);
    let status = client
        .sign_blob(sign_blob(BROKER_SA, b"x"))
        .await
        .expect_err("unavailable");
    let metadata = assert_error(&status, Code::Unavailable, "UPSTREAM_UNAVAILABLE");
    assert_eq!(metadata["upstream_status"], "503");
    assert!(retry_delay(&status).is_some());
    assert_eq!(harness.emulator.count(Endpoint::IamSignBlob) - before, 3);
    let status = client
        .sign_jwt(sign_jwt(BROKER_SA, &serde_json::json!({"sub": "x"})))
        .await
        .expect_err("unavailable");
    assert_error(&status, Code::Unavailable, "UPSTREAM_UNAVAILABLE");
    assert!(retry_delay(&status).is_some());
    harness.stop().await;
}
