//! Protocols the gateway speaks on behalf of agents. Each turns traffic into policy
//! operations, forwards what is allowed and masks and records what comes back.

pub mod approval;
pub mod http;
pub mod kubernetes;
pub mod postgres;
