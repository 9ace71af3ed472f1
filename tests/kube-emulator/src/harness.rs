//! The test environment: the emulator with the project's CRDs and per-user kubeconfigs, or, when
//! `AGENTGATE_TEST_KUBECONFIG` names a kubeconfig, a real cluster (then the tests work in a
//! namespace of their own that is removed afterwards). Test code is the same for both.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::server::{Config, Emulator};

/// The environment variable that switches the tests to a real cluster.
pub const REAL_CLUSTER_ENV: &str = "AGENTGATE_TEST_KUBECONFIG";

/// The users the emulator is started with (on a real cluster they all use the one kubeconfig).
pub const USERS: &[&str] = &["admin", "operator", "gateway", "approver"];

/// The project's CRDs, as generated from the Rust types (the same as `crds/agentgate.dev_*.yaml`).
pub fn project_crds() -> Vec<Value> {
    agentgate_crds::generate::all_crds()
        .iter()
        .map(|crd| serde_json::to_value(crd).expect("CRDs serialize"))
        .collect()
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/kube-emulator sits two levels below the root")
        .to_path_buf()
}

/// The kubectl binary: `$KUBECTL`, else `/usr/bin/kubectl`, else `kubectl` on the PATH.
pub fn kubectl_binary() -> PathBuf {
    if let Ok(path) = std::env::var("KUBECTL") {
        return path.into();
    }
    let default = Path::new("/usr/bin/kubectl");
    if default.exists() {
        default.to_path_buf()
    } else {
        "kubectl".into()
    }
}

/// Polls `f` until it returns `Some` or `deadline` passes (then panics with `what`).
pub fn eventually<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An emulator or a real cluster, with a namespace for the test.
pub struct TestEnv {
    emulator: Option<Emulator>,
    real_kubeconfig: Option<PathBuf>,
    namespace: String,
    work: tempfile::TempDir,
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl TestEnv {
    /// Starts an environment with the project's CRDs installed.
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// Starts an environment; `install_crds` installs the project's CRDs.
    pub fn start_with(install_crds: bool) -> Self {
        Self::start_configured(install_crds, |_| {})
    }

    /// Starts an environment, adjusting the emulator's configuration first (ignored on a real
    /// cluster).
    pub fn start_configured(install_crds: bool, configure: impl FnOnce(&mut Config)) -> Self {
        let work = tempfile::tempdir().expect("temp dir");
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() % 1_000_000_000)
            .unwrap_or(0);
        if let Ok(path) = std::env::var(REAL_CLUSTER_ENV) {
            let env = Self {
                emulator: None,
                real_kubeconfig: Some(path.into()),
                namespace: format!("agentgate-test-{}-{unique}", std::process::id()),
                work,
            };
            if install_crds {
                let crds = repo_root().join("crds");
                env.kubectl_ok("admin", &["apply", "-f", &crds.display().to_string()]);
            }
            env.kubectl_ok("admin", &["create", "namespace", &env.namespace]);
            return env;
        }
        let namespace = "agentgate-test".to_string();
        let mut config = Config {
            namespace: namespace.clone(),
            ..Config::default()
        };
        configure(&mut config);
        let emulator = Emulator::start(config).expect("the emulator starts");
        if install_crds {
            emulator
                .install_crds(&project_crds())
                .expect("the project's CRDs are accepted");
        }
        emulator.with_store(|store| {
            let ns = store.find("", "v1", "namespaces").expect("built in");
            let object = serde_json::json!({"metadata": {"name": namespace}});
            let opts = crate::store::WriteOptions {
                field_manager: "harness".into(),
                ..Default::default()
            };
            store.create(&ns, "", object, &opts).expect("namespace created");
        });
        Self {
            emulator: Some(emulator),
            real_kubeconfig: None,
            namespace,
            work,
        }
    }

    /// The emulator, unless running against a real cluster.
    pub fn emulator(&self) -> Option<&Emulator> {
        self.emulator.as_ref()
    }

    /// The test's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The kubeconfig of `user` (see [`USERS`]).
    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        match (&self.emulator, &self.real_kubeconfig) {
            (Some(e), _) => e.kubeconfig(user).to_path_buf(),
            (None, Some(path)) => path.clone(),
            (None, None) => unreachable!("one of the two is always set"),
        }
    }

    /// A kubectl command as `user`, with its own discovery cache, in the test namespace unless `args`
    /// name one (`-n`, `--namespace`, `-A`).
    pub fn kubectl_command(&self, user: &str, args: &[&str]) -> Command {
        self.kubectl_command_in(user, args, true)
    }

    /// As [`Self::kubectl_command`]; `test_namespace: false` leaves the namespace to the kubeconfig
    /// context and the manifests (kubectl refuses `--namespace` that differs from a manifest's).
    pub fn kubectl_command_in(&self, user: &str, args: &[&str], test_namespace: bool) -> Command {
        let mut command = Command::new(kubectl_binary());
        command
            .arg("--kubeconfig")
            .arg(self.kubeconfig(user))
            .arg("--cache-dir")
            .arg(self.work.path().join("kube-cache"));
        let chooses_namespace = args
            .iter()
            .any(|a| matches!(*a, "-n" | "-A" | "--all-namespaces") || a.starts_with("--namespace"));
        if test_namespace && !chooses_namespace {
            command.arg("--namespace").arg(&self.namespace);
        }
        command.args(args).stdin(Stdio::null());
        command
    }

    /// Writes `text` to a file in the environment's directory and returns its path (for `-f`).
    pub fn file(&self, name: &str, text: &str) -> String {
        let path = self.work.path().join(name);
        std::fs::write(&path, text).expect("write a manifest");
        path.display().to_string()
    }

    /// Whether this runs against the emulator (some checks need its internals).
    pub fn is_emulated(&self) -> bool {
        self.emulator.is_some()
    }

    /// Runs kubectl to completion.
    pub fn kubectl(&self, user: &str, args: &[&str]) -> Output {
        self.kubectl_command(user, args).output().expect("kubectl runs")
    }

    /// Runs kubectl, asserts it succeeded and returns its stdout.
    pub fn kubectl_ok(&self, user: &str, args: &[&str]) -> String {
        let out = self.kubectl(user, args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl, asserts it failed and returns its stderr.
    pub fn kubectl_err(&self, user: &str, args: &[&str]) -> String {
        let out = self.kubectl(user, args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Starts a long-running kubectl (`get -w`); its stdout is collected as it comes.
    pub fn kubectl_spawn(&self, user: &str, args: &[&str]) -> Streaming {
        Streaming::spawn(self.kubectl_command(user, args))
    }
}

impl Streaming {
    /// Starts `command` (a kubectl with another kubeconfig, say); its stdout and stderr are
    /// collected as they come.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl starts");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut out = output.lock().unwrap_or_else(|p| p.into_inner());
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        Streaming { child, output }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.emulator.is_none() {
            let _ = self.kubectl("admin", &["delete", "namespace", &self.namespace, "--wait=false"]);
        }
    }
}

/// A running kubectl whose output is collected; killed (by PID) when dropped.
#[derive(Debug)]
pub struct Streaming {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Streaming {
    /// Everything printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.output.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until the output satisfies `pred`.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        eventually(what, Duration::from_secs(20), || {
            let out = self.output();
            pred(&out).then_some(out)
        })
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
