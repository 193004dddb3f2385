//! The API's connections, bounded: at most [`MAX_CONNECTIONS`] at once, so
//! that clients holding connections open (idle, or sending a request a byte
//! at a time) cannot use up the VMM's file descriptors and memory.
//!
//! When every place is taken, the oldest connection that has not yet
//! delivered a whole request is closed to make room for the newcomer: a
//! flood of idle connections pushes out its own oldest members, and a
//! client that sends its request right away is served. Only when every
//! connection has a request in hand is the newcomer turned away (`503`).
//! A connection that has delivered a request is not pushed out; the
//! header-read timeout closes it if it then idles.
//!
//! After a crowd of connections has gone (at least [`CROWD`] open at once,
//! then no more than [`QUIET`]), the memory they used goes back to the
//! host: the C allocator would otherwise keep it for the life of the VMM.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// The most connections the API keeps open at once.
pub const MAX_CONNECTIONS: usize = 256;

/// So many connections open at once make a crowd ...
const CROWD: usize = 32;
/// ... that has gone when no more than this many are left.
const QUIET: usize = 2;

/// What the server knows about one connection.
#[derive(Debug, Default)]
pub struct Slot {
    /// The connection has delivered a whole request.
    delivered: AtomicBool,
    /// Signalled when the connection must close to make room.
    evict: Notify,
}

impl Slot {
    /// A new connection's slot (nothing delivered yet).
    pub fn new() -> Arc<Slot> {
        Arc::new(Slot::default())
    }

    /// Records that the connection delivered a whole request: from now on
    /// it is not closed to make room for others.
    pub fn mark_delivered(&self) {
        self.delivered.store(true, Ordering::Relaxed);
    }

    /// Completes when the connection must close to make room.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

/// The open connections, oldest first.
#[derive(Debug)]
pub struct Registry {
    limit: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    next_id: u64,
    slots: BTreeMap<u64, Arc<Slot>>,
    /// The most connections open at once since memory was last released.
    peak: usize,
}

impl Open {
    /// Removes connection `id`; whether a crowd has just gone.
    fn remove(&mut self, id: u64) -> bool {
        self.slots.remove(&id);
        let crowd_gone = self.peak >= CROWD && self.slots.len() <= QUIET;
        if crowd_gone {
            self.peak = self.slots.len();
        }
        crowd_gone
    }
}

/// A connection's place in the registry; dropping it frees the place.
#[derive(Debug)]
pub struct Admission {
    registry: Arc<Registry>,
    id: u64,
    slot: Arc<Slot>,
}

impl Admission {
    /// The connection's slot.
    pub fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let crowd_gone = self.registry.open().remove(self.id);
        if crowd_gone {
            release_freed_memory();
        }
    }
}

/// Hands the memory the allocator holds free back to the host.
fn release_freed_memory() {
    // SAFETY: malloc_trim only rearranges the allocator's free memory,
    // under the allocator's own locks; it may be called at any time from
    // any thread.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Registry {
    /// A registry of at most `limit` connections.
    pub fn new(limit: usize) -> Arc<Registry> {
        Arc::new(Registry {
            limit,
            open: Mutex::new(Open::default()),
        })
    }

    fn open(&self) -> MutexGuard<'_, Open> {
        // The map stays consistent whatever panicked while it was locked.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes room for a new connection, closing the oldest one that has not
    /// delivered a request if need be; `None` if every connection has.
    pub fn admit(self: &Arc<Self>) -> Option<Admission> {
        let mut open = self.open();
        if open.slots.len() >= self.limit {
            let oldest_waiting = open
                .slots
                .iter()
                .find(|(_, slot)| !slot.delivered.load(Ordering::Relaxed))
                .map(|(&id, _)| id)?;
            // An eviction never ends a crowd: the newcomer takes the place.
            if let Some(slot) = open.slots.remove(&oldest_waiting) {
                // Stores a permit if the connection is not waiting on it
                // right now: it closes at its next look.
                slot.evict.notify_one();
            }
        }
        let id = open.next_id;
        open.next_id += 1;
        let slot = Slot::new();
        open.slots.insert(id, Arc::clone(&slot));
        open.peak = open.peak.max(open.slots.len());
        Some(Admission {
            registry: Arc::clone(self),
            id,
            slot,
        })
    }

    /// How many connections are open.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.open().slots.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `slot` has been told to close (without waiting for it).
    fn is_evicted(slot: &Slot) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(1), slot.evicted())
                .await
                .is_ok()
        })
    }

    #[test]
    fn a_full_registry_closes_the_oldest_connection_without_a_request() {
        let registry = Registry::new(3);
        let first = registry.admit().unwrap();
        let second = registry.admit().unwrap();
        let third = registry.admit().unwrap();
        first.slot().mark_delivered();
        let fourth = registry.admit().expect("room is made");
        assert_eq!(registry.len(), 3);
        assert!(
            !is_evicted(first.slot()),
            "a delivered request was pushed out"
        );
        assert!(is_evicted(second.slot()), "the oldest waiting one stays");
        assert!(!is_evicted(third.slot()));
        assert!(!is_evicted(fourth.slot()));
        // The evicted connection's end does not free a place it no longer has.
        drop(second);
        assert_eq!(registry.len(), 3);
        drop(third);
        assert_eq!(registry.len(), 2);
    }

    #[test]
    fn memory_is_released_once_after_a_crowd_has_gone() {
        let mut open = Open::default();
        for id in 0..CROWD as u64 {
            open.slots.insert(id, Slot::new());
        }
        open.peak = CROWD;
        let released: Vec<bool> = (0..CROWD as u64).map(|id| open.remove(id)).collect();
        let at = CROWD - QUIET - 1;
        assert_eq!(released.iter().filter(|&&r| r).count(), 1, "{released:?}");
        assert!(
            released[at],
            "released at {:?}",
            released.iter().position(|&r| r)
        );
        // A few connections coming and going later do not release again.
        open.slots.insert(100, Slot::new());
        open.peak = open.peak.max(open.slots.len());
        assert!(!open.remove(100));
    }

    #[test]
    fn a_registry_of_delivered_requests_turns_newcomers_away_until_one_ends() {
        let registry = Registry::new(2);
        let busy: Vec<_> = (0..2).map(|_| registry.admit().unwrap()).collect();
        for admission in &busy {
            admission.slot().mark_delivered();
        }
        assert!(registry.admit().is_none());
        drop(busy);
        assert_eq!(registry.len(), 0);
        assert!(registry.admit().is_some());
    }
}
