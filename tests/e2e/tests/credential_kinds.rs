//! GetAccessToken through every kind of credential the broker loads from its configuration,
//! each token checked by the emulator's tokeninfo: the metadata server, an authorized user's
//! refresh token, impersonation from a configured base or from a gcloud
//! `impersonated_service_account` file, keyless domain-wide delegation; and configurations
//! whose credentials cannot be built. (`application_default` reads the process environment:
//! see `services/token-broker/tests/application_default.rs`.)

use std::path::Path;

use broker_proto::tokenbroker::v1 as pb;
use e2e::*;
use gcp_emulator::{Endpoint, RunningEmulator, World};
use token_broker::settings::Settings;
use tonic::Code;

const CREDENTIALS: &str = r#"
[[credentials]]
name = "md"
kind = "metadata"

[[credentials]]
name = "user"
kind = "authorized_user"
file = "emulator/users/dev-user.json"

[[credentials]]
name = "imp-writer"
kind = "impersonated"
base = "sa"
target = "writer@dev-project.iam.gserviceaccount.com"

[[credentials]]
name = "imp-of-user"
kind = "impersonated"
base = "user"
target = "writer@dev-project.iam.gserviceaccount.com"

[[credentials]]
name = "file-sa"
kind = "impersonated"
file = "impersonated-sa.json"

[[credentials]]
name = "file-user"
kind = "impersonated"
file = "impersonated-user.json"

[[credentials]]
name = "keyless"
kind = "impersonated"
base = "sa"
target = "broker@dev-project.iam.gserviceaccount.com"
"#;

/// One grant of `app` per credential.
fn policy() -> String {
    let mut policy = String::new();
    for (name, credential, extra) in [
        ("metadata", "md", ""),
        (
            "user",
            "user",
            "scope_prefixes = [\"https://www.googleapis.com/auth/devstorage.\"]\nsubject_domains = [\"example.com\"]\n",
        ),
        ("impersonated", "imp-writer", ""),
        ("impersonated-by-user", "imp-of-user", ""),
        ("file-sa", "file-sa", ""),
        ("file-user", "file-user", ""),
        (
            "keyless",
            "keyless",
            "scopes = [\"https://www.googleapis.com/auth/cloud-platform\", \"https://www.googleapis.com/auth/admin.directory.user.readonly\"]\nsubject_domains = [\"example.com\"]\n",
        ),
    ] {
        let scopes = if extra.contains("scopes = ") {
            ""
        } else {
            "scopes = [\"https://www.googleapis.com/auth/cloud-platform\"]\n"
        };
        policy.push_str(&format!(
            "[[grants]]\nname = \"{name}\"\ncredential = \"{credential}\"\ncallers = [{{ spiffe_id = \"{APP}\" }}]\n{scopes}{extra}\n"
        ));
    }
    // `worker` may have tokens of at most 30 minutes.
    for credential in ["md", "imp-writer"] {
        policy.push_str(&format!(
            "[[grants]]\nname = \"short-{credential}\"\ncredential = \"{credential}\"\ncallers = [{{ spiffe_id = \"{OTHER_APP}\" }}]\nscopes = [\"{CLOUD_PLATFORM}\"]\nmax_lifetime = \"30m\"\n\n"
        ));
    }
    policy
}

/// The default world, where the authorized user also holds Token Creator on writer@.
fn world() -> World {
    let mut world = World::default_world();
    for account in &mut world.service_accounts {
        if account.email == WRITER_SA {
            account.token_creators.push(format!("user:{DEV_USER}"));
        }
    }
    world
}

/// gcloud's `impersonated_service_account` files, made from the emulator's key of broker@
/// (target reader@) and its authorized user's file (target writer@). The URL names Google's
/// host, as gcloud writes it: the broker must call its configured IAM endpoint instead.
fn write_impersonated_files(emulator: &RunningEmulator, dir: &Path) {
    let url = |target: &str| {
        format!(
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{target}:generateAccessToken"
        )
    };
    for (file, target, source) in [
        (
            "impersonated-sa.json",
            READER_SA,
            emulator.key_file(BROKER_SA).expect("broker@'s key"),
        ),
        (
            "impersonated-user.json",
            WRITER_SA,
            emulator
                .authorized_user_file(DEV_USER)
                .expect("the user's file"),
        ),
    ] {
        let json = serde_json::json!({
            "type": "impersonated_service_account",
            "service_account_impersonation_url": url(target),
            "delegates": [],
            "source_credentials": source,
        });
        std::fs::write(dir.join(file), json.to_string()).expect("write");
    }
}

async fn start() -> Harness {
    Harness::start(Options {
        policy: policy(),
        extra_config: CREDENTIALS.to_owned(),
        world: Some(world()),
        setup: Some(write_impersonated_files),
        ..Options::default()
    })
    .await
}

fn with(credential: &str) -> pb::GetAccessTokenRequest {
    pb::GetAccessTokenRequest {
        credential: credential.to_owned(),
        ..request(&[CLOUD_PLATFORM])
    }
}

/// Asserts that a token expires `lifetime` seconds after a moment between `before` and now,
/// as the response and tokeninfo say, and returns tokeninfo.
async fn check(
    harness: &Harness,
    response: &pb::GetAccessTokenResponse,
    before: i64,
    lifetime: i64,
) -> serde_json::Value {
    let expire = response.expire_time.expect("expire_time").seconds;
    let after = unix_now();
    assert!(
        expire >= before + lifetime - 1 && expire <= after + lifetime + 1,
        "expires at {expire}, asked between {before} and {after} for {lifetime} s"
    );
    let info = harness.tokeninfo(&response.access_token).await;
    let exp: i64 = info["exp"].as_str().expect("exp").parse().expect("number");
    assert!((exp - expire).abs() <= 1, "{info}");
    info
}

#[tokio::test]
async fn the_metadata_server_and_an_authorized_user() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;

    let before = unix_now();
    let metadata = client
        .get_access_token(with("md"))
        .await
        .expect("metadata token")
        .into_inner();
    assert_eq!(metadata.principal, BROKER_SA);
    assert_eq!(metadata.credential, "md");
    let info = check(&harness, &metadata, before, 3600).await;
    assert_eq!(info["principal"], format!("serviceAccount:{BROKER_SA}"));
    assert_eq!(info["grant"], "metadata");

    let before = unix_now();
    let user = client
        .get_access_token(with("user"))
        .await
        .expect("user token")
        .into_inner();
    assert_eq!(user.principal, DEV_USER);
    let info = check(&harness, &user, before, 3600).await;
    assert_eq!(info["principal"], format!("user:{DEV_USER}"));
    assert_eq!(info["email"], DEV_USER);
    assert_eq!(info["grant"], "refresh-token");
    assert_eq!(info["scope"], CLOUD_PLATFORM);

    // A shorter lifetime does not shorten a token whose lifetime Google fixes.
    let before = unix_now();
    let short = client
        .get_access_token(pb::GetAccessTokenRequest {
            lifetime: seconds(600),
            ..with("user")
        })
        .await
        .expect("user token")
        .into_inner();
    check(&harness, &short, before, 3600).await;

    // A scope the user did not consent to: Google's invalid_scope, the request's fault.
    let status = client
        .get_access_token(pb::GetAccessTokenRequest {
            credential: "user".into(),
            ..request(&[STORAGE_READ])
        })
        .await
        .expect_err("not consented");
    let metadata = assert_error(&status, Code::InvalidArgument, "UPSTREAM_REJECTED");
    assert_eq!(metadata["upstream_error"], "invalid_scope");
    assert_eq!(metadata["field"], "scopes");
    assert_eq!(bad_request_field(&status).as_deref(), Some("scopes"));

    // What a user's refresh token (and the metadata server) cannot do.
    for (request, flow) in [
        (
            pb::GetAccessTokenRequest {
                subject: "alice@example.com".into(),
                ..with("user")
            },
            "domain_wide_delegation",
        ),
        (
            pb::GetAccessTokenRequest {
                lifetime: seconds(7200),
                ..with("user")
            },
            "extended_lifetime",
        ),
        (
            pb::GetAccessTokenRequest {
                lifetime: seconds(3601),
                ..with("md")
            },
            "extended_lifetime",
        ),
    ] {
        let credential = request.credential.clone();
        let status = client
            .get_access_token(request)
            .await
            .expect_err("unsupported");
        let metadata = assert_error(
            &status,
            Code::FailedPrecondition,
            "CREDENTIAL_FLOW_UNSUPPORTED",
        );
        assert_eq!(metadata["flow"], flow);
        assert_eq!(metadata["credential"], credential);
        let kind = if credential == "md" {
            "metadata"
        } else {
            "authorized_user"
        };
        assert_eq!(metadata["credential_type"], kind);
    }
    harness.stop().await;
}

#[tokio::test]
async fn impersonation_from_a_configured_base_or_a_gcloud_file() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;

    for (lifetime, expected) in [(Some(43_200), 43_200), (None, 3600)] {
        let before = unix_now();
        let response = client
            .get_access_token(pb::GetAccessTokenRequest {
                lifetime: lifetime.and_then(seconds),
                ..with("imp-writer")
            })
            .await
            .expect("impersonated token")
            .into_inner();
        assert_eq!(response.principal, WRITER_SA);
        let info = check(&harness, &response, before, expected).await;
        assert_eq!(info["principal"], format!("serviceAccount:{WRITER_SA}"));
        assert_eq!(info["grant"], "generate-access-token");
    }
    assert_eq!(harness.emulator.count(Endpoint::IamGenerateAccessToken), 2);

    for (credential, principal) in [
        ("imp-of-user", WRITER_SA),
        ("file-sa", READER_SA),
        ("file-user", WRITER_SA),
    ] {
        let before = unix_now();
        let response = client
            .get_access_token(with(credential))
            .await
            .unwrap_or_else(|e| panic!("{credential}: {e:?}"))
            .into_inner();
        assert_eq!(response.principal, principal, "{credential}");
        assert_eq!(response.credential, credential);
        let info = check(&harness, &response, before, 3600).await;
        assert_eq!(info["principal"], format!("serviceAccount:{principal}"));
        assert_eq!(info["grant"], "generate-access-token");
    }
    assert_eq!(harness.emulator.count(Endpoint::IamGenerateAccessToken), 5);

    // A grant's max_lifetime: impersonation mints within it; the metadata server's fixed
    // hour exceeds it, which is denied.
    let mut worker = harness.client_for(OTHER_APP).await;
    let before = unix_now();
    let capped = worker
        .get_access_token(pb::GetAccessTokenRequest {
            lifetime: seconds(43_200),
            ..with("imp-writer")
        })
        .await
        .expect("capped")
        .into_inner();
    check(&harness, &capped, before, 1800).await;
    let status = worker
        .get_access_token(with("md"))
        .await
        .expect_err("an hour is more than 30 minutes");
    let metadata = assert_denied(&status, "max_lifetime");
    assert_eq!(metadata["grant"], "short-md");

    // None of these grants is a default one: a request must name its credential.
    let status = client
        .impersonate_service_account(pb::ImpersonateServiceAccountRequest {
            target_service_account: READER_SA.into(),
            ..Default::default()
        })
        .await
        .expect_err("no default grant");
    assert_denied(&status, "default_grant");
    harness.stop().await;
}

#[tokio::test]
async fn keyless_domain_wide_delegation_through_impersonation() {
    let harness = start().await;
    let mut client = harness.client_for(APP).await;
    let delegated = |subject: &str| pb::GetAccessTokenRequest {
        subject: subject.to_owned(),
        ..pb::GetAccessTokenRequest {
            credential: "keyless".into(),
            ..request(&[DIRECTORY_READ])
        }
    };

    let before = unix_now();
    let alice = client
        .get_access_token(delegated("alice@example.com"))
        .await
        .expect("delegated without a key")
        .into_inner();
    assert_eq!(alice.principal, "alice@example.com");
    let info = check(&harness, &alice, before, 3600).await;
    assert_eq!(info["subject"], "alice@example.com");
    assert_eq!(info["principal"], "user:alice@example.com");
    assert_eq!(info["grant"], "jwt-bearer");
    assert_eq!(info["scope"], DIRECTORY_READ);
    assert_eq!(
        harness.emulator.count(Endpoint::IamSignJwt),
        1,
        "signed by IAM, not by a key"
    );

    let status = client
        .get_access_token(delegated("nobody@example.com"))
        .await
        .expect_err("no such user");
    let metadata = assert_error(&status, Code::InvalidArgument, "UPSTREAM_REJECTED");
    assert_eq!(metadata["upstream_error"], "invalid_grant");
    assert_eq!(metadata["field"], "subject");
    assert_eq!(bad_request_field(&status).as_deref(), Some("subject"));

    // Domain-wide-delegation tokens live an hour: more is not this flow's to give.
    let status = client
        .get_access_token(pb::GetAccessTokenRequest {
            lifetime: seconds(7200),
            ..delegated("bob@example.com")
        })
        .await
        .expect_err("an hour at most");
    let metadata = assert_error(
        &status,
        Code::FailedPrecondition,
        "CREDENTIAL_FLOW_UNSUPPORTED",
    );
    assert_eq!(metadata["flow"], "extended_lifetime");

    // Without a subject, the same credential is broker@ impersonating itself.
    let own = client
        .get_access_token(with("keyless"))
        .await
        .expect("broker@'s own token")
        .into_inner();
    assert_eq!(own.principal, BROKER_SA);
    let info = harness.tokeninfo(&own.access_token).await;
    assert_eq!(info["grant"], "generate-access-token");
    harness.stop().await;
}

#[tokio::test]
async fn credentials_that_cannot_be_built_stop_the_broker_and_say_which() {
    let harness = Harness::start(Options::default()).await;
    let config = std::fs::read_to_string(harness.dir.path().join("broker.toml")).expect("config");
    let impersonated = |name: &str, rest: &str| {
        format!("[[credentials]]\nname = \"{name}\"\nkind = \"impersonated\"\n{rest}\n")
    };
    let target = format!("target = \"{READER_SA}\"\n");
    let load = |extra: &str| {
        let path = harness.dir.path().join("invalid.toml");
        std::fs::write(&path, format!("{config}\n{extra}")).expect("write");
        Settings::load(&path, Some(Default::default()), &[])
    };

    // Refused by Settings::load, each problem at its place.
    let cases = [
        (
            impersonated("orphan", &format!("base = \"nope\"\n{target}")),
            vec![
                "credentials[1] (orphan).base",
                "\"nope\" is not a configured credential",
            ],
        ),
        (
            impersonated("one", &format!("base = \"two\"\n{target}"))
                + &impersonated("two", &format!("base = \"one\"\n{target}")),
            vec!["credentials[1] (one).base", "loops", "one -> two -> one"],
        ),
        (
            impersonated("self", &format!("base = \"self\"\n{target}")),
            vec!["credentials[1] (self).base", "loops", "self -> self"],
        ),
        (
            impersonated(
                "both",
                &format!("base = \"sa\"\n{target}file = \"impersonated.json\"\n"),
            ),
            vec!["credentials[1] (both)", "not both"],
        ),
        (
            impersonated("neither", ""),
            vec!["credentials[1] (neither)", "needs `base`"],
        ),
        (
            impersonated("no-target", "base = \"sa\"\n"),
            vec!["credentials[1] (no-target)", "`target`"],
        ),
    ];
    for (extra, expected) in cases {
        let error = load(&extra).expect_err(&extra).to_string();
        for text in expected {
            assert!(error.contains(text), "{text:?} in: {error}");
        }
    }

    // Accepted by Settings::load, refused by server::start: files that are not there, and a
    // credential whose base could not be built.
    let extra = format!(
        "[[credentials]]\nname = \"broken-user\"\nkind = \"authorized_user\"\nfile = \"missing-user.json\"\n\n{}{}",
        impersonated("on-broken", &format!("base = \"broken-user\"\n{target}")),
        impersonated("missing-file", "file = \"missing-impersonated.json\"\n"),
    );
    let settings = load(&extra).expect("valid settings");
    let error = token_broker::server::start(settings)
        .await
        .expect_err("credentials cannot be built")
        .to_string();
    for text in [
        "credentials[1] (broken-user)",
        "missing-user.json",
        "credentials[2] (on-broken): its base \"broken-user\" could not be loaded",
        "credentials[3] (missing-file)",
        "missing-impersonated.json",
    ] {
        assert!(error.contains(text), "{text:?} in: {error}");
    }
    harness.stop().await;
}
