//! A vCPU's complete architectural state, and the VM-wide interrupt
//! controller and timer state, as KVM keeps them: what a saved state or a
//! teleport carries.
//!
//! [`CpuState`] gathers general, segment, control and debug registers, the
//! x87/SSE state, XCR0 (when the guest has XSAVE), every MSR KVM lists as
//! saveable, pending events (injected exception, interrupt, NMI, interrupt
//! shadow), the multi-processor state and the local APIC. [`IrqchipState`]
//! holds the in-kernel PIC pair and the IOAPIC, [`PitState`] the PIT.
//!
//! Both encode to a self-describing byte string ([`CpuState::encode`]):
//! tagged sections of KVM's own layouts, so that decoding checks every
//! section's size and a damaged or foreign blob is refused with an error
//! instead of being loaded.

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_irqchip,
    kvm_lapic_state, kvm_mp_state, kvm_pit_state2, kvm_vcpu_events, kvm_xcrs,
};
use serde::Deserialize;
use serde::de::value::{BytesDeserializer, Error as ValueError};
use zerocopy::{Immutable, IntoBytes};

use crate::error::{Error, Result, ioctl};
use crate::hypervisor::Hypervisor;
use crate::msrs::MsrValue;
use crate::vcpu::{DebugRegs, Fpu, Regs, Sregs, VcpuState};
use crate::vm::Vm;

/// Everything KVM keeps about one vCPU.
///
/// ```no_run
/// let hv = hm_vmx::Hypervisor::open()?;
/// let msrs = hv.saved_msr_indices()?;
/// let mut vm = hv.create_vm()?;
/// vm.create_irqchip()?;
/// let vcpu = vm.create_vcpu(0)?;
/// let state = hm_vmx::CpuState::read(vcpu.state(), &msrs, true)?;
/// let blob = state.encode();
/// let again = hm_vmx::CpuState::decode(&blob)?;
/// again.write(vcpu.state())?;
/// # Ok::<(), hm_vmx::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct CpuState {
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: Regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base.
    pub sregs: Sregs,
    /// x87 and SSE state.
    pub fpu: Fpu,
    /// DR0–DR3, DR6, DR7.
    pub debug_regs: DebugRegs,
    /// Extended control registers, when the guest CPUID has XSAVE.
    pub xcrs: Option<kvm_xcrs>,
    /// Pending and injected events, interrupt shadow, NMI masking.
    pub events: kvm_vcpu_events,
    /// Every MSR that could be read, in index order of the host's list.
    pub msrs: Vec<MsrValue>,
    /// Multi-processor state and local APIC (with an in-kernel irqchip).
    pub apic: Option<(kvm_mp_state, kvm_lapic_state)>,
}

/// Section tags of the encoding.
const TAG_REGS: u8 = 1;
const TAG_SREGS: u8 = 2;
const TAG_FPU: u8 = 3;
const TAG_DEBUG: u8 = 4;
const TAG_XCRS: u8 = 5;
const TAG_EVENTS: u8 = 6;
const TAG_MSRS: u8 = 7;
const TAG_MP_STATE: u8 = 8;
const TAG_LAPIC: u8 = 9;
const TAG_PIC_MASTER: u8 = 20;
const TAG_PIC_SLAVE: u8 = 21;
const TAG_IOAPIC: u8 = 22;
const TAG_PIT: u8 = 23;

/// CPUID.1:ECX bit 26, XSAVE.
const CPUID_1_ECX_XSAVE: u32 = 1 << 26;
/// IA32_TSC_DEADLINE: the local APIC timer's deadline in TSC-deadline mode.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

impl Hypervisor {
    /// The MSRs a saved state carries: KVM's list of MSRs to save
    /// (`KVM_GET_MSR_INDEX_LIST`).
    pub fn saved_msr_indices(&self) -> Result<Vec<u32>> {
        let list = self
            .kvm()
            .get_msr_index_list()
            .map_err(ioctl("KVM_GET_MSR_INDEX_LIST"))?;
        Ok(list.as_slice().to_vec())
    }
}

impl Vm {
    /// Whether the guest CPUID offers XSAVE (then XCR0 is part of a vCPU's state).
    pub fn guest_has_xsave(&self) -> bool {
        self.cpuid()
            .as_slice()
            .iter()
            .any(|e| e.function == 1 && e.index == 0 && e.ecx & CPUID_1_ECX_XSAVE != 0)
    }
}

impl CpuState {
    /// Reads the state of a stopped vCPU. `msr_indices` is the list from
    /// [`Hypervisor::saved_msr_indices`] (MSRs this vCPU refuses to read
    /// are left out); `xcrs`: read XCR0 too ([`Vm::guest_has_xsave`]).
    /// MP state and local APIC are read when the VM has an in-kernel irqchip.
    pub fn read(vcpu: &VcpuState, msr_indices: &[u32], xcrs: bool) -> Result<CpuState> {
        let fd = vcpu.kvm_fd();
        let apic = match fd.get_mp_state() {
            Ok(mp) => Some((mp, fd.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?)),
            // Without an in-kernel irqchip there is no MP state or APIC.
            Err(e) if e.errno() == libc::EINVAL || e.errno() == libc::ENXIO => None,
            Err(e) => return Err(ioctl("KVM_GET_MP_STATE")(e)),
        };
        Ok(CpuState {
            regs: vcpu.regs()?,
            sregs: vcpu.sregs()?,
            fpu: fd.get_fpu().map_err(ioctl("KVM_GET_FPU"))?,
            debug_regs: vcpu.debug_regs()?,
            xcrs: if xcrs {
                Some(fd.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?)
            } else {
                None
            },
            events: fd.get_vcpu_events().map_err(ioctl("KVM_GET_VCPU_EVENTS"))?,
            msrs: vcpu.msrs(msr_indices)?,
            apic,
        })
    }

    /// Loads the state into a stopped vCPU of a VM built the same way (same
    /// CPUID, irqchip or not).
    pub fn write(&self, vcpu: &VcpuState) -> Result<()> {
        let fd = vcpu.kvm_fd();
        // The order follows KVM's dependencies: control registers and EFER
        // before the MSRs that depend on them, the APIC before the events
        // and MP state that refer to it.
        vcpu.set_sregs(&self.sregs)?;
        vcpu.set_regs(&self.regs)?;
        fd.set_fpu(&self.fpu).map_err(ioctl("KVM_SET_FPU"))?;
        if let Some(xcrs) = &self.xcrs {
            fd.set_xcrs(xcrs).map_err(ioctl("KVM_SET_XCRS"))?;
        }
        // KVM ignores a TSC deadline unless the local APIC's timer is in
        // TSC-deadline mode, so the deadline goes in after the APIC (else
        // a restored guest's timer never fires).
        let (deadline, msrs): (Vec<MsrValue>, Vec<MsrValue>) = self
            .msrs
            .iter()
            .copied()
            .partition(|m| m.index == MSR_IA32_TSC_DEADLINE);
        vcpu.set_msrs(&msrs)?;
        if let Some((_, lapic)) = &self.apic {
            fd.set_lapic(lapic).map_err(ioctl("KVM_SET_LAPIC"))?;
        }
        vcpu.set_msrs(&deadline)?;
        fd.set_vcpu_events(&self.events)
            .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
        if let Some((mp, _)) = &self.apic {
            fd.set_mp_state(*mp).map_err(ioctl("KVM_SET_MP_STATE"))?;
        }
        fd.set_debug_regs(&self.debug_regs)
            .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
        vcpu.entry.state_written();
        Ok(())
    }

    /// Encodes the state as tagged sections of KVM's layouts.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4096);
        put(&mut out, TAG_REGS, &self.regs);
        put(&mut out, TAG_SREGS, &self.sregs);
        put_section(&mut out, TAG_FPU, &encode_fpu(&self.fpu));
        put(&mut out, TAG_DEBUG, &self.debug_regs);
        if let Some(xcrs) = &self.xcrs {
            put(&mut out, TAG_XCRS, xcrs);
        }
        put(&mut out, TAG_EVENTS, &self.events);
        let msrs: Vec<u8> = self
            .msrs
            .iter()
            .flat_map(|m| {
                m.index
                    .to_le_bytes()
                    .into_iter()
                    .chain(m.value.to_le_bytes())
            })
            .collect();
        put_section(&mut out, TAG_MSRS, &msrs);
        if let Some((mp, lapic)) = &self.apic {
            put(&mut out, TAG_MP_STATE, mp);
            put(&mut out, TAG_LAPIC, lapic);
        }
        out
    }

    /// Decodes what [`encode`](CpuState::encode) wrote; sections of the
    /// wrong size, unknown or missing sections are errors.
    pub fn decode(bytes: &[u8]) -> Result<CpuState> {
        let sections = Sections::parse(bytes)?;
        let regs = sections.get(TAG_REGS, "general registers")?;
        let msr_bytes = sections.required(TAG_MSRS, "MSRs")?;
        if msr_bytes.len() % 12 != 0 {
            return Err(bad_state(format!(
                "MSR section of {} bytes is not a list of 12-byte entries",
                msr_bytes.len()
            )));
        }
        let msrs = msr_bytes
            .chunks_exact(12)
            .map(|c| {
                let (index, value) = c.split_at(4);
                MsrValue {
                    index: u32::from_le_bytes(index.try_into().unwrap_or_default()),
                    value: u64::from_le_bytes(value.try_into().unwrap_or_default()),
                }
            })
            .collect();
        let apic = match (
            sections.optional(TAG_MP_STATE, "MP state")?,
            sections.optional(TAG_LAPIC, "local APIC")?,
        ) {
            (Some(mp), Some(lapic)) => Some((mp, lapic)),
            (None, None) => None,
            _ => {
                return Err(bad_state(
                    "MP state and local APIC must come together".into(),
                ));
            }
        };
        Ok(CpuState {
            regs,
            sregs: sections.get(TAG_SREGS, "segment and control registers")?,
            fpu: decode_fpu(sections.required(TAG_FPU, "FPU state")?)?,
            debug_regs: sections.get(TAG_DEBUG, "debug registers")?,
            xcrs: sections.optional(TAG_XCRS, "XCRs")?,
            events: sections.get(TAG_EVENTS, "vCPU events")?,
            msrs,
            apic,
        })
    }
}

/// The in-kernel interrupt controllers of a VM.
///
/// ```no_run
/// let hv = hm_vmx::Hypervisor::open()?;
/// let mut vm = hv.create_vm()?;
/// vm.create_irqchip()?;
/// let state = hm_vmx::IrqchipState::read(&vm)?;
/// hm_vmx::IrqchipState::decode(&state.encode())?.write(&vm)?;
/// # Ok::<(), hm_vmx::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct IrqchipState {
    /// The master 8259 PIC.
    pub pic_master: kvm_irqchip,
    /// The slave 8259 PIC.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
}

impl IrqchipState {
    /// Reads the state of a VM with an in-kernel irqchip.
    pub fn read(vm: &Vm) -> Result<IrqchipState> {
        if !vm.has_irqchip() {
            return Err(bad_state("the VM has no in-kernel irqchip".into()));
        }
        let chip = |chip_id| {
            let mut c = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.fd()
                .get_irqchip(&mut c)
                .map_err(ioctl("KVM_GET_IRQCHIP"))?;
            Ok::<_, Error>(c)
        };
        Ok(IrqchipState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
        })
    }

    /// Loads the state into a VM with an in-kernel irqchip.
    pub fn write(&self, vm: &Vm) -> Result<()> {
        for chip in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            vm.fd()
                .set_irqchip(chip)
                .map_err(ioctl("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }

    /// Encodes the state as tagged sections of KVM's layouts.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2048);
        put(&mut out, TAG_PIC_MASTER, &self.pic_master);
        put(&mut out, TAG_PIC_SLAVE, &self.pic_slave);
        put(&mut out, TAG_IOAPIC, &self.ioapic);
        out
    }

    /// Decodes what [`encode`](IrqchipState::encode) wrote, checking that
    /// each chip is the one its section claims.
    pub fn decode(bytes: &[u8]) -> Result<IrqchipState> {
        let s = Sections::parse(bytes)?;
        let state = IrqchipState {
            pic_master: s.get(TAG_PIC_MASTER, "master PIC")?,
            pic_slave: s.get(TAG_PIC_SLAVE, "slave PIC")?,
            ioapic: s.get(TAG_IOAPIC, "IOAPIC")?,
        };
        let ids = [
            state.pic_master.chip_id,
            state.pic_slave.chip_id,
            state.ioapic.chip_id,
        ];
        if ids
            != [
                KVM_IRQCHIP_PIC_MASTER,
                KVM_IRQCHIP_PIC_SLAVE,
                KVM_IRQCHIP_IOAPIC,
            ]
        {
            return Err(bad_state(format!(
                "interrupt controller ids {ids:?} are not PIC, PIC, IOAPIC"
            )));
        }
        Ok(state)
    }
}

/// Bytes of the FPU section: KVM's `kvm_fpu` fields in order, little endian.
const FPU_BYTES: usize = 8 * 16 + 2 + 2 + 1 + 2 + 8 + 8 + 16 * 16 + 4;

/// `kvm_fpu` has no byte-layout derive in `kvm-bindings`: its fields are
/// written one by one.
fn encode_fpu(f: &Fpu) -> Vec<u8> {
    let mut out = Vec::with_capacity(FPU_BYTES);
    f.fpr.iter().for_each(|r| out.extend_from_slice(r));
    out.extend_from_slice(&f.fcw.to_le_bytes());
    out.extend_from_slice(&f.fsw.to_le_bytes());
    out.push(f.ftwx);
    out.extend_from_slice(&f.last_opcode.to_le_bytes());
    out.extend_from_slice(&f.last_ip.to_le_bytes());
    out.extend_from_slice(&f.last_dp.to_le_bytes());
    f.xmm.iter().for_each(|r| out.extend_from_slice(r));
    out.extend_from_slice(&f.mxcsr.to_le_bytes());
    out
}

fn decode_fpu(bytes: &[u8]) -> Result<Fpu> {
    if bytes.len() != FPU_BYTES {
        return Err(bad_state(format!(
            "FPU state: {} bytes, expected {FPU_BYTES}",
            bytes.len()
        )));
    }
    let mut at = 0;
    let mut take = |n: usize| {
        let part = &bytes[at..at + n];
        at += n;
        part
    };
    let mut f = Fpu::default();
    f.fpr.iter_mut().for_each(|r| r.copy_from_slice(take(16)));
    f.fcw = u16::from_le_bytes([take(1)[0], take(1)[0]]);
    f.fsw = u16::from_le_bytes([take(1)[0], take(1)[0]]);
    f.ftwx = take(1)[0];
    f.last_opcode = u16::from_le_bytes([take(1)[0], take(1)[0]]);
    let mut u64_at = || {
        let mut b = [0u8; 8];
        b.copy_from_slice(take(8));
        u64::from_le_bytes(b)
    };
    f.last_ip = u64_at();
    f.last_dp = u64_at();
    f.xmm.iter_mut().for_each(|r| r.copy_from_slice(take(16)));
    let mut b = [0u8; 4];
    b.copy_from_slice(take(4));
    f.mxcsr = u32::from_le_bytes(b);
    Ok(f)
}

/// The in-kernel 8254 PIT of a VM (channels, latches, speaker gate).
///
/// ```no_run
/// let hv = hm_vmx::Hypervisor::open()?;
/// let mut vm = hv.create_vm()?;
/// vm.create_irqchip()?;
/// let pit = hm_vmx::PitState::read(&vm)?;
/// hm_vmx::PitState::decode(&pit.encode())?.write(&vm)?;
/// # Ok::<(), hm_vmx::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct PitState {
    /// KVM's PIT state.
    pub pit: kvm_pit_state2,
}

impl PitState {
    /// Reads the PIT of a VM created with an in-kernel irqchip and PIT.
    pub fn read(vm: &Vm) -> Result<PitState> {
        if !vm.has_irqchip() {
            return Err(bad_state("the VM has no in-kernel PIT".into()));
        }
        Ok(PitState {
            pit: vm.fd().get_pit2().map_err(ioctl("KVM_GET_PIT2"))?,
        })
    }

    /// Loads the state into the VM's in-kernel PIT.
    pub fn write(&self, vm: &Vm) -> Result<()> {
        vm.fd().set_pit2(&self.pit).map_err(ioctl("KVM_SET_PIT2"))
    }

    /// Encodes the state as a tagged section of KVM's layout.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        put(&mut out, TAG_PIT, &self.pit);
        out
    }

    /// Decodes what [`encode`](PitState::encode) wrote.
    pub fn decode(bytes: &[u8]) -> Result<PitState> {
        Ok(PitState {
            pit: Sections::parse(bytes)?.get(TAG_PIT, "PIT")?,
        })
    }
}

fn bad_state(message: String) -> Error {
    Error::BadCpuState(message)
}

fn put<T: IntoBytes + Immutable>(out: &mut Vec<u8>, tag: u8, value: &T) {
    put_section(out, tag, value.as_bytes());
}

fn put_section(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The sections of an encoded state, by tag.
struct Sections<'a> {
    found: Vec<(u8, &'a [u8])>,
}

impl<'a> Sections<'a> {
    fn parse(mut bytes: &'a [u8]) -> Result<Self> {
        let mut found: Vec<(u8, &[u8])> = Vec::new();
        while let Some((&tag, rest)) = bytes.split_first() {
            let (len, rest) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| bad_state(format!("section {tag} truncated in its length")))?;
            let len = u32::from_le_bytes(*len) as usize;
            if rest.len() < len {
                return Err(bad_state(format!(
                    "section {tag} claims {len} bytes, {} left",
                    rest.len()
                )));
            }
            if found.iter().any(|&(t, _)| t == tag) {
                return Err(bad_state(format!("section {tag} appears twice")));
            }
            let (body, rest) = rest.split_at(len);
            found.push((tag, body));
            bytes = rest;
        }
        Ok(Sections { found })
    }

    fn required(&self, tag: u8, what: &str) -> Result<&'a [u8]> {
        self.found
            .iter()
            .find(|&&(t, _)| t == tag)
            .map(|&(_, b)| b)
            .ok_or_else(|| bad_state(format!("no {what} section")))
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, tag: u8, what: &str) -> Result<T> {
        let bytes = self.required(tag, what)?;
        from_bytes(bytes, what)
    }

    fn optional<T: for<'de> Deserialize<'de>>(&self, tag: u8, what: &str) -> Result<Option<T>> {
        match self.found.iter().find(|&&(t, _)| t == tag) {
            Some(&(_, bytes)) => from_bytes(bytes, what).map(Some),
            None => Ok(None),
        }
    }
}

fn from_bytes<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T> {
    let expected = std::mem::size_of::<T>();
    if bytes.len() != expected {
        return Err(bad_state(format!(
            "{what}: {} bytes, expected {expected}",
            bytes.len()
        )));
    }
    T::deserialize(BytesDeserializer::<ValueError>::new(bytes))
        .map_err(|e| bad_state(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests;
