//! `mode` and `pgmcr3`: the guest's paging as `pgm` sees it, per vCPU.

use std::fmt::Write;
use std::sync::Arc;

use dbgf::{InfoCall, InfoError, InfoFlags, InfoRegistry};
use hm_vmx::VcpuState;
use parking_lot::Mutex;
use pgm::paging::{CpuFeatures, HostPaging, ModeTracker, PagingState, info_mode, info_pgmcr3};
use pgm::phys::SharedPhysMap;

/// The guest's paging-relevant CPUID bits, from the CPUID the vCPUs get.
pub(crate) fn guest_features(cpuid: &hm_vmx::Cpuid) -> Result<CpuFeatures, InfoError> {
    let leaf = |function: u32| {
        cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == 0)
    };
    let leaf1_edx = leaf(1).map_or(0, |e| e.edx);
    let ext1_edx = leaf(0x8000_0001).map_or(0, |e| e.edx);
    let ext8_eax = leaf(0x8000_0008).map(|e| e.eax);
    CpuFeatures::from_cpuid(leaf1_edx, ext1_edx, ext8_eax)
        .map_err(|e| InfoError::Failed(e.to_string()))
}

/// Reads a vCPU's paging registers into a walker state.
fn paging_state(
    state: &VcpuState,
    features: CpuFeatures,
    phys: &SharedPhysMap,
) -> Result<PagingState, InfoError> {
    let sregs = state
        .sregs()
        .map_err(|e| InfoError::Failed(e.to_string()))?;
    Ok(PagingState::new(features)
        .with_cr0(sregs.cr0)
        .with_cr3(sregs.cr3)
        .with_cr4(sregs.cr4)
        .with_efer(sregs.efer)
        .with_a20(phys.read().a20_enabled()))
}

/// Registers `mode` and `pgmcr3`; both run on every EMT.
pub(crate) fn register_paging_handlers(
    info: &InfoRegistry,
    states: &[VcpuState],
    phys: &SharedPhysMap,
    features: CpuFeatures,
) -> Result<(), InfoError> {
    let trackers: Arc<Vec<Mutex<ModeTracker>>> = Arc::new(
        states
            .iter()
            .map(|_| Mutex::new(ModeTracker::new()))
            .collect(),
    );
    let host = HostPaging::detect();
    let (vcpus, map) = (states.to_vec(), Arc::clone(phys));
    info.register(
        "mode",
        "Guest and shadow paging modes of each vCPU and the host's. Args: all, guest, shadow, host.",
        InfoFlags::RUN_ON_EMT | InfoFlags::ALL_EMTS,
        move |call: &InfoCall<'_>, out: &mut dyn Write| {
            let cpu = call.cpu.unwrap_or(0);
            let (state, tracker) = vcpus
                .get(cpu as usize)
                .zip(trackers.get(cpu as usize))
                .ok_or_else(|| InfoError::BadArgs(format!("no vCPU {cpu}")))?;
            let paging = paging_state(state, features, &map)?;
            let mut tracker = tracker.lock();
            tracker.update(&paging);
            info_mode(out, call.args, cpu, &tracker, &host).map_err(|e| InfoError::BadArgs(e.to_string()))
        },
    )?;
    let (vcpus, map) = (states.to_vec(), Arc::clone(phys));
    info.register(
        "pgmcr3",
        "Top-level page-table entries under each vCPU's CR3, for every paging mode.",
        InfoFlags::RUN_ON_EMT | InfoFlags::ALL_EMTS,
        move |call: &InfoCall<'_>, out: &mut dyn Write| {
            let cpu = call.cpu.unwrap_or(0);
            let state = vcpus
                .get(cpu as usize)
                .ok_or_else(|| InfoError::BadArgs(format!("no vCPU {cpu}")))?;
            let paging = paging_state(state, features, &map)?;
            writeln!(out, "vCPU {cpu}:")?;
            let phys = map.read();
            info_pgmcr3(out, &paging, &*phys).map_err(|e| InfoError::Failed(e.to_string()))
        },
    )
}
