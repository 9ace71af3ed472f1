//! The HTTP data plane's state: one [`Plane`] per configuration snapshot (verifier, routes,
//! upstream clients, recorder), swapped atomically on reload while requests in flight finish
//! on the plane they started with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use agentgate_crds::connection::ConnectionType;
use agentgate_crds::gateway::RecordingMode;

use super::upstream::Upstream;
use crate::config::compile::ObjectStorage;
use crate::config::watch::Snapshot;
use crate::config::{CompiledConnection, CompiledPolicy};
use crate::identity::dpop::{Nonces, ReplayCache};
use crate::identity::fetch::HttpFetcher;
use crate::identity::{KeyRegistry, Verifier, VerifierOptions};
use crate::masking::MaskingPlan;
use crate::metrics::Metrics;
use crate::recording::{Recorder, WeakRecorder};

/// Most cached masking plans (one per connection and set of applicable policies).
const MAX_CACHED_PLANS: usize = 4096;

/// Everything a request needs from one configuration snapshot.
#[derive(Debug)]
pub struct Plane {
    pub snapshot: Arc<Snapshot>,
    pub verifier: Result<Verifier, String>,
    /// Upstream clients by connection name (HTTP and Kubernetes connections).
    pub upstreams: HashMap<String, Result<Upstream, String>>,
    /// Route host (lowercase, no port) to connection name.
    routes_by_host: HashMap<String, String>,
    /// (path prefix, connection name), longest prefix first.
    routes_by_prefix: Vec<(String, String)>,
    pub recorder: Result<Arc<Recorder>, String>,
    plans: Mutex<HashMap<String, MaskingPlan>>,
    kubernetes_plan: MaskingPlan,
}

impl Plane {
    /// Why this plane would refuse every operation, if it would: its Required recorder or its
    /// identity verifier could not be built. Readiness reports it, so that a Service sends the
    /// traffic to replicas that can serve it.
    pub fn unusable(&self) -> Option<String> {
        if let Err(e) = &self.recorder
            && self.snapshot.config.gateway.recording.mode == RecordingMode::Required
        {
            return Some(format!("session recording (mode Required) is unavailable: {e}"));
        }
        self.verifier
            .as_ref()
            .err()
            .map(|e| format!("identity verification is unavailable: {e}"))
    }

    /// The connection a request is for, the path it addresses there, and the path prefix that
    /// was removed (`""` by host, else without a trailing slash): by host first (the whole
    /// path), then by the longest path prefix.
    pub fn route<'a>(&'a self, host: &str, path: &str) -> Option<(&'a CompiledConnection, String, &'a str)> {
        let cfg = &self.snapshot.config;
        if let Some(c) = self.routes_by_host.get(host).and_then(|n| cfg.connections.get(n)) {
            return Some((c, path.to_string(), ""));
        }
        self.routes_by_prefix.iter().find_map(|(prefix, name)| {
            let rest = super::normalize::strip_prefix(path, prefix)?;
            Some((
                cfg.connections.get(name)?,
                rest.to_string(),
                prefix.trim_end_matches('/'),
            ))
        })
    }

    /// The merged masking plan of `policies` (those that apply to the subject on `connection`),
    /// plus Secret masking when `secrets`: a Kubernetes request for the resource `secrets`, the
    /// only kind whose `data` is secret (a ConfigMap's `data` is configuration an agent reads).
    pub fn masking_plan(
        &self,
        connection: &CompiledConnection,
        policies: &[&CompiledPolicy],
        secrets: bool,
    ) -> MaskingPlan {
        let secrets = secrets && connection.kind == ConnectionType::Kubernetes;
        let mut key = connection.name.clone();
        for p in policies {
            key.push('\0');
            key.push_str(&p.name);
        }
        if secrets {
            key.push_str("\0\0secrets");
        }
        let mut cache = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(plan) = cache.get(&key) {
            return plan.clone();
        }
        let mut plan = if secrets {
            self.kubernetes_plan.clone()
        } else {
            MaskingPlan::empty(self.snapshot.config.gateway.hash_key.clone())
        };
        for p in policies {
            plan = plan.merge(&p.masking);
        }
        if cache.len() >= MAX_CACHED_PLANS {
            cache.clear();
        }
        cache.insert(key, plan.clone());
        plan
    }
}

/// Identity state that outlives snapshots: remote key caches, the DPoP replay cache, the
/// fetcher.
#[derive(Debug)]
struct IdentityShared {
    registry: KeyRegistry,
    fetcher: Result<HttpFetcher, String>,
    replay: Arc<ReplayCache>,
    /// This process's DPoP nonces, used when the configuration requires them.
    nonces: Result<Arc<Nonces>, String>,
}

/// A background task run for a setting (a directory and what to do with it), kept across
/// reloads while the setting stays the same.
#[derive(Debug)]
struct TaskSlot<K>(Mutex<Option<(K, tokio::task::AbortHandle)>>);

impl<K> Default for TaskSlot<K> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<K: PartialEq> TaskSlot<K> {
    /// Runs the task for `key` (`None`: no task). A task already running for an equal key is
    /// kept; otherwise it is stopped and `start` starts the new one (`None` if it could not).
    fn set(&self, key: Option<K>, start: impl FnOnce(&K) -> Option<tokio::task::AbortHandle>) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some((running, _)), Some(key)) = (slot.as_ref(), key.as_ref())
            && running == key
        {
            return;
        }
        if let Some((_, task)) = slot.take() {
            task.abort();
        }
        if let Some(key) = key
            && let Some(task) = start(&key)
        {
            *slot = Some((key, task));
        }
    }

    /// Stops the task; returns what it ran for.
    fn stop(&self) -> Option<K> {
        let (key, task) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        task.abort();
        Some(key)
    }
}

/// The process-wide HTTP data plane: the current [`Plane`] and what survives reloads.
#[derive(Debug)]
pub struct Gateway {
    current: RwLock<Option<Arc<Plane>>>,
    pub metrics: Metrics,
    identity: IdentityShared,
    /// The recorder of the current recording directory, mode and configured signing key; kept
    /// across reloads so one signing key covers the process's sessions.
    recorder: Mutex<Option<(RecorderKey, Arc<Recorder>)>>,
    /// Recorders replaced by a reload (another directory or mode), while sessions they opened
    /// live: shutdown closes those too.
    retired: Mutex<Vec<WeakRecorder>>,
    /// The task shipping the spool to object storage.
    /// Spool, store and the gateway whose sessions are shipped.
    shipper: TaskSlot<(PathBuf, ObjectStorage, String)>,
    /// The task deleting expired sessions from the gateway's own storage.
    retention: TaskSlot<(PathBuf, std::time::Duration, String)>,
    /// The approval store (standalone mode); `None` when it could not be opened, and then
    /// operations that need approval are refused.
    pub approvals: Option<Arc<crate::approval::Approvals>>,
    /// The configuration generation whose listeners are all bound (0: none yet, or one failed):
    /// what readiness reports, so no traffic is sent before the ports accept it.
    listening: std::sync::atomic::AtomicU64,
    /// Body bytes held to be masked whole, over all requests.
    pub masking_budget: Arc<tokio::sync::Semaphore>,
}

impl Gateway {
    pub fn new(metrics: Metrics) -> Arc<Self> {
        Self::with_approvals(metrics, None)
    }

    /// A gateway whose RequireApproval rules ask `approvals`.
    pub fn with_approvals(metrics: Metrics, approvals: Option<Arc<crate::approval::Approvals>>) -> Arc<Self> {
        Arc::new(Self {
            approvals,
            current: RwLock::new(None),
            metrics,
            identity: IdentityShared {
                registry: KeyRegistry::default(),
                fetcher: HttpFetcher::new(),
                replay: Arc::new(ReplayCache::default()),
                nonces: Nonces::new().map(Arc::new),
            },
            recorder: Mutex::new(None),
            retired: Mutex::new(Vec::new()),
            shipper: TaskSlot::default(),
            retention: TaskSlot::default(),
            listening: std::sync::atomic::AtomicU64::new(0),
            masking_budget: super::response::masking_budget(),
        })
    }

    /// The generation whose listeners are all bound, or 0.
    pub fn listening(&self) -> u64 {
        self.listening.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records that every listener of `generation` is bound (or, with 0, that one is not).
    pub fn set_listening(&self, generation: u64) {
        self.listening
            .store(generation, std::sync::atomic::Ordering::Release);
    }

    /// The plane in force, if a configuration has loaded.
    pub fn plane(&self) -> Option<Arc<Plane>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Builds and installs the plane of `snapshot`. Parts that fail (an upstream's TLS
    /// settings, the recording directory) fail only the requests that need them.
    pub fn install(&self, snapshot: Arc<Snapshot>) {
        let cfg = &snapshot.config;
        let verifier = match &self.identity.fetcher {
            Ok(fetcher) => Verifier::for_config(
                cfg,
                &self.identity.registry,
                fetcher,
                self.identity.replay.clone(),
                &VerifierOptions::default(),
            ),
            Err(e) => Err(format!("identity provider client: {e}")),
        };
        let verifier = match (verifier, &self.identity.nonces) {
            (Ok(v), Ok(nonces)) if cfg.gateway.dpop_nonce_required => Ok(v.with_nonces(nonces.clone())),
            // Proofs must carry nonces and none can be issued: no proof can pass.
            (Ok(_), Err(e)) if cfg.gateway.dpop_nonce_required => Err(e.clone()),
            (v, _) => v,
        };
        if let Err(e) = &verifier {
            tracing::error!(error = %e, "identity verification unavailable for this configuration");
        }
        let mut upstreams = HashMap::new();
        let mut routes_by_host = HashMap::new();
        let mut routes_by_prefix = Vec::new();
        for (name, c) in &cfg.connections {
            if c.kind == ConnectionType::Postgres {
                continue;
            }
            if c.insecure_skip_verify {
                tracing::warn!(connection = %name, "upstream TLS verification is OFF (tls.insecureSkipVerify)");
            }
            let up = Upstream::new(c).map_err(|e| format!("Connection {name}: {e}"));
            if let Err(e) = &up {
                tracing::error!(error = %e, "upstream client cannot be built");
            }
            upstreams.insert(name.clone(), up);
            if let Some(h) = &c.route_host {
                routes_by_host.insert(h.to_ascii_lowercase(), name.clone());
            }
            if let Some(p) = &c.route_path_prefix {
                routes_by_prefix.push((p.clone(), name.clone()));
            }
        }
        routes_by_prefix.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let gateway = format!("{}/{}", cfg.gateway.namespace, cfg.gateway.name);
        let recorder = self.recorder_for(
            RecorderKey {
                dir: cfg.gateway.recording_dir.clone(),
                mode: cfg.gateway.recording.mode,
                signing_key: cfg.gateway.signing_key.clone(),
            },
            &gateway,
        );
        self.ship(
            &cfg.gateway.recording_dir,
            cfg.gateway.object_storage.as_ref(),
            &gateway,
        );
        // Sessions on the gateway's own storage expire here; shipped ones, in the bucket.
        let retention = cfg.gateway.recording.retention.to_std().ok();
        self.retain(
            &cfg.gateway.recording_dir,
            retention.filter(|_| cfg.gateway.object_storage.is_none()),
            &gateway,
        );
        let plane = Plane {
            verifier,
            upstreams,
            routes_by_host,
            routes_by_prefix,
            recorder,
            plans: Mutex::new(HashMap::new()),
            kubernetes_plan: MaskingPlan::empty(cfg.gateway.hash_key.clone()).with_kubernetes_secrets(),
            snapshot,
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(plane));
    }

    /// Ships `dir` to `storage` (or stops shipping), restarting the shipper when either changed.
    /// A shipper that cannot start leaves sessions in the spool, where they stay the record.
    fn ship(&self, dir: &Path, storage: Option<&ObjectStorage>, gateway: &str) {
        let key = storage.map(|s| (dir.to_path_buf(), s.clone(), gateway.to_string()));
        self.shipper.set(key, |(dir, storage, gateway)| {
            crate::recording::shipping::spawn(dir, storage, gateway, self.metrics.clone())
                .inspect_err(|e| {
                    tracing::error!(error = %e, "sessions cannot be shipped to object storage; they stay in the spool")
                })
                .ok()
        });
    }

    /// Closes the sessions still open at shutdown (connections that outlived the drain limit),
    /// signed, with `"reason": "gateway shutdown"`, so that they are shipped with the rest; off
    /// the async workers, as each close syncs its file.
    pub async fn close_open_sessions(&self) {
        let mut recorders: Vec<Recorder> = self
            .retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(WeakRecorder::upgrade)
            .collect();
        let current = self
            .recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, r)| Recorder::clone(r));
        recorders.extend(current);
        if recorders.is_empty() {
            return;
        }
        let end = serde_json::json!({"reason": "gateway shutdown", "cut": "still open at the connection drain limit"});
        let close = move || recorders.iter().map(|r| r.close_open(&end)).sum::<usize>();
        match tokio::task::spawn_blocking(close).await {
            Ok(0) | Err(_) => {}
            Ok(closed) => tracing::warn!(closed, "sessions still open at shutdown closed"),
        }
    }

    /// Ships what the spool holds one last time before the process exits, sessions closed at
    /// shutdown included (in a cluster the spool is the pod's scratch space, gone with it).
    /// Bounded by `limit`; what is left is logged.
    pub async fn drain_spool(&self, limit: std::time::Duration) {
        let Some((dir, storage, gateway)) = self.shipper.stop() else {
            return;
        };
        let mut shipper = match crate::recording::shipping::Shipper::new(&dir, &storage) {
            Ok(s) => s.for_gateway(&gateway),
            Err(e) => {
                tracing::error!(error = %e, dir = %dir.display(), "sessions not shipped before exit");
                return;
            }
        };
        // Connections close their sessions as they wind down: sweep until nothing is left.
        let deadline = tokio::time::Instant::now() + limit;
        let mut shipped = 0;
        let left = loop {
            match tokio::time::timeout_at(deadline, shipper.final_sweep()).await {
                Ok(sweep) => {
                    shipped += sweep.shipped;
                    if sweep.waiting == 0 || tokio::time::Instant::now() >= deadline {
                        break sweep.waiting;
                    }
                }
                Err(_) => break usize::MAX,
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        if left == 0 {
            tracing::info!(shipped, "session spool drained before exit");
        } else {
            tracing::error!(
                shipped,
                dir = %dir.display(),
                secs = limit.as_secs(),
                "sessions left unshipped at exit (still open, or the store failed)"
            );
        }
    }

    /// Prunes `dir` to `retention` (or stops), restarting the task when either changed.
    fn retain(&self, dir: &Path, retention: Option<std::time::Duration>, gateway: &str) {
        let key = retention.map(|r| (dir.to_path_buf(), r, gateway.to_string()));
        self.retention.set(key, |(dir, retention, gateway)| {
            crate::recording::retention::spawn(dir, *retention, gateway)
        });
    }

    /// The recorder of `key` for `gateway` (`namespace/name`), made anew when the key changed.
    fn recorder_for(&self, key: RecorderKey, gateway: &str) -> Result<Arc<Recorder>, String> {
        let mut slot = self.recorder.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, r)) = slot.as_ref()
            && *k == key
        {
            return Ok(r.clone());
        }
        let made = match &key.signing_key {
            Some(der) => Recorder::with_key(key.dir.clone(), key.mode, gateway, der.expose()),
            None => Recorder::new(key.dir.clone(), key.mode, gateway),
        };
        match made {
            Ok(r) => {
                let r = Arc::new(r);
                tracing::info!(
                    dir = %key.dir.display(),
                    mode = ?key.mode,
                    public_key = %r.public_key(),
                    signing_key = if key.signing_key.is_some() { "configured" } else { "this process's own" },
                    "recording sessions"
                );
                // Sessions a crash cut off are closed, signed, so that no archive needs open files
                // accepted; off the configuration's path, as it reads each unclosed file whole.
                // (The shipper seals what it finds first; each file's lock keeps the two apart.)
                let sealer = r.clone();
                let dir = key.dir.clone();
                let seal = move || {
                    let sealed = sealer.seal_cut_off();
                    if sealed.sealed > 0 {
                        tracing::warn!(dir = %dir.display(), sealed = sealed.sealed, "sessions cut off by an earlier process were sealed (reason \"cut off\")");
                    }
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => drop(runtime.spawn_blocking(seal)),
                    Err(_) => seal(),
                }
                if let Some((_, old)) = slot.replace((key, r.clone())) {
                    let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
                    retired.retain(|w| w.upgrade().is_some());
                    retired.push(old.downgrade());
                }
                Ok(r)
            }
            Err(e) => {
                tracing::error!(error = %e, "session recording unavailable");
                Err(e.to_string())
            }
        }
    }
}

/// What a recorder is made for: a change of any part (a reload) makes a new one.
#[derive(PartialEq)]
struct RecorderKey {
    dir: PathBuf,
    mode: RecordingMode,
    signing_key: Option<crate::config::secrets::SecretValue>,
}

impl std::fmt::Debug for RecorderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecorderKey")
            .field("dir", &self.dir)
            .field("mode", &self.mode)
            .field("signing_key", &self.signing_key.as_ref().map(|_| "configured"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use serde_json::json;

    use super::*;
    use crate::config::LoadOptions;
    use crate::metrics::Metrics;

    fn snapshot(dir: &Path, generation: u64, mode: &str) -> Arc<Snapshot> {
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        let yaml = format!(
            "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {{name: gw, namespace: agents}}\n\
             spec:\n  listeners: [{{name: http, protocol: HTTP, port: 18080, address: 127.0.0.1}}]\n  \
             recording: {{mode: {mode}, storage: {{local: {{path: sessions}}}}}}\n"
        );
        std::fs::write(manifests.join("gw.yaml"), yaml).unwrap();
        let config = crate::config::load(&LoadOptions {
            manifests,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        Arc::new(Snapshot {
            generation,
            config,
            loaded_at: SystemTime::now(),
        })
    }

    fn recorder(gateway: &Gateway) -> Arc<Recorder> {
        gateway.plane().unwrap().recorder.clone().unwrap()
    }

    /// A session opened before a reload that changed the recording mode (so the recorder was
    /// replaced) is still closed, signed, at shutdown; before, only the current recorder's were,
    /// and the older one's closed as "dropped" once the spool had been shipped.
    #[tokio::test]
    async fn shutdown_closes_the_sessions_of_a_recorder_replaced_by_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = Gateway::new(Metrics::new());
        gateway.install(snapshot(dir.path(), 1, "Required"));
        let first = recorder(&gateway);
        let before = first.start_session(json!({})).unwrap();
        let first_key = first.public_key().to_string();
        drop(first);
        gateway.install(snapshot(dir.path(), 2, "BestEffort"));
        let second = recorder(&gateway);
        assert_ne!(second.public_key(), first_key, "the reload kept the recorder");
        let after = second.start_session(json!({})).unwrap();
        gateway.close_open_sessions().await;
        for s in [&before, &after] {
            let last = std::fs::read_to_string(s.path()).unwrap();
            let last = last.lines().last().unwrap();
            assert!(
                last.contains(r#""type":"session.end""#) && last.contains("gateway shutdown"),
                "{last}"
            );
        }
    }
}
