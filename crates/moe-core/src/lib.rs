//! moe-core: the Rust core of moe-trainer. CPU kernels (the reference), WGSL kernels on wgpu, the
//! MoE block, the Qwen3-MoE model, AdamW and checkpoints.
//! Knows nothing about balance scopes, ranks or domains: per-sequence routing statistics go out,
//! per-sequence router pressure comes in (DESIGN §3).
//!
//! Layout: `layout` names every parameter tensor; `model` and `layer` are facades over the CPU
//! (`cpu/`) and GPU (`gpu/`) implementations; `placed` keeps parameters on the host and the device.

pub mod adamw;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod error;
pub mod folder;
pub mod generate;
pub mod hf;
pub mod gpu;
pub mod layer;
pub mod layout;
pub mod memory;
pub mod model;
pub mod params;
pub mod placed;
pub mod stats;
#[cfg(test)]
mod testutil;

pub use adamw::AdamWConfig;
pub use config::{ModelConfig, MoeConfig, Precision, Recompute};
pub use error::{MoeError, Result};
pub use layer::MoeLayer;
pub use model::Model;
pub use stats::{ForwardOutput, ModelStats, RoutingStats};
