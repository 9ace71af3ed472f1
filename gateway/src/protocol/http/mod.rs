//! HTTP and the Kubernetes API through the gateway: listeners, request normalization, the
//! proxy's decision path, credential injection, response masking and recording.

pub mod body;
pub mod headers;
pub mod method_override;
pub mod normalize;
pub mod params;
pub mod plane;
pub mod problem;
pub mod proxy;
pub mod response;
pub mod scrub;
pub mod server;
pub mod tls;
pub mod upstream;

pub use plane::Gateway;
