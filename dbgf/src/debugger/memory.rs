//! Guest memory and code through the debugger: reads hide the `int3` bytes
//! of software breakpoints, writes keep them armed.

use super::*;

impl Debugger {
    /// Reads guest-physical memory with `int3` patches hidden.
    pub fn read_phys<T: DebugTarget + ?Sized>(
        &self,
        target: &mut T,
        addr: u64,
        buf: &mut [u8],
    ) -> Result<(), DebuggerError> {
        target.read_phys(addr, buf)?;
        self.unpatch(addr, buf);
        Ok(())
    }

    /// Reads memory at a linear address with `int3` patches hidden.
    pub fn read_virt<T: DebugTarget + ?Sized>(
        &self,
        target: &mut T,
        cpu: u32,
        addr: u64,
        buf: &mut [u8],
    ) -> Result<(), DebuggerError> {
        check_cpu(target, cpu)?;
        target.read_virt(cpu, addr, buf)?;
        if self.table.has_software() {
            for (off, len) in page_chunks(addr, buf.len()) {
                let phys = target.translate(cpu, addr.wrapping_add(off as u64))?;
                self.unpatch(phys, &mut buf[off..off + len]);
            }
        }
        Ok(())
    }

    /// Writes guest-physical memory; bytes under an `int3` update the saved original and
    /// the `int3` stays in place.
    pub fn write_phys<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        addr: u64,
        data: &[u8],
    ) -> Result<(), DebuggerError> {
        let mut patched = data.to_vec();
        let lifted = self.lifted_sw();
        for (i, byte) in patched.iter_mut().enumerate() {
            let phys = addr.wrapping_add(i as u64);
            if let Some(e) = self.table.software_at_phys_mut(phys) {
                e.original = *byte;
                if !lifted.contains(&e.bp.id) {
                    *byte = INT3;
                }
            }
        }
        target.write_phys(addr, &patched)?;
        Ok(())
    }

    /// Writes memory at a linear address, keeping `int3` patches in place.
    pub fn write_virt<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        cpu: u32,
        addr: u64,
        data: &[u8],
    ) -> Result<(), DebuggerError> {
        check_cpu(target, cpu)?;
        if !self.table.has_software() {
            target.write_virt(cpu, addr, data)?;
            return Ok(());
        }
        for (off, len) in page_chunks(addr, data.len()) {
            let phys = target.translate(cpu, addr.wrapping_add(off as u64))?;
            self.write_phys(target, phys, &data[off..off + len])?;
        }
        Ok(())
    }

    /// Disassembles up to `count` instructions at a linear address in `cpu`'s current
    /// code size, with `int3` patches hidden. Stops early at unreadable memory.
    pub fn disassemble<T: DebugTarget + ?Sized>(
        &self,
        target: &mut T,
        cpu: u32,
        addr: u64,
        count: usize,
    ) -> Result<Vec<DisasLine>, DebuggerError> {
        check_cpu(target, cpu)?;
        let bitness = target.read_regs(cpu)?.bitness();
        let want = count.saturating_mul(MAX_INSN_LEN);
        let mut code = Vec::with_capacity(want);
        for (off, len) in page_chunks(addr, want) {
            let mut chunk = vec![0u8; len];
            if self
                .read_virt(target, cpu, addr.wrapping_add(off as u64), &mut chunk)
                .is_err()
            {
                break;
            }
            code.extend_from_slice(&chunk);
        }
        Ok(disassemble(&code, addr, bitness, count))
    }

    /// Hides `int3` patches in a buffer read from guest-physical `addr`.
    fn unpatch(&self, addr: u64, buf: &mut [u8]) {
        let lifted = self.lifted_sw();
        for (phys, e) in self.table.software() {
            if lifted.contains(&e.bp.id) {
                continue;
            }
            if let Some(off) = phys.checked_sub(addr) {
                if let Some(b) = usize::try_from(off).ok().and_then(|o| buf.get_mut(o)) {
                    *b = e.original;
                }
            }
        }
    }
}
