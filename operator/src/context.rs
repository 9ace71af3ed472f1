//! What every reconcile reads: the API client, the settings, the caches and the metrics.

use std::time::Duration;

use agentgate_crds::{AccessPolicy, AgentGateway, AgentIdentity, Connection};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::runtime::reflector::Store;

use crate::bundle::Namespace;
use crate::telemetry::Metrics;

/// The operator's settings, from its command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The gateway image, when an AgentGateway does not name one.
    pub gateway_image: String,
    /// Images (or prefixes ending in `/`, `:` or `@`) an AgentGateway's `spec.image` may name.
    pub allowed_gateway_images: Vec<String>,
    /// How long decided ApprovalRequests are kept before they are deleted.
    pub approval_retention: Duration,
    /// Accept listeners on loopback addresses (gateways run beside the operator, outside pods:
    /// development and tests). Off, such a listener is an error: no Service reaches it.
    pub allow_loopback_listeners: bool,
}

/// The caches the controllers fill (reflectors).
#[derive(Clone)]
pub struct Stores {
    pub gateways: Store<AgentGateway>,
    pub connections: Store<Connection>,
    pub identities: Store<AgentIdentity>,
    pub policies: Store<AccessPolicy>,
    pub secrets: Store<Secret>,
}

impl Stores {
    /// Waits (briefly) until every cache has listed once.
    pub async fn synced(&self) -> Result<(), crate::Error> {
        let all = async {
            self.gateways.wait_until_ready().await.ok()?;
            self.connections.wait_until_ready().await.ok()?;
            self.identities.wait_until_ready().await.ok()?;
            self.policies.wait_until_ready().await.ok()?;
            self.secrets.wait_until_ready().await.ok()
        };
        match tokio::time::timeout(Duration::from_secs(30), all).await {
            Ok(Some(())) => Ok(()),
            _ => Err(crate::Error::NotSynced),
        }
    }

    /// The objects of one namespace, owned, for the compiler.
    pub fn namespace(&self, ns: &str) -> Namespace {
        fn of<K: kube::Resource + Clone>(store: &Store<K>, ns: &str) -> Vec<K>
        where
            K::DynamicType: std::hash::Hash + Eq + Clone,
        {
            store
                .state()
                .iter()
                .filter(|o| o.namespace().as_deref() == Some(ns))
                .map(|o| (**o).clone())
                .collect()
        }
        Namespace {
            name: ns.to_string(),
            gateways: of(&self.gateways, ns),
            connections: of(&self.connections, ns),
            identities: of(&self.identities, ns),
            policies: of(&self.policies, ns),
            secrets: of(&self.secrets, ns),
        }
    }
}

impl Context {
    /// Counts one reconcile of `controller` and times it until the returned timer drops.
    pub fn reconciling(&self, controller: &str) -> prometheus::HistogramTimer {
        self.metrics.reconciles.with_label_values(&[controller]).inc();
        self.metrics
            .duration
            .with_label_values(&[controller])
            .start_timer()
    }

    /// Every controller's error policy: count the failure, log it, retry after a short pause (the
    /// API server may be briefly away).
    pub fn retry(&self, controller: &str, error: &crate::Error) -> kube::runtime::controller::Action {
        self.metrics
            .failures
            .with_label_values(&[controller, error.metric_label()])
            .inc();
        tracing::warn!(controller, %error, "reconcile failed; retrying");
        kube::runtime::controller::Action::requeue(RETRY_AFTER)
    }
}

/// Pause before a failed reconcile is retried.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Shared by every reconcile.
#[derive(Clone)]
pub struct Context {
    pub client: kube::Client,
    pub settings: Settings,
    pub metrics: Metrics,
    pub stores: Stores,
    pub recorder: kube::runtime::events::Recorder,
    /// Gateways to reconcile again: the namespace's others, when one becomes Ready or stops
    /// being so (which gateway reports shared objects may change).
    pub requeue: tokio::sync::mpsc::UnboundedSender<kube::runtime::reflector::ObjectRef<AgentGateway>>,
}
