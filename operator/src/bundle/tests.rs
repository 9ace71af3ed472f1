use super::*;
use crate::fixtures;

/// What a gateway in the cluster loads its published configuration with.
fn gateway_options() -> LoadOptions {
    LoadOptions {
        manifests: PathBuf::from(GATEWAY_DATA_DIR),
        secrets_dir: None,
        gateway: None,
        reserved_ports: vec![GATEWAY_ADMIN_PORT],
        ..Default::default()
    }
}

fn key(kind: &'static str, name: &str) -> ObjectKey {
    ObjectKey::new(kind, name)
}

#[test]
fn a_valid_namespace_compiles_and_every_object_is_ready() {
    let ns = fixtures::namespace("team", 2, 2, 3);
    let c = compile(&ns, "main", true);
    let published = c.gateway.expect("compiles");
    assert_eq!(
        (published.connections, published.identities, published.policies),
        (2, 2, 3)
    );
    assert!(
        c.verdicts.values().all(|v| *v == Verdict::Ready),
        "{:?}",
        c.verdicts
    );
    assert_eq!(c.verdicts.len(), 2 + 2 + 3);
    // The published text is what the gateway loads, and it carries the referenced Secrets only.
    assert!(published.manifests.contains("\"kind\":\"Secret\""));
    assert!(!published.manifests.contains("\"status\""));
    assert_eq!(published.hash.len(), 64);
}

#[test]
fn the_same_objects_compile_to_the_same_hash() {
    let ns = fixtures::namespace("team", 2, 2, 3);
    let mut shuffled = ns.clone();
    shuffled.policies.reverse();
    shuffled.connections.reverse();
    assert_eq!(
        compile(&ns, "main", true).gateway.unwrap().hash,
        compile(&shuffled, "main", true).gateway.unwrap().hash
    );
}

#[test]
fn a_secret_without_the_credential_label_is_not_used_and_its_connection_says_why() {
    let mut ns = fixtures::namespace("team", 2, 1, 2);
    for s in ns.secrets.iter_mut() {
        if s.metadata.name.as_deref() == Some("conn-1-token") {
            s.metadata.labels = None;
        }
    }
    let c = compile(&ns, "main", true);
    let published = c.gateway.expect("the others still compile");
    assert_eq!(published.connections, 1);
    assert_eq!(
        c.verdicts[&key("Connection", "conn-1")],
        Verdict::Invalid(
            "spec.credentials.secretRef: Secret team/conn-1-token is not labelled agentgate.dev/credential: \"true\"; gateways are given only Secrets so labelled".into()
        )
    );
    assert!(!published.manifests.contains("conn-1-token"));
    // "false" is not opting in either.
    for s in ns.secrets.iter_mut() {
        if s.metadata.name.as_deref() == Some("conn-1-token") {
            s.metadata.labels =
                Some([(agentgate_crds::CREDENTIAL_LABEL.to_string(), "false".to_string())].into());
        }
    }
    assert!(matches!(
        compile(&ns, "main", true).verdicts[&key("Connection", "conn-1")],
        Verdict::Invalid(_)
    ));
}

/// A Connection writer cannot send a credential bound to origins elsewhere: the annotation is
/// published with the Secret, and the loader refuses the Connection that points away from them.
#[test]
fn a_secret_bound_to_origins_leaves_out_a_connection_pointing_elsewhere() {
    let mut ns = fixtures::namespace("team", 2, 1, 2);
    let endpoint = |ns: &Namespace, name: &str| {
        ns.connections
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .unwrap()
            .spec
            .endpoint
            .clone()
    };
    let conn0 = endpoint(&ns, "conn-0");
    for s in ns.secrets.iter_mut() {
        s.metadata.annotations = Some(
            [(
                agentgate_crds::CREDENTIAL_ENDPOINTS_ANNOTATION.to_string(),
                conn0.clone(),
            )]
            .into(),
        );
    }
    // conn-1's Secret is bound to conn-0's endpoint, not conn-1's.
    assert_ne!(conn0, endpoint(&ns, "conn-1"));
    let c = compile(&ns, "main", true);
    let published = c.gateway.expect("the others still compile");
    assert_eq!(published.connections, 1);
    assert_eq!(c.verdicts[&key("Connection", "conn-0")], Verdict::Ready);
    match &c.verdicts[&key("Connection", "conn-1")] {
        Verdict::Invalid(m) => assert!(
            m.starts_with("spec.endpoint: Invalid value: ")
                && m.contains(
                    "the Secret team/conn-1-token of spec.credentials.secretRef may be sent only to"
                ),
            "{m}"
        ),
        v => panic!("{v:?}"),
    }
    // The binding travels with the Secret, so the gateway enforces it on what it loads.
    assert!(
        published.manifests.contains(&format!(
            "\"annotations\":{{\"agentgate.dev/credential-endpoints\":{}}}",
            serde_json::to_string(&conn0).unwrap()
        )),
        "{}",
        published.manifests
    );
}

#[test]
fn a_missing_secret_leaves_out_only_its_connection() {
    let mut ns = fixtures::namespace("team", 2, 1, 2);
    ns.secrets
        .retain(|s| s.metadata.name.as_deref() != Some("conn-1-token"));
    let c = compile(&ns, "main", true);
    let published = c.gateway.expect("the others still compile");
    assert_eq!(published.connections, 1);
    match &c.verdicts[&key("Connection", "conn-1")] {
        Verdict::Invalid(m) => assert!(
            m.contains("spec.credentials.secretRef") && m.contains("conn-1-token"),
            "{m}"
        ),
        v => panic!("{v:?}"),
    }
    assert_eq!(c.verdicts[&key("Connection", "conn-0")], Verdict::Ready);
    // The allow policy on the missing connection loses its only connection and applies to nothing.
    assert_eq!(c.verdicts[&key("AccessPolicy", "policy-1")], Verdict::Ready);
    assert!(!published.manifests.contains("\"name\":\"conn-1\""));
}

#[test]
fn a_reference_to_an_unknown_identity_names_the_field() {
    let mut ns = fixtures::namespace("team", 1, 1, 1);
    ns.policies
        .push(fixtures::allow_policy("team", "typo", "agent-nope", "conn-0"));
    let c = compile(&ns, "main", true);
    assert!(c.gateway.is_ok());
    match &c.verdicts[&key("AccessPolicy", "typo")] {
        Verdict::Invalid(m) => assert_eq!(
            m,
            "spec.subjects.identities[0]: AgentIdentity team/agent-nope not found"
        ),
        v => panic!("{v:?}"),
    }
    assert_eq!(c.verdicts[&key("AccessPolicy", "policy-0")], Verdict::Ready);
}

#[test]
fn an_invalid_restricting_policy_quarantines_its_connections_instead_of_lifting_the_restriction() {
    let mut ns = fixtures::namespace("team", 2, 1, 2);
    // A Deny policy on conn-0 that also names an unknown identity.
    let mut deny = fixtures::deny_policy("team", "no-deletes", "agent-0", "conn-0");
    deny.spec.subjects.identities.push("ghost".into());
    ns.policies.push(deny);
    let c = compile(&ns, "main", true);
    let published = c.gateway.expect("compiles without the quarantined connection");
    assert_eq!(published.connections, 1, "only conn-1 is served");
    assert!(
        matches!(&c.verdicts[&key("AccessPolicy", "no-deletes")], Verdict::Invalid(m) if m.contains("ghost"))
    );
    match &c.verdicts[&key("Connection", "conn-0")] {
        Verdict::Quarantined(m) => assert!(m.contains("AccessPolicy no-deletes"), "{m}"),
        v => panic!("{v:?}"),
    }
    assert_eq!(c.verdicts[&key("Connection", "conn-1")], Verdict::Ready);
}

/// A row cap restricts every Allow that matches the statement, other policies' too: a policy
/// that carries one and turns invalid quarantines its connections rather than lifting the cap.
#[test]
fn an_invalid_policy_with_a_row_cap_quarantines_its_connections() {
    let mut ns = fixtures::namespace("team", 2, 1, 2);
    let mut capped = fixtures::allow_policy("team", "capped", "agent-0", "conn-0");
    capped.spec.subjects.identities.push("ghost".into());
    capped.spec.rules[0].http = None;
    capped.spec.rules[0].sql = Some(agentgate_crds::policy::SqlMatch {
        row_limit: Some(1000),
        ..Default::default()
    });
    ns.policies.push(capped);
    let c = compile(&ns, "main", true);
    match &c.verdicts[&key("Connection", "conn-0")] {
        Verdict::Quarantined(m) => assert!(m.contains("AccessPolicy capped"), "{m}"),
        v => panic!("{v:?}"),
    }
    assert_eq!(c.verdicts[&key("Connection", "conn-1")], Verdict::Ready);
}

#[test]
fn an_invalid_gateway_is_reported_as_the_gateways_own_error() {
    let mut ns = fixtures::namespace("team", 1, 1, 1);
    ns.gateways[0].spec.listeners[0].port = i32::from(GATEWAY_ADMIN_PORT);
    let c = compile(&ns, "main", true);
    let e = c.gateway.expect_err("the listener collides with the admin port");
    assert!(e.contains("spec.listeners[0].port"), "{e}");
}

/// A listener's name is its pod's port name: one that cannot be (too long, so two would share a
/// truncation; no letter; a double hyphen; the admin port's) is the gateway's error, naming it.
#[test]
fn a_listener_name_that_cannot_name_a_port_is_refused() {
    for (name, why) in [
        ("postgres-primary-a", "at most 15 characters"),
        ("5432", "at least one letter"),
        ("pg--main", "no two hyphens in a row"),
        ("admin", "taken by the admin port"),
    ] {
        let mut ns = fixtures::namespace("team", 1, 1, 1);
        ns.gateways[0].spec.listeners[1].name = name.into();
        let e = compile(&ns, "main", true).gateway.expect_err(name);
        assert!(
            e.contains(&format!(
                "spec.listeners[1].name: Invalid value: \"{name}\": in a cluster"
            )) && e.contains(why),
            "{e}"
        );
        // Outside a cluster there is no port to name.
        assert!(compile(&ns, "main", false).gateway.is_ok(), "{name}");
    }
}

#[test]
fn connections_of_other_gateways_are_not_ours_to_report_or_publish() {
    let mut ns = fixtures::namespace("team", 1, 1, 1);
    ns.gateways.push(fixtures::gateway("team", "other"));
    ns.connections
        .push(fixtures::connection("team", "theirs", "other"));
    ns.secrets
        .push(fixtures::secret("team", "theirs-token", "token", "their-secret"));
    let c = compile(&ns, "main", true);
    assert!(c.gateway.is_ok());
    assert!(!c.verdicts.contains_key(&key("Connection", "theirs")));
    // Their credential Secret is not copied into our configuration.
    let published = c.gateway.unwrap().manifests;
    let docs = agentgate::config::manifest::parse_documents(std::path::Path::new("s"), &published).unwrap();
    let secrets: Vec<&str> = docs
        .iter()
        .filter(|d| d.kind() == "Secret")
        .map(|d| d.name())
        .collect();
    assert_eq!(secrets, ["conn-0-token"]);
}

#[test]
fn the_published_configuration_loads_in_the_gateway() {
    let ns = fixtures::namespace("team", 2, 2, 2);
    let published = compile(&ns, "main", true).gateway.unwrap();
    let docs =
        agentgate::config::manifest::parse_documents(std::path::Path::new("secret"), &published.manifests)
            .expect("parses as YAML");
    let config = compile_manifests(docs, &gateway_options()).expect("the gateway accepts it");
    assert_eq!(config.connections.len(), 2);
}

/// A left-out identity stays as a suspended stand-in with its matchers: dropped, its tokens
/// would match only an identity it overlaps, which would take them over.
#[test]
fn a_left_out_identity_stands_in_suspended() {
    let mut ns = fixtures::namespace("team", 1, 2, 2);
    // Its keys differ from the other identity's of its issuer: refused.
    ns.identities[1].spec.keys = Some(
        serde_json::from_value(serde_json::json!({"jwksUri": "https://elsewhere.example/keys"})).unwrap(),
    );
    let c = compile(&ns, "main", true);
    assert!(
        matches!(c.verdicts.get(&key("AgentIdentity", "agent-1")), Some(Verdict::Invalid(m)) if m.contains("spec.keys")),
        "{:?}",
        c.verdicts
    );
    let published = c.gateway.expect("compiles");
    let docs =
        agentgate::config::manifest::parse_documents(std::path::Path::new("secret"), &published.manifests)
            .expect("parses as YAML");
    let stand_in = docs
        .iter()
        .find(|d| d.value["kind"] == "AgentIdentity" && d.value["metadata"]["name"] == "agent-1")
        .expect("the left-out identity stands in");
    assert_eq!(stand_in.value["spec"]["suspend"], true);
    assert_eq!(
        stand_in.value["spec"]["match"],
        serde_json::json!({"claims": {"cid": "agent-1"}})
    );
    assert!(
        stand_in.value["spec"].get("keys").is_none(),
        "the staying identity's keys"
    );
    // The policy naming it is still left out, and the gateway loads the stand-in.
    assert!(!published.manifests.contains("\"policy-1\""));
    let config = compile_manifests(docs, &gateway_options()).expect("the gateway accepts it");
    assert_eq!(config.identities.len(), 2);
    // An identity whose stand-in is refused too is left out bare.
    ns.identities[1].spec.r#match = serde_json::from_value(serde_json::json!({"claims": {}})).unwrap();
    let c = compile(&ns, "main", true);
    let published = c.gateway.expect("compiles");
    assert!(
        !published.manifests.contains("\"agent-1\""),
        "{}",
        published.manifests
    );
}

/// Characters JSON leaves raw and YAML refuses (DEL, C1 controls) or reads as line breaks: a
/// description holding one must not keep every gateway from loading the configuration.
#[test]
fn every_character_a_string_may_hold_is_published_as_the_gateway_reads_it() {
    let mut ns = fixtures::namespace("team", 1, 1, 1);
    // Within a description's 1,024: every control and Latin-1 character, and the rest that matter.
    let every: String = (1u32..=0x2ff)
        .chain([
            0x2028, 0x2029, 0xd7ff, 0xe000, 0xfeff, 0xfffd, 0xfffe, 0xffff, 0x1f600, 0x10ffff,
        ])
        .filter_map(char::from_u32)
        .collect();
    ns.policies[0].spec.rules[0].description = Some(every.clone());
    let published = compile(&ns, "main", true).gateway.expect("compiles");
    let docs =
        agentgate::config::manifest::parse_documents(std::path::Path::new("secret"), &published.manifests)
            .expect("parses as YAML");
    let policy = docs
        .iter()
        .find(|d| d.value["kind"] == "AccessPolicy")
        .expect("the policy is published");
    assert_eq!(policy.value["spec"]["rules"][0]["description"], every);
}

/// Recordings shipped to S3: the credentials Secret travels with the configuration (the gateway
/// reads no Secret of its own), and a missing one keeps the gateway from being configured.
#[test]
fn object_storage_credentials_are_published_with_the_configuration() {
    let mut ns = fixtures::namespace("team", 1, 1, 1);
    ns.gateways[0].spec.recording.storage = Some(
        serde_json::from_value(serde_json::json!({"s3": {
            "bucket": "agentgate-sessions",
            "prefix": "team/main",
            "credentialsSecretRef": {"name": "s3-credentials", "key": "accessKeyId"}
        }}))
        .unwrap(),
    );
    let c = compile(&ns, "main", true);
    let e = c.gateway.expect_err("no credentials Secret yet");
    assert!(
        e.contains("spec.recording.storage.s3.credentialsSecretRef") && e.contains("s3-credentials"),
        "{e}"
    );

    let mut secret = fixtures::secret("team", "s3-credentials", "accessKeyId", "AKIAEXAMPLE");
    secret.data.as_mut().unwrap().insert(
        "secretAccessKey".into(),
        k8s_openapi::ByteString(b"example-secret".to_vec()),
    );
    ns.secrets.push(secret);
    let published = compile(&ns, "main", true).gateway.expect("compiles");
    assert!(published.manifests.contains("\"name\":\"s3-credentials\""));
}

/// Of a Secret, only the keys the configuration looks up are published: a Connection's author
/// cannot get the rest of a Secret into the gateway, nor a Secret named only by a left-out object.
#[test]
fn only_the_secret_keys_in_use_are_published() {
    let mut ns = fixtures::namespace("team", 2, 1, 1);
    for s in ns.secrets.iter_mut() {
        s.data.as_mut().unwrap().insert(
            "unrelated".into(),
            k8s_openapi::ByteString(b"do-not-publish".to_vec()),
        );
    }
    // conn-1 is invalid (its endpoint is not a URL): left out, and its Secret with it.
    ns.connections[1].spec.endpoint = "not a url".into();
    let c = compile(&ns, "main", true);
    assert!(matches!(
        c.verdicts[&key("Connection", "conn-1")],
        Verdict::Invalid(_)
    ));
    let published = c.gateway.expect("compiles");
    assert!(published.manifests.contains("\"name\":\"conn-0-token\""));
    assert!(
        !published.manifests.contains("\"unrelated\""),
        "{}",
        published.manifests
    );
    assert!(
        !published.manifests.contains("conn-1-token"),
        "{}",
        published.manifests
    );
    // What is published compiles on its own, as the gateway compiles it.
    let parsed =
        agentgate::config::manifest::parse_documents(std::path::Path::new("published"), &published.manifests)
            .expect("published manifests parse");
    let options = LoadOptions {
        manifests: PathBuf::from(GATEWAY_DATA_DIR),
        secrets_dir: None,
        gateway: Some("main".into()),
        reserved_ports: vec![GATEWAY_ADMIN_PORT],
        ..Default::default()
    };
    let config = compile_manifests(parsed, &options).expect("the published configuration compiles");
    assert_eq!(config.connections.len(), 1);
}
