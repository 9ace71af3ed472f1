//! The one error type of the emulator's own operations (starting, writing kubeconfigs). Errors a client
//! sees travel as Kubernetes `Status` objects instead, see [`crate::status`].

/// Why the emulator could not start or prepare its files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the listener, writing a kubeconfig, starting the runtime.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Generating the CA or the serving certificate.
    #[error("certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    /// Building the TLS configuration.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// A CRD given at start-up was refused, with the API server's message.
    #[error("CRD refused: {0}")]
    Crd(String),
    /// A CRD or manifest file could not be parsed.
    #[error("parsing {file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// What went wrong.
        message: String,
    },
}
