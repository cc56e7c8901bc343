//! Keeping a value built from files current: the files are read every interval and, when their
//! contents changed, the value is rebuilt and published on a watch channel. A rebuild that
//! fails is logged once and the previous value stays in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A SHA-256 over the contents of `paths` (lengths included), or the first read error.
fn digest(paths: &[PathBuf]) -> Result<Vec<u8>, (PathBuf, std::io::Error)> {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for path in paths {
        let bytes = std::fs::read(path).map_err(|e| (path.clone(), e))?;
        context.update(&(bytes.len() as u64).to_le_bytes());
        context.update(&bytes);
    }
    Ok(context.finish().as_ref().to_vec())
}

/// Builds the value with `load` and keeps it current. `what` names it in logs.
pub fn watch_files<T, E, F>(
    what: &'static str,
    paths: Vec<PathBuf>,
    interval: Duration,
    load: F,
) -> Result<(watch::Receiver<Arc<T>>, JoinHandle<()>), E>
where
    T: Send + Sync + 'static,
    E: std::fmt::Display,
    F: Fn() -> Result<T, E> + Send + 'static,
{
    let initial_digest = digest(&paths).ok();
    let value = load()?;
    let (sender, receiver) = watch::channel(Arc::new(value));
    let task = tokio::spawn(async move {
        let mut current = initial_digest;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            if sender.is_closed() {
                return;
            }
            let latest = match digest(&paths) {
                Ok(latest) => Some(latest),
                Err((path, error)) => {
                    if current.is_some() {
                        tracing::error!(what, path = %path.display(), %error, "file unreadable; keeping the current version");
                    }
                    current = None;
                    continue;
                }
            };
            if latest == current {
                continue;
            }
            current = latest;
            match load() {
                Ok(value) => {
                    sender.send_replace(Arc::new(value));
                    tracing::info!(what, "reloaded");
                }
                Err(error) => {
                    tracing::error!(what, %error, "new version rejected; keeping the current one")
                }
            }
        }
    });
    Ok((receiver, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reloads_on_change_and_keeps_the_old_value_on_error() {
        let dir = std::env::temp_dir().join(format!("token-broker-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("value.txt");
        std::fs::write(&file, "1").expect("write");
        let path = file.clone();
        let (mut receiver, task) = watch_files(
            "number",
            vec![file.clone()],
            Duration::from_millis(10),
            move || {
                std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())?
                    .trim()
                    .parse::<u32>()
                    .map_err(|e| e.to_string())
            },
        )
        .expect("initial load");
        assert_eq!(**receiver.borrow(), 1);

        std::fs::write(&file, "2").expect("write");
        tokio::time::timeout(Duration::from_secs(5), receiver.changed())
            .await
            .expect("reloaded")
            .expect("open");
        assert_eq!(**receiver.borrow_and_update(), 2);

        std::fs::write(&file, "not a number").expect("write");
        std::fs::write(dir.join("marker"), "").expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !receiver.has_changed().expect("open"),
            "a bad version is not published"
        );
        assert_eq!(**receiver.borrow(), 2);

        std::fs::write(&file, "3").expect("write");
        tokio::time::timeout(Duration::from_secs(5), receiver.changed())
            .await
            .expect("reloaded")
            .expect("open");
        assert_eq!(**receiver.borrow(), 3);
        task.abort();
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
