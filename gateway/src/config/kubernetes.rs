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

/// The key of the compiled configuration in the Secret: the manifests, gzip-compressed (5,000
/// policies are about 1.5 MB of text, over the API server's 1 MiB object limit; compressed, a
/// tenth of that).
pub const CONFIG_KEY: &str = "manifests.yaml.gz";
/// Largest configuration accepted once decompressed: a bound on what a small compressed value can
/// expand to.
pub const MAX_CONFIG_TEXT: u64 = 64 * 1024 * 1024;

/// Compresses a configuration for the Secret.
pub fn encode_config(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(text.as_bytes());
    encoder.finish().unwrap_or_default()
}

/// Decompresses a configuration from the Secret, refusing corrupt data, non-UTF-8 text and
/// anything that expands beyond [`MAX_CONFIG_TEXT`].
pub fn decode_config(bytes: &[u8]) -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    let mut decoder = flate2::read::GzDecoder::new(bytes).take(MAX_CONFIG_TEXT + 1);
    decoder
        .read_to_string(&mut text)
        .map_err(|e| format!("{CONFIG_KEY} is not gzip-compressed UTF-8 text: {e}"))?;
    if text.len() as u64 > MAX_CONFIG_TEXT {
        return Err(format!("{CONFIG_KEY} expands beyond {MAX_CONFIG_TEXT} bytes"));
    }
    Ok(text)
}

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
        .ok_or_else(|| fail(&format!("the Secret has no {CONFIG_KEY} key")))?;
    let text = decode_config(&bytes.0).map_err(|e| fail(&e))?;
    let manifests = parse_documents(&label, &text).map_err(|e| ConfigErrors(vec![e]))?;
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
                    // A bug in loading must not end the watch (see `watch::Watcher`).
                    let published = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let loaded = load_secret(&source, &secret, config.options());
                        let _ = config.publish(loaded);
                    }));
                    if published.is_err() {
                        tracing::error!("loading the configuration Secret failed unexpectedly; the configuration in force stays");
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_round_trips_through_compression() {
        let text = "apiVersion: v1\nkind: Secret\n".repeat(1000);
        let packed = encode_config(&text);
        assert!(packed.len() < text.len() / 10);
        assert_eq!(decode_config(&packed).unwrap(), text);
    }

    #[test]
    fn corrupt_or_oversized_data_is_refused() {
        assert!(decode_config(b"not gzip").unwrap_err().contains("not gzip"));
        let bomb = encode_config(&"a".repeat(MAX_CONFIG_TEXT as usize + 1));
        assert!(decode_config(&bomb).unwrap_err().contains("expands beyond"));
    }
}
