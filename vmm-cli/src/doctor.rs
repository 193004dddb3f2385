//! `vmm doctor`: is this host able to run VMs?

use std::process::ExitCode;

use hm_vmx::{CAPABILITIES, Hypervisor};

use crate::output;

pub fn doctor() -> anyhow::Result<ExitCode> {
    let hv = match Hypervisor::open() {
        Ok(hv) => hv,
        Err(e) => {
            output::print(&format!("/dev/kvm: NOT usable: {e}\n"))?;
            return Ok(ExitCode::from(1));
        }
    };
    let mut text = format!(
        "/dev/kvm: usable (KVM API 12)\nmax vCPUs per VM: {}\nmemory slots per VM: {}\ncapabilities:\n",
        hv.max_vcpus(),
        hv.max_memslots()
    );
    for cap in CAPABILITIES {
        let state = if hv.has(cap) {
            "yes"
        } else if cap.required {
            "MISSING"
        } else {
            "no"
        };
        let need = if cap.required { "required" } else { "optional" };
        text.push_str(&format!(
            "  {:<24} {:<8} {:<9} {}\n",
            cap.name, state, need, cap.purpose
        ));
    }
    output::print(&text)?;
    Ok(ExitCode::SUCCESS)
}
