//! The GPU backend: WGSL compute kernels run through wgpu, each op beside its CPU reference in
//! `cpu/` (same name, same argument order, tested against it in `gpu/tests.rs`).
//!
//! One process-wide device (dropping a wgpu device at exit deadlocks on NVIDIA Linux, wgpu#8365, so
//! it lives in a static and is never dropped). Every kernel binds its `Params` uniform at binding 0
//! (a `#[repr(C)]` bytemuck struct in the op's .rs file, field for field the WGSL one in `shaders/`)
//! and its storage buffers at 1.., in the order of its WGSL declarations. Pipelines are cached by
//! (shader, entry point, `override` constants); bind groups by (pipeline, buffers, parameter bytes),
//! so a training step whose buffers persist builds none after its first step.
//!
//! Adapter choice (`Device` / `MOE_DEVICE`): `auto` takes a real GPU and otherwise the CPU, `gpu`
//! requires a GPU, `cpu` never touches wgpu. A software adapter (Mesa lavapipe) is opened only with
//! `MOE_GPU_ADAPTER=software`, and then only for `gpu`, never for `auto`: that is how CI runs the
//! kernels without a GPU while everything else stays on the fast CPU path.

pub mod adamw;
pub mod attention;
pub mod crossentropy;
pub mod embedding;
pub mod experts;
pub mod layer;
pub mod matmul;
pub mod model;
pub mod moe;
pub mod rmsnorm;
pub mod rope;
pub mod router;
pub mod store;

use crate::error::{MoeError, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Gpu,
}

/// Resolves a requested device ("auto" | "gpu" | "cpu"; None reads `MOE_DEVICE`, default "auto").
/// `auto` without a usable GPU falls back to the CPU and says so once on stderr.
pub fn select(requested: Option<&str>) -> Result<Device> {
    let env = std::env::var("MOE_DEVICE").ok();
    match requested.or(env.as_deref()).unwrap_or("auto") {
        "cpu" => Ok(Device::Cpu),
        "gpu" => gpu().map(|_| Device::Gpu),
        // A software adapter is a test vehicle, never an automatic choice.
        "auto" => match gpu().and_then(|g| match g.info.device_type {
            wgpu::DeviceType::Cpu => Err(MoeError::NoDevice(format!("{} is a software adapter", g.info.name))),
            _ => Ok(g),
        }) {
            Ok(_) => Ok(Device::Gpu),
            Err(e) => {
                static NOTICE: std::sync::Once = std::sync::Once::new();
                NOTICE.call_once(|| eprintln!("moe-trainer: device 'auto' runs on the CPU ({e})"));
                Ok(Device::Cpu)
            }
        },
        other => Err(MoeError::InvalidConfig(format!("device must be 'auto', 'gpu' or 'cpu', got '{other}'"))),
    }
}

/// The process-wide GPU, opened on first use. The error (no adapter, device request refused) is
/// remembered too: the answer does not change within a process.
pub fn gpu() -> Result<&'static Gpu> {
    static GPU: OnceLock<std::result::Result<Gpu, String>> = OnceLock::new();
    let opened = GPU.get_or_init(|| {
        Gpu::open().map_err(|e| match e {
            MoeError::NoDevice(m) => m,
            other => other.to_string(),
        })
    });
    opened.as_ref().map_err(|e| MoeError::NoDevice(e.clone()))
}

/// One WGSL entry point: its source (one file per op, forward and backward side by side) and name.
pub struct Kernel {
    pub src: &'static str,
    pub entry: &'static str,
}

/// A device buffer of `len` 4-byte elements (f32 or u32). Its storage comes from the pool and goes
/// back to it on drop.
pub struct Buf {
    raw: wgpu::Buffer,
    pub len: usize,
    id: u64,
}

impl Drop for Buf {
    fn drop(&mut self) {
        if let Ok(g) = gpu() {
            g.pool.lock().unwrap().entry(self.raw.size()).or_default().push(self.raw.clone());
        }
    }
}

/// What this thread has asked of the device so far; tests subtract two snapshots to count what one
/// call costs (dispatches recorded, compute passes begun, command submissions, blocking waits, buffer
/// maps, bind groups and staging buffers created).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub dispatches: u64,
    pub passes: u64,
    pub submits: u64,
    pub waits: u64,
    pub readbacks: u64,
    pub bind_groups: u64,
    pub staging_buffers: u64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        Counters {
            dispatches: self.dispatches - o.dispatches,
            passes: self.passes - o.passes,
            submits: self.submits - o.submits,
            waits: self.waits - o.waits,
            readbacks: self.readbacks - o.readbacks,
            bind_groups: self.bind_groups - o.bind_groups,
            staging_buffers: self.staging_buffers - o.staging_buffers,
        }
    }
}

thread_local! {
    static COUNTERS: std::cell::Cell<Counters> = const { std::cell::Cell::new(Counters {
        dispatches: 0, passes: 0, submits: 0, waits: 0, readbacks: 0, bind_groups: 0, staging_buffers: 0,
    }) };
}

fn count(f: impl FnOnce(&mut Counters)) {
    COUNTERS.with(|c| {
        let mut v = c.get();
        f(&mut v);
        c.set(v);
    });
}

/// (shader address, entry point, override constants as (name, f64 bits)).
type PipelineKey = (usize, &'static str, Vec<(&'static str, u64)>);
/// (pipeline address, buffer ids, parameter bytes): auto-derived layouts differ per pipeline.
type BindKey = (usize, Vec<u64>, Vec<u8>);

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    pub cooperative_matrix: Vec<wgpu::wgt::CooperativeMatrixProperties>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    binds: Mutex<HashMap<BindKey, Arc<wgpu::BindGroup>>>,
    pool: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    /// The first uncaptured wgpu error, or the device's loss (which replaces any other: errors of
    /// calls on a lost device are its consequences), reported by the next `finish`.
    fault: Arc<Mutex<Option<MoeError>>>,
}

/// Bind groups kept at most; beyond it the cache starts afresh (it also keeps pooled buffers alive).
const BIND_CACHE_MAX: usize = 4096;

fn pick_adapter(software: bool) -> Result<wgpu::Adapter> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY)));
    let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu | wgpu::DeviceType::Other => 2,
        wgpu::DeviceType::Cpu if software => 3,
        wgpu::DeviceType::Cpu => 9,
    };
    let names: Vec<String> = adapters.iter().map(|a| format!("{} ({:?})", a.get_info().name, a.get_info().device_type)).collect();
    adapters.into_iter().filter(|a| rank(a) < 9).min_by_key(rank).ok_or_else(|| {
        MoeError::NoDevice(format!(
            "no hardware adapter among [{}]; software adapters are used only with MOE_GPU_ADAPTER=software",
            names.join(", ")
        ))
    })
}

impl Gpu {
    fn open() -> Result<Gpu> {
        let software = std::env::var("MOE_GPU_ADAPTER").is_ok_and(|v| v == "software");
        let adapter = pick_adapter(software)?;
        // Ask for the adapter's own limits: the WebGPU defaults cap bindings at 128 MiB.
        let limits = adapter.limits();
        let features = adapter.features() & (wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("moe-trainer"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| MoeError::NoDevice(format!("{}: {e}", adapter.get_info().name)))?;
        let fault: Arc<Mutex<Option<MoeError>>> = Arc::default();
        let f = fault.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let err = match e {
                wgpu::Error::OutOfMemory { .. } => MoeError::OutOfMemory(e.to_string()),
                _ => MoeError::Internal(format!("wgpu: {e}")),
            };
            f.lock().unwrap().get_or_insert(err);
        }));
        let f = fault.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *f.lock().unwrap() = Some(MoeError::DeviceLost(format!("{reason:?}: {msg}")));
        });
        Ok(Gpu {
            info: adapter.get_info(),
            cooperative_matrix: adapter.cooperative_matrix_properties(),
            features,
            limits,
            device,
            queue,
            pipelines: Mutex::default(),
            binds: Mutex::default(),
            pool: Mutex::default(),
            fault,
        })
    }

    /// Fails with the first recorded device error (loss, out of memory, validation), if any.
    pub fn check(&self) -> Result<()> {
        match self.fault.lock().unwrap().as_ref() {
            Some(MoeError::DeviceLost(m)) => Err(MoeError::DeviceLost(m.clone())),
            Some(MoeError::OutOfMemory(m)) => Err(MoeError::OutOfMemory(m.clone())),
            Some(MoeError::Internal(m)) => Err(MoeError::Internal(m.clone())),
            Some(e) => Err(MoeError::Internal(e.to_string())),
            None => Ok(()),
        }
    }

    /// A buffer of n elements, contents unspecified (pooled storage is reused as it is).
    pub fn alloc(&self, n: usize) -> Result<Buf> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        // Zero-size bindings are invalid: round up to one element.
        let need = (n.max(1) * 4) as u64;
        if need > self.limits.max_storage_buffer_binding_size {
            return Err(MoeError::OutOfMemory(format!(
                "a buffer of {n} elements exceeds the adapter's storage binding limit of {} bytes",
                self.limits.max_storage_buffer_binding_size
            )));
        }
        // Pooled by size class: 8 classes per power of two, so at most 1/8 is wasted.
        let step = (need.next_power_of_two() / 8).max(256);
        let size = need.next_multiple_of(step);
        let pooled = self.pool.lock().unwrap().get_mut(&size).and_then(|v| v.pop());
        let raw = match pooled {
            Some(b) => b,
            None => {
                let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
                let b = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                if let Some(e) = pollster::block_on(scope.pop()) {
                    return Err(MoeError::OutOfMemory(format!("allocating {size} bytes: {e}")));
                }
                b
            }
        };
        Ok(Buf { raw, len: n, id: NEXT_ID.fetch_add(1, Ordering::Relaxed) })
    }

    pub fn zeros(&self, n: usize) -> Result<Buf> {
        let b = self.alloc(n)?;
        let mut enc = self.encoder();
        self.clear(&mut enc, &b);
        count(|c| c.submits += 1);
        self.queue.submit([enc.finish()]);
        Ok(b)
    }

    pub fn upload<T: bytemuck::Pod>(&self, data: &[T]) -> Result<Buf> {
        assert_eq!(std::mem::size_of::<T>(), 4, "device buffers hold 4-byte elements");
        let b = self.alloc(data.len())?;
        self.write(&b, 0, data);
        Ok(b)
    }

    /// Writes `data` at element offset `at` of `buf`.
    pub fn write<T: bytemuck::Pod>(&self, buf: &Buf, at: usize, data: &[T]) {
        assert!(at + data.len() <= buf.len, "write past the end of a device buffer");
        if !data.is_empty() {
            self.queue.write_buffer(&buf.raw, (at * 4) as u64, bytemuck::cast_slice(data));
        }
    }

    pub fn encoder(&self) -> Encoder {
        Encoder { enc: self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor::default()), pass: None }
    }

    /// Records one dispatch of `k` over `groups` workgroups with the uniform `params` (binding 0; the
    /// kernel's `Params`, a whole number of 16-byte rows) and storage buffers `bufs` (bindings 1..).
    pub fn dispatch<P: bytemuck::Pod>(&self, enc: &mut Encoder, k: &Kernel, bufs: &[&Buf], params: &P, groups: [u32; 3]) {
        self.dispatch_with(enc, k, &[], bufs, params, groups);
    }

    /// `dispatch` with values for the kernel's WGSL `override` constants, (name, value); each distinct
    /// set compiles a pipeline of its own, once.
    pub fn dispatch_with<P: bytemuck::Pod>(
        &self,
        enc: &mut Encoder,
        k: &Kernel,
        constants: &[(&'static str, f64)],
        bufs: &[&Buf],
        params: &P,
        groups: [u32; 3],
    ) {
        const { assert!(size_of::<P>() > 0 && size_of::<P>().is_multiple_of(16), "a Params uniform fills whole 16-byte rows") };
        if groups.contains(&0) {
            return;
        }
        let pipeline = self.pipeline(k, constants);
        let bytes = bytemuck::bytes_of(params);
        // Pipelines stay cached for the process's life, so their addresses identify them.
        let key: BindKey = (Arc::as_ptr(&pipeline) as usize, bufs.iter().map(|b| b.id).collect(), bytes.to_vec());
        let bind = {
            let mut binds = self.binds.lock().unwrap();
            if binds.len() >= BIND_CACHE_MAX {
                binds.clear();
            }
            binds.entry(key).or_insert_with(|| Arc::new(self.bind_group(&pipeline, bufs, bytes))).clone()
        };
        count(|c| c.dispatches += 1);
        let pass = enc.pass();
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, Some(&*bind), &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    }

    fn pipeline(&self, k: &Kernel, constants: &[(&'static str, f64)]) -> Arc<wgpu::ComputePipeline> {
        let mut cache = self.pipelines.lock().unwrap();
        let key: PipelineKey = (k.src.as_ptr() as usize, k.entry, constants.iter().map(|&(n, v)| (n, v.to_bits())).collect());
        cache
            .entry(key)
            .or_insert_with(|| {
                let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(k.entry),
                    source: wgpu::ShaderSource::Wgsl(k.src.into()),
                });
                Arc::new(self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(k.entry),
                    layout: None,
                    module: &module,
                    entry_point: Some(k.entry),
                    compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
                    cache: None,
                }))
            })
            .clone()
    }

    fn bind_group(&self, pipeline: &wgpu::ComputePipeline, bufs: &[&Buf], params: &[u8]) -> wgpu::BindGroup {
        count(|c| c.bind_groups += 1);
        let uniform = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: params.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&uniform, 0, params);
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        entries.extend(bufs.iter().enumerate().map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32 + 1,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &b.raw,
                offset: 0,
                size: wgpu::BufferSize::new((b.len.max(1) * 4) as u64),
            }),
        }));
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// Copies `n` elements from `src[src_at..]` to `dst[dst_at..]`.
    pub fn copy(&self, enc: &mut Encoder, src: &Buf, src_at: usize, dst: &Buf, dst_at: usize, n: usize) {
        assert!(src_at + n <= src.len && dst_at + n <= dst.len, "copy past the end of a device buffer");
        if n > 0 {
            enc.close().copy_buffer_to_buffer(&src.raw, (src_at * 4) as u64, &dst.raw, (dst_at * 4) as u64, Some((n * 4) as u64));
        }
    }

    /// Sets the whole buffer to zero.
    pub fn clear(&self, enc: &mut Encoder, b: &Buf) {
        enc.close().clear_buffer(&b.raw, 0, Some(((b.len.max(1) * 4) as u64).next_multiple_of(4)));
    }

    /// Submits `enc`, then copies every buffer of `reads` back in one staging buffer, one map and one
    /// wait: the step's single readback. Returns their contents as raw 4-byte words.
    pub fn finish(&self, mut enc: Encoder, reads: &[&Buf]) -> Result<Vec<Vec<u32>>> {
        let total: usize = reads.iter().map(|b| b.len).sum();
        let staging = (total > 0).then(|| {
            count(|c| c.staging_buffers += 1);
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: (total * 4) as u64,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        if let Some(st) = &staging {
            let mut at = 0u64;
            for b in reads {
                if b.len > 0 {
                    enc.close().copy_buffer_to_buffer(&b.raw, 0, st, at, Some((b.len * 4) as u64));
                }
                at += (b.len * 4) as u64;
            }
        }
        count(|c| c.submits += 1);
        self.queue.submit([enc.finish()]);
        count(|c| c.waits += 1);
        let Some(st) = staging else {
            self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| MoeError::DeviceLost(e.to_string()))?;
            self.check()?;
            return Ok(reads.iter().map(|_| Vec::new()).collect());
        };
        count(|c| c.readbacks += 1);
        st.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| MoeError::DeviceLost(e.to_string()))?;
        self.check()?;
        let view = st.slice(..).get_mapped_range().map_err(|e| MoeError::Internal(format!("readback: {e}")))?;
        let words: Vec<u32> = bytemuck::cast_slice(&view).to_vec();
        let mut at = 0;
        Ok(reads
            .iter()
            .map(|b| {
                at += b.len;
                words[at - b.len..at].to_vec()
            })
            .collect())
    }

    /// Reads one f32 buffer back (tests and checkpoints; a training step uses `finish`).
    pub fn read_f32(&self, b: &Buf) -> Result<Vec<f32>> {
        let w = self.finish(self.encoder(), &[b])?.remove(0);
        Ok(bytemuck::cast_slice(&w).to_vec())
    }

    pub fn read_u32(&self, b: &Buf) -> Result<Vec<u32>> {
        Ok(self.finish(self.encoder(), &[b])?.remove(0))
    }

    /// This thread's counters so far (see `Counters`).
    pub fn counters(&self) -> Counters {
        COUNTERS.with(|c| c.get())
    }

    /// Readbacks (buffer maps) made by this thread so far: tests assert how many a step makes.
    pub fn readbacks(&self) -> u64 {
        self.counters().readbacks
    }

    /// Bind groups this thread has created so far: a step whose buffers persist creates none.
    pub fn bind_groups_created(&self) -> u64 {
        self.counters().bind_groups
    }

    /// Adapter name, type and driver in one line.
    pub fn describe(&self) -> String {
        let i = &self.info;
        format!("{} ({:?}, {:?}, driver {} {})", i.name, i.device_type, i.backend, i.driver, i.driver_info)
    }
}

/// Records GPU work: consecutive dispatches share one compute pass (wgpu still inserts the
/// barriers their buffer uses need); a copy or a clear closes the pass.
pub struct Encoder {
    enc: wgpu::CommandEncoder,
    pass: Option<wgpu::ComputePass<'static>>,
}

impl Encoder {
    fn pass(&mut self) -> &mut wgpu::ComputePass<'static> {
        let enc = &mut self.enc;
        self.pass.get_or_insert_with(|| {
            count(|c| c.passes += 1);
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default()).forget_lifetime()
        })
    }

    /// The command encoder itself, the compute pass ended first.
    fn close(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        &mut self.enc
    }

    fn finish(mut self) -> wgpu::CommandBuffer {
        self.pass = None;
        self.enc.finish()
    }
}

/// `x` as a u32 kernel parameter; panics when it does not fit.
pub(crate) fn word(x: usize) -> u32 {
    u32::try_from(x).expect("a kernel parameter exceeds 32 bits")
}

/// Workgroups for n items at `per` items each, spread over x and y when x would pass the 65535 limit.
/// Kernels recover the linear workgroup index as wid.x + wid.y * num_workgroups.x.
pub fn groups_1d(n: usize, per: usize) -> [u32; 3] {
    let g = n.div_ceil(per);
    if g <= 65535 {
        [g as u32, 1, 1]
    } else {
        [65535, g.div_ceil(65535) as u32, 1]
    }
}

#[cfg(test)]
mod tests;
