//! The virtio benchmark's L1 side (`xtask hwkvm --measure-virtio ROUNDS`,
//! run by L1's init in a network namespace of its own): boots the L2 guest
//! with `vmm` and with QEMU, round after round, each time with a disk on
//! the same raw image and a network card on a fresh tap, lets the guest
//! run the [`METRICS`] and prints one record line per run on the console
//! for the host to summarize (see [`super::report`]).
//!
//! Both VMMs get the same devices as virtio over PCI, modern only (no
//! legacy interface), with MSI-X: `vmm run --disk IMG --net tap=TAP`, and
//! QEMU's `pc` machine with `virtio-blk-pci` and `virtio-net-pci`
//! (`disable-legacy=on`; the network card without its boot ROM, which
//! a direct kernel boot does not use). QEMU serves the disk through L1's page cache
//! (`cache=writeback`, the default, with its thread pool: `aio=threads`),
//! as `vmm` does with `pread`/`pwrite`, and the network without vhost
//! (L1 has no `vhost_net`), in its own process as `vmm` does. `pc` rather
//! than `q35`: the lane boots it in the boot benchmark already, and the
//! PCI configuration mechanism (port I/O here, ECAM too on `vmm`) is off
//! the data path.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::super::measure::{self as boot_measure, Contender, Guest, alternate, boot};
use super::super::paired::Record;
use super::super::phases::Line;
use super::{METRICS, Metric, RECORD};

/// The VMMs measured, in the order of even rounds: the first is ours.
pub const CONTENDERS: [&str; 2] = ["vmm", "qemu-pc"];
/// The disk image both VMMs get (in L1's RAM-backed root).
const DISK: &str = "/tmp/hwkvm-bench-disk.img";
/// The disk's size.
const DISK_MIB: usize = 256;
/// L1's end of the guest's network, made anew for every run.
const TAP: &str = "vbench0";
const HOST_IP: &str = "10.0.2.1";
const GUEST_IP: [u8; 4] = [10, 0, 2, 15];
const PORT: u16 = 5000;
/// What the guest prints for a timed step: `VBENCH-T <key> <start> <end>`
/// (seconds of `/proc/uptime`).
const TIMES: &str = "VBENCH-T ";
/// What the guest prints when a step failed: `VBENCH-FAIL <key> <why>`.
const GUEST_FAIL: &str = "VBENCH-FAIL ";
/// What the guest prints when it has run every step.
const DONE: &str = "VBENCH-DONE";
/// How long L1 waits for the guest to take the TCP stream.
const CONNECT_LIMIT: Duration = Duration::from_secs(300);
/// How long the TCP stream may stall before it counts as failed.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// The command the guest runs (for its `vmm_run`, hence no double
/// quotes): the network's address, then each metric in order.
fn guest_command() -> String {
    let ip = GUEST_IP.map(|b| b.to_string()).join(".");
    let mut s = format!(
        "ip addr add {ip}/24 dev eth0; ip link set eth0 up; \
         t() {{ cut -d' ' -f1 /proc/uptime; }}; "
    );
    for m in METRICS {
        let key = m.key();
        match m {
            Metric::Tcp { .. } => s.push_str(&format!(
                "nc -l -p {PORT} >/dev/null || echo {GUEST_FAIL}{key} nc; "
            )),
            Metric::Disk {
                write,
                block,
                count,
            } => {
                let io = match write {
                    true => "if=/dev/zero of=/dev/vda oflag=direct",
                    false => "if=/dev/vda of=/dev/null iflag=direct",
                };
                s.push_str(&format!(
                    "s=$(t); dd {io} bs={block} count={count} 2>/tmp/e \
                     || echo {GUEST_FAIL}{key} $(cat /tmp/e); echo {TIMES}{key} $s $(t); "
                ));
            }
        }
    }
    s.push_str(&format!("echo {DONE}"));
    s
}

/// The [`CONTENDERS`] with the devices, booting `guest` with the guest's
/// command on its command line.
fn contenders(guest: &Guest) -> anyhow::Result<Vec<Contender>> {
    let guest = Guest {
        kernel: guest.kernel.clone(),
        initrd: guest.initrd.clone(),
        cmdline: format!("{} quiet vmm_run=\"{}\"", guest.cmdline, guest_command()),
    };
    let devices = |name: &str| -> Vec<String> {
        match name {
            "vmm" => vec![
                "--disk".into(),
                DISK.into(),
                "--net".into(),
                format!("tap={TAP}"),
            ],
            _ => vec![
                "-drive".into(),
                format!("file={DISK},format=raw,if=none,id=d0,cache=writeback,aio=threads"),
                "-device".into(),
                "virtio-blk-pci,drive=d0,disable-legacy=on".into(),
                "-netdev".into(),
                format!("tap,id=n0,ifname={TAP},script=no,downscript=no"),
                "-device".into(),
                "virtio-net-pci,netdev=n0,disable-legacy=on,romfile=".into(),
            ],
        }
    };
    let mut all = boot_measure::contenders(&guest);
    all.retain(|c| CONTENDERS.contains(&c.name));
    if all.iter().map(|c| c.name).ne(CONTENDERS) {
        bail!("the boot benchmark has no {CONTENDERS:?}");
    }
    for c in &mut all {
        c.args.extend(devices(c.name));
    }
    Ok(all)
}

/// The MB/s of the disk metrics the guest timed in `lines`, by metric;
/// the TCP stream's is not in the guest's output (`None`).
fn disk_throughput(lines: &[Line]) -> anyhow::Result<Vec<Option<f64>>> {
    if let Some(failed) = lines.iter().find_map(|l| find(&l.text, GUEST_FAIL)) {
        bail!("the guest failed: {failed}");
    }
    METRICS
        .iter()
        .map(|m| {
            if matches!(m, Metric::Tcp { .. }) {
                return Ok(None);
            }
            let key = m.key();
            let times = lines
                .iter()
                .find_map(|l| {
                    let rest = find(&l.text, TIMES)?.strip_prefix(&key)?;
                    let mut words = rest.split_whitespace();
                    let start: f64 = words.next()?.parse().ok()?;
                    let end: f64 = words.next()?.parse().ok()?;
                    Some(end - start)
                })
                .with_context(|| format!("the guest did not time {key}"))?;
            if times <= 0.0 {
                bail!("{key} took less than /proc/uptime's 10 ms: make it longer");
            }
            Ok(Some(m.bytes() as f64 / times / 1e6))
        })
        .collect()
}

/// What follows `prefix` in `text`, wherever it starts.
fn find<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.find(prefix).map(|at| &text[at + prefix.len()..])
}

/// Sends `bytes` to the guest's port once it listens (trying until
/// `stop` is set or [`CONNECT_LIMIT`] passed), then waits for the guest to
/// close; returns the seconds from the connection to the close.
fn stream(bytes: u64, stop: &AtomicBool) -> anyhow::Result<f64> {
    let address = SocketAddr::from((GUEST_IP, PORT));
    let waiting = Instant::now();
    let mut tcp = loop {
        if stop.load(Ordering::Relaxed) || waiting.elapsed() > CONNECT_LIMIT {
            bail!("the guest never took the TCP stream");
        }
        match TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
            Ok(tcp) => break tcp,
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    tcp.set_write_timeout(Some(STALL_LIMIT))?;
    tcp.set_read_timeout(Some(STALL_LIMIT))?;
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| ((i * 131) >> 7) as u8).collect();
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        tcp.write_all(&chunk[..n]).context("sending to the guest")?;
        left -= n as u64;
    }
    tcp.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest)
        .context("waiting for the guest to close")?;
    Ok(started.elapsed().as_secs_f64())
}

/// Runs `/sbin/ip` (iproute2's: busybox's cannot make taps) with `args`.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("/sbin/ip")
        .args(args)
        .output()
        .context("cannot run /sbin/ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The [`TAP`], up with L1's address; removed when dropped.
struct Tap;

impl Tap {
    fn new() -> anyhow::Result<Tap> {
        ip(&["tuntap", "add", "dev", TAP, "mode", "tap"])?;
        let tap = Tap;
        ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP])?;
        ip(&["link", "set", TAP, "up"])?;
        Ok(tap)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let Err(e) = ip(&["link", "del", TAP]) {
            println!("{}{TAP}: {e:#}", super::super::FAIL);
        }
    }
}

/// One run of `c`: the [`METRICS`] in MB/s.
fn measure(c: &Contender) -> anyhow::Result<Vec<f64>> {
    let _tap = Tap::new()?;
    let stop = Arc::new(AtomicBool::new(false));
    let tcp_bytes = METRICS.iter().find_map(|m| match m {
        Metric::Tcp { bytes } => Some(*bytes),
        Metric::Disk { .. } => None,
    });
    let sender = tcp_bytes.map(|bytes| {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || stream(bytes, &stop))
    });
    let lines = boot(c, DONE);
    stop.store(true, Ordering::Relaxed);
    let sent = sender.map(|s| s.join());
    let disk = disk_throughput(&lines?)?;
    let tcp = match sent {
        Some(Ok(seconds)) => Some(seconds?),
        Some(Err(_)) => bail!("the TCP sender panicked"),
        None => None,
    };
    Ok(disk
        .into_iter()
        .zip(METRICS)
        .map(|(mb, m)| match (mb, tcp) {
            (Some(mb), _) => mb,
            (None, Some(seconds)) => m.bytes() as f64 / seconds / 1e6,
            (None, None) => f64::NAN,
        })
        .collect())
}

/// Writes the zero-filled disk image (allocated, not sparse).
fn make_disk() -> anyhow::Result<()> {
    let mut file = std::fs::File::create(DISK).with_context(|| format!("cannot create {DISK}"))?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..DISK_MIB {
        file.write_all(&zeros)
            .with_context(|| format!("cannot write {DISK}"))?;
    }
    Ok(())
}

/// Runs the L1 side with its arguments (those after `--measure-virtio`):
/// the number of rounds. Each contender first runs once unmeasured (see
/// [`alternate`]).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let rounds: u32 = args
        .first()
        .context("--measure-virtio needs the number of rounds")?
        .parse()
        .context("--measure-virtio takes a number of rounds")?;
    let all = contenders(&Guest::from_env()?)?;
    make_disk()?;
    ip(&["link", "set", "lo", "up"])?;
    alternate(&all, rounds, |c, round| {
        let values = measure(c)?;
        if let Some(round) = round {
            println!("{}", Record::line(RECORD, c.name, round, &values));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(texts: &[&str]) -> Vec<Line> {
        texts
            .iter()
            .map(|t| Line {
                at: Duration::ZERO,
                text: (*t).to_owned(),
            })
            .collect()
    }

    #[test]
    fn the_guest_times_every_disk_metric_in_order() {
        let command = guest_command();
        assert!(!command.contains('"'), "{command}");
        let mut at = 0;
        for m in METRICS {
            let key = m.key();
            let found = command[at..]
                .find(&format!("{GUEST_FAIL}{key} "))
                .unwrap_or_else(|| panic!("{key} missing or out of order: {command}"));
            at += found;
        }
        assert!(command.contains("bs=4096 count=4096"), "{command}");
        assert!(command.contains("if=/dev/vda of=/dev/null iflag=direct bs=1048576"));
        assert!(command.ends_with(DONE));
        // The kernel command line holds 2048 bytes with the rest of it.
        assert!(command.len() < 1500, "{}", command.len());
    }

    #[test]
    fn both_vmms_get_the_same_guest_and_the_devices() {
        let guest = Guest {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "console=ttyS0".into(),
        };
        let all = contenders(&guest).unwrap();
        let names: Vec<&str> = all.iter().map(|c| c.name).collect();
        assert_eq!(names, CONTENDERS);
        for c in &all {
            let args = c.args.join(" ");
            assert!(args.contains(&guest_command()), "{args}");
            assert!(args.contains(DISK) && args.contains(TAP), "{args}");
        }
        let qemu = all[1].args.join(" ");
        assert!(qemu.contains("-M pc "), "{qemu}");
        assert!(
            qemu.contains("virtio-blk-pci,drive=d0,disable-legacy=on"),
            "{qemu}"
        );
        assert!(
            qemu.contains("virtio-net-pci,netdev=n0,disable-legacy=on"),
            "{qemu}"
        );
    }

    #[test]
    fn disk_throughput_is_read_from_the_guests_times() {
        let out = lines(&[
            "VMM-GUEST-LINUX: reached userspace",
            "VBENCH-T write4k 10.00 12.00",
            "garbage VBENCH-T read4k 12.00 12.50",
            "VBENCH-T write1M 13.00 14.00",
            "VBENCH-T read1M 14.00 14.64",
            DONE,
        ]);
        let mb = disk_throughput(&out).unwrap();
        let mib = (1 << 20) as f64 / 1e6;
        assert_eq!(mb[0], None);
        assert!((mb[1].unwrap() - 16.0 * mib / 2.0).abs() < 1e-9, "{mb:?}");
        assert!((mb[2].unwrap() - 16.0 * mib / 0.5).abs() < 1e-9, "{mb:?}");
        assert!((mb[4].unwrap() - 128.0 * mib / 0.64).abs() < 1e-6, "{mb:?}");
        let mut failed = out.clone();
        failed.insert(
            2,
            lines(&["VBENCH-FAIL read4k dd: /dev/vda: I/O error"])[0].clone(),
        );
        let e = disk_throughput(&failed).unwrap_err().to_string();
        assert!(e.contains("read4k dd: /dev/vda: I/O error"), "{e}");
        let missing: Vec<Line> = out
            .iter()
            .filter(|l| !l.text.contains("write1M"))
            .cloned()
            .collect();
        let e = disk_throughput(&missing).unwrap_err().to_string();
        assert!(e.contains("did not time write1M"), "{e}");
        let instant = lines(&["VBENCH-T write4k 3.00 3.00"]);
        let e = disk_throughput(&instant).unwrap_err().to_string();
        assert!(e.contains("10 ms"), "{e}");
    }

    #[test]
    fn the_stream_waits_for_a_listener_it_never_gets_only_until_stopped() {
        let stop = AtomicBool::new(true);
        let e = stream(1, &stop).unwrap_err().to_string();
        assert!(e.contains("never took"), "{e}");
    }
}
