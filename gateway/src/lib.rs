//! agentgate's data plane: an identity-aware Layer 7 gateway for AI agents and other non-human
//! identities.
//!
//! A request flows through modules named after the concepts of the design: `config` supplies the
//! immutable snapshot every request reads; `identity`, `policy`, `approval`, the protocol modules,
//! `masking` and `recording` follow as the data paths land. `admin` serves health and metrics.

#![forbid(unsafe_code)]

pub mod admin;
pub mod approval;
pub mod cli;
pub mod config;
pub mod dev;
pub mod identity;
pub mod masking;
pub mod metrics;
#[cfg(test)]
pub(crate) mod mutate;
pub mod policy;
pub mod private_dir;
pub mod protocol;
pub mod recording;
