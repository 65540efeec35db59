//! moe-core: the Rust core of moe-trainer. CPU kernels (the reference), WGSL kernels on wgpu, the
//! MoE block, AdamW.
//! Knows nothing about balance scopes, ranks or domains: per-sequence routing statistics go out,
//! per-sequence router pressure comes in (DESIGN §3).

pub mod adamw;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod error;
pub mod generate;
pub mod gpu;
pub mod layer;
pub mod model;
pub mod moe;
pub mod params;
pub mod placed;
#[cfg(test)]
mod testutil;

pub use adamw::AdamWConfig;
pub use error::{MoeError, Result};
pub use layer::{ForwardOutput, MoeLayer};
pub use config::ModelConfig;
pub use model::{Model, ModelStats};
pub use moe::{MoeConfig, RoutingStats};
