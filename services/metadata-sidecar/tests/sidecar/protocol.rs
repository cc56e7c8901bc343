//! The metadata protocol: every path's status, headers and body, the refusals, and the
//! limits.

use serde_json::json;

use crate::common::*;
use e2e::{BROKER_SA, CLOUD_PLATFORM, READER_SA};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_and_scalars_are_answered_as_google_does() {
    bounded(async {
        let world = World::start().await;
        let sidecar = world.ready_sidecar().await;
        let addr = sidecar.addr();
        const TEXT: &str = "application/text";
        const JSON: &str = "application/json";

        // The detection pings: `/` needs no header (Python, Go); Node asks for `instance`.
        let ping = send(http().get(format!("http://{addr}/"))).await;
        assert_eq!(ping.expect(200, TEXT).body, "computeMetadata/\n");
        let instance = get(addr, "/computeMetadata/v1/instance").await;
        assert_eq!(instance.expect(200, TEXT).body, "service-accounts/\nzone\n");

        for (path, body) in [
            ("/computeMetadata/v1/", "instance/\nproject/\nuniverse/\n"),
            ("/computeMetadata/v1", "instance/\nproject/\nuniverse/\n"),
            ("/computeMetadata/v1/instance/", "service-accounts/\nzone\n"),
            ("/computeMetadata/v1/project/", "numeric-project-id\nproject-id\n"),
            ("/computeMetadata/v1/universe/", "universe-domain\n"),
            ("/computeMetadata/v1/project/project-id", PROJECT),
            ("/computeMetadata/v1/project/numeric-project-id", PROJECT_NUMBER),
            (
                "/computeMetadata/v1/instance/zone",
                "projects/123456789012/zones/us-central1-a",
            ),
            ("/computeMetadata/v1/universe/universe-domain", "googleapis.com"),
            ("/computeMetadata/v1/universe/universe_domain", "googleapis.com"),
            (
                "/computeMetadata/v1/instance/service-accounts/",
                "default/\nbroker@dev-project.iam.gserviceaccount.com/\nreader@dev-project.iam.gserviceaccount.com/\n",
            ),
            (
                account_path("default", "").as_str(),
                "aliases\nemail\nidentity\nscopes\ntoken\n",
            ),
            (account_path("default", "email").as_str(), BROKER_SA),
            (account_path(BROKER_SA, "email").as_str(), BROKER_SA),
            (account_path(READER_SA, "email").as_str(), READER_SA),
            (account_path("default", "aliases").as_str(), "default"),
            (account_path(READER_SA, "aliases").as_str(), ""),
            (
                account_path("default", "scopes").as_str(),
                "https://www.googleapis.com/auth/cloud-platform\n",
            ),
        ] {
            let answer = get(addr, path).await;
            assert_eq!(answer.expect(200, TEXT).body, body, "{path}");
        }

        // JSON where JSON is asked for.
        let project_id = get(addr, "/computeMetadata/v1/project/project-id?alt=json").await;
        assert_eq!(project_id.expect(200, JSON).json(), json!(PROJECT));
        let email = get(addr, &account_path("default", "email?alt=json")).await;
        assert_eq!(email.expect(200, JSON).json(), json!(BROKER_SA));
        // Only alt=json: recursive=true leaves a scalar text, as Google's server does.
        let zone = get(addr, "/computeMetadata/v1/instance/zone?recursive=true").await;
        assert_eq!(
            zone.expect(200, TEXT).body,
            format!("projects/{PROJECT_NUMBER}/zones/{ZONE}")
        );
        let default_account = json!({
            "aliases": ["default"],
            "email": BROKER_SA,
            "scopes": [CLOUD_PLATFORM],
        });
        let reader_account = json!({"aliases": [], "email": READER_SA, "scopes": [CLOUD_PLATFORM]});
        for (path, expected) in [
            (account_path("default", "?recursive=true"), &default_account),
            (account_path(BROKER_SA, "?recursive=true"), &default_account),
            (account_path(READER_SA, "?recursive=true"), &reader_account),
        ] {
            assert_eq!(get(addr, &path).await.expect(200, JSON).json(), *expected, "{path}");
        }
        let accounts = json!({
            "default": default_account,
            BROKER_SA: default_account,
            READER_SA: reader_account,
        });
        let listing = get(
            addr,
            "/computeMetadata/v1/instance/service-accounts/?recursive=true",
        )
        .await;
        assert_eq!(listing.expect(200, JSON).json(), accounts);
        let tree = get(addr, "/computeMetadata/v1/?recursive=true").await;
        assert_eq!(
            tree.expect(200, JSON).json(),
            json!({
                "instance": {
                    "serviceAccounts": accounts,
                    "zone": "projects/123456789012/zones/us-central1-a",
                },
                "project": {"numericProjectId": 123_456_789_012_u64, "projectId": PROJECT},
                "universe": {"universeDomain": "googleapis.com"},
            })
        );

        // A directory without its slash: 301 to it, the query kept.
        for (path, location) in [
            ("/computeMetadata/v1/project", "/computeMetadata/v1/project/"),
            ("/computeMetadata/v1/universe", "/computeMetadata/v1/universe/"),
            (
                "/computeMetadata/v1/instance/service-accounts",
                "/computeMetadata/v1/instance/service-accounts/",
            ),
            (
                "/computeMetadata/v1/instance/service-accounts/default?recursive=true",
                "/computeMetadata/v1/instance/service-accounts/default/?recursive=true",
            ),
        ] {
            let answer = get(addr, path).await;
            answer.expect(301, TEXT);
            assert_eq!(answer.header("location"), location, "{path}");
        }
        sidecar.shutdown().await;
        world.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_unknown_paths_and_limits() {
    bounded(async {
        let world = World::start().await;
        let sidecar = world.ready_sidecar().await;
        let addr = sidecar.addr();
        let url = format!("http://{addr}/computeMetadata/v1/project/project-id");

        // Metadata-Flavor: Google is required, exactly; X-Forwarded-For is refused.
        let missing = send(http().get(&url)).await;
        assert_error_page(&missing, 403, "Missing Metadata-Flavor:Google header.");
        let wrong = send(http().get(&url).header("Metadata-Flavor", "google")).await;
        assert_error_page(&wrong, 403, "Missing Metadata-Flavor:Google header.");
        let forwarded = send(
            http()
                .get(&url)
                .header("Metadata-Flavor", "Google")
                .header("X-Forwarded-For", "10.0.0.1"),
        )
        .await;
        assert_error_page(&forwarded, 403, "X-Forwarded-For");
        let token = send(
            http()
                .get(format!("http://{addr}{}", account_path("default", "token")))
                .header("metadata-flavor", "Google")
                .header("x-forwarded-for", "10.0.0.1"),
        )
        .await;
        assert_error_page(&token, 403, "X-Forwarded-For");

        // Anything else is 404 with Google's page.
        for path in [
            "/computeMetadata/v1/instance/id",
            "/computeMetadata/v1/instance/hostname",
            "/computeMetadata/v1/project/project-id/",
            "/computeMetadata/v2/",
            "/computeMetadata/",
            "/latest/meta-data/",
            account_path("nobody@dev-project.iam.gserviceaccount.com", "token").as_str(),
            account_path("nobody@dev-project.iam.gserviceaccount.com", "").as_str(),
            "/computeMetadata/v1/instance/service-accounts/nobody@dev-project.iam.gserviceaccount.com",
            account_path("default", "key").as_str(),
            account_path("default", "token/").as_str(),
        ] {
            assert_error_page(
                &get(addr, path).await,
                404,
                "The requested URL was not found on this server.",
            );
        }

        // Only GET; no bodies; bounded headers; no hanging gets.
        let post = send(http().post(&url).header("Metadata-Flavor", "Google")).await;
        assert_error_page(&post, 405, "GET requests only");
        assert_eq!(post.header("allow"), "GET");
        let body = send(
            http()
                .get(&url)
                .header("Metadata-Flavor", "Google")
                .body(vec![b'x'; 4096]),
        )
        .await;
        assert_error_page(&body, 413, "no body");
        let headers = send(
            http()
                .get(&url)
                .header("Metadata-Flavor", "Google")
                .header("x-padding", "p".repeat(32 * 1024)),
        )
        .await;
        assert_eq!(headers.status, 431);
        let watch = get(addr, "/computeMetadata/v1/project/project-id?wait_for_change=true").await;
        assert_eq!(
            watch.expect(400, "application/text").body,
            "wait_for_change is not supported by this metadata server\n"
        );
        // The server still answers on a new connection.
        assert_eq!(get(addr, "/computeMetadata/v1/project/project-id").await.body, PROJECT);

        // Health, on both listeners; the health listener serves nothing else.
        let health = sidecar.health_addr().expect("a health listener");
        for on in [addr, health] {
            for path in ["/livez", "/readyz"] {
                let answer = send(http().get(format!("http://{on}{path}"))).await;
                assert_eq!(answer.expect(200, "text/plain; charset=utf-8").body, "ok\n");
            }
        }
        assert_error_page(&get(health, "/computeMetadata/v1/").await, 404, "not found");
        assert_error_page(&get(health, "/").await, 404, "not found");
        sidecar.shutdown().await;
        world.stop().await;
    })
    .await;
}
