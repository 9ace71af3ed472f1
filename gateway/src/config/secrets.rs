//! Secrets in standalone mode: `Secret` manifests, or mounted-Secret-style directories.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ConfigError;
use super::manifest::Manifest;

/// Largest secret value read from a file.
pub const MAX_SECRET_BYTES: u64 = 1024 * 1024;

/// Secret material. Its `Debug` and `Display` never show the bytes, so it cannot leak through a log
/// line or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    /// Wraps bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The secret bytes; call only where they are put on the wire.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// Wiped when dropped, so a configuration replaced by a reload leaves its stored credentials
// out of freed memory (a core dump, a later allocation). Copies made to use a secret (a header
// value, a SCRAM exchange) are short-lived and not wiped.
impl Drop for SecretValue {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl zeroize::ZeroizeOnDrop for SecretValue {}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(<{} bytes redacted>)", self.0.len())
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Secrets by (namespace, name), each a map of keys to values.
#[derive(Debug, Default)]
pub struct SecretStore {
    manifests: BTreeMap<(String, String), BTreeMap<String, SecretValue>>,
    dir: Option<PathBuf>,
    /// (namespace, name, key) of every manifest value looked up: what a configuration needs, so
    /// that the operator publishes those keys and nothing else of a Secret.
    used: std::sync::Mutex<BTreeSet<(String, String, String)>>,
    /// See [`super::LoadOptions::withheld_secrets`].
    withheld: BTreeMap<(String, String), String>,
    /// The origins each annotated Secret manifest may be sent to
    /// ([`agentgate_crds::CREDENTIAL_ENDPOINTS_ANNOTATION`]).
    bound: BTreeMap<(String, String), Vec<Origin>>,
    /// SHA-256 of every file read from the secrets directory, by path: part of the configuration's
    /// source, so a rotated key or credential is a new configuration, not the one already in force.
    files_read: std::sync::Mutex<BTreeMap<PathBuf, [u8; 32]>>,
}

impl SecretStore {
    /// A store backed by an optional secrets directory.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            manifests: BTreeMap::new(),
            dir,
            used: Default::default(),
            withheld: BTreeMap::new(),
            bound: BTreeMap::new(),
            files_read: Default::default(),
        }
    }

    /// Answers a lookup of one of `withheld` with its reason (see
    /// [`super::LoadOptions::withheld_secrets`]).
    pub fn withholding(mut self, withheld: BTreeMap<(String, String), String>) -> Self {
        self.withheld = withheld;
        self
    }

    /// Adds a `v1 Secret` manifest, decoding `data` (base64) and `stringData`.
    pub fn add_manifest(&mut self, m: &Manifest, errors: &mut Vec<ConfigError>) {
        let mut values = BTreeMap::new();
        let known = [
            "apiVersion",
            "kind",
            "metadata",
            "data",
            "stringData",
            "type",
            "immutable",
        ];
        if let Some(obj) = m.value.as_object() {
            for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
                errors.push(m.error(key, format!("unknown field \"{key}\"")));
            }
        }
        if let Some(data) = m.value.get("data") {
            match data.as_object() {
                Some(map) => {
                    for (k, v) in map {
                        let path = format!("data.{k}");
                        match v.as_str().map(decode_base64) {
                            Some(Some(bytes)) => {
                                values.insert(k.clone(), SecretValue::new(bytes));
                            }
                            // Say what is wrong without echoing the value: it is meant to be secret.
                            _ => errors
                                .push(m.error(&path, "Invalid value: data values must be base64 strings")),
                        }
                    }
                }
                None => errors.push(m.error("data", "Invalid value: must be a map of key to base64 value")),
            }
        }
        if let Some(data) = m.value.get("stringData") {
            match data.as_object() {
                Some(map) => {
                    for (k, v) in map {
                        match v.as_str() {
                            Some(s) => {
                                values.insert(k.clone(), SecretValue::new(s.as_bytes().to_vec()));
                            }
                            None => errors
                                .push(m.error(&format!("stringData.{k}"), "Invalid value: must be a string")),
                        }
                    }
                }
                None => errors.push(m.error("stringData", "Invalid value: must be a map of key to string")),
            }
        }
        let key = (m.namespace().to_string(), m.name().to_string());
        let annotation = m
            .value
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(agentgate_crds::CREDENTIAL_ENDPOINTS_ANNOTATION));
        if let Some(annotation) = annotation {
            let path = format!(
                "metadata.annotations[{}]",
                agentgate_crds::CREDENTIAL_ENDPOINTS_ANNOTATION
            );
            match annotation.as_str().map(parse_origins) {
                Some(Ok(origins)) => {
                    self.bound.insert(key.clone(), origins);
                }
                Some(Err(e)) => errors.push(m.error(&path, format!("Invalid value: {e}"))),
                None => errors.push(m.error(&path, "Invalid value: must be a string")),
            }
        }
        self.manifests.insert(key, values);
    }

    /// The origins a Secret manifest may be sent to, when its owner bound it to some.
    pub fn bound_origins(&self, namespace: &str, name: &str) -> Option<&[Origin]> {
        self.bound
            .get(&(namespace.to_string(), name.to_string()))
            .map(Vec::as_slice)
    }

    /// Path and SHA-256 of every secrets-directory file read so far.
    pub fn files_read(&self) -> BTreeMap<PathBuf, [u8; 32]> {
        self.files_read.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The (namespace, name, key) of every Secret manifest value looked up so far.
    pub fn used(&self) -> BTreeSet<(String, String, String)> {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a Secret manifest of that name exists.
    pub fn has_manifest(&self, namespace: &str, name: &str) -> bool {
        self.manifests
            .contains_key(&(namespace.to_string(), name.to_string()))
    }

    /// Looks a key up: first in Secret manifests, then in `<dir>/<name>/<key>`.
    pub fn get(&self, namespace: &str, name: &str, key: &str) -> Result<SecretValue, String> {
        if let Some(values) = self.manifests.get(&(namespace.to_string(), name.to_string())) {
            if values.contains_key(key) {
                self.used.lock().unwrap_or_else(|p| p.into_inner()).insert((
                    namespace.to_string(),
                    name.to_string(),
                    key.to_string(),
                ));
            }
            return values.get(key).cloned().ok_or_else(|| {
                let keys: Vec<&str> = values.keys().map(String::as_str).collect();
                format!("Secret {namespace}/{name} has no key {key:?} (it has {keys:?})")
            });
        }
        if let Some(why) = self.withheld.get(&(namespace.to_string(), name.to_string())) {
            return Err(format!("Secret {namespace}/{name} {why}"));
        }
        if let Some(dir) = &self.dir {
            let path = dir.join(name).join(key);
            if is_safe_component(name) && is_safe_component(key) && path.is_file() {
                let bytes = read_limited(&path)?;
                let digest: [u8; 32] = Sha256::digest(&bytes).into();
                self.files_read
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(path, digest);
                return Ok(SecretValue::new(bytes));
            }
        }
        Err(match &self.dir {
            Some(dir) => format!(
                "Secret {namespace}/{name} not found: no Secret manifest and no file {}",
                dir.join(name).join(key).display()
            ),
            None => format!("Secret {namespace}/{name} not found: no Secret manifest (and no --secrets-dir)"),
        })
    }
}

/// Where a credential may go: scheme, host and port of an endpoint, compared as a URL origin
/// (the host without case; `postgresql` is `postgres`; default ports filled in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    scheme: &'static str,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of a parsed endpoint.
    pub fn of(endpoint: &super::compile::Endpoint) -> Self {
        Self {
            scheme: match endpoint.scheme.as_str() {
                "https" => "https",
                "http" => "http",
                _ => "postgres",
            },
            host: endpoint.host.to_ascii_lowercase(),
            port: endpoint.port,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

/// Parses the credential-endpoints annotation: origins separated by commas or white space.
fn parse_origins(text: &str) -> Result<Vec<Origin>, String> {
    let mut out = Vec::new();
    for item in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        // Quoted without any user:password a careless origin might carry.
        let shown = super::compile::without_userinfo(item);
        let endpoint = super::compile::parse_endpoint(item).map_err(|e| format!("{shown:?}: {e}"))?;
        if !matches!(endpoint.path.as_str(), "" | "/") {
            return Err(format!(
                "{shown:?}: name an origin (scheme://host[:port]) without a path: a credential is bound to a server, not to part of it"
            ));
        }
        out.push(Origin::of(&endpoint));
    }
    if out.is_empty() {
        return Err("name at least one origin (scheme://host[:port]); remove the annotation to leave the Secret unbound".into());
    }
    Ok(out)
}

fn is_safe_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\\')
}

fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    read_regular_file(path, MAX_SECRET_BYTES).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a regular file of at most `max` bytes. Anything else (a FIFO would block the loader for
/// good, a device or `/proc` file reports no size) is refused, and the cap holds while reading, so
/// a file that grows after the check is not read whole. It is checked by name first (so no
/// device is ever opened, which for some has effects), then opened without blocking and checked
/// again through its handle, so a FIFO swapped in between cannot hang the open.
pub(crate) fn read_regular_file(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    if !std::fs::metadata(path)
        .map_err(|e| format!("cannot read file: {e}"))?
        .is_file()
    {
        return Err("not a regular file".into());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot read file: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read file: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > max {
        return Err(format!("file is larger than {max} bytes"));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read file: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("file is larger than {max} bytes"));
    }
    Ok(bytes)
}

/// Standard base64 with padding, as Kubernetes writes Secret data. Whitespace is not allowed.
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i == bytes.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Secret values are wiped when dropped (a compile-time check: `ZeroizeOnDrop` is only
    /// claimed beside the `Drop` that wipes), and never shown by `Debug` or `Display`.
    #[test]
    fn secret_values_are_wiped_on_drop_and_never_shown() {
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<SecretValue>();
        let v = SecretValue::new(b"hunter2-password".to_vec());
        assert!(!format!("{v:?} {v}").contains("hunter2"));
        assert_eq!(v.clone().expose(), b"hunter2-password");
    }

    #[test]
    fn base64_round_trips_known_vectors() {
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(decode_base64("Zg==").unwrap(), b"f");
        assert_eq!(decode_base64("Zm8=").unwrap(), b"fo");
        assert_eq!(decode_base64("Zm9v").unwrap(), b"foo");
        assert_eq!(decode_base64("c2VjcmV0LXRva2Vu").unwrap(), b"secret-token");
        for bad in ["Zg", "Zg=a", "Z===", "Zm9v\n", "Zm9*"] {
            assert!(decode_base64(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn secret_values_never_print() {
        let s = SecretValue::new(b"hunter2".to_vec());
        assert_eq!(format!("{s}"), "<redacted>");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    /// A rotated file is a new configuration source: without it, a reload that reads the new key
    /// hashes like the one in force and is never published (the old key stays trusted).
    #[test]
    fn a_rotated_secrets_dir_file_changes_the_configuration_source() {
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("manifests");
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(secrets.join("okta")).unwrap();
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::write(
            manifests.join("all.yaml"),
            "apiVersion: agentgate.dev/v1alpha1\nkind: AgentGateway\nmetadata: {name: gw, namespace: ns}\n\
             spec:\n  listeners: [{name: http, protocol: HTTP, port: 18080, address: 127.0.0.1}]\n---\n\
             apiVersion: agentgate.dev/v1alpha1\nkind: Connection\nmetadata: {name: okta, namespace: ns}\n\
             spec: {gatewayRef: {name: gw}, type: HTTP, endpoint: 'https://okta.example', route: {pathPrefix: /okta}, \
             credentials: {scheme: SSWS, secretRef: {name: okta, key: token}}}\n",
        )
        .unwrap();
        let options = crate::config::LoadOptions {
            manifests,
            secrets_dir: Some(secrets.clone()),
            ..Default::default()
        };
        std::fs::write(secrets.join("okta").join("token"), "old-token").unwrap();
        let before = crate::config::load(&options).unwrap();
        assert_eq!(
            crate::config::load(&options).unwrap().source_hash,
            before.source_hash
        );
        std::fs::write(secrets.join("okta").join("token"), "new-token").unwrap();
        let after = crate::config::load(&options).unwrap();
        assert_ne!(after.source_hash, before.source_hash);
    }

    #[test]
    fn secrets_dir_layout_is_read_and_traversal_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("okta")).unwrap();
        std::fs::write(dir.path().join("okta").join("token"), "abc").unwrap();
        let store = SecretStore::new(Some(dir.path().to_path_buf()));
        assert_eq!(store.get("default", "okta", "token").unwrap().expose(), b"abc");
        assert!(store.get("default", "okta", "missing").is_err());
        assert!(store.get("default", "..", "token").is_err());
    }
}
