//! The state of the emulated cluster: served resource types, objects, the global resourceVersion
//! counter and the bounded event history that watches replay from. All operations run under one
//! mutex held by the server, which makes every write linearizable, as etcd makes them for a cluster.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use agentgate_crds::validation::{FieldError, FieldErrorKind};

use crate::apply;
use crate::patch;
use crate::resources::{self, ResourceType};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;

/// `(group, plural, namespace or "", name)`.
pub type ObjKey = (String, String, String, String);

/// A watch event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Created (or, in a watch, started matching).
    Added,
    /// Changed.
    Modified,
    /// Removed (or, in a watch, stopped matching).
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, kept in the history for watches.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// Group of the object.
    pub group: String,
    /// Plural of the object.
    pub plural: String,
    /// Namespace ("" for cluster-scoped).
    pub namespace: String,
    /// Type.
    pub kind: EventType,
    /// The object after the change (before it, for deletions).
    pub object: Arc<Value>,
    /// The object before the change, so selector watches can tell "stopped matching".
    pub old: Option<Arc<Value>>,
}

/// Per-request options of writes.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// `fieldManager`, defaulted by the server from the User-Agent like the API server does.
    pub field_manager: String,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `force=true` (server-side apply).
    pub force: bool,
    /// The requesting user, for admission policies (`request.userInfo`).
    pub user: String,
    /// Its groups.
    pub groups: Vec<String>,
}

/// Options of deletes (query and `DeleteOptions` body).
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// `propagationPolicy: Orphan` keeps dependents.
    pub orphan: bool,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// The requesting user, for admission policies.
    pub user: String,
    /// Its groups.
    pub groups: Vec<String>,
}

/// Options of lists.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// `limit`.
    pub limit: Option<usize>,
    /// `continue`.
    pub continue_token: Option<String>,
}

impl ListOptions {
    /// Whether an object passes both selectors.
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

/// The emulated cluster.
pub struct Store {
    types: Vec<ResourceType>,
    registry_generation: u64,
    objects: BTreeMap<ObjKey, Value>,
    rv: u64,
    log: VecDeque<Arc<Event>>,
    log_capacity: usize,
    compacted: u64,
    tx: broadcast::Sender<Arc<Event>>,
    seed: u64,
    counter: u64,
}

/// The current time as `metav1.Time` (RFC 3339, seconds).
pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object["metadata"][field].as_str().filter(|s| !s.is_empty())
}

fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"].as_object_mut().expect("made an object above")
}

fn has_finalizers(object: &Value) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

/// Whether anything outside `metadata` and `status` changed (what bumps `metadata.generation`).
fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut m = v.as_object().cloned().unwrap_or_default();
        m.remove("metadata");
        m.remove("status");
        m
    };
    strip(old) != strip(new)
}

/// The object without the fields every write changes, to detect no-op writes.
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    let meta = meta_mut(&mut v);
    meta.remove("resourceVersion");
    meta.remove("managedFields");
    v
}

impl Store {
    /// A cluster with the built-in kinds and the namespaces every cluster has. `history` is how many
    /// events watches can resume from before they get 410 Gone.
    pub fn new(history: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let mut store = Self {
            types: resources::builtins(),
            registry_generation: 1,
            objects: BTreeMap::new(),
            rv: 0,
            log: VecDeque::new(),
            log_capacity: history.max(1),
            compacted: 0,
            tx,
            seed,
            counter: 0,
        };
        let ns = store
            .find("", "v1", "namespaces")
            .expect("namespaces are built in");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            let opts = WriteOptions {
                field_manager: "kube-apiserver".into(),
                ..Default::default()
            };
            store
                .create(&ns, "", object, &opts)
                .expect("built-in namespaces are valid");
        }
        store
    }

    /// The served resource types.
    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    /// Changes whenever the set of served types changes (the OpenAPI hash).
    pub fn registry_generation(&self) -> u64 {
        self.registry_generation
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The stored objects of one resource (any namespace).
    pub fn objects_of<'a>(&'a self, group: &'a str, plural: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(move |(k, _)| k.0 == group && k.1 == plural)
            .map(|(_, v)| v)
    }

    /// The type served at `group/version/plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    fn key(rt: &ResourceType, namespace: &str, name: &str) -> ObjKey {
        let ns = if rt.namespaced { namespace } else { "" };
        (
            rt.group.clone(),
            rt.plural.clone(),
            ns.to_string(),
            name.to_string(),
        )
    }

    fn next_uid(&mut self) -> String {
        self.counter += 1;
        let a = self
            .seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(self.counter);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            (a & 0xfff) as u16,
            (self.counter & 0xfff) as u16,
            self.counter.wrapping_add(self.seed) & 0xffff_ffff_ffff
        )
    }

    /// How an object is returned: with the apiVersion of the version it was asked through.
    fn present(rt: &ResourceType, object: &Value) -> Value {
        let mut out = object.clone();
        out["apiVersion"] = json!(rt.api_version());
        out["kind"] = json!(rt.kind);
        out
    }

    /// Records a change: bumps the resourceVersion, stores (or removes) the object, appends the event.
    fn commit(&mut self, key: &ObjKey, new: Option<Value>, kind: EventType) -> Value {
        self.rv += 1;
        let old = self.objects.get(key).cloned();
        let object = match new {
            Some(mut object) => {
                meta_mut(&mut object).insert("resourceVersion".into(), json!(self.rv.to_string()));
                self.objects.insert(key.clone(), object.clone());
                object
            }
            None => {
                let mut object = self.objects.remove(key).unwrap_or_default();
                meta_mut(&mut object).insert("resourceVersion".into(), json!(self.rv.to_string()));
                object
            }
        };
        let event = Arc::new(Event {
            rv: self.rv,
            group: key.0.clone(),
            plural: key.1.clone(),
            namespace: key.2.clone(),
            kind,
            object: Arc::new(object.clone()),
            old: old.map(Arc::new),
        });
        self.log.push_back(event.clone());
        while self.log.len() > self.log_capacity {
            if let Some(dropped) = self.log.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        // Nobody watching is fine.
        let _ = self.tx.send(event);
        object
    }

    /// Forgets the event history up to now, so watches from older versions get 410 Gone (what etcd
    /// compaction does; tests use it).
    pub fn compact(&mut self) {
        self.log.clear();
        self.compacted = self.rv;
    }

    /// The stored object (and its key) a write is about to change, or NotFound.
    fn existing(&self, rt: &ResourceType, namespace: &str, name: &str) -> Result<(ObjKey, Value), ApiError> {
        let key = Self::key(rt, namespace, name);
        let current = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt.names(), name))?;
        Ok((key, current))
    }

    /// GET of one object.
    pub fn get(&self, rt: &ResourceType, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&Self::key(rt, namespace, name))
            .map(|o| Self::present(rt, o))
            .ok_or_else(|| ApiError::not_found(rt.names(), name))
    }

    /// LIST, in one namespace or (`None`) across all.
    pub fn list(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<Value, ApiError> {
        let mut start: Option<(String, String)> = None;
        if let Some(token) = opts.continue_token.as_deref().filter(|t| !t.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(token)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .ok_or_else(|| ApiError::bad_request("continue key is not valid: illegal base64 data"))?;
            let rv = decoded["rv"].as_u64().unwrap_or(0);
            if rv < self.compacted {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                ));
            }
            start = Some((
                decoded["namespace"].as_str().unwrap_or_default().to_string(),
                decoded["name"].as_str().unwrap_or_default().to_string(),
            ));
        }
        let matching: Vec<(&ObjKey, &Value)> = self
            .objects
            .iter()
            .filter(|(k, _)| k.0 == rt.group && k.1 == rt.plural)
            .filter(|(k, _)| namespace.is_none_or(|ns| !rt.namespaced || k.2 == ns))
            .filter(|(k, _)| start.as_ref().is_none_or(|(ns, name)| (&k.2, &k.3) > (ns, name)))
            .filter(|(_, o)| opts.matches(o))
            .collect();
        let limit = opts.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let page: Vec<Value> = matching
            .iter()
            .take(limit)
            .map(|(_, o)| Self::present(rt, o))
            .collect();
        let mut metadata = json!({"resourceVersion": self.rv.to_string()});
        if matching.len() > page.len() {
            let (last, _) = matching[page.len() - 1];
            let token = json!({"rv": self.rv, "namespace": last.2, "name": last.3});
            metadata["continue"] =
                json!(base64::engine::general_purpose::STANDARD.encode(token.to_string().as_bytes()));
            metadata["remainingItemCount"] = json!(matching.len() - page.len());
        }
        Ok(json!({
            "apiVersion": rt.api_version(),
            "kind": format!("{}List", rt.kind),
            "metadata": metadata,
            "items": page,
        }))
    }

    fn check_kind(rt: &ResourceType, object: &mut Value) -> Result<(), ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request is not a JSON object",
            ));
        }
        let kind = object["kind"].as_str().unwrap_or_default();
        if !kind.is_empty() && kind != rt.kind {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({})",
                object["apiVersion"].as_str().unwrap_or_default(),
                rt.api_version()
            )));
        }
        object["kind"] = json!(rt.kind);
        object["apiVersion"] = json!(rt.api_version());
        meta_mut(object);
        Ok(())
    }

    fn invalid(rt: &ResourceType, name: &str, path: &str, kind: FieldErrorKind, detail: String) -> ApiError {
        ApiError::invalid(
            rt.names(),
            name,
            &[FieldError {
                path: path.into(),
                kind,
                detail,
            }],
        )
    }

    /// Type-specific defaulting and conversion, as the API server's strategies do.
    fn prepare(&mut self, rt: &ResourceType, object: &mut Value) {
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "secrets") => {
                if let Some(string_data) = object.as_object_mut().and_then(|o| o.remove("stringData")) {
                    let data = object["data"].as_object().cloned().unwrap_or_default();
                    let mut data = data;
                    for (k, v) in string_data.as_object().into_iter().flatten() {
                        let text = v.as_str().unwrap_or_default();
                        data.insert(
                            k.clone(),
                            json!(base64::engine::general_purpose::STANDARD.encode(text)),
                        );
                    }
                    object["data"] = Value::Object(data);
                }
                if object["type"].is_null() {
                    object["type"] = json!("Opaque");
                }
            }
            ("", "namespaces") => {
                let name = meta_str(object, "name").unwrap_or_default().to_string();
                let labels = meta_mut(object).entry("labels").or_insert_with(|| json!({}));
                labels["kubernetes.io/metadata.name"] = json!(name);
                let phase = if meta_str(object, "deletionTimestamp").is_some() {
                    "Terminating"
                } else {
                    "Active"
                };
                object["status"] = json!({"phase": phase});
            }
            ("", "services") => {
                if object["spec"]["type"].is_null() {
                    object["spec"]["type"] = json!("ClusterIP");
                }
                if object["spec"]["clusterIP"].is_null() && object["spec"]["type"] != "ExternalName" {
                    self.counter += 1;
                    let n = self.counter % 65000 + 10;
                    object["spec"]["clusterIP"] = json!(format!("10.96.{}.{}", n / 250, n % 250 + 1));
                }
            }
            ("apps", "deployments") if object["spec"]["replicas"].is_null() => {
                object["spec"]["replicas"] = json!(1);
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                let t = now();
                let storage = object["spec"]["versions"]
                    .as_array()
                    .and_then(|vs| vs.iter().find(|v| v["storage"].as_bool() == Some(true)))
                    .and_then(|v| v["name"].as_str())
                    .unwrap_or("v1")
                    .to_string();
                object["status"] = json!({
                    "acceptedNames": object["spec"]["names"].clone(),
                    "storedVersions": [storage],
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "lastTransitionTime": t, "reason": "NoConflicts", "message": "no conflicts found"},
                        {"type": "Established", "status": "True", "lastTransitionTime": t, "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
                    ],
                });
            }
            _ => {}
        }
        if let Some(validator) = &rt.validator {
            *object = validator.apply_defaults(object);
        }
    }

    /// Schema validation of custom resources, and the checks the API server makes on CRDs.
    fn validate(&self, rt: &ResourceType, object: &Value, old: Option<&Value>) -> Result<(), ApiError> {
        let name = meta_str(object, "name").unwrap_or_default();
        if let Some(validator) = &rt.validator {
            let errors = validator.validate(object, old);
            if !errors.is_empty() {
                return Err(ApiError::invalid(rt.names(), name, &errors));
            }
        }
        if rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" {
            let spec = &object["spec"];
            let expected = format!(
                "{}.{}",
                spec["names"]["plural"].as_str().unwrap_or_default(),
                spec["group"].as_str().unwrap_or_default()
            );
            if name != expected {
                return Err(Self::invalid(
                    rt,
                    name,
                    "metadata.name",
                    FieldErrorKind::Invalid,
                    format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
                ));
            }
            let mut errors = Vec::new();
            for (i, version) in spec["versions"].as_array().into_iter().flatten().enumerate() {
                let schema = &version["schema"]["openAPIV3Schema"];
                if schema.is_null() {
                    continue;
                }
                // Any CRD may preserve unknown fields; only the project's own CRDs forbid it (a test).
                for problem in agentgate_crds::structural::check(schema, &[]) {
                    if problem.contains("x-kubernetes-preserve-unknown-fields is only allowed") {
                        continue;
                    }
                    errors.push(FieldError {
                        path: format!("spec.versions[{i}].schema.openAPIV3Schema"),
                        kind: FieldErrorKind::Invalid,
                        detail: format!("Invalid value: \"\": {problem}"),
                    });
                }
            }
            if let Err(problem) = resources::from_crd(object) {
                errors.push(FieldError {
                    path: "spec".into(),
                    kind: FieldErrorKind::Invalid,
                    detail: problem,
                });
            }
            if !errors.is_empty() {
                return Err(ApiError::invalid(rt.names(), name, &errors));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        operation: &str,
        rt: &ResourceType,
        subresource: Option<&str>,
        key: &ObjKey,
        object: Option<&Value>,
        old: Option<&Value>,
        user: (&str, &[String]),
        dry_run: bool,
    ) -> Result<(), ApiError> {
        let admission = crate::admission::Admission {
            operation,
            rt,
            subresource,
            namespace: &key.2,
            name: &key.3,
            object,
            old,
            user: user.0,
            groups: user.1,
            dry_run,
        };
        crate::admission::admit(self, &admission)
    }

    fn namespace_state(&self, namespace: &str) -> Option<bool> {
        self.objects
            .get(&(
                String::new(),
                "namespaces".into(),
                String::new(),
                namespace.into(),
            ))
            .map(|ns| meta_str(ns, "deletionTimestamp").is_some())
    }

    /// POST.
    pub fn create(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        object: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        self.create_inner(rt, namespace, object, opts, true)
    }

    fn create_inner(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        mut object: Value,
        opts: &WriteOptions,
        record_fields: bool,
    ) -> Result<Value, ApiError> {
        Self::check_kind(rt, &mut object)?;
        if rt.namespaced {
            match meta_str(&object, "namespace") {
                Some(ns) if ns != namespace => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    meta_mut(&mut object).insert("namespace".into(), json!(namespace));
                }
            }
        } else {
            meta_mut(&mut object).remove("namespace");
        }
        if meta_str(&object, "name").is_none()
            && let Some(prefix) = meta_str(&object, "generateName").map(String::from)
        {
            let suffix: String = self
                .next_uid()
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(5)
                .collect();
            meta_mut(&mut object).insert("name".into(), json!(format!("{prefix}{suffix}")));
        }
        let Some(name) = meta_str(&object, "name").map(String::from) else {
            return Err(Self::invalid(
                rt,
                "",
                "metadata.name",
                FieldErrorKind::Required,
                "Required value: name or generateName is required".into(),
            ));
        };
        if !is_dns_subdomain(&name) {
            return Err(Self::invalid(
                rt,
                &name,
                "metadata.name",
                FieldErrorKind::Invalid,
                format!(
                    "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                ),
            ));
        }
        if rt.namespaced {
            match self.namespace_state(namespace) {
                None => {
                    let ns_names = crate::status::Names {
                        group: "",
                        plural: "namespaces",
                        kind: "Namespace",
                    };
                    return Err(ApiError::not_found(ns_names, namespace));
                }
                Some(true) => {
                    return Err(ApiError::forbidden(
                        rt.names(),
                        &name,
                        &format!(
                            "unable to create new content in namespace {namespace} because it is being terminated"
                        ),
                    ));
                }
                Some(false) => {}
            }
        }
        let key = Self::key(rt, namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt.names(), &name));
        }
        let uid = self.next_uid();
        let t = now();
        {
            let meta = meta_mut(&mut object);
            meta.insert("uid".into(), json!(uid));
            meta.insert("creationTimestamp".into(), json!(t));
            for field in [
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "resourceVersion",
                "selfLink",
            ] {
                meta.remove(field);
            }
            if rt.generation {
                meta.insert("generation".into(), json!(1));
            } else {
                meta.remove("generation");
            }
        }
        if rt.status_subresource {
            // Status is the controllers' to write, through the subresource.
            object.as_object_mut().expect("checked").remove("status");
        }
        self.prepare(rt, &mut object);
        self.validate(rt, &object, None)?;
        self.admit(
            "CREATE",
            rt,
            None,
            &key,
            Some(&object),
            None,
            (&opts.user, &opts.groups),
            opts.dry_run,
        )?;
        if record_fields {
            meta_mut(&mut object).remove("managedFields");
            apply::record_update(
                &mut object,
                None,
                &opts.field_manager,
                &rt.api_version(),
                None,
                &t,
            );
        }
        if opts.dry_run {
            return Ok(Self::present(rt, &object));
        }
        let stored = self.commit(&key, Some(object), EventType::Added);
        self.after_crd_write(rt, &stored);
        // The garbage collector also deletes a dependent created after all its owners were
        // deleted (a controller's write racing the owner's deletion), as it finds it.
        let refs = stored["metadata"]["ownerReferences"].as_array();
        if refs.is_some_and(|refs| {
            !refs.is_empty()
                && refs.iter().all(|r| {
                    let uid = r["uid"].as_str().unwrap_or_default();
                    !self.objects.values().any(|o| meta_str(o, "uid") == Some(uid))
                })
        }) {
            self.delete_key(&key, false);
        }
        Ok(Self::present(rt, &stored))
    }

    /// (Re)registers the types of a CRD that was written.
    fn after_crd_write(&mut self, rt: &ResourceType, crd: &Value) {
        if !(rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions") {
            return;
        }
        let name = meta_str(crd, "name").unwrap_or_default().to_string();
        if let Ok(types) = resources::from_crd(crd) {
            self.types.retain(|t| t.crd.as_deref() != Some(name.as_str()));
            self.types.extend(types);
            self.registry_generation += 1;
        }
    }

    /// PUT (of the object, or of its `status` subresource).
    pub fn update(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        mut object: Value,
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let (key, current) = self.existing(rt, namespace, name)?;
        Self::check_kind(rt, &mut object)?;
        if let Some(body_name) = meta_str(&object, "name").filter(|n| *n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        match meta_str(&object, "resourceVersion") {
            None => {
                return Err(Self::invalid(
                    rt,
                    name,
                    "metadata.resourceVersion",
                    FieldErrorKind::Invalid,
                    "Invalid value: 0x0: must be specified for an update".into(),
                ));
            }
            Some(rv) if Some(rv) != meta_str(&current, "resourceVersion") => {
                return Err(ApiError::conflict(rt.names(), name));
            }
            Some(_) => {}
        }
        self.finish_update(rt, &key, current, object, subresource, opts, true)
    }

    /// The common tail of PUT, PATCH and apply: keeps what clients cannot change, isolates spec and
    /// status, validates, bumps the generation, records field managers and stores.
    #[allow(clippy::too_many_arguments)]
    fn finish_update(
        &mut self,
        rt: &ResourceType,
        key: &ObjKey,
        current: Value,
        mut new: Value,
        subresource: Option<&str>,
        opts: &WriteOptions,
        record_fields: bool,
    ) -> Result<Value, ApiError> {
        Self::check_kind(rt, &mut new)?;
        // A uid in the new object must be the stored one (metadata.uid is immutable): clients
        // send it so that a write meant for a deleted object never lands on its successor.
        if let (Some(sent), Some(stored)) = (meta_str(&new, "uid"), meta_str(&current, "uid"))
            && sent != stored
        {
            let name = meta_str(&current, "name").unwrap_or_default();
            return Err(Self::invalid(
                rt,
                name,
                "metadata.uid",
                FieldErrorKind::Invalid,
                format!("Invalid value: \"{sent}\": field is immutable"),
            ));
        }
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
            "name",
        ] {
            match current["metadata"].get(field) {
                Some(v) => {
                    meta_mut(&mut new).insert(field.into(), v.clone());
                }
                None => {
                    meta_mut(&mut new).remove(field);
                }
            }
        }
        if subresource == Some("status") {
            let status = new.get("status").cloned();
            let managed = new["metadata"].get("managedFields").cloned();
            new = current.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    new.as_object_mut().expect("objects").remove("status");
                }
            }
            if let Some(m) = managed {
                meta_mut(&mut new).insert("managedFields".into(), m);
            }
        } else if rt.status_subresource {
            match current.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().expect("objects").remove("status");
                }
            }
        }
        self.prepare(rt, &mut new);
        self.validate(rt, &new, Some(&current))?;
        self.admit(
            "UPDATE",
            rt,
            subresource,
            key,
            Some(&new),
            Some(&current),
            (&opts.user, &opts.groups),
            opts.dry_run,
        )?;
        if rt.generation && spec_changed(&current, &new) {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            meta_mut(&mut new).insert("generation".into(), json!(generation));
        }
        if record_fields {
            apply::record_update(
                &mut new,
                Some(&current),
                &opts.field_manager,
                &rt.api_version(),
                subresource,
                &now(),
            );
        }
        if comparable(&new) == comparable(&current) {
            // A no-op write changes nothing, not even the resourceVersion (kubectl's "unchanged").
            return Ok(Self::present(rt, &current));
        }
        if opts.dry_run {
            return Ok(Self::present(rt, &new));
        }
        if meta_str(&new, "deletionTimestamp").is_some() && !has_finalizers(&new) {
            self.objects.insert(key.clone(), new.clone());
            if rt.group.is_empty() && rt.plural == "namespaces" {
                let stored = self.commit(key, Some(new), EventType::Modified);
                self.finish_namespace(&key.3);
                return Ok(Self::present(rt, &stored));
            }
            let removed = self.remove(key, false);
            return Ok(Self::present(rt, &removed));
        }
        let stored = self.commit(key, Some(new), EventType::Modified);
        self.after_crd_write(rt, &stored);
        Ok(Self::present(rt, &stored))
    }

    /// PATCH; `Ok((object, created))` (only server-side apply creates).
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        content_type: &str,
        body: &[u8],
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<(Value, bool), ApiError> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        if media == "application/apply-patch+yaml" || media == "application/apply-patch+cbor" {
            return self.server_side_apply(rt, namespace, name, body, subresource, opts);
        }
        let (key, current) = self.existing(rt, namespace, name)?;
        let patch: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        let new = match media {
            "application/json-patch+json" => {
                patch::json_patch(&current, &patch).map_err(ApiError::unprocessable)?
            }
            "application/merge-patch+json" => patch::merge_patch(&current, &patch),
            "application/strategic-merge-patch+json" if !rt.is_custom() => {
                patch::strategic_merge_patch(&current, &patch)
            }
            _ => {
                let accepted = if rt.is_custom() {
                    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
                } else {
                    "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
                };
                return Err(ApiError::unsupported_media_type(accepted));
            }
        };
        if meta_str(&new, "resourceVersion") != meta_str(&current, "resourceVersion")
            && meta_str(&new, "resourceVersion").is_some()
        {
            return Err(ApiError::conflict(rt.names(), name));
        }
        let mut new = new;
        meta_mut(&mut new).insert(
            "managedFields".into(),
            current["metadata"]["managedFields"].clone(),
        );
        self.finish_update(rt, &key, current, new, subresource, opts, true)
            .map(|o| (o, false))
    }

    fn server_side_apply(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        body: &[u8],
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<(Value, bool), ApiError> {
        let text =
            std::str::from_utf8(body).map_err(|_| ApiError::bad_request("apply patch is not UTF-8"))?;
        let mut applied: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => serde_saphyr::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
        };
        if opts.field_manager.is_empty() {
            return Err(Self::invalid(
                rt,
                name,
                "metadata.managedFields.fieldManager",
                FieldErrorKind::Required,
                "Required value: is required for apply patch".into(),
            ));
        }
        if applied["apiVersion"].as_str() != Some(rt.api_version().as_str())
            || applied["kind"].as_str() != Some(rt.kind.as_str())
        {
            return Err(ApiError::bad_request(format!(
                "apply patches must set apiVersion {} and kind {}",
                rt.api_version(),
                rt.kind
            )));
        }
        if let Some(body_name) = meta_str(&applied, "name").filter(|n| *n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        meta_mut(&mut applied).insert("name".into(), json!(name));
        let key = Self::key(rt, namespace, name);
        let current = self.objects.get(&key).cloned();
        let t = now();
        let merged = apply::apply(
            current.as_ref(),
            &applied,
            &opts.field_manager,
            opts.force,
            subresource,
            &t,
        )
        .map_err(|conflicts| {
            let causes = conflicts
                .iter()
                .map(|c| {
                    json!({
                        "reason": "FieldManagerConflict",
                        "message": format!("conflict with \"{}\" using {}", c.manager, c.api_version),
                        "field": c.field,
                    })
                })
                .collect();
            ApiError::apply_conflict(apply::conflict_message(&conflicts), causes)
        })?;
        match current {
            None if subresource.is_some() => Err(ApiError::not_found(rt.names(), name)),
            None => self
                .create_inner(rt, namespace, merged, opts, false)
                .map(|o| (o, true)),
            Some(current) => self
                .finish_update(rt, &key, current, merged, subresource, opts, false)
                .map(|o| (o, false)),
        }
    }

    /// DELETE of one object.
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let (key, current) = self.existing(rt, namespace, name)?;
        if let Some(uid) = &opts.uid {
            let actual = meta_str(&current, "uid").unwrap_or_default();
            if uid != actual {
                return Err(ApiError::conflict_with(
                    rt.names(),
                    name,
                    &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"),
                ));
            }
        }
        if let Some(rv) = &opts.resource_version {
            let actual = meta_str(&current, "resourceVersion").unwrap_or_default();
            if rv != actual {
                return Err(ApiError::conflict_with(
                    rt.names(),
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}"
                    ),
                ));
            }
        }
        self.admit(
            "DELETE",
            rt,
            None,
            &key,
            None,
            Some(&current),
            (&opts.user, &opts.groups),
            opts.dry_run,
        )?;
        if opts.dry_run {
            return Ok(Self::present(rt, &current));
        }
        let out = self.delete_key(&key, opts.orphan);
        Ok(Self::present(rt, &out))
    }

    /// DELETE of a collection: every matching object, as if deleted one by one.
    pub fn delete_collection(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        list: &ListOptions,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let all = ListOptions {
            limit: None,
            continue_token: None,
            ..list.clone()
        };
        let listed = self.list(rt, namespace, &all)?;
        let mut deleted = Vec::new();
        for item in listed["items"].as_array().into_iter().flatten() {
            let ns = meta_str(item, "namespace").unwrap_or_default();
            let name = meta_str(item, "name").unwrap_or_default();
            if let Ok(out) = self.delete(rt, ns, name, opts) {
                deleted.push(out);
            }
        }
        Ok(json!({
            "apiVersion": rt.api_version(),
            "kind": format!("{}List", rt.kind),
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": deleted,
        }))
    }

    /// Deletes what a key names: finalizers defer it (deletionTimestamp), namespaces empty first.
    fn delete_key(&mut self, key: &ObjKey, orphan: bool) -> Value {
        let Some(current) = self.objects.get(key).cloned() else {
            return Value::Null;
        };
        let is_namespace = key.0.is_empty() && key.1 == "namespaces";
        if is_namespace || has_finalizers(&current) {
            if meta_str(&current, "deletionTimestamp").is_some() {
                return current;
            }
            let mut marked = current;
            meta_mut(&mut marked).insert("deletionTimestamp".into(), json!(now()));
            meta_mut(&mut marked).insert("deletionGracePeriodSeconds".into(), json!(0));
            if is_namespace {
                marked["status"] = json!({"phase": "Terminating"});
            }
            let stored = self.commit(key, Some(marked), EventType::Modified);
            if is_namespace {
                let contents: Vec<ObjKey> = self
                    .objects
                    .keys()
                    .filter(|k| !k.2.is_empty() && k.2 == key.3)
                    .cloned()
                    .collect();
                for k in contents {
                    self.delete_key(&k, false);
                }
                return self.finish_namespace(&key.3).unwrap_or(stored);
            }
            return stored;
        }
        self.remove(key, orphan)
    }

    /// Removes a terminating namespace once it is empty and has no finalizers left.
    fn finish_namespace(&mut self, namespace: &str) -> Option<Value> {
        let key: ObjKey = (
            String::new(),
            "namespaces".into(),
            String::new(),
            namespace.into(),
        );
        let ns = self.objects.get(&key)?;
        if meta_str(ns, "deletionTimestamp").is_none() || has_finalizers(ns) {
            return None;
        }
        if self.objects.keys().any(|k| k.2 == namespace) {
            return None;
        }
        Some(self.commit(&key, None, EventType::Deleted))
    }

    /// Removes an object for good, then collects what it owned and what a CRD served.
    fn remove(&mut self, key: &ObjKey, orphan: bool) -> Value {
        let removed = self.commit(key, None, EventType::Deleted);
        if key.0 == "apiextensions.k8s.io" && key.1 == "customresourcedefinitions" {
            let name = key.3.clone();
            let served: Vec<(String, String)> = self
                .types
                .iter()
                .filter(|t| t.crd.as_deref() == Some(name.as_str()))
                .map(ResourceType::key)
                .collect();
            let instances: Vec<ObjKey> = self
                .objects
                .keys()
                .filter(|k| served.iter().any(|(g, p)| *g == k.0 && *p == k.1))
                .cloned()
                .collect();
            for k in instances {
                self.commit(&k, None, EventType::Deleted);
            }
            self.types.retain(|t| t.crd.as_deref() != Some(name.as_str()));
            self.registry_generation += 1;
        }
        if !orphan && let Some(uid) = meta_str(&removed, "uid") {
            self.collect_garbage(uid);
        }
        if !key.2.is_empty() {
            self.finish_namespace(&key.2.clone());
        }
        removed
    }

    /// Background cascading deletion: dependents none of whose owners exist any more are deleted.
    fn collect_garbage(&mut self, owner_uid: &str) {
        let dependents: Vec<ObjKey> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(owner_uid)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in dependents {
            let Some(object) = self.objects.get(&key) else {
                continue;
            };
            let owners_left = object["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| {
                    let uid = r["uid"].as_str().unwrap_or_default();
                    uid != owner_uid && self.objects.values().any(|o| meta_str(o, "uid") == Some(uid))
                });
            if !owners_left {
                self.delete_key(&key, false);
            }
        }
    }

    /// Starts a watch: the events to send first, and a receiver for what comes after. `rv` unset or
    /// "0" (or `send_initial`) sends the current objects as ADDED first, as the API server does.
    #[allow(clippy::type_complexity)]
    pub fn watch(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        rv: Option<&str>,
        send_initial: bool,
    ) -> Result<(Vec<Arc<Event>>, u64, broadcast::Receiver<Arc<Event>>), ApiError> {
        // Subscribing under the store's lock: nothing falls between the backlog and the stream.
        let rx = self.tx.subscribe();
        let in_scope = |group: &str, plural: &str, ns: &str| {
            group == rt.group
                && plural == rt.plural
                && namespace.is_none_or(|want| !rt.namespaced || ns == want)
        };
        let rv = rv.filter(|s| !s.is_empty());
        let mut first = Vec::new();
        if send_initial || rv.is_none() || rv == Some("0") {
            for (k, o) in &self.objects {
                if in_scope(&k.0, &k.1, &k.2) {
                    first.push(Arc::new(Event {
                        rv: meta_str(o, "resourceVersion")
                            .and_then(|r| r.parse().ok())
                            .unwrap_or(0),
                        group: k.0.clone(),
                        plural: k.1.clone(),
                        namespace: k.2.clone(),
                        kind: EventType::Added,
                        object: Arc::new(o.clone()),
                        old: None,
                    }));
                }
            }
            return Ok((first, self.rv, rx));
        }
        let from: u64 = rv.unwrap_or_default().parse().map_err(|_| {
            ApiError::bad_request(format!("invalid resource version: {}", rv.unwrap_or_default()))
        })?;
        if from < self.compacted {
            return Err(ApiError::expired(format!(
                "too old resource version: {from} ({})",
                self.compacted + 1
            )));
        }
        for event in &self.log {
            if event.rv > from && in_scope(&event.group, &event.plural, &event.namespace) {
                first.push(event.clone());
            }
        }
        Ok((first, self.rv, rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_and_cm() -> (Store, ResourceType) {
        let store = Store::new(100);
        let cm = store.find("", "v1", "configmaps").unwrap();
        (store, cm)
    }

    fn opts() -> WriteOptions {
        WriteOptions {
            field_manager: "test".into(),
            ..Default::default()
        }
    }

    #[test]
    fn create_get_update_conflict() {
        let (mut store, cm) = store_and_cm();
        let created = store
            .create(
                &cm,
                "default",
                json!({"metadata": {"name": "a"}, "data": {"k": "v"}}),
                &opts(),
            )
            .unwrap();
        let rv = created["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        let mut changed = created.clone();
        changed["data"]["k"] = json!("w");
        let updated = store
            .update(&cm, "default", "a", changed.clone(), None, &opts())
            .unwrap();
        assert_ne!(updated["metadata"]["resourceVersion"], json!(rv));
        let err = store
            .update(&cm, "default", "a", changed, None, &opts())
            .unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(err.reason, "Conflict");
    }

    /// A write naming another uid than the stored one is refused (422), as the API server's
    /// immutable-field check does; one naming the same uid, or none, goes through.
    #[test]
    fn the_uid_cannot_change() {
        let (mut store, cm) = store_and_cm();
        let created = store
            .create(&cm, "default", json!({"metadata": {"name": "a"}}), &opts())
            .unwrap();
        let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
        let merge = |uid: &str| json!({"metadata": {"uid": uid}, "data": {"k": "v"}}).to_string();
        let mut patch = |uid: &str| {
            let body = merge(uid);
            store.patch(
                &cm,
                "default",
                "a",
                "application/merge-patch+json",
                body.as_bytes(),
                None,
                &opts(),
            )
        };
        let err = patch("other").unwrap_err();
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        assert!(
            err.message
                .contains("metadata.uid: Invalid value: \"other\": field is immutable"),
            "{}",
            err.message
        );
        let (same, _) = patch(&uid).unwrap();
        assert_eq!(same["metadata"]["uid"], json!(uid));
        assert_eq!(same["data"]["k"], "v");
    }

    #[test]
    fn finalizers_defer_deletion_and_owner_deletion_cascades() {
        let (mut store, cm) = store_and_cm();
        let owner = store
            .create(&cm, "default", json!({"metadata": {"name": "owner"}}), &opts())
            .unwrap();
        let uid = owner["metadata"]["uid"].as_str().unwrap();
        let dependent = json!({"metadata": {"name": "dep", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
        ], "finalizers": ["example.com/hold"]}});
        store.create(&cm, "default", dependent, &opts()).unwrap();
        store
            .delete(&cm, "default", "owner", &DeleteOptions::default())
            .unwrap();
        let dep = store.get(&cm, "default", "dep").unwrap();
        assert!(dep["metadata"]["deletionTimestamp"].is_string());
        let mut released = dep.clone();
        released["metadata"]["finalizers"] = json!([]);
        store
            .update(&cm, "default", "dep", released, None, &opts())
            .unwrap();
        assert_eq!(store.get(&cm, "default", "dep").unwrap_err().code, 404);
    }

    /// A controller that writes a child after its owner was deleted (a race every operator has)
    /// leaves nothing behind: the garbage collector deletes dependents whose owners are all gone.
    #[test]
    fn a_dependent_created_after_its_owner_went_is_collected() {
        let (mut store, cm) = store_and_cm();
        let owner = store
            .create(&cm, "default", json!({"metadata": {"name": "owner"}}), &opts())
            .unwrap();
        let uid = owner["metadata"]["uid"].as_str().unwrap().to_string();
        store
            .delete(&cm, "default", "owner", &DeleteOptions::default())
            .unwrap();
        let late = json!({"metadata": {"name": "late", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
        ]}});
        store.create(&cm, "default", late, &opts()).unwrap();
        assert_eq!(store.get(&cm, "default", "late").unwrap_err().code, 404);
        // Without owner references, or with one owner left, an object stays.
        store
            .create(&cm, "default", json!({"metadata": {"name": "free"}}), &opts())
            .unwrap();
        assert!(store.get(&cm, "default", "free").is_ok());
    }

    #[test]
    fn list_pages_with_continue() {
        let (mut store, cm) = store_and_cm();
        for i in 0..5 {
            store
                .create(
                    &cm,
                    "default",
                    json!({"metadata": {"name": format!("c{i}")}}),
                    &opts(),
                )
                .unwrap();
        }
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let page = store
                .list(
                    &cm,
                    Some("default"),
                    &ListOptions {
                        limit: Some(2),
                        continue_token: token,
                        ..Default::default()
                    },
                )
                .unwrap();
            names.extend(
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["metadata"]["name"].clone()),
            );
            token = page["metadata"]["continue"].as_str().map(String::from);
            if token.is_none() {
                break;
            }
        }
        assert_eq!(names.len(), 5);
    }

    #[test]
    fn watch_from_compacted_version_is_gone() {
        let (mut store, cm) = store_and_cm();
        store
            .create(&cm, "default", json!({"metadata": {"name": "a"}}), &opts())
            .unwrap();
        store.compact();
        let err = store.watch(&cm, None, Some("1"), false).unwrap_err();
        assert_eq!(err.code, 410);
    }

    #[test]
    fn deleting_a_namespace_deletes_its_contents() {
        let (mut store, cm) = store_and_cm();
        let ns = store.find("", "v1", "namespaces").unwrap();
        store
            .create(&ns, "", json!({"metadata": {"name": "t"}}), &opts())
            .unwrap();
        store
            .create(&cm, "t", json!({"metadata": {"name": "a"}}), &opts())
            .unwrap();
        store.delete(&ns, "", "t", &DeleteOptions::default()).unwrap();
        assert_eq!(store.get(&ns, "", "t").unwrap_err().code, 404);
        assert_eq!(store.get(&cm, "t", "a").unwrap_err().code, 404);
    }
}
