//! Kubernetes mode: the gateway's configuration is the Secret the operator compiles for it
//! (`<gateway>-config`, key [`CONFIG_KEY`]), watched through the API server. A watch puts a change
//! in force within a second; a mounted Secret waits for the kubelet's sync, which can take a minute.
//!
//! The Secret holds the same YAML manifests a directory would (the AgentGateway, the Connections,
//! AgentIdentities and AccessPolicies the operator found valid, and the Secrets they reference), so
//! both modes go through one loader and one compiler.

use std::path::PathBuf;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use super::manifest::parse_documents;
use super::watch::ConfigWatcher;
use super::{ConfigError, ConfigErrors, GatewayConfig, LoadOptions, compile_manifests};

/// The key of the compiled configuration in the Secret.
pub const CONFIG_KEY: &str = "manifests.yaml";

/// Where a compiled configuration Secret is, and who reads it.
#[derive(Clone, Debug)]
pub struct SecretSource {
    pub namespace: String,
    pub name: String,
}

impl SecretSource {
    fn label(&self) -> PathBuf {
        PathBuf::from(format!("secret/{}/{}/{CONFIG_KEY}", self.namespace, self.name))
    }
}

/// Decodes and compiles one version of the Secret.
pub fn load_secret(
    source: &SecretSource,
    secret: &Secret,
    options: &LoadOptions,
) -> Result<GatewayConfig, ConfigErrors> {
    let label = source.label();
    let fail = |message: &str| ConfigErrors(vec![ConfigError::file(&label, message)]);
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIG_KEY))
        .ok_or_else(|| fail("the Secret has no manifests.yaml key"))?;
    let text = std::str::from_utf8(&bytes.0).map_err(|_| fail("manifests.yaml is not UTF-8"))?;
    let manifests = parse_documents(&label, text).map_err(|e| ConfigErrors(vec![e]))?;
    compile_manifests(manifests, options)
}

/// Watches the Secret and publishes every valid version until `shutdown` is signalled. A deleted
/// Secret leaves the configuration in force (the operator recreates it; an empty gateway would be
/// an outage, not a safer state, since every operation is already decided by the last policy).
pub async fn run(
    client: kube::Client,
    source: SecretSource,
    mut config: ConfigWatcher,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Secret> = Api::namespaced(client, &source.namespace);
    let selector = format!("metadata.name={}", source.name);
    let mut events = watcher::watcher(api, watcher::Config::default().fields(&selector))
        .default_backoff()
        .boxed();
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = shutdown.changed() => return,
        };
        match event {
            Some(Ok(Event::Apply(secret) | Event::InitApply(secret))) => {
                let source = source.clone();
                // Parsing and compiling is CPU work: keep it off the async workers.
                config = match tokio::task::spawn_blocking(move || {
                    let loaded = load_secret(&source, &secret, config.options());
                    let _ = config.publish(loaded);
                    config
                })
                .await
                {
                    Ok(c) => c,
                    Err(_) => return,
                };
            }
            Some(Ok(Event::Delete(_))) => {
                tracing::warn!(secret = %source.name, "the configuration Secret was deleted; the configuration in force stays");
            }
            Some(Ok(Event::Init | Event::InitDone)) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watching the configuration Secret failed; retrying");
            }
            None => return,
        }
    }
}
