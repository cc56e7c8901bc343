//! The emulator over real HTTP on loopback: every endpoint, its strictness, and fault injection.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use gcp_emulator::keys::{PublicKey, SigningKey, UnverifiedJwt};
use gcp_emulator::{Emulator, Endpoint, Fault, RunningEmulator, World};
use serde_json::{Value, json};

const BROKER: &str = "broker@dev-project.iam.gserviceaccount.com";
const READER: &str = "reader@dev-project.iam.gserviceaccount.com";
const WRITER: &str = "writer@dev-project.iam.gserviceaccount.com";
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The directory id `world_with` gives bob@example.com.
const BOB_ID: &str = "100000000000000000042";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// tokeninfo's `expires_in`, a decimal string as Google sends it.
fn expires_in(info: &Value) -> i64 {
    info["expires_in"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("expires_in")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// The held key of a service account, loaded from the key file the emulator hands out.
fn account_key(emulator: &RunningEmulator, email: &str) -> SigningKey {
    let file = emulator.key_file(email).expect("key file");
    SigningKey::from_pkcs8_pem(
        file["private_key_id"].as_str().expect("kid"),
        file["private_key"].as_str().expect("pem"),
        email,
    )
    .expect("key")
}

fn assertion(key: &SigningKey, claims: Value) -> String {
    key.sign_jwt(&claims).expect("sign")
}

fn bearer_claims(email: &str, scope: &str) -> Value {
    let iat = now();
    json!({"iss": email, "scope": scope, "aud": GOOGLE_TOKEN_URL, "iat": iat, "exp": iat + 3600})
}

async fn post_assertion(emulator: &RunningEmulator, jwt: &str) -> (u16, Value) {
    let response = client()
        .post(format!("{}/token", emulator.url()))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", jwt),
        ])
        .send()
        .await
        .expect("send");
    (
        response.status().as_u16(),
        response.json().await.expect("json"),
    )
}

async fn tokeninfo(emulator: &RunningEmulator, token: &str) -> (u16, Value) {
    let response = client()
        .get(format!("{}/tokeninfo", emulator.url()))
        .query(&[("access_token", token)])
        .send()
        .await
        .expect("send");
    (
        response.status().as_u16(),
        response.json().await.expect("json"),
    )
}

async fn broker_token(emulator: &RunningEmulator) -> String {
    let key = account_key(emulator, BROKER);
    let (status, body) = post_assertion(
        emulator,
        &assertion(&key, bearer_claims(BROKER, CLOUD_PLATFORM)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().expect("token").to_owned()
}

async fn iam(
    emulator: &RunningEmulator,
    token: &str,
    target: &str,
    method: &str,
    body: Value,
) -> (u16, Value) {
    let response = client()
        .post(format!(
            "{}/v1/projects/-/serviceAccounts/{target}:{method}",
            emulator.url()
        ))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("send");
    (
        response.status().as_u16(),
        response.json().await.expect("json"),
    )
}

fn world_with(extra: &str) -> World {
    let text = format!(
        r#"
[[projects]]
id = "dev-project"
number = "123456789012"

[[service_accounts]]
email = "{BROKER}"
dwd = true
dwd_scopes = ["https://www.googleapis.com/auth/admin.directory.user.readonly"]

[[service_accounts]]
email = "nodwd@dev-project.iam.gserviceaccount.com"

[[service_accounts]]
email = "{READER}"
key = false
token_creators = ["serviceAccount:{BROKER}", "serviceAccount:{WRITER}"]

[[service_accounts]]
email = "{WRITER}"
key = false
token_creators = ["serviceAccount:{BROKER}"]

[[workspace_users]]
email = "alice@example.com"

[[workspace_users]]
email = "bob@example.com"
id = "{BOB_ID}"
{extra}
"#
    );
    let world: World = toml::from_str(&text).expect("world");
    world.validate().expect("valid world");
    world
}

#[tokio::test]
async fn jwt_bearer_grant_mints_a_token_that_tokeninfo_describes() {
    let emulator = Emulator::builder().start().await.expect("start");
    let token = broker_token(&emulator).await;
    assert!(token.starts_with("ya29."), "{token}");

    let (status, info) = tokeninfo(&emulator, &token).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["email"], BROKER);
    assert_eq!(info["principal"], format!("serviceAccount:{BROKER}"));
    assert_eq!(info["scope"], CLOUD_PLATFORM);
    assert_eq!(info["grant"], "jwt-bearer");
    let unique_id = emulator
        .state()
        .world
        .service_account(BROKER)
        .expect("broker@")
        .unique_id();
    assert_eq!(
        info["sub"], unique_id,
        "sub is the numeric id, not the email"
    );
    assert_eq!(info["azp"], unique_id);
    let remaining = expires_in(&info);
    assert!((3590..=3599).contains(&remaining), "{remaining}");

    let (status, body) = tokeninfo(&emulator, "ya29.unknown").await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"error": "invalid_token", "error_description": "Invalid Value"})
        )
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn the_token_endpoint_rejects_bad_assertions_like_google() {
    let emulator = Emulator::builder()
        .world(world_with(""))
        .start()
        .await
        .expect("start");
    let key = account_key(&emulator, BROKER);
    let stranger = SigningKey::generate("stranger").expect("key");
    let iat = now();
    let dwd_scope = "https://www.googleapis.com/auth/admin.directory.user.readonly";
    let nodwd = "nodwd@dev-project.iam.gserviceaccount.com";
    let nodwd_key = account_key(&emulator, nodwd);

    let tampered = {
        let jwt = assertion(&key, bearer_claims(BROKER, CLOUD_PLATFORM));
        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD
            .encode(bearer_claims(BROKER, "https://www.googleapis.com/auth/admin").to_string());
        parts.join(".")
    };
    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        (
            "tampered claims",
            tampered,
            400,
            "invalid_grant",
            "Invalid JWT Signature.",
        ),
        (
            "signed by another key",
            stranger
                .sign_jwt(&bearer_claims(BROKER, CLOUD_PLATFORM))
                .expect("sign"),
            400,
            "invalid_grant",
            "Invalid JWT Signature.",
        ),
        (
            "wrong aud",
            assertion(
                &key,
                json!({"iss": BROKER, "scope": CLOUD_PLATFORM, "aud": "https://example.com/token", "iat": iat, "exp": iat + 3600}),
            ),
            400,
            "invalid_grant",
            "Failed audience check",
        ),
        (
            "too long",
            assertion(
                &key,
                json!({"iss": BROKER, "scope": CLOUD_PLATFORM, "aud": GOOGLE_TOKEN_URL, "iat": iat, "exp": iat + 3601}),
            ),
            400,
            "invalid_grant",
            "short-lived token",
        ),
        (
            "expired",
            assertion(
                &key,
                json!({"iss": BROKER, "scope": CLOUD_PLATFORM, "aud": GOOGLE_TOKEN_URL, "iat": iat - 4000, "exp": iat - 400}),
            ),
            400,
            "invalid_grant",
            "short-lived token",
        ),
        (
            "issued in the future",
            assertion(
                &key,
                json!({"iss": BROKER, "scope": CLOUD_PLATFORM, "aud": GOOGLE_TOKEN_URL, "iat": iat + 600, "exp": iat + 1200}),
            ),
            400,
            "invalid_grant",
            "short-lived token",
        ),
        (
            "no scope",
            assertion(
                &key,
                json!({"iss": BROKER, "aud": GOOGLE_TOKEN_URL, "iat": iat, "exp": iat + 3600}),
            ),
            400,
            "invalid_scope",
            "scope",
        ),
        (
            "unknown account",
            assertion(
                &key,
                bearer_claims("ghost@dev-project.iam.gserviceaccount.com", CLOUD_PLATFORM),
            ),
            400,
            "invalid_grant",
            "account not found",
        ),
        (
            "DWD without delegation",
            assertion(
                &nodwd_key,
                json!({"iss": nodwd, "sub": "alice@example.com", "scope": dwd_scope, "aud": GOOGLE_TOKEN_URL, "iat": iat, "exp": iat + 3600}),
            ),
            401,
            "unauthorized_client",
            "not authorized",
        ),
        (
            "DWD scope not granted",
            assertion(
                &key,
                json!({"iss": BROKER, "sub": "alice@example.com", "scope": CLOUD_PLATFORM, "aud": GOOGLE_TOKEN_URL, "iat": iat, "exp": iat + 3600}),
            ),
            401,
            "unauthorized_client",
            "not authorized",
        ),
        (
            "DWD subject not an email",
            assertion(
                &key,
                json!({"iss": BROKER, "sub": "alice", "scope": dwd_scope, "aud": GOOGLE_TOKEN_URL, "iat": iat, "exp": iat + 3600}),
            ),
            400,
            "invalid_grant",
            "Invalid email or User ID",
        ),
        (
            "DWD to a user not in the directory",
            assertion(
                &key,
                json!({"iss": BROKER, "sub": "mallory@example.com", "scope": dwd_scope, "aud": GOOGLE_TOKEN_URL, "iat": iat, "exp": iat + 3600}),
            ),
            400,
            "invalid_grant",
            "Invalid email or User ID",
        ),
        (
            "DWD to a numeric id no user has",
            assertion(
                &key,
                json!({"iss": BROKER, "sub": "100000000000000000043", "scope": dwd_scope, "aud": GOOGLE_TOKEN_URL, "iat": iat, "exp": iat + 3600}),
            ),
            400,
            "invalid_grant",
            "Invalid email or User ID",
        ),
        (
            "DWD subject not a string",
            assertion(
                &key,
                json!({"iss": BROKER, "sub": 100_000_000_000_000_000_u64, "scope": dwd_scope, "aud": GOOGLE_TOKEN_URL, "iat": iat, "exp": iat + 3600}),
            ),
            400,
            "invalid_grant",
            "Invalid email or User ID",
        ),
        (
            "not a JWT",
            "not-a-jwt".to_owned(),
            400,
            "invalid_grant",
            "Invalid JWT",
        ),
    ];
    for (name, jwt, status, error, description) in cases {
        let (got_status, body) = post_assertion(&emulator, &jwt).await;
        assert_eq!(got_status, status, "{name}: {body}");
        assert_eq!(body["error"], error, "{name}: {body}");
        let text = body["error_description"].as_str().expect("description");
        assert!(text.contains(description), "{name}: {text}");
    }

    // The allowed DWD case, and the emulator's own URL as the audience (what Go clients send).
    let dwd = assertion(
        &key,
        json!({"iss": BROKER, "sub": "alice@example.com", "scope": dwd_scope, "aud": format!("{}/token", emulator.url()), "iat": iat, "exp": iat + 3600}),
    );
    let (status, body) = post_assertion(&emulator, &dwd).await;
    assert_eq!(status, 200, "{body}");
    let (_, info) = tokeninfo(&emulator, body["access_token"].as_str().expect("token")).await;
    assert_eq!(info["subject"], "alice@example.com");
    assert_eq!(info["principal"], "user:alice@example.com");
    let alice_id = emulator.state().world.user_id("alice@example.com");
    assert_eq!(info["sub"], alice_id, "the user's numeric id");
    assert!(alice_id.len() == 21 && alice_id.bytes().all(|b| b.is_ascii_digit()));
    let broker_id = emulator
        .state()
        .world
        .service_account(BROKER)
        .expect("broker@")
        .unique_id();
    assert_eq!(info["azp"], broker_id, "the client is the service account");

    // A user named by any case of the email, or by numeric id, is the directory's user.
    for (sub, email, id) in [
        ("Alice@Example.COM", "alice@example.com", alice_id.as_str()),
        (BOB_ID, "bob@example.com", BOB_ID),
    ] {
        let jwt = assertion(
            &key,
            json!({"iss": BROKER, "sub": sub, "scope": dwd_scope, "aud": GOOGLE_TOKEN_URL, "iat": iat, "exp": iat + 3600}),
        );
        let (status, body) = post_assertion(&emulator, &jwt).await;
        assert_eq!(status, 200, "{sub}: {body}");
        let (_, info) = tokeninfo(&emulator, body["access_token"].as_str().expect("token")).await;
        assert_eq!(
            (&info["email"], &info["principal"], &info["sub"]),
            (&json!(email), &json!(format!("user:{email}")), &json!(id)),
            "{sub}"
        );
    }

    let response = client()
        .post(format!("{}/token", emulator.url()))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(
        response.json::<Value>().await.expect("json")["error"],
        "unsupported_grant_type"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn id_tokens_verify_against_the_published_keys_and_survive_one_rotation() {
    let emulator = Emulator::builder().start().await.expect("start");
    let key = account_key(&emulator, BROKER);
    let iat = now();
    let claims = json!({"iss": BROKER, "target_audience": "https://service.example.com", "aud": GOOGLE_TOKEN_URL, "iat": iat, "exp": iat + 3600});
    let (status, body) = post_assertion(&emulator, &assertion(&key, claims)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(1),
        "only id_token: {body}"
    );
    let id_token = body["id_token"].as_str().expect("id_token").to_owned();

    let jwks = |url: String| async move {
        client()
            .get(url)
            .send()
            .await
            .expect("send")
            .json::<Value>()
            .await
            .expect("json")
    };
    let verify = |token: &str, jwks: &Value| {
        let jwt = UnverifiedJwt::parse(token).expect("jwt");
        let jwk = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .find(|k| k["kid"].as_str() == jwt.kid())
            .cloned();
        jwk.is_some_and(|k| {
            jwt.verify(
                &PublicKey::from_jwk_components(
                    k["n"].as_str().expect("n"),
                    k["e"].as_str().expect("e"),
                )
                .expect("key"),
            )
        })
    };
    let before = jwks(format!("{}/oauth2/v3/certs", emulator.url())).await;
    assert!(verify(&id_token, &before));
    let jwt = UnverifiedJwt::parse(&id_token).expect("jwt");
    assert_eq!(jwt.claim_str("iss"), Some("https://accounts.google.com"));
    assert_eq!(jwt.claim_str("aud"), Some("https://service.example.com"));
    assert_eq!(jwt.claim_str("email"), Some(BROKER));
    assert_eq!(
        jwt.claim_numeric_date("exp")
            .zip(jwt.claim_numeric_date("iat"))
            .map(|(e, i)| e - i),
        Some(3600)
    );

    emulator.rotate_signing_key().expect("rotate");
    let after = jwks(format!("{}/oauth2/v3/certs", emulator.url())).await;
    assert_eq!(after["keys"].as_array().map(Vec::len), Some(2));
    assert!(
        verify(&id_token, &after),
        "the previous key stays published"
    );
    let v1 = jwks(format!("{}/oauth2/v1/certs", emulator.url())).await;
    assert_eq!(v1.as_object().map(|o| o.len()), Some(2));
    assert!(v1.as_object().expect("map").values().all(|pem| {
        pem.as_str()
            .is_some_and(|p| p.starts_with("-----BEGIN CERTIFICATE-----"))
    }));
    emulator.shutdown().await;
}

#[tokio::test]
async fn iam_credentials_check_token_creator_on_every_hop() {
    let emulator = Emulator::builder()
        .world(world_with(""))
        .start()
        .await
        .expect("start");
    let token = broker_token(&emulator).await;

    let (status, body) = iam(
        &emulator,
        &token,
        READER,
        "generateAccessToken",
        json!({"delegates": null, "scope": [CLOUD_PLATFORM], "lifetime": "600s"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let expire_time = body["expireTime"].as_str().expect("expireTime");
    assert_eq!(expire_time.len(), 20, "whole seconds, Z: {expire_time}");
    assert!(expire_time.ends_with('Z'));
    let (_, info) = tokeninfo(&emulator, body["accessToken"].as_str().expect("token")).await;
    assert_eq!(info["principal"], format!("serviceAccount:{READER}"));
    assert_eq!(info["grant"], "generate-access-token");
    assert!((590..=600).contains(&expires_in(&info)), "{info}");

    // broker -> writer -> reader: writer holds Token Creator on reader.
    let (status, body) = iam(&emulator, &token, READER, "generateAccessToken", json!({"delegates": [format!("projects/-/serviceAccounts/{WRITER}")], "scope": [CLOUD_PLATFORM]})).await;
    assert_eq!(status, 200, "{body}");
    let (_, info) = tokeninfo(&emulator, body["accessToken"].as_str().expect("token")).await;
    assert_eq!(info["delegates"], json!([WRITER]));

    // broker -> reader -> writer: reader is not Token Creator on writer.
    let (status, body) = iam(
        &emulator,
        &token,
        WRITER,
        "generateAccessToken",
        json!({"delegates": [READER], "scope": [CLOUD_PLATFORM]}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
    assert_eq!(
        body["error"]["details"][0]["reason"],
        "IAM_PERMISSION_DENIED"
    );

    // A reader token cannot act as broker (no binding).
    let (status, body) = iam(
        &emulator,
        &token,
        BROKER,
        "generateAccessToken",
        json!({"scope": [CLOUD_PLATFORM]}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"]["details"][0]["metadata"]["permission"],
        "iam.serviceAccounts.getAccessToken"
    );

    let cases = [
        (
            json!({"scope": [CLOUD_PLATFORM], "lifetime": "7200s"}),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            json!({"scope": [CLOUD_PLATFORM], "lifetime": "1h"}),
            400,
            "INVALID_ARGUMENT",
        ),
        (json!({"scope": []}), 400, "INVALID_ARGUMENT"),
    ];
    for (request, status, name) in cases {
        let (got, body) = iam(
            &emulator,
            &token,
            READER,
            "generateAccessToken",
            request.clone(),
        )
        .await;
        assert_eq!(
            (got, body["error"]["status"].as_str()),
            (status, Some(name)),
            "{request}: {body}"
        );
    }
    let (status, body) = iam(
        &emulator,
        &token,
        "ghost@dev-project.iam.gserviceaccount.com",
        "generateAccessToken",
        json!({"scope": [CLOUD_PLATFORM]}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (404, Some("NOT_FOUND")),
        "{body}"
    );
    let (status, body) = iam(
        &emulator,
        "ya29.forged",
        READER,
        "generateAccessToken",
        json!({"scope": [CLOUD_PLATFORM]}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (401, Some("UNAUTHENTICATED")),
        "{body}"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn sign_blob_and_sign_jwt_use_the_accounts_published_key() {
    let emulator = Emulator::builder().start().await.expect("start");
    let token = broker_token(&emulator).await;
    let public = emulator.state().account_keys[READER].public_key();

    let (status, body) = iam(
        &emulator,
        &token,
        READER,
        "signBlob",
        json!({"payload": STANDARD.encode(b"hello")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let signature = STANDARD
        .decode(body["signedBlob"].as_str().expect("signedBlob"))
        .expect("base64");
    assert!(public.verify(b"hello", &signature));
    let certs: Value = client()
        .get(format!(
            "{}/robot/v1/metadata/x509/{READER}",
            emulator.url()
        ))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert!(
        certs.get(body["keyId"].as_str().expect("keyId")).is_some(),
        "{certs}"
    );

    let exp = now() + 600;
    let (status, body) = iam(
        &emulator,
        &token,
        READER,
        "signJwt",
        json!({"payload": json!({"sub": "x", "exp": exp}).to_string()}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let jwt = UnverifiedJwt::parse(body["signedJwt"].as_str().expect("signedJwt")).expect("jwt");
    assert!(jwt.verify(&public));
    assert_eq!(jwt.kid(), body["keyId"].as_str());

    let too_late = json!({"exp": now() + 13 * 3600}).to_string();
    let (status, _) = iam(
        &emulator,
        &token,
        READER,
        "signJwt",
        json!({ "payload": too_late }),
    )
    .await;
    assert_eq!(status, 400);
    // exp must be a JSON integer, and hostile values are refused, never overflowed.
    for (exp, why) in [
        (json!(exp as f64 + 0.5), "integer"),
        (json!(1.7e9), "integer"),
        (json!(exp.to_string()), "integer"),
        (Value::Null, "integer"),
        (json!(-1), "in the past"),
        (json!(i64::MIN), "in the past"),
        (json!(i64::MAX), "12 hours"),
        (json!(u64::MAX), "12 hours"),
    ] {
        let payload = json!({"sub": "x", "exp": exp}).to_string();
        let (status, body) = iam(
            &emulator,
            &token,
            READER,
            "signJwt",
            json!({ "payload": payload }),
        )
        .await;
        assert_eq!(status, 400, "{exp}: {body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains(why), "{exp}: {message}");
    }
    let (status, _) = iam(
        &emulator,
        &token,
        READER,
        "signBlob",
        json!({"payload": "%%%"}),
    )
    .await;
    assert_eq!(status, 400);
    emulator.shutdown().await;
}

#[tokio::test]
async fn faults_fail_count_delay_and_drop() {
    let emulator = Emulator::builder().start().await.expect("start");
    let key = account_key(&emulator, BROKER);
    let jwt = assertion(&key, bearer_claims(BROKER, CLOUD_PLATFORM));
    let fault = |v: Value| serde_json::from_value::<Fault>(v).expect("fault");

    emulator
        .inject_fault(fault(
            json!({"endpoint": "oauth2.token", "status": 429, "retry_after_secs": 7, "times": 1}),
        ))
        .expect("inject");
    let response = client()
        .post(format!("{}/token", emulator.url()))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", jwt.as_str()),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(
        response.json::<Value>().await.expect("json")["error"],
        "temporarily_unavailable"
    );
    assert_eq!(
        post_assertion(&emulator, &jwt).await.0,
        200,
        "times=1 is used up"
    );
    assert_eq!(emulator.count(Endpoint::OAuth2Token), 2);

    emulator
        .inject_fault(fault(
            json!({"endpoint": "oauth2.token", "malformed_body": true, "times": 1}),
        ))
        .expect("inject");
    let response = client()
        .post(format!("{}/token", emulator.url()))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", jwt.as_str()),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 200);
    assert!(serde_json::from_str::<Value>(&response.text().await.expect("text")).is_err());

    emulator
        .inject_fault(fault(
            json!({"endpoint": "oauth2.token", "drop_connection": true, "times": 1}),
        ))
        .expect("inject");
    let dropped = async {
        let response = client()
            .post(format!("{}/token", emulator.url()))
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", jwt.as_str()),
            ])
            .send()
            .await?;
        response.bytes().await
    };
    assert!(dropped.await.is_err(), "the connection is dropped");

    emulator
        .inject_fault(fault(
            json!({"endpoint": "oauth2.token", "delay_ms": 300, "times": 1}),
        ))
        .expect("inject");
    let started = std::time::Instant::now();
    assert_eq!(post_assertion(&emulator, &jwt).await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    emulator
        .inject_fault(fault(
            json!({"endpoint": "iam.generateAccessToken", "status": 503}),
        ))
        .expect("inject");
    let token = broker_token(&emulator).await;
    let (status, body) = iam(
        &emulator,
        &token,
        READER,
        "generateAccessToken",
        json!({"scope": [CLOUD_PLATFORM]}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (503, Some("UNAVAILABLE"))
    );
    emulator.clear_faults();
    let (status, _) = iam(
        &emulator,
        &token,
        READER,
        "generateAccessToken",
        json!({"scope": [CLOUD_PLATFORM]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(emulator.count(Endpoint::IamGenerateAccessToken), 2);
    emulator.shutdown().await;
}

/// POSTs `form` to `path` and returns the status and the JSON body.
async fn post_form(emulator: &RunningEmulator, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = client()
        .post(format!("{}{path}", emulator.url()))
        .form(form)
        .send()
        .await
        .expect("send");
    (
        response.status().as_u16(),
        response.json().await.expect("json"),
    )
}

#[tokio::test]
async fn status_faults_answer_the_error_code_and_description_they_name() {
    let emulator = Emulator::builder().start().await.expect("start");
    let key = account_key(&emulator, BROKER);
    let jwt = assertion(&key, bearer_claims(BROKER, CLOUD_PLATFORM));
    let bearer = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
        ("assertion", jwt.as_str()),
    ];
    let token = broker_token(&emulator).await;
    let downscope = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("subject_token", token.as_str()),
        (
            "options",
            r#"{"accessBoundary":{"accessBoundaryRules":[{"availableResource":"//storage.googleapis.com/projects/_/buckets/b","availablePermissions":["inRole:roles/storage.objectViewer"]}]}}"#,
        ),
    ];
    let long = format!("line\nbreak \u{1b}[31m{}", "x".repeat(10_000));

    // OAuth endpoints: the body is exactly {"error", "error_description"}, sent as given.
    let oauth_cases = [
        (
            json!({"endpoint": "oauth2.token", "status": 400, "error": "invalid_grant",
                   "error_description": "Invalid email or User ID"}),
            "/token",
            &bearer[..],
            400,
            json!({"error": "invalid_grant", "error_description": "Invalid email or User ID"}),
        ),
        (
            json!({"endpoint": "oauth2.token", "status": 403, "error": "access_denied"}),
            "/token",
            &bearer[..],
            403,
            json!({"error": "access_denied", "error_description": "injected fault: HTTP 403"}),
        ),
        (
            json!({"endpoint": "oauth2.token", "status": 401, "error_description": long}),
            "/token",
            &bearer[..],
            401,
            json!({"error": "invalid_client", "error_description": long}),
        ),
        (
            json!({"endpoint": "sts.token", "status": 400, "error": "invalid target!\n",
                   "error_description": "no such pool"}),
            "/v1/token",
            &downscope[..],
            400,
            json!({"error": "invalid target!\n", "error_description": "no such pool"}),
        ),
        // Without error and error_description, the body is as it always was.
        (
            json!({"endpoint": "sts.token", "status": 503}),
            "/v1/token",
            &downscope[..],
            503,
            json!({"error": "temporarily_unavailable",
                   "error_description": "injected fault: HTTP 503"}),
        ),
    ];
    for (mut rule, path, form, status, body) in oauth_cases {
        rule["times"] = json!(1);
        emulator
            .inject_fault(serde_json::from_value::<Fault>(rule.clone()).expect("fault"))
            .expect("valid rule");
        let answer = post_form(&emulator, path, form).await;
        assert_eq!(answer, (status, body), "{rule}");
    }
    assert_eq!(post_form(&emulator, "/token", &bearer).await.0, 200);
    assert_eq!(post_form(&emulator, "/v1/token", &downscope).await.0, 200);

    // IAM Credentials: the envelope's message, an ErrorInfo reason, the status from HTTP's.
    let iam_cases = [
        (
            json!({"endpoint": "iam.generateAccessToken", "status": 403,
                   "error": "IAM_PERMISSION_DENIED",
                   "error_description": "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist)."}),
            json!({"error": {
                "code": 403,
                "message": "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
                "status": "PERMISSION_DENIED",
                "details": [{
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "IAM_PERMISSION_DENIED",
                    "domain": "iam.googleapis.com",
                    "metadata": {},
                }],
            }}),
        ),
        (
            json!({"endpoint": "iam.generateAccessToken", "status": 404,
                   "error_description": "Not found; Gaia id not found for email x@y"}),
            json!({"error": {"code": 404, "message": "Not found; Gaia id not found for email x@y",
                             "status": "NOT_FOUND"}}),
        ),
        (
            json!({"endpoint": "iam.generateAccessToken", "status": 429,
                   "error": "RATE_LIMIT_EXCEEDED"}),
            json!({"error": {
                "code": 429,
                "message": "injected fault: HTTP 429",
                "status": "RESOURCE_EXHAUSTED",
                "details": [{
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "RATE_LIMIT_EXCEEDED",
                    "domain": "iam.googleapis.com",
                    "metadata": {},
                }],
            }}),
        ),
        (
            json!({"endpoint": "iam.generateAccessToken", "status": 500}),
            json!({"error": {"code": 500, "message": "injected fault: HTTP 500",
                             "status": "INTERNAL"}}),
        ),
    ];
    for (mut rule, body) in iam_cases {
        rule["times"] = json!(1);
        emulator
            .inject_fault(serde_json::from_value::<Fault>(rule.clone()).expect("fault"))
            .expect("valid rule");
        let status = body["error"]["code"].as_u64().expect("code");
        let answer = iam(
            &emulator,
            &token,
            READER,
            "generateAccessToken",
            json!({"scope": [CLOUD_PLATFORM]}),
        )
        .await;
        assert_eq!(
            answer,
            (u16::try_from(status).expect("status"), body),
            "{rule}"
        );
    }

    // The rules are checked, over the admin API as through inject_fault.
    let admin = format!("{}/_emulator/faults", emulator.url());
    for (rule, complaint) in [
        (
            json!({"endpoint": "oauth2.token", "error": "invalid_grant"}),
            "need status",
        ),
        (
            json!({"endpoint": "sts.token", "delay_ms": 10, "error_description": "slow"}),
            "need status",
        ),
        (
            json!({"endpoint": "metadata", "status": 503, "error": "internal_failure"}),
            "metadata",
        ),
        (
            json!({"endpoint": "metadata", "status": 403, "error_description": "no"}),
            "metadata",
        ),
    ] {
        let response = client()
            .post(&admin)
            .json(&rule)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status().as_u16(), 400, "{rule}");
        let body: Value = response.json().await.expect("json");
        let message = body["error"].as_str().expect("message");
        assert!(message.contains(complaint), "{rule}: {message}");
        let refused = emulator
            .inject_fault(serde_json::from_value::<Fault>(rule.clone()).expect("fault"))
            .expect_err("invalid rule");
        assert!(refused.to_string().contains(complaint), "{refused}");
    }
    let response = client()
        .post(&admin)
        .json(
            &json!({"endpoint": "oauth2.token", "status": 400, "error": "invalid_scope",
                      "error_description": "Empty or missing scope not allowed.", "times": 1}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 204);
    assert_eq!(
        post_form(&emulator, "/token", &bearer).await,
        (
            400,
            json!({"error": "invalid_scope",
                   "error_description": "Empty or missing scope not allowed."})
        )
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn admin_api_sets_lifetimes_and_validates_faults() {
    let emulator = Emulator::builder().start().await.expect("start");
    let http = client();
    let admin = |path: &str| format!("{}/_emulator/{path}", emulator.url());
    let response = http
        .put(admin("token-lifetime"))
        .json(&json!({"seconds": 30}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 204);
    let token = broker_token(&emulator).await;
    let (_, info) = tokeninfo(&emulator, &token).await;
    assert!((25..=30).contains(&expires_in(&info)), "{info}");
    http.delete(admin("token-lifetime"))
        .send()
        .await
        .expect("send");
    let (_, info) = tokeninfo(&emulator, &broker_token(&emulator).await).await;
    assert!(expires_in(&info) > 3500);

    let response = http
        .post(admin("faults"))
        .json(&json!({"endpoint": "sts.token"}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 400);
    let response = http
        .post(admin("faults"))
        .json(&json!({"endpoint": "sts.token", "status": 500, "times": 1}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 204);
    let counters: Value = http
        .get(admin("counters"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(counters["oauth2.token"], 2);
    assert_eq!(counters["oauth2.tokeninfo"], 2);
    let response = http
        .put(admin("token-lifetime"))
        .json(&json!({"seconds": 0}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 400);
    emulator.shutdown().await;
}

#[tokio::test]
async fn metadata_server_speaks_the_gce_protocol() {
    let emulator = Emulator::builder().start().await.expect("start");
    let http = client();
    let url = |path: &str| format!("{}/computeMetadata/v1/{path}", emulator.url());
    let get = |path: &str| http.get(url(path)).header("Metadata-Flavor", "Google");

    let ping = http
        .get(format!("{}/", emulator.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(ping.status().as_u16(), 200);
    assert_eq!(ping.headers()["metadata-flavor"], "Google");

    let no_flavor = http
        .get(url("project/project-id"))
        .send()
        .await
        .expect("send");
    assert_eq!(no_flavor.status().as_u16(), 403);
    assert_eq!(no_flavor.headers()["metadata-flavor"], "Google");
    let forwarded = get("project/project-id")
        .header("X-Forwarded-For", "10.0.0.1")
        .send()
        .await
        .expect("send");
    assert_eq!(forwarded.status().as_u16(), 403);

    let project = get("project/project-id").send().await.expect("send");
    assert_eq!(project.headers()["content-type"], "application/text");
    assert_eq!(project.text().await.expect("text"), "dev-project");
    assert_eq!(
        get("project/numeric-project-id")
            .send()
            .await
            .expect("send")
            .text()
            .await
            .expect("text"),
        "123456789012"
    );
    assert_eq!(
        get("instance/zone")
            .send()
            .await
            .expect("send")
            .text()
            .await
            .expect("text"),
        "projects/123456789012/zones/us-central1-a"
    );
    assert_eq!(
        get("instance/service-accounts/")
            .send()
            .await
            .expect("send")
            .text()
            .await
            .expect("text"),
        format!("default/\n{BROKER}/\n")
    );

    let account: Value = get("instance/service-accounts/default/?recursive=true")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(account["email"], BROKER);
    assert_eq!(account["scopes"], json!([CLOUD_PLATFORM]));

    let token = get("instance/service-accounts/default/token?scopes=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fdevstorage.read_only%2Copenid")
        .send()
        .await
        .expect("send");
    assert_eq!(token.headers()["content-type"], "application/json");
    let token: Value = token.json().await.expect("json");
    assert!(
        token["expires_in"].is_i64() && token["expires_in"].as_i64() > Some(225),
        "{token}"
    );
    let (_, info) = tokeninfo(&emulator, token["access_token"].as_str().expect("token")).await;
    assert_eq!(
        info["scope"],
        "https://www.googleapis.com/auth/devstorage.read_only openid"
    );
    assert_eq!(info["grant"], "metadata");

    let identity = get(&format!(
        "instance/service-accounts/{BROKER}/identity?audience=https://svc.example.com&format=full"
    ))
    .send()
    .await
    .expect("send");
    assert_eq!(identity.status().as_u16(), 200);
    assert!(
        identity.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    let jwt = UnverifiedJwt::parse(&identity.text().await.expect("text")).expect("jwt");
    assert_eq!(
        jwt.claims["google"]["compute_engine"]["project_id"],
        "dev-project"
    );
    assert_eq!(
        get("instance/service-accounts/default/identity")
            .send()
            .await
            .expect("send")
            .status()
            .as_u16(),
        400
    );

    let missing = get("instance/service-accounts/ghost@x.iam.gserviceaccount.com/token")
        .send()
        .await
        .expect("send");
    assert_eq!(missing.status().as_u16(), 404);
    assert!(
        missing.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    let redirect = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(url("instance/service-accounts/default"))
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .expect("send");
    assert_eq!(redirect.status().as_u16(), 301);
    assert_eq!(
        redirect.headers()["location"],
        "/computeMetadata/v1/instance/service-accounts/default/"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn sts_downscopes_and_exchanges_oidc_tokens() {
    let issuer = SigningKey::generate("issuer").expect("key");
    let jwks = json!({"keys": [issuer.jwk()]}).to_string();
    let provider_name =
        "projects/123456789012/locations/global/workloadIdentityPools/ci/providers/oidc";
    let world = world_with(&format!(
        r#"
[[workload_identity_pools]]
project_number = "123456789012"
pool = "ci"

[[workload_identity_pools.providers]]
id = "oidc"
issuer = "https://issuer.example.com"
jwks_json = '{jwks}'
attribute_condition = "assertion.repository == 'org/app'"
"#
    ));
    let emulator = Emulator::builder()
        .world(world)
        .start()
        .await
        .expect("start");
    let http = client();
    let sts = |form: Vec<(&'static str, String)>| {
        let request = http
            .post(format!("{}/v1/token", emulator.url()))
            .form(&form);
        async move {
            let response = request.send().await.expect("send");
            (
                response.status().as_u16(),
                response.json::<Value>().await.expect("json"),
            )
        }
    };

    // Downscoping: no expires_in, same expiry, boundary recorded.
    let source = broker_token(&emulator).await;
    let boundary = json!({"accessBoundary": {"accessBoundaryRules": [{"availableResource": "//storage.googleapis.com/projects/_/buckets/b", "availablePermissions": ["inRole:roles/storage.objectViewer"]}]}});
    let (status, body) = sts(vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange".into(),
        ),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token".into(),
        ),
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token".into(),
        ),
        ("subject_token", source.clone()),
        ("options", boundary.to_string()),
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("expires_in").is_none(), "{body}");
    let (_, downscoped) = tokeninfo(&emulator, body["access_token"].as_str().expect("token")).await;
    let (_, original) = tokeninfo(&emulator, &source).await;
    assert_eq!(downscoped["grant"], "sts-downscope");
    assert_eq!(downscoped["access_boundary"], boundary["accessBoundary"]);
    assert_eq!(downscoped["exp"], original["exp"]);
    assert_eq!(downscoped["sub"], original["sub"], "still broker@'s token");

    // Federation with an OIDC token.
    let iat = now();
    let subject_token = |claims: Value| issuer.sign_jwt(&claims).expect("sign");
    let good = json!({"iss": "https://issuer.example.com", "aud": format!("https://iam.googleapis.com/{provider_name}"), "sub": "repo:org/app", "repository": "org/app", "iat": iat, "exp": iat + 600});
    let exchange = |token: String, audience: String| {
        vec![
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange".into(),
            ),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:jwt".into(),
            ),
            (
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:access_token".into(),
            ),
            ("audience", audience),
            ("scope", CLOUD_PLATFORM.into()),
            ("subject_token", token),
        ]
    };
    let audience = format!("//iam.googleapis.com/{provider_name}");
    let (status, body) = sts(exchange(subject_token(good.clone()), audience.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 3600);
    let (_, info) = tokeninfo(&emulator, body["access_token"].as_str().expect("token")).await;
    assert_eq!(
        info["principal"],
        format!(
            "principal://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/ci/subject/repo:org/app"
        )
    );
    assert!(
        info.get("sub").is_none(),
        "a federated principal has no Google account id: {info}"
    );

    let mut wrong_repo = good.clone();
    wrong_repo["repository"] = "org/other".into();
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = "https://elsewhere".into();
    let mut expired = good.clone();
    expired["exp"] = (iat - 1000).into();
    let with = |name: &str, value: Value| {
        let mut claims = good.clone();
        claims[name] = value;
        subject_token(claims)
    };
    let hostile = [
        with("exp", json!((iat + 600) as f64 + 0.5)),
        with("exp", json!((iat + 600).to_string())),
        with("exp", json!(u64::MAX)),
        with("exp", json!(-1)),
        with("exp", json!(i64::MIN)),
        with("exp", Value::Null),
        with("iat", json!(iat as f64 + 0.5)),
        with("iat", json!(i64::MAX)),
        with("iat", json!(u64::MAX)),
        with("iat", json!(iat.to_string())),
    ];
    for token in hostile {
        let (status, body) = sts(exchange(token, audience.clone())).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "{body}"
        );
    }
    let cases = [
        (
            subject_token(wrong_repo),
            audience.clone(),
            "unauthorized_client",
        ),
        (subject_token(wrong_aud), audience.clone(), "invalid_grant"),
        (subject_token(expired), audience.clone(), "invalid_grant"),
        (
            SigningKey::generate("x")
                .expect("key")
                .sign_jwt(&good)
                .expect("sign"),
            audience.clone(),
            "invalid_grant",
        ),
        (
            subject_token(good.clone()),
            audience.replace("/oidc", "/nope"),
            "invalid_target",
        ),
        (
            subject_token(good.clone()),
            "//iam.googleapis.com/nonsense".to_owned(),
            "invalid_request",
        ),
    ];
    for (token, audience, error) in cases {
        let (status, body) = sts(exchange(token, audience.clone())).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(error)),
            "{audience}: {body}"
        );
    }
    emulator.shutdown().await;
}

#[tokio::test]
async fn the_binary_layout_key_files_are_reused_across_restarts() {
    let dir = std::env::temp_dir().join(format!("gcp-emulator-test-{}", std::process::id()));
    let first = Emulator::builder()
        .data_dir(&dir)
        .start()
        .await
        .expect("start");
    let env = std::fs::read_to_string(dir.join("emulator.env")).expect("env");
    assert_eq!(
        env,
        format!(
            "GCP_EMULATOR_URL={}\nGCP_EMULATOR_STS_MTLS_URL={}\n",
            first.url(),
            first.sts_mtls_url()
        )
    );
    let key_file: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("keys/broker.json")).expect("key file"),
    )
    .expect("json");
    assert_eq!(key_file["token_uri"], format!("{}/token", first.url()));
    assert_eq!(key_file["type"], "service_account");
    assert!(
        !dir.join("keys/reader.json").exists(),
        "reader@ has no user-managed key"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("keys/broker.json"))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key files are private");
    }
    first.shutdown().await;

    let second = Emulator::builder()
        .data_dir(&dir)
        .start()
        .await
        .expect("restart");
    let again: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("keys/broker.json")).expect("key file"),
    )
    .expect("json");
    assert_eq!(again["private_key_id"], key_file["private_key_id"]);
    assert_eq!(again["token_uri"], format!("{}/token", second.url()));
    second.shutdown().await;
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test]
async fn hostile_iat_and_exp_are_refused_with_googles_timeframe_error() {
    let emulator = Emulator::builder().start().await.expect("start");
    let key = account_key(&emulator, BROKER);
    let iat = now();
    let with = |pairs: &[(&str, Value)]| {
        let mut claims = bearer_claims(BROKER, CLOUD_PLATFORM);
        for (name, value) in pairs {
            claims[*name] = value.clone();
        }
        claims
    };
    let without = |name: &str| {
        let mut claims = bearer_claims(BROKER, CLOUD_PLATFORM);
        claims.as_object_mut().map(|c| c.remove(name));
        claims
    };
    let cases: Vec<(&str, Value)> = vec![
        ("iat a float", with(&[("iat", json!(iat as f64))])),
        (
            "exp a float",
            with(&[("exp", json!((iat + 3600) as f64 + 0.5))]),
        ),
        ("exp in exponent form", with(&[("exp", json!(1.7e9))])),
        ("iat a string", with(&[("iat", json!(iat.to_string()))])),
        (
            "exp a string",
            with(&[("exp", json!((iat + 3600).to_string()))]),
        ),
        ("iat null", with(&[("iat", Value::Null)])),
        ("exp a boolean", with(&[("exp", json!(true))])),
        ("no iat", without("iat")),
        ("no exp", without("exp")),
        (
            "negative iat",
            with(&[("iat", json!(-1)), ("exp", json!(3599))]),
        ),
        ("negative exp", with(&[("exp", json!(-1))])),
        (
            "i64::MIN and i64::MAX",
            with(&[("iat", json!(i64::MIN)), ("exp", json!(i64::MAX))]),
        ),
        (
            "i64::MAX and i64::MIN",
            with(&[("iat", json!(i64::MAX)), ("exp", json!(i64::MIN))]),
        ),
        (
            "an hour before i64::MAX",
            with(&[("iat", json!(i64::MAX - 3600)), ("exp", json!(i64::MAX))]),
        ),
        ("exp i64::MAX", with(&[("exp", json!(i64::MAX))])),
        ("exp u64::MAX", with(&[("exp", json!(u64::MAX))])),
        (
            "both u64::MAX",
            with(&[("iat", json!(u64::MAX)), ("exp", json!(u64::MAX))]),
        ),
        ("exp beyond u64", with(&[("exp", json!(1e20))])),
        ("iat 0", with(&[("iat", json!(0))])),
    ];
    for (name, claims) in cases {
        for target_audience in [None, Some("https://service.example.com")] {
            let mut claims = claims.clone();
            if let Some(audience) = target_audience {
                claims.as_object_mut().map(|c| c.remove("scope"));
                claims["target_audience"] = audience.into();
            }
            let (status, body) = post_assertion(&emulator, &assertion(&key, claims)).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (400, Some("invalid_grant")),
                "{name}: {body}"
            );
            let description = body["error_description"].as_str().expect("description");
            assert!(
                description.starts_with("Invalid JWT: Token must be a short-lived token"),
                "{name}: {description}"
            );
        }
    }
    // Still serving, and integers in range still work.
    broker_token(&emulator).await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn the_default_world_has_a_workspace_directory_for_delegation() {
    let emulator = Emulator::builder().start().await.expect("start");
    let key = account_key(&emulator, BROKER);
    let delegate = |sub: &str| {
        let mut claims = bearer_claims(BROKER, CLOUD_PLATFORM);
        claims["sub"] = sub.into();
        assertion(&key, claims)
    };
    for user in ["alice@example.com", "bob@example.com", "carol@example.com"] {
        let (status, body) = post_assertion(&emulator, &delegate(user)).await;
        assert_eq!(status, 200, "{user}: {body}");
        let (_, info) = tokeninfo(&emulator, body["access_token"].as_str().expect("token")).await;
        assert_eq!(info["email"], user);
        assert_eq!(info["sub"], emulator.state().world.user_id(user));
    }
    let (status, body) = post_assertion(&emulator, &delegate("dave@example.com")).await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"error": "invalid_grant", "error_description": "Invalid email or User ID"})
        )
    );
    emulator.shutdown().await;
}

/// Calls the function with an optional `Authorization` header value.
async fn call_function(
    emulator: &RunningEmulator,
    post: bool,
    authorization: Option<&str>,
) -> (u16, String) {
    let http = client();
    let mut request = if post {
        http.post(emulator.function_url())
    } else {
        http.get(emulator.function_url())
    };
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.expect("send");
    (
        response.status().as_u16(),
        response.text().await.expect("text"),
    )
}

#[tokio::test]
async fn the_function_answers_only_to_google_id_tokens_for_its_own_url() {
    let emulator = Emulator::builder().start().await.expect("start");
    let function_url = emulator.function_url();
    assert_eq!(
        function_url,
        format!("{}/_emulator/function/hello", emulator.url())
    );
    let key = account_key(&emulator, BROKER);
    let id_token_for = |audience: &str| {
        let iat = now();
        assertion(
            &key,
            json!({"iss": BROKER, "target_audience": audience, "aud": GOOGLE_TOKEN_URL, "iat": iat, "exp": iat + 3600}),
        )
    };

    // JWT-bearer ID token for the function's URL: GET and POST, any case of "Bearer".
    let (status, body) = post_assertion(&emulator, &id_token_for(&function_url)).await;
    assert_eq!(status, 200, "{body}");
    let id_token = body["id_token"].as_str().expect("id_token").to_owned();
    for (post, scheme) in [(false, "Bearer"), (true, "Bearer"), (false, "bearer")] {
        let (status, text) =
            call_function(&emulator, post, Some(&format!("{scheme} {id_token}"))).await;
        assert_eq!(status, 200, "{text}");
        let body: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(body, json!({"message": "hello", "caller": BROKER}));
    }

    // The metadata server's identity token and IAM generateIdToken work the same way.
    let metadata = client()
        .get(format!(
            "{}/computeMetadata/v1/instance/service-accounts/default/identity",
            emulator.url()
        ))
        .query(&[("audience", function_url.as_str()), ("format", "full")])
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    let (status, text) = call_function(&emulator, false, Some(&format!("Bearer {metadata}"))).await;
    assert_eq!(status, 200, "{text}");
    let token = broker_token(&emulator).await;
    let (status, body) = iam(
        &emulator,
        &token,
        READER,
        "generateIdToken",
        json!({"audience": function_url, "includeEmail": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, text) = call_function(
        &emulator,
        true,
        Some(&format!(
            "Bearer {}",
            body["token"].as_str().expect("token")
        )),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).expect("json")["caller"],
        READER
    );
    // Without includeEmail the caller is the account's numeric id (sub).
    let (_, body) = iam(
        &emulator,
        &token,
        READER,
        "generateIdToken",
        json!({"audience": function_url}),
    )
    .await;
    let (status, text) = call_function(
        &emulator,
        false,
        Some(&format!(
            "Bearer {}",
            body["token"].as_str().expect("token")
        )),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let reader_id = emulator
        .state()
        .world
        .service_account(READER)
        .expect("reader@")
        .unique_id();
    assert_eq!(
        serde_json::from_str::<Value>(&text).expect("json")["caller"],
        reader_id
    );

    // Refusals: 401 without a token or with a malformed one, 403 for a token that is not for
    // this function, not Google's, or expired.
    let (_, body) = post_assertion(&emulator, &id_token_for("https://other.example.com")).await;
    let other_audience = body["id_token"].as_str().expect("id_token").to_owned();
    let (_, body) = post_assertion(&emulator, &id_token_for(emulator.url())).await;
    let base_url_audience = body["id_token"].as_str().expect("id_token").to_owned();
    let google_key = emulator.state().id_token_key();
    let claims = |exp: i64, iss: &str| {
        json!({"iss": iss, "aud": function_url, "azp": "1", "sub": "1", "email": BROKER,
               "iat": exp - 3600, "exp": exp})
    };
    let expired = google_key
        .sign_jwt(&claims(now() - 1, "https://accounts.google.com"))
        .expect("sign");
    let other_issuer = google_key
        .sign_jwt(&claims(now() + 600, "https://issuer.example.com"))
        .expect("sign");
    let forged = SigningKey::generate("forger")
        .expect("key")
        .sign_jwt(&claims(now() + 600, "https://accounts.google.com"))
        .expect("sign");
    let tampered = {
        let mut parts: Vec<String> = id_token.split('.').map(str::to_owned).collect();
        parts[1] =
            URL_SAFE_NO_PAD.encode(claims(now() + 600, "https://accounts.google.com").to_string());
        parts.join(".")
    };
    let cases: Vec<(Option<String>, u16, &str)> = vec![
        (None, 401, "no Authorization: Bearer token"),
        (
            Some(format!("Basic {}", STANDARD.encode("a:b"))),
            401,
            "no Authorization",
        ),
        (Some("Bearer ".to_owned()), 401, "no Authorization"),
        (Some(format!("Bearer {token}")), 401, "not a JWT"),
        (Some("Bearer a.b.c".to_owned()), 401, "not a JWT"),
        (Some(format!("Bearer {other_audience}")), 403, "audience"),
        (Some(format!("Bearer {base_url_audience}")), 403, "audience"),
        (Some(format!("Bearer {expired}")), 403, "expired"),
        (Some(format!("Bearer {other_issuer}")), 403, "issuer"),
        (Some(format!("Bearer {forged}")), 403, "signature"),
        (Some(format!("Bearer {tampered}")), 403, "signature"),
    ];
    for (authorization, status, why) in cases {
        let (got, text) = call_function(&emulator, false, authorization.as_deref()).await;
        assert_eq!(got, status, "{authorization:?}: {text}");
        assert!(text.contains(why), "{authorization:?}: {text}");
        assert!(
            !authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "))
                .is_some_and(|t| !t.is_empty() && text.contains(t)),
            "the token is not echoed: {text}"
        );
    }
    let response = client().get(&function_url).send().await.expect("send");
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer error=\"invalid_token\"")
    );

    // The previous ID-token key is still accepted after one rotation, not after two.
    emulator.rotate_signing_key().expect("rotate");
    let (status, _) = call_function(&emulator, false, Some(&format!("Bearer {id_token}"))).await;
    assert_eq!(status, 200);
    emulator.rotate_signing_key().expect("rotate");
    let (status, text) = call_function(&emulator, false, Some(&format!("Bearer {id_token}"))).await;
    assert_eq!((status, text.contains("signature")), (403, true), "{text}");
    emulator.shutdown().await;
}

#[tokio::test]
async fn the_default_authorized_user_file_is_gclouds_and_its_refresh_grant_works() {
    let dir = std::env::temp_dir().join(format!("gcp-emulator-user-{}", std::process::id()));
    let first = Emulator::builder()
        .data_dir(&dir)
        .start()
        .await
        .expect("start");
    let path = first
        .authorized_user_file_path("dev-user@example.com")
        .expect("path");
    assert_eq!(path, dir.join("users/dev-user.json"));
    assert_eq!(
        first.key_file_path(BROKER),
        Some(dir.join("keys/broker.json"))
    );
    assert_eq!(first.key_file_path(READER), None, "reader@ has no key");
    assert_eq!(first.authorized_user_file_path("nobody@example.com"), None);
    let text = std::fs::read_to_string(&path).expect("user file");
    let file: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        file,
        json!({
            "type": "authorized_user",
            "account": "dev-user@example.com",
            "client_id": "dev-client.apps.googleusercontent.com",
            "client_secret": "dev-secret",
            "refresh_token": "1//dev-refresh-token",
            "quota_project_id": "dev-project",
            "universe_domain": "googleapis.com",
        })
    );
    assert_eq!(
        first.authorized_user_file("Dev-User@example.com"),
        Some(file.clone())
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the refresh token is private");
    }

    // The refresh grant with exactly the file's fields, as google-auth sends it.
    let field = |name: &str| file[name].as_str().expect(name).to_owned();
    let refresh = |scope: Option<&str>| {
        let mut form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("client_id", field("client_id")),
            ("client_secret", field("client_secret")),
            ("refresh_token", field("refresh_token")),
        ];
        if let Some(scope) = scope {
            form.push(("scope", scope.to_owned()));
        }
        let request = client().post(format!("{}/token", first.url())).form(&form);
        async move {
            let response = request.send().await.expect("send");
            (
                response.status().as_u16(),
                response.json::<Value>().await.expect("json"),
            )
        }
    };
    let (status, body) = refresh(Some(CLOUD_PLATFORM)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], CLOUD_PLATFORM);
    let (_, info) = tokeninfo(&first, body["access_token"].as_str().expect("token")).await;
    assert_eq!(info["grant"], "refresh-token");
    assert_eq!(info["email"], "dev-user@example.com");
    assert_eq!(info["principal"], "user:dev-user@example.com");
    let user_id = first.state().world.user_id("dev-user@example.com");
    assert_eq!(info["sub"], user_id);
    assert_eq!(info["azp"], "dev-client.apps.googleusercontent.com");

    // Without scope: what gcloud's login consented to, with an OpenID ID token of the same id.
    let (status, body) = refresh(None).await;
    assert_eq!(status, 200, "{body}");
    let scopes: std::collections::BTreeSet<&str> =
        body["scope"].as_str().expect("scope").split(' ').collect();
    assert!(
        scopes.contains(CLOUD_PLATFORM) && scopes.contains("openid"),
        "{body}"
    );
    let id_token = UnverifiedJwt::parse(body["id_token"].as_str().expect("id_token")).expect("jwt");
    assert_eq!(id_token.claim_str("sub"), Some(user_id.as_str()));
    assert_eq!(id_token.claim_str("email"), Some("dev-user@example.com"));
    // A scope the user never consented to is refused.
    let (status, body) = refresh(Some("https://www.googleapis.com/auth/admin")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope")),
        "{body}"
    );
    first.shutdown().await;

    // Reused across restarts: the same file, still private even if someone widened it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let second = Emulator::builder()
        .data_dir(&dir)
        .start()
        .await
        .expect("restart");
    assert_eq!(std::fs::read_to_string(&path).expect("user file"), text);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    second.shutdown().await;

    // Without a data directory there are no paths, but the file's contents are known.
    let bare = Emulator::builder().start().await.expect("start");
    assert_eq!(bare.authorized_user_file_path("dev-user@example.com"), None);
    assert_eq!(bare.key_file_path(BROKER), None);
    assert!(bare.authorized_user_file("dev-user@example.com").is_some());
    bare.shutdown().await;
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// The default world's `dev-google` provider trusts the ID tokens Google signs: a service
/// account's ID token (from IAM generateIdToken) for the provider is a subject token, and
/// survives a rotation of the signing key; another issuer's token is refused.
#[tokio::test]
async fn a_google_id_token_is_a_subject_token_of_dev_google() {
    let emulator = Emulator::builder().start().await.expect("start");
    let audience = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/dev-pool/providers/dev-google";
    let token_audience = format!("https:{audience}");
    let exchange = |subject_token: String| {
        let request = client()
            .post(format!("{}/v1/token", emulator.url()))
            .form(&[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("audience", audience),
                ("scope", "https://www.googleapis.com/auth/cloud-platform"),
                (
                    "requested_token_type",
                    "urn:ietf:params:oauth:token-type:access_token",
                ),
                ("subject_token", subject_token.as_str()),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:id_token",
                ),
            ]);
        async move {
            let response = request.send().await.expect("send");
            (
                response.status().as_u16(),
                response.json::<Value>().await.expect("json"),
            )
        }
    };
    let (status, body) = exchange(google_id_token(&emulator, &token_audience).await).await;
    assert_eq!(status, 200, "{body}");
    let (_, info) = tokeninfo(&emulator, body["access_token"].as_str().expect("token")).await;
    assert!(
        info["principal"]
            .as_str()
            .is_some_and(|p| p.ends_with("/workloadIdentityPools/dev-pool/subject/")
                || p.contains("/workloadIdentityPools/dev-pool/subject/")),
        "{info}"
    );

    // Tokens of the new key verify after a rotation, as with Google's published certs.
    emulator.rotate_signing_key().expect("rotate");
    let (status, body) = exchange(google_id_token(&emulator, &token_audience).await).await;
    assert_eq!(status, 200, "{body}");

    // An OIDC token of another issuer is not Google's.
    let foreign = emulator
        .mint_oidc_token("dev-oidc", "x", Duration::from_secs(600), Value::Null)
        .expect("mint");
    let (status, body) = exchange(foreign).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    emulator.shutdown().await;
}

/// broker@'s ID token for `audience`, from IAM generateIdToken.
async fn google_id_token(emulator: &RunningEmulator, audience: &str) -> String {
    let broker = broker_token(emulator).await;
    let (status, body) = iam(
        emulator,
        &broker,
        "broker@dev-project.iam.gserviceaccount.com",
        "generateIdToken",
        json!({"audience": audience}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().expect("token").to_owned()
}
