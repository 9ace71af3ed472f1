//! Statuses of objects no gateway compiles: a Connection whose `gatewayRef` names no AgentGateway,
//! and AgentIdentities and AccessPolicies in a namespace without any AgentGateway. Objects a gateway
//! uses get their status from that gateway's reconcile ([`crate::gateway`]); these controllers only
//! cover the cases that reconcile never sees, so the two never write the same object.

use std::sync::Arc;

use agentgate_crds::common::CommonStatus;
use agentgate_crds::{AccessPolicy, AgentIdentity, Connection};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::Error;
use crate::conditions::{self, Desired};
use crate::context::Context;

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "objects";

/// The kinds this controller reports on.
pub trait Reported:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    fn status(&self) -> Option<&CommonStatus>;
    /// Why no gateway compiles this object, or `None` when one does.
    fn orphaned(&self, ctx: &Context, ns: &str) -> Option<(&'static str, String)>;
}

fn has_gateway(ctx: &Context, ns: &str, name: Option<&str>) -> bool {
    ctx.stores
        .gateways
        .state()
        .iter()
        .any(|g| g.namespace().as_deref() == Some(ns) && name.is_none_or(|n| g.name_any() == n))
}

impl Reported for Connection {
    fn status(&self) -> Option<&CommonStatus> {
        self.status.as_ref()
    }
    fn orphaned(&self, ctx: &Context, ns: &str) -> Option<(&'static str, String)> {
        let gw = &self.spec.gateway_ref.name;
        (!has_gateway(ctx, ns, Some(gw))).then(|| {
            (
                "Invalid",
                format!("spec.gatewayRef.name: AgentGateway {ns}/{gw} not found"),
            )
        })
    }
}

impl Reported for AgentIdentity {
    fn status(&self) -> Option<&CommonStatus> {
        self.status.as_ref()
    }
    fn orphaned(&self, ctx: &Context, ns: &str) -> Option<(&'static str, String)> {
        no_gateway(ctx, ns)
    }
}

impl Reported for AccessPolicy {
    fn status(&self) -> Option<&CommonStatus> {
        self.status.as_ref()
    }
    fn orphaned(&self, ctx: &Context, ns: &str) -> Option<(&'static str, String)> {
        no_gateway(ctx, ns)
    }
}

fn no_gateway(ctx: &Context, ns: &str) -> Option<(&'static str, String)> {
    (!has_gateway(ctx, ns, None)).then(|| {
        (
            "NoGateway",
            format!("no AgentGateway in namespace {ns} uses this object"),
        )
    })
}

/// Writes the object's `Ready` condition, when it or the observed generation changed. An object
/// deleted meanwhile has nothing to report on. The gateway controller writes its verdicts with this
/// too.
pub async fn report_ready<K: Reported>(
    ctx: &Context,
    object: &K,
    ready: bool,
    reason: &str,
    message: String,
) -> Result<(), Error> {
    let generation = object.meta().generation;
    let current = object.status().map(|s| s.conditions.clone()).unwrap_or_default();
    let desired = Desired {
        r#type: "Ready",
        status: ready.into(),
        reason,
        message,
        observed_generation: generation,
    };
    let (conditions, changed) = conditions::set(&current, &desired);
    if !changed && object.status().and_then(|s| s.observed_generation) == generation {
        return Ok(());
    }
    let ns = object
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let body = json!({"status": {"observedGeneration": generation, "conditions": conditions}});
    match Api::<K>::namespaced(ctx.client.clone(), &ns)
        .patch_status(&object.name_any(), &PatchParams::default(), &Patch::Merge(&body))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reconciles one object of kind `K`.
pub async fn reconcile<K: Reported>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.reconciling(CONTROLLER);
    ctx.stores.synced().await?;
    let ns = object
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let Some((reason, message)) = object.orphaned(&ctx, &ns) else {
        return Ok(Action::await_change());
    };
    report_ready(&ctx, &*object, false, reason, message).await?;
    Ok(Action::await_change())
}

/// Failed reconciles are retried after a short pause.
pub fn error_policy<K: Reported>(_o: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry(CONTROLLER, error)
}
