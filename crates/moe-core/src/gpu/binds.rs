//! The bind-group cache: bind groups by (pipeline, buffers, parameter bytes), kept while they are
//! used, and the reservations through which models and layers size it.

use super::{gpu, BindKey, Gpu};
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// Bind groups used within this many lookups, plus the live reservations (`BindReservation`), are
/// never evicted.
pub(super) const BIND_CACHE_MIN: usize = 4096;

/// The bind groups of past dispatches (they also keep pooled buffers alive). When it holds twice its
/// window (BIND_CACHE_MIN + the reservations), it drops every entry not used within the last window
/// of lookups: a model whose step uses n bind groups and reserves n finds them all again at its next
/// step, however deep it is.
pub(super) struct BindCache<V> {
    /// value and the lookup count at its last use
    pub(super) map: HashMap<BindKey, (V, u64)>,
    lookups: u64,
}

impl<V> Default for BindCache<V> {
    fn default() -> Self {
        BindCache { map: HashMap::new(), lookups: 0 }
    }
}

impl<V: Clone> BindCache<V> {
    /// The value of `key`, made by `make` on a miss; when the cache holds 2 * window entries, it first
    /// drops those unused within the last `window` lookups.
    pub(super) fn get(&mut self, key: BindKey, window: u64, make: impl FnOnce() -> V) -> V {
        self.lookups += 1;
        let now = self.lookups;
        if self.map.len() as u64 >= 2 * window {
            self.map.retain(|_, (_, used)| *used + window > now);
        }
        let entry = self.map.entry(key).or_insert_with(|| (make(), now));
        entry.1 = now;
        entry.0.clone()
    }
}

/// Room in the bind-group cache for the dispatches of one recorded sequence that recurs (a model's
/// forward or backward): the cache's window grows by every live reservation (`BindCache`), so a
/// model of any depth finds all its bind groups again at its next step. Released on drop.
#[derive(Default)]
pub struct BindReservation {
    n: usize,
}

impl BindReservation {
    /// Grows the reservation to `n` bind groups (the dispatches of the sequence).
    pub fn fit(&mut self, g: &Gpu, n: usize) {
        if n > self.n {
            g.bind_reserved.fetch_add(n - self.n, Ordering::Relaxed);
            self.n = n;
        }
    }
}

impl Drop for BindReservation {
    fn drop(&mut self) {
        if let (Ok(g), true) = (gpu(), self.n > 0) {
            g.bind_reserved.fetch_sub(self.n, Ordering::Relaxed);
        }
    }
}
