//! How much guest RAM this host can take, checked before anything is built.
//!
//! # The rule
//!
//! A VM may have at most as much RAM as the host could ever give a guest
//! that uses all of it:
//!
//! - its RAM plus swap (the bound Linux's default, heuristic overcommit puts
//!   on a single allocation, and what QEMU users meet as "cannot set up
//!   guest memory"); also with `vm.overcommit_memory=1`, since the VMM's
//!   bookkeeping of guest RAM (some 16 bytes per 4 KiB page, set up when
//!   the VM is built) would alone take gigabytes and seconds for a terabyte;
//! - with strict overcommit (`vm.overcommit_memory=2`), what is left under
//!   the commit limit (`CommitLimit - Committed_AS`), as the kernel charges
//!   private mappings in full when they are made;
//! - with an address-space limit (`ulimit -v`), what the VMM's mappings of
//!   guest RAM leave room for: the RAM itself and GMM's chunk space, about
//!   three times the RAM ([`gmm::GmmConfig::backing_bytes`]);
//! - and never more than GMM addresses ([`gmm::MAX_PAGES`], 4 TiB).
//!
//! Up to that bound a VM starts at once and costs host memory only as its
//! guest touches pages, so several VMs may together overcommit the host.
//! Beyond it (`--mem 1T` on a 24 GiB host, or a saved state claiming that
//! much) the VM is refused before anything is allocated, with the bound and
//! where it comes from in the error.

use std::fmt;

use crate::error::{Error, Result};

/// The kernel's overcommit policy (`/proc/sys/vm/overcommit_memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overcommit {
    /// Mode 0: obvious overcommits are refused.
    Heuristic,
    /// Mode 1: never refused.
    Always,
    /// Mode 2: commits are limited; `available` bytes are left under the
    /// limit (`CommitLimit - Committed_AS`).
    Strict {
        /// Bytes that may still be committed.
        available: u64,
    },
}

/// What the host offers a VMM's guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    /// Physical memory (`MemTotal`).
    pub ram: u64,
    /// Swap space (`SwapTotal`).
    pub swap: u64,
    /// The overcommit policy.
    pub overcommit: Overcommit,
    /// Address space this process may still map under `RLIMIT_AS`
    /// (`None`: unlimited).
    pub address_space: Option<u64>,
}

/// The largest guest RAM a host allows and what sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamBound {
    /// The most guest RAM, in bytes.
    pub bytes: u64,
    /// Where the bound comes from.
    pub reason: BoundReason,
}

/// What limits guest RAM on a host (see the module's rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundReason {
    /// Host RAM plus swap.
    RamAndSwap {
        /// Host RAM.
        ram: u64,
        /// Host swap.
        swap: u64,
    },
    /// Strict overcommit: what is left under the commit limit.
    CommitLimit,
    /// The address-space limit.
    AddressSpace {
        /// Address space left.
        left: u64,
    },
    /// What GMM addresses.
    Gmm,
}

/// Bytes in a GMM page.
const PAGE: u64 = gmm::PAGE_SIZE as u64;

/// Address space the VMM maps for `ram` bytes of guest RAM: the RAM region
/// and GMM's chunk space.
fn address_space_for(ram: u64) -> u64 {
    let pages = ram.div_ceil(PAGE).min(gmm::MAX_PAGES);
    ram.saturating_add(gmm::GmmConfig::new(pages).backing_bytes())
}

impl HostMemory {
    /// Reads this host's figures from `/proc` and `getrlimit`.
    pub fn probe() -> Result<Self> {
        let meminfo = read_proc("/proc/meminfo")?;
        let field = |name: &str| meminfo_kib(&meminfo, name).map(|kib| kib * 1024);
        let mode = read_proc("/proc/sys/vm/overcommit_memory")?;
        let overcommit = match mode.trim() {
            "1" => Overcommit::Always,
            "2" => Overcommit::Strict {
                available: field("CommitLimit")?.saturating_sub(field("Committed_AS")?),
            },
            _ => Overcommit::Heuristic,
        };
        Ok(HostMemory {
            ram: field("MemTotal")?,
            swap: field("SwapTotal")?,
            overcommit,
            address_space: address_space_left()?,
        })
    }

    /// The most guest RAM this host allows (see the module's rule).
    pub fn ram_bound(&self) -> RamBound {
        let mut bound = RamBound {
            bytes: self.ram.saturating_add(self.swap),
            reason: BoundReason::RamAndSwap {
                ram: self.ram,
                swap: self.swap,
            },
        };
        let mut lower = |bytes: u64, reason: BoundReason| {
            if bytes < bound.bytes {
                bound = RamBound { bytes, reason };
            }
        };
        if let Overcommit::Strict { available } = self.overcommit {
            lower(available, BoundReason::CommitLimit);
        }
        if let Some(left) = self.address_space {
            lower(
                largest_fitting(left, address_space_for),
                BoundReason::AddressSpace { left },
            );
        }
        lower(gmm::MAX_PAGES * PAGE, BoundReason::Gmm);
        bound
    }

    /// Refuses `ram` bytes of guest RAM beyond [`ram_bound`](Self::ram_bound).
    pub fn check(&self, ram: u64) -> Result<()> {
        let bound = self.ram_bound();
        if ram <= bound.bytes {
            return Ok(());
        }
        Err(Error::Config(format!(
            "{} of guest RAM is more than this host can give a guest: at most {} ({}); \
             guest RAM up to that starts at once and takes host memory only as the guest \
             uses it",
            Size(ram),
            Size(bound.bytes),
            bound.reason
        )))
    }
}

impl fmt::Display for BoundReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BoundReason::RamAndSwap { ram, swap } => {
                write!(f, "its {} of RAM plus {} of swap", Size(ram), Size(swap))
            }
            BoundReason::CommitLimit => write!(
                f,
                "what strict overcommit (vm.overcommit_memory=2) leaves under the commit limit"
            ),
            BoundReason::AddressSpace { left } => write!(
                f,
                "the address-space limit (ulimit -v) leaves {}, and the VMM maps guest RAM \
                 about four times over",
                Size(left)
            ),
            BoundReason::Gmm => write!(f, "the most GMM addresses"),
        }
    }
}

/// The largest page multiple `x` with `need(x) <= budget` (`need` grows
/// with `x`).
fn largest_fitting(budget: u64, need: impl Fn(u64) -> u64) -> u64 {
    let (mut lo, mut hi) = (0u64, budget / PAGE);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if need(mid * PAGE) <= budget {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo * PAGE
}

fn read_proc(path: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read {path} to size guest RAM: {e}")))
}

/// The value of `name:` in `/proc/meminfo` text, in KiB.
fn meminfo_kib(text: &str, name: &str) -> Result<u64> {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .ok_or_else(|| Error::Config(format!("/proc/meminfo has no {name} figure")))
}

/// Address space left under `RLIMIT_AS`: the soft limit minus what the
/// process maps now (`None` without a limit).
fn address_space_left() -> Result<Option<u64>> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: FFI writing into a valid rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0 {
        return Err(Error::Config(format!(
            "getrlimit(RLIMIT_AS): {}",
            std::io::Error::last_os_error()
        )));
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return Ok(None);
    }
    let statm = read_proc("/proc/self/statm")?;
    let mapped_pages: u64 = statm
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Config("/proc/self/statm has no size".into()))?;
    // SAFETY: FFI without memory arguments.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    Ok(Some(
        limit
            .rlim_cur
            .saturating_sub(mapped_pages.saturating_mul(page)),
    ))
}

/// A byte count in the largest binary unit that keeps it readable.
struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 || value.fract() == 0.0 {
            write!(f, "{value} {}", UNITS[unit])
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn host(ram: u64, swap: u64, overcommit: Overcommit) -> HostMemory {
        HostMemory {
            ram,
            swap,
            overcommit,
            address_space: None,
        }
    }

    #[test]
    fn ram_and_swap_bound_every_policy_but_strict() {
        for mode in [Overcommit::Heuristic, Overcommit::Always] {
            let h = host(24 * GIB, 0, mode);
            h.check(24 * GIB).unwrap();
            let err = h.check(1 << 40).unwrap_err().to_string();
            assert!(
                err.contains("1 TiB of guest RAM")
                    && err.contains("at most 24 GiB")
                    && err.contains("24 GiB of RAM plus 0 bytes of swap"),
                "{err}"
            );
            host(24 * GIB, 8 * GIB, mode).check(32 * GIB).unwrap();
            assert!(host(24 * GIB, 8 * GIB, mode).check(33 * GIB).is_err());
        }
    }

    #[test]
    fn strict_overcommit_bounds_by_what_is_left_to_commit() {
        let h = host(
            24 * GIB,
            0,
            Overcommit::Strict {
                available: 10 * GIB,
            },
        );
        h.check(10 * GIB).unwrap();
        let err = h.check(11 * GIB).unwrap_err().to_string();
        assert!(
            err.contains("at most 10 GiB") && err.contains("commit limit"),
            "{err}"
        );
    }

    #[test]
    fn the_address_space_limit_fits_the_ram_and_the_chunk_space() {
        let h = HostMemory {
            address_space: Some(16 * GIB),
            ..host(64 * GIB, 0, Overcommit::Heuristic)
        };
        let bound = h.ram_bound();
        assert!(matches!(bound.reason, BoundReason::AddressSpace { .. }));
        assert!(address_space_for(bound.bytes) <= 16 * GIB);
        assert!(address_space_for(bound.bytes + PAGE) > 16 * GIB);
        assert!(bound.bytes > 3 * GIB && bound.bytes < 4 * GIB, "{bound:?}");
        let err = h.check(8 * GIB).unwrap_err().to_string();
        assert!(err.contains("ulimit -v"), "{err}");
    }

    #[test]
    fn gmm_bounds_the_largest_hosts() {
        let bound = host(1 << 50, 0, Overcommit::Always).ram_bound();
        assert_eq!(bound.reason, BoundReason::Gmm);
        assert_eq!(bound.bytes, 4 << 40);
    }

    #[test]
    fn this_hosts_figures_are_read() {
        let h = HostMemory::probe().unwrap();
        assert!(h.ram >= 64 << 20, "{h:?}");
        assert!(h.ram_bound().bytes >= 64 << 20, "{h:?}");
    }

    #[test]
    fn meminfo_figures_are_parsed_by_exact_name() {
        let text = "MemTotal:       24576000 kB\nSwapTotal:             0 kB\n";
        assert_eq!(meminfo_kib(text, "MemTotal").unwrap(), 24_576_000);
        assert_eq!(meminfo_kib(text, "SwapTotal").unwrap(), 0);
        assert!(meminfo_kib(text, "Mem").is_err());
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(Size(1 << 40).to_string(), "1 TiB");
        assert_eq!(Size(3 << 29).to_string(), "1.5 GiB");
        assert_eq!(Size(0).to_string(), "0 bytes");
    }
}
