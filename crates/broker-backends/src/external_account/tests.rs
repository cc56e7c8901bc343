//! `external_account` files as gcloud's `create-cred-config` writes them: every shape accepted
//! with each field honoured; an unknown field, an unsupported source, a missing field or a bad
//! URL refused naming the field; nothing secret ever shown. The flows themselves are tested
//! against the emulator (`tests/emulator/external_account.rs`).

use std::time::Duration;

use broker_core::{AccessBoundary, AccessBoundaryRule, Rejection};
use serde_json::{Value, json};

use super::*;
use crate::HttpConfig;

const WORKLOAD: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/dev-pool/providers/dev-oidc";
const WORKFORCE: &str = "//iam.googleapis.com/locations/global/workforcePools/dev-workforce/providers/dev-workforce-oidc";
const READER: &str = "reader@dev-project.iam.gserviceaccount.com";
const STS: &str = "https://sts.googleapis.com/v1/token";

fn impersonation_url(email: &str) -> String {
    format!(
        "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{email}:generateAccessToken"
    )
}

/// `gcloud iam workload-identity-pools create-cred-config ... --credential-source-file`.
fn workload_file() -> Value {
    json!({
        "universe_domain": "googleapis.com",
        "type": "external_account",
        "audience": WORKLOAD,
        "subject_token_type": JWT_TYPE,
        "token_url": STS,
        "credential_source": {
            "file": "/var/run/service-account/token",
            "format": {"type": "text"}
        }
    })
}

/// `gcloud iam workforce-pools create-cred-config ... --workforce-pool-user-project`.
fn workforce_file() -> Value {
    json!({
        "universe_domain": "googleapis.com",
        "type": "external_account",
        "audience": WORKFORCE,
        "subject_token_type": ID_TOKEN_TYPE,
        "token_url": STS,
        "workforce_pool_user_project": "dev-project",
        "credential_source": {
            "file": "/var/run/idp/token",
            "format": {"type": "json", "subject_token_field_name": "id_token"}
        }
    })
}

fn with(mut file: Value, path: &str, value: Value) -> Value {
    let mut at = &mut file;
    let mut keys = path.split('.').peekable();
    while let Some(key) = keys.next() {
        if keys.peek().is_none() {
            match value {
                Value::Null => {
                    at.as_object_mut().expect("object").remove(key);
                }
                value => at[key] = value,
            }
            break;
        }
        at = &mut at[key];
    }
    file
}

fn parse(file: &Value) -> Result<ExternalAccountConfig, BackendError> {
    ExternalAccountConfig::parse(&file.to_string(), "wif.json")
}

fn parsed(file: &Value) -> ExternalAccountConfig {
    parse(file).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn http() -> HttpClient {
    HttpClient::new(HttpConfig::default()).expect("http client")
}

fn source_of(
    config: ExternalAccountConfig,
    options: ExternalAccountOptions,
) -> ExternalAccountSource {
    ExternalAccountSource::new(config, GoogleEndpoints::google(), http(), options)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn options() -> ExternalAccountOptions {
    ExternalAccountOptions {
        env: Env::from_vars(Vec::<(String, String)>::new()),
        ..ExternalAccountOptions::default()
    }
}

#[test]
fn gclouds_workload_file_source_parses_in_text_and_json() {
    let config = parsed(&workload_file());
    assert_eq!(config.audience(), WORKLOAD);
    assert_eq!(config.subject_token_type(), JWT_TYPE);
    assert_eq!(config.token_url(), Some(STS));
    assert_eq!(config.token_info_url(), None);
    assert_eq!(config.credential_source_kind(), "file");
    assert!(!config.is_workforce());
    assert_eq!(config.impersonated_email(), None);
    assert_eq!(config.service_account_impersonation_url(), None);
    assert_eq!(config.impersonated_lifetime(), None);
    assert_eq!(config.universe_domain(), "googleapis.com");
    assert_eq!(config.client_id(), None);
    assert_eq!(config.quota_project_id(), None);
    assert_eq!(config.workforce_pool_user_project(), None);
    let shown = format!("{:?}", config.source);
    assert_eq!(
        shown,
        r#"File(FileSource { path: "/var/run/service-account/token", format: Text })"#
    );

    // No format is text; the id_token type fits a file too.
    let bare = with(workload_file(), "credential_source.format", Value::Null);
    let bare = with(bare, "subject_token_type", json!(ID_TOKEN_TYPE));
    let config = parsed(&bare);
    assert_eq!(config.subject_token_type(), ID_TOKEN_TYPE);
    assert!(format!("{:?}", config.source).contains("format: Text"));

    let json_format = with(
        workload_file(),
        "credential_source.format",
        json!({"type": "json", "subject_token_field_name": "access_token"}),
    );
    let config = parsed(&json_format);
    assert!(
        format!("{:?}", config.source).contains(r#"format: Json { field: "access_token" }"#),
        "{config:?}"
    );

    // A SAML assertion from a file.
    let saml = with(workload_file(), "subject_token_type", json!(SAML2_TYPE));
    assert_eq!(parsed(&saml).subject_token_type(), SAML2_TYPE);
}

#[test]
fn a_url_source_keeps_its_headers_and_shows_only_their_names() {
    let file = with(
        workload_file(),
        "credential_source",
        json!({
            "url": "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=api://wif",
            "headers": {"Metadata": "True", "X-Agent-Key": "header-secret-value"},
            "format": {"type": "json", "subject_token_field_name": "access_token"}
        }),
    );
    let config = parsed(&file);
    assert_eq!(config.credential_source_kind(), "url");
    let shown = format!("{config:?} {config:#?}");
    assert!(shown.contains("api-version=2018-02-01"), "{shown}");
    assert!(
        shown.contains("\"metadata\"") && shown.contains("\"x-agent-key\""),
        "{shown}"
    );
    assert!(!shown.contains("header-secret-value"), "{shown}");

    // Loopback agents and https are fine; plain http elsewhere is not.
    for url in [
        "http://127.0.0.1:8080/token",
        "https://idp.example.com/token",
    ] {
        parsed(&with(file.clone(), "credential_source.url", json!(url)));
    }
    for (url, expected) in [
        (
            "http://idp.example.com/token",
            "http:// would carry credentials in the clear",
        ),
        ("ftp://127.0.0.1/token", "the scheme must be http or https"),
        ("/token", "relative URL"),
    ] {
        let error = parse(&with(file.clone(), "credential_source.url", json!(url)))
            .expect_err(url)
            .to_string();
        assert!(
            error.contains("field `credential_source.url`") && error.contains(expected),
            "{url}: {error}"
        );
    }
    // Credentials in a URL would be shown and logged with it: refused, never quoted.
    for (path, url) in [
        (
            "credential_source.url",
            "http://agent:url-password@127.0.0.1:8080/token",
        ),
        (
            "credential_source.url",
            "https://url-user@idp.example.com/token",
        ),
        (
            "token_url",
            "https://sts:url-password@sts.googleapis.com/v1/token",
        ),
        (
            "token_info_url",
            "https://sts:url-password@sts.googleapis.com/v1/introspect",
        ),
    ] {
        let error = parse(&with(file.clone(), path, json!(url)))
            .expect_err(url)
            .to_string();
        assert!(
            error.contains(&format!(
                "field `{path}` must not hold a user name or password"
            )),
            "{url}: {error}"
        );
        assert!(
            !error.contains("url-password") && !error.contains("url-user"),
            "{error}"
        );
    }
    for (headers, expected) in [
        (json!({"Metadata": 1}), "values are strings"),
        (json!(["Metadata"]), "must be an object of strings"),
        (json!({"Bad Header": "x"}), "that HTTP does not allow"),
        (json!({"X": "line\nbreak"}), "that HTTP does not allow"),
    ] {
        let error = parse(&with(
            file.clone(),
            "credential_source.headers",
            headers.clone(),
        ))
        .expect_err("bad headers")
        .to_string();
        assert!(
            error.contains("field `credential_source.headers`") && error.contains(expected),
            "{headers}: {error}"
        );
        assert!(!error.contains("line\nbreak"), "{error}");
    }
}

#[test]
fn an_executable_source_parses_with_its_bounds() {
    let file = with(
        workload_file(),
        "credential_source",
        json!({"executable": {
            "command": "/usr/local/bin/get-token --audience='api://wif' --key=exec-arg-secret",
            "timeout_millis": 5000,
            "output_file": "/var/cache/broker/token.json"
        }}),
    );
    let config = parsed(&file);
    assert_eq!(config.credential_source_kind(), "executable");
    let shown = format!("{:?}", config.source);
    assert_eq!(
        shown,
        r#"Executable(ExecutableSource { program: "/usr/local/bin/get-token", arguments: 2, timeout: 5s, output_file: Some("/var/cache/broker/token.json") })"#
    );
    assert!(!format!("{config:?}").contains("exec-arg-secret"));

    // Google's default timeout when none (or 0) is given; Google's bounds otherwise.
    for timeout in [Value::Null, json!(0)] {
        let config = parsed(&with(
            file.clone(),
            "credential_source.executable.timeout_millis",
            timeout,
        ));
        assert!(
            format!("{:?}", config.source).contains("timeout: 30s, output_file"),
            "{config:?}"
        );
    }
    parsed(&with(
        file.clone(),
        "credential_source.executable.timeout_millis",
        json!(120_000),
    ));
    for (path, value, expected) in [
        (
            "timeout_millis",
            json!(4999),
            "must be between 5000 and 120000",
        ),
        (
            "timeout_millis",
            json!(120_001),
            "must be between 5000 and 120000",
        ),
        (
            "timeout_millis",
            json!("5000"),
            "must be a non-negative integer",
        ),
        (
            "interactive_timeout_millis",
            json!(30_000),
            "interactive mode",
        ),
        ("command", Value::Null, "is missing or empty"),
        ("command", json!(""), "is missing or empty"),
        (
            "command",
            json!("'/bin/unclosed"),
            "cannot be split into words",
        ),
        ("output_file", json!(5), "must be a string"),
    ] {
        let path = format!("credential_source.executable.{path}");
        let error = parse(&with(file.clone(), &path, value.clone()))
            .expect_err(&path)
            .to_string();
        assert!(
            error.contains(&format!("field `{path}`")) && error.contains(expected),
            "{path} = {value}: {error}"
        );
    }
    let error = parse(&with(
        file.clone(),
        "credential_source.executable.colour",
        json!("red"),
    ))
    .expect_err("unknown")
    .to_string();
    assert!(
        error.contains("unknown field `credential_source.executable.colour`"),
        "{error}"
    );
    let error = parse(&with(
        file,
        "credential_source.executable",
        json!("/bin/token"),
    ))
    .expect_err("not an object")
    .to_string();
    assert!(
        error.contains("field `credential_source.executable` must be an object"),
        "{error}"
    );
}

#[test]
fn an_aws_source_parses_as_gcloud_writes_it() {
    let file = json!({
        "universe_domain": "googleapis.com",
        "type": "external_account",
        "audience": "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/dev-pool/providers/dev-aws",
        "subject_token_type": AWS4_TYPE,
        "token_url": STS,
        "credential_source": {
            "environment_id": "aws1",
            "region_url": "http://169.254.169.254/latest/meta-data/placement/availability-zone",
            "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials",
            "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
            "imdsv2_session_token_url": "http://169.254.169.254/latest/api/token"
        }
    });
    let config = parsed(&file);
    // `url` is the metadata service's, not a url source.
    assert_eq!(config.credential_source_kind(), "aws");
    let shown = format!("{:?}", config.source);
    assert!(
        shown.contains(
            r#"url: Some("http://169.254.169.254/latest/meta-data/iam/security-credentials")"#
        ) && shown.contains(
            r#"imdsv2_session_token_url: Some("http://169.254.169.254/latest/api/token")"#
        ),
        "{shown}"
    );
    // Only the verification URL is required (credentials and region from the environment).
    let minimal = with(
        file.clone(),
        "credential_source",
        json!({
            "environment_id": "aws1",
            "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
        }),
    );
    assert_eq!(parsed(&minimal).credential_source_kind(), "aws");
    for (path, value, expected) in [
        (
            "credential_source.environment_id",
            json!("aws2"),
            "only aws1",
        ),
        (
            "credential_source.environment_id",
            json!("azure1"),
            "must be \"aws1\"",
        ),
        (
            "credential_source.regional_cred_verification_url",
            Value::Null,
            "is missing or empty",
        ),
        (
            "credential_source.imdsv2_session_token_url",
            json!("http://metadata.example.com/latest/api/token"),
            "in the clear",
        ),
        (
            "credential_source.file",
            json!("/t"),
            "names more than one source",
        ),
        (
            "subject_token_type",
            json!(JWT_TYPE),
            "does not fit a credential source of kind aws",
        ),
    ] {
        let error = parse(&with(file.clone(), path, value.clone()))
            .expect_err(path)
            .to_string();
        assert!(error.contains(expected), "{path} = {value}: {error}");
    }
}

#[test]
fn a_certificate_source_parses_as_gcloud_writes_it() {
    let file = json!({
        "universe_domain": "googleapis.com",
        "type": "external_account",
        "audience": "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/dev-pool/providers/dev-x509",
        "subject_token_type": MTLS_TYPE,
        "token_url": "https://sts.mtls.googleapis.com/v1/token",
        "credential_source": {
            "certificate": {
                "use_default_certificate_config": true,
                "trust_chain_path": "/etc/workload/chain.pem"
            }
        }
    });
    let config = parsed(&file);
    assert_eq!(config.credential_source_kind(), "certificate");
    assert_eq!(
        config.token_url(),
        Some("https://sts.mtls.googleapis.com/v1/token")
    );
    let located = with(
        file.clone(),
        "credential_source.certificate",
        json!({"certificate_config_location": "/etc/workload/certificate_config.json"}),
    );
    assert!(
        format!("{:?}", parsed(&located).source).contains(
            r#"certificate_config_location: Some("/etc/workload/certificate_config.json")"#
        )
    );
    for (value, expected) in [
        (
            json!({}),
            "must be true when no certificate_config_location",
        ),
        (
            json!({"use_default_certificate_config": true, "certificate_config_location": "/c.json"}),
            "cannot be given with use_default_certificate_config",
        ),
        (
            json!({"use_default_certificate_config": true, "cert_path": "/c.pem"}),
            "unknown field `credential_source.certificate.cert_path`",
        ),
    ] {
        let error = parse(&with(
            file.clone(),
            "credential_source.certificate",
            value.clone(),
        ))
        .expect_err("bad certificate")
        .to_string();
        assert!(error.contains(expected), "{value}: {error}");
    }
    let error = parse(&with(file, "subject_token_type", json!(JWT_TYPE)))
        .expect_err("type")
        .to_string();
    assert!(
        error.contains("field `subject_token_type` does not fit a credential source of kind certificate: expected urn:ietf:params:oauth:token-type:mtls"),
        "{error}"
    );
}

#[test]
fn workforce_files_with_a_user_project_or_a_client() {
    let config = parsed(&workforce_file());
    assert!(config.is_workforce());
    assert_eq!(config.workforce_pool_user_project(), Some("dev-project"));
    assert_eq!(config.client_id(), None);
    let source = source_of(config, options());
    assert!(source.is_workforce());
    assert_eq!(source.user_project(), Some("dev-project"));
    assert_eq!(
        source.federated_principal(),
        "principalSet://iam.googleapis.com/locations/global/workforcePools/dev-workforce/*"
    );
    assert_eq!(source.principal(), source.federated_principal());
    // Workforce tokens are not downscoped unless they impersonate.
    assert!(!source.capabilities().downscoping);
    assert!(!source.capabilities().id_tokens);

    // With an OAuth client the user project is not sent (as Google's clients do).
    let client = with(workforce_file(), "client_id", json!("dev-workforce-client"));
    let client = with(client, "client_secret", json!("client-secret-value"));
    let config = parsed(&client);
    assert_eq!(config.client_id(), Some("dev-workforce-client"));
    assert_eq!(
        config.client_secret.as_ref().map(Secret::expose),
        Some("client-secret-value")
    );
    let shown = format!("{config:?} {config:#?}");
    assert!(shown.contains("client_secret: true"), "{shown}");
    assert!(!shown.contains("client-secret-value"), "{shown}");
    let source = source_of(config, options());
    assert_eq!(source.user_project(), None);
    let shown = format!("{source:?}");
    assert!(!shown.contains("client-secret-value"), "{shown}");

    // A client without a secret is a public client; a secret without a client is refused.
    let public = with(workforce_file(), "client_id", json!("public-client"));
    assert!(parsed(&public).client_secret.is_none());
    let error = parse(&with(
        workforce_file(),
        "client_secret",
        json!("client-secret-value"),
    ))
    .expect_err("no client id")
    .to_string();
    assert!(
        error.contains("field `client_secret` is given without a client_id"),
        "{error}"
    );
    assert!(!error.contains("client-secret-value"), "{error}");
    let error = parse(&with(client.clone(), "client_secret", json!(["x"])))
        .expect_err("not a string")
        .to_string();
    assert!(
        error.contains("field `client_secret` must be a string"),
        "{error}"
    );

    // A user project for a workload pool is refused, as Python google-auth refuses it.
    let error = parse(&with(
        workload_file(),
        "workforce_pool_user_project",
        json!("dev-project"),
    ))
    .expect_err("workload")
    .to_string();
    assert!(
        error.contains("field `workforce_pool_user_project` is only for workforce pools"),
        "{error}"
    );
}

#[test]
fn impersonation_takes_the_url_verbatim_and_the_lifetime() {
    let url = impersonation_url(READER);
    let file = with(
        workload_file(),
        "service_account_impersonation_url",
        json!(url),
    );
    let config = parsed(&file);
    assert_eq!(config.impersonated_email(), Some(READER));
    assert_eq!(
        config.service_account_impersonation_url(),
        Some(url.as_str())
    );
    assert_eq!(
        config.impersonated_lifetime(),
        Some(DEFAULT_IMPERSONATED_LIFETIME)
    );
    let impersonation = config.impersonation.as_ref().expect("impersonation");
    assert_eq!(
        impersonation.id_token_url.as_str(),
        format!(
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{READER}:generateIdToken"
        )
    );
    let source = source_of(config, options());
    assert_eq!(source.principal(), READER);
    assert_eq!(source.impersonated_email(), Some(READER));
    assert_eq!(
        source.federated_principal(),
        "principalSet://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/dev-pool/*"
    );
    assert!(source.capabilities().id_tokens && source.capabilities().downscoping);
    assert!(!source.capabilities().chooses_lifetime);

    // gcloud's --service-account-token-lifetime-seconds; an emulator's loopback URL.
    let emulator = "http://127.0.0.1:8085/v1/projects/-/serviceAccounts/123456789012345678901:generateAccessToken";
    let file = with(file, "service_account_impersonation_url", json!(emulator));
    let file = with(
        file,
        "service_account_impersonation",
        json!({"token_lifetime_seconds": 7200}),
    );
    let config = parsed(&file);
    assert_eq!(config.impersonated_email(), Some("123456789012345678901"));
    assert_eq!(
        config.impersonated_lifetime(),
        Some(Duration::from_secs(7200))
    );
    assert_eq!(
        config
            .impersonation
            .as_ref()
            .map(|i| i.id_token_url.as_str()),
        Some(
            "http://127.0.0.1:8085/v1/projects/-/serviceAccounts/123456789012345678901:generateIdToken"
        )
    );
    for seconds in [600, 43_200] {
        let bound = with(
            file.clone(),
            "service_account_impersonation.token_lifetime_seconds",
            json!(seconds),
        );
        assert_eq!(
            parsed(&bound).impersonated_lifetime(),
            Some(Duration::from_secs(seconds))
        );
    }
    // A workforce pool that impersonates may be downscoped.
    let workforce = with(
        workforce_file(),
        "service_account_impersonation_url",
        json!(impersonation_url(READER)),
    );
    assert!(
        source_of(parsed(&workforce), options())
            .capabilities()
            .downscoping
    );
}

#[test]
fn bad_impersonation_is_refused_naming_the_field() {
    let file = with(
        workload_file(),
        "service_account_impersonation_url",
        json!(impersonation_url(READER)),
    );
    for (path, value, expected) in [
        (
            "service_account_impersonation_url",
            json!(format!(
                "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{READER}:signBlob"
            )),
            "field `service_account_impersonation_url` does not end with /projects/-/serviceAccounts/EMAIL:generateAccessToken",
        ),
        (
            "service_account_impersonation_url",
            json!(
                "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/not an email:generateAccessToken"
            ),
            "field `service_account_impersonation_url` does not end with",
        ),
        (
            "service_account_impersonation_url",
            json!("https://iamcredentials.googleapis.com/:generateAccessToken"),
            "field `service_account_impersonation_url` does not end with",
        ),
        (
            "service_account_impersonation_url",
            json!(format!(
                "http://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{READER}:generateAccessToken"
            )),
            "field `service_account_impersonation_url` http:// would send tokens in the clear",
        ),
        (
            "service_account_impersonation_url",
            json!("iamcredentials.googleapis.com/v1/x:generateAccessToken"),
            "field `service_account_impersonation_url` relative URL without a base",
        ),
        (
            "service_account_impersonation_url",
            json!(5),
            "field `service_account_impersonation_url` must be a string",
        ),
        (
            "service_account_impersonation.token_lifetime_seconds",
            json!(599),
            "field `service_account_impersonation.token_lifetime_seconds` must be between 600 and 43200 seconds",
        ),
        (
            "service_account_impersonation.token_lifetime_seconds",
            json!(43_201),
            "must be between 600 and 43200 seconds",
        ),
        (
            "service_account_impersonation.token_lifetime_seconds",
            json!("3600"),
            "field `service_account_impersonation.token_lifetime_seconds` must be a non-negative integer",
        ),
        (
            "service_account_impersonation.delegates",
            json!([]),
            "unknown field `service_account_impersonation.delegates`",
        ),
        (
            "service_account_impersonation",
            json!(3600),
            "field `service_account_impersonation` must be an object",
        ),
    ] {
        let mut broken = file.clone();
        if path.starts_with("service_account_impersonation.") {
            broken["service_account_impersonation"] = json!({});
        }
        let error = parse(&with(broken, path, value.clone()))
            .expect_err(path)
            .to_string();
        assert!(error.contains(expected), "{path} = {value}: {error}");
        assert!(error.starts_with("credential file wif.json: "), "{error}");
    }
    // A lifetime without impersonation configures nothing: refused.
    let error = parse(&with(
        workload_file(),
        "service_account_impersonation",
        json!({"token_lifetime_seconds": 3600}),
    ))
    .expect_err("lifetime alone")
    .to_string();
    assert!(
        error.contains("field `service_account_impersonation.token_lifetime_seconds` is only for service-account impersonation"),
        "{error}"
    );
}

#[test]
fn urls_universe_and_quota_project_are_honoured() {
    let file = with(
        workload_file(),
        "token_info_url",
        json!("https://sts.googleapis.com/v1/introspect"),
    );
    let file = with(file, "quota_project_id", json!("billing-project"));
    let config = parsed(&file);
    assert_eq!(
        config.token_info_url(),
        Some("https://sts.googleapis.com/v1/introspect")
    );
    assert_eq!(config.quota_project_id(), Some("billing-project"));
    assert_eq!(source_of(config, options()).token_url(), STS);

    // Loopback emulators over plain http.
    for url in [
        "http://127.0.0.1:8085/v1/token",
        "http://localhost:8085/v1/token",
        "http://[::1]:1/v1/token",
    ] {
        let config = parsed(&with(workload_file(), "token_url", json!(url)));
        assert_eq!(source_of(config, options()).token_url(), url);
    }
    for (path, url, expected) in [
        (
            "token_url",
            "http://sts.googleapis.com/v1/token",
            "http:// would send tokens in the clear",
        ),
        (
            "token_url",
            "http://sts.localhost/v1/token",
            "http:// would send tokens in the clear",
        ),
        (
            "token_url",
            "file:///v1/token",
            "the scheme must be http or https",
        ),
        (
            "token_info_url",
            "http://sts.example.com/v1/introspect",
            "in the clear",
        ),
    ] {
        let error = parse(&with(workload_file(), path, json!(url)))
            .expect_err(url)
            .to_string();
        assert!(
            error.contains(&format!("field `{path}`")) && error.contains(expected),
            "{url}: {error}"
        );
    }

    // Without token_url: the broker's STS in Google's universe, sts.<universe> in another.
    let config = parsed(&with(workload_file(), "token_url", Value::Null));
    let endpoints = GoogleEndpoints::emulator("http://127.0.0.1:8085");
    let source = ExternalAccountSource::new(config, endpoints, http(), options()).expect("source");
    assert_eq!(source.token_url(), "http://127.0.0.1:8085/v1/token");
    let other = with(workload_file(), "token_url", Value::Null);
    let other = with(other, "universe_domain", json!("example-universe.dev"));
    let other = with(
        other,
        "audience",
        json!("//iam.example-universe.dev/locations/global/workforcePools/pool/providers/idp"),
    );
    let other = with(other, "workforce_pool_user_project", json!("proj"));
    let config = parsed(&other);
    assert_eq!(config.universe_domain(), "example-universe.dev");
    // A workforce audience may name the universe's IAM host.
    assert!(config.is_workforce());
    assert_eq!(
        source_of(config, options()).token_url(),
        "https://sts.example-universe.dev/v1/token"
    );
    // Empty is absent: the default universe.
    let config = parsed(&with(workload_file(), "universe_domain", json!("")));
    assert_eq!(config.universe_domain(), "googleapis.com");
    for bad in [
        "not a domain",
        "a..b",
        "example.com/",
        "x".repeat(64).as_str(),
    ] {
        let error = parse(&with(workload_file(), "universe_domain", json!(bad)))
            .expect_err(bad)
            .to_string();
        assert!(
            error.contains("field `universe_domain` is not a domain name"),
            "{error}"
        );
    }
}

#[test]
fn unknown_fields_and_unsupported_sources_are_refused_by_path() {
    for (path, value, expected) in [
        ("colour", json!("red"), "unknown field `colour`"),
        (
            "credential_source.colour",
            json!("red"),
            "unknown field `credential_source.colour`",
        ),
        (
            "credential_source.format.colour",
            json!("red"),
            "unknown field `credential_source.format.colour`",
        ),
        // Fields of other sources or other credential types.
        (
            "credential_source.headers",
            json!({"a": "b"}),
            "unknown field `credential_source.headers`",
        ),
        (
            "credential_source.environment_id",
            json!("aws1"),
            "names more than one source",
        ),
        (
            "refresh_token",
            json!("1//x"),
            "unknown field `refresh_token`",
        ),
        (
            "source_credentials",
            json!({}),
            "unknown field `source_credentials`",
        ),
        // Sources the broker does not support, or none at all.
        (
            "credential_source",
            json!({}),
            "field `credential_source` names no source",
        ),
        (
            "credential_source",
            json!({"programmatic": true}),
            "field `credential_source` names no source",
        ),
        (
            "credential_source",
            json!({"file": "/t", "url": "https://idp.example.com/token"}),
            "field `credential_source` names more than one source",
        ),
        (
            "credential_source",
            json!({"executable": {"command": "/bin/t"}, "certificate": {"use_default_certificate_config": true}}),
            "names more than one source",
        ),
        (
            "credential_source",
            json!("/var/run/token"),
            "field `credential_source` must be an object",
        ),
        (
            "credential_source.format.type",
            json!("xml"),
            "field `credential_source.format.type` must be \"text\" or \"json\"",
        ),
        (
            "credential_source.format",
            json!({"type": "json"}),
            "field `credential_source.format.subject_token_field_name` is required by the json format",
        ),
        // Missing or mistyped fields.
        (
            "audience",
            Value::Null,
            "field `audience` is missing or empty",
        ),
        (
            "audience",
            json!(""),
            "field `audience` is missing or empty",
        ),
        ("audience", json!(5), "field `audience` must be a string"),
        (
            "subject_token_type",
            Value::Null,
            "field `subject_token_type` is missing or empty",
        ),
        (
            "credential_source",
            Value::Null,
            "field `credential_source` is missing",
        ),
        (
            "credential_source.file",
            json!(""),
            "field `credential_source.file` is missing or empty",
        ),
        (
            "quota_project_id",
            json!(true),
            "field `quota_project_id` must be a string",
        ),
        ("type", Value::Null, "field `type` is missing"),
        ("type", json!(1), "field `type` must be a string"),
        (
            "subject_token_type",
            json!(AWS4_TYPE),
            "field `subject_token_type` does not fit a credential source of kind file: expected urn:ietf:params:oauth:token-type:jwt or urn:ietf:params:oauth:token-type:id_token or urn:ietf:params:oauth:token-type:saml2",
        ),
        (
            "subject_token_type",
            json!("urn:example:custom"),
            "does not fit a credential source of kind file",
        ),
    ] {
        let error = parse(&with(workload_file(), path, value.clone()))
            .expect_err(path)
            .to_string();
        assert!(error.contains(expected), "{path} = {value}: {error}");
    }
    // The first unknown field, alphabetically, is the one named; odd names are not echoed.
    let file = with(workload_file(), "zebra", json!(1));
    let file = with(file, "alpha", json!(1));
    let error = parse(&file).expect_err("unknown");
    assert!(
        matches!(&error, BackendError::UnknownField { origin, field } if origin == "wif.json" && field == "alpha"),
        "{error:?}"
    );
    let mut odd = workload_file();
    odd["ya29.secret token"] = json!(1);
    let error = parse(&odd).expect_err("unknown").to_string();
    assert!(
        error.contains("(an unrecognised name)") && !error.contains("ya29"),
        "{error}"
    );
}

#[test]
fn other_credential_types_and_broken_json_are_refused() {
    let error = parse(&with(workload_file(), "type", json!("service_account"))).expect_err("type");
    assert!(
        matches!(&error, BackendError::WrongKeyType { found, expected, .. } if found == "service_account" && *expected == "\"external_account\""),
        "{error:?}"
    );
    let error = parse(&with(
        workload_file(),
        "type",
        json!("external_account_authorized_user"),
    ))
    .expect_err("type");
    assert!(
        matches!(&error, BackendError::UnsupportedCredentialType { found, .. } if found == "external_account_authorized_user"),
        "{error:?}"
    );
    // The secret is taken before the type is looked at, and never quoted.
    let mut wrong = with(workforce_file(), "client_id", json!("c"));
    wrong["client_secret"] = json!("client-secret-value");
    wrong["type"] = json!("authorized_user");
    let error = parse(&wrong).expect_err("type");
    assert!(!format!("{error} {error:?}").contains("client-secret-value"));
    let error = ExternalAccountConfig::parse("[1]", "wif.json").expect_err("array");
    assert!(error.to_string().contains("not a JSON object"), "{error}");
    let error = ExternalAccountConfig::parse(
        r#"{"type": "external_account", "audience": "x-secret""#,
        "wif.json",
    )
    .expect_err("truncated");
    assert!(
        matches!(
            &error,
            BackendError::KeyFileSyntax {
                category: "eof",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.to_string().contains("x-secret"), "{error}");
    let error = ExternalAccountConfig::from_json("{}").expect_err("empty");
    assert!(error.to_string().contains("(inline JSON)"), "{error}");
    let error = ExternalAccountConfig::from_file("/nonexistent/external-account.json")
        .expect_err("missing");
    assert!(
        matches!(error, BackendError::ReadKeyFile { .. }),
        "{error:?}"
    );
}

#[test]
fn executables_run_only_where_allowed() {
    let file = with(
        workload_file(),
        "credential_source",
        json!({"executable": {"command": "/usr/local/bin/get-token --key=exec-arg-secret"}}),
    );
    let error =
        ExternalAccountSource::new(parsed(&file), GoogleEndpoints::google(), http(), options())
            .expect_err("not allowed");
    match &error {
        BackendError::ExecutableNotAllowed { origin, command } => {
            assert_eq!(origin, "wif.json");
            assert_eq!(command, "/usr/local/bin/get-token");
        }
        other => panic!("{other:?}"),
    }
    let shown = format!("{error} {error:?}");
    assert!(
        shown.contains("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES"),
        "{shown}"
    );
    assert!(!shown.contains("exec-arg-secret"), "{shown}");
    let allowed = ExternalAccountOptions {
        allow_executables: true,
        ..options()
    };
    let source = source_of(parsed(&file), allowed);
    assert_eq!(source.config().credential_source_kind(), "executable");
    assert!(!format!("{source:?}").contains("exec-arg-secret"));
    // Other sources need no permission, and the default options allow none.
    assert!(!ExternalAccountOptions::default().allow_executables);
    source_of(parsed(&workload_file()), ExternalAccountOptions::default());
}

#[test]
fn invalid_endpoints_are_refused_when_the_source_is_built() {
    let mut endpoints = GoogleEndpoints::google();
    endpoints.sts_url = "http://sts.example.com/v1/token".to_owned();
    let error = ExternalAccountSource::new(parsed(&workload_file()), endpoints, http(), options())
        .expect_err("plain http");
    assert!(
        matches!(
            &error,
            BackendError::InvalidEndpoint {
                field: "sts_url",
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn principals_and_pools_are_read_from_the_audience() {
    for (audience, workforce, principal) in [
        (
            WORKLOAD,
            false,
            "principalSet://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/dev-pool/*",
        ),
        (
            WORKFORCE,
            true,
            "principalSet://iam.googleapis.com/locations/global/workforcePools/dev-workforce/*",
        ),
        (
            "//iam.googleapis.com/locations/eu/workforcePools/p/providers/x",
            true,
            "principalSet://iam.googleapis.com/locations/eu/workforcePools/p/*",
        ),
        (
            "https://example.com/custom",
            false,
            "https://example.com/custom",
        ),
    ] {
        assert_eq!(
            is_workforce_audience(audience, DEFAULT_UNIVERSE_DOMAIN),
            workforce,
            "{audience}"
        );
        assert_eq!(pool_principal_set(audience), principal, "{audience}");
    }
    for audience in [
        "//iam.googleapis.com/locations//workforcePools/p/providers/x",
        "//iam.example.com/locations/global/workforcePools/p/providers/x",
        "//sts.googleapis.com/locations/global/workforcePools/p/providers/x",
        "//iam.googleapis.com",
    ] {
        assert!(
            !is_workforce_audience(audience, DEFAULT_UNIVERSE_DOMAIN),
            "{audience}"
        );
    }
    assert!(is_workforce_audience(
        "//iam.example.com/locations/global/workforcePools/p/providers/x",
        "example.com"
    ));
}

fn boundary() -> AccessBoundary {
    AccessBoundary {
        rules: vec![AccessBoundaryRule {
            available_resource: "//storage.googleapis.com/projects/_/buckets/reports".into(),
            available_permissions: vec!["inRole:roles/storage.objectViewer".into()],
            availability_condition: None,
        }],
    }
}

/// A source whose STS is a closed loopback port: whatever is refused here was refused
/// before anything was sent.
fn offline(file: &Value) -> ExternalAccountSource {
    let config = parsed(&with(
        file.clone(),
        "token_url",
        json!("http://127.0.0.1:9/v1/token"),
    ));
    ExternalAccountSource::new(
        config,
        GoogleEndpoints::emulator("http://127.0.0.1:9"),
        http(),
        options(),
    )
    .expect("source")
}

#[tokio::test]
async fn exchanges_refuse_what_google_would_refuse_without_calling_it() {
    let scopes = ScopeSet::empty();
    let subject = Secret::new("eyJ.subject.token");
    let workload = offline(&workload_file());
    let error = workload
        .exchange(&subject, JWT_TYPE, &scopes, Some("dev-project"), None, None)
        .await
        .expect_err("workload pool");
    assert!(
        matches!(&error, SourceError::InvalidRequest { field, message } if field == "options.user_project" && message.contains("workload identity pool")),
        "{error:?}"
    );
    let client = with(workforce_file(), "client_id", json!("dev-workforce-client"));
    let error = offline(&client)
        .exchange(&subject, JWT_TYPE, &scopes, Some("dev-project"), None, None)
        .await
        .expect_err("client id");
    assert!(
        matches!(&error, SourceError::InvalidRequest { field, message } if field == "options.user_project" && message.contains("client id")),
        "{error:?}"
    );
    let error = offline(&workforce_file())
        .exchange(&subject, JWT_TYPE, &scopes, None, Some(&boundary()), None)
        .await
        .expect_err("workforce boundary");
    assert!(
        matches!(
            &error,
            SourceError::Unsupported {
                flow: "access_boundary",
                ..
            }
        ),
        "{error:?}"
    );
    let empty = AccessBoundary { rules: Vec::new() };
    let error = workload
        .exchange(&subject, JWT_TYPE, &scopes, None, Some(&empty), None)
        .await
        .expect_err("empty boundary");
    assert!(
        matches!(&error, SourceError::InvalidRequest { field, .. } if field == "access_boundary"),
        "{error:?}"
    );
}

#[tokio::test]
async fn fetches_refuse_what_the_credential_cannot_do_without_calling_google() {
    let workload = offline(&workload_file());
    let mut dwd = TokenRequest::new(ScopeSet::empty());
    dwd.subject = Some("alice@example.com".into());
    let error = workload.fetch(&dwd, None).await.expect_err("dwd");
    assert!(
        matches!(
            &error,
            SourceError::Unsupported {
                flow: "domain_wide_delegation",
                ..
            }
        ),
        "{error:?}"
    );
    let mut long = TokenRequest::new(ScopeSet::empty());
    long.lifetime = Some(Duration::from_secs(3601));
    let error = workload.fetch(&long, None).await.expect_err("lifetime");
    assert!(
        matches!(
            &error,
            SourceError::Unsupported {
                flow: "extended_lifetime",
                ..
            }
        ),
        "{error:?}"
    );
    let error = workload
        .fetch_id_token(
            &IdTokenRequest {
                audience: "https://svc.example".into(),
                include_email: true,
            },
            None,
        )
        .await
        .expect_err("id token");
    assert!(
        matches!(
            &error,
            SourceError::Unsupported {
                flow: "id_token",
                ..
            }
        ),
        "{error:?}"
    );
    let mut bounded = TokenRequest::new(ScopeSet::empty());
    bounded.boundary = Some(boundary());
    let error = offline(&workforce_file())
        .fetch(&bounded, None)
        .await
        .expect_err("workforce boundary");
    assert!(
        matches!(
            &error,
            SourceError::Unsupported {
                flow: "access_boundary",
                ..
            }
        ),
        "{error:?}"
    );
    // The file's lifetime bounds what may be asked.
    let impersonating = with(
        workload_file(),
        "service_account_impersonation_url",
        json!(impersonation_url(READER)),
    );
    let impersonating = with(
        impersonating,
        "service_account_impersonation",
        json!({"token_lifetime_seconds": 1800}),
    );
    let mut longer = TokenRequest::new(ScopeSet::empty());
    longer.lifetime = Some(Duration::from_secs(1801));
    let error = offline(&impersonating)
        .fetch(&longer, None)
        .await
        .expect_err("lifetime");
    assert!(
        matches!(&error, SourceError::Unsupported { flow: "extended_lifetime", message } if message.contains("1800 s")),
        "{error:?}"
    );
    // Nothing was listening, so nothing else was refused: a file source reads its file first.
    let error = workload
        .fetch(&TokenRequest::new(ScopeSet::empty()), None)
        .await
        .expect_err("no token file");
    assert!(
        matches!(&error, SourceError::Unavailable { upstream, .. } if upstream == "credential_source.file"),
        "{error:?}"
    );
}

#[test]
fn sts_refusals_of_the_credentials_own_token_are_the_credentials() {
    let rejection = |field: Option<&str>, rejection: Rejection| {
        SourceError::Rejected(Box::new(broker_core::UpstreamRejection {
            rejection,
            upstream: "sts.googleapis.com".into(),
            status: 400,
            error: "invalid_grant".into(),
            field: field.map(str::to_owned),
            message: "The incoming JWT is expired.".into(),
        }))
    };
    let SourceError::Rejected(own) = own_refusal(
        rejection(Some("subject_token"), Rejection::InvalidArgument),
        true,
    ) else {
        panic!("a rejection");
    };
    assert_eq!(
        (own.rejection, own.field),
        (Rejection::CredentialRejected, None)
    );
    assert!(
        own.message.contains("credential's own subject token"),
        "{}",
        own.message
    );
    // The caller's scopes stay the caller's, unless impersonation chose them.
    let SourceError::Rejected(scopes) =
        own_refusal(rejection(Some("scopes"), Rejection::InvalidArgument), true)
    else {
        panic!("a rejection");
    };
    assert_eq!(scopes.rejection, Rejection::InvalidArgument);
    let SourceError::Rejected(scopes) =
        own_refusal(rejection(Some("scopes"), Rejection::InvalidArgument), false)
    else {
        panic!("a rejection");
    };
    assert_eq!(scopes.rejection, Rejection::CredentialRejected);
    let SourceError::Rejected(denied) =
        own_refusal(rejection(None, Rejection::PermissionDenied), true)
    else {
        panic!("a rejection");
    };
    assert_eq!(denied.rejection, Rejection::PermissionDenied);
    let SourceError::Rejected(lifetime) =
        lifetime_refusal(rejection(Some("lifetime"), Rejection::InvalidArgument))
    else {
        panic!("a rejection");
    };
    assert_eq!(
        (lifetime.rejection, lifetime.field),
        (Rejection::CredentialRejected, None)
    );
}
