//! Runs three real-mode instructions (`mov al, 0x42; out 0x10, al; hlt`) on
//! one vCPU and prints each exit with its VMX basic exit reason.
//!
//! `cargo run -p hm-vmx --example out_hlt` (needs `/dev/kvm`).

use std::process::ExitCode;

use hm_vmx::{Exit, Hypervisor, MemorySlot};

/// Guest code at [`CODE`]: `mov al, 0x42; out 0x10, al; hlt`.
const GUEST: [u8; 5] = [0xb0, 0x42, 0xe6, 0x10, 0xf4];
const CODE: u64 = 0x1000;
const MEM_SIZE: usize = 0x2000;

fn main() -> ExitCode {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!(
            "out_hlt: /dev/kvm not found: this example needs KVM (load kvm_intel or kvm_amd)"
        );
        return ExitCode::FAILURE;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("out_hlt: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let hv = Hypervisor::open()?;
    let vm = hv.create_vm()?;
    // Page-aligned guest RAM; the example never unmaps it (it ends with the process).
    // SAFETY: a fresh anonymous private mapping, no existing memory is touched.
    let ram = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ram == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `ram` is a writable mapping of MEM_SIZE bytes; the code fits at CODE.
    unsafe {
        std::ptr::copy_nonoverlapping(
            GUEST.as_ptr(),
            ram.cast::<u8>().add(CODE as usize),
            GUEST.len(),
        )
    };
    let slot = MemorySlot {
        slot: 0,
        guest_addr: 0,
        size: MEM_SIZE as u64,
        host_addr: ram as u64,
        read_only: false,
        log_dirty: false,
    };
    // SAFETY: the mapping outlives the VM (it is never unmapped).
    unsafe { vm.set_memory_slot(&slot) }?;
    let mut vcpu = vm.create_vcpu(0)?;
    let state = vcpu.state();
    let mut sregs = state.sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    state.set_sregs(&sregs)?;
    let mut regs = state.regs()?;
    regs.rip = CODE;
    regs.rflags = 2;
    state.set_regs(&regs)?;
    loop {
        let exit = vcpu.run()?;
        let name = exit.name();
        // The basic exit reason number a VT-x VMM would have seen.
        let reason = exit.vmx_reason().map(|r| r as u16);
        match exit {
            Exit::Io(io) => println!(
                "exit {reason:?} ({name}): port {:#x} {:?}",
                io.port, io.data
            ),
            Exit::Hlt => {
                println!("exit {reason:?} ({name}): the guest halted");
                return Ok(());
            }
            _ => {
                println!("exit {reason:?} ({name}): not expected from this guest");
                return Ok(());
            }
        }
    }
}
