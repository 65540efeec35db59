//! The device copy of a `ParamStore`: params, grads and the AdamW moments as four buffers with the
//! host's flat layout (a view is the same offset on both sides), and the AdamW step on them.

use super::adamw::{adamw_step, decay_ranges, norm_partials_len, STEP_SCALARS};
use super::{Buf, Encoder, Gpu};
use std::sync::atomic::{AtomicBool, Ordering};
use crate::adamw::AdamWConfig;
use crate::error::Result;
use crate::params::ParamStore;

/// The two halves of the state that move between host and device separately: the gradients (the
/// all-reduce moves only them) and the parameters with their AdamW moments.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Roles {
    pub grads: bool,
    pub state: bool,
}

impl Roles {
    pub const NONE: Roles = Roles { grads: false, state: false };
    pub const ALL: Roles = Roles { grads: true, state: true };
    pub const GRADS: Roles = Roles { grads: true, state: false };
}

pub struct DeviceStore {
    pub g: &'static Gpu,
    pub params: Buf,
    pub grads: Buf,
    m: Buf,
    v: Buf,
    /// [norm | lr | 1 - beta1^t | 1 - beta2^t] of the step (see gpu::adamw)
    scalars: Buf,
    partials: Buf,
    /// AdamW ranges (start, len, decay): matrices decay, norm weights do not.
    ranges: Vec<(usize, usize, bool)>,
    /// A zero_grad not yet recorded: the next encoder that touches the gradients clears them first.
    zero_pending: AtomicBool,
}

impl DeviceStore {
    pub fn new(g: &'static Gpu, host: &ParamStore) -> Result<Self> {
        let n = host.params.len();
        let mut d = DeviceStore {
            g,
            params: g.alloc(n)?,
            grads: g.alloc(n)?,
            m: g.alloc(n)?,
            v: g.alloc(n)?,
            scalars: g.alloc(STEP_SCALARS)?,
            partials: g.alloc(norm_partials_len(n))?,
            ranges: decay_ranges(&host.specs),
            zero_pending: AtomicBool::new(false),
        };
        d.upload(host, Roles::ALL)?;
        Ok(d)
    }

    /// (device, host) buffers of these roles: params, m, v for the state, then grads.
    fn pairs<'a>(&'a self, host: &'a ParamStore, roles: Roles) -> Vec<(&'a Buf, &'a Vec<f32>)> {
        let mut v = Vec::new();
        if roles.state {
            v.extend([(&self.params, &host.params), (&self.m, &host.opt.m), (&self.v, &host.opt.v)]);
        }
        if roles.grads {
            v.push((&self.grads, &host.grads));
        }
        v
    }

    /// Replaces these roles of the device copy by the host's: queued writes, which land before the
    /// next submission (no wait).
    pub fn upload(&mut self, host: &ParamStore, roles: Roles) -> Result<()> {
        if roles.grads {
            // The written gradients replace a pending zero_grad, which must not clear them later.
            self.zero_pending.store(false, Ordering::Relaxed);
        }
        for (dev, h) in self.pairs(host, roles) {
            self.g.write(dev, 0, h);
        }
        self.g.check()
    }

    /// Copies these roles into the host store, in one readback.
    pub fn download(&self, host: &mut ParamStore, roles: Roles) -> Result<()> {
        let devs: Vec<&Buf> = self.pairs(host, roles).into_iter().map(|(d, _)| d).collect();
        let mut enc = self.g.encoder();
        self.grads_ready(&mut enc);
        let words = self.g.finish(enc, &devs)?;
        let mut hosts: Vec<&mut Vec<f32>> = Vec::new();
        if roles.state {
            hosts.extend([&mut host.params, &mut host.opt.m, &mut host.opt.v]);
        }
        if roles.grads {
            hosts.push(&mut host.grads);
        }
        for (dst, w) in hosts.into_iter().zip(words) {
            dst.copy_from_slice(bytemuck::cast_slice(&w));
        }
        Ok(())
    }

    /// Zeroes the gradients, recorded into the next encoder that touches them (`grads_ready`): no
    /// submission and no wait of its own.
    pub fn zero_grad(&self) {
        self.zero_pending.store(true, Ordering::Relaxed);
    }

    /// Records the pending zero_grad, if any, into `enc`; every encoder that reads or accumulates
    /// into the gradients calls this before its first use of them.
    pub fn grads_ready(&self, enc: &mut Encoder) {
        if self.zero_pending.swap(false, Ordering::Relaxed) {
            self.g.clear(enc, &self.grads);
        }
    }

    /// AdamW step t on the device, skipped there when the norm is not finite; reads back only the
    /// gradient norm. See `ParamStore::step`.
    pub fn step(&self, opt: &AdamWConfig, t: u64) -> Result<f64> {
        let g = self.g;
        let mut enc = g.encoder();
        self.grads_ready(&mut enc);
        adamw_step(g, &mut enc, &self.params, &self.grads, &self.m, &self.v, &self.scalars, &self.partials, &self.ranges, opt, opt.lr_at(t), t);
        let r = g.finish(enc, &[&self.scalars])?;
        Ok(f32::from_bits(r[0][0]) as f64)
    }
}
