//! The standalone MoE layer (input (T, C) floats): one `ParamStore` (params, grads, AdamW moments
//! as flat buffers), every input validated before state is touched, and the activations of the
//! last stored forward kept for its backward. On the GPU, as `Model`.

use crate::error::{check_finite, check_len, set_checked, MoeError, Result};
use crate::gpu::layer::GpuLayer;
use crate::gpu::Device;
use crate::placed::Placed;
use crate::moe::*;
use crate::params::{ParamStore, SpecBuilder};

/// The layer on the CPU or the GPU: `store` holds parameters, gradients and moments where they
/// live (see `Placed`), `gpu` the device activations when on the GPU.
pub struct MoeLayer {
    pub cfg: MoeConfig,
    pub store: Placed,
    acts: MoeActs,
    /// (B, S) of the stored forward, once one succeeded
    stored: Option<(usize, usize)>,
    gpu: Option<GpuLayer>,
    /// (E) the router's selection bias; see `set_router_bias`
    router_bias: Vec<f32>,
}

/// What a forward returns: the output (T, C) and the per-sequence routing statistics.
pub struct ForwardOutput {
    pub out: Vec<f32>,
    pub stats: RoutingStats,
}

impl MoeLayer {
    /// A layer with weights drawn from N(0, initializer_range²) by a ChaCha8 generator seeded with `cfg.seed`.
    pub fn new(cfg: MoeConfig) -> Result<Self> {
        cfg.validate()?;
        let mut sb = SpecBuilder::new();
        moe_param_specs(&mut sb, &cfg, "");
        let store = Placed::new(ParamStore::init(sb.specs, cfg.initializer_range, cfg.seed)?);
        let router_bias = vec![0.0; cfg.num_experts];
        Ok(MoeLayer { cfg, store, acts: MoeActs::default(), stored: None, gpu: None, router_bias })
    }

    /// Moves the layer to `requested` ("auto" | "gpu" | "cpu"; None reads MOE_DEVICE, default auto).
    pub fn to_device(&mut self, requested: Option<&str>) -> Result<Device> {
        let device = crate::gpu::select(requested)?;
        self.store.place(device)?;
        if device != self.device() {
            self.gpu = (device == Device::Gpu).then(GpuLayer::default);
            self.stored = None;
        }
        Ok(device)
    }

    pub fn device(&self) -> Device {
        if self.gpu.is_some() { Device::Gpu } else { Device::Cpu }
    }

    /// The router's selection bias (E), zero by default.
    pub fn router_bias(&self) -> &[f32] {
        &self.router_bias
    }

    /// Sets the router's selection bias (E); see `Model::set_router_bias`.
    pub fn set_router_bias(&mut self, bias: &[f32]) -> Result<()> {
        set_checked("router bias", &mut self.router_bias, bias)
    }

    /// Forward on `num_seqs` sequences of equal length packed in x (T, C). mask (T): 1 = valid token
    /// (all valid when absent). With `store` the activations are kept for `backward`; without, the
    /// stored ones are left exactly as they were (statistics-only / evaluation forwards).
    pub fn forward(&mut self, x: &[f32], mask: Option<&[u8]>, num_seqs: usize, store: bool) -> Result<ForwardOutput> {
        let c = self.cfg.hidden_size;
        if num_seqs == 0 || x.is_empty() || !x.len().is_multiple_of(num_seqs * c) {
            return Err(MoeError::ShapeMismatch(format!(
                "input of {} values is not {num_seqs} sequences of whole tokens of hidden_size {c}",
                x.len()
            )));
        }
        let t = x.len() / c;
        let ones;
        let mask = match mask {
            Some(m) => {
                check_len("mask", m.len(), t)?;
                m
            }
            None => {
                ones = vec![1u8; t];
                &ones
            }
        };
        check_finite("input", x)?;
        let s = t / num_seqs;
        if let (Some(gl), Some(dev)) = (&mut self.gpu, self.store.on_device()?) {
            let r = gl.forward(dev, &self.cfg, &self.router_bias, x, mask, num_seqs, s, store);
            if store {
                self.stored = r.is_ok().then_some((num_seqs, s));
            }
            return r;
        }
        let mut out = ForwardOutput { out: vec![0.0; t * c], stats: RoutingStats::default() };
        let wt = MoeWeights::split(&self.store.host.params, &self.cfg);
        let mut scratch;
        let acts = if store {
            &mut self.acts
        } else {
            scratch = MoeActs::default();
            &mut scratch
        };
        crate::cpu::pool().install(|| {
            moe_forward(&mut out.out, &mut out.stats, acts, x, mask, &self.router_bias, &wt, &self.cfg, num_seqs, s)
        });
        if store {
            self.stored = Some((num_seqs, s));
        }
        Ok(out)
    }

    /// Backward of the last stored forward. dout (T, C); pressure (B, E) per sequence and expert;
    /// z_scale = beta / T_glob. Returns dx (T, C); accumulates parameter gradients.
    pub fn backward(&mut self, dout: &[f32], pressure: &[f32], z_scale: f32) -> Result<Vec<f32>> {
        let Some((b, s)) = self.stored else {
            return Err(MoeError::InvalidState("backward needs a forward with store = true first".into()));
        };
        let (t, c, e) = (b * s, self.cfg.hidden_size, self.cfg.num_experts);
        check_len("dout", dout.len(), t * c)?;
        check_len("pressure", pressure.len(), b * e)?;
        check_finite("dout", dout)?;
        check_finite("pressure", pressure)?;
        if !z_scale.is_finite() {
            return Err(MoeError::NonFinite(format!("z_scale = {z_scale}")));
        }
        if let (Some(gl), Some(dev)) = (&mut self.gpu, self.store.on_device()?) {
            let dx = gl.backward(dev, &self.cfg, dout, pressure, z_scale)?;
            self.store.device_wrote_grads();
            return Ok(dx);
        }
        let mut dx = vec![0.0; t * c];
        let host = &mut self.store.host;
        let wt = MoeWeights::split(&host.params, &self.cfg);
        let mut grads = MoeGrads::split(&mut host.grads, &self.cfg);
        let acts = &mut self.acts;
        let cfg = &self.cfg;
        crate::cpu::pool().install(|| moe_backward(&mut dx, &mut grads, acts, dout, pressure, z_scale, &wt, cfg));
        Ok(dx)
    }
}
