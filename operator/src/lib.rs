//! The agentgate operator: reconciles `agentgate.dev` resources into gateway configuration and
//! Deployments. This release ships the CRD generator; the controllers follow.

use std::path::Path;

pub use agentgate_crds::generate;

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
