//! The agentgate operator: reconciles `agentgate.dev` resources into gateway configuration and
//! Deployments.
//!
//! - [`gateway`]: an AgentGateway → its ServiceAccount, Role, compiled configuration Secret,
//!   Deployment, Service and PodDisruptionBudget, and the status of every object it uses;
//! - [`bundle`]: compiling a gateway's configuration with the gateway's own compiler;
//! - [`objects`]: the status of objects no gateway compiles (a Connection naming no gateway);
//! - [`approval`]: ApprovalRequest phases, expiry and garbage collection;
//! - [`leader`]: leader election on a Lease, so two replicas are safe;
//! - [`telemetry`]: metrics and the health endpoints.

pub mod approval;
pub mod bundle;
pub mod children;
pub mod conditions;
pub mod context;
#[doc(hidden)]
pub mod fixtures;
pub mod gateway;
pub mod leader;
pub mod objects;
pub mod run;
pub mod telemetry;

use std::path::Path;

pub use agentgate_crds::generate;

/// The field manager of every write, and the `managed-by` label value of every child.
pub const MANAGER: &str = "agentgate-operator";

/// Errors of the operator crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing generated files failed.
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A call to the API server failed; retried with backoff.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The caches have not synced yet; retried.
    #[error("caches not synced yet")]
    NotSynced,
    /// An object lacks a field the API server always sets (name, namespace, uid).
    #[error("object without {0}")]
    MissingField(&'static str),
    /// Leadership was lost; the process stops its controllers.
    #[error("lost the leader Lease {0}")]
    LostLease(String),
    /// Serving the health and metrics endpoints failed.
    #[error("cannot serve {addr}: {source}")]
    Serve {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Building a JSON body failed (a bug).
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
    /// A blocking task panicked or was cancelled.
    #[error("compile task: {0}")]
    Task(String),
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Write { .. } => "write",
            Error::Kube(_) => "kube",
            Error::NotSynced => "not_synced",
            Error::MissingField(_) => "missing_field",
            Error::LostLease(_) => "lost_lease",
            Error::Serve { .. } => "serve",
            Error::Encode(_) => "encode",
            Error::Task(_) => "task",
        }
    }
}

/// Writes one YAML file per CRD into `dir`, returning the paths written.
pub fn write_crds(dir: &Path) -> Result<Vec<String>, Error> {
    let mut written = Vec::new();
    for crd in generate::all_crds() {
        let path = dir.join(generate::file_name(&crd));
        std::fs::write(&path, generate::to_yaml(&crd)).map_err(|source| Error::Write {
            path: path.display().to_string(),
            source,
        })?;
        written.push(path.display().to_string());
    }
    Ok(written)
}
