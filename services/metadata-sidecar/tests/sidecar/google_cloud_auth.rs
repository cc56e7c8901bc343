//! Conformance with Google's Rust client library, `google-cloud-auth`: its metadata-server
//! credentials, pointed at the sidecar with `with_endpoint` (never at the link-local address),
//! get the broker's access tokens (for the default scopes and for scopes asked) and the
//! broker's ID tokens, as the emulator's tokeninfo and function tell.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use e2e::{BROKER_SA, CLOUD_PLATFORM, STORAGE_READ, jwt_claims, unix_now};
use google_cloud_auth::credentials::idtoken::mds::Format;
use google_cloud_auth::credentials::{CacheableResource, idtoken, mds};

use crate::common::*;

/// The library reads this variable before the builder's endpoint, and it wins: set, it would
/// send these tests to another metadata server.
const METADATA_HOST_VARIABLE: &str = "GCE_METADATA_HOST";

/// The sidecar's URL, for `with_endpoint`.
fn endpoint(addr: SocketAddr) -> String {
    assert!(
        std::env::var_os(METADATA_HOST_VARIABLE).is_none(),
        "{METADATA_HOST_VARIABLE} is set: google-cloud-auth would ask it, not the sidecar"
    );
    format!("http://{addr}")
}

/// The scopes tokeninfo reports.
fn scopes_of(tokeninfo: &serde_json::Value) -> BTreeSet<String> {
    tokeninfo["scope"]
        .as_str()
        .unwrap_or_default()
        .split(' ')
        .map(str::to_owned)
        .collect()
}

/// Asserts that the emulator knows `token` as broker@'s, minted by the broker (its key's
/// jwt-bearer grant, not the emulator's own metadata server), for `scopes`.
async fn assert_brokers(world: &World, token: &str, scopes: &[&str]) {
    let info = world.tokeninfo(token).await;
    assert_eq!(info["email"], BROKER_SA, "{info}");
    assert_eq!(info["grant"], "jwt-bearer", "minted by the broker: {info}");
    assert_ne!(info["grant"], "metadata", "{info}");
    assert_eq!(
        scopes_of(&info),
        scopes
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<_>>(),
        "{info}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_cloud_auth_mds_credentials_get_the_brokers_access_tokens() {
    bounded(async {
        let world = World::start().await;
        let sidecar = world.ready_sidecar().await;
        let addr = sidecar.addr();

        // The default account with the default scopes: the headers a client library sends.
        let credentials = mds::Builder::default()
            .with_endpoint(endpoint(addr))
            .build()
            .expect("credentials");
        let headers = match credentials
            .headers(Default::default())
            .await
            .expect("headers")
        {
            CacheableResource::New { data, .. } => data,
            CacheableResource::NotModified => panic!("no headers were cached yet"),
        };
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .expect("an authorization header");
        let token = authorization
            .strip_prefix("Bearer ")
            .unwrap_or_else(|| panic!("a bearer token: {authorization}"))
            .to_owned();
        assert_brokers(&world, &token, &[CLOUD_PLATFORM]).await;
        // The same token as the sidecar's own answer for the default account.
        let direct = get(addr, &account_path("default", "token")).await;
        assert_eq!(
            direct.expect(200, "application/json").json()["access_token"],
            token
        );
        // The universe domain, from the sidecar (the library gives None when it cannot get it).
        assert_eq!(
            credentials.universe_domain().await.as_deref(),
            Some("googleapis.com")
        );

        // Explicit scopes (the library sends them comma-separated in `scopes=`).
        let scoped = mds::Builder::default()
            .with_endpoint(endpoint(addr))
            .with_scopes([STORAGE_READ, CLOUD_PLATFORM])
            .build_access_token_credentials()
            .expect("credentials")
            .access_token()
            .await
            .expect("an access token")
            .token;
        assert_ne!(scoped, token);
        assert_brokers(&world, &scoped, &[CLOUD_PLATFORM, STORAGE_READ]).await;
        let path = format!(
            "{}?scopes={}",
            account_path("default", "token"),
            encode(&format!("{CLOUD_PLATFORM},{STORAGE_READ}"))
        );
        assert_eq!(
            get(addr, &path).await.json()["access_token"],
            scoped,
            "the sidecar's cache key for these scopes"
        );

        // A scope the broker's policy refuses: a permanent error, not a token.
        let refused = mds::Builder::default()
            .with_endpoint(endpoint(addr))
            .with_scopes(["https://www.googleapis.com/auth/bigquery"])
            .build_access_token_credentials()
            .expect("credentials")
            .access_token()
            .await
            .expect_err("the broker's policy refuses the scope");
        assert!(!refused.is_transient(), "{refused:?}");
        assert!(
            format!("{refused:?}").contains("403"),
            "the sidecar's 403: {refused:?}"
        );

        sidecar.shutdown().await;
        world.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_cloud_auth_mds_id_tokens_are_the_brokers() {
    bounded(async {
        let world = World::start().await;
        let sidecar = world.ready_sidecar().await;
        let addr = sidecar.addr();
        let function = world.function_url();

        // The library's defaults: no format, no licenses.
        let jwt = idtoken::mds::Builder::new(&function)
            .with_endpoint(endpoint(addr))
            .build()
            .expect("credentials")
            .id_token()
            .await
            .expect("an ID token");
        assert_eq!(jwt.split('.').count(), 3, "a JWT: {jwt}");
        let claims = jwt_claims(&jwt);
        assert_eq!(claims["aud"], function.as_str(), "{claims}");
        assert_eq!(claims["email"], BROKER_SA, "{claims}");
        assert_eq!(claims["iss"], "https://accounts.google.com", "{claims}");
        let left = claims["exp"].as_i64().expect("exp") - unix_now();
        assert!(left > 240, "{left}");
        assert_eq!(
            world.call_function(&jwt).await,
            200,
            "the function accepts it"
        );

        // format=full and licenses=TRUE, as the builder sends them.
        let full = idtoken::mds::Builder::new(&function)
            .with_endpoint(endpoint(addr))
            .with_format(Format::Full)
            .with_licenses(true)
            .build()
            .expect("credentials")
            .id_token()
            .await
            .expect("an ID token");
        let claims = jwt_claims(&full);
        assert_eq!(claims["aud"], function.as_str(), "{claims}");
        assert_eq!(claims["email"], BROKER_SA, "{claims}");
        assert_eq!(world.call_function(&full).await, 200);

        // An audience the broker's policy refuses: a permanent error, not a token.
        let refused = idtoken::mds::Builder::new("https://elsewhere.example.com")
            .with_endpoint(endpoint(addr))
            .build()
            .expect("credentials")
            .id_token()
            .await
            .expect_err("the broker's policy refuses the audience");
        assert!(!refused.is_transient(), "{refused:?}");

        sidecar.shutdown().await;
        world.stop().await;
    })
    .await;
}
