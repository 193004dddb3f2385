//! The process's budget of memory mappings.
//!
//! Linux caps the mappings (VMAs) of a process at `vm.max_map_count`
//! (65530 by default). Every fixed-address remap GMM makes inside a region
//! can split a mapping in two, and guests decide which pages get remapped
//! (a balloon driver giving back every other page, memory a sharing scan
//! deduplicates here and there). Running into the cap would not only fail
//! GMM's remap: every later `mmap` of the process fails too, the allocator
//! included, and the VMM aborts. So GMM keeps a reserve: before a remap it
//! checks, every [`CHECK_EVERY`] remaps (each remap adds at most two
//! mappings), how many mappings the process has, and refuses remaps with
//! [`Error::MappingsExhausted`] while fewer than [`RESERVE`] remain
//! (counting again at most every [`RECHECK_AFTER`] then, since counting a
//! process's mappings is not free).

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// Mappings left to the rest of the process.
pub(crate) const RESERVE: u64 = 16 * 1024;
/// Remaps between two counts of the process's mappings.
const CHECK_EVERY: u32 = 1024;
/// While the budget is exhausted, how long a refusal stands before the
/// mappings are counted again.
const RECHECK_AFTER: Duration = Duration::from_millis(100);
/// The kernel's default `vm.max_map_count`.
const DEFAULT_LIMIT: u64 = 65530;

static SINCE_CHECK: AtomicU32 = AtomicU32::new(0);
static EXHAUSTED: AtomicBool = AtomicBool::new(false);
/// When the mappings were last counted (milliseconds since the epoch) and
/// how many there were.
static LAST_CHECK_MS: AtomicU64 = AtomicU64::new(0);
static LAST_COUNT: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether one more remap may run: `Ok` while the process keeps at least
/// [`RESERVE`] mappings spare.
pub(crate) fn check() -> Result<()> {
    let limit = limit();
    let due = SINCE_CHECK
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(CHECK_EVERY);
    if EXHAUSTED.load(Ordering::Relaxed) {
        let since = now_ms().saturating_sub(LAST_CHECK_MS.load(Ordering::Relaxed));
        if u128::from(since) < RECHECK_AFTER.as_millis() {
            let mappings = LAST_COUNT.load(Ordering::Relaxed);
            return Err(Error::MappingsExhausted { mappings, limit });
        }
    } else if !due {
        return Ok(());
    }
    let mappings = mappings()?;
    LAST_COUNT.store(mappings, Ordering::Relaxed);
    LAST_CHECK_MS.store(now_ms(), Ordering::Relaxed);
    let exhausted = mappings + RESERVE > limit;
    EXHAUSTED.store(exhausted, Ordering::Relaxed);
    if exhausted {
        return Err(Error::MappingsExhausted { mappings, limit });
    }
    Ok(())
}

/// The mappings the process has now (lines of `/proc/self/maps`).
pub(crate) fn mappings() -> Result<u64> {
    let mut f = std::fs::File::open("/proc/self/maps").map_err(|source| Error::Host {
        op: "open /proc/self/maps",
        source,
    })?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut lines = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|source| Error::Host {
            op: "read /proc/self/maps",
            source,
        })?;
        if n == 0 {
            return Ok(lines);
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// `vm.max_map_count` (read once).
fn limit() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(DEFAULT_LIMIT)
    })
}
