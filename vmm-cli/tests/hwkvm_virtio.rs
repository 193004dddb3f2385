//! Virtio devices on PCI as Debian's Linux drives them: its own virtio
//! modules (loaded by the lane's initramfs) find the devices `vmm run`
//! attaches and use them: entropy from `/dev/hwrng`, a root file system
//! on `--disk` that keeps what was written across runs and stays
//! consistent after a `kill -9`, and a network on a tap. Needs the lane
//! (`cargo xtask hwkvm`, which sets `L2_KERNEL`, `L2_INITRD`,
//! `L2_CMDLINE`, `L2_ROOTFS`; a missing one is a failure, never a skip),
//! so it is ignored in a plain `cargo test`.

#[allow(dead_code)] // shared by the lane's test binaries
#[path = "support/lane.rs"]
mod lane;
#[allow(dead_code)] // shared by the end-to-end tests; these use what the lane needs
mod support;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::Duration;

use lane::{DEADLINE, Guest, INSMOD_FAILED, Image, enter_new_netns, vmm_run};
use support::{Vmm, read};

/// Boots the lane's Linux with `vmm_args` added to `vmm run`, has it run
/// `command`, and returns what it printed once `vmm` exited successfully.
fn boot(guest: &Guest, command: &str, vmm_args: &[String]) -> String {
    let out = vmm_run(guest.run_args_with("512M", 1, command, vmm_args));
    assert!(out.status.success(), "{}\n{}", out.status, out.serial);
    assert!(!out.serial.contains(INSMOD_FAILED), "{}", out.serial);
    out.serial
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn disk_args(image: &Image) -> Vec<String> {
    vec!["--disk".into(), image.path().display().to_string()]
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn the_guest_reads_entropy_from_virtio_rng() {
    let guest = Guest::from_lane("L2_KERNEL");
    let text = boot(
        &guest,
        "echo rng=$(cat /sys/class/misc/hw_random/rng_current); \
         echo bytes=$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | od -An -tx1 | tr -d ' \\n')",
        &args(&["--rng"]),
    );
    assert!(
        text.lines().any(|l| l.starts_with("rng=virtio_rng")),
        "the guest's hwrng is not virtio's:\n{text}"
    );
    let bytes = text
        .lines()
        .find_map(|l| l.strip_prefix("bytes="))
        .unwrap_or_else(|| panic!("no bytes= line:\n{text}"))
        .trim();
    assert_eq!(bytes.len(), 128, "64 bytes read as hex: {bytes}");
    assert!(
        bytes.chars().any(|c| c != '0'),
        "64 zero bytes are not entropy"
    );
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn a_file_written_on_the_root_disk_is_there_after_a_new_run() {
    let disk = Image::rootfs();
    let guest = Guest::from_lane("L2_KERNEL").with_disk_root();
    let text = boot(
        &guest,
        "mount | grep ' / '; echo kept-across-runs > /persisted; sync",
        &disk_args(&disk),
    );
    assert!(text.contains("/dev/vda on / type ext4"), "{text}");
    // The image holds it (read without the guest), clean...
    assert_eq!(disk.read_file("/persisted").unwrap(), b"kept-across-runs\n");
    disk.fsck().unwrap();
    // ...and a new VM on the same image reads it back.
    let text = boot(&guest, "echo got=$(cat /persisted)", &disk_args(&disk));
    assert!(text.contains("got=kept-across-runs"), "{text}");
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn a_read_only_disk_refuses_writes_with_io_errors() {
    let data = Image::blank("16M");
    let guest = Guest::from_lane("L2_KERNEL");
    let mut vmm_args = disk_args(&data);
    vmm_args[1].push_str(",ro");
    let text = boot(
        &guest,
        "echo ro=$(cat /sys/block/vda/ro); \
         dd if=/dev/zero of=/dev/vda bs=4096 count=1 oflag=direct 2>&1; echo dd=$?",
        &vmm_args,
    );
    assert!(
        text.contains("ro=1"),
        "the guest sees a writable disk:\n{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("dd=") && l != "dd=0"),
        "a write to a read-only disk succeeded:\n{text}"
    );
    data.fsck().unwrap();
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn the_root_disk_is_consistent_after_kill_9_in_the_middle_of_writes() {
    let disk = Image::rootfs();
    let guest = Guest::from_lane("L2_KERNEL").with_disk_root();
    let dir = tempfile::tempdir().unwrap();
    let (serial, stderr) = (dir.path().join("serial"), dir.path().join("stderr"));
    let mut run = guest.run_args_with(
        "512M",
        1,
        "i=0; while true; do dd if=/dev/urandom of=/f$((i % 8)) bs=64k count=4 2>/dev/null; \
         sync; i=$((i + 1)); echo wrote=$i; done",
        &disk_args(&disk),
    );
    run.extend(["--serial".to_owned(), serial.display().to_string()]);
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let mut vm = Vmm::spawn("vmm run (writes)", &run, &stderr, DEADLINE);
    // The serial console ends its lines with CR LF.
    vm.wait_until(&serial, "wrote=3", |text| {
        text.lines().any(|l| l.trim_end() == "wrote=3")
    });
    std::thread::sleep(Duration::from_millis(300));
    vm.child.kill().unwrap();
    vm.child.wait().unwrap();
    // What a boot does after a crash: replay the journal and fix what an
    // unclean stop leaves (preen); anything else is an inconsistency.
    let preen = Command::new("e2fsck")
        .arg("-fp")
        .arg(disk.path())
        .output()
        .unwrap();
    assert!(
        matches!(preen.status.code(), Some(0 | 1)),
        "e2fsck -fp: {:?}\n{}{}\nguest:\n{}",
        preen.status,
        String::from_utf8_lossy(&preen.stdout),
        String::from_utf8_lossy(&preen.stderr),
        read(&serial)
    );
    disk.fsck().unwrap();
}

/// L1's end of the guest's network: a tap in this test's own namespace.
const TAP: &str = "tap0";
const HOST_IP: &str = "10.0.2.1";
const GUEST_IP: &str = "10.0.2.15";

fn ip(list: &[&str]) {
    let out = Command::new("ip").args(list).output().unwrap();
    assert!(out.status.success(), "ip {}: {out:?}", list.join(" "));
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn the_guest_and_l1_exchange_ping_and_a_64_mib_tcp_stream() {
    enter_new_netns();
    ip(&["link", "set", "lo", "up"]);
    ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
    ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
    ip(&["link", "set", TAP, "up"]);
    // 64 MiB of random bytes and their checksum, sent by L1 once the
    // guest listens; the guest prints the checksum of what it received.
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("payload");
    let data: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&payload, &data).unwrap();
    let sum = Command::new("md5sum").arg(&payload).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let sender = std::thread::spawn(move || {
        // The guest listens once its network is up: try for a while.
        let address = format!("{GUEST_IP}:5000").parse().unwrap();
        for _ in 0..600 {
            if let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
                stream.write_all(&data).unwrap();
                stream.shutdown(Shutdown::Write).unwrap();
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        false
    });
    let guest = Guest::from_lane("L2_KERNEL");
    let text = boot(
        &guest,
        &format!(
            "ip addr add {GUEST_IP}/24 dev eth0; ip link set eth0 up; \
             ping -c 3 -W 5 {HOST_IP} && echo ping=ok; \
             echo got=$(nc -l -p 5000 | md5sum)"
        ),
        &args(&["--net", &format!("tap={TAP}")]),
    );
    assert!(sender.join().unwrap(), "L1 could not send:\n{text}");
    assert!(text.contains("ping=ok"), "no ping reply from L1:\n{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("got=") && l.contains(&sum)),
        "the guest did not receive the 64 MiB with md5 {sum}:\n{text}"
    );
}
