//! The benchmark's L1 side (`xtask hwkvm --measure ROUNDS`, run by L1's
//! init): boots the L2 guest with `vmm` and with QEMU, round after round,
//! and prints one record line per boot on the console for the host to
//! summarize (see [`super::Record`]).
//!
//! Each boot runs from spawn until the guest's userspace marker reaches
//! the serial output, read line by line from the VMM's stdout with the
//! time each line arrived; then the VMM is killed (the same for all).

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};

use super::paired::Record;
use super::phases::{self, Line};
use super::{FAIL, GAP, LOG, RECORD};
use crate::guest_linux::MARKER;

/// Where L1's image holds QEMU and its firmware.
pub const QEMU_BINARY: &str = "/bin/qemu-system-x86_64";
/// QEMU's data directory in L1's image.
pub const QEMU_DATA: &str = "/qemu";
/// The firmware and option ROMs the QEMU machines load: the name in
/// L1's data directory and the file of the lane's QEMU it is. The microvm
/// machine gets qboot, upstream QEMU's `bios-microvm.bin` (Debian's
/// firmware path would give it a SeaBIOS build).
pub const QEMU_FIRMWARE: [(&str, &str); 4] = [
    ("bios-microvm.bin", "qboot.rom"),
    ("bios-256k.bin", "bios-256k.bin"),
    ("linuxboot_dma.bin", "linuxboot_dma.bin"),
    ("kvmvapic.bin", "kvmvapic.bin"),
];
/// The VMMs measured, in the order of even rounds.
pub const CONTENDERS: [&str; 3] = ["vmm", "qemu-microvm", "qemu-pc"];
/// The guest's RAM, the same for every VMM.
const MEM_MIB: u32 = 256;
/// How long one boot may take to reach userspace.
const BOOT_LIMIT: Duration = Duration::from_secs(300);
/// How long a failed boot's stderr is waited for once the VMM is gone.
const STDERR_WAIT: Duration = Duration::from_secs(5);
/// How many of the slowest kernel steps are listed for each VMM's first boot.
const SLOWEST_STEPS: usize = 8;

/// A VMM under test and how it boots the guest.
pub(super) struct Contender {
    pub(super) name: &'static str,
    pub(super) program: &'static str,
    pub(super) args: Vec<String>,
}

/// The guest the lane boots, named by L1's environment.
pub(super) struct Guest {
    pub(super) kernel: String,
    pub(super) initrd: String,
    pub(super) cmdline: String,
}

impl Guest {
    pub(super) fn from_env() -> anyhow::Result<Guest> {
        let var = |name: &str| std::env::var(name).with_context(|| format!("${name} is not set"));
        Ok(Guest {
            kernel: var("L2_KERNEL")?,
            initrd: var("L2_INITRD")?,
            cmdline: var("L2_CMDLINE")?,
        })
    }
}

/// The [`CONTENDERS`]: `vmm`, QEMU's microvm machine, QEMU's PC; all
/// with one vCPU, the same RAM, kernel, initramfs and command line.
///
/// microvm runs with QEMU's defaults. On it Linux's `rtc_cmos` spends 5
/// to 9 s in L1 before it calls the RTC "broken or not accessible", with
/// `rtc=on` (the default) and with `rtc=off` alike (the slowest steps
/// show it). `pc` is the like-for-like machine: it has the PC devices
/// `vmm` has.
pub(super) fn contenders(guest: &Guest) -> Vec<Contender> {
    let vmm = [
        "run",
        "--mem",
        &format!("{MEM_MIB}M"),
        "--cpus",
        "1",
        "--kernel",
        &guest.kernel,
        "--initrd",
        &guest.initrd,
        "--cmdline",
        &guest.cmdline,
    ];
    let qemu = |machine: &str| {
        [
            "-L",
            QEMU_DATA,
            "-M",
            machine,
            "-enable-kvm",
            "-cpu",
            "host",
            "-m",
            &format!("{MEM_MIB}M"),
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
            &guest.kernel,
            "-initrd",
            &guest.initrd,
            "-append",
            &guest.cmdline,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    vec![
        Contender {
            name: CONTENDERS[0],
            program: "vmm",
            args: vmm.map(str::to_owned).to_vec(),
        },
        Contender {
            name: CONTENDERS[1],
            program: QEMU_BINARY,
            args: qemu("microvm"),
        },
        Contender {
            name: CONTENDERS[2],
            program: QEMU_BINARY,
            args: qemu("pc"),
        },
    ]
}

/// Runs the L1 side with its arguments (those after `--measure`): the
/// number of rounds.
///
/// Every contender first boots once unmeasured: L1 runs under software
/// emulation, and whoever boots first there pays for translating L1's
/// KVM paths (twice the setup time in a trial).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let rounds: u32 = args
        .first()
        .context("--measure needs the number of rounds")?
        .parse()
        .context("--measure takes a number of rounds")?;
    let all = contenders(&Guest::from_env()?);
    alternate(&all, rounds, |c, round| {
        let lines = boot(c, MARKER)?;
        let Some(round) = round else {
            return Ok(());
        };
        let p = phases::phases(&lines, MARKER)?;
        let values = [p.setup, p.kernel, p.init, p.total];
        println!("{}", Record::line(RECORD, c.name, round, &values));
        if round == 0 {
            for l in &lines {
                println!("{LOG}{} {:.6} {}", c.name, l.at.as_secs_f64(), l.text);
            }
            for g in phases::slowest(&lines, SLOWEST_STEPS) {
                println!("{GAP}{} {:.3} {}", c.name, g.seconds, g.line);
            }
        }
        Ok(())
    })
}

/// Runs `each` for every contender of `all`: once unmeasured (`None`),
/// then `rounds` rounds (`Some(round)`), in the order of `all` on even
/// rounds and in reverse on odd ones, so that neither VMM always runs
/// first. A run that fails is reported as a [`FAIL`] line and the others
/// go on; fails at the end if one did.
pub(super) fn alternate(
    all: &[Contender],
    rounds: u32,
    mut each: impl FnMut(&Contender, Option<u32>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut failed = 0;
    for c in all {
        if let Err(e) = each(c, None) {
            failed += 1;
            println!("{FAIL}{} warm-up: {e:#}", c.name);
        }
    }
    for round in 0..rounds {
        for c in order(all, round) {
            if let Err(e) = each(c, Some(round)) {
                failed += 1;
                println!("{FAIL}{} round {round}: {e:#}", c.name);
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} runs failed");
    }
    Ok(())
}

/// The order of `all` in `round`: as given on even rounds, reversed on
/// odd ones.
fn order<T>(all: &[T], round: u32) -> Vec<&T> {
    let mut order: Vec<&T> = all.iter().collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// Boots the guest with `c` until a serial line contains `until`; returns
/// the serial lines up to it with their arrival times.
pub(super) fn boot(c: &Contender, until: &str) -> anyhow::Result<Vec<Line>> {
    let start = Instant::now();
    let mut child = Command::new(c.program)
        .args(&c.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", c.program))?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let stderr = child.stderr.take().context("piped stderr")?;
    let (tx, rx) = mpsc::channel();
    // The reader ends when the VMM's stdout closes; it is not waited for,
    // a stray process holding the pipe must not hold up the benchmark.
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let at = start.elapsed();
            let text = String::from_utf8_lossy(&buf);
            let text = text.trim_end_matches(['\r', '\n']).to_owned();
            if tx.send(Line { at, text }).is_err() {
                break;
            }
            buf.clear();
        }
    });
    let (errors_tx, errors) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        let _ = errors_tx.send(text);
    });
    let mut lines = Vec::new();
    let outcome = loop {
        let left = BOOT_LIMIT.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.text.contains(until);
                lines.push(line);
                if done {
                    break Ok(());
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                break Err(anyhow!("no {until:?} within {} s", BOOT_LIMIT.as_secs()));
            }
            Err(RecvTimeoutError::Disconnected) => {
                break Err(anyhow!("it ended before {until:?}"));
            }
        }
    };
    // It may have ended on its own already; the kill is then refused.
    let _ = child.kill();
    let status = child.wait().context("waiting for the killed VMM")?;
    match outcome {
        Ok(()) => Ok(lines),
        Err(e) => {
            let errors = errors.recv_timeout(STDERR_WAIT).unwrap_or_default();
            let last = lines.last().map_or("", |l| l.text.as_str());
            Err(anyhow!(
                "{e} ({status}; last serial line {last:?}; stderr: {errors:?})"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contender_boots_the_same_guest_alike() {
        let guest = Guest {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "console=ttyS0 x=1".into(),
        };
        let all = contenders(&guest);
        assert_eq!(all.len(), 3);
        for c in &all {
            let args = c.args.join(" ");
            for needed in ["/k", "/i", "console=ttyS0 x=1", "256M", " 1 "] {
                assert!(args.contains(needed), "{}: {args}", c.name);
            }
        }
        let machine = |i: usize| all[i].args.join(" ");
        assert!(machine(1).contains("-M microvm -enable-kvm -cpu host"));
        assert!(machine(2).contains("-M pc -enable-kvm -cpu host"));
    }

    #[test]
    fn rounds_alternate_who_goes_first_after_one_warm_up_each() {
        assert_eq!(order(&[1, 2, 3], 0), [&1, &2, &3]);
        assert_eq!(order(&[1, 2, 3], 1), [&3, &2, &1]);
        let all = [shell("a"), shell("b")];
        let mut seen = Vec::new();
        let result = alternate(&all, 3, |c, round| {
            seen.push((c.args[1].clone(), round));
            match round {
                Some(1) if c.args[1] == "a" => anyhow::bail!("boom"),
                _ => Ok(()),
            }
        });
        let e = result.unwrap_err().to_string();
        assert!(e.contains("1 runs failed"), "{e}");
        let expected: Vec<(String, Option<u32>)> = [
            ("a", None),
            ("b", None),
            ("a", Some(0)),
            ("b", Some(0)),
            ("b", Some(1)),
            ("a", Some(1)),
            ("a", Some(2)),
            ("b", Some(2)),
        ]
        .map(|(n, r)| (n.to_owned(), r))
        .to_vec();
        assert_eq!(seen, expected);
    }

    fn shell(script: &str) -> Contender {
        Contender {
            name: "sh",
            program: "sh",
            args: vec!["-c".into(), script.into()],
        }
    }

    #[test]
    fn a_boot_ends_at_the_marker_and_its_vmm_is_killed() {
        let started = Instant::now();
        let script = format!(
            "echo '[    0.100000] Run /init as init process'; sleep 0.3; echo '{MARKER}'; sleep 60"
        );
        let lines = boot(&shell(&script), MARKER).unwrap();
        assert!(started.elapsed() < Duration::from_secs(30), "not killed");
        assert_eq!(lines.len(), 2);
        assert!(lines[1].at - lines[0].at >= Duration::from_millis(300));
        let p = phases::phases(&lines, MARKER).unwrap();
        assert!(p.init >= 0.3 && p.total >= p.init, "{p:?}");
    }

    #[test]
    fn a_vmm_that_ends_before_userspace_is_a_failure() {
        let e = boot(&shell("echo booting; echo oops >&2; exit 3"), MARKER)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ended before") && e.contains("booting"), "{e}");
        assert!(e.contains("oops") && e.contains("exit status: 3"), "{e}");
    }
}
