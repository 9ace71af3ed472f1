//! The operator end to end against the Kubernetes API emulator (or a real cluster with
//! `AGENTGATE_TEST_KUBECONFIG`): `kubectl apply` of a gateway and its objects → the children and the
//! statuses appear; invalid objects get Invalid conditions naming the field; deleting the gateway
//! cleans up; a second replica waits on the Lease; and the gateway binary in Kubernetes mode loads
//! its configuration through the API and enforces a policy change.

use std::time::{Duration, Instant};

use agentgate_e2e::gateway::{EchoUpstream, OktaSetup, okta_manifests};
use agentgate_e2e::kubernetes::{KubeGateway, Operator};
use agentgate_e2e::oidc::OidcProvider;
use agentgate_e2e::{curl, curl_get, free_port, latency_summary, wait_for};
use agentgate_kube_emulator::harness::TestEnv;

fn start_operator(env: &TestEnv, identity: &str) -> Operator {
    Operator::start(&env.kubeconfig("operator"), env.namespace(), identity)
}

fn jsonpath(env: &TestEnv, kind: &str, name: &str, path: &str) -> String {
    let out = env.kubectl("admin", &["get", kind, name, "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ready(env: &TestEnv, kind: &str, name: &str) -> String {
    jsonpath(
        env,
        kind,
        name,
        "{.status.conditions[?(@.type==\"Ready\")].status}",
    )
}

fn ready_message(env: &TestEnv, kind: &str, name: &str) -> String {
    jsonpath(
        env,
        kind,
        name,
        "{.status.conditions[?(@.type==\"Ready\")].message}",
    )
}

fn eventually(what: &str, op: &Operator, timeout: Duration, mut check: impl FnMut() -> bool) {
    let ok = wait_for(timeout, || check().then_some(()));
    assert!(
        ok.is_some(),
        "timed out waiting for {what}\n{}",
        op.process.output()
    );
}

/// A gateway `main` with two HTTP connections, two identities and two policies, in `ns`.
fn objects(ns: &str) -> String {
    format!(
        r#"apiVersion: agentgate.dev/v1alpha1
kind: AgentGateway
metadata: {{name: main, namespace: {ns}}}
spec:
  replicas: 2
  listeners:
    - {{name: https, protocol: HTTP, port: 8443}}
    - {{name: postgres, protocol: Postgres, port: 15432}}
---
apiVersion: agentgate.dev/v1alpha1
kind: Connection
metadata: {{name: okta-admin, namespace: {ns}}}
spec:
  gatewayRef: {{name: main}}
  type: HTTP
  endpoint: https://example.okta.com
  credentials: {{scheme: SSWS, secretRef: {{name: okta-admin-token, key: token}}}}
  route: {{host: okta.gateway.internal}}
---
apiVersion: agentgate.dev/v1alpha1
kind: Connection
metadata: {{name: github, namespace: {ns}}}
spec:
  gatewayRef: {{name: main}}
  type: HTTP
  endpoint: https://api.github.com
  credentials: {{scheme: Bearer, secretRef: {{name: github-token, key: token}}}}
  route: {{host: github.gateway.internal}}
---
apiVersion: agentgate.dev/v1alpha1
kind: AgentIdentity
metadata: {{name: ci-agent, namespace: {ns}}}
spec:
  issuer: https://example.okta.com/oauth2/default
  audiences: ["api://agentgate"]
  match: {{claims: {{cid: ci-agent}}}}
---
apiVersion: agentgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: okta-read, namespace: {ns}}}
spec:
  subjects: {{identities: [ci-agent]}}
  connections: [okta-admin]
  rules:
    - {{name: read, action: Allow, http: {{methods: [GET], paths: ["/api/v1/users/**"]}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: okta-admin-token, namespace: {ns}, labels: {{agentgate.dev/credential: "true"}}}}
stringData: {{token: okta-canary-token}}
"#
    )
}

#[test]
fn applied_objects_become_a_gateway_deployment_and_statuses() {
    let env = TestEnv::start();
    let ns = env.namespace().to_string();
    let file = env.file("objects.yaml", &objects(&ns));
    env.kubectl_ok("admin", &["apply", "-f", &file]);
    let op = start_operator(&env, "operator-a");

    eventually("the gateway to be Ready", &op, Duration::from_secs(30), || {
        ready(&env, "agentgateway", "main") == "True"
    });
    for (kind, name) in [
        ("serviceaccount", "agentgate-main"),
        ("role", "agentgate-main"),
        ("rolebinding", "agentgate-main"),
        ("secret", "agentgate-main-config"),
        ("deployment", "agentgate-main"),
        ("service", "agentgate-main"),
        ("poddisruptionbudget", "agentgate-main"),
    ] {
        let owner = jsonpath(
            &env,
            kind,
            name,
            "{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
        );
        assert_eq!(owner, "AgentGateway/main", "{kind}/{name}");
    }
    // The Deployment runs the gateway in Kubernetes mode with secure defaults.
    let args = jsonpath(
        &env,
        "deployment",
        "agentgate-main",
        "{.spec.template.spec.containers[0].args}",
    );
    assert!(
        args.contains("--config-secret") && args.contains("agentgate-main-config"),
        "{args}"
    );
    assert_eq!(
        jsonpath(
            &env,
            "deployment",
            "agentgate-main",
            "{.spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem}"
        ),
        "true"
    );
    assert_eq!(
        jsonpath(
            &env,
            "deployment",
            "agentgate-main",
            "{.spec.template.spec.containers[0].image}"
        ),
        "registry.test/agentgate:e2e"
    );
    assert_eq!(
        jsonpath(&env, "service", "agentgate-main", "{.spec.ports[*].port}"),
        "8443 15432"
    );
    // The gateway may read its own Secret only.
    assert_eq!(
        jsonpath(&env, "role", "agentgate-main", "{.rules[0].resourceNames}"),
        "[\"agentgate-main-config\"]"
    );

    // The valid objects are Ready; the connection whose Secret is missing is not, and says why.
    assert_eq!(ready(&env, "connection", "okta-admin"), "True");
    assert_eq!(ready(&env, "agentidentity", "ci-agent"), "True");
    assert_eq!(ready(&env, "accesspolicy", "okta-read"), "True");
    eventually("github to be Invalid", &op, Duration::from_secs(10), || {
        ready(&env, "connection", "github") == "False"
    });
    let message = ready_message(&env, "connection", "github");
    assert!(
        message.contains("spec.credentials.secretRef") && message.contains("github-token"),
        "{message}"
    );
    let observed = jsonpath(&env, "connection", "github", "{.status.observedGeneration}");
    assert_eq!(
        observed,
        jsonpath(&env, "connection", "github", "{.metadata.generation}")
    );
    // The gateway's status names what was left out; its configuration carries the good objects
    // and the referenced Secret, never the missing one.
    assert!(ready_message(&env, "agentgateway", "main").contains("Connection github"));
    let config = jsonpath(
        &env,
        "secret",
        "agentgate-main-config",
        "{.data.manifests\\.yaml\\.gz}",
    );
    let config = agentgate::config::kubernetes::decode_config(&base64_decode(&config)).expect("gzip");
    assert!(
        config.contains("okta-admin") && !config.contains("\"name\":\"github\""),
        "{config}"
    );
    let hash = jsonpath(&env, "agentgateway", "main", "{.status.configHash}");
    assert_eq!(hash.len(), 64);

    // Fixing the reference makes the connection Ready and publishes a new configuration.
    let secret = env.file(
        "github.yaml",
        &format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: github-token, namespace: {ns}}}\nstringData: {{token: gh}}\n"),
    );
    env.kubectl_ok("admin", &["apply", "-f", &secret]);
    // Only a Secret its owner opted in is given to gateways.
    eventually("github to want the label", &op, Duration::from_secs(10), || {
        ready_message(&env, "connection", "github").contains(&format!(
            "Secret {ns}/github-token is not labelled agentgate.dev/credential: \"true\""
        ))
    });
    env.kubectl_ok(
        "admin",
        &["label", "secret", "github-token", "agentgate.dev/credential=true"],
    );
    eventually("github to become Ready", &op, Duration::from_secs(10), || {
        ready(&env, "connection", "github") == "True"
    });
    eventually("a new configuration hash", &op, Duration::from_secs(10), || {
        jsonpath(&env, "agentgateway", "main", "{.status.configHash}") != hash
    });

    // An object the compiler refuses names its field: a policy naming an unknown identity.
    let bad = env.file(
        "bad.yaml",
        &format!(
            r#"apiVersion: agentgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: typo, namespace: {ns}}}
spec:
  subjects: {{identities: [ci-agnet]}}
  connections: [github]
  rules:
    - {{name: read, action: Allow, http: {{methods: [GET], paths: ["/**"]}}}}
"#
        ),
    );
    env.kubectl_ok("admin", &["apply", "-f", &bad]);
    eventually(
        "the typo policy to be Invalid",
        &op,
        Duration::from_secs(10),
        || ready(&env, "accesspolicy", "typo") == "False",
    );
    assert_eq!(
        ready_message(&env, "accesspolicy", "typo"),
        format!("spec.subjects.identities[0]: AgentIdentity {ns}/ci-agnet not found")
    );
    // A Connection naming a gateway that does not exist says so.
    let stray = env.file(
        "stray.yaml",
        &format!(
            r#"apiVersion: agentgate.dev/v1alpha1
kind: Connection
metadata: {{name: stray, namespace: {ns}}}
spec:
  gatewayRef: {{name: mian}}
  type: HTTP
  endpoint: https://example.com
  route: {{host: stray.gateway.internal}}
"#
        ),
    );
    env.kubectl_ok("admin", &["apply", "-f", &stray]);
    eventually(
        "the stray connection to be Invalid",
        &op,
        Duration::from_secs(10),
        || {
            ready_message(&env, "connection", "stray")
                == format!("spec.gatewayRef.name: AgentGateway {ns}/mian not found")
        },
    );
    // One bad object does not stop the others.
    assert_eq!(ready(&env, "accesspolicy", "okta-read"), "True");
    assert_eq!(ready(&env, "agentgateway", "main"), "True");
    // The gateway loads the config Secret's data: an edit of the data alone (the hash
    // annotation kept) is put back.
    let data_path = "{.data.manifests\\.yaml\\.gz}";
    let published = jsonpath(&env, "secret", "agentgate-main-config", data_path);
    assert!(!published.is_empty());
    env.kubectl_ok(
        "admin",
        &[
            "patch",
            "secret",
            "agentgate-main-config",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"manifests.yaml.gz":"H4sIAAAAAAAAAwMAAAAAAAAAAAA="}}"#,
        ],
    );
    eventually(
        "the config data to be repaired",
        &op,
        Duration::from_secs(10),
        || jsonpath(&env, "secret", "agentgate-main-config", data_path) == published,
    );
    // Events tell what happened.
    let events = env.kubectl_ok(
        "admin",
        &["get", "events.events.k8s.io", "-o", "jsonpath={.items[*].reason}"],
    );
    assert!(events.contains("ConfigPublished"), "{events}");
    // Without recording.storage.volume or s3, recordings die with the pod: the operator warns.
    assert!(events.contains("RecordingsNotPersistent"), "{events}");

    // Whoever writes an AgentGateway cannot choose the code that runs with its credentials: an
    // image the operator does not allow is not run, and the gateway says why.
    let image_path = "{.spec.template.spec.containers[0].image}";
    let image = jsonpath(&env, "deployment", "agentgate-main", image_path);
    let patch_gateway = |kind: &str, patch: &str| {
        env.kubectl_ok(
            "admin",
            &["patch", "agentgateway", "main", "--type", kind, "-p", patch],
        );
    };
    patch_gateway("merge", r#"{"spec":{"image":"evil.example/backdoor:1"}}"#);
    eventually("the image to be refused", &op, Duration::from_secs(10), || {
        ready_message(&env, "agentgateway", "main")
            .contains("spec.image: \"evil.example/backdoor:1\" is not allowed")
    });
    assert_eq!(ready(&env, "agentgateway", "main"), "False");
    assert_eq!(jsonpath(&env, "deployment", "agentgate-main", image_path), image);
    // Its configuration is still published to the gateway that runs: a policy written now is
    // in force, whoever holds the AgentGateway back.
    let published = jsonpath(&env, "secret", "agentgate-main-config", data_path);
    env.kubectl_ok(
        "admin",
        &[
            "patch",
            "accesspolicy",
            "okta-read",
            "--type",
            "json",
            "-p",
            r#"[{"op":"add","path":"/spec/rules/-","value":{"name":"no-deletes","action":"Deny","http":{"methods":["DELETE"]}}}]"#,
        ],
    );
    eventually(
        "the new policy to be published all the same",
        &op,
        Duration::from_secs(10),
        || jsonpath(&env, "secret", "agentgate-main-config", data_path) != published,
    );
    assert_eq!(ready(&env, "accesspolicy", "okta-read"), "True");
    assert!(
        ready_message(&env, "agentgateway", "main").contains("keeps its image"),
        "{}",
        ready_message(&env, "agentgateway", "main")
    );
    assert_eq!(jsonpath(&env, "deployment", "agentgate-main", image_path), image);
    patch_gateway("json", r#"[{"op":"remove","path":"/spec/image"}]"#);
    eventually(
        "the gateway to be Ready again",
        &op,
        Duration::from_secs(10),
        || {
            ready(&env, "agentgateway", "main") == "True"
                && ready(&env, "accesspolicy", "okta-read") == "True"
        },
    );

    // Deleting the gateway deletes everything it owns.
    env.kubectl_ok("admin", &["delete", "agentgateway", "main"]);
    eventually("the children to be deleted", &op, Duration::from_secs(30), || {
        [
            "deployment",
            "service",
            "secret",
            "role",
            "rolebinding",
            "serviceaccount",
            "poddisruptionbudget",
        ]
        .iter()
        .all(|kind| {
            let name = if *kind == "secret" {
                "agentgate-main-config"
            } else {
                "agentgate-main"
            };
            !env.kubectl("admin", &["get", kind, name]).status.success()
        })
    });
    // With no gateway left, the namespace's policies say that nothing uses them.
    eventually(
        "the policy to report no gateway",
        &op,
        Duration::from_secs(10),
        || {
            ready_message(&env, "accesspolicy", "okta-read")
                == format!("no AgentGateway in namespace {ns} uses this object")
        },
    );
    let metrics = curl_get(&format!("http://127.0.0.1:{}/metrics", op.metrics)).1;
    assert!(
        metrics.contains("agentgate_operator_reconciles_total{controller=\"gateway\"}"),
        "{metrics}"
    );
}

/// Identities and policies belong to every gateway of their namespace. Two gateways whose
/// verdicts differ (one cannot publish) must not rewrite the objects' conditions in turn: one
/// reports them, the first by name of those that are Ready, and stays the one that does.
#[test]
fn two_gateways_of_a_namespace_do_not_fight_over_shared_conditions() {
    let env = TestEnv::start();
    let ns = env.namespace().to_string();
    let broken = format!(
        "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {{name: a-broken, namespace: {ns}}}\n\
         spec:\n  listeners:\n    - {{name: https, protocol: HTTP, port: 8443, tls: {{secretName: no-such-secret}}}}\n"
    );
    let file = env.file("objects.yaml", &format!("{}---\n{broken}", objects(&ns)));
    env.kubectl_ok("admin", &["apply", "-f", &file]);
    let op = start_operator(&env, "operator-a");
    eventually(
        "main Ready and a-broken not",
        &op,
        Duration::from_secs(30),
        || {
            ready(&env, "agentgateway", "main") == "True"
                && ready(&env, "agentgateway", "a-broken") == "False"
        },
    );
    eventually("the policy to be Ready", &op, Duration::from_secs(30), || {
        ready(&env, "accesspolicy", "okta-read") == "True"
    });
    let version = || jsonpath(&env, "accesspolicy", "okta-read", "{.metadata.resourceVersion}");
    let before = version();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        version(),
        before,
        "the policy's status is being rewritten:\n{}",
        op.process.output()
    );
    assert_eq!(ready(&env, "accesspolicy", "okta-read"), "True");
    assert_eq!(ready(&env, "agentidentity", "ci-agent"), "True");
}

/// An object that already has a child's name and is not the gateway's own is left alone: the
/// gateway says which, and is set up once the object is gone.
#[test]
fn objects_of_a_childs_name_that_the_gateway_does_not_own_are_not_taken_over() {
    let env = TestEnv::start();
    let ns = env.namespace().to_string();
    let theirs = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: agentgate-main, namespace: {ns}}}
rules:
  - {{apiGroups: [""], resources: [configmaps], verbs: [get]}}
"#
    );
    env.kubectl_ok("admin", &["apply", "-f", &env.file("theirs.yaml", &theirs)]);
    env.kubectl_ok(
        "admin",
        &["apply", "-f", &env.file("objects.yaml", &objects(&ns))],
    );
    let op = start_operator(&env, "operator-a");
    eventually(
        "the gateway to name the object",
        &op,
        Duration::from_secs(30),
        || {
            ready(&env, "agentgateway", "main") == "False"
                && ready_message(&env, "agentgateway", "main").contains("Role agentgate-main")
        },
    );
    // Untouched: its rules, no owner, and nothing else of the gateway's was made.
    assert_eq!(
        jsonpath(
            &env,
            "role",
            "agentgate-main",
            "{.rules[0].resources[0]}/{.metadata.ownerReferences}"
        ),
        "configmaps/"
    );
    for (kind, name) in [
        ("deployment", "agentgate-main"),
        ("secret", "agentgate-main-config"),
    ] {
        assert!(
            !env.kubectl("admin", &["get", kind, name]).status.success(),
            "{kind}/{name} was made"
        );
    }
    // Nor is anything made for a gateway whose name its Service cannot take (a dot).
    let dotted = format!(
        "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {{name: team.prod, namespace: {ns}}}\n\
         spec:\n  listeners:\n    - {{name: https, protocol: HTTP, port: 8443}}\n"
    );
    env.kubectl_ok("admin", &["apply", "-f", &env.file("dotted.yaml", &dotted)]);
    eventually(
        "the dotted gateway to say why it is not set up",
        &op,
        Duration::from_secs(30),
        || {
            ready(&env, "agentgateway", "team.prod") == "False"
                && ready_message(&env, "agentgateway", "team.prod").contains("DNS label")
        },
    );
    for kind in ["deployment", "service", "secret"] {
        let listed = env.kubectl("admin", &["get", kind, "-o", "name"]);
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(!listed.contains("team.prod"), "{kind}: {listed}");
    }
    env.kubectl_ok("admin", &["delete", "role", "agentgate-main"]);
    eventually("the gateway to be Ready", &op, Duration::from_secs(40), || {
        ready(&env, "agentgateway", "main") == "True"
    });
    let owner = jsonpath(
        &env,
        "role",
        "agentgate-main",
        "{.metadata.ownerReferences[0].name}",
    );
    assert_eq!(owner, "main");
}

/// A gateway's recording volume is mounted only from a claim its owner labelled
/// `agentgate.dev/recordings: "true"`: whoever may write an AgentGateway cannot have the gateway
/// write to (and prune) another application's volume. A missing or unlabelled claim is named in
/// the gateway's status and no Deployment is made; once the claim is labelled, it is mounted.
#[test]
fn only_a_claim_labelled_for_recordings_is_mounted() {
    let env = TestEnv::start();
    let ns = env.namespace().to_string();
    let manifests = objects(&ns).replace(
        "  replicas: 2\n",
        "  replicas: 2\n  recording: {storage: {volume: {claimName: app-data}}}\n",
    );
    assert!(manifests.contains("claimName: app-data"));
    env.kubectl_ok("admin", &["apply", "-f", &env.file("objects.yaml", &manifests)]);
    let op = start_operator(&env, "operator-a");
    eventually(
        "the gateway to name the missing claim",
        &op,
        Duration::from_secs(30),
        || {
            ready(&env, "agentgateway", "main") == "False"
                && ready_message(&env, "agentgateway", "main")
                    .contains("PersistentVolumeClaim app-data not found")
        },
    );
    let claim = |labels: &str| {
        format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: app-data, namespace: {ns}{labels}}}\n\
             spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}\n"
        )
    };
    env.kubectl_ok("admin", &["apply", "-f", &env.file("claim.yaml", &claim(""))]);
    eventually(
        "the gateway to refuse the unlabelled claim",
        &op,
        Duration::from_secs(30),
        || {
            ready_message(&env, "agentgateway", "main").contains(
                "spec.recording.storage.volume.claimName: PersistentVolumeClaim app-data is not labelled agentgate.dev/recordings",
            )
        },
    );
    assert!(
        !env.kubectl("admin", &["get", "deployment", "agentgate-main"])
            .status
            .success(),
        "a Deployment mounting the unlabelled claim was made"
    );
    env.kubectl_ok(
        "admin",
        &[
            "apply",
            "-f",
            &env.file(
                "claim.yaml",
                &claim(", labels: {agentgate.dev/recordings: \"true\"}"),
            ),
        ],
    );
    eventually("the gateway to be Ready", &op, Duration::from_secs(40), || {
        ready(&env, "agentgateway", "main") == "True"
    });
    assert_eq!(
        jsonpath(
            &env,
            "deployment",
            "agentgate-main",
            "{.spec.template.spec.volumes[?(@.name==\"sessions\")].persistentVolumeClaim.claimName}"
        ),
        "app-data"
    );
    // A listener on loopback could never be reached through the Service: named, not run.
    let loopback = manifests.replace(
        "{name: https, protocol: HTTP, port: 8443}",
        "{name: https, protocol: HTTP, port: 8443, address: 127.0.0.1}",
    );
    assert!(loopback.contains("address: 127.0.0.1"));
    env.kubectl_ok("admin", &["apply", "-f", &env.file("objects.yaml", &loopback)]);
    eventually(
        "the gateway to name the loopback listener",
        &op,
        Duration::from_secs(30),
        || {
            ready(&env, "agentgateway", "main") == "False"
                && ready_message(&env, "agentgateway", "main")
                    .contains("spec.listeners[0].address: Invalid value: \"127.0.0.1\": a loopback address is unreachable")
        },
    );
}

#[test]
fn a_second_replica_waits_on_the_lease_and_takes_over() {
    let env = TestEnv::start();
    let mut first = start_operator(&env, "operator-a");
    eventually("operator-a to lead", &first, Duration::from_secs(20), || {
        first.is_leader()
    });
    let second = start_operator(&env, "operator-b");
    // The standby is healthy and ready, and does not lead while the Lease is renewed.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!second.is_leader(), "two leaders:\n{}", second.process.output());
    assert_eq!(
        curl_get(&format!("http://127.0.0.1:{}/readyz", second.metrics)),
        (200, "standby\n".to_string())
    );
    assert_eq!(
        jsonpath(&env, "lease", "agentgate-operator", "{.spec.holderIdentity}"),
        "operator-a"
    );
    // The leader dies without releasing the Lease: the standby takes over once it expires.
    first.process.signal("KILL", Duration::from_secs(5));
    eventually("operator-b to lead", &second, Duration::from_secs(40), || {
        second.is_leader()
    });
    assert_eq!(
        jsonpath(&env, "lease", "agentgate-operator", "{.spec.holderIdentity}"),
        "operator-b"
    );
}

/// A Lease's `renewTime` is its holder's clock: a holder whose clock runs behind (here, years)
/// still holds the Lease while it renews it. A standby times the Lease by its own clock, from
/// when it last saw the Lease change, as client-go does.
#[test]
fn a_lease_renewed_by_a_holder_with_a_slow_clock_is_not_taken() {
    let env = TestEnv::start();
    let renewed = |second: u32| {
        format!(
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: agentgate-operator}}\n\
             spec: {{holderIdentity: ghost-replica, leaseDurationSeconds: 15, renewTime: \"2020-01-01T00:00:{second:02}.000000Z\"}}\n"
        )
    };
    env.kubectl_ok("admin", &["apply", "-f", &env.file("lease.yaml", &renewed(0))]);
    let standby = start_operator(&env, "operator-a");
    for second in 1..=4 {
        std::thread::sleep(Duration::from_secs(2));
        env.kubectl_ok(
            "admin",
            &["apply", "-f", &env.file("lease.yaml", &renewed(second))],
        );
        assert!(
            !standby.is_leader(),
            "took a Lease being renewed:\n{}",
            standby.process.output()
        );
    }
    assert_eq!(
        jsonpath(&env, "lease", "agentgate-operator", "{.spec.holderIdentity}"),
        "ghost-replica"
    );
    // The holder stops renewing: the Lease is free a lease duration later.
    eventually("operator-a to lead", &standby, Duration::from_secs(40), || {
        standby.is_leader()
    });
}

/// The operator and the gateway binary in Kubernetes mode, with the Okta-like setup of the HTTP
/// tests: an OIDC provider, an echo upstream and one policy allowing `GET /okta/api/v1/users`.
struct KubernetesMode {
    env: TestEnv,
    _idp: OidcProvider,
    _upstream: EchoUpstream,
    _data: tempfile::TempDir,
    op: Operator,
    gateway: KubeGateway,
    auth: String,
    url: String,
}

impl KubernetesMode {
    fn start() -> Self {
        let env = TestEnv::start();
        let ns = env.namespace().to_string();
        let idp = OidcProvider::start();
        let upstream = EchoUpstream::start();
        let port = free_port();
        let data = tempfile::tempdir().expect("temp dir");
        let yaml = okta_manifests(&OktaSetup {
            issuer: &idp.issuer,
            upstream: &upstream.url(),
            upstream_token: "canary-ssws-token",
            require_dpop: false,
        })
        .replace("${LISTEN_PORT}", &port.to_string())
        .replace("${SESSIONS}", &data.path().join("sessions").display().to_string())
        .replace("namespace: e2e", &format!("namespace: {ns}"));
        // The Namespace document is the test environment's business.
        let yaml = yaml
            .split_once("---\n")
            .map(|(_, rest)| rest.to_string())
            .expect("documents");
        let file = env.file("okta.yaml", &yaml);
        env.kubectl_ok("admin", &["apply", "-f", &file]);
        // The gateway runs here, outside a pod, listening on loopback as tests do.
        let op = Operator::start_with(
            &env.kubeconfig("operator"),
            env.namespace(),
            "operator-a",
            &["--allow-loopback-listeners"],
            &[],
        );
        eventually("the gateway configuration", &op, Duration::from_secs(30), || {
            ready(&env, "agentgateway", "gw") == "True"
        });
        let gateway = KubeGateway::start(&env.kubeconfig("gateway"), &ns, "gw", data.path());
        let token = idp.token("ci-agent", "api://agentgate", None)["access_token"]
            .as_str()
            .expect("a token")
            .to_string();
        Self {
            env,
            _idp: idp,
            _upstream: upstream,
            _data: data,
            op,
            gateway,
            auth: format!("Authorization: Bearer {token}"),
            url: format!("http://127.0.0.1:{port}/okta/api/v1/users"),
        }
    }

    fn status(&self) -> (u16, String) {
        let r = curl(&["-H", &self.auth], &self.url);
        (r.status, r.body)
    }

    fn freeze_file(&self) -> String {
        let ns = self.env.namespace();
        self.env.file(
            "freeze.yaml",
            &format!(
                r#"apiVersion: agentgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: freeze, namespace: {ns}}}
spec:
  subjects: {{identities: [ci-agent]}}
  connections: [okta]
  rules:
    - {{name: freeze-users, action: Deny, description: Change freeze., http: {{paths: ["/api/v1/users", "/api/v1/users/**"]}}}}
"#
            ),
        )
    }

    /// Runs `kubectl args` and returns how long until the gateway answers `want`.
    fn time_until(&self, args: &[&str], want: u16) -> Duration {
        let started = Instant::now();
        self.env.kubectl_ok("admin", args);
        let seen = wait_for(Duration::from_secs(10), || {
            (self.status().0 == want).then_some(())
        });
        assert!(
            seen.is_some(),
            "the change was not enforced:\n{}\n{}",
            self.gateway.process.output(),
            self.op.process.output()
        );
        started.elapsed()
    }
}

#[test]
fn the_gateway_in_kubernetes_mode_enforces_a_policy_change() {
    let k = KubernetesMode::start();
    let (status, body) = k.status();
    assert_eq!(status, 200, "{body}\n{}", k.gateway.process.output());
    // Deny what was allowed: the running gateway enforces it without a restart.
    let freeze = k.freeze_file();
    let elapsed = k.time_until(&["apply", "-f", &freeze], 403);
    let (_, body) = k.status();
    assert!(body.contains("freeze-users"), "{body}");
    eprintln!("policy change enforced after {elapsed:?}");
    // And lifting it is enforced too.
    k.time_until(&["delete", "accesspolicy", "freeze"], 200);
}

/// Propagation benchmark (run by `bench/operator.sh`, not in CI): CR change → enforced by the
/// running gateway, over many changes; prints p50, p99 and max.
#[test]
#[ignore = "benchmark: bench/operator.sh runs it"]
fn propagation_latency() {
    let rounds: usize = std::env::var("AGENTGATE_PROPAGATION_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let k = KubernetesMode::start();
    assert_eq!(k.status().0, 200);
    let freeze = k.freeze_file();
    let mut samples = Vec::new();
    for _ in 0..rounds {
        samples.push(k.time_until(&["apply", "-f", &freeze], 403));
        samples.push(k.time_until(&["delete", "accesspolicy", "freeze"], 200));
    }
    println!(
        "propagation: {} changes; {} (includes kubectl's own run time)",
        samples.len(),
        latency_summary(&mut samples)
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .expect("base64")
}

fn approval_request(ns: &str, name: &str, rule: &str, expires_at: &str) -> String {
    format!(
        r#"apiVersion: agentgate.dev/v1alpha1
kind: ApprovalRequest
metadata: {{name: {name}, namespace: {ns}}}
spec:
  identity: ci-agent
  requester: ci-agent-subject
  connection: okta-admin
  operation: {{kind: HTTP, summary: "DELETE /api/v1/users/00u1", fingerprint: "0123abcd"}}
  policy: {{name: okta-admin-writes, rule: {rule}}}
  grant: {{type: Window, duration: 30m}}
  expiresAt: "{expires_at}"
"#
    )
}

#[test]
fn approval_requests_are_decided_with_kubectl_patch() {
    let env = TestEnv::start();
    let ns = env.namespace().to_string();
    let policy = format!(
        r#"apiVersion: agentgate.dev/v1alpha1
kind: AccessPolicy
metadata: {{name: okta-admin-writes, namespace: {ns}}}
spec:
  subjects: {{identities: [ci-agent]}}
  connections: [okta-admin]
  rules:
    - name: two-approvers
      action: RequireApproval
      http: {{methods: [DELETE], paths: ["/api/v1/users/**"]}}
      approval: {{approvers: {{groups: [identity-team]}}, minApprovals: 2, mode: Defer, grant: {{type: Window, duration: 30m}}}}
    - name: one-approver
      action: RequireApproval
      http: {{methods: [POST], paths: ["/api/v1/users/**"]}}
      approval: {{approvers: {{groups: [identity-team]}}, mode: Hold}}
"#
    );
    let file = env.file("objects.yaml", &format!("{}---\n{policy}", objects(&ns)));
    env.kubectl_ok("admin", &["apply", "-f", &file]);
    let op = start_operator(&env, "operator-a");
    let later = agentgate::approval::format_time(agentgate::approval::unix_now() + 600);
    let soon = agentgate::approval::format_time(agentgate::approval::unix_now() + 2);
    let requests = [
        approval_request(&ns, "two", "two-approvers", &later),
        approval_request(&ns, "deny-me", "one-approver", &later),
        approval_request(&ns, "nobody", "one-approver", &soon),
    ]
    .join("---\n");
    let file = env.file("requests.yaml", &requests);
    env.kubectl_ok("admin", &["create", "-f", &file]);
    let phase = |name: &str| jsonpath(&env, "approvalrequest", name, "{.status.phase}");
    let decide = |name: &str, user: &str, state: &str| {
        let patch =
            format!(r#"{{"spec":{{"decisions":{{"{user}":{{"state":"{state}","reason":"INC-42"}}}}}}}}"#);
        env.kubectl_ok(
            "admin",
            &["patch", "approvalrequest", name, "--type", "merge", "-p", &patch],
        );
    };
    eventually("new requests to be Pending", &op, Duration::from_secs(20), || {
        phase("two") == "Pending"
    });

    // The requester's own decision does not count; one approver of two is not enough.
    decide("two", "ci-agent-subject", "Approved");
    decide("two", "alice", "Approved");
    eventually("one counted approval", &op, Duration::from_secs(10), || {
        jsonpath(&env, "approvalrequest", "two", "{.status.approvals}") == "1"
    });
    assert_eq!(phase("two"), "Pending");
    decide("two", "bob", "Approved");
    eventually("two approvals to approve", &op, Duration::from_secs(10), || {
        phase("two") == "Approved"
    });
    let grant_end = jsonpath(&env, "approvalrequest", "two", "{.status.grantExpiresAt}");
    let decided = jsonpath(&env, "approvalrequest", "two", "{.status.decidedAt}");
    let window = agentgate::approval::parse_time(&grant_end).unwrap()
        - agentgate::approval::parse_time(&decided).unwrap();
    assert_eq!(window, 1800, "a 30m window");

    decide("deny-me", "carol", "Denied");
    eventually("a denial", &op, Duration::from_secs(10), || {
        phase("deny-me") == "Denied"
    });

    // Nobody decided before expiresAt.
    eventually("expiry", &op, Duration::from_secs(15), || {
        phase("nobody") == "Expired"
    });
    // The Approved condition says the same, with the generation it was computed from (what
    // `kubectl wait --for=condition=Approved` waits on).
    let condition = |name: &str| {
        jsonpath(
            &env,
            "approvalrequest",
            name,
            "{.status.conditions[?(@.type==\"Approved\")].status}/{.status.conditions[?(@.type==\"Approved\")].reason}/{.status.conditions[?(@.type==\"Approved\")].observedGeneration}",
        )
    };
    let generation = |name: &str| jsonpath(&env, "approvalrequest", name, "{.metadata.generation}");
    for (name, expected) in [
        ("two", "True/Approved"),
        ("deny-me", "False/Denied"),
        ("nobody", "False/Expired"),
    ] {
        assert_eq!(
            condition(name),
            format!("{expected}/{}", generation(name)),
            "{name}"
        );
    }
    // The printer columns show the phase to approvers.
    let table = env.kubectl_ok("admin", &["get", "approvalrequests"]);
    assert!(
        table.contains("Approved") && table.contains("Denied") && table.contains("Expired"),
        "{table}"
    );
}
