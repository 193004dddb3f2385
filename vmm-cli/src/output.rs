//! What the commands print on standard output. A reader that stops early
//! (`vmm state inspect FILE | head`) ends the output quietly: the command
//! stops printing and exits 0, as it would have after printing everything,
//! instead of panicking or reporting an error. (Rust ignores `SIGPIPE`, so
//! a closed pipe shows up as a `BrokenPipe` error on the write.)

use std::io::{ErrorKind, Write};

/// Writes `text` to standard output and flushes it; a reader that went
/// away is not an error.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// `value` as the commands' `--json` print it: one compact line (what the
/// control API answers, and what `jq` and line-oriented tools take).
pub fn json_line(value: &impl serde::Serialize) -> serde_json::Result<String> {
    serde_json::to_string(value).map(|line| line + "\n")
}
