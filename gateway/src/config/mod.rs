//! Configuration: manifests in, one immutable [`GatewayConfig`] snapshot out.
//!
//! The source is a directory of the same YAML manifests a cluster would take (standalone mode) or,
//! later, the operator. Loading is all-or-nothing: any error refuses the whole snapshot, so a gateway
//! never runs half of a change.

pub mod compile;
pub mod kubernetes;
pub mod manifest;
pub mod secrets;
pub mod watch;

use std::fmt;
use std::path::{Path, PathBuf};

pub use compile::{
    CompiledConnection, CompiledIdentity, CompiledPolicy, CompiledRule, GatewayConfig, GatewaySettings,
};
pub use secrets::SecretValue;

/// One configuration problem, located as precisely as known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// File the problem is in.
    pub file: PathBuf,
    /// Line (1-based) of the field, or of the document, when known.
    pub line: Option<usize>,
    /// `Kind namespace/name` of the object, when known.
    pub object: Option<String>,
    /// Field path within the object, when the problem is one field.
    pub path: Option<String>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl ConfigError {
    /// A problem with a file as a whole.
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        Self {
            file: path.to_path_buf(),
            line: None,
            object: None,
            path: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        match &self.path {
            // Schema messages already start with "<path>: ...".
            Some(path) if !self.message.starts_with(path.as_str()) => write!(f, ": {path}: {}", self.message),
            _ => write!(f, ": {}", self.message),
        }
    }
}

/// Every problem found in one load, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where configuration comes from, and which gateway of it to run.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// The manifests directory.
    pub manifests: PathBuf,
    /// Directory of mounted-Secret-style folders (`<dir>/<secret>/<key>`), consulted for Secrets
    /// not given as manifests.
    pub secrets_dir: Option<PathBuf>,
    /// Name of the AgentGateway to run, when the directory declares several.
    pub gateway: Option<String>,
    /// Ports that are taken by the gateway itself (the admin listener), which listeners may not use.
    pub reserved_ports: Vec<u16>,
    /// Secrets that exist but are not given to the gateway, by (namespace, name), with why: a
    /// reference to one fails with that reason instead of "not found" (the operator withholds
    /// Secrets not labelled for gateways).
    pub withheld_secrets: std::collections::BTreeMap<(String, String), String>,
    /// Compiled for pods behind a Service (the operator): a listener on a loopback address could
    /// never be reached there, and is an error.
    pub in_cluster: bool,
    /// Run by the operator, as one of the pods behind a Service: `dpop.nonce: Auto` then
    /// requires nonces.
    pub replicated: bool,
    /// Development mode: its token issuer signs for anyone who asks, so every listener must stay
    /// on loopback, at every reload of the manifests it invites one to edit.
    pub loopback_only: bool,
}

/// Loads, validates and compiles a manifests directory.
pub fn load(options: &LoadOptions) -> Result<GatewayConfig, ConfigErrors> {
    let files = manifest::list_files(&options.manifests).map_err(|e| ConfigErrors(vec![e]))?;
    if files.is_empty() {
        return Err(ConfigErrors(vec![ConfigError::file(
            &options.manifests,
            "no *.yaml or *.yml manifests found",
        )]));
    }
    let mut errors = Vec::new();
    let mut manifests = Vec::new();
    for file in &files {
        match manifest::read_file(file) {
            Ok(docs) => manifests.extend(docs),
            Err(e) => errors.push(e),
        }
    }
    compile_collected(manifests, options, errors)
}

/// Validates and compiles manifests that were read elsewhere (from the API server's compiled
/// configuration Secret, in Kubernetes mode); `options.manifests` is still the base directory for
/// relative paths in them.
pub fn compile_manifests(
    manifests: Vec<manifest::Manifest>,
    options: &LoadOptions,
) -> Result<GatewayConfig, ConfigErrors> {
    compile_collected(manifests, options, Vec::new())
}

fn compile_collected(
    manifests: Vec<manifest::Manifest>,
    options: &LoadOptions,
    mut errors: Vec<ConfigError>,
) -> Result<GatewayConfig, ConfigErrors> {
    let compiled = compile::compile(manifests, options, &mut errors);
    match compiled {
        Some(config) if errors.is_empty() => Ok(config),
        _ => Err(ConfigErrors(errors)),
    }
}
