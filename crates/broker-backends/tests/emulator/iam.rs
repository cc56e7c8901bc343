//! The IAM Service Account Credentials client on its own: generateAccessToken,
//! generateIdToken, signJwt and signBlob, and Google's error envelope.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broker_backends::{GoogleEndpoints, IamCredentials};
use broker_core::{Rejection, ScopeSet, Secret, SourceError, Token, TokenSource, UpstreamStatus};
use gcp_emulator::{Endpoint, RunningEmulator};
use serde_json::json;

use crate::support::*;

/// A world in which `writer@` holds Token Creator on `reader@` (a working two-hop chain), and
/// `long@` allows 12-hour tokens.
const CHAIN_WORLD: &str = r#"
[[projects]]
id = "dev-project"
number = "123456789012"

[[service_accounts]]
email = "broker@dev-project.iam.gserviceaccount.com"

[[service_accounts]]
email = "writer@dev-project.iam.gserviceaccount.com"
key = false
token_creators = ["serviceAccount:broker@dev-project.iam.gserviceaccount.com"]

[[service_accounts]]
email = "reader@dev-project.iam.gserviceaccount.com"
key = false
token_creators = ["serviceAccount:writer@dev-project.iam.gserviceaccount.com"]

[[service_accounts]]
email = "long@dev-project.iam.gserviceaccount.com"
key = false
allow_extended_lifetime = true
token_creators = ["serviceAccount:broker@dev-project.iam.gserviceaccount.com"]
"#;
const LONG: &str = "long@dev-project.iam.gserviceaccount.com";

fn iam(emulator: &RunningEmulator) -> IamCredentials {
    IamCredentials::new(&GoogleEndpoints::emulator(emulator.url()), http()).expect("client")
}

/// A `cloud-platform` token of broker@, to call IAM with.
async fn broker_token(emulator: &RunningEmulator) -> Token {
    source(emulator, http(), &clock())
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("broker token")
}

fn scopes(scopes: &[&str]) -> ScopeSet {
    ScopeSet::parse(scopes).expect("scopes")
}

#[tokio::test]
async fn generate_access_token_mints_a_token_for_the_target() {
    let emulator = emulator().await;
    let iam = iam(&emulator);
    let base = broker_token(&emulator).await;
    let started = SystemTime::now();
    let token = iam
        .generate_access_token(
            &base.secret,
            READER,
            &[],
            &scopes(&[STORAGE_RO]),
            None,
            None,
        )
        .await
        .expect("impersonated token");
    assert_eq!(&*token.principal, READER);
    assert_eq!(token.scopes, scopes(&[STORAGE_RO]));
    let lifetime = token.expires_at.duration_since(started).expect("future");
    assert!(
        lifetime.abs_diff(Duration::from_secs(3600)) <= Duration::from_secs(2),
        "{lifetime:?}"
    );
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["grant"], "generate-access-token");
    assert_eq!(info["email"], READER);
    assert_eq!(info["delegates"], json!([]));
    assert_eq!(info["scope"], STORAGE_RO);
    assert_expiry_matches(&info, &token);

    // A lifetime of the caller's choosing.
    let token = iam
        .generate_access_token(
            &base.secret,
            WRITER,
            &[],
            &scopes(&[CLOUD_PLATFORM]),
            Some(Duration::from_secs(900)),
            None,
        )
        .await
        .expect("short token");
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["email"], WRITER);
    let left: i64 = info["expires_in"]
        .as_str()
        .expect("expires_in")
        .parse()
        .expect("number");
    assert!((895..=900).contains(&left), "{left}");
    assert_expiry_matches(&info, &token);
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_chain_works_only_where_each_hop_holds_token_creator() {
    // The default world: broker@ holds Token Creator on writer@ and on reader@, but writer@
    // holds none on reader@. Google refuses the middle hop.
    let emulator = emulator().await;
    let iam = iam(&emulator);
    let base = broker_token(&emulator).await;
    let refused = rejection(
        iam.generate_access_token(
            &base.secret,
            READER,
            &[WRITER.to_owned()],
            &scopes(&[CLOUD_PLATFORM]),
            None,
            None,
        )
        .await,
    );
    assert_eq!(refused.rejection, Rejection::PermissionDenied);
    assert_eq!(
        (refused.error.as_str(), refused.status),
        ("IAM_PERMISSION_DENIED", 403)
    );
    assert_eq!(refused.field, None);
    assert_eq!(refused.upstream, host(&emulator));
    assert!(
        refused.message.contains("PERMISSION_DENIED"),
        "{}",
        refused.message
    );
    assert!(
        refused
            .message
            .contains("iam.serviceAccounts.getAccessToken"),
        "{}",
        refused.message
    );
    assert_eq!(
        emulator.count(Endpoint::IamGenerateAccessToken),
        1,
        "no retries"
    );
    emulator.shutdown().await;

    // Where writer@ holds it, the chain works and tokeninfo shows it.
    let emulator = emulator_with(CHAIN_WORLD).await;
    let iam = self::iam(&emulator);
    let base = broker_token(&emulator).await;
    let token = iam
        .generate_access_token(
            &base.secret,
            READER,
            &[WRITER.to_owned()],
            &scopes(&[CLOUD_PLATFORM]),
            None,
            None,
        )
        .await
        .expect("chained token");
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["email"], READER);
    assert_eq!(info["delegates"], json!([WRITER]));
    // ... and broker@ alone may not skip the hop.
    let refused = rejection(
        iam.generate_access_token(
            &base.secret,
            READER,
            &[],
            &scopes(&[CLOUD_PLATFORM]),
            None,
            None,
        )
        .await,
    );
    assert_eq!(refused.error, "IAM_PERMISSION_DENIED");
    emulator.shutdown().await;
}

#[tokio::test]
async fn twelve_hours_only_where_the_account_allows_it() {
    let emulator = emulator_with(CHAIN_WORLD).await;
    let iam = iam(&emulator);
    let base = broker_token(&emulator).await;
    let twelve_hours = Some(Duration::from_secs(12 * 3600));
    let refused = rejection(
        iam.generate_access_token(
            &base.secret,
            WRITER,
            &[],
            &scopes(&[CLOUD_PLATFORM]),
            twelve_hours,
            None,
        )
        .await,
    );
    assert_eq!(refused.rejection, Rejection::InvalidArgument);
    assert_eq!(refused.field.as_deref(), Some("lifetime"));
    assert_eq!(refused.status, 400);
    assert!(refused.message.contains("3600s"), "{}", refused.message);

    let started = SystemTime::now();
    let token = iam
        .generate_access_token(
            &base.secret,
            LONG,
            &[],
            &scopes(&[CLOUD_PLATFORM]),
            twelve_hours,
            None,
        )
        .await
        .expect("a 12-hour token");
    let lifetime = token.expires_at.duration_since(started).expect("future");
    assert!(
        lifetime.abs_diff(Duration::from_secs(43200)) <= Duration::from_secs(2),
        "{lifetime:?}"
    );
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["email"], LONG);
    assert_expiry_matches(&info, &token);
    emulator.shutdown().await;
}

#[tokio::test]
async fn googles_iam_errors_are_classified() {
    let emulator = emulator().await;
    let iam = iam(&emulator);
    let base = broker_token(&emulator).await;
    let cloud = scopes(&[CLOUD_PLATFORM]);

    // An unknown target.
    let ghost = "ghost@dev-project.iam.gserviceaccount.com";
    let refused = rejection(
        iam.generate_access_token(&base.secret, ghost, &[], &cloud, None, None)
            .await,
    );
    assert_eq!(refused.rejection, Rejection::NotFound);
    assert_eq!(refused.field.as_deref(), Some("target_service_account"));
    assert_eq!((refused.error.as_str(), refused.status), ("NOT_FOUND", 404));
    assert!(refused.message.contains(ghost), "{}", refused.message);

    // A bearer token Google does not know: the broker's own credential.
    let refused = rejection(
        iam.generate_access_token(&Secret::new("ya29.forged"), READER, &[], &cloud, None, None)
            .await,
    );
    assert_eq!(refused.rejection, Rejection::CredentialRejected);
    assert_eq!(refused.status, 401);
    assert!(
        !refused.message.contains("ya29.forged"),
        "{}",
        refused.message
    );

    // Injected: Google's reasons and statuses as they come.
    #[rustfmt::skip]
    let cases = [
        (403, Some("IAM_PERMISSION_DENIED"), "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).", Rejection::PermissionDenied, None, "IAM_PERMISSION_DENIED"),
        (403, Some("SERVICE_DISABLED"), "IAM Service Account Credentials API has not been used in project 123456789012 before or it is disabled.", Rejection::PermissionDenied, None, "SERVICE_DISABLED"),
        (403, None, "denied", Rejection::PermissionDenied, None, "PERMISSION_DENIED"),
        (404, None, "Not found; Gaia id not found for email reader@dev-project.iam.gserviceaccount.com", Rejection::NotFound, Some("target_service_account"), "NOT_FOUND"),
        (400, None, "Lifetime must be less than or equal to 3600s.", Rejection::InvalidArgument, Some("lifetime"), "INVALID_ARGUMENT"),
        (400, None, "Scope required.", Rejection::InvalidArgument, None, "INVALID_ARGUMENT"),
        (401, Some("ACCESS_TOKEN_EXPIRED"), "Request had invalid authentication credentials.", Rejection::CredentialRejected, None, "ACCESS_TOKEN_EXPIRED"),
        (409, None, "conflict", Rejection::Other, None, "ALREADY_EXISTS"),
    ];
    for (status, reason, description, expected, field, code) in cases {
        let mut fault = json!({"endpoint": "iam.generateAccessToken", "status": status,
                               "error_description": description, "times": 1});
        if let Some(reason) = reason {
            fault["error"] = json!(reason);
        }
        inject(&emulator, fault);
        let before = emulator.count(Endpoint::IamGenerateAccessToken);
        let refused = rejection(
            iam.generate_access_token(&base.secret, READER, &[], &cloud, None, None)
                .await,
        );
        let case = format!("{status} {reason:?}");
        assert_eq!(refused.rejection, expected, "{case}");
        assert_eq!(refused.field.as_deref(), field, "{case}");
        assert_eq!(
            (refused.error.as_str(), refused.status),
            (code, status),
            "{case}"
        );
        assert!(
            refused.message.contains(description),
            "{case}: {}",
            refused.message
        );
        assert_eq!(
            emulator.count(Endpoint::IamGenerateAccessToken) - before,
            1,
            "{case}: no retries"
        );
    }

    // Transient: retried, then given up with the host and status.
    inject(
        &emulator,
        json!({"endpoint": "iam.generateAccessToken", "status": 503, "times": 2}),
    );
    let before = emulator.count(Endpoint::IamGenerateAccessToken);
    iam.generate_access_token(&base.secret, READER, &[], &cloud, None, None)
        .await
        .expect("token after retries");
    assert_eq!(emulator.count(Endpoint::IamGenerateAccessToken) - before, 3);
    inject(
        &emulator,
        json!({"endpoint": "iam.signBlob", "status": 429}),
    );
    let error = iam
        .sign_blob(&base.secret, READER, &[], b"x", None)
        .await
        .expect_err("unavailable");
    assert!(
        matches!(&error, SourceError::Unavailable { status: UpstreamStatus::Http(429), upstream, .. }
            if *upstream == host(&emulator)),
        "{error:?}"
    );
    emulator.clear_faults();

    // Control characters and odd reasons from Google are escaped or not trusted as codes.
    inject(
        &emulator,
        json!({"endpoint": "iam.signJwt", "status": 403, "error": "odd reason\n",
               "error_description": "line\nbreak \u{1b}[31m", "times": 1}),
    );
    let error = iam
        .sign_jwt(&base.secret, READER, &[], "{}", None)
        .await
        .expect_err("refused");
    let SourceError::Rejected(refused) = &error else {
        panic!("expected a rejection, got {error:?}");
    };
    assert_eq!(refused.error, "PERMISSION_DENIED");
    assert!(
        !refused.message.chars().any(char::is_control),
        "{:?}",
        refused.message
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn generate_id_token_includes_the_email_when_asked() {
    let emulator = emulator().await;
    let iam = iam(&emulator);
    let base = broker_token(&emulator).await;
    for include_email in [false, true] {
        let token = iam
            .generate_id_token(
                &base.secret,
                READER,
                &[],
                "https://svc.example",
                include_email,
                None,
            )
            .await
            .expect("ID token");
        assert_eq!(&*token.principal, READER);
        assert_id_token_expiry(&token);
        let claims = claims(token.secret.expose());
        assert_eq!(claims["aud"], "https://svc.example");
        assert_eq!(claims["iss"], GOOGLE_ISSUER);
        if include_email {
            assert_eq!(claims["email"], READER);
            assert_eq!(claims["email_verified"], true);
        } else {
            assert!(claims.get("email").is_none(), "{claims}");
        }
    }
    let refused = rejection(
        iam.generate_id_token(
            &base.secret,
            READER,
            &[WRITER.to_owned()],
            "https://a",
            true,
            None,
        )
        .await,
    );
    assert_eq!(refused.error, "IAM_PERMISSION_DENIED");
    emulator.shutdown().await;
}

#[tokio::test]
async fn sign_jwt_is_verified_by_the_published_certificate() {
    let emulator = emulator().await;
    let iam = iam(&emulator);
    let base = broker_token(&emulator).await;
    let exp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("now")
        .as_secs()
        + 600;
    let payload = json!({"iss": READER, "sub": READER, "aud": "https://svc.example", "exp": exp});
    let signed = iam
        .sign_jwt(&base.secret, READER, &[], &payload.to_string(), None)
        .await
        .expect("signed");
    let jwt = signed.signed_jwt.expose();
    assert_eq!(claims(jwt), payload);
    let header = jwt_header(jwt);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], signed.key_id);
    let (signing_input, signature) = jwt.rsplit_once('.').expect("three parts");
    let signature = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
    let certificate = account_certificate(&emulator, READER, &signed.key_id).await;
    assert!(verifies(&certificate, signing_input.as_bytes(), &signature));
    assert!(!verifies(&certificate, b"something else", &signature));

    // exp more than 12 hours ahead: the caller's argument, not attributed to a field.
    let payload = json!({"exp": exp + 13 * 3600});
    let refused = rejection(
        iam.sign_jwt(&base.secret, READER, &[], &payload.to_string(), None)
            .await,
    );
    assert_eq!(refused.rejection, Rejection::InvalidArgument);
    assert_eq!(refused.field, None);
    assert!(refused.message.contains("12 hours"), "{}", refused.message);
    emulator.shutdown().await;
}

#[tokio::test]
async fn sign_blob_is_verified_by_the_published_certificate() {
    let emulator = emulator().await;
    let iam = iam(&emulator);
    let base = broker_token(&emulator).await;
    let blob: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let signed = iam
        .sign_blob(&base.secret, WRITER, &[], &blob, None)
        .await
        .expect("signed");
    assert_eq!(signed.signature.len(), 256, "RSA-2048");
    let certificate = account_certificate(&emulator, WRITER, &signed.key_id).await;
    assert!(verifies(&certificate, &blob, &signed.signature));
    assert!(!verifies(&certificate, b"another blob", &signed.signature));
    // Another account's certificate does not verify it.
    let signed_by_reader = iam
        .sign_blob(&base.secret, READER, &[], &blob, None)
        .await
        .expect("signed");
    assert!(!verifies(&certificate, &blob, &signed_by_reader.signature));
    emulator.shutdown().await;
}
