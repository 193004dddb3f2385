//! Guest RAM the host could never give is refused before anything is
//! built: in a configuration and in a saved state (with valid CRCs) that
//! claims it, so restoring it cannot tie up the host.

use std::path::Path;

use ssm::{Header, PASS_FINAL, StreamWriter};
use vmm_core::memory::host_limit::HostMemory;
use vmm_core::{Vm, VmConfig, guests};

/// Guest RAM this host refuses: 1 TiB, or more on a host that allows that.
fn too_much() -> u64 {
    let bound = HostMemory::probe().unwrap().ram_bound().bytes;
    (1u64 << 40).max(((bound >> 30) + 1) << 30)
}

/// A saved state whose `vmm` unit claims `ram` bytes of RAM for the
/// counter guest, every CRC valid.
fn claiming(path: &Path, ram: u64) {
    let firmware = guests::find("counter").unwrap().firmware().unwrap();
    let mut w = StreamWriter::new(Vec::new(), &Header::for_this_host("test", 0)).unwrap();
    let mut u = w.begin_unit("vmm", 0, 1, PASS_FINAL).unwrap();
    u.put_u64(ram).unwrap();
    u.put_u32(1).unwrap();
    u.put_buf(&firmware).unwrap();
    u.end().unwrap();
    std::fs::write(path, w.finish().unwrap()).unwrap();
}

fn assert_refused_for_the_host(err: &str) {
    assert!(
        err.contains("TiB of guest RAM is more than this host can give a guest: at most"),
        "{err}"
    );
}

#[test]
fn a_configuration_with_more_ram_than_the_host_has_is_refused() {
    let ram = too_much();
    let config = VmConfig::new(ram, guests::find("counter").unwrap().firmware().unwrap());
    let err = config.validate().unwrap_err().to_string();
    assert_refused_for_the_host(&err);
    let err = Vm::new(config).err().expect("built").to_string();
    assert_refused_for_the_host(&err);
}

#[test]
fn a_saved_state_claiming_more_ram_than_the_host_has_is_refused_before_building() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.sav");
    let ram = too_much();
    claiming(&path, ram);
    ssm::verify(&path).unwrap();
    let err = match Vm::restore(&path, Box::new(std::io::sink()), false) {
        Ok(_) => panic!("a VM with {ram} bytes of RAM was restored"),
        Err(e) => e.to_string(),
    };
    assert_refused_for_the_host(&err);
}
