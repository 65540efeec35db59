//! Where the GPU's time goes: timestamp queries around every dispatch of the encoders a thread
//! records while it profiles, summed per kernel entry point (the device check prints the table).
//! Profiling gives each dispatch a compute pass of its own and waits at every submission to read
//! the timestamps back, so it measures kernels, not the launch and wait overheads of a real step.

use super::Gpu;
use std::cell::RefCell;
use std::collections::HashMap;

/// Dispatches timed per encoder; later ones run untimed and are counted apart.
const CAPACITY: usize = 2048;

/// One kernel's share of the profiled time: an entry point, and its MODE override where it has one
/// (the products of experts_gemm and attn_gemm).
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    pub entry: &'static str,
    pub mode: Option<u32>,
    pub dispatches: u64,
    pub seconds: f64,
}

/// (entry point, MODE)
type Kernel = (&'static str, Option<u32>);
/// kernel -> (dispatches, seconds), and the dispatches past CAPACITY
type Table = (HashMap<Kernel, (u64, f64)>, u64);

thread_local! {
    /// Set while this thread profiles.
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
}

/// Starts timing the dispatches of the encoders this thread creates from now on. False (and nothing
/// changes) when the adapter offers no timestamp queries.
pub fn start(g: &Gpu) -> bool {
    let ok = g.features.contains(wgpu::Features::TIMESTAMP_QUERY);
    if ok {
        TABLE.with(|t| *t.borrow_mut() = Some((HashMap::new(), 0)));
    }
    ok
}

/// Stops profiling; returns the time per kernel, largest first, and the dispatches that ran untimed
/// (past CAPACITY in one encoder).
pub fn stop() -> (Vec<KernelTime>, u64) {
    let (table, untimed) = TABLE.with(|t| t.borrow_mut().take()).unwrap_or_default();
    let mut v: Vec<KernelTime> =
        table.into_iter().map(|((entry, mode), (dispatches, seconds))| KernelTime { entry, mode, dispatches, seconds }).collect();
    v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds).then(a.entry.cmp(b.entry)));
    (v, untimed)
}

/// The timestamp queries of one encoder: a begin and an end per dispatch.
pub(super) struct Timer {
    set: wgpu::QuerySet,
    entries: Vec<Kernel>,
    untimed: u64,
}

impl Timer {
    /// A timer when this thread profiles, else None.
    pub(super) fn new(g: &Gpu) -> Option<Timer> {
        TABLE.with(|t| t.borrow().is_some()).then(|| Timer {
            set: g.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * CAPACITY as u32,
            }),
            entries: Vec::new(),
            untimed: 0,
        })
    }

    /// The timestamp writes of the pass of the next dispatch, of `kernel`; None past CAPACITY.
    pub(super) fn next(&mut self, kernel: Kernel) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        if self.entries.len() == CAPACITY {
            self.untimed += 1;
            return None;
        }
        let i = 2 * self.entries.len() as u32;
        self.entries.push(kernel);
        Some(wgpu::ComputePassTimestampWrites { query_set: &self.set, beginning_of_pass_write_index: Some(i), end_of_pass_write_index: Some(i + 1) })
    }

    /// Resolves the timestamps into a buffer to be read back with the encoder's other reads: the
    /// buffer and its length in 4-byte words; None when nothing was timed.
    pub(super) fn resolve(&self, g: &Gpu, enc: &mut wgpu::CommandEncoder) -> Option<(wgpu::Buffer, usize)> {
        let queries = 2 * self.entries.len() as u32;
        if queries == 0 {
            return None;
        }
        let buf = g.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: 8 * queries as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        enc.resolve_query_set(&self.set, 0..queries, &buf, 0);
        Some((buf, 2 * queries as usize))
    }

    /// Adds the timestamps read back (`resolve`'s words) to this thread's table.
    pub(super) fn record(self, g: &Gpu, words: &[u32]) {
        let ns_per_tick = g.queue.get_timestamp_period() as f64;
        // u64 timestamps as little-endian word pairs (the words need not be 8-byte aligned).
        let ticks: Vec<u64> = words.chunks_exact(2).map(|w| u64::from(w[0]) | u64::from(w[1]) << 32).collect();
        TABLE.with(|t| {
            if let Some((table, untimed)) = t.borrow_mut().as_mut() {
                for (kernel, pair) in self.entries.iter().zip(ticks.chunks_exact(2)) {
                    let e = table.entry(*kernel).or_default();
                    e.0 += 1;
                    e.1 += pair[1].saturating_sub(pair[0]) as f64 * ns_per_tick * 1e-9;
                }
                *untimed += self.untimed;
            }
        });
    }
}
