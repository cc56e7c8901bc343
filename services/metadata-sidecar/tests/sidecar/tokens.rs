//! Access and ID tokens: the broker's (as the emulator's tokeninfo and function tell), for
//! the scopes and audiences asked, with their real remaining lifetime; the sidecar's own
//! limits per account, and the broker's policy over them.

use std::collections::BTreeSet;
use std::time::Duration;

use broker_client::{CallOptions, ConnectOptions, TokenRequest};
use e2e::{BROKER_SA, CLOUD_PLATFORM, READER_SA, STORAGE_READ, jwt_claims, unix_now};

use crate::common::*;

/// The access token, `expires_in` and the whole body of a token answer.
fn access_token(answer: &Answer) -> (String, u64) {
    let json = answer.expect(200, "application/json").json();
    let object = json.as_object().expect("an object");
    assert_eq!(
        object.keys().map(String::as_str).collect::<Vec<_>>(),
        ["access_token", "expires_in", "token_type"],
        "{json}"
    );
    assert_eq!(json["token_type"], "Bearer");
    let expires_in = json["expires_in"].as_u64().expect("an integer expires_in");
    let token = json["access_token"].as_str().expect("a token").to_owned();
    (token, expires_in)
}

fn scopes_of(tokeninfo: &serde_json::Value) -> BTreeSet<String> {
    tokeninfo["scope"]
        .as_str()
        .unwrap_or_default()
        .split(' ')
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_are_the_brokers_with_their_real_remaining_lifetime() {
    bounded(async {
        let world = World::start().await;
        let sidecar = world.ready_sidecar().await;
        let addr = sidecar.addr();

        let (token, expires_in) = access_token(&get(addr, &account_path("default", "token")).await);
        assert!((241..=3600).contains(&expires_in), "{expires_in}");
        let info = world.tokeninfo(&token).await;
        assert_eq!(info["email"], BROKER_SA, "{info}");
        assert_eq!(
            info["grant"], "jwt-bearer",
            "minted by the broker's key, {info}"
        );
        assert_eq!(
            scopes_of(&info),
            BTreeSet::from([CLOUD_PLATFORM.to_owned()])
        );

        // It is the broker's: the broker hands the same token to a direct call for the same
        // credential and scopes (it shares its cache between callers).
        let mut options = ConnectOptions::default();
        options.tls_server_name = Some("localhost".to_owned());
        let client = broker_client::connect(
            &format!("https://127.0.0.1:{}", world.broker_addr.port()),
            &world.settings().broker.tls_files(),
            &options,
        )
        .await
        .expect("connect");
        let direct = broker_client::get_access_token(
            &client,
            &TokenRequest {
                scopes: vec![CLOUD_PLATFORM.to_owned()],
                credential: Some("sa".to_owned()),
                ..TokenRequest::default()
            },
            &CallOptions::default(),
        )
        .await
        .expect("direct");
        assert_eq!(direct.secret(), token);

        // `default` and the email name the same account, and the same cached token; its
        // `expires_in` is what is left of it.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (by_email, later) = access_token(&get(addr, &account_path(BROKER_SA, "token")).await);
        assert_eq!(by_email, token);
        assert!(
            later < expires_in && later + 5 > expires_in,
            "{later} after {expires_in}"
        );

        // Scopes, comma-separated and URL-encoded as google-auth sends them.
        let wanted = format!("{STORAGE_READ},{CLOUD_PLATFORM}");
        let path = format!(
            "{}?scopes={}",
            account_path("default", "token"),
            encode(&wanted)
        );
        let (scoped, _) = access_token(&get(addr, &path).await);
        assert_ne!(scoped, token);
        assert_eq!(
            scopes_of(&world.tokeninfo(&scoped).await),
            BTreeSet::from([CLOUD_PLATFORM.to_owned(), STORAGE_READ.to_owned()])
        );
        let reordered = format!(
            "{}?scopes={CLOUD_PLATFORM},{STORAGE_READ},",
            account_path(BROKER_SA, "token")
        );
        assert_eq!(
            access_token(&get(addr, &reordered).await).0,
            scoped,
            "one key"
        );

        // Another account, by email (compute_engine.Credentials(service_account_email=...)).
        let (reader, _) = access_token(&get(addr, &account_path(READER_SA, "token")).await);
        let info = world.tokeninfo(&reader).await;
        assert_eq!(info["email"], READER_SA, "{info}");
        assert_eq!(info["grant"], "generate-access-token", "{info}");

        // The sidecar's own limit: reader@ may have only its own scopes.
        let path = format!(
            "{}?scopes={}",
            account_path(READER_SA, "token"),
            encode(STORAGE_READ)
        );
        assert_error_page(&get(addr, &path).await, 403, "is not allowed for reader@");
        // The broker's policy has the last word.
        let path = format!(
            "{}?scopes={}",
            account_path("default", "token"),
            encode("https://www.googleapis.com/auth/bigquery")
        );
        assert_error_page(&get(addr, &path).await, 403, "PERMISSION_DENIED");
        // Not a scope at all.
        let path = format!("{}?scopes=not-a-scope", account_path("default", "token"));
        let invalid = get(addr, &path).await;
        assert!(
            invalid
                .expect(400, "application/text")
                .body
                .starts_with("invalid scope: ")
        );
        sidecar.shutdown().await;
        world.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_tokens_are_the_brokers_for_the_audiences_allowed() {
    bounded(async {
        let world = World::start().await;
        let sidecar = world.ready_sidecar().await;
        let addr = sidecar.addr();
        let function = world.function_url();
        let identity =
            |account: &str, query: &str| format!("{}?{query}", account_path(account, "identity"));

        // What google-auth asks: format=full, no licenses.
        let answer = get(
            addr,
            &identity(
                "default",
                &format!("audience={}&format=full", encode(&function)),
            ),
        )
        .await;
        let jwt = answer.expect(200, "text/html; charset=UTF-8").body.clone();
        assert_eq!(jwt.split('.').count(), 3, "a JWT: {jwt}");
        assert_eq!(
            world.call_function(&jwt).await,
            200,
            "the function accepts it"
        );
        let claims = jwt_claims(&jwt);
        assert_eq!(claims["aud"], function.as_str());
        assert_eq!(claims["email"], BROKER_SA);
        assert_eq!(claims["iss"], "https://accounts.google.com");
        let left = claims["exp"].as_i64().expect("exp") - unix_now();
        assert!(left > 240, "{left}");
        let again = get(
            addr,
            &identity(
                "default",
                &format!("audience={}&format=full", encode(&function)),
            ),
        )
        .await;
        assert_eq!(again.body, jwt, "cached");

        // format and licenses do not change the broker's token: one key per audience.
        let same = get(
            addr,
            &identity(
                BROKER_SA,
                &format!(
                    "audience={}&format=standard&licenses=TRUE",
                    encode(&function)
                ),
            ),
        )
        .await;
        assert_eq!(same.body, jwt, "cached per (account, audience)");

        // Another audience the policy allows.
        let standard = get(
            addr,
            &identity(
                BROKER_SA,
                &format!(
                    "audience={}&format=standard&licenses=TRUE",
                    encode(API_AUDIENCE)
                ),
            ),
        )
        .await;
        let claims = jwt_claims(&standard.expect(200, "text/html; charset=UTF-8").body);
        assert_eq!(claims["aud"], API_AUDIENCE);

        // reader@, by email.
        let reader = get(
            addr,
            &identity(READER_SA, &format!("audience={}", encode(&function))),
        )
        .await;
        let reader_jwt = reader.expect(200, "text/html; charset=UTF-8").body.clone();
        assert_eq!(jwt_claims(&reader_jwt)["email"], READER_SA);
        assert_eq!(world.call_function(&reader_jwt).await, 200);

        // Refusals: the request's, the sidecar's configuration's, the broker's policy's.
        for (query, body) in [
            ("format=full", "non-empty audience parameter required\n"),
            (
                "audience=&format=full",
                "non-empty audience parameter required\n",
            ),
            (
                "audience=https%3A%2F%2Fa.example.com&format=jwt",
                "invalid format: jwt\n",
            ),
        ] {
            let answer = get(addr, &identity("default", query)).await;
            assert_eq!(answer.expect(400, "application/text").body, body, "{query}");
        }
        let query = format!("audience={}", encode(API_AUDIENCE));
        assert_error_page(
            &get(addr, &identity(READER_SA, &query)).await,
            403,
            "The audience https://api.example.com/v1 is not allowed for reader@",
        );
        let query = format!("audience={}", encode("https://elsewhere.example.com"));
        assert_error_page(
            &get(addr, &identity("default", &query)).await,
            403,
            "PERMISSION_DENIED",
        );
        sidecar.shutdown().await;
        world.stop().await;
    })
    .await;
}
