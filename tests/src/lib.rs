//! Test support for the end-to-end tests: building and starting the project's binaries and other
//! real processes on 127.0.0.1, and stopping them by PID when a test ends.

pub mod gateway;
pub mod kubernetes;
pub mod mutate;
pub mod oidc;
pub mod postgres;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Set by a runner that has just built the workspace's binaries (scripts/test.sh), so that test
/// processes need not each ask cargo again.
pub const PREBUILT_ENV: &str = "AGENTGATE_E2E_BINARIES_BUILT";

/// Path of a workspace binary, built (once per test process) so it is never stale: nextest runs
/// each test in its own process, and cargo's no-op check costs about 0.45 s, so a runner that has
/// built them just before says so with [`PREBUILT_ENV`].
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var_os(PREBUILT_ENV).is_some_and(|v| v == "1") {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--workspace", "--bins"])
            .current_dir(workspace_root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the workspace binaries failed");
    });
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target layout");
    let path = dir.join(name);
    assert!(path.exists(), "{} not found after building", path.display());
    path
}

/// A port that was free a moment ago on 127.0.0.1, and that no test process has handed out
/// before: the kernel may offer a just-closed port again, to this process (a test that takes two
/// ports before starting anything would get the same one twice) or to another (nextest runs
/// each test in its own process, two at a time, and a port handed to a child is free until the
/// child binds it).
/// What a finished command printed: its standard output, then its standard error.
pub fn printed(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<(u16, Option<std::fs::File>)>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind an ephemeral port")
            .port();
        if given.iter().any(|(p, _)| *p == port) {
            continue;
        }
        match reserve_port(port) {
            Reservation::Taken => continue,
            Reservation::Held(lock) => {
                given.push((port, lock));
                return port;
            }
        }
    }
}

enum Reservation {
    /// This process holds the port's lock until it exits (or no lock could be made: then the
    /// port is used unreserved).
    Held(Option<std::fs::File>),
    /// Another test process holds it.
    Taken,
}

/// An exclusive lock on `<tmp>/agentgate-e2e-ports/<port>`, held for the life of the process.
fn reserve_port(port: u16) -> Reservation {
    let dir = std::env::temp_dir().join("agentgate-e2e-ports");
    let file = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
    });
    match file {
        Err(_) => Reservation::Held(None),
        Ok(f) => match f.try_lock() {
            Ok(()) => Reservation::Held(Some(f)),
            Err(std::fs::TryLockError::WouldBlock) => Reservation::Taken,
            Err(std::fs::TryLockError::Error(_)) => Reservation::Held(None),
        },
    }
}

/// A child process that is killed (by PID) when dropped. Its output goes to files kept for failures.
#[derive(Debug)]
pub struct Process {
    child: Child,
    name: String,
    stdout: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Starts `command` with stdout and stderr captured.
    pub fn start(name: &str, mut command: Command) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            child,
            name: name.to_string(),
            stdout,
            stderr,
            _dir: dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!(
            "--- {} stdout ---\n{out}--- {} stderr ---\n{err}",
            self.name, self.name
        )
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal("TERM", timeout)
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (a name for `kill -s`, e.g. `INT`) and waits up to `timeout` for the
    /// process to exit; returns the exit status, None when it is still running.
    pub fn signal(&mut self, signal: &str, timeout: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// What the real `curl` got back.
#[derive(Debug)]
pub struct Reply {
    /// 0 when the connection failed.
    pub status: u16,
    /// `1.1`, `2`, ... as curl reports it.
    pub version: String,
    pub content_type: String,
    /// The raw response head(s), as `curl -D` writes them.
    pub headers: String,
    pub body: String,
}

impl Reply {
    /// The body as JSON; panics with the whole reply when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The value of header `name` (any case) in the last response head, if it has one.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.headers.rsplit("\r\n\r\n").find(|h| !h.trim().is_empty())?;
        head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// One request with the real `curl` (`-s`, 10 s limit) and extra `args`.
pub fn curl(args: &[&str], url: &str) -> Reply {
    let dir = tempfile::tempdir().expect("temp dir");
    let headers = dir.path().join("headers");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-D"])
        .arg(&headers)
        .args(["-o", "-", "-w", "\n%{http_code} %{http_version} %{content_type}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let mut tail = tail.splitn(3, ' ');
    let mut next = || tail.next().unwrap_or("").trim().to_string();
    let (status, version, content_type) = (next(), next(), next());
    Reply {
        status: status.parse().unwrap_or(0),
        version,
        content_type,
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        body: body.to_string(),
    }
}

/// A GET with the real `curl`: (status code, body). Status 0 when the connection failed.
pub fn curl_get(url: &str) -> (u16, String) {
    let r = curl(&[], url);
    (r.status, r.body)
}

/// The listener ports the example AgentGateway declares.
pub const EXAMPLE_LISTENER_PORTS: [u16; 2] = [8443, 15432];

/// Copies the example manifests into a fresh directory, for tests that edit them. The listeners'
/// ports become free ones on 127.0.0.1: tests run at once, a gateway is ready only once it holds
/// them all, and a test listens on loopback only (the examples bind every interface).
pub fn examples_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(workspace_root().join("deploy/examples")).expect("examples exist") {
        let path = entry.expect("dir entry").path();
        if path.is_file() {
            let mut text = std::fs::read_to_string(&path).expect("example manifest");
            for port in EXAMPLE_LISTENER_PORTS {
                text = text.replace(
                    &format!("      port: {port}\n"),
                    &format!("      port: {}\n      address: 127.0.0.1\n", free_port()),
                );
            }
            std::fs::write(dir.path().join(path.file_name().expect("file name")), text).expect("copy");
        }
    }
    dir
}

/// `p50 X ms, p99 Y ms, max Z ms` of latency samples (nearest-rank percentiles).
pub fn latency_summary(samples: &mut [Duration]) -> String {
    samples.sort();
    if samples.is_empty() {
        return "no samples".into();
    }
    let pick = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    format!(
        "p50 {} ms, p99 {} ms, max {} ms",
        pick(0.50).as_millis(),
        pick(0.99).as_millis(),
        samples[samples.len() - 1].as_millis()
    )
}
