//! `vmm doctor`: is this host able to run VMs?

use std::process::ExitCode;

use hm_vmx::{CAPABILITIES, Hypervisor};

pub fn doctor() -> anyhow::Result<ExitCode> {
    let hv = match Hypervisor::open() {
        Ok(hv) => hv,
        Err(e) => {
            println!("/dev/kvm: NOT usable: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    println!("/dev/kvm: usable (KVM API 12)");
    println!("max vCPUs per VM: {}", hv.max_vcpus());
    println!("memory slots per VM: {}", hv.max_memslots());
    println!("capabilities:");
    for cap in CAPABILITIES {
        let state = if hv.has(cap) {
            "yes"
        } else if cap.required {
            "MISSING"
        } else {
            "no"
        };
        let need = if cap.required { "required" } else { "optional" };
        println!(
            "  {:<24} {:<8} {:<9} {}",
            cap.name, state, need, cap.purpose
        );
    }
    Ok(ExitCode::SUCCESS)
}
