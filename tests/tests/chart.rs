//! The Helm chart (`charts/agentgate`), rendered and linted by Helm's own engine (the Go SDK, through
//! the PyPI package helm-python-sdk and `tests/chart/render.py`): lint, CRDs and their keep
//! annotation, secure pod defaults, the strict values schema, optional objects; the rendered
//! objects applied to the Kubernetes API emulator; the approval admission policy end to end with
//! RBAC on and impersonated users; the kustomize base and overlay built from it; and the Argo CD
//! health checks (Lua) against sample objects.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use std::time::Duration;

use agentgate_e2e::kubernetes::Operator;
use agentgate_e2e::{wait_for, workspace_root};
use agentgate_kube_emulator::harness::{TestEnv, kubectl_binary};
use agentgate_kube_emulator::server::Config;
use serde_json::{Value, json};

/// What renders the chart: `$PYTHON` or `python3`, with the helm_python module.
fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn chart_dir() -> PathBuf {
    workspace_root().join("charts/agentgate")
}

fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{command:?} does not start: {e}"))
}

/// `render.py SUBCOMMAND CHART ARGS...`: stdout on success, stderr (and stdout) on failure.
fn helm(subcommand: &str, args: &[&str]) -> Result<String, String> {
    let out = run(Command::new(python())
        .arg(workspace_root().join("tests/chart/render.py"))
        .arg(subcommand)
        .arg(chart_dir())
        .args(args));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(
        out.status.code(),
        Some(3),
        "the Helm engine is missing: {stderr} (scripts/test.sh installs it)"
    );
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stderr}{stdout}"))
    }
}

/// The chart rendered like `helm template agentgate charts/agentgate --namespace NS ARGS...`.
fn render_text(args: &[&str]) -> String {
    helm("render", args).unwrap_or_else(|e| panic!("rendering with {args:?} failed: {e}"))
}

/// The rendered objects.
fn render(args: &[&str]) -> Vec<Value> {
    documents(&render_text(args))
}

/// The chart rendered with a values file holding `values` (YAML), then `args`.
fn render_values(values: &str, args: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).unwrap();
    let mut all = vec!["-f", file.to_str().unwrap()];
    all.extend_from_slice(args);
    render(&all)
}

/// The documents of a YAML stream.
fn documents(text: &str) -> Vec<Value> {
    text.split("\n---")
        .map(|d| d.trim_start_matches("---"))
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|d| {
            serde_saphyr::from_str::<Value>(d)
                .unwrap_or_else(|e| panic!("a rendered document does not parse: {e}\n{d}"))
        })
        .collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn the_chart_lints_clean_and_renders_the_expected_objects() {
    // Strict: warnings fail too (the only finding is the informational missing icon).
    helm("lint", &["--strict"]).unwrap_or_else(|e| panic!("helm lint: {e}"));
    helm(
        "lint",
        &[
            "--strict",
            "--set",
            "metrics.serviceMonitor.enabled=true,crds.enabled=false,replicaCount=1",
            "--set",
            "approvals.approverUsers={alice@example.com},image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ],
    )
    .unwrap_or_else(|e| panic!("helm lint with other values: {e}"));

    let objects = render(&[]);
    let mut names: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ClusterRole/agentgate-approver",
            "ClusterRole/agentgate-operator",
            "ClusterRoleBinding/agentgate-approver",
            "ClusterRoleBinding/agentgate-operator",
            "CustomResourceDefinition/accesspolicies.agentgate.dev",
            "CustomResourceDefinition/agentgateways.agentgate.dev",
            "CustomResourceDefinition/agentidentities.agentgate.dev",
            "CustomResourceDefinition/approvalrequests.agentgate.dev",
            "CustomResourceDefinition/connections.agentgate.dev",
            "Deployment/agentgate-operator",
            "NetworkPolicy/agentgate-operator",
            "PodDisruptionBudget/agentgate-operator",
            "Role/agentgate-operator-leader-election",
            "RoleBinding/agentgate-operator-leader-election",
            "Service/agentgate-operator-metrics",
            "ServiceAccount/agentgate-operator",
            "ValidatingAdmissionPolicy/agentgate-approval-decisions",
            "ValidatingAdmissionPolicy/agentgate-approval-request-metadata",
            "ValidatingAdmissionPolicy/agentgate-gateway-approval-requests",
            "ValidatingAdmissionPolicy/agentgate-gateway-approval-status",
            "ValidatingAdmissionPolicy/agentgate-operator-writes",
            "ValidatingAdmissionPolicyBinding/agentgate-approval-decisions",
            "ValidatingAdmissionPolicyBinding/agentgate-approval-request-metadata",
            "ValidatingAdmissionPolicyBinding/agentgate-gateway-approval-requests",
            "ValidatingAdmissionPolicyBinding/agentgate-gateway-approval-status",
            "ValidatingAdmissionPolicyBinding/agentgate-operator-writes",
        ]
    );
    for o in &objects {
        let namespaced = !matches!(
            o["kind"].as_str().unwrap(),
            "ClusterRole"
                | "ClusterRoleBinding"
                | "CustomResourceDefinition"
                | "ValidatingAdmissionPolicy"
                | "ValidatingAdmissionPolicyBinding"
        );
        assert_eq!(
            o["metadata"]["namespace"].as_str(),
            namespaced.then_some("agentgate-system"),
            "{}",
            o["metadata"]["name"]
        );
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/instance"], "agentgate",
            "{o}"
        );
    }

    // The operator: image, command line, downward API, probes on the named metrics port.
    let deployment = named(&objects, "Deployment", "agentgate-operator");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let version = cargo_workspace_version();
    assert_eq!(
        container["image"],
        format!("ghcr.io/agentgate/agentgate-operator:{version}")
    );
    assert_eq!(strings(&container["command"]), ["agentgate-operator"]);
    assert_eq!(
        strings(&container["args"]),
        [
            "run",
            "--metrics-addr",
            "0.0.0.0:8080",
            "--lease-name",
            "agentgate-operator",
            "--gateway-image",
            &format!("ghcr.io/agentgate/agentgate:{version}"),
        ]
    );
    let env: Vec<(&str, &Value)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                &e["valueFrom"]["fieldRef"]["fieldPath"],
            )
        })
        .collect();
    assert!(env.contains(&("POD_NAME", &json!("metadata.name"))), "{env:?}");
    assert!(
        env.contains(&("POD_NAMESPACE", &json!("metadata.namespace"))),
        "{env:?}"
    );
    assert_eq!(
        container["ports"],
        json!([{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    assert!(container["resources"]["requests"]["memory"].is_string());

    // The chart's appVersion is the workspace version.
    let chart: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["appVersion"], version);

    // Overrides: tags, digests, the lease, extra arguments.
    let objects = render(&[
        "--set",
        "image.tag=v9,gatewayImage.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "--set",
        "leaderElection.leaseName=my-lease,extraArgs={--x=1},replicaCount=3",
        "--set",
        "gatewayImage.allowed={registry.example.com/agentgate/agentgate@,ghcr.io/agentgate/agentgate:v2}",
    ]);
    let deployment = named(&objects, "Deployment", "agentgate-operator");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/agentgate/agentgate-operator:v9");
    let args = strings(&container["args"]);
    assert_eq!(args[4], "my-lease");
    assert_eq!(
        args[6],
        "ghcr.io/agentgate/agentgate@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    assert_eq!(
        args[7..],
        [
            "--allowed-gateway-image",
            "registry.example.com/agentgate/agentgate@",
            "--allowed-gateway-image",
            "ghcr.io/agentgate/agentgate:v2",
            "--x=1"
        ]
    );
}

/// The `version` of `[workspace.package]` in the root Cargo.toml.
fn cargo_workspace_version() -> String {
    let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    let section = manifest
        .split("[workspace.package]")
        .nth(1)
        .expect("a [workspace.package] section");
    section
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .expect("a workspace version")
        .trim_matches('"')
        .to_string()
}

#[test]
fn crds_are_templated_from_the_files_with_keep_and_can_be_left_out() {
    let files: Vec<Value> = std::fs::read_dir(chart_dir().join("files/crds"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| serde_saphyr::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect();
    assert_eq!(files.len(), 5);

    let objects = render(&[]);
    let crds = of_kind(&objects, "CustomResourceDefinition");
    assert_eq!(crds.len(), files.len());
    for file in &files {
        let name = &file["metadata"]["name"];
        let crd = crds
            .iter()
            .find(|c| c["metadata"]["name"] == *name)
            .unwrap_or_else(|| panic!("{name} not rendered"));
        assert_eq!(
            difference(&crd["spec"], &file["spec"], ".spec"),
            None,
            "{name}: the rendered CRD differs from the file"
        );
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{name}"
        );
        assert_eq!(
            crd["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "agentgate"
        );
    }

    let objects = render(&["--set", "crds.keep=false"]);
    let crds = of_kind(&objects, "CustomResourceDefinition");
    assert_eq!(crds.len(), 5);
    for crd in crds {
        assert!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null(),
            "{}",
            crd["metadata"]
        );
    }

    let objects = render(&["--set", "crds.enabled=false"]);
    assert!(of_kind(&objects, "CustomResourceDefinition").is_empty());
    assert!(!of_kind(&objects, "Deployment").is_empty());
}

/// The first path where two documents differ (numbers compared by value: Helm's YAML round trip
/// writes `0.0` as `0`).
fn difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => (x.as_f64() != y.as_f64()).then(|| path.into()),
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path} (keys)"));
            }
            x.iter().find_map(|(k, v)| match y.get(k) {
                Some(w) => difference(v, w, &format!("{path}.{k}")),
                None => Some(format!("{path}.{k}")),
            })
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path} (length)"));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (v, w))| difference(v, w, &format!("{path}[{i}]")))
        }
        _ => (a != b).then(|| path.into()),
    }
}

/// Asserts the restricted Pod Security Standard's settings on a pod template.
fn assert_secure_pod(owner: &str, pod: &Value) {
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true, "{owner}: {psc}");
    assert_eq!(psc["runAsUser"], 65532, "{owner}: {psc}");
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{owner}: {psc}");
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten())
        .collect();
    assert!(!containers.is_empty(), "{owner}: no containers");
    for c in containers {
        let sc = &c["securityContext"];
        let what = format!("{owner}/{}: {sc}", c["name"]);
        assert_eq!(sc["runAsNonRoot"], true, "{what}");
        assert_eq!(sc["runAsUser"], 65532, "{what}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{what}");
        assert!(sc["capabilities"]["add"].is_null(), "{what}");
        assert_ne!(sc["privileged"], true, "{what}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
        assert!(
            c["resources"]["requests"].is_object(),
            "{what}: no resource requests"
        );
    }
    assert_ne!(pod["hostNetwork"], true, "{owner}");
    assert_ne!(pod["hostPID"], true, "{owner}");
}

#[test]
fn every_pod_spec_has_secure_defaults() {
    for args in [
        &[][..],
        &["--set", "metrics.serviceMonitor.enabled=true,replicaCount=1"][..],
    ] {
        let objects = render(args);
        let mut pods = 0;
        for o in &objects {
            let pod = match o["kind"].as_str().unwrap() {
                "Pod" => &o["spec"],
                "CronJob" => &o["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                _ => &o["spec"]["template"]["spec"],
            };
            if pod.is_object() {
                pods += 1;
                assert_secure_pod(o["metadata"]["name"].as_str().unwrap(), pod);
            }
        }
        assert!(pods >= 1, "no pod templates rendered");
    }

    // Scheduling values reach the pod; a topology spread constraint gets the pods' own selector.
    let values = r#"
nodeSelector: {disktype: ssd}
tolerations: [{key: dedicated, operator: Equal, value: agentgate, effect: NoSchedule}]
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector: {matchLabels: {app.kubernetes.io/component: operator}}
topologySpreadConstraints:
  - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway}
priorityClassName: system-cluster-critical
"#;
    let objects = render_values(values, &[]);
    let pod = &named(&objects, "Deployment", "agentgate-operator")["spec"]["template"]["spec"];
    // Maps merge with the defaults, as Helm merges values.
    assert_eq!(
        pod["nodeSelector"],
        json!({"disktype": "ssd", "kubernetes.io/os": "linux"})
    );
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    assert_eq!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"],
        100
    );
    assert_eq!(
        pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"],
        json!({
            "app.kubernetes.io/name": "agentgate",
            "app.kubernetes.io/instance": "agentgate",
            "app.kubernetes.io/component": "operator"
        })
    );
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_secure_pod("with scheduling values", pod);
}

#[test]
fn the_values_schema_refuses_unknown_keys_wrong_types_and_bad_enums() {
    for (args, expected) in [
        (
            vec!["--set", "foo=bar"],
            "additional properties 'foo' not allowed",
        ),
        (
            vec!["--set", "image.tagg=v1"],
            "additional properties 'tagg' not allowed",
        ),
        (
            vec!["--set", "metrics.serviceMonitor.enable=true"],
            "additional properties 'enable' not allowed",
        ),
        (vec!["--set", "replicaCount=two"], "want integer"),
        (vec!["--set", "crds.enabled=yes please"], "want boolean"),
        (vec!["--set", "replicaCount=-1"], "minimum"),
        (vec!["--set", "metrics.port=70000"], "maximum"),
        (
            vec!["--set", "image.pullPolicy=Sometimes"],
            "'/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'",
        ),
        (
            vec!["--set", "approvals.admissionPolicy.failurePolicy=Ignore"],
            "failurePolicy",
        ),
        (
            vec!["--set", "approvals.approverGroups={system:authenticated}"],
            "approverGroups/0",
        ),
        (
            vec![
                "--set",
                "approvals.approverUsers={system:serviceaccount:agents:ci}",
            ],
            "approverUsers/0",
        ),
        (vec!["--set", "approvals.approverGroups=admins"], "want array"),
        (vec!["--set", "image.digest=latest"], "image/digest"),
        (vec!["--set", "gatewayImage.allowed=ghcr.io/x/y:v1"], "want array"),
        (
            vec!["--set", "gatewayImage.allowed={a b}"],
            "gatewayImage/allowed/0",
        ),
        // Secure pod defaults cannot be loosened past what the operator needs.
        (
            vec!["--set", "securityContext.privileged=true"],
            "securityContext/privileged",
        ),
        (
            vec!["--set", "securityContext.allowPrivilegeEscalation=true"],
            "securityContext/allowPrivilegeEscalation",
        ),
        (
            vec!["--set", "securityContext.runAsNonRoot=false"],
            "securityContext/runAsNonRoot",
        ),
        (
            vec!["--set", "podSecurityContext.runAsUser=0"],
            "podSecurityContext/runAsUser",
        ),
        (
            vec!["--set", "securityContext.capabilities.add={SYS_ADMIN}"],
            "securityContext/capabilities/add/0",
        ),
        (
            vec!["--set", "podSecurityContext.seccompProfile.type=Unconfined"],
            "podSecurityContext/seccompProfile/type",
        ),
        // Nor removed: Helm deletes a default set to null, then validates what is left.
        (
            vec!["--set", "securityContext.capabilities=null"],
            "securityContext",
        ),
        (
            vec!["--set", "securityContext.allowPrivilegeEscalation=null"],
            "securityContext",
        ),
        (
            vec!["--set", "podSecurityContext.seccompProfile=null"],
            "podSecurityContext",
        ),
        (vec!["--set", "securityContext=null"], "securityContext"),
        (
            vec!["--set", "securityContext.capabilities.drop={NET_RAW}"],
            "securityContext/capabilities/drop",
        ),
        (
            vec!["--set", "securityContext.readOnlyRootFilesystem=false"],
            "securityContext/readOnlyRootFilesystem",
        ),
    ] {
        let err = helm("render", &args).expect_err(&format!("{args:?} was accepted"));
        assert!(err.contains(expected), "{args:?}: {err}");
        let lint = helm("lint", &args).expect_err(&format!("lint accepted {args:?}"));
        assert!(lint.contains("[ERROR]"), "{args:?}: {lint}");
    }

    // Every object level of the schema is closed, so a misspelt key anywhere is refused.
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap())
            .unwrap();
    let mut open = Vec::new();
    closed_objects(&schema, "", &mut open);
    assert_eq!(
        open,
        Vec::<String>::new(),
        "schema objects without additionalProperties"
    );
    // And every key of values.yaml is documented by a comment above it.
    let values = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let lines: Vec<&str> = values.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let is_key = !trimmed.starts_with('#')
            && !trimmed.starts_with('-')
            && trimmed.contains(':')
            && !trimmed.is_empty();
        // Keys of a default value's body (under a documented parent) need no comment of their own.
        let indent = line.len() - trimmed.len();
        let parent_is_value = lines[..i]
            .iter()
            .rev()
            .find(|l| {
                let t = l.trim_start();
                !t.is_empty() && !t.starts_with('#') && (l.len() - t.len()) < indent
            })
            .is_some_and(|p| {
                matches!(
                    p.trim(),
                    "podSecurityContext:"
                        | "securityContext:"
                        | "resources:"
                        | "nodeSelector:"
                        | "seccompProfile:"
                        | "capabilities:"
                        | "requests:"
                        | "limits:"
                        | "egress:"
                )
            });
        if is_key && !parent_is_value {
            assert!(
                i > 0 && lines[i - 1].trim_start().starts_with('#'),
                "values.yaml line {}: `{}` has no comment above it",
                i + 1,
                line.trim()
            );
        }
    }
}

/// Paths of schema objects that declare `properties` but leave `additionalProperties` open.
fn closed_objects(schema: &Value, path: &str, open: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if map.get("type") == Some(&json!("object"))
                && map.contains_key("properties")
                && map.get("additionalProperties") != Some(&json!(false))
            {
                open.push(path.to_string());
            }
            for (k, v) in map {
                closed_objects(v, &format!("{path}/{k}"), open);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                closed_objects(v, &format!("{path}/{i}"), open);
            }
        }
        _ => {}
    }
}

#[test]
fn optional_objects_follow_their_values() {
    let defaults = render(&[]);
    assert!(of_kind(&defaults, "ServiceMonitor").is_empty());

    let objects = render(&["--set", "metrics.serviceMonitor.enabled=true"]);
    let monitors = of_kind(&objects, "ServiceMonitor");
    assert_eq!(monitors.len(), 1);
    let monitor = monitors[0];
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let service = named(&objects, "Service", "agentgate-operator-metrics");
    let selector = monitor["spec"]["selector"]["matchLabels"].as_object().unwrap();
    for (k, v) in selector {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "the ServiceMonitor selects {k}"
        );
    }
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    // The ServiceMonitor brings its Service even when the Service alone is switched off.
    let objects = render(&[
        "--set",
        "metrics.serviceMonitor.enabled=true,metrics.service.enabled=false",
    ]);
    assert_eq!(of_kind(&objects, "Service").len(), 1);
    let objects = render(&["--set", "metrics.service.enabled=false"]);
    assert!(of_kind(&objects, "Service").is_empty());

    // The NetworkPolicy: ingress only to the metrics port, egress open by default.
    let policy = named(&defaults, "NetworkPolicy", "agentgate-operator");
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        policy["spec"]["ingress"],
        json!([{"ports": [{"port": "metrics", "protocol": "TCP"}]}])
    );
    assert_eq!(policy["spec"]["egress"], json!([{}]));
    let objects = render(&["--set", "networkPolicy.enabled=false"]);
    assert!(of_kind(&objects, "NetworkPolicy").is_empty());

    // The PDB only with more than one replica; the admission policy can be left out.
    assert_eq!(
        named(&defaults, "PodDisruptionBudget", "agentgate-operator")["spec"]["minAvailable"],
        1
    );
    let objects = render(&["--set", "replicaCount=1"]);
    assert!(of_kind(&objects, "PodDisruptionBudget").is_empty());
    let objects = render(&["--set", "podDisruptionBudget.enabled=false"]);
    assert!(of_kind(&objects, "PodDisruptionBudget").is_empty());
    let objects = render_values(
        "approvals: {approverGroups: [], admissionPolicy: {enabled: false}}",
        &[],
    );
    let names = |objects: &[Value], kind: &str| -> Vec<String> {
        of_kind(objects, kind)
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(&objects, "ValidatingAdmissionPolicy"),
        ["agentgate-operator-writes"]
    );
    assert_eq!(
        names(&objects, "ValidatingAdmissionPolicyBinding"),
        ["agentgate-operator-writes"]
    );
    // The operator's fence goes with its RBAC, or alone.
    for off in ["rbac.create=false", "rbac.admissionPolicy.enabled=false"] {
        let objects = render(&["--set", off]);
        assert!(
            !names(&objects, "ValidatingAdmissionPolicy").contains(&"agentgate-operator-writes".to_string()),
            "{off}"
        );
    }
    // Approvers bound without the policy could write each other's decisions: refused.
    let err = helm("render", &["--set", "approvals.admissionPolicy.enabled=false"])
        .expect_err("approvers bound without the admission policy");
    assert!(err.contains("RBAC alone would let any approver write"), "{err}");

    // Without approvers there is no binding; with users they are bound as Users.
    let objects = render_values("approvals: {approverGroups: []}", &[]);
    assert!(
        of_kind(&objects, "ClusterRoleBinding")
            .iter()
            .all(|b| b["metadata"]["name"] != "agentgate-approver")
    );
    let objects = render(&[
        "--set",
        "approvals.approverGroups={ops,sec},approvals.approverUsers={alice@example.com}",
    ]);
    assert_eq!(
        named(&objects, "ClusterRoleBinding", "agentgate-approver")["subjects"],
        json!([
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "ops"},
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "sec"},
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice@example.com"},
        ])
    );
}

/// Whether `rules` allow `verb` on `group`/`resource`.
fn allows(rules: &Value, group: &str, resource: &str, verb: &str) -> bool {
    rules.as_array().unwrap().iter().any(|r| {
        let has = |key: &str, want: &str| strings(&r[key]).iter().any(|v| *v == want || *v == "*");
        has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
    })
}

#[test]
fn rbac_is_least_privilege_and_covers_what_the_operator_grants() {
    let objects = render(&[]);
    let operator = &named(&objects, "ClusterRole", "agentgate-operator")["rules"];
    // Children's blockOwnerDeletion needs this where OwnerReferencesPermissionEnforcement runs.
    assert!(allows(
        operator,
        "agentgate.dev",
        "agentgateways/finalizers",
        "update"
    ));
    // The admission policies of a namespace-scoped release govern its namespace only.
    let bindings = render(&["--set", "watchNamespace=team-a"]);
    for b in of_kind(&bindings, "ValidatingAdmissionPolicyBinding") {
        assert_eq!(
            b["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "team-a",
            "{b}"
        );
    }
    for b in of_kind(&objects, "ValidatingAdmissionPolicyBinding") {
        assert!(b["spec"]["matchResources"].is_null(), "{b}");
    }
    let kinds = [
        "agentgateways",
        "connections",
        "agentidentities",
        "accesspolicies",
        "approvalrequests",
    ];
    for kind in kinds {
        for verb in ["get", "list", "watch"] {
            assert!(allows(operator, "agentgate.dev", kind, verb), "{kind} {verb}");
        }
        // It writes their status, never their spec.
        for verb in ["patch", "update"] {
            assert!(!allows(operator, "agentgate.dev", kind, verb), "{kind} {verb}");
        }
        for verb in ["get", "patch"] {
            let status = format!("{kind}/status");
            assert!(
                allows(operator, "agentgate.dev", &status, verb),
                "{status} {verb}"
            );
        }
        assert!(!allows(
            operator,
            "agentgate.dev",
            &format!("{kind}/status"),
            "update"
        ));
    }
    assert!(allows(operator, "agentgate.dev", "approvalrequests", "delete"));
    // Children are written by server-side apply and collected with their gateway.
    for (group, resource) in [
        ("", "secrets"),
        ("", "serviceaccounts"),
        ("", "services"),
        ("apps", "deployments"),
        ("policy", "poddisruptionbudgets"),
        ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"),
    ] {
        for verb in ["get", "list", "watch", "create", "patch"] {
            assert!(allows(operator, group, resource, verb), "{resource} {verb}");
        }
        for verb in ["update", "delete"] {
            assert!(!allows(operator, group, resource, verb), "{resource} {verb}");
        }
    }
    assert!(allows(operator, "", "events", "create"));
    // What a per-gateway Role grants, the operator must hold (RBAC's escalation check).
    for (group, resource, verbs) in [
        ("", "secrets", &["get", "list", "watch"][..]),
        (
            "agentgate.dev",
            "approvalrequests",
            &["get", "list", "watch", "create"][..],
        ),
        ("agentgate.dev", "approvalrequests/status", &["get", "patch"][..]),
        ("", "events", &["create"][..]),
    ] {
        for verb in verbs {
            assert!(allows(operator, group, resource, verb), "grant {resource} {verb}");
        }
    }
    // Nothing else: no wildcards, no agentgate.dev deletes beyond ApprovalRequests, no pods, no
    // cluster-scoped RBAC, no escalate/bind/impersonate.
    for rule in operator.as_array().unwrap() {
        for key in ["apiGroups", "resources", "verbs"] {
            assert!(!strings(&rule[key]).contains(&"*"), "{rule}");
        }
        for verb in strings(&rule["verbs"]) {
            assert!(
                !["escalate", "bind", "impersonate", "deletecollection"].contains(&verb),
                "{rule}"
            );
        }
    }
    for kind in &kinds[..4] {
        assert!(!allows(operator, "agentgate.dev", kind, "delete"), "{kind}");
        assert!(!allows(operator, "agentgate.dev", kind, "create"), "{kind}");
    }
    assert!(!allows(operator, "", "pods", "get"));
    assert!(!allows(
        operator,
        "rbac.authorization.k8s.io",
        "clusterroles",
        "create"
    ));
    assert!(!allows(operator, "coordination.k8s.io", "leases", "get"));
    // Leader election in the release namespace only.
    let election = &named(&objects, "Role", "agentgate-operator-leader-election")["rules"];
    for verb in ["get", "list", "watch", "create", "update", "patch"] {
        assert!(allows(election, "coordination.k8s.io", "leases", verb), "{verb}");
    }

    // Approvers: read and patch ApprovalRequests; nothing on status, no create or delete.
    let approver = &named(&objects, "ClusterRole", "agentgate-approver")["rules"];
    for verb in ["get", "list", "watch", "patch", "update"] {
        assert!(
            allows(approver, "agentgate.dev", "approvalrequests", verb),
            "{verb}"
        );
    }
    for verb in ["create", "delete", "deletecollection"] {
        assert!(
            !allows(approver, "agentgate.dev", "approvalrequests", verb),
            "{verb}"
        );
    }
    for verb in ["get", "patch", "update"] {
        assert!(!allows(
            approver,
            "agentgate.dev",
            "approvalrequests/status",
            verb
        ));
    }
    assert_eq!(approver.as_array().unwrap().len(), 1);
    assert_eq!(
        named(&objects, "ClusterRoleBinding", "agentgate-approver")["subjects"],
        json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "agentgate-approvers"}])
    );
}

/// Kinds the Kubernetes API emulator does not serve (see tests/kube-emulator/README.md).
const NOT_EMULATED: &[&str] = &["NetworkPolicy", "ServiceMonitor"];

/// Applies the chart rendered into the environment's namespace with `args`, as admin, server-side.
fn apply_chart(env: &TestEnv, args: &[&str]) -> Vec<Value> {
    let mut render_args = vec!["--namespace", env.namespace()];
    render_args.extend_from_slice(args);
    let objects = render(&render_args);
    // By namespace, as Helm sends them: kubectl refuses objects of another namespace than its own.
    let mut by_namespace: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for o in objects
        .iter()
        .filter(|o| !NOT_EMULATED.contains(&o["kind"].as_str().unwrap()))
    {
        let ns = o["metadata"]["namespace"].as_str().unwrap_or(env.namespace());
        by_namespace
            .entry(ns)
            .or_default()
            .push(serde_json::to_string(o).unwrap());
    }
    for (ns, servable) in by_namespace {
        let path = env.file(&format!("chart-{ns}.yaml"), &servable.join("\n---\n"));
        env.kubectl_ok(
            "admin",
            &[
                "apply",
                "--server-side",
                "--field-manager",
                "helm",
                "-n",
                ns,
                "-f",
                &path,
            ],
        );
    }
    objects
}

#[test]
fn the_rendered_chart_is_accepted_by_the_api_server() {
    // The chart brings its own CRDs (the environment installs none).
    let env = TestEnv::start_configured(false, |c: &mut Config| c.authorization = true);
    if !env.is_emulated() {
        eprintln!("skipped on a real cluster: the chart's cluster-scoped objects would collide");
        return;
    }
    let objects = apply_chart(&env, &["--set", "metrics.serviceMonitor.enabled=true"]);
    for o in &objects {
        let kind = o["kind"].as_str().unwrap();
        if NOT_EMULATED.contains(&kind) {
            continue;
        }
        let name = o["metadata"]["name"].as_str().unwrap();
        let resource = format!("{}/{name}", kind.to_lowercase());
        let got = env.kubectl_ok("admin", &["get", &resource, "-o", "json"]);
        let got: Value = serde_json::from_str(&got).unwrap();
        assert_eq!(got["metadata"]["labels"], o["metadata"]["labels"], "{resource}");
    }
    // The CRDs are served: the examples apply (with their namespace).
    let examples = workspace_root().join("deploy/examples");
    let out = env
        .kubectl_command_in("admin", &["apply", "-f", examples.to_str().unwrap()], false)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = env.kubectl_ok(
        "admin",
        &["get", "accesspolicies", "-n", "agentgate", "-o", "name"],
    );
    assert!(out.contains("accesspolicy.agentgate.dev/"), "{out}");
    // Re-applying the same render changes nothing.
    apply_chart(&env, &["--set", "metrics.serviceMonitor.enabled=true"]);
    // The operator's ServiceAccount may do what the operator needs, and no more (RBAC as
    // rendered, the emulator enforcing it).
    let sa = format!(
        "--as=system:serviceaccount:{}:agentgate-operator",
        env.namespace()
    );
    let lease = env.file(
        "lease.yaml",
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: agentgate-operator}\nspec: {holderIdentity: x}\n",
    );
    // What the operator creates per gateway (kubectl's typed `create deployment` would send
    // protobuf, which the emulator does not read), as its own (labelled, owned by a gateway).
    let image = format!("ghcr.io/agentgate/agentgate:{}", cargo_workspace_version());
    let meta = "metadata:\n  name: agentgate-gw\n  labels: {app.kubernetes.io/managed-by: agentgate-operator}\n  ownerReferences: [{apiVersion: agentgate.dev/v1alpha1, kind: AgentGateway, name: gw, uid: 0a1b2c3d, controller: true}]\n";
    let selects = "{app.kubernetes.io/name: agentgate-gateway, agentgate.dev/gateway: gw}";
    let service_with = |spec: &str| format!("apiVersion: v1\nkind: Service\n{meta}spec: {spec}\n");
    let budget_with = |labels: &str| {
        format!(
            "apiVersion: policy/v1\nkind: PodDisruptionBudget\n{meta}spec: {{maxUnavailable: 1, selector: {{matchLabels: {labels}}}}}\n"
        )
    };
    let service = format!("{{type: ClusterIP, selector: {selects}, ports: [{{port: 80}}]}}");
    let deployment_with = |pod: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\n{meta}spec:\n  selector: {{matchLabels: {selects}}}\n  template:\n    metadata: {{labels: {selects}}}\n    spec: {pod}\n"
        )
    };
    let gateway_pod = format!(
        "{{serviceAccountName: agentgate-gw, containers: [{{name: gw, image: \"{image}\"}}], volumes: [{{name: data, emptyDir: {{}}}}]}}"
    );
    let deployment = env.file("deployment.yaml", &deployment_with(&gateway_pod));
    let role_with =
        |rules: &str| format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n{meta}rules:\n{rules}");
    let role = env.file(
        "role.yaml",
        &role_with(
            "  - {apiGroups: [\"\"], resources: [secrets], resourceNames: [agentgate-gw-config], verbs: [get, list, watch]}\n  - {apiGroups: [agentgate.dev], resources: [approvalrequests], verbs: [get, list, watch, create]}\n  - {apiGroups: [agentgate.dev], resources: [approvalrequests/status], verbs: [get, patch]}\n",
        ),
    );
    let binding_to = |kind: &str, name: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n{meta}roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: {kind}, name: {name}}}\nsubjects: [{{kind: ServiceAccount, name: agentgate-gw, namespace: agentgate}}]\n"
        )
    };
    let binding = env.file("binding.yaml", &binding_to("Role", "agentgate-gw"));
    let config_secret = |type_: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\n{}type: {type_}\nstringData: {{config.json: \"{{}}\"}}\n",
            meta.replace("name: agentgate-gw\n", "name: agentgate-gw-config\n")
        )
    };
    let allowed: &[&[&str]] = &[
        &[
            "get",
            "agentgateways,connections,agentidentities,accesspolicies,approvalrequests",
            "-n",
            "agentgate",
        ],
        &["get", "secrets,services,serviceaccounts", "-n", "agentgate"],
        &[
            "get",
            "deployments,poddisruptionbudgets,roles,rolebindings",
            "-n",
            "agentgate",
        ],
        &["create", "-f", &deployment, "-n", "agentgate", "--dry-run=server"],
        &["create", "-f", &role, "-n", "agentgate", "--dry-run=server"],
        &["create", "-f", &binding, "-n", "agentgate", "--dry-run=server"],
        &[
            "create",
            "-f",
            &env.file("config-secret.yaml", &config_secret("Opaque")),
            "-n",
            "agentgate",
            "--dry-run=server",
        ],
        &[
            "create",
            "-f",
            &env.file("service.yaml", &service_with(&service)),
            "-n",
            "agentgate",
            "--dry-run=server",
        ],
        &[
            "create",
            "-f",
            &env.file("budget.yaml", &budget_with(selects)),
            "-n",
            "agentgate",
            "--dry-run=server",
        ],
        &["create", "-f", &lease, "--dry-run=server"],
    ];
    for args in allowed {
        let mut all = vec![sa.as_str()];
        all.extend_from_slice(args);
        env.kubectl_ok("admin", &all);
    }
    let refused: &[(&[&str], &str)] = &[
        (
            &["get", "pods", "-n", "agentgate"],
            "cannot list resource \"pods\"",
        ),
        (
            &["delete", "accesspolicies", "--all", "-n", "agentgate"],
            "cannot delete resource \"accesspolicies\"",
        ),
        (
            &["create", "-f", &lease, "-n", "agentgate", "--dry-run=server"],
            "cannot create resource \"leases\"",
        ),
        (&["get", "clusterroles"], "cannot list resource \"clusterroles\""),
        (
            &["get", "configmaps", "-n", "agentgate"],
            "cannot list resource \"configmaps\"",
        ),
    ];
    for (args, expected) in refused {
        let mut all = vec![sa.as_str()];
        all.extend_from_slice(args);
        let e = env.kubectl_err("admin", &all);
        assert!(e.contains(expected), "{args:?}: {e}");
    }

    // RBAC lets the operator create and patch any Deployment, Role, Secret...; the chart's
    // admission policy fences it to what it makes for its gateways.
    let fenced = |name: &str, text: String| (env.file(name, &text), name.to_string());
    let not_gateway_shaped = [
        // Not labelled as the operator's, nor owned by a gateway.
        fenced(
            "unowned.yaml",
            deployment_with(&gateway_pod).replace(meta, "metadata: {name: agentgate-gw}\n"),
        ),
        fenced(
            "host-path.yaml",
            deployment_with(&gateway_pod.replace("emptyDir: {}", "hostPath: {path: /}")),
        ),
        fenced(
            "other-image.yaml",
            deployment_with(&gateway_pod.replace(&image, "evil.example/shell:1")),
        ),
        fenced(
            "other-account.yaml",
            deployment_with(
                &gateway_pod.replace("serviceAccountName: agentgate-gw", "serviceAccountName: default"),
            ),
        ),
        fenced(
            "privileged.yaml",
            deployment_with(&gateway_pod.replace(
                "name: gw, image",
                "name: gw, securityContext: {privileged: true}, image",
            )),
        ),
        // Pods that another Service selects, a port on the node, a command of its own.
        fenced(
            "victim-pods.yaml",
            deployment_with(&gateway_pod).replacen(
                "labels: {app.kubernetes.io/name: agentgate-gateway,",
                "labels: {app: victim, app.kubernetes.io/name: agentgate-gateway,",
                1,
            ),
        ),
        fenced(
            "host-port.yaml",
            deployment_with(&gateway_pod.replace(
                "name: gw, image",
                "name: gw, ports: [{containerPort: 80, hostPort: 80}], image",
            )),
        ),
        fenced(
            "command.yaml",
            deployment_with(&gateway_pod.replace("name: gw, image", "name: gw, command: [sh], image")),
        ),
        fenced(
            "load-balancer.yaml",
            service_with(&service.replace("type: ClusterIP", "type: LoadBalancer")),
        ),
        fenced(
            "external-ips.yaml",
            service_with(&service.replace("type: ClusterIP", "type: ClusterIP, externalIPs: [10.0.0.1]")),
        ),
        fenced(
            "other-pods.yaml",
            service_with(&service.replace(selects, "{app: victim}")),
        ),
        fenced("blocking-budget.yaml", budget_with("{app: victim}")),
        fenced(
            "all-secrets.yaml",
            role_with("  - {apiGroups: [\"\"], resources: [secrets], verbs: [get, list, watch]}\n"),
        ),
        fenced(
            "pods.yaml",
            role_with("  - {apiGroups: [\"\"], resources: [pods], verbs: [get]}\n"),
        ),
        fenced(
            "cluster-role-binding.yaml",
            binding_to("ClusterRole", "agentgate-gw"),
        ),
        // A token Secret: the token controller would fill it with the named account's token.
        fenced(
            "token-secret.yaml",
            config_secret("kubernetes.io/service-account-token").replace(
                "labels:",
                "annotations: {kubernetes.io/service-account.name: default}\n  labels:",
            ),
        ),
    ];
    let expected = [
        "the operator writes only objects labelled app.kubernetes.io/managed-by=agentgate-operator and owned by an AgentGateway",
        "a gateway Deployment selects and labels its own gateway's pods only",
        "a gateway Deployment selects and labels its own gateway's pods only",
        "a gateway Deployment selects and labels its own gateway's pods only",
        "a gateway Deployment selects and labels its own gateway's pods only",
        "a gateway Deployment selects and labels its own gateway's pods only",
        "a gateway Deployment selects and labels its own gateway's pods only",
        "a gateway Deployment selects and labels its own gateway's pods only",
        "a gateway Service is a ClusterIP Service, without external IPs, that selects its own gateway's pods",
        "a gateway Service is a ClusterIP Service, without external IPs, that selects its own gateway's pods",
        "a gateway Service is a ClusterIP Service, without external IPs, that selects its own gateway's pods",
        "a gateway PodDisruptionBudget selects its own gateway's pods only",
        "a gateway Role grants only its configuration Secret (by name), ApprovalRequests and Events",
        "a gateway Role grants only its configuration Secret (by name), ApprovalRequests and Events",
        "a gateway RoleBinding binds the Role of its own name to the ServiceAccount of that name",
        "the only Secret the operator writes is a gateway's configuration (an Opaque Secret named <child>-config)",
    ];
    assert_eq!(not_gateway_shaped.len(), expected.len());
    for ((file, name), expected) in not_gateway_shaped.iter().zip(expected) {
        let e = env.kubectl_err(
            "admin",
            &[&sa, "create", "-f", file, "-n", "agentgate", "--dry-run=server"],
        );
        assert!(
            e.contains("ValidatingAdmissionPolicy 'agentgate-operator-writes'") && e.contains(expected),
            "{name}: {e}"
        );
        // The same object from anyone else is RBAC's business only.
        env.kubectl_ok(
            "admin",
            &["create", "-f", file, "-n", "agentgate", "--dry-run=server"],
        );
    }
    // Someone else's Deployment cannot be taken over by labelling it as the operator's.
    env.kubectl_ok(
        "admin",
        &["create", "-f", &not_gateway_shaped[0].0, "-n", "agentgate"],
    );
    let e = env.kubectl_err(
        "admin",
        &[
            &sa,
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            "agentgate-operator",
            "-f",
            &deployment,
            "-n",
            "agentgate",
        ],
    );
    assert!(e.contains("the operator changes only objects it made"), "{e}");
}

/// A namespace-scoped install (`watchNamespace`): the operator, holding nothing but the chart's
/// Role in that namespace (and its Lease's), runs that namespace's gateway and leaves the others be.
#[test]
fn a_namespace_scoped_install_runs_its_namespace_with_only_a_role_there() {
    let env = TestEnv::start_configured(false, |c: &mut Config| c.authorization = true);
    if !env.is_emulated() {
        eprintln!("skipped on a real cluster: the chart's cluster-scoped objects would collide");
        return;
    }
    let release = env.namespace().to_string();
    for ns in ["team-a", "team-b"] {
        env.kubectl_ok("admin", &["create", "namespace", ns]);
    }
    // The gateway image the operator runs here (Operator::start_with), which the chart's
    // admission policy admits for gateway Deployments: every child the operator writes below
    // passes that policy.
    let objects = apply_chart(
        &env,
        &[
            "--set",
            "watchNamespace=team-a,gatewayImage.repository=registry.test/agentgate,gatewayImage.tag=e2e",
        ],
    );
    let operator_rbac: Vec<String> = objects
        .iter()
        .filter(|o| {
            o["metadata"]["name"] == "agentgate-operator" && o["kind"].as_str().unwrap().contains("Role")
        })
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["namespace"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(operator_rbac, ["Role/team-a", "RoleBinding/team-a"]);
    let gateway = |ns: &str| {
        format!(
            "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {{name: main, namespace: {ns}}}\nspec:\n  listeners: [{{name: https, protocol: HTTP, port: 8443}}]\n"
        )
    };
    for ns in ["team-a", "team-b"] {
        let file = env.file(&format!("{ns}.yaml"), &gateway(ns));
        env.kubectl_ok("admin", &["apply", "-n", ns, "-f", &file]);
    }
    let sa = format!("system:serviceaccount:{release}:agentgate-operator");
    let op = Operator::start_with(
        &env.kubeconfig("admin"),
        &release,
        "operator-a",
        &[
            "--watch-namespace",
            "team-a",
            "--lease-name",
            "agentgate-operator",
        ],
        &[("KUBE_RS_DEBUG_IMPERSONATE_USER", &sa)],
    );
    let status = |ns: &str, path: &str| {
        let out = env.kubectl(
            "admin",
            &[
                "get",
                "agentgateway",
                "main",
                "-n",
                ns,
                "-o",
                &format!("jsonpath={path}"),
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ready = wait_for(Duration::from_secs(30), || {
        (status("team-a", "{.status.conditions[?(@.type==\"Ready\")].status}") == "True").then_some(())
    });
    assert!(
        ready.is_some(),
        "team-a's gateway is not Ready\n{}",
        op.process.output()
    );
    env.kubectl_ok("admin", &["get", "deployment", "agentgate-main", "-n", "team-a"]);
    // The other namespace is not the operator's: no status, no children, and no refused watch.
    assert_eq!(status("team-b", "{.status}"), "");
    assert!(
        !env.kubectl("admin", &["get", "deployment", "agentgate-main", "-n", "team-b"])
            .status
            .success()
    );
    let output = op.process.output();
    assert!(!output.to_lowercase().contains("forbidden"), "{output}");
}

/// An ApprovalRequest as a gateway creates it, for a rule whose approvers are the group
/// `agentgate-approvers` and the user `carol`.
fn approval_request(name: &str, requester: &str, decisions: &str) -> String {
    approval_request_for(
        name,
        requester,
        "{groups: [agentgate-approvers], users: [carol]}",
        decisions,
    )
}

fn approval_request_for(name: &str, requester: &str, approvers: &str, decisions: &str) -> String {
    format!(
        r#"apiVersion: agentgate.dev/v1alpha1
kind: ApprovalRequest
metadata: {{name: {name}, labels: {{agentgate.dev/gateway: main}}}}
spec:
  identity: ci-agent
  requester: {requester}
  connection: orders-db
  operation: {{kind: SQL, summary: "DELETE FROM orders WHERE id = $1", fingerprint: 0123456789abcdef}}
  policy: {{name: ci-agent-db, rule: writes-need-a-human}}
  grant: {{type: Once}}
  approvers: {approvers}
  expiresAt: "2030-01-01T00:00:00Z"
{decisions}"#
    )
}

fn decide(who: &str, state: &str) -> String {
    json!({"spec": {"decisions": {who: {"state": state, "reason": "INC-1234"}}}}).to_string()
}

/// Gateways may create ApprovalRequests and write their status (the operator grants that per
/// namespace); the admission policy keeps each to its own requests and to spending a grant, so
/// one gateway of a namespace cannot approve another's request, or its own.
#[test]
fn a_gateway_writes_only_its_own_requests_and_only_spends_grants() {
    let env = TestEnv::start_configured(false, |c: &mut Config| c.authorization = true);
    if !env.is_emulated() {
        eprintln!("skipped on a real cluster: impersonated users and cluster-scoped objects");
        return;
    }
    apply_chart(&env, &[]);
    let ns = env.namespace().to_string();
    // What the operator grants each gateway's ServiceAccount.
    let rbac = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: gateways, namespace: {ns}}}\n\
         rules:\n- {{apiGroups: [agentgate.dev], resources: [approvalrequests], verbs: [get, list, watch, create]}}\n\
         - {{apiGroups: [agentgate.dev], resources: [approvalrequests/status], verbs: [get, patch]}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: gateways, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: gateways}}\n\
         subjects:\n- {{kind: ServiceAccount, name: agentgate-main, namespace: {ns}}}\n\
         - {{kind: ServiceAccount, name: agentgate-other, namespace: {ns}}}\n"
    );
    env.kubectl_ok("admin", &["apply", "-f", &env.file("rbac.yaml", &rbac)]);
    let sa = |gw: &str| format!("--as=system:serviceaccount:{ns}:agentgate-{gw}");
    let r1 = approval_request("req1", "ci-agent@example.com", "");
    // Another gateway cannot create a request in main's name; main can.
    let e = env.kubectl_err(
        "admin",
        &[&sa("other"), "create", "-f", &env.file("r1.yaml", &r1)],
    );
    assert!(
        e.contains(
            "a gateway creates ApprovalRequests labelled agentgate.dev/gateway with its own name only"
        ),
        "{e}"
    );
    env.kubectl_ok("admin", &[&sa("main"), "create", "-f", &env.file("r1.yaml", &r1)]);
    let status = |who: &[String], phase: &str| {
        let mut args: Vec<&str> = who.iter().map(String::as_str).collect();
        let body = format!("{{\"status\": {{\"phase\": \"{phase}\"}}}}");
        args.extend([
            "patch",
            "approvalrequest",
            "req1",
            "--subresource=status",
            "--type=merge",
            "-p",
        ]);
        args.push(&body);
        env.kubectl("admin", &args)
    };
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    // A gateway cannot approve, not even its own request.
    let o = status(&[sa("main")], "Approved");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("a gateway only marks an approved request Used"),
        "{}",
        stderr(&o)
    );
    // The operator (here the admin) approves; then only main may spend it.
    let o = status(&[], "Approved");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = status(&[sa("other")], "Used");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("a gateway writes the status of its own ApprovalRequests only"),
        "{}",
        stderr(&o)
    );
    let o = status(&[sa("main")], "Used");
    assert!(o.status.success(), "{}", stderr(&o));
    let phase = env.kubectl_ok(
        "admin",
        &["get", "approvalrequest", "req1", "-o", "jsonpath={.status.phase}"],
    );
    assert_eq!(phase, "Used");
}

#[test]
fn the_approval_admission_policy_lets_approvers_write_only_their_own_decision() {
    let env = TestEnv::start_configured(false, |c: &mut Config| c.authorization = true);
    if !env.is_emulated() {
        eprintln!("skipped on a real cluster: impersonated users and cluster-scoped objects");
        return;
    }
    apply_chart(&env, &["--set", "approvals.approverUsers={carol}"]);
    let ns = env.namespace().to_string();
    let refused = |text: &str| {
        format!(
            "approvalrequests.agentgate.dev \"req1\" is forbidden: ValidatingAdmissionPolicy 'agentgate-approval-decisions' with binding 'agentgate-approval-decisions' denied request: {text}"
        )
    };
    let as_user = |user: &str, groups: &[&str], args: &[&str]| -> Output {
        let mut all = vec![format!("--as={user}")];
        all.extend(groups.iter().map(|g| format!("--as-group={g}")));
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        env.kubectl("admin", &all)
    };
    let ok = |out: Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let err = |out: Output| -> String {
        assert!(
            !out.status.success(),
            "succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let patch = |name: &str, body: &str| {
        vec![
            "patch".to_string(),
            "approvalrequest".into(),
            name.into(),
            "--type".into(),
            "merge".into(),
            "-p".into(),
            body.into(),
        ]
    };
    let approvers = ["agentgate-approvers"];

    // A request is created without decisions; one carrying a decision is refused.
    let with_decision = approval_request(
        "req0",
        "ci-agent@example.com",
        "  decisions: {alice: {state: Approved}}\n",
    );
    let e = env.kubectl_err("admin", &["create", "-f", &env.file("r0.yaml", &with_decision)]);
    assert!(
        e.contains("an ApprovalRequest must be created without spec.decisions"),
        "{e}"
    );
    let r1 = approval_request("req1", "ci-agent@example.com", "");
    env.kubectl_ok("admin", &["create", "-f", &env.file("r1.yaml", &r1)]);
    let r2 = approval_request("req2", "alice", "");
    env.kubectl_ok("admin", &["create", "-f", &env.file("r2.yaml", &r2)]);

    let run_patch = |user: &str, groups: &[&str], name: &str, body: &str| {
        let args = patch(name, body);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        as_user(user, groups, &args)
    };

    // An approver adds their own decision, and may change it.
    ok(run_patch(
        "alice",
        &approvers,
        "req1",
        &decide("alice", "Approved"),
    ));
    ok(run_patch("alice", &approvers, "req1", &decide("alice", "Denied")));
    let got: Value =
        serde_json::from_str(&env.kubectl_ok("admin", &["get", "approvalrequest", "req1", "-o", "json"]))
            .unwrap();
    assert_eq!(
        got["spec"]["decisions"],
        json!({"alice": {"state": "Denied", "reason": "INC-1234"}})
    );

    // Writing someone else's entry is refused, adding it or removing it.
    let e = err(run_patch("alice", &approvers, "req1", &decide("bob", "Approved")));
    assert_eq!(
        e.trim(),
        format!(
            "Error from server (Forbidden): {}",
            refused(
                "an approver may only add or change their own decision: user \"alice\" may write only spec.decisions[\"alice\"]"
            )
        )
    );
    let e = err(run_patch(
        "bob",
        &approvers,
        "req1",
        r#"{"spec":{"decisions":{"alice":null}}}"#,
    ));
    assert!(e.contains("user \"bob\" may write only"), "{e}");
    // Another approver adds theirs beside the first.
    ok(run_patch("bob", &approvers, "req1", &decide("bob", "Approved")));

    // The requester never decides their own request, even as a member of the approver group.
    let e = err(run_patch(
        "alice",
        &approvers,
        "req2",
        &decide("alice", "Approved"),
    ));
    assert!(
        e.contains("the requester of an ApprovalRequest may not decide it"),
        "{e}"
    );

    // Outside the approver group: RBAC refuses (kubectl reads the object before patching)...
    let e = err(run_patch("dave", &[], "req1", &decide("dave", "Approved")));
    assert!(
        e.contains(&format!(
            "User \"dave\" cannot get resource \"approvalrequests\" in API group \"agentgate.dev\" in the namespace \"{ns}\""
        )),
        "{e}"
    );
    // ...and with RBAC granted some other way, the policy still does.
    let binding = "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: mallory-patches}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: agentgate-approver}\nsubjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: mallory}]\n";
    env.kubectl_ok("admin", &["create", "-f", &env.file("mallory.yaml", binding)]);
    let e = err(run_patch("mallory", &[], "req1", &decide("mallory", "Approved")));
    assert!(
        e.contains(&refused(
            "only approvers may decide ApprovalRequests (members of the groups [\"agentgate-approvers\"] or the users [\"carol\"])"
        )),
        "{e}"
    );
    // A listed approver user needs no group.
    ok(run_patch("carol", &[], "req1", &decide("carol", "Approved")));

    // Each rule's own approvers: an approver of the chart who is not one of the rule's is refused,
    // and nobody can add themselves to a request's approvers.
    let r4 = approval_request_for("req4", "ci-agent@example.com", "{users: [carol]}", "");
    env.kubectl_ok("admin", &["create", "-f", &env.file("r4.yaml", &r4)]);
    let e = err(run_patch(
        "alice",
        &approvers,
        "req4",
        &decide("alice", "Approved"),
    ));
    assert!(
        e.contains(
            "user \"alice\" is not an approver of rule \"writes-need-a-human\" of AccessPolicy \"ci-agent-db\", which names the approvers of this request"
        ),
        "{e}"
    );
    let widen = json!({"spec": {"approvers": {"users": ["carol", "alice"]}, "decisions": {"alice": {"state": "Approved"}}}}).to_string();
    let e = err(run_patch("alice", &approvers, "req4", &widen));
    assert!(e.contains("only decisions may change after creation"), "{e}");
    ok(run_patch("carol", &[], "req4", &decide("carol", "Approved")));

    // Approvers cannot touch status (kubectl reads it first), nor create requests.
    let e = err(as_user(
        "alice",
        &approvers,
        &[
            "patch",
            "approvalrequest",
            "req1",
            "--subresource=status",
            "--type",
            "merge",
            "-p",
            r#"{"status":{"phase":"Approved"}}"#,
        ],
    ));
    assert!(
        e.contains("cannot get resource \"approvalrequests/status\""),
        "{e}"
    );
    let e = err(as_user(
        "alice",
        &approvers,
        &[
            "create",
            "-f",
            &env.file("r3.yaml", &approval_request("req3", "x", "")),
        ],
    ));
    assert!(e.contains("cannot create resource \"approvalrequests\""), "{e}");

    // Approvers keep to their decision: the labels the gateway follows its requests by, the
    // finalizers and the owners stay as they were.
    for (what, body) in [
        (
            "labels",
            r#"{"metadata":{"labels":{"agentgate.dev/gateway":null}}}"#,
        ),
        ("labels", r#"{"metadata":{"labels":{"reviewed":"yes"}}}"#),
        (
            "finalizers",
            r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
        ),
        (
            "ownerReferences",
            r#"{"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"ConfigMap","name":"x","uid":"1"}]}}"#,
        ),
    ] {
        let e = err(run_patch("carol", &[], "req1", body));
        assert!(
            e.contains("approvers may change only their decision; an ApprovalRequest's labels, finalizers and ownerReferences stay as the gateway set them"),
            "{what}: {e}"
        );
    }
    // Writes that leave the decisions alone pass for others: labels, and status (not matched).
    env.kubectl_ok("admin", &["label", "approvalrequest", "req1", "reviewed=yes"]);
    env.kubectl_ok(
        "admin",
        &[
            "patch",
            "approvalrequest",
            "req1",
            "--subresource=status",
            "--type",
            "merge",
            "-p",
            r#"{"status":{"phase":"Approved"}}"#,
        ],
    );
    let got: Value =
        serde_json::from_str(&env.kubectl_ok("admin", &["get", "approvalrequest", "req1", "-o", "json"]))
            .unwrap();
    let keys: Vec<&String> = got["spec"]["decisions"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["alice", "bob", "carol"]);
    assert_eq!(got["status"]["phase"], "Approved");

    // Without the policy (approvals.admissionPolicy.enabled=false) RBAC alone lets alice write
    // bob's entry: the policy is what stops it.
    env.kubectl_ok(
        "admin",
        &[
            "delete",
            "validatingadmissionpolicybinding",
            "agentgate-approval-decisions",
        ],
    );
    ok(run_patch("alice", &approvers, "req1", &decide("bob", "Denied")));
}

#[test]
fn kustomize_base_is_the_rendered_chart_and_the_overlay_builds() {
    let base = workspace_root().join("deploy/kustomize/base");
    let committed = std::fs::read_to_string(base.join("agentgate.yaml")).unwrap();
    let rendered = render_text(&[]);
    let header: String = committed
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        committed[header.len()..] == rendered,
        "deploy/kustomize/base/agentgate.yaml is stale; regenerate it with the command in its header"
    );

    let build = |dir: &str| -> Vec<Value> {
        let out = run(Command::new(kubectl_binary())
            .arg("kustomize")
            .arg(workspace_root().join(dir)));
        assert!(
            out.status.success(),
            "kubectl kustomize {dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        documents(&String::from_utf8_lossy(&out.stdout))
    };
    let objects = build("deploy/kustomize/base");
    let namespace = named(&objects, "Namespace", "agentgate-system");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    assert_eq!(objects.len(), render(&[]).len() + 1);
    assert_eq!(of_kind(&objects, "CustomResourceDefinition").len(), 5);

    let overlay = build("deploy/kustomize/overlays/example");
    for kind in [
        "AgentGateway",
        "AgentIdentity",
        "Connection",
        "AccessPolicy",
        "Deployment",
        "CustomResourceDefinition",
    ] {
        assert!(!of_kind(&overlay, kind).is_empty(), "the overlay has no {kind}");
    }
    // The overlay's copies of deploy/examples are the examples.
    let examples = workspace_root().join("deploy/examples");
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let copy = workspace_root()
            .join("deploy/kustomize/overlays/example/examples")
            .join(&name);
        assert!(
            std::fs::read_to_string(&copy).ok() == std::fs::read_to_string(&path).ok(),
            "{} differs from deploy/examples/{name}; copy it again",
            copy.display()
        );
    }
}

/// A JSON value as a Lua table constructor.
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' | '\\' => {
                        out.push('\\');
                        out.push(c);
                    }
                    '\n' => out.push_str("\\n"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\{}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{}] = {}", lua(&json!(k)), lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs an Argo CD health script on `obj` as Argo CD does (a global `obj`, the script returns the
/// health table) and returns (status, message).
fn health(script: &std::path::Path, obj: &Value) -> (String, String) {
    let driver = format!(
        "obj = {}\nlocal hs = dofile({})\nio.write(tostring(hs.status), \"\\n\", tostring(hs.message or \"\"))",
        lua(obj),
        lua(&json!(script.to_str().unwrap()))
    );
    let lua_bin = std::env::var("LUA").unwrap_or_else(|_| "lua5.4".into());
    let out = run(Command::new(&lua_bin).arg("-e").arg(&driver));
    assert!(
        out.status.success(),
        "{lua_bin} failed on {}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').unwrap();
    (status.to_string(), message.to_string())
}

fn object(generation: i64, status: Value) -> Value {
    let mut o = json!({
        "apiVersion": "agentgate.dev/v1alpha1",
        "metadata": {"name": "x", "namespace": "agentgate", "generation": generation},
        "spec": {},
    });
    if !status.is_null() {
        o["status"] = status;
    }
    o
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
        "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

#[test]
fn argocd_health_checks_map_status_to_health() {
    let dir = workspace_root().join("deploy/argocd/health");
    let cm = std::fs::read_to_string(workspace_root().join("deploy/argocd/argocd-cm-patch.yaml")).unwrap();
    let cm: Value = serde_saphyr::from_str(&cm).unwrap();
    for kind in ["AgentGateway", "Connection", "AgentIdentity", "AccessPolicy"] {
        let script = dir.join(format!("agentgate.dev_{kind}/health.lua"));
        // The argocd-cm patch carries the same script.
        let key = format!("resource.customizations.health.agentgate.dev_{kind}");
        assert_eq!(
            cm["data"][&key].as_str(),
            Some(std::fs::read_to_string(&script).unwrap().as_str()),
            "{key} in argocd-cm-patch.yaml differs from {}",
            script.display()
        );
        let check = |obj: Value| health(&script, &obj);
        let ready = condition("Ready", "True", "Compiled", "configuration compiled", 3);
        assert_eq!(
            check(object(3, json!({"observedGeneration": 3, "conditions": [ready]}))),
            ("Healthy".into(), "configuration compiled".into()),
            "{kind}"
        );
        let (status, message) = check(object(3, Value::Null));
        assert_eq!(status, "Progressing", "{kind}");
        assert!(message.contains("status"), "{kind}: {message}");
        // A newer generation than the controller has seen: not healthy yet, whatever it said.
        let (status, message) = check(object(
            4,
            json!({"observedGeneration": 3, "conditions": [condition("Ready", "True", "Compiled", "ok", 3)]}),
        ));
        assert_eq!(status, "Progressing", "{kind}");
        assert!(message.contains("generation 4"), "{kind}: {message}");
        let (status, message) = check(object(
            3,
            json!({"observedGeneration": 3, "conditions": [
                condition("Ready", "False", "Invalid", "spec.rules[2].match.path: must start with /", 3)
            ]}),
        ));
        assert_eq!(
            (status.as_str(), message.as_str()),
            ("Degraded", "spec.rules[2].match.path: must start with /"),
            "{kind}"
        );
        let (status, message) = check(object(
            3,
            json!({"observedGeneration": 3, "conditions": [
                condition("Ready", "True", "Compiled", "ok", 3),
                condition("Invalid", "True", "MissingReference", "Connection \"orders-db\" not found", 3),
            ]}),
        ));
        assert_eq!(
            (status.as_str(), message.as_str()),
            ("Degraded", "Connection \"orders-db\" not found"),
            "{kind}"
        );
        let (status, _) = check(object(
            3,
            json!({"observedGeneration": 3, "conditions": [condition("Ready", "Unknown", "Pending", "", 3)]}),
        ));
        assert_eq!(status, "Progressing", "{kind}");
        let (status, _) = check(object(3, json!({"observedGeneration": 3, "conditions": []})));
        assert_eq!(status, "Progressing", "{kind}");
    }

    let script = dir.join("agentgate.dev_ApprovalRequest/health.lua");
    assert_eq!(
        cm["data"]["resource.customizations.health.agentgate.dev_ApprovalRequest"].as_str(),
        Some(std::fs::read_to_string(&script).unwrap().as_str())
    );
    let request = |status: Value| {
        let mut o = object(1, status);
        o["spec"] = json!({"operation": {"kind": "SQL", "summary": "DELETE FROM orders WHERE id = $1"}});
        health(&script, &o)
    };
    for (phase, expected) in [
        ("Pending", "Progressing"),
        ("Approved", "Healthy"),
        ("Used", "Healthy"),
        ("Denied", "Degraded"),
        ("Expired", "Degraded"),
    ] {
        let (status, message) = request(json!({"phase": phase, "observedGeneration": 1}));
        assert_eq!(status, expected, "{phase}");
        assert!(message.contains(phase), "{phase}: {message}");
    }
    let (status, message) = request(Value::Null);
    assert_eq!(status, "Progressing");
    assert!(message.contains("DELETE FROM orders"), "{message}");
}

#[test]
fn the_argocd_application_installs_the_chart_with_valid_values() {
    let text = std::fs::read_to_string(workspace_root().join("deploy/argocd/application.yaml")).unwrap();
    let app: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(app["kind"], "Application");
    let source = &app["spec"]["source"];
    assert_eq!(source["path"], "charts/agentgate");
    assert!(workspace_root().join("charts/agentgate/Chart.yaml").exists());
    assert_eq!(app["spec"]["destination"]["namespace"], "agentgate-system");
    // The Application's values pass the chart's schema and render.
    let values = serde_json::to_string(&source["helm"]["valuesObject"]).unwrap();
    let objects = render_values(&values, &[]);
    assert!(!of_kind(&objects, "Deployment").is_empty());
}
