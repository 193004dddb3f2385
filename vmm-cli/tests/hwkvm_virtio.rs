//! Virtio devices on PCI as Debian's Linux drives them: its own virtio
//! modules (loaded by the lane's initramfs) find the devices `vmm run`
//! attaches and use them: entropy from `/dev/hwrng`, a root file system
//! on `--disk` that keeps what was written across runs and stays
//! consistent after a `kill -9`, a network on a tap, and vsock streams
//! both ways between L1's Unix sockets and the guest's `vmm-vsock`. Needs the lane
//! (`cargo xtask hwkvm`, which sets `L2_KERNEL`, `L2_INITRD`,
//! `L2_CMDLINE`, `L2_ROOTFS`; a missing one is a failure, never a skip),
//! so it is ignored in a plain `cargo test`.

#[allow(dead_code)] // shared by the lane's test binaries
#[path = "support/lane.rs"]
mod lane;
#[allow(dead_code)] // shared by the end-to-end tests; these use what the lane needs
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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

/// `len` patterned bytes.
fn patterned(len: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// The md5 sum of `data` in hex, as `md5sum` prints it (which the
/// guest's busybox has too).
fn md5(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, data).unwrap();
    let out = Command::new("md5sum").arg(&file).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

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
    // 64 MiB of patterned bytes and their checksum, sent by L1 once the
    // guest listens; the guest prints the checksum of what it received.
    let data = patterned(64 << 20);
    let sum = md5(&data);
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

/// The guest's vsock context id in these tests.
const GUEST_CID: u32 = 3;

/// `--vsock` with the device's socket at `socket`.
fn vsock_args(socket: &Path) -> Vec<String> {
    args(&[
        "--vsock",
        &format!("cid={GUEST_CID},socket={}", socket.display()),
    ])
}

/// How long one read or write of L1's end of a vsock stream may block.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// L1's side of `CONNECT port`: connects to the device's socket and asks
/// for the guest's `port` until the guest accepts (before it listens, the
/// device is not there yet or the guest refuses and the stream ends), at
/// most for the lane's deadline. Returns the stream and the `OK` line.
fn connect_to_guest(socket: &Path, port: u32) -> Result<(UnixStream, String), String> {
    let start = Instant::now();
    let mut last = String::from("never connected");
    while start.elapsed() < DEADLINE {
        match UnixStream::connect(socket) {
            Ok(mut stream) => {
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                stream
                    .write_all(format!("CONNECT {port}\n").as_bytes())
                    .map_err(|e| format!("CONNECT: {e}"))?;
                let mut line = Vec::new();
                let mut byte = [0u8];
                while line.last() != Some(&b'\n') {
                    match stream.read(&mut byte) {
                        Ok(1) => line.push(byte[0]),
                        _ => break,
                    }
                }
                let line = String::from_utf8_lossy(&line).into_owned();
                if line.starts_with("OK ") && line.ends_with('\n') {
                    return Ok((stream, line));
                }
                last = format!("answered {line:?}");
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(format!("the guest never accepted port {port}: {last}"))
}

/// Sends `data` to the guest's echo server on `port`, stops sending, and
/// returns the `OK` line and what came back until the guest closed.
fn echo_through_guest(
    socket: &Path,
    port: u32,
    data: Vec<u8>,
) -> Result<(String, Vec<u8>), String> {
    let (stream, ok) = connect_to_guest(socket, port)?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // Write and read at once: the echo comes back while L1 still sends.
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        writer.write_all(&data)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut echoed = Vec::new();
    let read = (&stream).read_to_end(&mut echoed);
    sender
        .join()
        .unwrap()
        .map_err(|e| format!("sending: {e}"))?;
    read.map_err(|e| format!("reading the echo after {} bytes: {e}", echoed.len()))?;
    Ok((ok, echoed))
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn l1_connects_to_a_guest_vsock_port_and_gets_1_mib_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vsock");
    let data = patterned(1 << 20);
    let expected = data.clone();
    let path = socket.clone();
    let client = std::thread::spawn(move || echo_through_guest(&path, 5000, data));
    let guest = Guest::from_lane("L2_KERNEL");
    // The pause lets the device hand the echo's last bytes to L1 before
    // the VM ends.
    let text = boot(
        &guest,
        "vmm-vsock listen 5000; echo listen=$?; sleep 1",
        &vsock_args(&socket),
    );
    let (ok, echoed) = client
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\nguest:\n{text}"));
    let host_port: u32 = ok["OK ".len()..].trim_end().parse().unwrap();
    assert!(host_port > 0, "{ok:?}");
    assert!(
        text.lines().any(|l| l.trim_end() == "listen=0"),
        "vmm-vsock listen failed in the guest:\n{text}"
    );
    assert_eq!(echoed.len(), expected.len(), "guest:\n{text}");
    assert!(echoed == expected, "the echo differs from what L1 sent");
}

/// L1's server at `PATH_port`: accepts one connection (within the lane's
/// deadline), reads until the guest stops sending, answers `reply` and
/// closes. Returns what the guest sent.
fn serve_guest(listener: UnixListener, reply: Vec<u8>) -> Result<Vec<u8>, String> {
    listener.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() > DEADLINE {
                    return Err("the guest never connected".into());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut got = Vec::new();
    stream
        .read_to_end(&mut got)
        .map_err(|e| format!("reading the guest's bytes: {e}"))?;
    stream
        .write_all(&reply)
        .map_err(|e| format!("replying: {e}"))?;
    Ok(got)
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn the_guest_connects_to_an_l1_unix_socket_over_vsock_and_gets_a_reply() {
    let dir = tempfile::tempdir().unwrap();
    let socket: PathBuf = dir.path().join("vsock");
    let listener = UnixListener::bind(format!("{}_6000", socket.display())).unwrap();
    // A first line the guest prints, then 256 KiB it checks by md5.
    let mut reply = b"hello-from-l1\n".to_vec();
    reply.extend_from_slice(&patterned(256 << 10));
    let sum = md5(&reply);
    let server = std::thread::spawn(move || serve_guest(listener, reply));
    let guest = Guest::from_lane("L2_KERNEL");
    let text = boot(
        &guest,
        "echo hello-from-guest | vmm-vsock connect 6000 > /tmp/got; echo connect=$?; \
         echo got=$(head -n 1 /tmp/got); echo sum=$(md5sum < /tmp/got)",
        &vsock_args(&socket),
    );
    let got = server
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\nguest:\n{text}"));
    assert_eq!(got, b"hello-from-guest\n", "guest:\n{text}");
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|rest| rest.trim_end().to_owned())
            .unwrap_or_else(|| panic!("no {prefix} line:\n{text}"))
    };
    assert_eq!(line("connect="), "0", "{text}");
    assert_eq!(line("got="), "hello-from-l1", "{text}");
    assert!(
        line("sum=").starts_with(&sum),
        "md5 {sum} expected:\n{text}"
    );
}
