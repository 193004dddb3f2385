//! `vmm save`'s progress display.

use std::path::{Path, PathBuf};

use hyper::Method;

use super::{PROGRESS_TIMEOUT, query, request};
use crate::api::PREFIX;

/// Shows the progress of a save while `vmm save` waits for it, from the
/// VM's `/SSM/Save/...` statistics: a bar on a terminal, plain lines
/// otherwise. Stops (and ends the bar's line) when dropped.
pub struct SaveProgress {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SaveProgress {
    pub fn show(socket: PathBuf) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let mut shown_quarter = 0;
            let mut drew = false;
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let Some((written, expected)) = save_progress(&socket) else {
                    continue;
                };
                // Saves of less than this are over before a bar helps.
                if written == 0 || expected < 16 << 20 {
                    continue;
                }
                let (mib, of) = (written >> 20, expected >> 20);
                let percent = (written.saturating_mul(100) / expected).min(100);
                if terminal {
                    let filled = (percent / 5) as usize;
                    eprint!(
                        "\rsaving [{}{}] {percent:>3}% {mib}/{of} MiB",
                        "#".repeat(filled),
                        ".".repeat(20 - filled)
                    );
                    drew = true;
                } else if percent / 25 > shown_quarter {
                    shown_quarter = percent / 25;
                    eprintln!("vmm: saving: {mib} of about {of} MiB written");
                }
            }
            if drew {
                eprintln!();
            }
        });
        SaveProgress {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SaveProgress {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `/SSM/Save/cbWritten` and `/SSM/Save/cbExpected` of the VM at `socket`.
fn save_progress(socket: &Path) -> Option<(u64, u64)> {
    let target = format!(
        "{PREFIX}/stats?{}",
        query(&[("pattern", "/SSM/Save/*"), ("format", "json")])
    );
    let reply = request(socket, Method::GET, &target, None, PROGRESS_TIMEOUT).ok()?;
    let v = reply.json().ok()?;
    let value = |name: &str| {
        v["samples"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)?["value"]
            .as_u64()
    };
    Some((
        value("/SSM/Save/cbWritten")?,
        value("/SSM/Save/cbExpected")?,
    ))
}
