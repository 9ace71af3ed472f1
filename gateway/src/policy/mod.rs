//! Policy: AccessPolicies compiled into matchers. The decision engine shared by every protocol
//! builds on these compiled forms.

pub mod glob;
