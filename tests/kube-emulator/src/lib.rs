//! An in-memory Kubernetes API server emulator for tests.
//!
//! It listens on 127.0.0.1 (HTTPS with a generated CA and bearer tokens, or plain HTTP), speaks the
//! Kubernetes REST protocol (discovery, OpenAPI, CRUD, patches, server-side apply, watches, status
//! subresources, finalizers, garbage collection) and validates custom resources with the project's
//! own schema validator, so unmodified clients (kubectl, kube-rs) work against it through the
//! kubeconfig files it writes. See README.md for what it does not emulate.
//!
//! ```no_run
//! let env = agentgate_kube_emulator::harness::TestEnv::start();
//! let out = env.kubectl("admin", &["get", "agentidentities"]);
//! assert!(out.status.success());
//! ```

pub mod admission;
pub mod apply;
pub mod auth;
pub mod discovery;
pub mod error;
pub mod harness;
pub mod kubeconfig;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod rbac;
pub mod resources;
pub mod selectors;
pub mod server;
pub mod status;
pub mod store;
pub mod table;
pub mod tls;
pub mod watch;

pub use auth::User;
pub use error::Error;
pub use server::{Config, Emulator};
