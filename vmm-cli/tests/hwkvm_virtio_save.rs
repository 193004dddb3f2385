//! Virtio devices in use while the VM moves: Debian's Linux on a root disk
//! (`--disk`) appends numbered lines to a log with a `sync` after each,
//! while L1 streams 16 MiB to it over TCP (`--net`); the VM is saved live
//! into a file, restored in a new process, saved there and restored in a
//! third one, which teleports it to a fourth on another tap (both taps on
//! one bridge: the guest keeps its address and its TCP connection), where
//! it finishes. A part of the stream is sent in each process, the part of
//! the teleport's source while the teleport runs. Nothing may be lost or
//! written twice: the log is numbered without a gap or a repeat, the
//! stream's checksum matches, and the file system is clean. Needs the lane (`cargo xtask hwkvm`; a
//! missing lane variable is a failure, never a skip), so it is ignored in
//! a plain `cargo test`.

#[allow(dead_code)] // shared by the lane's test binaries
#[path = "support/lane.rs"]
mod lane;
#[allow(dead_code)] // shared by the end-to-end tests; these use what the lane needs
mod support;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lane::{Guest, Image, Stage, enter_new_netns};
use support::{incoming_address, read};

/// L1's side of the guest's network: a bridge holding both taps, so that
/// the teleport's target (on the second tap) is reached at the same
/// address as the source.
const BRIDGE: &str = "br0";
const TAPS: [&str; 2] = ["tap0", "tap1"];
const HOST_IP: &str = "10.0.2.1";
const GUEST_IP: &str = "10.0.2.15";
/// The guest's MAC on either tap: a restore refuses another.
const MAC: &str = "52:54:00:12:34:56";
/// Lines the guest appends to its log.
const LINES: u32 = 300;
/// Bytes L1 streams to the guest, in [`PARTS`] parts, each in pieces with
/// pauses between them.
const STREAM: usize = 16 << 20;
const PARTS: usize = 5;
const PIECE: usize = 64 << 10;

fn ip(list: &[&str]) {
    let out = Command::new("ip").args(list).output().unwrap();
    assert!(out.status.success(), "ip {}: {out:?}", list.join(" "));
}

/// The guest's command: listen for the stream in the background, append
/// the log, then report what arrived and check the log itself.
fn guest_command() -> String {
    format!(
        "ip addr add {GUEST_IP}/24 dev eth0; ip link set eth0 up; \
         (nc -l -p 5000 | md5sum > /stream.md5) & \
         i=0; while [ $i -lt {LINES} ]; do i=$((i + 1)); echo line $i >> /log; sync; echo disk $i; done; \
         wait; echo stream=$(cat /stream.md5); \
         awk '{{ if ($2 != NR) bad = 1 }} END {{ print (bad ? \"log=bad\" : \"log=ok\"), NR }}' /log"
    )
}

fn device_args(disk: &Image, tap: &str) -> Vec<String> {
    vec![
        "--disk".into(),
        disk.path().display().to_string(),
        "--net".into(),
        format!("tap={tap},mac={MAC}"),
    ]
}

/// The stream L1 sends: patterned bytes and their md5 (by `md5sum`).
fn stream() -> (Vec<u8>, String) {
    let data: Vec<u8> = (0..STREAM as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stream");
    std::fs::write(&file, &data).unwrap();
    let out = Command::new("md5sum").arg(&file).output().unwrap();
    let sum = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    (data, sum)
}

/// Sends `data` to the guest once it listens, a piece at a time with
/// pauses, in [`PARTS`] parts: the first at once, each of the others once
/// `go` says so.
fn send(data: Vec<u8>, go: mpsc::Receiver<()>) -> std::thread::JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let address = format!("{GUEST_IP}:5000").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut stream = loop {
            match TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(format!("connect: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        };
        stream
            .set_write_timeout(Some(Duration::from_secs(300)))
            .map_err(|e| e.to_string())?;
        for (i, part) in data.chunks(STREAM.div_ceil(PARTS)).enumerate() {
            if i > 0 {
                go.recv_timeout(Duration::from_secs(600))
                    .map_err(|e| format!("part {i} never released: {e}"))?;
            }
            for piece in part.chunks(PIECE) {
                stream.write_all(piece).map_err(|e| format!("send: {e}"))?;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        stream.shutdown(Shutdown::Write).map_err(|e| e.to_string())
    })
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn a_disk_write_loop_and_a_tcp_stream_survive_live_save_save_restores_and_teleport() {
    enter_new_netns();
    ip(&["link", "set", "lo", "up"]);
    ip(&["link", "add", BRIDGE, "type", "bridge"]);
    ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", BRIDGE]);
    ip(&["link", "set", BRIDGE, "up"]);
    for tap in TAPS {
        ip(&["tuntap", "add", "dev", tap, "mode", "tap"]);
        ip(&["link", "set", tap, "master", BRIDGE]);
        ip(&["link", "set", tap, "up"]);
    }
    let disk = Image::rootfs();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (data, sum) = stream();
    let (next_part, parts) = mpsc::channel();
    let sender = send(data, parts);
    // A sender that gave up says why when it is joined.
    let release = || {
        let _ = next_part.send(());
    };
    let guest = Guest::from_lane("L2_KERNEL").with_disk_root();
    let booted = guest.run_args_with("512M", 1, &guest_command(), &device_args(&disk, TAPS[0]));
    let (live, saved) = (dir.join("live.sav"), dir.join("saved.sav"));

    // Booted, saved live into a file in the middle of the writes...
    let mut first = Stage::start(dir, "boot", booted.clone());
    first.wait_for_line("disk 40");
    let mut logs = vec![first.leave(
        &["save", live.to_str().unwrap(), "--live", "--poweroff"],
        "live passes",
    )];
    // ...restored in a second process (the first has let go of the tap),
    // saved there plainly and restored in a third...
    let restore = |file: &std::path::Path| {
        let mut args = vec![
            "run".to_owned(),
            "--restore".into(),
            file.display().to_string(),
        ];
        args.extend(device_args(&disk, TAPS[0]));
        args
    };
    let mut second = Stage::start(dir, "restored", restore(&live));
    release();
    second.wait_for_line(&format!("disk {}", last_line(&logs[0]) + 30));
    logs.push(second.leave(
        &["save", saved.to_str().unwrap(), "--poweroff"],
        "VM state saved",
    ));
    let mut third = Stage::start(dir, "restored-again", restore(&saved));
    release();
    third.wait_for_line(&format!("disk {}", last_line(&logs[1]) + 30));
    // ...which teleports it, with a part of the stream on its way, to a
    // fourth on the other tap, where it finishes.
    let mut target = booted;
    let tap_at = target.iter().position(|a| a.starts_with("tap=")).unwrap();
    target[tap_at] = format!("tap={},mac={MAC}", TAPS[1]);
    target.extend(["--incoming".to_owned(), "127.0.0.1:0".to_owned()]);
    let mut fourth = Stage::start(dir, "teleported", target);
    let address = incoming_address(&mut fourth.vm, &dir.join("teleported.stderr"));
    release();
    logs.push(third.leave(&["teleport", &address], "VM teleported"));
    release();
    let status = fourth
        .vm
        .wait(|| read(&fourth.serial) + &read(&dir.join("teleported.stderr")));
    logs.push(read(&fourth.serial));
    let journey = logs.join("\n--- next process ---\n");
    assert!(
        status.success(),
        "the guest's checks failed ({status}):\n{journey}"
    );
    assert_eq!(sender.join().unwrap(), Ok(()), "{journey}");

    let end = &logs[3];
    assert!(
        end.lines()
            .filter_map(|l| l.trim_end().strip_prefix("disk ")?.parse::<u32>().ok())
            .any(|n| n > last_line(&logs[2])),
        "the write loop did not go on after the teleport:\n{journey}"
    );
    assert!(
        end.lines()
            .any(|l| l.trim_end() == format!("log=ok {LINES}")),
        "the guest's log has gaps or repeats:\n{journey}"
    );
    assert!(
        end.lines()
            .any(|l| l.starts_with("stream=") && l.contains(&sum)),
        "the stream arrived damaged (md5 {sum} sent):\n{journey}"
    );
    // What the guest wrote is on the disk, and the disk is clean.
    let log = String::from_utf8(disk.read_file("/log").unwrap()).unwrap();
    let expected: String = (1..=LINES).map(|i| format!("line {i}\n")).collect();
    assert_eq!(log, expected);
    disk.fsck().unwrap();
}

/// The last `disk N` line in `log`.
fn last_line(log: &str) -> u32 {
    log.lines()
        .rev()
        .find_map(|l| l.trim_end().strip_prefix("disk ")?.parse().ok())
        .expect("the guest wrote to its disk")
}
