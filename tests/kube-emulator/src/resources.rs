//! The resource types the emulator serves: the built-in kinds the project uses, and the kinds of every
//! CustomResourceDefinition created at run time.

use std::sync::Arc;

use serde_json::Value;

use agentgate_crds::validation::SchemaValidator;

use crate::status::Names;

/// One served resource (one group/version/plural).
#[derive(Clone, Debug)]
pub struct ResourceType {
    /// API group, empty for core.
    pub group: String,
    /// The served version.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Plural (the path segment).
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names for kubectl.
    pub short_names: Vec<String>,
    /// Categories for kubectl (`kubectl get agentgate`).
    pub categories: Vec<String>,
    /// Whether a `status` subresource isolates spec from status.
    pub status_subresource: bool,
    /// Whether `metadata.generation` is maintained (custom resources and kinds with a spec/status).
    pub generation: bool,
    /// The CRD's validator, for custom resources.
    pub validator: Option<Arc<SchemaValidator>>,
    /// The CRD's `additionalPrinterColumns`.
    pub printer_columns: Vec<Value>,
    /// The CRD's `openAPIV3Schema`, for `/openapi/v3`.
    pub schema: Option<Value>,
    /// Name of the CRD that defines this kind.
    pub crd: Option<String>,
}

impl ResourceType {
    pub(crate) fn builtin(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            namespaced,
            short_names: Vec::new(),
            categories: Vec::new(),
            status_subresource: false,
            generation: false,
            validator: None,
            printer_columns: Vec::new(),
            schema: None,
            crd: None,
        }
    }

    fn short(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// In kubectl's `all` category, as on a cluster.
    fn in_all(mut self) -> Self {
        self.categories = vec!["all".into()];
        self
    }

    fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self.generation = true;
        self
    }

    /// `group/version`, or `v1` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether this is a custom resource (served from a CRD).
    pub fn is_custom(&self) -> bool {
        self.crd.is_some()
    }

    /// Naming for error messages.
    pub fn names(&self) -> Names<'_> {
        Names {
            group: &self.group,
            plural: &self.plural,
            kind: &self.kind,
        }
    }

    /// The storage key: one store per group and plural, whatever the version.
    pub fn key(&self) -> (String, String) {
        (self.group.clone(), self.plural.clone())
    }
}

/// The built-in kinds: those the operator and the gateway read or write, and what kubectl needs.
pub fn builtins() -> Vec<ResourceType> {
    vec![
        ResourceType::builtin("", "v1", "Namespace", "namespaces", false)
            .short(&["ns"])
            .with_status(),
        ResourceType::builtin("", "v1", "Secret", "secrets", true),
        ResourceType::builtin("", "v1", "ConfigMap", "configmaps", true).short(&["cm"]),
        ResourceType::builtin("", "v1", "ServiceAccount", "serviceaccounts", true).short(&["sa"]),
        ResourceType::builtin("", "v1", "Service", "services", true)
            .short(&["svc"])
            .in_all()
            .with_status(),
        ResourceType::builtin("", "v1", "Pod", "pods", true)
            .short(&["po"])
            .in_all()
            .with_status(),
        ResourceType::builtin("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true)
            .short(&["pvc"])
            .with_status(),
        ResourceType::builtin("", "v1", "Event", "events", true).short(&["ev"]),
        ResourceType::builtin("apps", "v1", "Deployment", "deployments", true)
            .short(&["deploy"])
            .in_all()
            .with_status(),
        ResourceType::builtin("apps", "v1", "ReplicaSet", "replicasets", true)
            .short(&["rs"])
            .in_all()
            .with_status(),
        ResourceType::builtin(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
        )
        .short(&["pdb"])
        .with_status(),
        ResourceType::builtin("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
        ResourceType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
        ),
        ResourceType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
        ),
        ResourceType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
        ),
        ResourceType::builtin("coordination.k8s.io", "v1", "Lease", "leases", true),
        ResourceType::builtin("events.k8s.io", "v1", "Event", "events", true).short(&["ev"]),
        ResourceType::builtin(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicy",
            "validatingadmissionpolicies",
            false,
        )
        .with_status(),
        ResourceType::builtin(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicyBinding",
            "validatingadmissionpolicybindings",
            false,
        ),
        // Served by the router (create only); listed so discovery knows the group.
        ResourceType::builtin(
            "authentication.k8s.io",
            "v1",
            "SelfSubjectReview",
            "selfsubjectreviews",
            false,
        ),
        ResourceType::builtin(
            "authentication.k8s.io",
            "v1",
            "TokenReview",
            "tokenreviews",
            false,
        ),
        ResourceType::builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        )
        .short(&["crd", "crds"])
        .with_status(),
    ]
}

/// The resource types a CRD defines (one per served version), or the API server's complaint.
pub fn from_crd(crd: &Value) -> Result<Vec<ResourceType>, String> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let names = &spec["names"];
    let (Some(kind), Some(plural)) = (names["kind"].as_str(), names["plural"].as_str()) else {
        return Err("spec.names: Required value: kind and plural are required".into());
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for version in spec["versions"].as_array().into_iter().flatten() {
        if version["served"].as_bool() == Some(false) {
            continue;
        }
        let schema = version["schema"]["openAPIV3Schema"].clone();
        let validator = (!schema.is_null()).then(|| Arc::new(SchemaValidator::new(schema.clone())));
        out.push(ResourceType {
            group: group.into(),
            version: version["name"].as_str().unwrap_or("v1").into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: names["singular"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| kind.to_lowercase()),
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            status_subresource: version["subresources"]["status"].is_object(),
            generation: true,
            validator,
            printer_columns: version["additionalPrinterColumns"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            schema: (!schema.is_null()).then_some(schema),
            crd: Some(format!("{plural}.{group}")),
        });
    }
    Ok(out)
}
