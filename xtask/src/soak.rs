//! `cargo xtask soak [--ops N]`: the release `vmm run --guest idle` under a
//! mixed control-API load (status, statistics, pause/resume, balloon
//! changes, and a save every [`SAVE_EVERY`] operations), one connection per
//! operation, for N operations (default 100,000). Every answer must be a
//! success; no operation may take longer than [`MAX_LATENCY`]; the VMM's
//! open descriptors and resident memory at the end must be within
//! [`MAX_GROWTH_PERCENT`] of their values after the warm-up (the first
//! [`WARM_UP_PERCENT`] of the operations). Prints the latencies and the
//! figures. Not part of `cargo xtask ci`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

const USAGE: &str = "usage: cargo xtask soak [--ops N]";
/// Operations by default.
const DEFAULT_OPS: usize = 100_000;
/// A save replaces every this many-th operation (a multiple of the cycle's
/// length, so a save always falls where the VM runs).
const SAVE_EVERY: usize = 1000;
/// The most any one operation may take: a bound, not a performance target.
const MAX_LATENCY: Duration = Duration::from_secs(5);
/// The share of the operations after which the baseline is taken.
const WARM_UP_PERCENT: usize = 5;
/// How much descriptors and memory may grow after the warm-up.
const MAX_GROWTH_PERCENT: u64 = 10;
/// How long starting and stopping the VM may take.
const START_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// A socket wait of one operation (beyond it, the operation fails).
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Guest RAM: small, so that saves are quick.
const GUEST_RAM: &str = "32M";

/// One kind of API operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Status,
    Stats,
    Pause,
    Resume,
    BalloonGet,
    BalloonSet,
    Info,
    Save,
}

/// The operations in turn: the VM is running again at the end of a cycle.
const CYCLE: [Op; 8] = [
    Op::Status,
    Op::Stats,
    Op::Pause,
    Op::Status,
    Op::Resume,
    Op::BalloonGet,
    Op::BalloonSet,
    Op::Info,
];
const _: () = assert!(SAVE_EVERY.is_multiple_of(CYCLE.len()));

impl Op {
    /// The `i`-th operation of the run.
    fn nth(i: usize) -> Op {
        if i % SAVE_EVERY == SAVE_EVERY - CYCLE.len() {
            Op::Save
        } else {
            CYCLE[i % CYCLE.len()]
        }
    }

    /// Method, target and body of the `i`-th operation's request.
    fn request(self, i: usize, save_to: &Path) -> (&'static str, String, String) {
        match self {
            Op::Status => ("GET", "/v1/vm".into(), String::new()),
            Op::Stats => (
                "GET",
                "/v1/stats?pattern=%2FIOM%2F*&format=prometheus".into(),
                String::new(),
            ),
            Op::Pause => ("PUT", "/v1/vm/state".into(), r#"{"action":"pause"}"#.into()),
            Op::Resume => (
                "PUT",
                "/v1/vm/state".into(),
                r#"{"action":"resume"}"#.into(),
            ),
            Op::BalloonGet => ("GET", "/v1/balloon".into(), String::new()),
            Op::BalloonSet => (
                "PUT",
                "/v1/balloon".into(),
                format!(r#"{{"size_mib":{}}}"#, (i / CYCLE.len()) % 4),
            ),
            Op::Info => ("GET", "/v1/info/fflags".into(), String::new()),
            Op::Save => (
                "PUT",
                "/v1/vm/save".into(),
                serde_json::json!({ "path": save_to }).to_string(),
            ),
        }
    }
}

/// Runs the soak with the command line `args`.
pub fn run(args: &[String], cargo: impl Fn(&[&str]) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let ops = match args {
        [] => DEFAULT_OPS,
        [flag, n] if flag == "--ops" => n
            .parse()
            .ok()
            .filter(|&n| n >= 100)
            .with_context(|| format!("--ops {n}: expected a number of at least 100"))?,
        _ => bail!("{USAGE}"),
    };
    cargo(&["build", "--release", "-p", "vmm-cli"])?;
    let root = crate::workspace_root();
    let dir = root.join("target/soak");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut vm = SoakVm::start(&root.join("target/release/vmm"), &dir)?;
    let result = drive(&mut vm, ops, &dir.join("vm.sav"));
    let stopped = vm.stop();
    result?;
    stopped
}

/// What one operation took.
struct Sample {
    op: Op,
    took: Duration,
}

/// Descriptors and memory of the VMM at one moment.
#[derive(Clone, Copy)]
struct Usage {
    fds: u64,
    rss_kib: u64,
}

fn drive(vm: &mut SoakVm, ops: usize, save_to: &Path) -> anyhow::Result<()> {
    let warm_up = ops * WARM_UP_PERCENT / 100;
    let mut samples = Vec::with_capacity(ops);
    let mut baseline = None;
    let start = Instant::now();
    for i in 0..ops {
        if i == warm_up {
            baseline = Some(vm.usage()?);
        }
        let op = Op::nth(i);
        let (method, target, body) = op.request(i, save_to);
        let began = Instant::now();
        let (status, answer) = http(&vm.socket, method, &target, &body)
            .with_context(|| format!("operation {i} ({op:?}: {method} {target})"))?;
        let took = began.elapsed();
        ensure!(
            (200..300).contains(&status),
            "operation {i} ({op:?}: {method} {target}) answered {status}: {answer}"
        );
        vm.check_alive()?;
        samples.push(Sample { op, took });
        if (i + 1) % (ops / 10).max(1) == 0 {
            eprintln!("soak: {} operations, {:.0?}", i + 1, start.elapsed());
        }
    }
    let elapsed = start.elapsed();
    let end = vm.usage()?;
    let baseline = baseline.context("no warm-up sample")?;
    report(&samples, elapsed, baseline, end);

    let slowest = samples
        .iter()
        .max_by_key(|s| s.took)
        .context("no operations")?;
    ensure!(
        slowest.took <= MAX_LATENCY,
        "a {:?} took {:?} (bound {MAX_LATENCY:?})",
        slowest.op,
        slowest.took
    );
    for (what, before, after) in [
        ("descriptors", baseline.fds, end.fds),
        ("RSS (KiB)", baseline.rss_kib, end.rss_kib),
    ] {
        ensure!(
            after * 100 <= before * (100 + MAX_GROWTH_PERCENT),
            "{what} grew from {before} after the warm-up to {after} at the end (more than {MAX_GROWTH_PERCENT}%)"
        );
    }
    eprintln!("soak: passed");
    Ok(())
}

/// Prints the latencies (all operations, then per kind) and the usage.
fn report(samples: &[Sample], elapsed: Duration, baseline: Usage, end: Usage) {
    println!(
        "soak: {} operations in {:.1} s ({:.0} per second)",
        samples.len(),
        elapsed.as_secs_f64(),
        samples.len() as f64 / elapsed.as_secs_f64()
    );
    let line = |name: &str, took: &mut Vec<Duration>| {
        took.sort_unstable();
        let at = |q: usize| took[(took.len() - 1) * q / 100];
        println!(
            "  {name:<11} {:>7}  p50 {:>9.2?}  p99 {:>9.2?}  max {:>9.2?}",
            took.len(),
            at(50),
            at(99),
            took[took.len() - 1]
        );
    };
    line("all", &mut samples.iter().map(|s| s.took).collect());
    let mut kinds: Vec<Op> = Vec::new();
    for op in CYCLE.into_iter().chain([Op::Save]) {
        if !kinds.contains(&op) {
            kinds.push(op);
        }
    }
    for kind in kinds {
        let mut took: Vec<Duration> = samples
            .iter()
            .filter(|s| s.op == kind)
            .map(|s| s.took)
            .collect();
        if !took.is_empty() {
            line(&format!("{kind:?}"), &mut took);
        }
    }
    println!(
        "  descriptors {} after warm-up, {} at the end; RSS {} KiB after warm-up, {} KiB at the end",
        baseline.fds, end.fds, baseline.rss_kib, end.rss_kib
    );
}

/// The `vmm run` under test; killed on drop if still running.
struct SoakVm {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Drop for SoakVm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl SoakVm {
    fn start(vmm: &Path, dir: &Path) -> anyhow::Result<SoakVm> {
        let socket = dir.join("api.sock");
        let log = dir.join("vmm.log");
        let stderr = std::fs::File::create(&log)?;
        let child = Command::new(vmm)
            .args(["run", "--guest", "idle", "--mem", GUEST_RAM, "--api-socket"])
            .arg(&socket)
            .arg("--serial")
            .arg(dir.join("serial"))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {}", vmm.display()))?;
        let mut vm = SoakVm { child, socket, log };
        let start = Instant::now();
        loop {
            vm.check_alive()?;
            if let Ok((200, answer)) = http(&vm.socket, "GET", "/v1/vm", "")
                && answer.contains("\"RUNNING\"")
            {
                return Ok(vm);
            }
            ensure!(
                start.elapsed() < START_STOP_TIMEOUT,
                "the VM did not run within {START_STOP_TIMEOUT:?}: {}",
                vm.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("vmm run exited ({status}): {}", self.log());
        }
        Ok(())
    }

    fn usage(&self) -> anyhow::Result<Usage> {
        let pid = self.child.id();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/PID/status")?;
        Ok(Usage { fds, rss_kib })
    }

    /// Powers the VM off through the API and waits for `vmm run` to exit 0.
    fn stop(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            // The answer may be lost as the server goes away; the exit counts.
            let _ = http(
                &self.socket,
                "PUT",
                "/v1/vm/state",
                r#"{"action":"power_off"}"#,
            );
        }
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "vmm run: {status}: {}", self.log());
                return Ok(());
            }
            ensure!(
                start.elapsed() < START_STOP_TIMEOUT,
                "vmm run did not exit within {START_STOP_TIMEOUT:?} of power off"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One HTTP/1.1 request on a connection of its own: the status and body.
fn http(socket: &Path, method: &str, target: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .context("cannot read the answer")?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP answer: {answer:?}"))?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_replace_a_status_while_the_vm_runs_and_pauses_pair_with_resumes() {
        let ops: Vec<Op> = (0..3 * SAVE_EVERY).map(Op::nth).collect();
        assert_eq!(ops.iter().filter(|&&op| op == Op::Save).count(), 3);
        let mut paused = false;
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Pause => {
                    assert!(!paused, "pause while paused at {i}");
                    paused = true;
                }
                Op::Resume => {
                    assert!(paused, "resume while running at {i}");
                    paused = false;
                }
                Op::Save => assert!(!paused, "save while paused at {i}"),
                _ => {}
            }
        }
    }
}
