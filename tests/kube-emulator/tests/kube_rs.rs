//! Conformance tests driven through kube-rs (`kube::Client` from the per-user kubeconfigs). Like the
//! kubectl tests they also run against a real cluster when `AGENTGATE_TEST_KUBECONFIG` is set.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use kube::{Client, Config, ResourceExt};
use serde_json::json;

use agentgate_crds::AgentIdentity;
use agentgate_kube_emulator::harness::TestEnv;

async fn client(env: &TestEnv, user: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(env.kubeconfig(user)).expect("kubeconfig parses");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

fn api_code(err: &kube::Error) -> u16 {
    match err {
        kube::Error::Api(status) => status.code,
        other => panic!("not an API error: {other}"),
    }
}

fn identity(name: &str) -> AgentIdentity {
    serde_json::from_value(json!({
        "apiVersion": "agentgate.dev/v1alpha1",
        "kind": "AgentIdentity",
        "metadata": {"name": name},
        "spec": {
            "provider": "Okta",
            "issuer": "https://example.okta.com/oauth2/default",
            "audiences": ["api://agentgate"],
            "match": {"claims": {"cid": "0oa1ci-agent"}}
        }
    }))
    .expect("a valid AgentIdentity")
}

fn config_map(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}))
        .expect("cm")
}

/// Waits (with a deadline) for a stream item satisfying `pred`.
async fn next_matching<S, T>(stream: &mut S, what: &str, mut pred: impl FnMut(&T) -> bool) -> T
where
    S: futures_util::Stream<Item = T> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let item = stream
                .next()
                .await
                .unwrap_or_else(|| panic!("stream ended before {what}"));
            if pred(&item) {
                return item;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test]
async fn typed_crud_conflict_generation_and_status_subresource() {
    let env = TestEnv::start();
    let api: Api<AgentIdentity> = Api::namespaced(client(&env, "operator").await, env.namespace());
    let created = api
        .create(&PostParams::default(), &identity("crud"))
        .await
        .expect("create");
    assert_eq!(created.metadata.generation, Some(1));
    // Schema defaults were applied on the way in.
    assert!(!created.spec.algorithms.is_empty());

    // Optimistic concurrency: a replace with a stale resourceVersion is a 409 Conflict.
    let mut changed = created.clone();
    changed.spec.issuer = "https://other.okta.com/oauth2/default".into();
    let replaced = api
        .replace("crud", &PostParams::default(), &changed)
        .await
        .expect("replace");
    assert_eq!(replaced.metadata.generation, Some(2));
    let err = api
        .replace("crud", &PostParams::default(), &changed)
        .await
        .expect_err("stale");
    assert_eq!(api_code(&err), 409);
    if let kube::Error::Api(status) = &err {
        assert_eq!(status.reason, "Conflict");
        assert!(
            status.message.contains("the object has been modified"),
            "{}",
            status.message
        );
    }

    // Status goes through the subresource only, and does not bump the generation.
    let status = json!({"status": {"observedGeneration": 2, "conditions": [{
        "type": "Ready", "status": "True", "reason": "Resolved", "message": "ok",
        "lastTransitionTime": "2026-01-01T00:00:00Z"
    }]}});
    let after = api
        .patch_status("crud", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status");
    assert_eq!(after.metadata.generation, Some(2));
    assert_eq!(after.status.as_ref().and_then(|s| s.observed_generation), Some(2));
    // Writing status through the main resource is ignored; writing spec through status too.
    let ignored = api
        .patch(
            "crud",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"observedGeneration": 9}})),
        )
        .await
        .expect("patch");
    assert_eq!(
        ignored.status.as_ref().and_then(|s| s.observed_generation),
        Some(2)
    );
    let ignored = api
        .patch_status(
            "crud",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"issuer": "https://x.example.com"}})),
        )
        .await
        .expect("patch status");
    assert_eq!(ignored.spec.issuer, "https://other.okta.com/oauth2/default");

    // Validation errors come back as 422 Invalid with causes naming the field.
    let bad_json = json!({"spec": {"provider": "Nope"}});
    let err = api
        .patch("crud", &PatchParams::default(), &Patch::Merge(&bad_json))
        .await
        .expect_err("invalid");
    assert_eq!(api_code(&err), 422);
    if let kube::Error::Api(status) = &err {
        assert!(
            status.message.starts_with(
                "AgentIdentity.agentgate.dev \"crud\" is invalid: spec.provider: Unsupported value: \"Nope\""
            ),
            "{}",
            status.message
        );
    }

    // JSON patch, with a failing test operation refused.
    let patch: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/spec/requireDPoP", "value": true}]))
            .unwrap();
    let patched = api
        .patch("crud", &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .expect("json patch");
    assert!(patched.spec.require_dpop);

    api.delete("crud", &DeleteParams::default())
        .await
        .expect("delete");
    let err = api.get("crud").await.expect_err("gone");
    assert_eq!(api_code(&err), 404);
}

#[tokio::test]
async fn finalizers_and_owner_references() {
    let env = TestEnv::start();
    let api: Api<ConfigMap> = Api::namespaced(client(&env, "operator").await, env.namespace());
    let owner = api
        .create(&PostParams::default(), &config_map("owner", json!({})))
        .await
        .expect("owner");
    let mut dependent = config_map("dependent", json!({}));
    dependent.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.metadata.uid.clone().expect("uid"),
            ..Default::default()
        },
    ]);
    dependent.metadata.finalizers = Some(vec!["agentgate.dev/test".into()]);
    api.create(&PostParams::default(), &dependent)
        .await
        .expect("dependent");

    api.delete("owner", &DeleteParams::default())
        .await
        .expect("delete owner");
    // Background cascade: the dependent is being deleted, held by its finalizer.
    let held = poll_config_map(&api, "dependent", |cm| cm.metadata.deletion_timestamp.is_some()).await;
    assert!(held.metadata.deletion_timestamp.is_some());
    // Removing the finalizer lets it go.
    let release = json!({"metadata": {"finalizers": null}});
    api.patch("dependent", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .expect("release");
    tokio::time::timeout(Duration::from_secs(20), async {
        while api.get_opt("dependent").await.expect("get").is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the dependent goes away");
}

async fn poll_config_map(api: &Api<ConfigMap>, name: &str, pred: impl Fn(&ConfigMap) -> bool) -> ConfigMap {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(cm) = api.get_opt(name).await.expect("get")
                && pred(&cm)
            {
                return cm;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("condition reached in time")
}

#[tokio::test]
async fn watches_resume_bookmark_and_expire() {
    let env = TestEnv::start();
    let api: Api<ConfigMap> = Api::namespaced(client(&env, "gateway").await, env.namespace());
    let list = api.list(&ListParams::default()).await.expect("list");
    let rv = list.metadata.resource_version.clone().expect("rv");

    // A raw watch from the list's resourceVersion sees what happens after it, with bookmarks.
    let params = WatchParams {
        bookmarks: true,
        ..WatchParams::default()
    }
    .labels("app=watched");
    let mut stream = api.watch(&params, &rv).await.expect("watch").boxed();
    api.create(&PostParams::default(), &config_map("other", json!({})))
        .await
        .expect("create");
    api.create(
        &PostParams::default(),
        &config_map("w", json!({"app": "watched"})),
    )
    .await
    .expect("create");
    let added = next_matching(&mut stream, "ADDED w", |e| matches!(e, Ok(WatchEvent::Added(_)))).await;
    if let Ok(WatchEvent::Added(cm)) = added {
        assert_eq!(cm.metadata.name.as_deref(), Some("w"));
    }
    // Relabelling out of the selector is a DELETED for this watcher.
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"labels": {"app": "gone"}}})),
    )
    .await
    .expect("relabel");
    let _ = next_matching(&mut stream, "DELETED w", |e| {
        matches!(e, Ok(WatchEvent::Deleted(_)))
    })
    .await;
    // The emulator sends bookmarks every second; a real API server about once a minute.
    if env.is_emulated() {
        let _ = next_matching(&mut stream, "a bookmark", |e| {
            matches!(e, Ok(WatchEvent::Bookmark(_)))
        })
        .await;
    }

    // The runtime watcher (list + watch, and re-list on errors) sees creations.
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    api.create(&PostParams::default(), &config_map("late", json!({})))
        .await
        .expect("create");
    let _ = next_matching(&mut events, "late applied", |e| {
        // The stream starts (lists) when first polled, so `late` may arrive in the initial list.
        matches!(e, Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) if cm.metadata.name.as_deref() == Some("late"))
    })
    .await;

    // Streaming lists (sendInitialEvents + the initial-events-end bookmark).
    let mut streamed = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let _ = next_matching(&mut streamed, "the initial events' end", |e| {
        matches!(e, Ok(watcher::Event::InitDone))
    })
    .await;
    api.create(&PostParams::default(), &config_map("streamed", json!({})))
        .await
        .expect("create");
    let _ = next_matching(
        &mut streamed,
        "streamed applied",
        |e| matches!(e, Ok(watcher::Event::Apply(cm)) if cm.metadata.name.as_deref() == Some("streamed")),
    )
    .await;

    // A resourceVersion older than the retained history: 410 Gone (as an ERROR event, like etcd
    // compaction on a cluster). Only the emulator can compact on demand.
    if let Some(emulator) = env.emulator() {
        emulator.with_store(|s| s.compact());
        let mut stream = api
            .watch(&WatchParams::default(), &rv)
            .await
            .expect("watch")
            .boxed();
        let err = next_matching(&mut stream, "an ERROR event", |e| {
            matches!(e, Ok(WatchEvent::Error(_)))
        })
        .await;
        if let Ok(WatchEvent::Error(status)) = err {
            assert_eq!(status.code, 410);
            assert!(
                status.message.starts_with("too old resource version"),
                "{}",
                status.message
            );
        }
    }
}

#[tokio::test]
async fn lists_select_and_paginate_and_delete_collections() {
    let env = TestEnv::start();
    let api: Api<ConfigMap> = Api::namespaced(client(&env, "admin").await, env.namespace());
    for i in 0..7 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        api.create(
            &PostParams::default(),
            &config_map(&format!("cm{i}"), json!({"tier": tier, "set": "page"})),
        )
        .await
        .expect("create");
    }
    let mut names = Vec::new();
    let mut params = ListParams::default().labels("set=page").limit(3);
    loop {
        let page = api.list(&params).await.expect("page");
        assert!(page.items.len() <= 3);
        names.extend(page.items.into_iter().filter_map(|c| c.metadata.name));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(names.len(), 7);
    let even = api
        .list(&ListParams::default().labels("tier in (even),set=page"))
        .await
        .expect("list");
    assert_eq!(even.items.len(), 4);
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=cm3"))
        .await
        .expect("list");
    assert_eq!(by_name.items.len(), 1);
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("tier=odd"),
    )
    .await
    .expect("deletecollection");
    let left = api
        .list(&ListParams::default().labels("set=page"))
        .await
        .expect("list");
    assert_eq!(left.items.len(), 4);
}

#[tokio::test]
async fn server_side_apply_managers_and_conflicts() {
    let env = TestEnv::start();
    let operator: Api<ConfigMap> = Api::namespaced(client(&env, "operator").await, env.namespace());
    let admin: Api<ConfigMap> = Api::namespaced(client(&env, "admin").await, env.namespace());
    let desired = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "1", "b": "2"}});
    let applied = operator
        .patch(
            "ssa",
            &PatchParams::apply("agentgate-operator"),
            &Patch::Apply(&desired),
        )
        .await
        .expect("apply creates");
    let managers: Vec<String> = applied
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, ["agentgate-operator"]);
    let theirs =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "9"}});
    let err = admin
        .patch("ssa", &PatchParams::apply("someone-else"), &Patch::Apply(&theirs))
        .await
        .expect_err("conflict");
    assert_eq!(api_code(&err), 409);
    if let kube::Error::Api(status) = &err {
        assert_eq!(
            status.message,
            "Apply failed with 1 conflict: conflict with \"agentgate-operator\" using v1: .data.a"
        );
    }
    let forced = admin
        .patch(
            "ssa",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(&theirs),
        )
        .await
        .expect("forced");
    assert_eq!(
        forced.data.as_ref().and_then(|d| d.get("a")).map(String::as_str),
        Some("9")
    );
    // The operator stops setting b: it is removed (nobody else owns it).
    let fewer = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {}});
    let after = operator
        .patch(
            "ssa",
            &PatchParams::apply("agentgate-operator"),
            &Patch::Apply(&fewer),
        )
        .await
        .expect("apply");
    let data = after.data.unwrap_or_default();
    assert_eq!(data.get("a").map(String::as_str), Some("9"));
    assert!(!data.contains_key("b"));
}

#[tokio::test]
async fn crds_created_at_run_time_are_served_and_removed() {
    let env = TestEnv::start();
    let client = client(&env, "admin").await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let suffix = env.namespace().replace('-', "");
    let group = format!("{suffix}.example.com");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {
            "group": group,
            "scope": "Cluster",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "size": {"type": "integer", "minimum": 1, "default": 3}
                    }}
                }}}
            }]
        }
    }))
    .expect("crd");
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("create CRD");
    let gvk = GroupVersionKind::gvk(&group, "v1", "Widget");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "widgets");
    let widgets: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    // A real cluster establishes the CRD asynchronously.
    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"), "kind": "Widget", "metadata": {"name": "w1"}, "spec": {}
    }))
    .expect("widget");
    let created = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match widgets.create(&PostParams::default(), &widget).await {
                Ok(w) => return w,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("the widget is created");
    assert_eq!(created.data["spec"]["size"], 3, "schema default applied");
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"), "kind": "Widget", "metadata": {"name": "w2"}, "spec": {"size": 0}
    }))
    .expect("widget");
    let err = widgets
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("minimum");
    assert_eq!(api_code(&err), 422);
    if let kube::Error::Api(status) = &err {
        assert!(
            status.message.contains(
                "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"
            ),
            "{}",
            status.message
        );
    }
    crds.delete(&format!("widgets.{group}"), &DeleteParams::default())
        .await
        .expect("delete CRD");
    tokio::time::timeout(Duration::from_secs(60), async {
        while widgets.list(&ListParams::default()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the kind stops being served");
}

#[tokio::test]
async fn users_are_authenticated_by_token() {
    let env = TestEnv::start();
    // Every configured user can talk to the cluster with its own kubeconfig.
    for user in agentgate_kube_emulator::harness::USERS {
        let api: Api<ConfigMap> = Api::namespaced(client(&env, user).await, env.namespace());
        api.list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
    }
    let Some(emulator) = env.emulator() else { return };
    let text = std::fs::read_to_string(emulator.kubeconfig("admin")).expect("kubeconfig");
    let path = emulator.dir().join("wrong.kubeconfig");
    std::fs::write(&path, text.replace("token-admin", "token-wrong")).expect("write");
    let kubeconfig = Kubeconfig::read_from(&path).expect("parses");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    let api: Api<ConfigMap> = Api::namespaced(Client::try_from(config).expect("client"), env.namespace());
    let err = api.list(&ListParams::default()).await.expect_err("unauthorized");
    assert_eq!(api_code(&err), 401);
}

/// What the operator does: server-side apply of every kind it manages (the examples' custom resources,
/// and the Deployment, Service, ServiceAccount, Role, RoleBinding, PodDisruptionBudget and Lease of a
/// gateway), then a patch, a re-apply that changes nothing, and a delete, for each.
#[tokio::test]
async fn every_kind_round_trips_through_server_side_apply() {
    let env = TestEnv::start();
    let client = client(&env, "operator").await;
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let ns = env.namespace().to_string();
    let mut objects: Vec<serde_json::Value> = Vec::new();
    let examples = agentgate_kube_emulator::harness::repo_root().join("deploy/examples");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .expect("examples")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).expect("YAML");
        objects.extend(
            docs.into_iter()
                .filter(|d| d.is_object() && d["kind"] != "Namespace"),
        );
    }
    let gateway_parts = [
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "gw", "labels": {"app": "gw"}}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "gw"}, "spec": {
            "replicas": 2, "selector": {"matchLabels": {"app": "gw"}},
            "template": {"metadata": {"labels": {"app": "gw"}}, "spec": {"serviceAccountName": "gw",
                "containers": [{"name": "gateway", "image": "agentgate:dev", "ports": [{"containerPort": 8443}]}]}}}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gw"}, "spec": {
            "selector": {"app": "gw"}, "ports": [{"name": "https", "port": 443, "targetPort": 8443}]}}),
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "gw"}, "spec": {
            "minAvailable": 1, "selector": {"matchLabels": {"app": "gw"}}}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "gw"}, "rules": [
            {"apiGroups": ["agentgate.dev"], "resources": ["approvalrequests"], "verbs": ["create", "get", "watch"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "gw"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gw"},
            "subjects": [{"kind": "ServiceAccount", "name": "gw", "namespace": ns}]}),
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "gw-leader"},
            "spec": {"holderIdentity": "operator-0", "leaseDurationSeconds": 15}}),
    ];
    objects.extend(gateway_parts);
    assert!(objects.len() >= 15, "{}", objects.len());
    for mut object in objects {
        object["metadata"]["namespace"] = json!(ns);
        let name = object["metadata"]["name"].as_str().expect("name").to_string();
        let (group, version) = match object["apiVersion"].as_str().expect("apiVersion").split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (
                String::new(),
                object["apiVersion"].as_str().unwrap_or_default().to_string(),
            ),
        };
        let kind = object["kind"].as_str().expect("kind").to_string();
        let (resource, _) = discovery
            .resolve_gvk(&GroupVersionKind::gvk(&group, &version, &kind))
            .unwrap_or_else(|| panic!("{kind} is discovered"));
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
        let what = format!("{kind}/{name}");
        let params = PatchParams::apply("agentgate-operator");
        let applied = api
            .patch(&name, &params, &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let rv = applied.metadata.resource_version.clone();
        let again = api
            .patch(&name, &params, &Patch::Apply(&object))
            .await
            .expect("re-apply");
        assert_eq!(
            again.metadata.resource_version, rv,
            "{what}: re-applying the same object is a no-op"
        );
        let managers: Vec<String> = again
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| m.manager)
            .collect();
        assert!(
            managers.contains(&"agentgate-operator".to_string()),
            "{what}: {managers:?}"
        );
        let label = json!({"metadata": {"labels": {"agentgate.dev/touched": "yes"}}});
        let patched = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&label))
            .await
            .expect("patch");
        assert_eq!(
            patched.labels().get("agentgate.dev/touched").map(String::as_str),
            Some("yes"),
            "{what}"
        );
        api.delete(&name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(api.get_opt(&name).await.expect("get").is_none(), "{what} deleted");
    }
}
