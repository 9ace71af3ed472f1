//! Watching the manifests directory and swapping in new snapshots.
//!
//! The directory is polled (metadata only) rather than watched with inotify: polling works the same
//! on every file system, including the symlink swaps kubelet does for mounted ConfigMaps and Secrets.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::{ConfigErrors, GatewayConfig, LoadOptions, load};
use crate::metrics::Metrics;

/// A configuration in force, with its generation (1 for the first valid load, +1 per change).
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub config: GatewayConfig,
    pub loaded_at: SystemTime,
}

/// The receiving side: every component reads the current snapshot from here.
pub type SnapshotReceiver = watch::Receiver<Option<Arc<Snapshot>>>;

/// Loads configuration and publishes each valid snapshot; refused loads leave the previous one.
#[derive(Debug)]
pub struct ConfigWatcher {
    options: LoadOptions,
    metrics: Metrics,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    fingerprint: Option<u64>,
    generation: u64,
    last_hash: Option<String>,
}

impl ConfigWatcher {
    /// A watcher with no snapshot yet.
    pub fn new(options: LoadOptions, metrics: Metrics) -> (Self, SnapshotReceiver) {
        let (tx, rx) = watch::channel(None);
        (
            Self {
                options,
                metrics,
                tx,
                fingerprint: None,
                generation: 0,
                last_hash: None,
            },
            rx,
        )
    }

    /// Where configuration is loaded from.
    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// Loads now. `Ok(true)` when a new snapshot was published, `Ok(false)` when nothing changed,
    /// or when the files changed while they were read (a file being written, a mounted
    /// ConfigMap's `..data` swapped between two files): what was read may hold part of an edit,
    /// say the new Allow without the Deny beside it, so it is not put in force, and the next
    /// poll reads the files again.
    pub fn reload(&mut self) -> Result<bool, ConfigErrors> {
        let before = fingerprint(&self.options);
        let loaded = load(&self.options);
        if fingerprint(&self.options) != before {
            tracing::info!("the manifests changed while they were read; they are read again");
            self.fingerprint = None;
            return Ok(false);
        }
        self.fingerprint = Some(before);
        self.publish(loaded)
    }

    /// Publishes the outcome of a load done elsewhere (the Kubernetes source): a new valid
    /// configuration becomes the snapshot in force; errors leave the previous one.
    pub fn publish(&mut self, loaded: Result<GatewayConfig, ConfigErrors>) -> Result<bool, ConfigErrors> {
        let now = SystemTime::now();
        self.metrics
            .config_last_reload_timestamp
            .set(now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64());
        match loaded {
            Ok(config) => {
                self.metrics.config_reloads.with_label_values(&["success"]).inc();
                self.metrics.config_last_reload_success.set(1);
                if self.last_hash.as_deref() == Some(config.source_hash.as_str()) {
                    return Ok(false);
                }
                self.generation += 1;
                self.last_hash = Some(config.source_hash.clone());
                self.metrics.config_generation.set(self.generation as i64);
                self.metrics.config_objects.reset();
                for (kind, n) in &config.object_counts {
                    self.metrics
                        .config_objects
                        .with_label_values(&[kind.as_str()])
                        .set(*n as i64);
                }
                tracing::info!(
                    generation = self.generation,
                    connections = config.connections.len(),
                    identities = config.identities.len(),
                    policies = config.policies.len(),
                    "configuration loaded"
                );
                self.tx.send_replace(Some(Arc::new(Snapshot {
                    generation: self.generation,
                    config,
                    loaded_at: now,
                })));
                Ok(true)
            }
            Err(errors) => {
                self.metrics.config_reloads.with_label_values(&["failure"]).inc();
                self.metrics.config_load_errors.inc();
                self.metrics.config_last_reload_success.set(0);
                for e in &errors.0 {
                    tracing::error!(error = %e, "configuration refused; the previous configuration stays in force");
                }
                Err(errors)
            }
        }
    }

    /// Polls for changes until `shutdown` resolves. A change is read once the files have held
    /// still for a poll: an editor's or `kubectl get -o yaml >` rewrite caught half-done would
    /// otherwise be in force until the next poll.
    pub async fn run(mut self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut seen: Option<u64> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            let options = self.options.clone();
            let current = tokio::task::spawn_blocking(move || fingerprint(&options))
                .await
                .ok();
            let settled = current == seen;
            seen = current;
            if current.is_some() && current != self.fingerprint && settled {
                // Loading parses and validates every file: keep it off the async workers.
                self = match tokio::task::spawn_blocking(move || {
                    // A bug in loading must not end the watch: the configuration in force stays,
                    // and the next edit is read again.
                    let reloaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let _ = self.reload();
                    }));
                    if reloaded.is_err() {
                        tracing::error!(
                            "loading the manifests failed unexpectedly; the configuration in force stays"
                        );
                    }
                    self
                })
                .await
                {
                    Ok(w) => w,
                    Err(_) => return,
                };
            }
        }
    }
}

/// A cheap fingerprint of the inputs: paths, sizes, modification and change times, inodes and
/// modes of the manifest files (what [`super::manifest::list_files`] reads) and of the secrets
/// directory's files. Change times and modes make a `chmod` or `chown` that lets a refused load
/// read its files a change too; hidden entries beside the manifests are skipped (a recording or
/// approvals directory kept there changes with every event), and in the secrets directory the
/// kubelet's `..data` layout of a mounted Secret is followed through the keys' symbolic links.
pub fn fingerprint(options: &LoadOptions) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    walk(&options.manifests, &mut hasher, 0, true);
    if let Some(dir) = &options.secrets_dir {
        walk(dir, &mut hasher, 0, false);
    }
    hasher.finish()
}

fn walk(dir: &Path, hasher: &mut impl Hasher, depth: usize, manifests_only: bool) {
    use std::os::unix::fs::MetadataExt;
    if depth > 16 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        "unreadable".hash(hasher);
        return;
    };
    // The loader reads no hidden manifest; a Secret's key may start with a dot, but the kubelet's
    // own entries start with two (`..data`, reached through the keys' links).
    let hidden = if manifests_only { "." } else { ".." };
    let mut entries: Vec<_> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with(hidden))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            path.hash(hasher);
            continue;
        };
        if meta.is_dir() {
            path.hash(hasher);
            walk(&path, hasher, depth + 1, manifests_only);
        } else if !manifests_only || matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        {
            path.hash(hasher);
            (
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ctime(),
                meta.ctime_nsec(),
            )
                .hash(hasher);
            (meta.dev(), meta.ino(), meta.mode(), meta.uid(), meta.gid()).hash(hasher);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// What the loader reads changes the fingerprint, a `chmod` included (it can let a refused
    /// load read its files); what it does not read (recordings beside the manifests, files of
    /// other kinds) does not, so recording traffic does not reload the configuration.
    #[test]
    fn the_fingerprint_follows_what_the_loader_reads() {
        let manifests = tempfile::tempdir().unwrap();
        let secrets = tempfile::tempdir().unwrap();
        let options = LoadOptions {
            manifests: manifests.path().to_path_buf(),
            secrets_dir: Some(secrets.path().to_path_buf()),
            ..Default::default()
        };
        let gw = manifests.path().join("gw.yaml");
        std::fs::write(&gw, "kind: AgentGateway\n").unwrap();
        let token = secrets.path().join("okta").join("token");
        std::fs::create_dir_all(token.parent().unwrap()).unwrap();
        std::fs::write(&token, "t").unwrap();
        let sessions = manifests.path().join(".agentgate/sessions");
        std::fs::create_dir_all(&sessions).unwrap();
        let first = fingerprint(&options);

        std::fs::write(sessions.join("s.jsonl"), "{}\n").unwrap();
        std::fs::write(manifests.path().join("notes.txt"), "x").unwrap();
        assert_eq!(fingerprint(&options), first, "recordings and other files");

        std::fs::set_permissions(&gw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let chmodded = fingerprint(&options);
        assert_ne!(chmodded, first, "a chmod of a manifest");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(fingerprint(&options), chmodded, "a chmod of a secret file");
    }
}
