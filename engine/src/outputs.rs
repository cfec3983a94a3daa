//! The embedded store's table of outputs: each stored once under its digest (see [`crate::output`]),
//! living as long as the longest-lived record that refers to it, with gauges of what it holds.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

/// One stored output.
struct Shelved {
    blob: Arc<[u8]>,
    expires: Instant,
}

/// Outputs by digest.
#[derive(Default)]
pub struct OutputTable {
    shelved: HashMap<String, Shelved>,
    /// Bytes of every stored blob.
    bytes: u64,
    count_gauge: Gauge,
    bytes_gauge: Gauge,
}

impl OutputTable {
    /// Registers the table's gauges (`herald_stored_outputs`, `herald_stored_output_bytes`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "herald_stored_outputs",
            "Distinct outputs the embedded store holds (each kept once, whatever refers to it)",
            self.count_gauge.clone(),
        );
        registry.register(
            "herald_stored_output_bytes",
            "Bytes of the outputs the embedded store holds, as stored (compressed)",
            self.bytes_gauge.clone(),
        );
    }

    /// Refers to the output `digest` until `expires`: its expiry becomes the later of its own and
    /// `expires`. `false` when it is not stored (or expired): store it with [`OutputTable::put`].
    pub fn refer(&mut self, digest: &str, expires: Instant) -> bool {
        let now = Instant::now();
        match self.shelved.get_mut(digest) {
            Some(shelved) if shelved.expires > now => {
                shelved.expires = shelved.expires.max(expires);
                true
            }
            _ => false,
        }
    }

    /// Stores the output `digest` as `blob` until `expires` (or refers to it, if it is stored).
    /// Returns the stored size.
    pub fn put(&mut self, digest: &str, blob: Vec<u8>, expires: Instant) -> u64 {
        if self.refer(digest, expires) {
            return self.shelved[digest].blob.len() as u64;
        }
        self.restore(digest, blob.into(), expires)
    }

    /// Stores (or refers to, if stored) output `digest` as `blob`, read back by a durable store,
    /// until `expires`. Returns the stored size.
    pub fn restore(&mut self, digest: &str, blob: Arc<[u8]>, expires: Instant) -> u64 {
        if self.refer(digest, expires) {
            return self.shelved[digest].blob.len() as u64;
        }
        let size = blob.len() as u64;
        if let Some(old) = self
            .shelved
            .insert(digest.to_owned(), Shelved { blob, expires })
        {
            self.bytes -= old.blob.len() as u64;
        }
        self.bytes += size;
        self.publish();
        size
    }

    /// The stored form of output `digest`, unless it expired.
    pub fn get(&self, digest: &str) -> Option<Arc<[u8]>> {
        let now = Instant::now();
        self.shelved
            .get(digest)
            .filter(|s| s.expires > now)
            .map(|s| s.blob.clone())
    }

    /// Stored size of output `digest`, if stored.
    pub fn size(&self, digest: &str) -> Option<u64> {
        self.get(digest).map(|blob| blob.len() as u64)
    }

    /// Drops expired outputs; returns how many.
    pub fn sweep(&mut self) -> usize {
        let now = Instant::now();
        let before = self.shelved.len();
        let mut freed = 0;
        self.shelved.retain(|_, s| {
            let keep = s.expires > now;
            if !keep {
                freed += s.blob.len() as u64;
            }
            keep
        });
        self.bytes -= freed;
        self.publish();
        before - self.shelved.len()
    }

    /// Outputs held and their bytes (expired ones included until the next sweep).
    pub fn held(&self) -> (usize, u64) {
        (self.shelved.len(), self.bytes)
    }

    fn publish(&self) {
        self.count_gauge.set(self.shelved.len() as i64);
        self.bytes_gauge.set(self.bytes as i64);
    }
}
