//! Protocol decoders: each translates its wire format into the terms the policy decides on.

pub mod kubernetes;
