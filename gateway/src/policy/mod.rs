//! Policy: AccessPolicies compiled into an index at configuration load, and the decision engine
//! every protocol shares. A protocol module describes an [`operation::Operation`]; the index
//! decides it with deny-overrides and says which policy and rule decided.

pub mod glob;
pub mod index;
pub mod operation;
pub mod rule;
pub mod schedule;

pub use index::{Cause, Decision, PolicyIndex, Subject};
pub use operation::{BodyParams, BodyView, HttpOperation, KubernetesOperation, Operation};
