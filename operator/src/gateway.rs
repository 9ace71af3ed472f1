//! The AgentGateway controller: compiles the gateway's configuration from its namespace, applies
//! its children with server-side apply, and reports the verdict on every object it uses in that
//! object's `status.conditions` (Ready, or Invalid with the field or missing reference named).
//! AgentIdentities and AccessPolicies serve every gateway of their namespace; one gateway
//! reports them (see [`reports_shared_objects`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentgate_crds::common::ConditionStatus;
use agentgate_crds::{AgentGateway, Condition};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::bundle::{self, Compiled, ObjectKey, Verdict};
use crate::conditions::{self, Desired};
use crate::context::Context;
use crate::{Error, MANAGER, children, objects};

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "gateway";
/// How often a gateway is reconciled without any change (drift repair).
pub const RESYNC: Duration = Duration::from_secs(300);
/// How often a gateway blocked by an object of a child's name that it does not own looks again.
pub const CONFLICT_RECHECK: Duration = Duration::from_secs(10);

/// Reconciles one AgentGateway.
pub async fn reconcile(gw: Arc<AgentGateway>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.reconciling(CONTROLLER);
    if gw.meta().deletion_timestamp.is_some() {
        // The garbage collector removes the children through their ownerReferences.
        return Ok(Action::await_change());
    }
    ctx.stores.synced().await?;
    let ns = gw.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = gw.name_any();
    let snapshot = ctx.stores.namespace(&ns);
    let started = Instant::now();
    let mut compiled = {
        let name = name.clone();
        let snapshot = snapshot.clone();
        let in_pods = !ctx.settings.allow_loopback_listeners;
        tokio::task::spawn_blocking(move || bundle::compile(&snapshot, &name, in_pods))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    };
    ctx.metrics
        .compile_seconds
        .with_label_values(&[if compiled.gateway.is_ok() { "ok" } else { "invalid" }])
        .observe(started.elapsed().as_secs_f64());
    // The published hash is keyed (see `children::config_hash`) by the key on the configuration
    // Secret, made with the first one: the same configuration keeps its hash across restarts.
    let config_secret = ctx
        .stores
        .secrets
        .get(&ObjectRef::new(&children::config_secret_name(&name)).within(&ns));
    let hash_key = match config_secret
        .as_ref()
        .and_then(|s| s.annotations().get(children::SALT_ANNOTATION))
        .filter(|k| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        Some(k) => k.clone(),
        None => children::new_hash_key().map_err(|_| Error::Task("random generator failed".into()))?,
    };
    if let Ok(p) = &mut compiled.gateway {
        p.hash = children::config_hash(&hash_key, &p.manifests);
    }

    let mut image = children::gateway_image(
        &gw,
        &ctx.settings.gateway_image,
        &ctx.settings.allowed_gateway_images,
    );
    // A claim is not watched: a refused one is looked at again after a pause.
    let claim_refused = if image.is_ok() {
        recordings_claim_refusal(&ctx.client, &ns, &gw).await?
    } else {
        None
    };
    if let Some(refusal) = &claim_refused {
        image = Err(refusal.clone());
    }
    // A refused image or claim stops the Deployment from changing, not the configuration: a
    // policy, a revoked identity or a rotated credential still reaches the gateway that runs,
    // so whoever may write the AgentGateway cannot hold the security team's changes back.
    let pp = PatchParams::apply(MANAGER).force();
    let client = &ctx.client;
    // Force only settles fields between this operator's own versions: an object of a child's
    // name that this gateway does not own is someone else's, and is left alone.
    let uid = gw.uid().unwrap_or_default();
    let child = children::child_name(&name);
    let foreign: Vec<String> = [
        not_owned::<ServiceAccount>(client, &ns, &child, &uid).await?,
        not_owned::<Role>(client, &ns, &child, &uid).await?,
        not_owned::<RoleBinding>(client, &ns, &child, &uid).await?,
        not_owned::<Secret>(client, &ns, &children::config_secret_name(&name), &uid).await?,
        not_owned::<Deployment>(client, &ns, &child, &uid).await?,
        not_owned::<Service>(client, &ns, &child, &uid).await?,
        not_owned::<PodDisruptionBudget>(client, &ns, &child, &uid).await?,
    ]
    .into_iter()
    .flatten()
    .collect();
    // Nothing applied for a name its children cannot take: each apply would fail, every pass.
    if let Some(why) = children::name_refusal(&name) {
        compiled.gateway = Err(why);
        report_objects(&ctx, &name, &snapshot, &compiled).await?;
        report_gateway(&ctx, &gw, &ns, &compiled, &snapshot).await?;
        return Ok(Action::await_change());
    }
    if !foreign.is_empty() {
        compiled.gateway = Err(format!(
            "{} already exist(s) and belong(s) to something else; the operator takes over nothing: rename the gateway, or delete or rename the object",
            foreign.join(", ")
        ));
        report_objects(&ctx, &name, &snapshot, &compiled).await?;
        report_gateway(&ctx, &gw, &ns, &compiled, &snapshot).await?;
        // Deleting an object this operator does not own wakes no watch of its own.
        return Ok(Action::requeue(CONFLICT_RECHECK));
    }
    apply::<ServiceAccount>(client, &ns, children::service_account(&gw), &pp).await?;
    apply::<Role>(client, &ns, children::role(&gw), &pp).await?;
    apply::<RoleBinding>(client, &ns, children::role_binding(&gw), &pp).await?;
    if let Ok(published) = &compiled.gateway {
        // Only a configuration that compiled is published; an invalid gateway keeps the last one.
        // Current when both the hash annotation and the data are what this configuration
        // makes: the gateway loads the data, so an edit of it alone is repaired too.
        let current = config_secret.as_ref().is_some_and(|s| {
            s.annotations().get(children::HASH_ANNOTATION) == Some(&published.hash)
                && s.data
                    .as_ref()
                    .and_then(|d| d.get(children::CONFIG_KEY))
                    .is_some_and(|b| b.0 == published.compressed)
        });
        if !current {
            apply::<Secret>(
                client,
                &ns,
                children::config_secret(&gw, &published.compressed, &published.hash, &hash_key),
                &pp,
            )
            .await?;
            publish_event(
                &ctx,
                &gw,
                EventType::Normal,
                "ConfigPublished",
                &format!(
                    "published configuration {}: {} connection(s), {} identity(ies), {} policy(ies)",
                    &published.hash[..12],
                    published.connections,
                    published.identities,
                    published.policies
                ),
            )
            .await;
            // Said with each configuration published, so a resync writes no event.
            if let Some(why) = recordings_not_persistent(&gw) {
                publish_event(&ctx, &gw, EventType::Warning, "RecordingsNotPersistent", why).await;
            }
        }
    }
    if let Ok(image) = &image {
        apply::<Deployment>(client, &ns, children::deployment(&gw, image), &pp).await?;
    }
    apply::<Service>(client, &ns, children::service(&gw), &pp).await?;
    apply::<PodDisruptionBudget>(client, &ns, children::pod_disruption_budget(&gw), &pp).await?;

    report_objects(&ctx, &name, &snapshot, &compiled).await?;
    if let (Err(e), Ok(_)) = (&image, &compiled.gateway) {
        // The gateway itself is not as asked: said on it, while its configuration is in force.
        compiled.gateway = Err(format!(
            "{e}; the running gateway keeps its image and volumes, and takes the configuration"
        ));
    }
    report_gateway(&ctx, &gw, &ns, &compiled, &snapshot).await?;
    Ok(Action::requeue(if claim_refused.is_some() {
        CONFLICT_RECHECK
    } else {
        RESYNC
    }))
}

/// Why the gateway's `recording.storage.volume` claim may not be mounted, if it may not: it does
/// not exist, or its owner has not opted it in ([`agentgate_crds::RECORDINGS_LABEL`]).
async fn recordings_claim_refusal(
    client: &kube::Client,
    ns: &str,
    gw: &AgentGateway,
) -> Result<Option<String>, Error> {
    let Some(volume) = gw.spec.recording.storage.as_ref().and_then(|s| s.volume.as_ref()) else {
        return Ok(None);
    };
    let name = &volume.claim_name;
    let field = "spec.recording.storage.volume.claimName";
    let Some(claim) = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
    else {
        return Ok(Some(format!("{field}: PersistentVolumeClaim {name} not found")));
    };
    let label = agentgate_crds::RECORDINGS_LABEL;
    Ok((claim.labels().get(label).map(String::as_str) != Some("true")).then(|| {
        format!(
            "{field}: PersistentVolumeClaim {name} is not labelled {label}: \"true\"; the operator mounts only claims their owner opted in for session recordings"
        )
    }))
}

/// Why the gateway's session recordings would not outlive its pods, if they would not: without
/// `storage.volume` or `storage.s3` they stay in the pod's scratch space (an emptyDir).
fn recordings_not_persistent(gw: &AgentGateway) -> Option<&'static str> {
    let storage = gw.spec.recording.storage.as_ref();
    match storage {
        Some(s) if s.volume.is_some() => None,
        Some(s) if s.s3.is_some() => Some(
            "recording.storage.s3 without recording.storage.volume spools sessions in the pod's scratch space: sessions not yet shipped are lost with the pod (a store unreachable while the pod is replaced); set recording.storage.volume as the spool",
        ),
        Some(s) if s.local.is_some() => Some(
            "recording.storage.local is the pod's scratch space in a cluster: session recordings are lost with the pod; set recording.storage.volume (alone, or as the spool of recording.storage.s3)",
        ),
        _ => Some(
            "no recording.storage: session recordings stay in the pod's scratch space and are lost with it; set recording.storage.volume (alone, or as the spool of recording.storage.s3)",
        ),
    }
}

/// Failed reconciles are retried after a short pause.
pub fn error_policy(_gw: Arc<AgentGateway>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry(CONTROLLER, error)
}

/// A kind of the gateway's children: namespaced, read and applied through the API.
trait Child:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> Child for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
{
}

async fn apply<K: Child>(
    client: &kube::Client,
    ns: &str,
    object: Value,
    pp: &PatchParams,
) -> Result<(), Error> {
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Api::<K>::namespaced(client.clone(), ns)
        .patch(&name, pp, &Patch::Apply(&object))
        .await?;
    Ok(())
}

/// `"<Kind> <name>"` when an object of that name exists and is not controlled by the gateway
/// with `uid`.
async fn not_owned<K: Child>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    uid: &str,
) -> Result<Option<String>, Error> {
    let Some(existing) = Api::<K>::namespaced(client.clone(), ns).get_opt(name).await? else {
        return Ok(None);
    };
    let ours = existing
        .owner_references()
        .iter()
        .any(|o| o.uid == uid && o.controller == Some(true));
    Ok((!ours).then(|| format!("{} {name}", K::kind(&()))))
}

async fn publish_event(ctx: &Context, gw: &AgentGateway, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1024).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &gw.object_ref(&())).await {
        tracing::debug!(error = %e, "could not publish an event");
    }
}

/// Writes the Ready condition of every Connection, AgentIdentity and AccessPolicy whose verdict
/// changed.
async fn report_objects(
    ctx: &Context,
    gateway: &str,
    snapshot: &bundle::Namespace,
    compiled: &Compiled,
) -> Result<(), Error> {
    // A valid object is in force only once its gateway's configuration is published.
    let unpublished = compiled.gateway.as_ref().err();
    let shared = reports_shared_objects(gateway, unpublished.is_none(), snapshot);
    for (key, verdict) in &compiled.verdicts {
        let (ready, reason, message) = match verdict {
            Verdict::Ready => match unpublished {
                // The same words from every gateway of the namespace: two of them writing
                // their own names would rewrite each other's conditions without end.
                None => (
                    true,
                    "Compiled",
                    "in the published configuration of its AgentGateway(s)".to_string(),
                ),
                Some(why) => (
                    false,
                    "NotPublished",
                    format!(
                        "valid, but not in force: the configuration of AgentGateway {gateway} is not published ({why})"
                    ),
                ),
            },
            Verdict::Invalid(m) => (false, "Invalid", m.clone()),
            Verdict::Quarantined(m) => (false, "Quarantined", m.clone()),
        };
        match key.kind {
            "Connection" => report(ctx, &snapshot.connections, key, ready, reason, message).await?,
            "AgentIdentity" if shared => {
                report(ctx, &snapshot.identities, key, ready, reason, message).await?
            }
            "AccessPolicy" if shared => report(ctx, &snapshot.policies, key, ready, reason, message).await?,
            _ => {}
        }
    }
    Ok(())
}

/// Whether `gateway` writes the conditions of the namespace's AgentIdentities and
/// AccessPolicies, which every gateway of the namespace compiles. One does: two whose verdicts
/// differ (one not published, another's `approvals.maxGrant` refusing a grant) would rewrite
/// each other's conditions without end, each write waking the other. It is the first by name of
/// the gateways that are Ready (in force, so their verdicts are the ones that hold), else the
/// first by name. The others say what they left out on their own status.
/// `ready` is this gateway's own Ready as this reconcile makes it (its stored one may be stale).
fn reports_shared_objects(gateway: &str, ready: bool, snapshot: &bundle::Namespace) -> bool {
    let live = || {
        snapshot
            .gateways
            .iter()
            .filter(|g| g.metadata.deletion_timestamp.is_none())
    };
    let is_ready = |g: &&AgentGateway| {
        if g.name_any() == gateway {
            return ready;
        }
        g.status.as_ref().is_some_and(|s| {
            s.common
                .conditions
                .iter()
                .any(|c| c.r#type == "Ready" && c.status == ConditionStatus::True)
        })
    };
    live()
        .filter(is_ready)
        .map(|g| g.name_any())
        .min()
        .or_else(|| live().map(|g| g.name_any()).min())
        .is_none_or(|first| first == gateway)
}

async fn report<K: objects::Reported>(
    ctx: &Context,
    objects: &[K],
    key: &ObjectKey,
    ready: bool,
    reason: &str,
    message: String,
) -> Result<(), Error> {
    match objects
        .iter()
        .find(|o| o.meta().name.as_deref() == Some(key.name.as_str()))
    {
        Some(o) => objects::report_ready(ctx, o, ready, reason, message).await,
        None => Ok(()),
    }
}

/// The gateway's own status: `Ready` (its configuration compiled and is published), `Available`
/// (its Deployment has available pods), the published hash and the ready replicas.
/// How much of a gateway's Ready message lists what it left out (a condition's message holds
/// 32,768 characters; a longer one would fail every status write).
const MAX_LEFT_OUT_MESSAGE: usize = 16 * 1024;

async fn report_gateway(
    ctx: &Context,
    gw: &AgentGateway,
    ns: &str,
    compiled: &Compiled,
    snapshot: &bundle::Namespace,
) -> Result<(), Error> {
    let name = gw.name_any();
    let reports_shared = reports_shared_objects(&name, compiled.gateway.is_ok(), snapshot);
    let generation = gw.meta().generation;
    let current: Vec<Condition> = gw
        .status
        .as_ref()
        .map(|s| s.common.conditions.clone())
        .unwrap_or_default();
    let invalid: Vec<String> = compiled
        .verdicts
        .iter()
        .filter(|(_, v)| **v != Verdict::Ready)
        .map(|(k, v)| match v {
            // Their own status shows another gateway's verdict: this one's is said here.
            Verdict::Invalid(why) | Verdict::Quarantined(why)
                if !reports_shared && matches!(k.kind, "AgentIdentity" | "AccessPolicy") =>
            {
                format!("{k} ({why})")
            }
            _ => k.to_string(),
        })
        .collect();
    // Within what a condition's message holds, with room for the counts.
    let mut kept = 0;
    let mut length = 0;
    for entry in &invalid {
        if length + entry.len() + 2 > MAX_LEFT_OUT_MESSAGE {
            break;
        }
        length += entry.len() + 2;
        kept += 1;
    }
    let invalid: Vec<String> = match invalid.len() - kept {
        0 => invalid,
        more => invalid
            .into_iter()
            .take(kept)
            .chain([format!("and {more} more, see their status")])
            .collect(),
    };
    let ready = match &compiled.gateway {
        Ok(p) => Desired {
            r#type: "Ready",
            status: true.into(),
            reason: "ConfigPublished",
            message: if invalid.is_empty() {
                format!(
                    "{} connection(s), {} identity(ies), {} policy(ies)",
                    p.connections, p.identities, p.policies
                )
            } else {
                format!(
                    "{} connection(s), {} identity(ies), {} policy(ies); left out, see their status: {}",
                    p.connections,
                    p.identities,
                    p.policies,
                    invalid.join(", ")
                )
            },
            observed_generation: generation,
        },
        Err(e) => Desired {
            r#type: "Ready",
            status: false.into(),
            reason: "Invalid",
            message: e.chars().take(MAX_LEFT_OUT_MESSAGE).collect(),
            observed_generation: generation,
        },
    };
    let was_ready_message = current
        .iter()
        .find(|c| c.r#type == "Ready")
        .map(|c| c.message.clone());
    let was_ready = current
        .iter()
        .any(|c| c.r#type == "Ready" && c.status == ConditionStatus::True);
    if was_ready != compiled.gateway.is_ok() {
        for peer in snapshot.gateways.iter().filter(|g| g.name_any() != name) {
            // Only fails once the controller has stopped.
            let _ = ctx.requeue.send(ObjectRef::from_obj(peer));
        }
    }
    let (conditions, _) = conditions::set(&current, &ready);
    let deployment = Api::<Deployment>::namespaced(ctx.client.clone(), ns)
        .get_opt(&children::child_name(&name))
        .await?;
    let ready_replicas = deployment
        .as_ref()
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let available_replicas = deployment
        .as_ref()
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    let available = Desired {
        r#type: "Available",
        status: (available_replicas > 0).into(),
        reason: if available_replicas > 0 {
            "MinimumReplicasAvailable"
        } else {
            "NoReplicasAvailable"
        },
        message: format!("{available_replicas}/{} replica(s) available", gw.spec.replicas),
        observed_generation: generation,
    };
    let (conditions, _) = conditions::set(&conditions, &available);
    if let Err(e) = &compiled.gateway
        && was_ready_message.as_deref() != Some(e.as_str())
    {
        publish_event(ctx, gw, EventType::Warning, "InvalidConfig", e).await;
    }
    let config_hash = compiled
        .gateway
        .as_ref()
        .ok()
        .map(|p| p.hash.clone())
        .or_else(|| gw.status.as_ref().and_then(|s| s.config_hash.clone()));
    let desired_status = json!({
        "observedGeneration": generation,
        "conditions": conditions,
        "configHash": config_hash,
        "readyReplicas": ready_replicas,
    });
    let current_status = gw.status.as_ref().map(serde_json::to_value).transpose()?;
    if current_status
        .as_ref()
        .is_some_and(|c| same_status(c, &desired_status))
    {
        return Ok(());
    }
    Api::<AgentGateway>::namespaced(ctx.client.clone(), ns)
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": desired_status })),
        )
        .await?;
    Ok(())
}

fn same_status(current: &Value, desired: &Value) -> bool {
    ["observedGeneration", "conditions", "configHash", "readyReplicas"]
        .iter()
        .all(|k| current.get(*k).unwrap_or(&Value::Null) == desired.get(*k).unwrap_or(&Value::Null))
}
