//! The `gmm` info handler text (the lead registers it with `dbgf`).

use std::fmt;

use crate::gmm::Gmm;
use crate::ids::PAGE_SIZE;

fn mib(pages: u64) -> f64 {
    (pages * PAGE_SIZE as u64) as f64 / (1024.0 * 1024.0)
}

impl Gmm {
    /// Writes the `gmm` info handler's text: global numbers, then one block
    /// per VM. `args` may be `"global"` to leave out the per-VM part.
    ///
    /// ```
    /// let gmm = gmm::Gmm::new(gmm::GmmConfig::new(1024))?;
    /// let _vm = gmm.register_vm("test", gmm::Reservation { base: 64, ..Default::default() })?;
    /// let mut out = String::new();
    /// gmm.format_info("", &mut out).unwrap();
    /// assert!(out.contains("VM 1 'test'"));
    /// # Ok::<(), gmm::Error>(())
    /// ```
    pub fn format_info(&self, args: &str, out: &mut dyn fmt::Write) -> fmt::Result {
        let g = self.stats();
        writeln!(out, "Global memory manager")?;
        writeln!(
            out,
            "  max pages:        {:>10} ({:.1} MiB)",
            g.max_pages,
            mib(g.max_pages)
        )?;
        writeln!(out, "  reserved pages:   {:>10}", g.reserved_pages)?;
        writeln!(
            out,
            "  allocated pages:  {:>10} ({:.1} MiB)",
            g.allocated_pages,
            mib(g.allocated_pages)
        )?;
        writeln!(
            out,
            "  shared pages:     {:>10} backing {} guest pages, {} saved ({:.1} MiB)",
            g.shared_pages,
            g.sharing_guest_pages,
            g.saved_pages,
            mib(g.saved_pages)
        )?;
        writeln!(
            out,
            "  ballooned pages:  {:>10} ({} parked)",
            g.ballooned_pages, g.parked_pages
        )?;
        writeln!(
            out,
            "  chunks:           {:>10} ({} empty, {} partly used, limit {}; {} created, {} freed)",
            g.chunks,
            g.empty_chunks,
            g.partial_chunks,
            g.chunk_limit,
            g.chunks_created,
            g.chunks_freed
        )?;
        writeln!(
            out,
            "  host memory:      {:>10} bytes in chunks, {} freed pages pending return ({} reclaim errors)",
            g.backing_bytes, g.pending_pages, g.reclaim_errors
        )?;
        writeln!(
            out,
            "  sharing scans:    {:>10} ({} pages deduplicated, {} unshared by writes)",
            g.scans, g.pages_deduplicated, g.cow_unshares
        )?;
        if args.trim() == "global" {
            return Ok(());
        }
        for v in self.vm_stats() {
            writeln!(out, "VM {} '{}'", v.id, v.name)?;
            writeln!(
                out,
                "  reserved:  base {} shadow {} fixed {}",
                v.reserved.base, v.reserved.shadow, v.reserved.fixed
            )?;
            writeln!(
                out,
                "  allocated: base {} shadow {} fixed {}",
                v.allocated.base, v.allocated.shadow, v.allocated.fixed
            )?;
            writeln!(
                out,
                "  private {} shared {} ballooned {} (parked {})",
                v.private, v.shared, v.ballooned, v.parked
            )?;
        }
        Ok(())
    }
}
