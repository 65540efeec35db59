//! Parameters, gradients and AdamW moments where they live: a host `ParamStore`, plus a device copy
//! when the owner (model or layer) runs on the GPU. Which copy is newer is tracked per role; a role
//! crosses only when the other side asks for it, so on the GPU parameters leave the device only for
//! checkpoints and parameter I/O, and an all-reduce moves the gradients alone.

use crate::adamw::AdamWConfig;
use crate::error::{MoeError, Result};
use crate::gpu::store::{DeviceStore, Roles};
use crate::gpu::Device;
use crate::params::ParamStore;

pub struct Placed {
    /// The host copy; read it directly only after `sync` (or through `host`).
    pub(crate) host: ParamStore,
    dev: Option<DeviceStore>,
    /// newer on the device (after a backward or a step) / on the host (after a write)
    device_newer: Roles,
    host_newer: Roles,
}

impl Placed {
    pub fn new(host: ParamStore) -> Self {
        Placed { host, dev: None, device_newer: Roles::NONE, host_newer: Roles::NONE }
    }

    /// Moves the state to `device`: uploads it all, or brings it all back and drops the device copy.
    pub fn place(&mut self, device: Device) -> Result<()> {
        match (device, &self.dev) {
            (Device::Gpu, None) => self.dev = Some(DeviceStore::new(crate::gpu::gpu()?, &self.host)?),
            (Device::Cpu, Some(_)) => {
                self.sync()?;
                self.dev = None;
            }
            _ => return Ok(()),
        }
        (self.device_newer, self.host_newer) = (Roles::NONE, Roles::NONE);
        Ok(())
    }

    /// Optimiser steps taken (kept on the host on either device).
    pub fn steps(&self) -> u64 {
        self.host.opt.step
    }

    pub fn device(&self) -> Device {
        if self.dev.is_some() { Device::Gpu } else { Device::Cpu }
    }

    /// The host copy, brought up to date.
    pub fn host(&mut self) -> Result<&ParamStore> {
        self.sync()?;
        Ok(&self.host)
    }

    /// The host copy for writing; the device copy is replaced by it before the next device op.
    pub fn host_mut(&mut self) -> Result<&mut ParamStore> {
        self.sync()?;
        self.replaced();
        Ok(&mut self.host)
    }

    /// Marks the whole host copy as newer (it was rewritten, e.g. by a checkpoint load).
    pub(crate) fn replaced(&mut self) {
        (self.device_newer, self.host_newer) = (Roles::NONE, if self.dev.is_some() { Roles::ALL } else { Roles::NONE });
    }

    /// The gradients alone (what an all-reduce reads).
    pub fn grads(&mut self) -> Result<&[f32]> {
        self.download(Roles::GRADS)?;
        Ok(&self.host.grads)
    }

    /// Replaces the gradients (e.g. by their all-reduced sum); only they go back to the device.
    pub fn set_grads(&mut self, data: &[f32]) -> Result<()> {
        self.host.set_grads(data)?;
        if self.dev.is_some() {
            (self.device_newer.grads, self.host_newer.grads) = (false, true);
        }
        Ok(())
    }

    /// Brings the whole host copy up to date (a no-op on the CPU).
    pub fn sync(&mut self) -> Result<()> {
        self.download(Roles::ALL)
    }

    fn download(&mut self, want: Roles) -> Result<()> {
        let roles = Roles { grads: want.grads && self.device_newer.grads, state: want.state && self.device_newer.state };
        if let (Some(d), true) = (&self.dev, roles != Roles::NONE) {
            d.download(&mut self.host, roles)?;
            self.device_newer.grads &= !roles.grads;
            self.device_newer.state &= !roles.state;
        }
        Ok(())
    }

    /// The device copy brought up to date, for a device op of a model or layer on the GPU.
    pub(crate) fn device_copy(&mut self) -> Result<&DeviceStore> {
        self.on_device()?.ok_or_else(|| MoeError::Internal("a GPU op on state that lives on the host".into()))
    }

    /// The device copy brought up to date; None on the CPU.
    fn on_device(&mut self) -> Result<Option<&DeviceStore>> {
        if let (Some(d), true) = (&mut self.dev, self.host_newer != Roles::NONE) {
            d.upload(&self.host, self.host_newer)?;
            self.host_newer = Roles::NONE;
        }
        Ok(self.dev.as_ref())
    }

    /// Records that a device op (a backward) wrote the device's gradients.
    pub(crate) fn device_wrote_grads(&mut self) {
        self.device_newer.grads = true;
    }

    /// One AdamW step on the accumulated gradients; see `ParamStore::step`. On the GPU only the
    /// gradient norm comes back; a non-finite norm leaves everything untouched on either device.
    pub fn step(&mut self, opt: &AdamWConfig) -> Result<f64> {
        opt.validate()?;
        let t = self.host.opt.step + 1;
        let Some(d) = self.on_device()? else { return self.host.step(opt) };
        let norm = d.step(opt, t)?;
        if !norm.is_finite() {
            return Err(MoeError::NonFinite(format!("gradient norm is {norm}")));
        }
        self.host.opt.step = t;
        self.device_newer.state = true;
        Ok(norm)
    }

    /// Zeroes the gradients. On the GPU only the device copy is zeroed (with the next device work,
    /// see `DeviceStore::zero_grad`); the host copy, now stale, is read back only if asked for.
    pub fn zero_grad(&mut self) -> Result<()> {
        match &self.dev {
            Some(d) => {
                d.zero_grad();
                (self.device_newer.grads, self.host_newer.grads) = (true, false);
            }
            None => self.host.zero_grad(),
        }
        Ok(())
    }
}

/// The implementation that holds a model's or layer's activations: the CPU one or the GPU one.
pub enum Backend<C, G> {
    Cpu(C),
    Gpu(G),
}

impl<C: Default, G> Backend<C, G> {
    pub fn device(&self) -> Device {
        match self {
            Backend::Cpu(_) => Device::Cpu,
            Backend::Gpu(_) => Device::Gpu,
        }
    }

    /// Replaces the implementation by a fresh one on `device` unless it is already there; true when
    /// it changed (the stored forward is then gone).
    pub fn switch(&mut self, device: Device, gpu: impl FnOnce() -> G) -> bool {
        if device == self.device() {
            return false;
        }
        *self = match device {
            Device::Gpu => Backend::Gpu(gpu()),
            Device::Cpu => Backend::Cpu(C::default()),
        };
        true
    }
}
