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
//! Work is recorded into an `Encoder` and submitted without a wait unless something is read back
//! (`submit` / `finish`); every wait is bounded by `MOE_GPU_TIMEOUT_S` and a stuck queue becomes
//! `DEVICE_LOST`. `MOE_GPU_TRUSTED=1` (or `Gpu::set_trusted_shaders`) builds the kernels whose
//! indices are proven in range (`Kernel::proven`) without wgpu's runtime checks. `Counters` count
//! what each call asks of the device; `profile` times each dispatch with timestamp queries.
//!
//! Adapter choice (`Device` / `MOE_DEVICE`): `auto` takes a real GPU and otherwise the CPU, `gpu`
//! requires a GPU, `cpu` never touches wgpu. A software adapter (Mesa lavapipe) is opened only with
//! `MOE_GPU_ADAPTER=software`, and then only for `gpu`, never for `auto`: that is how CI runs the
//! kernels without a GPU while everything else stays on the fast CPU path.

pub mod adamw;
pub mod attention;
mod binds;
mod counters;
pub mod crossentropy;
pub mod elementwise;
pub mod embedding;
pub mod experts;
pub mod head;
pub mod layer;
pub mod matmul;
pub mod mlp;
pub mod decoder;
pub mod model;
pub mod moe;
pub mod profile;
pub mod rmsnorm;
pub mod rope;
pub mod router;
pub mod store;

pub use binds::BindReservation;
use binds::{BindCache, BIND_CACHE_MIN};
use counters::count;
pub use counters::Counters;
use crate::error::{MoeError, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

/// One WGSL entry point: its source (one file per op, forward and backward side by side), its name,
/// and whether every index it computes is proven in range (see `Kernel::proven`).
pub struct Kernel {
    pub src: &'static str,
    pub entry: &'static str,
    pub proven: bool,
}

impl Kernel {
    /// A kernel that always runs with wgpu's runtime checks (index clamps, loop bounding).
    pub const fn checked(src: &'static str, entry: &'static str) -> Kernel {
        Kernel { src, entry, proven: false }
    }

    /// A kernel whose every index is in range by its shader's own guards and the asserts of the
    /// host function that dispatches it, and whose loops all end: with trusted shaders on
    /// (`Gpu::set_trusted_shaders`) it runs without wgpu's clamps and loop counters.
    pub const fn proven(src: &'static str, entry: &'static str) -> Kernel {
        Kernel { src, entry, proven: true }
    }
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

/// (shader address, entry point, override constants as (name, f64 bits), built without runtime checks).
type PipelineKey = (usize, &'static str, Vec<(&'static str, u64)>, bool);
thread_local! {
    /// MAP_READ buffers by size, reused from readback to readback; per thread, so that a thread's
    /// steps find theirs whatever other threads read back meanwhile.
    static STAGING: std::cell::RefCell<HashMap<u64, Vec<wgpu::Buffer>>> = std::cell::RefCell::default();
}

/// (pipeline address, buffer ids, parameter bytes): auto-derived layouts differ per pipeline.
pub(crate) type BindKey = (usize, Vec<u64>, Vec<u8>);

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    pub cooperative_matrix: Vec<wgpu::wgt::CooperativeMatrixProperties>,
    /// The longest a blocking wait may take (`MOE_GPU_TIMEOUT_S`, default 120 s).
    pub timeout: std::time::Duration,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    binds: Mutex<BindCache<Arc<wgpu::BindGroup>>>,
    /// Bind groups the live models and layers hold room for, beyond BIND_CACHE_MIN.
    pub(crate) bind_reserved: AtomicUsize,
    pool: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    /// Build `Kernel::proven` kernels without runtime checks (`MOE_GPU_TRUSTED=1` at start).
    trusted: AtomicBool,
    /// The first uncaptured wgpu error, or the device's loss (which replaces any other: errors of
    /// calls on a lost device are its consequences), reported by the next `finish`.
    fault: Arc<Mutex<Option<MoeError>>>,
}

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
        MoeError::NoDevice(if names.is_empty() {
            "no Vulkan adapter at all: no loadable libvulkan.so.1, or no driver (ICD) it could open".to_string()
        } else {
            format!("no hardware adapter among [{}]; software adapters are used only with MOE_GPU_ADAPTER=software", names.join(", "))
        })
    })
}

impl Gpu {
    fn open() -> Result<Gpu> {
        let software = std::env::var("MOE_GPU_ADAPTER").is_ok_and(|v| v == "software");
        let trusted = std::env::var("MOE_GPU_TRUSTED").is_ok_and(|v| v == "1");
        let timeout = match std::env::var("MOE_GPU_TIMEOUT_S") {
            Ok(v) => v.parse::<f64>().ok().filter(|s| *s > 0.0 && s.is_finite()).ok_or_else(|| {
                MoeError::InvalidConfig(format!("MOE_GPU_TIMEOUT_S must be a positive number of seconds, got '{v}'"))
            })?,
            Err(_) => 120.0,
        };
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
            timeout: std::time::Duration::from_secs_f64(timeout),
            device,
            queue,
            pipelines: Mutex::default(),
            binds: Mutex::default(),
            bind_reserved: AtomicUsize::new(0),
            pool: Mutex::default(),
            trusted: AtomicBool::new(trusted),
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

    /// Whether `Kernel::proven` kernels are built without runtime checks.
    pub fn trusted_shaders(&self) -> bool {
        self.trusted.load(Ordering::Relaxed)
    }

    /// Builds the `Kernel::proven` kernels of later dispatches without wgpu's runtime checks (no
    /// index clamps, no loop counters: naga's checked loops keep register tiles from unrolling), or
    /// with them again. Both kinds of pipeline stay cached. Starts as `MOE_GPU_TRUSTED=1` says.
    pub fn set_trusted_shaders(&self, on: bool) {
        self.trusted.store(on, Ordering::Relaxed);
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
        let size = size_class(need);
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

    /// A zeroed buffer of n elements (the clear is queued, not waited for).
    pub fn zeros(&self, n: usize) -> Result<Buf> {
        let b = self.alloc(n)?;
        let mut enc = self.encoder();
        self.clear(&mut enc, &b);
        self.submit(enc)?;
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

    /// A command encoder; its dispatches are timed when this thread profiles (`profile::start`).
    pub fn encoder(&self) -> Encoder {
        let enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        Encoder { enc, pass: None, dispatches: 0, timer: profile::Timer::new(self) }
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
        let window = (BIND_CACHE_MIN + self.bind_reserved.load(Ordering::Relaxed)) as u64;
        let bind = self.binds.lock().unwrap().get(key, window, || Arc::new(self.bind_group(&pipeline, bufs, bytes)));
        count(|c| c.dispatches += 1);
        enc.dispatches += 1;
        let mode = constants.iter().find(|c| c.0 == "MODE").map(|c| c.1 as u32);
        let pass = enc.pass((k.entry, mode));
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, Some(&*bind), &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    }

    fn pipeline(&self, k: &Kernel, constants: &[(&'static str, f64)]) -> Arc<wgpu::ComputePipeline> {
        let trusted = k.proven && self.trusted_shaders();
        let mut cache = self.pipelines.lock().unwrap();
        let key: PipelineKey = (k.src.as_ptr() as usize, k.entry, constants.iter().map(|&(n, v)| (n, v.to_bits())).collect(), trusted);
        cache
            .entry(key)
            .or_insert_with(|| {
                let desc = wgpu::ShaderModuleDescriptor { label: Some(k.entry), source: wgpu::ShaderSource::Wgsl(k.src.into()) };
                let module = if trusted {
                    // SAFETY: `Kernel::proven` kernels guard every index themselves (their host
                    // functions assert that the views they bind fit the buffers) and all their loops
                    // end; the parity tests run with and without this (`MOE_GPU_TRUSTED=1` in CI).
                    unsafe { self.device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
                } else {
                    self.device.create_shader_module(desc)
                };
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

    /// Submits `enc` without waiting for it: the queue runs submissions in order, so work that reads
    /// nothing back needs no wait (a later `finish` waits for it all). Reports any device error
    /// recorded so far.
    pub fn submit(&self, enc: Encoder) -> Result<()> {
        if enc.timer.is_some() {
            return self.finish(enc, &[]).map(drop);
        }
        count(|c| c.submits += 1);
        self.queue.submit([enc.finish()]);
        self.check()
    }

    /// Submits `enc`, then copies every buffer of `reads` back in one staging buffer, one map and one
    /// wait: the step's single readback. Returns their contents as raw 4-byte words. With nothing to
    /// read it still waits: a synchronisation point (timings, tests).
    pub fn finish(&self, mut enc: Encoder, reads: &[&Buf]) -> Result<Vec<Vec<u32>>> {
        let timer = enc.timer.take();
        let timed = timer.as_ref().and_then(|t| t.resolve(self, enc.close()));
        let mut words: Vec<usize> = reads.iter().map(|b| b.len).collect();
        words.extend(timed.as_ref().map(|(_, n)| *n));
        let total: usize = words.iter().sum();
        let staging = (total > 0).then(|| self.staging_buffer((total * 4) as u64));
        if let Some(st) = &staging {
            let mut at = 0u64;
            let srcs = reads.iter().map(|b| &b.raw).chain(timed.as_ref().map(|(raw, _)| raw));
            for (src, n) in srcs.zip(&words) {
                if *n > 0 {
                    enc.close().copy_buffer_to_buffer(src, 0, st, at, Some((n * 4) as u64));
                }
                at += (n * 4) as u64;
            }
        }
        count(|c| c.submits += 1);
        self.queue.submit([enc.finish()]);
        let Some(st) = staging else {
            self.wait()?;
            return Ok(reads.iter().map(|_| Vec::new()).collect());
        };
        count(|c| c.readbacks += 1);
        st.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        self.wait()?;
        let mut all: Vec<u32> = {
            let view = st.slice(..).get_mapped_range().map_err(|e| MoeError::Internal(format!("readback: {e}")))?;
            bytemuck::cast_slice(&view[..total * 4]).to_vec()
        };
        st.unmap();
        STAGING.with(|p| p.borrow_mut().entry(st.size()).or_default().push(st));
        if let (Some(t), Some(_)) = (timer, &timed) {
            let n = words.pop().expect("the timestamps' words");
            t.record(self, &all[all.len() - n..]);
            all.truncate(all.len() - n);
        }
        let mut at = 0;
        Ok(words
            .iter()
            .map(|&n| {
                at += n;
                all[at - n..at].to_vec()
            })
            .collect())
    }

    /// A MAP_READ buffer of at least `bytes` (its size class), from the staging pool when one is free.
    fn staging_buffer(&self, bytes: u64) -> wgpu::Buffer {
        let size = size_class(bytes);
        if let Some(b) = STAGING.with(|p| p.borrow_mut().get_mut(&size).and_then(|v| v.pop())) {
            return b;
        }
        count(|c| c.staging_buffers += 1);
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Blocks until every submission has run, for at most `timeout`. A wait that times out means a
    /// kernel never finished: the queue is stuck behind it and nothing later can run, so it becomes
    /// DEVICE_LOST (also for every later call), never a hang.
    fn wait(&self) -> Result<()> {
        count(|c| c.waits += 1);
        match self.device.poll(wgpu::PollType::Wait { submission_index: None, timeout: Some(self.timeout) }) {
            Ok(_) => self.check(),
            Err(wgpu::PollError::Timeout) => {
                let e = format!("a device wait timed out after {:?} (MOE_GPU_TIMEOUT_S): the queue is stuck", self.timeout);
                *self.fault.lock().unwrap() = Some(MoeError::DeviceLost(e.clone()));
                Err(MoeError::DeviceLost(e))
            }
            Err(e) => Err(MoeError::DeviceLost(e.to_string())),
        }
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
        counters::snapshot()
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

/// Pooled sizes: 8 classes per power of two, so at most 1/8 is wasted.
fn size_class(bytes: u64) -> u64 {
    let step = (bytes.next_power_of_two() / 8).max(256);
    bytes.next_multiple_of(step)
}

/// Records GPU work: consecutive dispatches share one compute pass (wgpu still inserts the
/// barriers their buffer uses need); a copy or a clear closes the pass. When this thread profiles,
/// each dispatch gets a pass of its own, timed by timestamp queries.
pub struct Encoder {
    enc: wgpu::CommandEncoder,
    pass: Option<wgpu::ComputePass<'static>>,
    dispatches: usize,
    timer: Option<profile::Timer>,
}

impl Encoder {
    /// The compute pass for the next dispatch, of `kernel` (entry point, MODE).
    fn pass(&mut self, kernel: (&'static str, Option<u32>)) -> &mut wgpu::ComputePass<'static> {
        if let Some(t) = &mut self.timer {
            self.pass = None;
            let writes = t.next(kernel);
            count(|c| c.passes += 1);
            let desc = wgpu::ComputePassDescriptor { label: None, timestamp_writes: writes };
            return self.pass.insert(self.enc.begin_compute_pass(&desc).forget_lifetime());
        }
        let enc = &mut self.enc;
        self.pass.get_or_insert_with(|| {
            count(|c| c.passes += 1);
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default()).forget_lifetime()
        })
    }

    /// Dispatches recorded so far.
    pub fn dispatches(&self) -> usize {
        self.dispatches
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
