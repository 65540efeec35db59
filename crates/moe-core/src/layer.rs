//! `MoeLayer`: the standalone MoE block (input (T, C) floats), a thin facade over `cpu::layer` and
//! `gpu::layer` chosen by `to_device`. Every input is validated before state is touched; the
//! parameters live in one `Placed` store laid out by `MoeParams::layout`.

use crate::config::MoeConfig;
use crate::cpu::layer::CpuLayer;
use crate::error::{check_finite, check_len, set_checked, MoeError, Result};
use crate::gpu::layer::GpuLayer;
use crate::gpu::Device;
use crate::layout::{Layout, MoeParams, ParamSpec};
use crate::params::ParamStore;
use crate::placed::{Backend, Placed};
use crate::stats::ForwardOutput;

pub struct MoeLayer {
    pub cfg: MoeConfig,
    pub layout: MoeParams<ParamSpec>,
    pub store: Placed,
    backend: Backend<CpuLayer, GpuLayer>,
    /// (B, S) of the stored forward, once one succeeded
    stored: Option<(usize, usize)>,
    /// (E) the router's selection bias; see `set_router_bias`
    router_bias: Vec<f32>,
}

impl MoeLayer {
    /// A layer with weights drawn from N(0, initializer_range²) by a ChaCha8 generator seeded with `cfg.seed`.
    pub fn new(cfg: MoeConfig) -> Result<Self> {
        cfg.validate()?;
        crate::memory::check_layer(&cfg)?;
        let layout = MoeParams::layout(&cfg);
        let store = Placed::new(ParamStore::init(&layout.specs(), cfg.initializer_range, cfg.seed)?);
        let router_bias = vec![0.0; cfg.num_experts];
        Ok(MoeLayer { cfg, layout, store, backend: Backend::Cpu(CpuLayer::default()), stored: None, router_bias })
    }

    /// Moves the layer to `requested` ("auto" | "gpu" | "cpu"; None reads MOE_DEVICE, default auto).
    pub fn to_device(&mut self, requested: Option<&str>) -> Result<Device> {
        let device = crate::gpu::select(requested)?;
        self.store.place(device)?;
        if self.backend.switch(device, || GpuLayer::default()) {
            self.stored = None;
        }
        Ok(device)
    }

    pub fn device(&self) -> Device {
        self.backend.device()
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
        fail::fail_point!("layer.forward");
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
        if self.device() == Device::Cpu {
            crate::memory::check_layer_forward(&self.cfg, t)?;
        }
        let s = t / num_seqs;
        let (cfg, bias) = (&self.cfg, &self.router_bias);
        let r = match &mut self.backend {
            Backend::Cpu(l) => Ok(l.forward(&self.layout.views(&self.store.host.params), cfg, bias, x, mask, num_seqs, s, store)),
            Backend::Gpu(l) => l.forward(self.store.device_copy()?, &self.layout, cfg, bias, x, mask, num_seqs, s, store),
        };
        if store {
            self.stored = r.is_ok().then_some((num_seqs, s));
        }
        r
    }

    /// Backward of the last stored forward. dout (T, C); pressure (B, E) per sequence and expert;
    /// z_scale = beta / T_glob. Returns dx (T, C); accumulates parameter gradients. A stored forward
    /// serves one backward (a second fails with `INVALID_STATE`).
    pub fn backward(&mut self, dout: &[f32], pressure: &[f32], z_scale: f32) -> Result<Vec<f32>> {
        let Some((b, s)) = self.stored else {
            return Err(MoeError::InvalidState("backward needs a forward with store = true since the last backward".into()));
        };
        let (t, c, e) = (b * s, self.cfg.hidden_size, self.cfg.num_experts);
        check_len("dout", dout.len(), t * c)?;
        check_len("pressure", pressure.len(), b * e)?;
        check_finite("dout", dout)?;
        check_finite("pressure", pressure)?;
        if !z_scale.is_finite() {
            return Err(MoeError::NonFinite(format!("z_scale = {z_scale}")));
        }
        let cfg = &self.cfg;
        match &mut self.backend {
            Backend::Cpu(l) => {
                let host = &mut self.store.host;
                let dx = l.backward(&mut self.layout.views_mut(&mut host.grads), &self.layout.views(&host.params), cfg, dout, pressure, z_scale);
                self.stored = None;
                Ok(dx)
            }
            Backend::Gpu(l) => {
                let dx = l.backward(self.store.device_copy()?, &self.layout, cfg, dout, pressure, z_scale)?;
                self.store.device_wrote_grads();
                self.stored = None;
                Ok(dx)
            }
        }
    }
}
