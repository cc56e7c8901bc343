//! Tokens never reach the logs, at any level; their fingerprints may.

use std::io::Write;
use std::sync::{Arc, Mutex};

use e2e::BROKER_SA;

use crate::common::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_reaches_the_logs() {
    let capture = Capture::default();
    // Every level of the sidecar, the broker and the client; the HTTP/2 and TLS internals
    // only from info.
    tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "trace,h2=info,hyper=info,hyper_util=info,rustls=info,tower=info,reqwest=info,tonic=info",
        ))
        .with_ansi(false)
        .init();
    bounded(async {
        let world = World::start().await;
        let sidecar = world.ready_sidecar().await;
        let addr = sidecar.addr();
        let access = get(addr, &account_path(BROKER_SA, "token")).await.json()["access_token"]
            .as_str()
            .expect("token")
            .to_owned();
        let identity = get(
            addr,
            &format!(
                "{}?audience={}",
                account_path("default", "identity"),
                encode(API_AUDIENCE)
            ),
        )
        .await
        .body;
        sidecar.shutdown().await;
        world.stop().await;

        let logs = String::from_utf8_lossy(&capture.0.lock().expect("lock")).into_owned();
        assert!(
            logs.contains("token from the broker"),
            "the sidecar logs its fetches"
        );
        for secret in [&access, &identity] {
            assert!(!logs.contains(secret.as_str()), "a token in the logs");
            let signature = secret.rsplit('.').next().unwrap_or_default();
            assert!(
                signature.len() < 16 || !logs.contains(signature),
                "a signature in the logs"
            );
            assert!(
                logs.contains(&broker_core::fingerprint(secret.as_bytes())),
                "its fingerprint is"
            );
        }
    })
    .await;
}
