//! What the file system says about the paths opendify writes to: whether a directory is
//! writable (or can be created), a file's permissions and owner. check-config asks about
//! the data and log directories, inspect-mappings about the store and its directory, the
//! report looks for LOG_FILE beside its rotations; one answer for the same question.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Whether a directory opendify writes to is usable.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DirState {
    pub path: PathBuf,
    pub exists: bool,
    pub writable: bool,
    /// Unix permission bits (`755`) and owner uid, when the directory exists.
    pub mode: Option<String>,
    pub owner_uid: Option<u32>,
    /// Why it is not writable.
    pub error: Option<String>,
}

/// The directory a file lives in (`.` for a bare file name).
pub(crate) fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether opendify could write in `dir`. A missing directory is fine when it can be
/// created (the nearest existing ancestor is writable). Writability is tested by creating
/// and removing an empty probe file, the only reliable test (ACLs, read-only mounts, root).
pub(crate) fn dir_state(dir: &Path) -> DirState {
    let mut state =
        DirState { path: dir.to_path_buf(), exists: false, writable: false, mode: None, owner_uid: None, error: None };
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            state.exists = true;
            state.mode = mode(&meta);
            state.owner_uid = owner(&meta);
            match probe_write(dir) {
                Ok(()) => state.writable = true,
                Err(e) => state.error = Some(e.to_string()),
            }
        }
        Ok(_) => state.error = Some("exists but is not a directory".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let ancestor = dir.ancestors().skip(1).find(|a| a.as_os_str().is_empty() || a.is_dir());
            let ancestor = match ancestor {
                Some(a) if a.as_os_str().is_empty() => Path::new("."),
                Some(a) => a,
                None => Path::new("."),
            };
            match probe_write(ancestor) {
                Ok(()) => state.writable = true,
                Err(e) => {
                    state.error = Some(format!("it does not exist and {} is not writable: {e}", ancestor.display()))
                }
            }
        }
        Err(e) => state.error = Some(e.to_string()),
    }
    state
}

/// Unix permission bits (`644`); elsewhere read-only or read-write.
#[cfg(unix)]
pub(crate) fn mode(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    Some(format!("{:o}", meta.permissions().mode() & 0o7777))
}

#[cfg(not(unix))]
pub(crate) fn mode(meta: &std::fs::Metadata) -> Option<String> {
    Some(if meta.permissions().readonly() { "read-only" } else { "read-write" }.into())
}

/// The owner's uid (Unix only).
#[cfg(unix)]
pub(crate) fn owner(meta: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    Some(meta.uid())
}

#[cfg(not(unix))]
pub(crate) fn owner(_meta: &std::fs::Metadata) -> Option<u32> {
    None
}

fn probe_write(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".opendify-doctor-{}-{}", std::process::id(), fastrand::u32(..)));
    std::fs::OpenOptions::new().write(true).create_new(true).open(&probe)?;
    std::fs::remove_file(&probe)
}

pub(crate) fn describe_dir(state: &DirState) -> String {
    let mut text = state.path.display().to_string();
    match (state.exists, state.writable) {
        (true, true) => text.push_str(" (writable"),
        (true, false) => text.push_str(" (NOT writable"),
        (false, true) => text.push_str(" (will be created"),
        (false, false) => text.push_str(" (missing, cannot be created"),
    }
    if let Some(mode) = &state.mode {
        text.push_str(&format!(", mode {mode}"));
    }
    if let Some(uid) = state.owner_uid {
        text.push_str(&format!(", owner uid {uid}"));
    }
    text.push(')');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_directories_are_fine_when_they_can_be_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir_state(&dir.path().join("a/b"));
        assert!(!state.exists && state.writable, "{state:?}");
        let state = dir_state(dir.path());
        assert!(state.exists && state.writable, "{state:?}");
        assert_eq!(std::fs::read_dir(dir.path()).expect("read").count(), 0, "the probe file was left behind");
    }

    #[test]
    fn a_file_where_a_directory_should_be_is_not_writable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("data");
        std::fs::write(&file, "").expect("write");
        let state = dir_state(&file);
        assert!(!state.writable);
        assert_eq!(parent_dir(Path::new("conversations.db")), PathBuf::from("."));
    }
}
