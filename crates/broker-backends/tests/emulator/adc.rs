//! Application Default Credentials: Google's discovery order with injected environments and
//! temporary files, never the process environment, and never a real metadata server.

use std::time::Duration;

use broker_backends::{
    AdcOptions, AdcOrigin, BackendError, CLOUDSDK_CONFIG, Env, GCE_METADATA_HOST,
    GOOGLE_APPLICATION_CREDENTIALS, GOOGLE_METADATA_URL, GoogleEndpoints, HOME, NO_GCE_CHECK,
    find_default_credentials,
};
use gcp_emulator::{Endpoint, RunningEmulator};
use serde_json::json;

use crate::support::*;

/// Options for the emulator, whose metadata server answers, and `env`.
fn options(emulator: &RunningEmulator, env: Env) -> AdcOptions {
    let mut options = AdcOptions::new(GoogleEndpoints::emulator(emulator.url()), http());
    options.env = env;
    options.metadata_ping_timeout = Duration::from_secs(2);
    options
}

/// Options whose metadata server is a closed loopback port: nothing answers the ping.
fn without_metadata(emulator: &RunningEmulator, env: Env) -> AdcOptions {
    let mut options = options(emulator, env);
    options.endpoints.metadata_url = format!("http://127.0.0.1:{}", closed_port());
    options
}

#[tokio::test]
async fn google_application_credentials_comes_first_whatever_its_type() {
    let emulator = emulator().await;
    let dir = TempDir::new();
    let key = dir.write("key.json", &key_file(&emulator, BROKER).to_string());
    let user = dir.write(
        "user.json",
        &emulator
            .authorized_user_file(DEFAULT_USER)
            .expect("user")
            .to_string(),
    );
    let impersonated = dir.write(
        "impersonated.json",
        &json!({
            "type": "impersonated_service_account",
            "service_account_impersonation_url": format!(
                "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{READER}:generateAccessToken"),
            "source_credentials": key_file(&emulator, BROKER),
        })
        .to_string(),
    );
    // The well-known file exists too: the variable wins.
    dir.write(
        "gcloud/application_default_credentials.json",
        &emulator
            .authorized_user_file(DEFAULT_USER)
            .expect("user")
            .to_string(),
    );
    let gcloud = dir.0.join("gcloud");
    for (path, kind, principal) in [
        (&key, "service_account", BROKER),
        (&user, "authorized_user", DEFAULT_USER),
        (&impersonated, "impersonated", READER),
    ] {
        let env = Env::from_vars([
            (GOOGLE_APPLICATION_CREDENTIALS, path.display().to_string()),
            (CLOUDSDK_CONFIG, gcloud.display().to_string()),
        ]);
        let found = find_default_credentials(&options(&emulator, env))
            .await
            .expect("found");
        assert_eq!(found.origin, AdcOrigin::EnvironmentVariable(path.clone()));
        assert_eq!(found.source.kind(), kind);
        assert_eq!(found.source.principal(), principal);
        let token = found
            .source
            .fetch(&request(&[CLOUD_PLATFORM]), None)
            .await
            .expect("token");
        assert_eq!(
            tokeninfo(&emulator, &token.secret).await["email"],
            principal
        );
    }
    // The metadata server was never asked.
    assert_eq!(emulator.count(Endpoint::Metadata), 0);
    emulator.shutdown().await;
}

/// An `external_account` file in GOOGLE_APPLICATION_CREDENTIALS (how Google's clients find
/// workload identity federation on AWS or in CI): federation with the file's token, and the
/// AWS variables of the same environment; an executable source is refused, never run.
#[tokio::test]
async fn google_application_credentials_may_be_an_external_account_file() {
    use crate::external_account::{DEV_OIDC, JWT_TYPE, file_for, impersonating, subject_token};

    let emulator = emulator().await;
    let dir = TempDir::new();
    let token_file = dir.write(
        "oidc-token",
        &subject_token(&emulator, DEV_OIDC, "ci-job-7"),
    );
    let federated = impersonating(
        &emulator,
        file_for(
            &emulator,
            DEV_OIDC,
            JWT_TYPE,
            json!({"file": token_file.display().to_string()}),
        ),
        READER,
    );
    let path = dir.write("wif.json", &federated.to_string());
    let env = Env::from_vars([(GOOGLE_APPLICATION_CREDENTIALS, path.display().to_string())]);
    let found = find_default_credentials(&options(&emulator, env))
        .await
        .expect("found");
    assert_eq!(found.origin, AdcOrigin::EnvironmentVariable(path.clone()));
    assert_eq!(found.source.kind(), "external_account");
    assert_eq!(found.source.principal(), READER);
    let token = found
        .source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token");
    assert_eq!(tokeninfo(&emulator, &token.secret).await["email"], READER);

    let mut executable = federated.clone();
    executable["credential_source"] = json!({"executable": {"command": "/bin/false"}});
    let path = dir.write("executable.json", &executable.to_string());
    let env = Env::from_vars([(GOOGLE_APPLICATION_CREDENTIALS, path.display().to_string())]);
    let error = find_default_credentials(&options(&emulator, env))
        .await
        .expect_err("executables are not allowed");
    assert!(
        matches!(error, BackendError::ExecutableNotAllowed { .. }),
        "{error:?}"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_bad_google_application_credentials_is_an_error_not_a_fall_through() {
    let emulator = emulator().await;
    let dir = TempDir::new();
    let external = dir.write(
        "external.json",
        &json!({
            "type": "external_account_authorized_user",
            "audience": "//iam.googleapis.com/locations/global/workforcePools/p/providers/x",
            "refresh_token": "not yet",
        })
        .to_string(),
    );
    let unknown_field = dir.write(
        "federation.json",
        &json!({
            "type": "external_account",
            "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": "https://sts.googleapis.com/v1/token",
            "credential_source": {"file": "/var/run/token"},
            "service_acount_impersonation_url": "typo",
        })
        .to_string(),
    );
    let missing = dir.0.join("missing.json");
    let garbage = dir.write(
        "garbage.json",
        "{\"type\": \"service_account\", \"private_key\": \"-----BEGIN",
    );
    for (path, expected) in [
        (
            &external,
            "\"external_account_authorized_user\" are not supported yet",
        ),
        (&unknown_field, "service_acount_impersonation_url"),
        (&missing, "cannot read credential file"),
        (&garbage, "not valid JSON"),
    ] {
        let env = Env::from_vars([(GOOGLE_APPLICATION_CREDENTIALS, path.display().to_string())]);
        let error = find_default_credentials(&options(&emulator, env))
            .await
            .expect_err("refused");
        let shown = error.to_string();
        assert!(shown.contains(expected), "{shown}");
        assert!(shown.contains(&path.display().to_string()), "{shown}");
        assert!(!shown.contains("BEGIN"), "{shown}");
    }
    let env = Env::from_vars([(
        GOOGLE_APPLICATION_CREDENTIALS,
        external.display().to_string(),
    )]);
    let error = find_default_credentials(&options(&emulator, env))
        .await
        .expect_err("refused");
    assert!(
        matches!(&error, BackendError::UnsupportedCredentialType { found, .. } if found == "external_account_authorized_user"),
        "{error:?}"
    );
    assert_eq!(emulator.count(Endpoint::Metadata), 0);
    emulator.shutdown().await;
}

#[tokio::test]
async fn the_well_known_file_comes_from_cloudsdk_config_or_home() {
    let emulator = emulator().await;
    let user = emulator
        .authorized_user_file(DEFAULT_USER)
        .expect("user")
        .to_string();

    let config = TempDir::new();
    let path = config.write("application_default_credentials.json", &user);
    let env = Env::from_vars([
        (CLOUDSDK_CONFIG, config.0.display().to_string()),
        (HOME, "/nonexistent".to_owned()),
    ]);
    let found = find_default_credentials(&options(&emulator, env))
        .await
        .expect("found");
    assert_eq!(found.origin, AdcOrigin::WellKnownFile(path));
    assert_eq!(found.source.kind(), "authorized_user");
    assert_eq!(found.source.principal(), DEFAULT_USER);

    let home = TempDir::new();
    let path = home.write(".config/gcloud/application_default_credentials.json", &user);
    let env = Env::from_vars([(HOME, home.0.display().to_string())]);
    let found = find_default_credentials(&options(&emulator, env))
        .await
        .expect("found");
    assert_eq!(found.origin, AdcOrigin::WellKnownFile(path.clone()));
    assert!(
        found
            .origin
            .to_string()
            .contains(&path.display().to_string())
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn the_metadata_server_comes_last() {
    let emulator = emulator().await;
    let empty_home = TempDir::new();
    let env = Env::from_vars([(HOME, empty_home.0.display().to_string())]);
    let found = find_default_credentials(&options(&emulator, env))
        .await
        .expect("found");
    assert_eq!(
        found.origin,
        AdcOrigin::MetadataServer(emulator.url().to_owned())
    );
    assert_eq!(found.source.kind(), "metadata");
    assert_eq!(found.source.principal(), BROKER);
    let token = found
        .source
        .fetch(&request(&[CLOUD_PLATFORM]), None)
        .await
        .expect("token");
    assert_eq!(
        tokeninfo(&emulator, &token.secret).await["grant"],
        "metadata"
    );

    // Through GCE_METADATA_HOST, with the metadata URL left at Google's default.
    let mut through_env = options(
        &emulator,
        Env::from_vars([(GCE_METADATA_HOST, host(&emulator))]),
    );
    through_env.endpoints.metadata_url = GOOGLE_METADATA_URL.to_owned();
    let found = find_default_credentials(&through_env).await.expect("found");
    assert_eq!(
        found.origin,
        AdcOrigin::MetadataServer(emulator.url().to_owned())
    );
    assert_eq!(found.source.principal(), BROKER);
    emulator.shutdown().await;
}

#[tokio::test]
async fn nothing_found_lists_what_was_tried() {
    let emulator = emulator().await;
    let home = TempDir::new();
    let options = without_metadata(
        &emulator,
        Env::from_vars([(HOME, home.0.display().to_string())]),
    );
    let error = find_default_credentials(&options)
        .await
        .expect_err("nothing");
    let BackendError::NoDefaultCredentials { tried } = &error else {
        panic!("expected NoDefaultCredentials, got {error:?}");
    };
    assert!(
        tried.contains("GOOGLE_APPLICATION_CREDENTIALS (unset)"),
        "{tried}"
    );
    assert!(
        tried.contains(&format!(
            "{}/.config/gcloud/application_default_credentials.json (not found)",
            home.0.display()
        )),
        "{tried}"
    );
    assert!(
        tried.contains(&format!(
            "the metadata server at {}",
            options.endpoints.metadata_url
        )),
        "{tried}"
    );
    assert!(!error.is_transient());

    let error = find_default_credentials(&without_metadata(&emulator, no_env()))
        .await
        .expect_err("nothing");
    assert!(
        error.to_string().contains("CLOUDSDK_CONFIG and HOME unset"),
        "{error}"
    );

    // NO_GCE_CHECK skips the metadata server, even one that answers.
    let error = find_default_credentials(&options_with_no_gce_check(&emulator))
        .await
        .expect_err("skipped");
    assert!(
        error.to_string().contains("skipped: NO_GCE_CHECK=true"),
        "{error}"
    );
    assert_eq!(emulator.count(Endpoint::Metadata), 0);
    emulator.shutdown().await;
}

fn options_with_no_gce_check(emulator: &RunningEmulator) -> AdcOptions {
    options(emulator, Env::from_vars([(NO_GCE_CHECK, "true")]))
}

#[tokio::test]
async fn a_server_without_metadata_flavor_is_not_the_metadata_server() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let emulator = emulator().await;
    // A web server that answers 200 to anything, without the header.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buffer = [0; 1024];
            let _ = socket.read(&mut buffer).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
        }
    });
    let mut options = options(&emulator, no_env());
    options.endpoints.metadata_url = format!("http://{address}");
    let error = find_default_credentials(&options)
        .await
        .expect_err("not a metadata server");
    assert!(
        error
            .to_string()
            .contains("HTTP 200 without Metadata-Flavor: Google"),
        "{error}"
    );
    emulator.shutdown().await;
}
