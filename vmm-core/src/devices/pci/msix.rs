//! MSI-X: the capability in configuration space, the vector table and the
//! pending-bit array in a BAR, and delivery through KVM MSI routes.
//!
//! Each vector gets an MSI GSI and its irqfd when the function is built.
//! The message the guest writes into a table entry becomes the GSI's
//! route; [`Msix::signal`] writes the irqfd unless the vector or the whole
//! function is masked, in which case the vector's pending bit is set and
//! the message goes out when the mask is lifted (PCI 3.0 section 6.8.2).

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::irq::IrqRouting;

/// The MSI-X capability ID.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Bytes of a table entry.
pub const ENTRY_SIZE: usize = 16;
/// Message control: MSI-X enable.
const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: masked.
const VECTOR_MASKED: u8 = 1;
/// Offsets within an entry.
const ENTRY_DATA: usize = 8;
const ENTRY_CONTROL: usize = 12;
/// The most vectors a capability describes.
pub const MAX_VECTORS: u16 = 2048;

/// Where the table and the PBA live: BAR indices and offsets in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixPlacement {
    /// BAR of the table.
    pub table_bar: u8,
    /// Offset of the table in it (8-byte aligned).
    pub table_offset: u32,
    /// BAR of the pending-bit array.
    pub pba_bar: u8,
    /// Offset of the PBA in it (8-byte aligned).
    pub pba_offset: u32,
}

/// What MSI-X saves: the table, the pending bits and the message control
/// bits (the latter also live in configuration space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsixState {
    /// Each entry's 16 bytes.
    pub table: Vec<[u8; ENTRY_SIZE]>,
    /// Each vector's pending bit.
    pub pending: Vec<bool>,
}

/// A function's MSI-X vectors.
pub struct Msix {
    table: Vec<[u8; ENTRY_SIZE]>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
    /// Each vector's GSI and irqfd.
    vectors: Vec<(u32, EventFd)>,
    /// The message each GSI is routed to in KVM now.
    routed: Vec<Option<(u64, u32)>>,
    routing: Arc<dyn IrqRouting>,
}

fn masked_entry() -> [u8; ENTRY_SIZE] {
    let mut e = [0; ENTRY_SIZE];
    e[ENTRY_CONTROL] = VECTOR_MASKED;
    e
}

impl Msix {
    /// `count` vectors (1 to `MAX_VECTORS`), all masked, MSI-X disabled.
    pub fn new(count: u16, routing: Arc<dyn IrqRouting>) -> Result<Self, String> {
        if count == 0 || count > MAX_VECTORS {
            return Err(format!("{count} MSI-X vectors (1 to {MAX_VECTORS})"));
        }
        let vectors = (0..count)
            .map(|_| routing.allocate_msi())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Msix {
            table: vec![masked_entry(); usize::from(count)],
            pending: vec![false; usize::from(count)],
            enabled: false,
            function_masked: false,
            routed: vec![None; usize::from(count)],
            vectors,
            routing,
        })
    }

    /// The number of vectors.
    pub fn count(&self) -> u16 {
        self.table.len() as u16
    }

    /// Bytes of the table.
    pub fn table_size(&self) -> u64 {
        (self.table.len() * ENTRY_SIZE) as u64
    }

    /// Bytes of the pending-bit array (whole qwords).
    pub fn pba_size(&self) -> u64 {
        self.table.len().div_ceil(64) as u64 * 8
    }

    /// The capability body (after ID and next pointer) and its writable
    /// mask, for [`ConfigSpace::add_capability`](super::ConfigSpace::add_capability).
    pub fn capability(&self, at: MsixPlacement) -> ([u8; 10], [u8; 10]) {
        let mut body = [0; 10];
        body[0..2].copy_from_slice(&(self.count() - 1).to_le_bytes());
        let table = at.table_offset & !7 | u32::from(at.table_bar & 7);
        let pba = at.pba_offset & !7 | u32::from(at.pba_bar & 7);
        body[2..6].copy_from_slice(&table.to_le_bytes());
        body[6..10].copy_from_slice(&pba.to_le_bytes());
        let mut writable = [0; 10];
        writable[1] = ((CONTROL_ENABLE | CONTROL_FUNCTION_MASK) >> 8) as u8;
        (body, writable)
    }

    /// Takes the message control the guest wrote into configuration space.
    pub fn set_control(&mut self, control: u16) {
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        self.deliver_pending();
    }

    /// The enable and function-mask bits of the message control in force.
    pub fn control(&self) -> u16 {
        let bit = |on: bool, b: u16| if on { b } else { 0 };
        bit(self.enabled, CONTROL_ENABLE) | bit(self.function_masked, CONTROL_FUNCTION_MASK)
    }

    /// Whether the guest enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Reads the table at `offset`.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset as usize + i;
            *b = self
                .table
                .get(at / ENTRY_SIZE)
                .map_or(0, |e| e[at % ENTRY_SIZE]);
        }
    }

    /// A guest write into the table at `offset`: a changed message is
    /// routed, an unmasked vector's pending message sent.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        let mut touched = Vec::new();
        for (i, &b) in data.iter().enumerate() {
            let at = offset as usize + i;
            if let Some(entry) = self.table.get_mut(at / ENTRY_SIZE) {
                entry[at % ENTRY_SIZE] = b;
                touched.push(at / ENTRY_SIZE);
            }
        }
        touched.dedup();
        for v in touched {
            self.route(v)?;
        }
        self.deliver_pending();
        Ok(())
    }

    /// Reads the pending-bit array at `offset` (writes to it are ignored).
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let first = (offset as usize + i) * 8;
            *b = (0..8)
                .filter(|bit| self.pending.get(first + bit).copied().unwrap_or(false))
                .fold(0, |acc, bit| acc | 1 << bit);
        }
    }

    fn message(&self, v: usize) -> (u64, u32) {
        let e = &self.table[v];
        let mut a = [0; 8];
        a.copy_from_slice(&e[..8]);
        let mut d = [0; 4];
        d.copy_from_slice(&e[ENTRY_DATA..ENTRY_DATA + 4]);
        (u64::from_le_bytes(a), u32::from_le_bytes(d))
    }

    fn masked(&self, v: usize) -> bool {
        self.function_masked || self.table[v][ENTRY_CONTROL] & VECTOR_MASKED != 0
    }

    /// Makes KVM's route of vector `v` the entry's message.
    fn route(&mut self, v: usize) -> Result<(), String> {
        let msg = self.message(v);
        // An entry never programmed has no message to route.
        if msg == (0, 0) || self.routed[v] == Some(msg) {
            return Ok(());
        }
        self.routing
            .set_msi_route(self.vectors[v].0, msg.0, msg.1)?;
        self.routed[v] = Some(msg);
        Ok(())
    }

    /// Sends the pending messages of vectors no longer masked.
    fn deliver_pending(&mut self) {
        if !self.enabled {
            return;
        }
        for v in 0..self.table.len() {
            if self.pending[v] && !self.masked(v) {
                self.pending[v] = false;
                self.fire(v);
            }
        }
    }

    fn fire(&self, v: usize) {
        if let Err(e) = self.vectors[v].1.write(1) {
            tracing::warn!("MSI-X vector {v}: irqfd write failed: {e}");
        }
    }

    /// Signals vector `vector`: sent now, or pending while masked. False
    /// if MSI-X is disabled (the function falls back to INTx); a vector
    /// past the table is dropped.
    pub fn signal(&mut self, vector: u16) -> bool {
        if !self.enabled {
            return false;
        }
        let v = usize::from(vector);
        if v >= self.table.len() {
            return true;
        }
        if self.masked(v) {
            self.pending[v] = true;
        } else {
            self.fire(v);
        }
        true
    }

    /// Whether vector `vector` is pending.
    pub fn is_pending(&self, vector: u16) -> bool {
        self.pending
            .get(usize::from(vector))
            .copied()
            .unwrap_or(false)
    }

    /// Back to power-on: every vector masked, nothing pending, disabled;
    /// the KVM routes are removed.
    pub fn reset(&mut self) {
        self.table.fill(masked_entry());
        self.pending.fill(false);
        self.enabled = false;
        self.function_masked = false;
        for (v, routed) in self.routed.iter_mut().enumerate() {
            if routed.take().is_some()
                && let Err(e) = self.routing.remove_msi_route(self.vectors[v].0)
            {
                tracing::warn!("MSI-X vector {v}: {e}");
            }
        }
    }

    /// What a save keeps.
    pub fn state(&self) -> MsixState {
        MsixState {
            table: self.table.clone(),
            pending: self.pending.clone(),
        }
    }

    /// Restores [`state`](Self::state) and the message `control` from
    /// configuration space; every message is routed again.
    pub fn set_state(&mut self, state: &MsixState, control: u16) -> Result<(), String> {
        if state.table.len() != self.table.len() || state.pending.len() != self.pending.len() {
            return Err(format!(
                "{} MSI-X vectors saved, this function has {}",
                state.table.len(),
                self.table.len()
            ));
        }
        self.table.clone_from(&state.table);
        self.pending.clone_from(&state.pending);
        self.routed.fill(None);
        for v in 0..self.table.len() {
            self.route(v)?;
        }
        self.set_control(control);
        Ok(())
    }
}

#[cfg(test)]
#[path = "msix_tests.rs"]
mod tests;
