//! Wiring: leader election, the caches, the controllers and the health endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentgate_crds::{AccessPolicy, AgentGateway, AgentIdentity, ApprovalRequest, Connection};
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

use crate::context::{Context, Settings, Stores};
use crate::leader::Elector;
use crate::objects::{self, Reported};
use crate::telemetry::{Metrics, Phase};
use crate::{Error, MANAGER, approval, gateway};

/// How long the controllers wait after a change for more changes before reconciling, so a burst
/// (`kubectl apply -f dir/`) compiles once, not once per object.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// The operator's command-line settings.
#[derive(Clone, Debug)]
pub struct Options {
    pub metrics_addr: SocketAddr,
    pub lease_namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub settings: Settings,
    /// Watch and manage only this namespace (a namespace-scoped install, with a Role rather than
    /// a ClusterRole); `None`: every namespace.
    pub watch_namespace: Option<String>,
}

/// Runs until `shutdown` resolves or leadership is lost.
pub async fn run(
    client: kube::Client,
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let metrics = Metrics::new();
    let server = tokio::spawn(crate::telemetry::serve(options.metrics_addr, metrics.clone()));
    let elector = Elector::new(
        client.clone(),
        &options.lease_namespace,
        &options.lease_name,
        &options.identity,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let held_since = tokio::select! {
        r = elector.acquire() => r?,
        () = stopped(stop_rx.clone()) => {
            metrics.set_phase(Phase::Stopping);
            server.abort();
            return Ok(());
        }
    };
    metrics.set_phase(Phase::Leading);
    let result = tokio::select! {
        () = controllers(client, options, metrics.clone(), stop_rx.clone()) => Ok(()),
        e = elector.keep(held_since) => Err(e),
    };
    metrics.set_phase(Phase::Stopping);
    server.abort();
    result
}

/// The objects of kind `K` the operator watches: in every namespace, or only in `namespace`.
fn watched<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn cache<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>> + Send)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher::watcher(api, config))
        .default_backoff()
        .touched_objects();
    (reader, stream)
}

/// Every gateway of the namespace of `o` (identities, policies and Secrets are namespace-wide).
fn gateways_of(store: &Store<AgentGateway>, ns: Option<String>) -> Vec<ObjectRef<AgentGateway>> {
    store
        .state()
        .iter()
        .filter(|g| g.namespace() == ns)
        .map(|g| ObjectRef::from_obj(&**g))
        .collect()
}

async fn controllers(
    client: kube::Client,
    options: Options,
    metrics: Metrics,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let scope = options.watch_namespace.as_deref();
    let all = watcher::Config::default();
    let (connections, connection_events) = cache(watched::<Connection>(&client, scope), all.clone());
    let (identities, identity_events) = cache(watched::<AgentIdentity>(&client, scope), all.clone());
    let (policies, policy_events) = cache(watched::<AccessPolicy>(&client, scope), all.clone());
    // Service-account tokens and Helm release records are never referenced; leaving them out of the
    // cache keeps its memory to the Secrets that can matter.
    let (secrets, secret_events) = cache(
        watched::<Secret>(&client, scope),
        all.clone()
            .fields("type!=kubernetes.io/service-account-token,type!=helm.sh/release.v1"),
    );
    let gateways_controller = Controller::new(watched::<AgentGateway>(&client, scope), all.clone());
    let gateways = gateways_controller.store();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: Some(options.identity.clone()),
        },
    );
    let (requeue, mut requeued) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(Context {
        requeue,
        client: client.clone(),
        settings: options.settings.clone(),
        metrics,
        stores: Stores {
            gateways: gateways.clone(),
            connections,
            identities,
            policies,
            secrets,
        },
        recorder,
    });
    let config = controller::Config::default().debounce(DEBOUNCE);
    let (g1, g2, g3, g4) = (
        gateways.clone(),
        gateways.clone(),
        gateways.clone(),
        gateways.clone(),
    );
    let gateway_loop = gateways_controller
        .owns(
            watched::<Deployment>(&client, scope),
            watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}")),
        )
        .watches_stream(connection_events, move |c: Connection| {
            gateways_of(&g1, c.namespace())
        })
        .watches_stream(identity_events, move |i: AgentIdentity| {
            gateways_of(&g2, i.namespace())
        })
        .watches_stream(policy_events, move |p: AccessPolicy| {
            gateways_of(&g3, p.namespace())
        })
        .watches_stream(secret_events, move |s: Secret| gateways_of(&g4, s.namespace()))
        // A gateway that becomes Ready or stops being so may hand over reporting the
        // namespace's identities and policies (see gateway::reports_shared_objects).
        .reconcile_on(futures_util::stream::poll_fn(move |cx| requeued.poll_recv(cx)))
        .with_config(config)
        .graceful_shutdown_on(stopped(stop.clone()))
        .run(gateway::reconcile, gateway::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "gateway controller");
            }
        });
    // No debounce for decisions: each is one object's change, and a held operation waits on it.
    let approval_loop = Controller::new(watched::<ApprovalRequest>(&client, scope), all.clone())
        .with_config(controller::Config::default())
        .graceful_shutdown_on(stopped(stop.clone()))
        .run(approval::reconcile, approval::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "approval controller");
            }
        });
    let stop_objects = stop.clone();
    tokio::join!(
        gateway_loop,
        approval_loop,
        object_loop::<Connection>(client.clone(), scope, ctx.clone(), stop_objects.clone()),
        object_loop::<AgentIdentity>(client.clone(), scope, ctx.clone(), stop_objects.clone()),
        object_loop::<AccessPolicy>(client.clone(), scope, ctx, stop_objects),
    );
}

/// Resolves once the stop flag is raised.
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The [`objects`] controller for kind `K`, re-run for every object of a namespace when a gateway
/// there appears or goes.
async fn object_loop<K: Reported>(
    client: kube::Client,
    scope: Option<&str>,
    ctx: Arc<Context>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let all = watcher::Config::default();
    let controller = Controller::new(watched::<K>(&client, scope), all.clone());
    let store = controller.store();
    controller
        .watches(
            watched::<AgentGateway>(&client, scope),
            all,
            move |g: AgentGateway| {
                let ns = g.namespace();
                store
                    .state()
                    .iter()
                    .filter(|o| o.namespace() == ns)
                    .map(|o| ObjectRef::from_obj(&**o))
                    .collect::<Vec<_>>()
            },
        )
        .with_config(controller::Config::default().debounce(DEBOUNCE))
        .graceful_shutdown_on(stopped(stop))
        .run(objects::reconcile::<K>, objects::error_policy::<K>, ctx)
        .for_each(|_| async {})
        .await;
}
