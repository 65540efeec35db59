//! moe-core: the Rust core of moe-trainer. CPU kernels (the reference), the MoE block, AdamW.
//! Knows nothing about balance scopes, ranks or domains: per-sequence routing statistics go out,
//! per-sequence router pressure comes in (DESIGN §3).

pub mod adamw;
pub mod cpu;
pub mod error;
pub mod layer;
pub mod moe;
#[cfg(test)]
mod testutil;

pub use adamw::AdamWConfig;
pub use error::{MoeError, Result};
pub use layer::{ForwardOutput, MoeLayer};
pub use moe::{MoeConfig, RoutingStats};
