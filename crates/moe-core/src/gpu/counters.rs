//! Per-thread counters of what the GPU backend asks of the device: dispatches, compute passes,
//! submissions, blocking waits, readbacks, bind groups and staging buffers. Tests subtract two
//! snapshots (`Gpu::counters`) to assert what one call costs.

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

pub(super) fn count(f: impl FnOnce(&mut Counters)) {
    COUNTERS.with(|c| {
        let mut v = c.get();
        f(&mut v);
        c.set(v);
    });
}

/// This thread's counters so far.
pub(super) fn snapshot() -> Counters {
    COUNTERS.with(|c| c.get())
}
