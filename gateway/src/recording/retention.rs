//! `recording.retention` for sessions kept on the gateway's own storage (`local` or `volume`):
//! session files last written longer ago than the retention are deleted, hourly. A file whose
//! session is still open (its lock is held) is kept, however old. With `s3` storage the spool is
//! emptied by shipping, and retention in the bucket is its lifecycle rule's job.

use std::path::Path;
use std::time::{Duration, SystemTime};

/// How often the directory is pruned.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Deletes the session files of `gateway` in `dir` last modified before `now - retention` whose
/// sessions are not open (another gateway's, on a shared volume, keep their own retention).
/// Returns how many were deleted.
pub fn prune(dir: &Path, retention: Duration, now: SystemTime, gateway: &str) -> usize {
    super::remove_stale_staging(dir, now);
    let Some(cutoff) = now.checked_sub(retention) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut deleted = 0;
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if !super::is_session_file(&path) {
            continue;
        }
        let old = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < cutoff);
        if !old
            || super::is_open(&path).unwrap_or(true)
            // Only a session whose start names this gateway.
            || !matches!(super::started_by_another(&path, gateway), Ok(Some(false)))
        {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => deleted += 1,
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "expired session not deleted"),
        }
    }
    deleted
}

/// Prunes `dir` now and every [`PRUNE_INTERVAL`] on the current runtime.
pub fn spawn(dir: &Path, retention: Duration, gateway: &str) -> Option<tokio::task::AbortHandle> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let dir = dir.to_path_buf();
    let gateway = gateway.to_string();
    Some(
        runtime
            .spawn(async move {
                loop {
                    let (d, g) = (dir.clone(), gateway.clone());
                    let deleted = tokio::task::spawn_blocking(move || prune(&d, retention, SystemTime::now(), &g))
                        .await
                        .unwrap_or(0);
                    if deleted > 0 {
                        tracing::info!(dir = %dir.display(), deleted, retention_secs = retention.as_secs(), "expired sessions deleted");
                    }
                    tokio::time::sleep(PRUNE_INTERVAL).await;
                }
            })
            .abort_handle(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::Recorder;
    use agentgate_crds::gateway::RecordingMode;

    #[test]
    fn only_expired_files_of_closed_sessions_go() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::new(dir.path(), RecordingMode::Required, "ns/gw").unwrap();
        let day = Duration::from_secs(86_400);
        let age = |p: &Path, by: Duration| {
            let f = std::fs::File::options().append(true).open(p).unwrap();
            f.set_modified(SystemTime::now() - by).unwrap();
        };
        let expired = rec.start_session(serde_json::json!({})).unwrap();
        expired.close(serde_json::json!({})).unwrap();
        age(expired.path(), 8 * day);
        let recent = rec.start_session(serde_json::json!({})).unwrap();
        recent.close(serde_json::json!({})).unwrap();
        age(recent.path(), 6 * day);
        let open = rec.start_session(serde_json::json!({})).unwrap();
        age(open.path(), 30 * day);
        let other = dir.path().join("notes.txt");
        std::fs::write(&other, "x").unwrap();
        age(&other, 30 * day);
        // Another program's `.jsonl`, and a link named like a session: never ours to delete.
        let foreign = dir.path().join("events.jsonl");
        std::fs::write(&foreign, "{}\n").unwrap();
        age(&foreign, 30 * day);
        let link = dir
            .path()
            .join(format!("20200101T000000Z-{}.jsonl", "a".repeat(32)));
        std::os::unix::fs::symlink(&foreign, &link).unwrap();
        // A session file's staging name, left by a process that died creating it.
        let staging = dir
            .path()
            .join(format!(".20200101T000000Z-{}.jsonl.new", "b".repeat(32)));
        std::fs::write(&staging, "").unwrap();
        age(&staging, 2 * super::super::STAGING_GRACE);

        // Another gateway's session on a shared volume keeps its own gateway's retention.
        let theirs = Recorder::new(dir.path(), RecordingMode::Required, "ns/other").unwrap();
        let theirs = theirs.start_session(serde_json::json!({})).unwrap();
        theirs.close(serde_json::json!({})).unwrap();
        age(theirs.path(), 30 * day);

        assert_eq!(prune(dir.path(), 7 * day, SystemTime::now(), "ns/gw"), 1);
        assert!(!expired.path().exists() && !staging.exists() && theirs.path().exists());
        assert!(recent.path().exists() && open.path().exists() && other.exists());
        assert!(foreign.exists() && link.symlink_metadata().is_ok());
        // Once the long session closes (and its file is old), it goes too.
        open.close(serde_json::json!({})).unwrap();
        age(open.path(), 30 * day);
        assert_eq!(prune(dir.path(), 7 * day, SystemTime::now(), "ns/gw"), 1);
        assert!(!open.path().exists());
        assert_eq!(prune(dir.path(), 7 * day, SystemTime::now(), "ns/gw"), 0);
        assert_eq!(prune(dir.path(), 7 * day, SystemTime::now(), "ns/other"), 1);
    }
}
