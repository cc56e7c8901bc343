//! Files that other programs read while tokenctl replaces them: written whole, then renamed
//! into place, so that a reader sees the old contents or the new, never a mix or an empty file.

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::path::Path;

/// How many temporary names are tried before giving up (they hold a random part, so a clash
/// means another writer is using the same name at the same moment).
const TEMP_NAME_ATTEMPTS: u32 = 8;

/// Replaces `path` with `contents` atomically, with permissions `mode` (Unix).
///
/// The contents go to a new temporary file in the same directory (a rename is atomic only
/// within one file system), created with `mode` and set to it again so that the umask cannot
/// change it, flushed to disk, then renamed over `path`. On failure the temporary file is
/// removed and `path` is left as it was. A symbolic link at `path` is replaced, not followed.
pub(crate) fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };

    let mut attempt = 0;
    let (temp_path, mut file) = loop {
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(
            ".{}.{:08x}.tmp",
            std::process::id(),
            fastrand::u32(..)
        ));
        let temp_path = dir.join(temp_name);
        match create_new(&temp_path, mode) {
            Ok(file) => break (temp_path, file),
            Err(error)
                if error.kind() == io::ErrorKind::AlreadyExists
                    && attempt + 1 < TEMP_NAME_ATTEMPTS =>
            {
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    };

    let written = file
        .write_all(contents)
        .and_then(|()| set_mode(&file, mode))
        .and_then(|()| file.sync_all());
    drop(file);
    if let Err(error) = written.and_then(|()| std::fs::rename(&temp_path, path)) {
        let _ = std::fs::remove_file(&temp_path);
        return Err(error);
    }
    // Make the rename itself durable; a failure here leaves a correct file, so it is ignored.
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(unix)]
fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
}

#[cfg(not(unix))]
fn create_new(path: &Path, _mode: u32) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(unix)]
fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_file: &File, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// Reads at most `limit` bytes of `path`; `None` if it cannot be read or is larger.
pub(crate) fn read_small(path: &Path, limit: u64) -> Option<Vec<u8>> {
    let file = File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).ok()?;
    (u64::try_from(bytes.len()).ok()? <= limit).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "tokenctl-files-{name}-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            assert!(std::fs::create_dir_all(&dir).is_ok());
            Self(dir)
        }

        fn entries(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&self.0)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|entry| entry.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[cfg(unix)]
    #[test]
    fn replaces_the_file_whole_with_the_mode_and_leaves_nothing_behind() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

        let dir = Dir::new("replace");
        let path = dir.0.join("token");
        assert!(write_atomically(&path, b"first", 0o600).is_ok());
        assert_eq!(std::fs::read(&path).ok().as_deref(), Some(&b"first"[..]));
        let before = std::fs::metadata(&path).ok();
        assert_eq!(
            before.as_ref().map(|m| m.permissions().mode() & 0o777),
            Some(0o600)
        );

        // A reader holding the old file keeps the old contents: the file is replaced, not
        // rewritten in place.
        let link = dir.0.join("old");
        assert!(std::fs::hard_link(&path, &link).is_ok());
        assert!(std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).is_ok());
        assert!(write_atomically(&path, b"second", 0o600).is_ok());
        assert_eq!(std::fs::read(&path).ok().as_deref(), Some(&b"second"[..]));
        assert_eq!(std::fs::read(&link).ok().as_deref(), Some(&b"first"[..]));
        let after = std::fs::metadata(&path).ok();
        assert_ne!(before.map(|m| m.ino()), after.as_ref().map(|m| m.ino()));
        assert_eq!(after.map(|m| m.permissions().mode() & 0o777), Some(0o600));

        assert!(write_atomically(&dir.0.join("config.json"), b"{}", 0o644).is_ok());
        assert_eq!(
            std::fs::metadata(dir.0.join("config.json"))
                .ok()
                .map(|m| m.permissions().mode() & 0o777),
            Some(0o644)
        );
        assert_eq!(dir.entries(), vec!["config.json", "old", "token"]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary_file() {
        let dir = Dir::new("fail");
        let path = dir.0.join("token");
        assert!(write_atomically(&path, b"good", 0o600).is_ok());
        // A directory in the way of the rename.
        let blocked = dir.0.join("blocked");
        assert!(std::fs::create_dir_all(blocked.join("inside")).is_ok());
        assert!(write_atomically(&blocked, b"x", 0o600).is_err());
        assert_eq!(std::fs::read(&path).ok().as_deref(), Some(&b"good"[..]));
        assert_eq!(dir.entries(), vec!["blocked", "token"]);

        let missing = dir.0.join("no-such-dir").join("token");
        assert!(write_atomically(&missing, b"x", 0o600).is_err());
        assert!(write_atomically(Path::new("/"), b"x", 0o600).is_err());
    }

    #[test]
    fn reads_small_files_only() {
        let dir = Dir::new("read");
        let path = dir.0.join("f");
        assert!(std::fs::write(&path, b"12345").is_ok());
        assert_eq!(read_small(&path, 5).as_deref(), Some(&b"12345"[..]));
        assert_eq!(read_small(&path, 4), None);
        assert_eq!(read_small(&dir.0.join("missing"), 5), None);
    }
}
