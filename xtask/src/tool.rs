//! Running external tools with a deadline: every wait ends, a hung
//! download or emulator is killed and reported instead of hanging the task.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Runs `cmd` (its output goes to our stderr), failing on a non-zero exit
/// or when it runs longer than `limit` (it is killed then).
pub fn run(cmd: &mut Command, limit: Duration) -> anyhow::Result<()> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    let status = wait(&mut child, limit, &what)?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` and returns its standard output as text; fails like [`run`].
pub fn output(cmd: &mut Command, limit: Duration) -> anyhow::Result<String> {
    output_bytes(cmd, limit).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Runs `cmd` and returns its standard output; fails like [`run`].
pub fn output_bytes(cmd: &mut Command, limit: Duration) -> anyhow::Result<Vec<u8>> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    let mut pipe = child.stdout.take().context("stdout is piped")?;
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        pipe.read_to_end(&mut text).map(|_| text)
    });
    let status = wait(&mut child, limit, &what)?;
    let text = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reading {what}'s output panicked"))?
        .with_context(|| format!("cannot read {what}'s output"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(text)
}

/// Waits for `child`, killing it after `limit`.
pub fn wait(child: &mut Child, limit: Duration, what: &str) -> anyhow::Result<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {} s: killed", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where programs are looked for besides `PATH` (system tools live in
/// `sbin`, which an ordinary user's `PATH` may lack).
const SBIN: [&str; 2] = ["/usr/sbin", "/sbin"];

/// The path of the program `name` (on `PATH` or in `sbin`); if there is
/// none, the error says to install the Debian package `package`.
pub fn find_program(name: &str, package: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(Into::into))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("no {name} on this machine: install {package}"))
}

/// The program and its arguments, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_returned_and_failures_reported() {
        let out = output(
            Command::new("sh").args(["-c", "echo hi"]),
            Duration::from_secs(10),
        );
        assert_eq!(out.unwrap(), "hi\n");
        let err = run(
            Command::new("sh").args(["-c", "exit 3"]),
            Duration::from_secs(10),
        );
        assert!(err.unwrap_err().to_string().contains("exit status: 3"));
    }

    #[test]
    fn programs_are_found_in_sbin_too() {
        assert!(find_program("sh", "dash").unwrap().is_file());
        let err = find_program("no-such-program-xtask", "pkg").unwrap_err();
        assert!(err.to_string().contains("install pkg"), "{err}");
    }

    #[test]
    fn a_hung_tool_is_killed_at_its_deadline() {
        let err = run(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
    }
}
