//! `vmm run` with more guest RAM than the host could ever give, from the
//! command line, from a saved state and as a teleport target: each ends at
//! once with an error naming the host's bound (the deadline is a hang
//! check, not a speed measurement).

#[allow(dead_code)] // this binary only needs a child with a deadline
mod support;

use std::path::Path;
use std::time::Duration;

use ssm::{Header, PASS_FINAL, StreamWriter};
use support::{Vmm, read};
use vmm_core::guests;
use vmm_core::memory::host_limit::HostMemory;

/// Generous: refusing takes milliseconds; building 1 TiB took minutes.
const DEADLINE: Duration = Duration::from_secs(20);

/// Guest RAM this host refuses, as a `--mem` size in GiB: 1 TiB, or more
/// on a host that allows that.
fn too_much_gib() -> u64 {
    let bound = HostMemory::probe().unwrap().ram_bound().bytes;
    1024.max((bound >> 30) + 1)
}

fn assert_refused(what: &str, args: &[&str], dir: &Path) {
    let output = dir.join(format!("{what}.out"));
    let mut vmm = Vmm::spawn(what, args, &output, DEADLINE);
    let status = vmm.wait(|| read(&output));
    let said = read(&output);
    assert!(!status.success(), "{what}: {said}");
    assert!(
        said.contains("of guest RAM is more than this host can give a guest: at most"),
        "{what}: {said}"
    );
}

#[test]
fn run_with_more_ram_than_the_host_has_ends_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mem = format!("{}G", too_much_gib());
    assert_refused("run", &["run", "--mem", &mem], dir.path());
    assert_refused(
        "incoming",
        &["run", "--incoming", "127.0.0.1:0", "--mem", &mem],
        dir.path(),
    );
}

#[test]
fn restoring_a_state_claiming_more_ram_than_the_host_has_ends_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.sav");
    let firmware = guests::find("counter").unwrap().firmware().unwrap();
    let mut w = StreamWriter::new(Vec::new(), &Header::for_this_host("test", 0)).unwrap();
    let mut u = w.begin_unit("vmm", 0, 1, PASS_FINAL).unwrap();
    u.put_u64(too_much_gib() << 30).unwrap();
    u.put_u32(1).unwrap();
    u.put_buf(&firmware).unwrap();
    u.end().unwrap();
    std::fs::write(&path, w.finish().unwrap()).unwrap();
    let file = path.to_str().unwrap();
    assert_refused("restore", &["run", "--restore", file], dir.path());
}
