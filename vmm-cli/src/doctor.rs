//! `vmm doctor`: is this host able to run VMs?

use std::process::ExitCode;

use clap::Args;
use hm_vmx::{CAPABILITIES, Hypervisor};
use serde::Serialize;

use crate::exit::Status;
use crate::output;

/// `vmm doctor [--json]`.
#[derive(Args)]
pub struct DoctorArgs {
    /// Print JSON (the same fields as the text) instead of text.
    #[arg(long)]
    json: bool,
}

/// What `vmm doctor` found.
#[derive(Serialize)]
struct Report {
    /// Whether /dev/kvm can be opened and speaks the API we need.
    usable: bool,
    /// Why not, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The KVM API version (12 is the only stable one).
    #[serde(skip_serializing_if = "Option::is_none")]
    api_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_vcpus: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_slots: Option<usize>,
    capabilities: Vec<Capability>,
}

#[derive(Serialize)]
struct Capability {
    name: &'static str,
    /// `yes`, `no` or `MISSING` (a required one the host lacks).
    state: &'static str,
    /// `required` or `optional`.
    need: &'static str,
    purpose: &'static str,
}

impl Report {
    fn of_host() -> Report {
        let hv = match Hypervisor::open() {
            Ok(hv) => hv,
            Err(e) => {
                return Report {
                    usable: false,
                    error: Some(e.to_string()),
                    api_version: None,
                    max_vcpus: None,
                    memory_slots: None,
                    capabilities: Vec::new(),
                };
            }
        };
        let capabilities = CAPABILITIES
            .iter()
            .map(|cap| Capability {
                name: cap.name,
                state: match (hv.has(cap), cap.required) {
                    (true, _) => "yes",
                    (false, true) => "MISSING",
                    (false, false) => "no",
                },
                need: if cap.required { "required" } else { "optional" },
                purpose: cap.purpose,
            })
            .collect();
        Report {
            usable: true,
            error: None,
            api_version: Some(12),
            max_vcpus: Some(hv.max_vcpus()),
            memory_slots: Some(hv.max_memslots()),
            capabilities,
        }
    }

    /// Whether VMs can run: /dev/kvm usable and no required capability missing.
    fn passed(&self) -> bool {
        self.usable && self.capabilities.iter().all(|c| c.state != "MISSING")
    }

    fn text(&self) -> String {
        let (Some(api), Some(vcpus), Some(slots)) =
            (self.api_version, self.max_vcpus, self.memory_slots)
        else {
            return format!(
                "/dev/kvm: NOT usable: {}\n",
                self.error.as_deref().unwrap_or("unknown")
            );
        };
        let mut text = format!(
            "/dev/kvm: usable (KVM API {api})\nmax vCPUs per VM: {vcpus}\nmemory slots per VM: {slots}\ncapabilities:\n"
        );
        for cap in &self.capabilities {
            text.push_str(&format!(
                "  {:<24} {:<8} {:<9} {}\n",
                cap.name, cap.state, cap.need, cap.purpose
            ));
        }
        text
    }
}

/// Prints the report; [`Status::CheckFailed`] when this host cannot run VMs.
pub fn doctor(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let report = Report::of_host();
    output::print(&if args.json {
        output::json_line(&report)?
    } else {
        report.text()
    })?;
    Ok(if report.passed() {
        Status::Success
    } else {
        Status::CheckFailed
    }
    .into())
}
