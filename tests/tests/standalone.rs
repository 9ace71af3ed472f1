//! `agentgate run --manifests DIR`: the admin listener, readiness, metrics and live reload, driven
//! through the real binary and curl.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use agentgate_e2e::{Process, binary, curl_get, examples_copy, free_port, wait_for};

fn start(dir: &Path, admin_port: u16) -> Process {
    let mut cmd = Command::new(binary("agentgate"));
    cmd.args(["run", "--watch-interval", "100ms", "--admin-addr"])
        .arg(format!("127.0.0.1:{admin_port}"))
        .arg("--manifests")
        .arg(dir);
    Process::start("agentgate", cmd)
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let (code, body) = curl_get(&format!("http://127.0.0.1:{port}/metrics"));
    if code != 200 {
        return None;
    }
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn edit(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from));
    // Whole or not at all, as editors and `kubectl cp` do: the gateway polls the directory and
    // must not read a half-written file (the loader skips hidden files).
    let staged = dir.join(format!(".{file}.tmp"));
    std::fs::write(&staged, text.replacen(from, to, 1)).unwrap();
    std::fs::rename(&staged, &path).unwrap();
}

#[test]
fn serves_health_readiness_and_metrics_and_reloads_on_change() {
    let dir = examples_copy();
    let port = free_port();
    let mut gw = start(dir.path(), port);
    let ready = wait_for(Duration::from_secs(20), || {
        let (code, body) = curl_get(&format!("http://127.0.0.1:{port}/readyz"));
        (code == 200).then_some(body)
    });
    assert_eq!(
        ready.as_deref(),
        Some("ready: configuration generation 1\n"),
        "{}",
        gw.output()
    );
    assert_eq!(curl_get(&format!("http://127.0.0.1:{port}/healthz")).0, 200);
    assert_eq!(metric(port, "agentgate_config_generation"), Some(1.0));
    assert_eq!(
        metric(port, "agentgate_config_objects{kind=\"AccessPolicy\"}"),
        Some(2.0)
    );
    assert!(metric(port, "agentgate_config_last_reload_timestamp_seconds").unwrap() > 1.7e9);

    // A valid change is swapped in without a restart.
    edit(dir.path(), "40-policies.yaml", "rowLimit: 10000", "rowLimit: 500");
    let generation = wait_for(Duration::from_secs(10), || {
        metric(port, "agentgate_config_generation").filter(|g| *g == 2.0)
    });
    assert_eq!(generation, Some(2.0), "{}", gw.output());

    // A bad change is refused, named in the log, counted, and the previous snapshot stays in force.
    edit(dir.path(), "10-gateway.yaml", "mode: Required", "mode: Sometimes");
    let errors = wait_for(Duration::from_secs(10), || {
        metric(port, "agentgate_config_load_errors_total").filter(|n| *n >= 1.0)
    });
    assert_eq!(errors, Some(1.0), "{}", gw.output());
    assert_eq!(metric(port, "agentgate_config_generation"), Some(2.0));
    assert_eq!(metric(port, "agentgate_config_last_reload_success"), Some(0.0));
    assert_eq!(curl_get(&format!("http://127.0.0.1:{port}/readyz")).0, 200);
    let output = gw.output();
    let line = 1 + std::fs::read_to_string(dir.path().join("10-gateway.yaml"))
        .unwrap()
        .lines()
        .position(|l| l.contains("mode: Sometimes"))
        .unwrap();
    let expected = format!(
        "10-gateway.yaml:{line}: AgentGateway agentgate/main: spec.recording.mode: Unsupported value: \"Sometimes\""
    );
    assert!(output.contains(&expected), "{output}");

    // Fixing it is picked up again.
    edit(
        dir.path(),
        "10-gateway.yaml",
        "mode: Sometimes",
        "mode: BestEffort",
    );
    let generation = wait_for(Duration::from_secs(10), || {
        metric(port, "agentgate_config_generation").filter(|g| *g == 3.0)
    });
    assert_eq!(generation, Some(3.0), "{}", gw.output());

    // A listener whose protocol changes is served by the new protocol's loop: the two swap.
    let file = dir.path().join("10-gateway.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let https_port: u16 = text
        .split("name: https")
        .nth(1)
        .and_then(|rest| rest.split("port: ").nth(1))
        .and_then(|p| p.lines().next()?.trim().parse().ok())
        .expect("the https listener's port");
    let swapped = text
        .replace("protocol: HTTP", "protocol: @")
        .replace("protocol: Postgres", "protocol: HTTP")
        .replace("protocol: @", "protocol: Postgres");
    let staged = dir.path().join(".10-gateway.yaml.tmp");
    std::fs::write(&staged, swapped).unwrap();
    std::fs::rename(&staged, &file).unwrap();
    let generation = wait_for(Duration::from_secs(10), || {
        metric(port, "agentgate_config_generation").filter(|g| *g == 4.0)
    });
    assert_eq!(generation, Some(4.0), "{}", gw.output());
    let answer = wait_for(Duration::from_secs(10), || {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", https_port)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        // An SSLRequest: PostgreSQL answers one byte, `N` without TLS.
        c.write_all(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f]).ok()?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b).ok()?;
        (b[0] == b'N').then_some(())
    });
    assert!(
        answer.is_some(),
        "the listener still speaks its old protocol\n{}",
        gw.output()
    );

    let status = gw.terminate(Duration::from_secs(10)).expect("exits on SIGTERM");
    assert!(status.success(), "{}", gw.output());
}

#[test]
fn not_ready_until_a_valid_configuration_arrives() {
    let dir = examples_copy();
    edit(
        dir.path(),
        "40-policies.yaml",
        "connections: [orders-db]",
        "connections: [orders]",
    );
    let port = free_port();
    let gw = start(dir.path(), port);
    let code = wait_for(Duration::from_secs(20), || {
        let (code, _) = curl_get(&format!("http://127.0.0.1:{port}/readyz"));
        (code != 0).then_some(code)
    });
    assert_eq!(code, Some(503), "{}", gw.output());
    assert_eq!(curl_get(&format!("http://127.0.0.1:{port}/healthz")).0, 200);
    assert!(
        gw.output()
            .contains("spec.connections[0]: Connection agentgate/orders not found"),
        "{}",
        gw.output()
    );

    edit(
        dir.path(),
        "40-policies.yaml",
        "connections: [orders]",
        "connections: [orders-db]",
    );
    let code = wait_for(Duration::from_secs(10), || {
        let (code, _) = curl_get(&format!("http://127.0.0.1:{port}/readyz"));
        (code == 200).then_some(code)
    });
    assert_eq!(code, Some(200), "{}", gw.output());
}

#[test]
fn a_listener_on_the_admin_port_is_refused() {
    let dir = examples_copy();
    let port = free_port();
    // The first listener's port (a free one; see `examples_copy`) becomes the admin port.
    let gateway = std::fs::read_to_string(dir.path().join("10-gateway.yaml")).unwrap();
    let first = gateway
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("port: "))
        .expect("a listener port")
        .to_string();
    edit(dir.path(), "10-gateway.yaml", &first, &format!("port: {port}"));
    let gw = start(dir.path(), port);
    let code = wait_for(Duration::from_secs(20), || {
        let (code, _) = curl_get(&format!("http://127.0.0.1:{port}/readyz"));
        (code != 0).then_some(code)
    });
    assert_eq!(code, Some(503), "{}", gw.output());
    assert!(
        gw.output().contains("spec.listeners[0].port: Invalid value"),
        "{}",
        gw.output()
    );
    assert!(
        gw.output().contains("taken by the admin listener"),
        "{}",
        gw.output()
    );
}

#[test]
fn the_admin_listener_answers_unknown_paths_and_methods_plainly() {
    let dir = examples_copy();
    let port = free_port();
    let gw = start(dir.path(), port);
    let ready = wait_for(Duration::from_secs(20), || {
        (curl_get(&format!("http://127.0.0.1:{port}/readyz")).0 == 200).then_some(())
    });
    assert!(ready.is_some(), "{}", gw.output());
    assert_eq!(curl_get(&format!("http://127.0.0.1:{port}/nope")).0, 404);
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .arg(format!("http://127.0.0.1:{port}/readyz"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "405");
}
