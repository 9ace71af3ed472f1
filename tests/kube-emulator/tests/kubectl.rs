//! Conformance tests driven through the real kubectl binary. They run against the emulator, or
//! against a real cluster when `AGENTGATE_TEST_KUBECONFIG` is set (then in a namespace of their own).
//! Expected error texts are what a real API server and kubectl print (see README.md, "Error output").

use std::time::Duration;

use agentgate_kube_emulator::harness::{TestEnv, eventually, repo_root};
use agentgate_kube_emulator::server::Config;

fn identity(name: &str, issuer: &str) -> String {
    format!(
        r#"apiVersion: agentgate.dev/v1alpha1
kind: AgentIdentity
metadata:
  name: {name}
spec:
  provider: Okta
  issuer: {issuer}
  audiences: ["api://agentgate"]
  match:
    claims:
      cid: 0oa1ci-agent
"#
    )
}

#[test]
fn crds_and_examples_apply_and_reapply_unchanged() {
    // The issue's "done when": `kubectl apply -f crds/ && kubectl apply -f deploy/examples/`. The
    // examples live in the `agentgate` namespace, so on a real cluster this test is left out.
    let env = TestEnv::start_with(false);
    if !env.is_emulated() {
        eprintln!("skipped on a real cluster: the examples use the shared `agentgate` namespace");
        return;
    }
    let root = repo_root();
    let crds = root.join("crds").display().to_string();
    let examples = root.join("deploy/examples").display().to_string();
    let out = env.kubectl_ok("admin", &["apply", "-f", &crds]);
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/agentidentities.agentgate.dev created"),
        "{out}"
    );
    let out = env
        .kubectl_command_in("admin", &["apply", "-f", &examples], false)
        .output()
        .expect("kubectl runs");
    let (out, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(err.is_empty(), "{err}");
    for line in [
        "namespace/agentgate created",
        "agentgateway.agentgate.dev/main created",
        "agentidentity.agentgate.dev/ci-agent created",
        "accesspolicy.agentgate.dev/ci-agent-db created",
        "secret/okta-admin-token created",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    // Applying the same files again changes nothing (no-op writes keep their resourceVersion).
    let out = env.kubectl_ok(
        "admin",
        &[
            "apply",
            "-n",
            "agentgate",
            "-f",
            &format!("{examples}/20-identities.yaml"),
        ],
    );
    assert!(
        out.contains("agentidentity.agentgate.dev/ci-agent unchanged"),
        "{out}"
    );
    // Policies get schema defaults inside list items, so kubectl's merge patch always carries those
    // lists ("configured", as on a cluster), but the write is a no-op: the resourceVersion stays.
    let rv = || {
        env.kubectl_ok(
            "admin",
            &[
                "get",
                "accesspolicy",
                "ci-agent-db",
                "-n",
                "agentgate",
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ],
        )
    };
    let before = rv();
    env.kubectl_ok(
        "admin",
        &[
            "apply",
            "-n",
            "agentgate",
            "-f",
            &format!("{examples}/40-policies.yaml"),
        ],
    );
    assert_eq!(rv(), before);
    // Printer columns come from the CRD; defaults from the schema were applied.
    let out = env.kubectl_ok("admin", &["get", "agentidentities", "-n", "agentgate"]);
    assert!(out.starts_with("NAME"), "{out}");
    assert!(
        out.contains("PROVIDER") && out.contains("ci-agent") && out.contains("Okta"),
        "{out}"
    );
    let out = env.kubectl_ok("admin", &["get", "agentgate", "-n", "agentgate", "-o", "name"]);
    assert!(out.contains("connection.agentgate.dev/orders-db"), "{out}");
    let strategy = env.kubectl_ok(
        "admin",
        &[
            "get",
            "accesspolicy",
            "ci-agent-db",
            "-n",
            "agentgate",
            "-o",
            "jsonpath={.spec.masking[0].strategy}",
        ],
    );
    assert!(!strategy.is_empty());
}

#[test]
fn invalid_objects_are_refused_with_the_field_named() {
    let env = TestEnv::start();
    let bad = std::fs::read_to_string(repo_root().join("deploy/examples/40-policies.yaml"))
        .expect("example")
        .replace("  namespace: agentgate\n", "")
        .replacen("action: Allow", "action: Maybe", 1);
    let path = env.file("bad.yaml", &bad);
    let err = env.kubectl_err("admin", &["apply", "-f", &path]);
    // kubectl rewrites Invalid errors with causes on create as `The <kind> "<name>" is invalid: ...`.
    assert!(
        err.contains(
            "The AccessPolicy \"ci-agent-db\" is invalid: spec.rules[3].action: Unsupported value: \"Maybe\": supported values: \"Allow\", \"RequireApproval\", \"Deny\""
        ),
        "{err}"
    );
    // The same on an update (a patch); with several failing objects kubectl prints each server
    // message in full instead (`Error from server (Invalid): error when applying patch: ...`).
    let good = std::fs::read_to_string(repo_root().join("deploy/examples/40-policies.yaml"))
        .expect("example")
        .replace("  namespace: agentgate\n", "");
    env.kubectl_ok("admin", &["apply", "-f", &env.file("good.yaml", &good)]);
    let err = env.kubectl_err("admin", &["apply", "-f", &path]);
    assert!(
        err.contains(
            "The AccessPolicy \"ci-agent-db\" is invalid: spec.rules[3].action: Unsupported value: \"Maybe\""
        ),
        "{err}"
    );
    let both_bad = bad.replace("action: Allow", "action: Maybe");
    let err = env.kubectl_err("admin", &["apply", "-f", &env.file("both.yaml", &both_bad)]);
    assert!(
        err.contains("Error from server (Invalid): error when applying patch"),
        "{err}"
    );
    assert!(
        err.contains("AccessPolicy.agentgate.dev \"ci-agent-okta\" is invalid: spec.rules[0].action: Unsupported value: \"Maybe\""),
        "{err}"
    );
    // A CEL rule (x-kubernetes-validations): an identity needs at least one matcher.
    let no_match = identity("nomatch", "https://example.okta.com/oauth2/default").replace(
        "  match:\n    claims:\n      cid: 0oa1ci-agent\n",
        "  match: {}\n",
    );
    let path = env.file("nomatch.yaml", &no_match);
    let err = env.kubectl_err("admin", &["create", "-f", &path]);
    assert!(
        err.contains("The AgentIdentity \"nomatch\" is invalid: spec.match: Invalid value: \"object\": set at least one matcher"),
        "{err}"
    );
    // Unknown fields are refused.
    let typo = identity("typo", "https://example.okta.com/oauth2/default")
        .replace("  audiences:", "  audience: [x]\n  audiences:");
    let err = env.kubectl_err("admin", &["create", "-f", &env.file("typo.yaml", &typo)]);
    assert!(
        err.contains("is invalid") || err.contains("unknown field"),
        "{err}"
    );
    assert!(err.contains("audience"), "{err}");
}

#[test]
fn get_watch_streams_changes() {
    let env = TestEnv::start();
    let watch = env.kubectl_spawn("admin", &["get", "agentidentities", "-w"]);
    let first = env.file(
        "w1.yaml",
        &identity("watched", "https://a.example.com/oauth2/default"),
    );
    env.kubectl_ok("admin", &["apply", "-f", &first]);
    watch.wait_for("the created identity", |out| {
        out.contains("watched") && out.contains("https://a.example.com")
    });
    env.kubectl_ok(
        "admin",
        &[
            "patch",
            "agentidentity",
            "watched",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"issuer":"https://b.example.com/oauth2/default"}}"#,
        ],
    );
    watch.wait_for("the modified identity", |out| {
        out.contains("https://b.example.com")
    });
    env.kubectl_ok("admin", &["delete", "agentidentity", "watched"]);
    let out = watch.wait_for("the deletion", |out| out.matches("watched").count() >= 3);
    assert!(out.starts_with("NAME"), "{out}");
}

#[test]
fn every_builtin_kind_round_trips() {
    let env = TestEnv::start();
    let ns = env.namespace().to_string();
    let manifests = [
        (
            "configmap/cm",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {a: '1'}\n",
        ),
        (
            "secret/sec",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: sec}\nstringData: {password: hunter2}\n",
        ),
        (
            "serviceaccount/sa",
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa}\n",
        ),
        (
            "service/svc",
            "apiVersion: v1\nkind: Service\nmetadata: {name: svc}\nspec:\n  selector: {app: x}\n  ports: [{port: 80, targetPort: 8080}]\n",
        ),
        (
            "deployment.apps/dep",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: dep}\nspec:\n  selector: {matchLabels: {app: x}}\n  template:\n    metadata: {labels: {app: x}}\n    spec:\n      containers: [{name: c, image: 'nginx:1'}, {name: d, image: 'busybox:1'}]\n",
        ),
        (
            "poddisruptionbudget.policy/pdb",
            "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: pdb}\nspec: {minAvailable: 1, selector: {matchLabels: {app: x}}}\n",
        ),
        (
            "role.rbac.authorization.k8s.io/role",
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: role}\nrules: [{apiGroups: [''], resources: [secrets], verbs: [get]}]\n",
        ),
        (
            "rolebinding.rbac.authorization.k8s.io/rb",
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: rb}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: role}\nsubjects: [{kind: ServiceAccount, name: sa}]\n",
        ),
        (
            "lease.coordination.k8s.io/lease",
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: lease}\nspec: {holderIdentity: a}\n",
        ),
        (
            "event/ev",
            "apiVersion: v1\nkind: Event\nmetadata: {name: ev}\ninvolvedObject: {kind: ConfigMap, name: cm, namespace: NS}\nreason: Test\nmessage: hello\n",
        ),
    ];
    let cluster_scoped = [
        (
            format!("clusterrole.rbac.authorization.k8s.io/{ns}-cr"),
            format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {ns}-cr}}\nrules: [{{apiGroups: [agentgate.dev], resources: ['*'], verbs: [get]}}]\n"
            ),
        ),
        (
            format!("clusterrolebinding.rbac.authorization.k8s.io/{ns}-crb"),
            format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {ns}-crb}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {ns}-cr}}\nsubjects: [{{kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}}]\n"
            ),
        ),
        (
            format!("validatingadmissionpolicy.admissionregistration.k8s.io/{ns}-vap"),
            format!(
                "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata: {{name: {ns}-vap}}\nspec:\n  matchConstraints: {{resourceRules: [{{apiGroups: [agentgate.dev], apiVersions: ['*'], operations: [UPDATE], resources: [approvalrequests]}}]}}\n  validations: [{{expression: 'true'}}]\n"
            ),
        ),
    ];
    let all: Vec<(String, String)> = manifests
        .iter()
        .map(|(n, m)| (n.to_string(), m.replace("NS", &ns)))
        .chain(cluster_scoped)
        .collect();
    for (i, (name, manifest)) in all.iter().enumerate() {
        let path = env.file(&format!("m{i}.yaml"), manifest);
        let out = env.kubectl_ok("admin", &["apply", "-f", &path]);
        assert!(out.contains(&format!("{name} created")), "{out}");
        let out = env.kubectl_ok("admin", &["apply", "-f", &path]);
        // As on a cluster: stringData and the PDB's replace-strategy selector always make a patch.
        let always_patched = name.starts_with("secret") || name.starts_with("poddisruptionbudget");
        assert!(
            out.contains(&format!("{name} unchanged")) || always_patched,
            "{out}"
        );
        env.kubectl_ok("admin", &["get", name, "-o", "json"]);
        // kubectl's default patch type for built-in kinds is strategic merge.
        let out = env.kubectl_ok(
            "admin",
            &[
                "patch",
                name,
                "-p",
                r#"{"metadata":{"labels":{"patched":"yes"}}}"#,
            ],
        );
        assert!(out.contains("patched"), "{out}");
        let label = env.kubectl_ok(
            "admin",
            &["get", name, "-o", "jsonpath={.metadata.labels.patched}"],
        );
        assert_eq!(label, "yes", "{name}");
    }
    // Strategic merge patch merges containers by name.
    env.kubectl_ok(
        "admin",
        &[
            "patch",
            "deployment",
            "dep",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"d","image":"busybox:2"}]}}}}"#,
        ],
    );
    let images = env.kubectl_ok(
        "admin",
        &[
            "get",
            "deployment",
            "dep",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].image}",
        ],
    );
    assert_eq!(images, "nginx:1 busybox:2");
    // JSON patch.
    env.kubectl_ok(
        "admin",
        &[
            "patch",
            "configmap",
            "cm",
            "--type",
            "json",
            "-p",
            r#"[{"op":"add","path":"/data/b","value":"2"}]"#,
        ],
    );
    assert_eq!(
        env.kubectl_ok("admin", &["get", "cm", "cm", "-o", "jsonpath={.data.b}"]),
        "2"
    );
    // Secrets: stringData is stored as base64 data.
    assert_eq!(
        env.kubectl_ok(
            "admin",
            &["get", "secret", "sec", "-o", "jsonpath={.data.password}"]
        ),
        "aHVudGVyMg=="
    );
    // Label selectors.
    let out = env.kubectl_ok(
        "admin",
        &["get", "configmaps,secrets", "-l", "patched=yes", "-o", "name"],
    );
    assert!(
        out.contains("configmap/cm") && out.contains("secret/sec"),
        "{out}"
    );
    for (name, _) in all.iter().rev() {
        let out = env.kubectl_ok("admin", &["delete", name]);
        assert!(out.contains("deleted"), "{out}");
    }
}

#[test]
fn explain_renders_crd_schemas() {
    let env = TestEnv::start();
    let out = env.kubectl_ok("admin", &["explain", "agentidentities.spec.provider"]);
    assert!(out.contains("KIND:       AgentIdentity"), "{out}");
    assert!(out.contains("Okta") && out.contains("GitHubActions"), "{out}");
    let out = env.kubectl_ok("admin", &["explain", "accesspolicy.spec.rules"]);
    assert!(out.contains("action") && out.contains("FIELDS"), "{out}");
}

#[test]
fn server_side_apply_owns_fields_and_reports_conflicts() {
    let env = TestEnv::start();
    let path = env.file(
        "ssa.yaml",
        &identity("ssa", "https://a.example.com/oauth2/default"),
    );
    let out = env.kubectl_ok(
        "operator",
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "operator",
            "-f",
            &path,
        ],
    );
    assert!(
        out.contains("agentidentity.agentgate.dev/ssa serverside-applied"),
        "{out}"
    );
    env.kubectl_ok(
        "approver",
        &[
            "patch",
            "agentidentity",
            "ssa",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"issuer":"https://c.example.com/oauth2/default"}}"#,
        ],
    );
    let err = env.kubectl_err(
        "operator",
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "operator",
            "-f",
            &path,
        ],
    );
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl-patch\""),
        "{err}"
    );
    assert!(err.contains(".spec.issuer"), "{err}");
    env.kubectl_ok(
        "operator",
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "operator",
            "--force-conflicts",
            "-f",
            &path,
        ],
    );
    let issuer = env.kubectl_ok(
        "admin",
        &["get", "agentidentity", "ssa", "-o", "jsonpath={.spec.issuer}"],
    );
    assert_eq!(issuer, "https://a.example.com/oauth2/default");
    let managers = env.kubectl_ok(
        "admin",
        &[
            "get",
            "agentidentity",
            "ssa",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ],
    );
    assert!(managers.contains("operator"), "{managers}");
}

#[test]
fn error_output_matches_the_api_server() {
    let env = TestEnv::start();
    // NotFound, for a core and a custom resource.
    let err = env.kubectl_err("admin", &["get", "secret", "nope"]);
    assert_eq!(
        err.trim(),
        "Error from server (NotFound): secrets \"nope\" not found"
    );
    let err = env.kubectl_err("admin", &["get", "agentidentity", "nope"]);
    assert_eq!(
        err.trim(),
        "Error from server (NotFound): agentidentities.agentgate.dev \"nope\" not found"
    );
    // AlreadyExists.
    let path = env.file(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: twice}\n",
    );
    env.kubectl_ok("admin", &["create", "-f", &path]);
    let err = env.kubectl_err("admin", &["create", "-f", &path]);
    assert!(
        err.contains(&format!("Error from server (AlreadyExists): error when creating \"{path}\": configmaps \"twice\" already exists")),
        "{err}"
    );
    // Strategic merge patch is not defined for custom resources.
    env.kubectl_ok(
        "admin",
        &[
            "apply",
            "-f",
            &env.file("i.yaml", &identity("smp", "https://a.example.com/oauth2/default")),
        ],
    );
    let err = env.kubectl_err(
        "admin",
        &[
            "patch",
            "agentidentity",
            "smp",
            "-p",
            r#"{"spec":{"requireDPoP":true}}"#,
        ],
    );
    assert!(
        err.contains("application/strategic-merge-patch+json is not supported"),
        "{err}"
    );
    // A namespace that does not exist.
    let path = env.file(
        "nons.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    );
    let err = env.kubectl_err("admin", &["create", "-f", &path, "-n", "no-such-namespace"]);
    assert_eq!(
        err.trim(),
        format!(
            "Error from server (NotFound): error when creating \"{path}\": namespaces \"no-such-namespace\" not found"
        )
    );
    // Unauthorized: a token nobody has.
    if let Some(emulator) = env.emulator() {
        let config = std::fs::read_to_string(emulator.kubeconfig("admin")).expect("kubeconfig");
        let bad = config.replace("token-admin", "token-nobody");
        let path = emulator.dir().join("bad.kubeconfig");
        std::fs::write(&path, bad).expect("write");
        let out = std::process::Command::new(agentgate_kube_emulator::harness::kubectl_binary())
            .args(["--kubeconfig", &path.display().to_string(), "get", "configmaps"])
            .output()
            .expect("kubectl runs");
        let err = String::from_utf8_lossy(&out.stderr);
        // kubectl's wording for a 401 (its discovery client reports it before the request itself).
        assert!(
            err.contains("error: You must be logged in to the server"),
            "{err}"
        );
    }
}

#[test]
fn typed_kubectl_commands_and_users() {
    let env = TestEnv::start();
    // These send protobuf bodies (typed Go clients).
    let ns = format!("{}-typed", env.namespace());
    let out = env.kubectl_ok("admin", &["create", "namespace", &ns]);
    assert!(out.contains(&format!("namespace/{ns} created")), "{out}");
    env.kubectl_ok(
        "admin",
        &["create", "configmap", "typed", "-n", &ns, "--from-literal=a=b"],
    );
    env.kubectl_ok(
        "admin",
        &[
            "create",
            "secret",
            "generic",
            "typed",
            "-n",
            &ns,
            "--from-literal=p=q",
        ],
    );
    env.kubectl_ok("admin", &["create", "serviceaccount", "typed", "-n", &ns]);
    assert_eq!(
        env.kubectl_ok(
            "admin",
            &["get", "cm", "typed", "-n", &ns, "-o", "jsonpath={.data.a}"]
        ),
        "b"
    );
    assert_eq!(
        env.kubectl_ok(
            "admin",
            &["get", "secret", "typed", "-n", &ns, "-o", "jsonpath={.data.p}"]
        ),
        "cQ=="
    );
    // Deleting the namespace deletes what is in it.
    env.kubectl_ok("admin", &["delete", "namespace", &ns, "--wait=false"]);
    eventually("the namespace's contents to go", Duration::from_secs(120), || {
        let out = env.kubectl("admin", &["get", "cm", "typed", "-n", &ns]);
        (!out.status.success()).then_some(())
    });
    // Each kubeconfig is its own user (only checkable on the emulator: a real cluster's names differ).
    if env.is_emulated() {
        for user in agentgate_kube_emulator::harness::USERS {
            let out = env.kubectl_ok(
                user,
                &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
            );
            assert_eq!(out, *user);
        }
    }
}

#[test]
fn rbac_limits_users_without_system_masters() {
    let env = TestEnv::start_configured(true, |c: &mut Config| c.authorization = true);
    if !env.is_emulated() {
        eprintln!("skipped on a real cluster: every test user shares one kubeconfig there");
        return;
    }
    let ns = env.namespace().to_string();
    let err = env.kubectl_err("approver", &["get", "secrets"]);
    assert_eq!(
        err.trim(),
        format!(
            "Error from server (Forbidden): secrets is forbidden: User \"approver\" cannot list resource \"secrets\" in API group \"\" in the namespace \"{ns}\""
        )
    );
    // Impersonation needs the `impersonate` verb; system:masters has it.
    let err = env.kubectl_err("approver", &["get", "secrets", "--as=admin"]);
    assert_eq!(
        err.trim(),
        "Error from server (Forbidden): users \"admin\" is forbidden: User \"approver\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
    );
    let review: serde_json::Value = serde_json::from_str(&env.kubectl_ok(
        "admin",
        &["auth", "whoami", "--as=approver", "--as-group=team", "-o", "json"],
    ))
    .expect("JSON");
    assert_eq!(review["status"]["userInfo"]["username"], "approver");
    assert_eq!(
        review["status"]["userInfo"]["groups"],
        serde_json::json!(["team", "system:authenticated"])
    );
    let err = env.kubectl_err("admin", &["get", "secrets", "--as=approver"]);
    assert!(
        err.contains("User \"approver\" cannot list resource \"secrets\""),
        "{err}"
    );
    let rbac = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: approver, namespace: {ns}}}
rules:
  - apiGroups: [agentgate.dev]
    resources: [approvalrequests]
    verbs: [get, list, watch, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: approver, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: approver}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: approver}}]
"#
    );
    env.kubectl_ok("admin", &["apply", "-f", &env.file("rbac.yaml", &rbac)]);
    env.kubectl_ok("approver", &["get", "approvalrequests"]);
    let err = env.kubectl_err("approver", &["delete", "approvalrequest", "x"]);
    assert_eq!(
        err.trim(),
        format!(
            "Error from server (Forbidden): approvalrequests.agentgate.dev \"x\" is forbidden: User \"approver\" cannot delete resource \"approvalrequests\" in API group \"agentgate.dev\" in the namespace \"{ns}\""
        )
    );
    // Still no access elsewhere, and cluster-scoped kinds say so.
    let err = env.kubectl_err("approver", &["get", "namespaces"]);
    assert!(
        err.contains("cannot list resource \"namespaces\" in API group \"\" at the cluster scope"),
        "{err}"
    );
}

#[test]
fn validating_admission_policies_see_the_requesting_user() {
    let env = TestEnv::start();
    if !env.is_emulated() {
        eprintln!("skipped on a real cluster: every test user shares one kubeconfig there");
        return;
    }
    let policy = format!("{}-decisions", env.namespace());
    let manifests = format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {policy}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: [agentgate.dev]
        apiVersions: ["*"]
        operations: [UPDATE]
        resources: [approvalrequests]
  validations:
    - expression: "!has(object.spec.decisions) || object.spec.decisions.all(k, (has(oldObject.spec.decisions) && k in oldObject.spec.decisions) || k == request.userInfo.username)"
      message: an approver may only add their own decision
      reason: Forbidden
    - expression: "object.spec.requester != request.userInfo.username"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {policy}}}
spec: {{policyName: {policy}, validationActions: [Deny]}}
"#
    );
    env.kubectl_ok("admin", &["apply", "-f", &env.file("vap.yaml", &manifests)]);
    let request = |name: &str, requester: &str| {
        format!(
            r#"apiVersion: agentgate.dev/v1alpha1
kind: ApprovalRequest
metadata: {{name: {name}}}
spec:
  identity: ci-agent
  requester: {requester}
  connection: orders-db
  operation: {{kind: SQL, summary: "DELETE FROM orders WHERE id = 1", fingerprint: 0123456789abcdef}}
  policy: {{name: ci-agent-db, rule: writes-need-a-human}}
  grant: {{type: Once}}
  expiresAt: "2030-01-01T00:00:00Z"
"#
        )
    };
    env.kubectl_ok(
        "gateway",
        &[
            "apply",
            "-f",
            &env.file("r1.yaml", &request("req1", "ci-agent@example.com")),
        ],
    );
    env.kubectl_ok(
        "gateway",
        &["apply", "-f", &env.file("r2.yaml", &request("req2", "approver"))],
    );
    let decide = |who: &str| {
        format!(r#"{{"spec":{{"decisions":{{"{who}":{{"state":"Approved","reason":"INC-1234"}}}}}}}}"#)
    };
    fn merge_patch<'a>(name: &'a str, patch: &'a str) -> [&'a str; 7] {
        ["patch", "approvalrequest", name, "--type", "merge", "-p", patch]
    }
    // Deciding as oneself is allowed; deciding for someone else is refused.
    env.kubectl_ok("approver", &merge_patch("req1", &decide("approver")));
    let err = env.kubectl_err("approver", &merge_patch("req1", &decide("alice")));
    assert_eq!(
        err.trim(),
        format!(
            "Error from server (Forbidden): approvalrequests.agentgate.dev \"req1\" is forbidden: ValidatingAdmissionPolicy '{policy}' with binding '{policy}' denied request: an approver may only add their own decision"
        )
    );
    // No self-approval: a validation without message and reason (Invalid, naming the expression).
    let err = env.kubectl_err("approver", &merge_patch("req2", &decide("approver")));
    assert_eq!(
        err.trim(),
        format!(
            "The approvalrequests \"req2\" is invalid: : ValidatingAdmissionPolicy '{policy}' with binding '{policy}' denied request: failed expression: object.spec.requester != request.userInfo.username"
        )
    );
    // The CRD's own transition rule still applies: to the requester too (rewriting it in the
    // same patch would let the requester approve), the expiry and the agent's stated reason.
    for (who, patch) in [
        ("admin", r#"{"spec":{"connection":"other"}}"#.to_string()),
        (
            "approver",
            r#"{"spec":{"requester":"someone-else","decisions":{"approver":{"state":"Approved"}}}}"#
                .to_string(),
        ),
        (
            "admin",
            r#"{"spec":{"expiresAt":"2099-01-01T00:00:00Z"}}"#.to_string(),
        ),
        (
            "admin",
            r#"{"spec":{"reason":"approved by the CISO"}}"#.to_string(),
        ),
    ] {
        let err = env.kubectl_err(who, &merge_patch("req2", &patch));
        assert!(
            err.contains("only decisions may change after creation"),
            "{patch}: {err}"
        );
    }
    // The status too, which every gateway's service account may write: what has ended stays
    // ended, and usedAt and grantExpiresAt are set once.
    let status = |name: &'static str, patch: &str| {
        [
            "patch",
            "approvalrequest",
            name,
            "--subresource=status",
            "--type",
            "merge",
            "-p",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([patch.to_string()])
        .collect::<Vec<_>>()
    };
    let run_ok = |patch: &str| {
        let args = status("req1", patch);
        env.kubectl_ok("admin", &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let run_err = |patch: &str| {
        let args = status("req1", patch);
        env.kubectl_err("admin", &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    run_ok(r#"{"status":{"phase":"Approved","grantExpiresAt":"2099-01-01T00:00:00Z"}}"#);
    let err = run_err(r#"{"status":{"grantExpiresAt":"2099-06-01T00:00:00Z"}}"#);
    assert!(err.contains("grantExpiresAt is set once"), "{err}");
    run_ok(r#"{"status":{"phase":"Used","usedAt":"2098-01-01T00:00:00Z"}}"#);
    for (patch, message) in [
        (r#"{"status":{"phase":"Approved","usedAt":null}}"#, "stays ended"),
        (r#"{"status":{"usedAt":null}}"#, "usedAt is set once"),
        (r#"{"status":{"phase":"Pending"}}"#, "stays ended"),
    ] {
        let err = run_err(patch);
        assert!(err.contains(message), "{patch}: {err}");
    }
    // Decisions stand once acted on: after the request was used, its approver can neither
    // rewrite nor drop their approval, and nobody adds one.
    let stands = "decisions stand once the request is decided";
    for (who, patch) in [
        (
            "approver",
            r#"{"spec":{"decisions":{"approver":{"state":"Denied"}}}}"#,
        ),
        (
            "approver",
            r#"{"spec":{"decisions":{"approver":{"state":"Approved","reason":"INC-9999"}}}}"#,
        ),
        ("approver", r#"{"spec":{"decisions":{"approver":null}}}"#),
        (
            "admin",
            r#"{"spec":{"decisions":{"admin":{"state":"Approved"}}}}"#,
        ),
    ] {
        let err = env.kubectl_err(who, &merge_patch("req1", patch));
        assert!(err.contains(stands), "{patch}: {err}");
    }
    // While a grant stands, an approval may be withdrawn, and not given back; no approval is
    // added to it.
    env.kubectl_ok(
        "gateway",
        &[
            "apply",
            "-f",
            &env.file("r3.yaml", &request("req3", "ci-agent@example.com")),
        ],
    );
    env.kubectl_ok("approver", &merge_patch("req3", &decide("approver")));
    let args = status(
        "req3",
        r#"{"status":{"phase":"Approved","grantExpiresAt":"2099-01-01T00:00:00Z"}}"#,
    );
    env.kubectl_ok("admin", &args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = env.kubectl_err("admin", &merge_patch("req3", &decide("admin")));
    assert!(err.contains(stands), "{err}");
    env.kubectl_ok(
        "approver",
        &merge_patch(
            "req3",
            r#"{"spec":{"decisions":{"approver":{"state":"Denied"}}}}"#,
        ),
    );
    let err = env.kubectl_err("approver", &merge_patch("req3", &decide("approver")));
    assert!(err.contains(stands), "{err}");
}

#[test]
fn plain_http_serves_anonymous_clients_and_stops_when_dropped() {
    let emulator = agentgate_kube_emulator::Emulator::start(Config {
        tls: false,
        allow_anonymous: true,
        ..Config::default()
    })
    .expect("starts");
    assert!(emulator.url().starts_with("http://127.0.0.1:"));
    let kubectl = |args: &[&str]| {
        std::process::Command::new(agentgate_kube_emulator::harness::kubectl_binary())
            .arg("--kubeconfig")
            .arg(emulator.kubeconfig("anonymous"))
            .arg("--cache-dir")
            .arg(emulator.dir().join("cache"))
            .args(args)
            .output()
            .expect("kubectl runs")
    };
    let out = kubectl(&["get", "namespaces", "-o", "name"]);
    let names = String::from_utf8_lossy(&out.stdout);
    assert!(
        names.contains("namespace/default") && names.contains("namespace/kube-system"),
        "{names}"
    );
    let out = kubectl(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "system:anonymous");
    let addr = emulator.url().trim_start_matches("http://").to_string();
    drop(emulator);
    // The runtime's threads wind down in the background.
    eventually("the listener to close", Duration::from_secs(10), || {
        std::net::TcpStream::connect(&addr).is_err().then_some(())
    });
}
