//! Impersonation over a base source: generateAccessToken with a chosen lifetime, delegation
//! chains, keyless domain-wide delegation (signJwt, then the JWT-bearer grant), ID tokens,
//! downscoping, and `impersonated_service_account` files.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use broker_backends::{
    BackendError, BaseWrapper, CredentialFile, GoogleEndpoints, ImpersonatedServiceAccountFile,
    ImpersonatedSource, SourceCredentials,
};
use broker_core::{Clock, IdTokenRequest, ManualClock, Rejection, SourceError, TokenSource};
use gcp_emulator::{Endpoint, RunningEmulator};
use serde_json::{Value, json};

use crate::support::*;

/// broker@ holds Token Creator on `delegator@` (domain-wide delegation enabled, no key), on
/// `reader@` (as does the authorized user) and on `long@` (12-hour tokens allowed); the
/// Workspace directory knows alice@example.com.
pub(crate) const WORLD: &str = r#"
[[projects]]
id = "dev-project"
number = "123456789012"

[[service_accounts]]
email = "broker@dev-project.iam.gserviceaccount.com"

[[service_accounts]]
email = "delegator@dev-project.iam.gserviceaccount.com"
key = false
dwd = true
token_creators = ["serviceAccount:broker@dev-project.iam.gserviceaccount.com"]

[[service_accounts]]
email = "reader@dev-project.iam.gserviceaccount.com"
key = false
token_creators = [
    "serviceAccount:broker@dev-project.iam.gserviceaccount.com",
    "user:dev-user@example.com",
]

[[service_accounts]]
email = "long@dev-project.iam.gserviceaccount.com"
key = false
allow_extended_lifetime = true
token_creators = ["serviceAccount:broker@dev-project.iam.gserviceaccount.com"]

[[workspace_users]]
email = "alice@example.com"

[[authorized_users]]
email = "dev-user@example.com"
client_id = "dev-client.apps.googleusercontent.com"
client_secret = "dev-secret"
refresh_token = "1//dev-refresh-token"
"#;
const DELEGATOR: &str = "delegator@dev-project.iam.gserviceaccount.com";
const LONG: &str = "long@dev-project.iam.gserviceaccount.com";
const ALICE: &str = "alice@example.com";

/// The impersonation of `target` through `delegates` over broker@'s key, whose requests a
/// [`Recorder`] keeps.
fn impersonate(
    emulator: &RunningEmulator,
    target: &str,
    delegates: &[&str],
    clock: &ManualClock,
) -> (ImpersonatedSource, Arc<Recorder>) {
    let base = Recorder::new(Arc::new(source(emulator, http(), clock)));
    let delegates: Vec<String> = delegates.iter().map(|d| (*d).to_owned()).collect();
    let source = ImpersonatedSource::new(
        base.clone(),
        target,
        &delegates,
        GoogleEndpoints::emulator(emulator.url()),
        http(),
    )
    .expect("impersonated source")
    .with_clock(Arc::new(clock.clone()));
    (source, base)
}

fn lifetime_left(token: &broker_core::Token, since: SystemTime) -> Duration {
    token.expires_at.duration_since(since).expect("future")
}

#[tokio::test]
async fn an_access_token_for_the_target_through_generate_access_token() {
    let emulator = emulator_with(WORLD).await;
    let clock = clock();
    let (source, base) = impersonate(&emulator, READER, &[], &clock);
    assert_eq!(source.principal(), READER);
    assert_eq!(source.kind(), "impersonated");
    assert_eq!(source.target(), READER);
    assert!(source.delegates().is_empty());
    let capabilities = source.capabilities();
    assert!(
        capabilities.chooses_lifetime
            && capabilities.domain_wide_delegation
            && capabilities.id_tokens
            && capabilities.downscoping
    );

    let started = SystemTime::now();
    let token = source
        .fetch(&request(&[STORAGE_RO]), None)
        .await
        .expect("token");
    assert_eq!(&*token.principal, READER);
    assert!(
        lifetime_left(&token, started).abs_diff(Duration::from_secs(3600))
            <= Duration::from_secs(2)
    );
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["grant"], "generate-access-token");
    assert_eq!(info["email"], READER);
    assert_eq!(info["principal"], format!("serviceAccount:{READER}"));
    assert_eq!(info["delegates"], json!([]));
    assert_eq!(info["scope"], STORAGE_RO);
    assert_expiry_matches(&info, &token);
    // The base was asked for a cloud-platform token, once: this source does not cache.
    assert_eq!(base.seen(), [CLOUD_PLATFORM]);
    source
        .fetch(&request(&[STORAGE_RO]), None)
        .await
        .expect("token");
    assert_eq!(base.seen(), [CLOUD_PLATFORM, CLOUD_PLATFORM]);
    assert_eq!(emulator.count(Endpoint::IamGenerateAccessToken), 2);
    emulator.shutdown().await;
}

#[tokio::test]
async fn the_lifetime_is_the_callers_up_to_what_the_account_allows() {
    let emulator = emulator_with(WORLD).await;
    let clock = clock();
    let (reader, _) = impersonate(&emulator, READER, &[], &clock);
    let mut short = request(&[CLOUD_PLATFORM]);
    short.lifetime = Some(Duration::from_secs(1800));
    let started = SystemTime::now();
    let token = reader.fetch(&short, None).await.expect("token");
    assert!(
        lifetime_left(&token, started).abs_diff(Duration::from_secs(1800))
            <= Duration::from_secs(2)
    );
    assert_expiry_matches(&tokeninfo(&emulator, &token.secret).await, &token);

    let mut long = request(&[CLOUD_PLATFORM]);
    long.lifetime = Some(Duration::from_secs(12 * 3600));
    let refused = rejection(reader.fetch(&long, None).await);
    assert_eq!(refused.rejection, Rejection::InvalidArgument);
    assert_eq!(refused.field.as_deref(), Some("lifetime"));

    let (extended, _) = impersonate(&emulator, LONG, &[], &clock);
    let started = SystemTime::now();
    let token = extended.fetch(&long, None).await.expect("12-hour token");
    assert!(
        lifetime_left(&token, started).abs_diff(Duration::from_secs(43200))
            <= Duration::from_secs(2)
    );
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["email"], LONG);
    assert_expiry_matches(&info, &token);
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_chain_whose_middle_hop_lacks_token_creator_is_refused_with_googles_reason() {
    // The default world: writer@ holds no Token Creator on reader@.
    let emulator = emulator().await;
    let (source, _) = impersonate(&emulator, READER, &[WRITER], &clock());
    assert_eq!(source.delegates(), [WRITER]);
    let refused = rejection(source.fetch(&request(&[CLOUD_PLATFORM]), None).await);
    assert_eq!(refused.rejection, Rejection::PermissionDenied);
    assert_eq!(refused.error, "IAM_PERMISSION_DENIED");
    assert_eq!(refused.status, 403);
    assert_eq!(refused.upstream, host(&emulator));
    let refused = rejection(
        source
            .fetch_id_token(
                &IdTokenRequest {
                    audience: "https://a.example".into(),
                    include_email: false,
                },
                None,
            )
            .await,
    );
    assert_eq!(refused.error, "IAM_PERMISSION_DENIED");

    // An unknown target is NOT_FOUND.
    let (ghost, _) = impersonate(
        &emulator,
        "ghost@dev-project.iam.gserviceaccount.com",
        &[],
        &clock(),
    );
    let refused = rejection(ghost.fetch(&request(&[CLOUD_PLATFORM]), None).await);
    assert_eq!(refused.rejection, Rejection::NotFound);
    assert_eq!(refused.field.as_deref(), Some("target_service_account"));
    emulator.shutdown().await;
}

#[tokio::test]
async fn keyless_domain_wide_delegation_signs_with_iam_and_exchanges_at_the_token_endpoint() {
    let emulator = emulator_with(WORLD).await;
    let clock = clock();
    let (source, base) = impersonate(&emulator, DELEGATOR, &[], &clock);
    let mut dwd = request(&[CLOUD_PLATFORM]);
    dwd.subject = Some(ALICE.into());
    let token = source.fetch(&dwd, None).await.expect("delegated token");
    assert_eq!(&*token.principal, ALICE);
    assert_eq!(token.expires_at, clock.now() + EXPIRES_IN);
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["grant"], "jwt-bearer");
    assert_eq!(info["subject"], ALICE);
    assert_eq!(info["principal"], format!("user:{ALICE}"));
    assert_eq!(info["email"], ALICE);
    assert_eq!(info["scope"], CLOUD_PLATFORM);
    assert_expiry_matches(&info, &token);
    assert_eq!(emulator.count(Endpoint::IamSignJwt), 1);
    assert_eq!(emulator.count(Endpoint::IamGenerateAccessToken), 0);
    // One grant for the base's token, one for the delegated token.
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 2);
    assert_eq!(base.seen(), [CLOUD_PLATFORM]);

    // A user the Workspace directory does not know: Google's invalid_grant, the caller's
    // subject.
    let mut unknown = dwd.clone();
    unknown.subject = Some("mallory@example.com".into());
    let refused = rejection(source.fetch(&unknown, None).await);
    assert_eq!(refused.rejection, Rejection::InvalidArgument);
    assert_eq!(refused.field.as_deref(), Some("subject"));
    assert_eq!(
        (refused.error.as_str(), refused.status),
        ("invalid_grant", 400)
    );

    // A target without domain-wide delegation: unauthorized_client.
    let (reader, _) = impersonate(&emulator, READER, &[], &clock);
    let refused = rejection(reader.fetch(&dwd, None).await);
    assert_eq!(refused.rejection, Rejection::PermissionDenied);
    assert_eq!(refused.error, "unauthorized_client");

    // Delegated tokens live an hour: a longer one is refused before any call.
    let calls = emulator.counters();
    let mut long = dwd.clone();
    long.lifetime = Some(Duration::from_secs(7200));
    let error = source.fetch(&long, None).await.expect_err("unsupported");
    assert!(
        matches!(
            error,
            SourceError::Unsupported {
                flow: "extended_lifetime",
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(emulator.counters(), calls);

    // signJwt refused: IAM's error, and no grant is attempted.
    inject(
        &emulator,
        json!({"endpoint": "iam.signJwt", "status": 403, "error": "IAM_PERMISSION_DENIED", "times": 1}),
    );
    let before = emulator.count(Endpoint::OAuth2Token);
    let refused = rejection(source.fetch(&dwd, None).await);
    assert_eq!(refused.error, "IAM_PERMISSION_DENIED");
    assert_eq!(
        emulator.count(Endpoint::OAuth2Token) - before,
        1,
        "only the base's grant"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn id_tokens_come_from_generate_id_token() {
    let emulator = emulator_with(WORLD).await;
    let (source, _) = impersonate(&emulator, READER, &[], &clock());
    for include_email in [false, true] {
        let token = source
            .fetch_id_token(
                &IdTokenRequest {
                    audience: emulator.function_url(),
                    include_email,
                },
                None,
            )
            .await
            .expect("ID token");
        assert_eq!(&*token.principal, READER);
        assert_id_token_expiry(&token);
        let claims = claims(token.secret.expose());
        assert_eq!(claims["aud"], emulator.function_url());
        assert_eq!(claims["iss"], GOOGLE_ISSUER);
        assert_eq!(
            claims.get("email").and_then(Value::as_str),
            include_email.then_some(READER)
        );
    }
    assert_eq!(emulator.count(Endpoint::IamGenerateIdToken), 2);
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_boundary_downscopes_the_impersonated_token() {
    let emulator = emulator_with(WORLD).await;
    let (source, _) = impersonate(&emulator, READER, &[], &clock());
    let mut bounded = request(&[CLOUD_PLATFORM]);
    bounded.boundary = Some(boundary());
    let token = source.fetch(&bounded, None).await.expect("downscoped");
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["grant"], "sts-downscope");
    assert_eq!(info["email"], READER);
    assert_expiry_matches(&info, &token);
    emulator.shutdown().await;
}

#[tokio::test]
async fn the_bases_errors_pass_through_and_nothing_reaches_iam() {
    let emulator = emulator_with(WORLD).await;
    let mut file = key_file(&emulator, BROKER);
    file["private_key_id"] = json!("0000000000000000000000000000000000000000");
    let base = Arc::new(source_with(&emulator, &file, http(), &clock()));
    let source = ImpersonatedSource::new(
        base,
        READER,
        &[],
        GoogleEndpoints::emulator(emulator.url()),
        http(),
    )
    .expect("source");
    let refused = rejection(source.fetch(&request(&[CLOUD_PLATFORM]), None).await);
    assert_eq!(refused.rejection, Rejection::CredentialRejected);
    assert_eq!(refused.error, "invalid_grant");
    assert_eq!(emulator.count(Endpoint::IamGenerateAccessToken), 0);

    let error = ImpersonatedSource::new(
        Arc::new(source_with(
            &emulator,
            &key_file(&emulator, BROKER),
            http(),
            &clock(),
        )),
        "not an account",
        &[],
        GoogleEndpoints::emulator(emulator.url()),
        http(),
    )
    .expect_err("invalid target");
    assert!(
        matches!(
            &error,
            BackendError::InvalidServiceAccount {
                field: "target_service_account",
                ..
            }
        ),
        "{error:?}"
    );
    emulator.shutdown().await;
}

/// An `impersonated_service_account` file as gcloud writes it, over `source`.
fn impersonated_file(target: &str, delegates: &[&str], source: Value) -> String {
    json!({
        "type": "impersonated_service_account",
        "service_account_impersonation_url": format!(
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{target}:generateAccessToken"
        ),
        "delegates": delegates,
        "source_credentials": source,
    })
    .to_string()
}

/// A base wrapper that keeps the [`Recorder`] it makes.
fn recording_wrapper() -> (BaseWrapper, Arc<Mutex<Option<Arc<Recorder>>>>) {
    let kept = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&kept);
    let wrapper: BaseWrapper = Arc::new(move |base| {
        let recorder = Recorder::new(base);
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&recorder));
        recorder
    });
    (wrapper, kept)
}

#[tokio::test]
async fn impersonated_files_build_their_base_and_use_the_configured_iam_endpoint() {
    let emulator = emulator_with(WORLD).await;
    let endpoints = GoogleEndpoints::emulator(emulator.url());

    // Over a service-account key (the file's IAM URL names Google's host: it is not used).
    let json = impersonated_file(READER, &[], key_file(&emulator, BROKER));
    let file = ImpersonatedServiceAccountFile::parse(&json, "impersonated.json").expect("file");
    assert_eq!(file.target(), READER);
    assert!(matches!(
        file.source_credentials(),
        SourceCredentials::ServiceAccount(_)
    ));
    let (wrapper, kept) = recording_wrapper();
    let source = file
        .into_source(&endpoints, &http(), Some(&wrapper))
        .await
        .expect("source");
    let token = source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token");
    assert_eq!(tokeninfo(&emulator, &token.secret).await["email"], READER);
    let recorder = kept
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .expect("wrapped");
    assert_eq!(recorder.seen(), [CLOUD_PLATFORM]);
    assert_eq!(source.base().principal(), BROKER);

    // Over an authorized user who holds Token Creator, through CredentialFile.
    let user = emulator
        .authorized_user_file(DEFAULT_USER)
        .expect("authorized user");
    let json = impersonated_file(READER, &[], user);
    let file = CredentialFile::parse(&json, "impersonated.json").expect("file");
    assert_eq!(file.kind(), "impersonated_service_account");
    let source = file
        .into_source(&endpoints, &http(), None, &broker_backends::Env::process())
        .await
        .expect("source");
    assert_eq!(source.kind(), "impersonated");
    assert_eq!(source.principal(), READER);
    let token = source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token over the user");
    let info = tokeninfo(&emulator, &token.secret).await;
    assert_eq!(info["email"], READER);
    assert_eq!(info["grant"], "generate-access-token");

    // The parts, for a server that builds and caches the base itself.
    let json = impersonated_file(
        LONG,
        &["projects/-/serviceAccounts/a@dev-project.iam.gserviceaccount.com"],
        key_file(&emulator, BROKER),
    );
    let (target, delegates, source) = ImpersonatedServiceAccountFile::parse(&json, "f")
        .expect("file")
        .into_parts();
    assert_eq!(target, LONG);
    assert_eq!(delegates, ["a@dev-project.iam.gserviceaccount.com"]);
    let base = source.into_source(&endpoints, &http()).await.expect("base");
    assert_eq!(base.kind(), "service_account");
    emulator.shutdown().await;
}
