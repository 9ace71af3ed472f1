//! The standalone store's files: one `<name>.json` per ApprovalRequest in one directory, each
//! written atomically (temporary file, fsync, rename, fsync of the directory), and a lock file so
//! that two gateways never share a directory.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use agentgate_crds::ApprovalRequest;

use super::ApprovalError;

/// Suffix of request files.
const SUFFIX: &str = ".json";
/// Suffix of files being written; leftovers of a crash are removed at open.
const TMP_SUFFIX: &str = ".json.tmp";
/// Held (exclusively locked) while a process uses the directory.
const LOCK_FILE: &str = ".lock";

/// An open store directory. Dropping it releases the directory lock.
#[derive(Debug)]
pub(super) struct Dir {
    path: PathBuf,
    _lock: File,
    /// Tests: how long each write takes at least (a slow or busy disk).
    #[cfg(test)]
    pub(super) slow_writes: std::sync::Mutex<std::time::Duration>,
}

impl Dir {
    /// Creates the directory when missing (0700), checks that nobody else can have planted
    /// requests in it, locks it and returns the requests it holds.
    pub(super) fn open(path: PathBuf) -> Result<(Self, Vec<ApprovalRequest>), ApprovalError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(|e| ApprovalError::io(&path, "cannot create the directory", e))?;
        check_owner(&path)?;
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| ApprovalError::io(&lock_path, "cannot open the lock file", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(ApprovalError::Locked { dir: path });
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(ApprovalError::io(&lock_path, "cannot lock", e));
            }
        }
        let entries = fs::read_dir(&path).map_err(|e| ApprovalError::io(&path, "cannot list", e))?;
        let mut requests = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| ApprovalError::io(&path, "cannot list", e))?;
            let file = entry.path();
            let Some(file_name) = file.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if file_name.ends_with(TMP_SUFFIX) {
                // A write that never reached its rename: the previous version (if any) is intact.
                if let Err(e) = fs::remove_file(&file) {
                    tracing::warn!(file = %file.display(), error = %e, "cannot remove an unfinished approval write");
                }
                continue;
            }
            let Some(stem) = file_name.strip_suffix(SUFFIX) else {
                continue;
            };
            // The gateway writes its requests 0600: one that another user owns, or that others
            // may write to (a group-writable volume), may have been planted or edited.
            if let Some(why) = foreign_file(&file) {
                tracing::error!(file = %file.display(), why, "ignoring an approval request the gateway did not write");
                continue;
            }
            let bytes = fs::read(&file).map_err(|e| ApprovalError::io(&file, "cannot read", e))?;
            let request: ApprovalRequest = match serde_json::from_slice(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    // Refusing to start over one damaged file would hold every agent hostage;
                    // the file is kept for inspection and its request is not served.
                    tracing::error!(file = %file.display(), error = %e, "ignoring an unreadable approval request");
                    continue;
                }
            };
            if request.metadata.name.as_deref() != Some(stem) {
                tracing::error!(file = %file.display(), "ignoring an approval request whose name is not its file name");
                continue;
            }
            requests.push(request);
        }
        let dir = Self {
            path,
            _lock: lock,
            #[cfg(test)]
            slow_writes: Default::default(),
        };
        Ok((dir, requests))
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `request` durably under its name, replacing any previous version atomically.
    pub(super) fn write(&self, request: &ApprovalRequest) -> Result<(), ApprovalError> {
        let name = request.metadata.name.as_deref().unwrap_or_default();
        let bytes = serde_json::to_vec_pretty(request).map_err(|e| ApprovalError::Encode(e.to_string()))?;
        let tmp = self.path.join(format!("{name}{TMP_SUFFIX}"));
        let target = self.path.join(format!("{name}{SUFFIX}"));
        let result = (|| {
            #[cfg(test)]
            std::thread::sleep(*self.slow_writes.lock().unwrap_or_else(|p| p.into_inner()));
            // Made anew and exclusively, never through a link planted under the temporary name
            // (in a group-writable volume): that would truncate whatever the link names.
            match fs::remove_file(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            // Requests name who asked for what; only the gateway's user reads them.
            let mut f = OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &target)?;
            self.sync_dir()
        })();
        result.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            ApprovalError::io(&target, "cannot write", e)
        })
    }

    /// Deletes the file of `name` durably.
    pub(super) fn remove(&self, name: &str) -> Result<(), ApprovalError> {
        let target = self.path.join(format!("{name}{SUFFIX}"));
        match fs::remove_file(&target) {
            Ok(()) => self
                .sync_dir()
                .map_err(|e| ApprovalError::io(&self.path, "cannot sync", e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ApprovalError::io(&target, "cannot delete", e)),
        }
    }

    #[cfg(test)]
    pub(super) fn mode(path: &Path) -> u32 {
        fs::metadata(path).map_or(0, |m| m.mode() & 0o777)
    }

    fn sync_dir(&self) -> std::io::Result<()> {
        // Makes the rename (or deletion) itself durable.
        #[cfg(unix)]
        File::open(&self.path)?.sync_all()?;
        Ok(())
    }
}

/// Why a request file may not be the gateway's own writing, if it may not.
fn foreign_file(file: &Path) -> Option<&'static str> {
    let Ok(meta) = fs::symlink_metadata(file) else {
        return Some("it cannot be inspected");
    };
    if !meta.file_type().is_file() {
        return Some("it is not a regular file");
    }
    if meta.mode() & 0o022 != 0 {
        return Some("others may write to it");
    }
    match crate::private_dir::own_uid() {
        Some(own) if meta.uid() != own => Some("another user owns it"),
        _ => None,
    }
}

/// Refuses a store directory that another user could have filled with approved requests: one
/// anybody may write to, or one owned by another user than the gateway's (or root, who owns
/// mounted volumes). `/tmp/approvals`, made first by someone else, is the case in point.
fn check_owner(path: &Path) -> Result<(), ApprovalError> {
    match crate::private_dir::check(path) {
        Ok(None) => Ok(()),
        Ok(Some(why)) => Err(ApprovalError::Insecure {
            dir: path.to_path_buf(),
            why,
        }),
        Err(e) => Err(ApprovalError::io(path, "cannot inspect the directory", e)),
    }
}
