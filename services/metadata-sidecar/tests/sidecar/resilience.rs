//! Readiness, an unreachable broker, recovery, coalescing, the 225-second rule and
//! certificate rotation.

use std::time::{Duration, Instant};

use e2e::eventually;
use gcp_emulator::Endpoint;
use token_broker::pki::CertificateAuthority;

use crate::common::*;

const STORAGE: &str = "https://www.googleapis.com/auth/devstorage.";

/// The token path of the default account for one storage scope (`read_write`, ...): a key
/// of its own.
fn storage_token(scope: &str) -> String {
    format!(
        "{}?scopes={}",
        account_path("default", "token"),
        encode(&format!("{STORAGE}{scope}"))
    )
}

/// Asserts a 503 with `Retry-After`, answered within a second.
async fn assert_unavailable_at_once(addr: std::net::SocketAddr, path: &str, needle: &str) {
    let started = Instant::now();
    let answer = get(addr, path).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
    assert_error_page(&answer, 503, needle);
    let retry_after: u64 = answer.header("retry-after").parse().expect("Retry-After");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_an_unreachable_broker_and_recovery() {
    bounded(async {
        let mut world = World::start().await;
        world.stop_broker().await;
        let sidecar = world.sidecar(world.settings()).await;
        let addr = sidecar.addr();
        let health = sidecar.health_addr().expect("health listener");

        // Not ready without a token; every token request is 503 at once, never a hang.
        assert!(!sidecar.wait_ready(Duration::from_millis(500)).await);
        // The health listener may face the pod network: no details there.
        let bare = send(http().get(format!("http://{health}/readyz"))).await;
        bare.expect(503, "text/plain; charset=utf-8");
        assert_eq!(bare.body, "not ready\n");
        // The metadata listener (loopback) tells why.
        let readyz = send(http().get(format!("http://{addr}/readyz"))).await;
        readyz.expect(503, "text/plain; charset=utf-8");
        assert!(
            readyz
                .body
                .starts_with("not ready: no valid token for the default account broker@"),
            "{readyz:?}"
        );
        assert!(readyz.body.contains("unavailable"), "{readyz:?}");
        let live = send(http().get(format!("http://{health}/livez"))).await;
        assert_eq!(live.status, 200);
        for _ in 0..3 {
            assert_unavailable_at_once(addr, &account_path("default", "token"), "unavailable")
                .await;
        }
        let identity = format!(
            "{}?audience={}",
            account_path("default", "identity"),
            encode(API_AUDIENCE)
        );
        assert_unavailable_at_once(addr, &identity, "unavailable").await;
        // The listing needs no broker.
        assert_eq!(
            get(addr, &account_path("default", "email")).await.status,
            200
        );

        // The broker comes up: the sidecar warms up and serves.
        world.restart_broker().await;
        assert!(sidecar.wait_ready(Duration::from_secs(15)).await, "ready");
        let readyz = send(http().get(format!("http://{addr}/readyz"))).await;
        assert_eq!(readyz.body, "ok\n");
        let cached = get(addr, &account_path("default", "token")).await;
        assert_eq!(cached.status, 200, "{cached:?}");
        assert!(
            eventually(Duration::from_secs(5), || async {
                get(addr, &identity).await.status == 200
            })
            .await
        );

        // Down again: what is cached is still served and readiness stays; a new key is 503 at
        // once.
        world.stop_broker().await;
        let still = get(addr, &account_path("default", "token")).await;
        assert_eq!(
            still.expect(200, "application/json").json()["access_token"],
            cached.json()["access_token"],
            "the cached token"
        );
        assert!(sidecar.is_ready());
        assert_unavailable_at_once(addr, &storage_token("read_write"), "unavailable").await;

        // Back: served again.
        world.restart_broker().await;
        assert!(
            eventually(Duration::from_secs(10), || async {
                get(addr, &storage_token("read_write")).await.status == 200
            })
            .await,
            "recovered"
        );
        sidecar.shutdown().await;
        world.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_made_up_audiences_never_evicts_the_default_token() {
    bounded(async {
        let world = World::start().await;
        let mut settings = world.settings();
        settings.cache.max_entries = 4;
        let sidecar = world.sidecar(settings).await;
        assert!(sidecar.wait_ready(Duration::from_secs(10)).await, "ready");
        let addr = sidecar.addr();
        let health = sidecar.health_addr().expect("health listener");
        let before = get(addr, &account_path("default", "token")).await;
        let token = before.expect(200, "application/json").json()["access_token"].clone();

        for n in 0..12 {
            let path = format!(
                "{}?audience={}",
                account_path("default", "identity"),
                encode(&format!("{API_AUDIENCE}/flood-{n}"))
            );
            assert_eq!(get(addr, &path).await.status, 200, "{path}");
        }

        let after = get(addr, &account_path("default", "token")).await;
        assert_eq!(
            after.expect(200, "application/json").json()["access_token"],
            token,
            "still the cached token"
        );
        assert!(sidecar.is_ready());
        let readyz = send(http().get(format!("http://{health}/readyz"))).await;
        assert_eq!((readyz.status, readyz.body.as_str()), (200, "ok\n"));
        sidecar.shutdown().await;
        world.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_local_requests_makes_one_broker_call() {
    bounded(async {
        let world = World::start().await;
        let sidecar = world.ready_sidecar().await;
        let addr = sidecar.addr();
        let client = http();
        for path in [
            storage_token("full_control"),
            format!(
                "{}?audience={}&format=full",
                account_path("default", "identity"),
                encode(API_AUDIENCE)
            ),
        ] {
            let (broker_before, google_before) =
                (world.broker_calls(), world.emulator.count(Endpoint::OAuth2Token));
            let url = format!("http://{addr}{path}");
            let flood: Vec<_> = (0..1000)
                .map(|_| {
                    let request = client.get(&url).header("Metadata-Flavor", "Google");
                    tokio::spawn(send(request))
                })
                .collect();
            let mut bodies = std::collections::HashSet::new();
            for answer in flood {
                let answer = answer.await.expect("task");
                assert_eq!(answer.status, 200, "{answer:?}");
                bodies.insert(answer.body);
            }
            if path.contains("/token") {
                let tokens: std::collections::HashSet<_> = bodies
                    .iter()
                    .map(|body| serde_json::from_str::<serde_json::Value>(body).expect("json")["access_token"].clone())
                    .collect();
                assert_eq!(tokens.len(), 1, "one token for all");
            } else {
                assert_eq!(bodies.len(), 1, "one ID token for all");
            }
            assert_eq!(world.broker_calls() - broker_before, 1, "one broker call for {path}");
            assert_eq!(
                world.emulator.count(Endpoint::OAuth2Token) - google_before,
                1,
                "one call to Google for {path}"
            );
        }
        sidecar.shutdown().await;
        world.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_225_seconds_or_less_left_is_never_served() {
    bounded(async {
        let world = World::start().await;
        // The least margin the configuration accepts: more than 225 s.
        let mut settings = world.settings();
        settings.cache.min_remaining = Duration::from_secs(226);
        settings.cache.refresh_ahead = Duration::from_secs(227);
        let sidecar = world.sidecar(settings).await;
        assert!(sidecar.wait_ready(Duration::from_secs(10)).await);
        let addr = sidecar.addr();

        // Google only has tokens of 226 s: once the broker has them, 226 s or less is left.
        world
            .emulator
            .set_token_lifetime(Some(Duration::from_secs(226)));
        assert_unavailable_at_once(addr, &storage_token("read_only"), "s left").await;
        let identity = format!(
            "{}?audience={}",
            account_path("default", "identity"),
            encode(&format!("{API_AUDIENCE}/short"))
        );
        assert_unavailable_at_once(addr, &identity, "s left").await;

        // Tokens of 300 s are served, with what is left of them.
        world
            .emulator
            .set_token_lifetime(Some(Duration::from_secs(300)));
        let answer = get(addr, &storage_token("read_write")).await;
        let expires_in = answer.expect(200, "application/json").json()["expires_in"]
            .as_u64()
            .expect("expires_in");
        assert!((226..=300).contains(&expires_in), "{expires_in}");
        let identity = format!(
            "{}?audience={}",
            account_path("default", "identity"),
            encode(&format!("{API_AUDIENCE}/longer"))
        );
        assert_eq!(get(addr, &identity).await.status, 200);
        world.emulator.set_token_lifetime(None);
        sidecar.shutdown().await;
        world.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_used_for_new_connections() {
    bounded(async {
        let world = World::start().await;
        let sidecar = world.ready_sidecar().await;
        // A second sidecar that never rereads its files: what happens without rotation.
        let mut frozen = world.settings();
        frozen.broker.reload_interval = Duration::from_secs(3600);
        let frozen = world.sidecar(frozen).await;
        assert!(frozen.wait_ready(Duration::from_secs(10)).await);

        // The client CA is rotated: the broker trusts both for a while, the pod's certificate
        // is reissued by the new one, then the broker trusts only the new one. The broker
        // re-verifies open connections against its bundles at their next call.
        let rotated = CertificateAuthority::new("rotated CA").expect("CA");
        world.replace(
            "ca.pem",
            &format!(
                "{}{}",
                world.ca.certificate_pem(),
                rotated.certificate_pem()
            ),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        world.issue_sidecar_certificate(&rotated);
        tokio::time::sleep(Duration::from_millis(500)).await;
        world.replace("ca.pem", &rotated.certificate_pem());
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Keys the sidecar has not cached need the broker: the rotated sidecar gets them.
        for (n, scope) in ["read_write", "full_control"].iter().enumerate() {
            let answer = get(sidecar.addr(), &storage_token(scope)).await;
            assert_eq!(answer.status, 200, "key {n}: {answer:?}");
        }
        // The one that kept its old certificate is refused by the broker.
        let answer = get(frozen.addr(), &storage_token("read_write")).await;
        assert_error_page(&answer, 503, "unavailable");
        frozen.shutdown().await;
        sidecar.shutdown().await;
        world.stop().await;
    })
    .await;
}
