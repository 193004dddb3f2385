//! `vmm run --gdb ADDR`: a gdb remote stub in front of the VM.
//!
//! The VM is built halted; `vmm` waits for gdb on ADDR before the guest runs
//! its first instruction, then serves the session on a thread of its own
//! while the EMTs run. When gdb detaches or goes away the guest runs on and
//! the next gdb may connect to the same address (the VM halts for it); the
//! stub ends when gdb kills the VM or the VM's run ends. `monitor info NAME
//! ARGS` reaches the VM's info handlers. gdb's watchpoints use the debug
//! registers or page traps as `--gdb-watch` says (see
//! `dbgf::debugger::WatchMode`).

use std::thread::JoinHandle;

use anyhow::Context;
use dbgf::gdb::{GdbAddr, GdbCancel, GdbListener, GdbServerError, GdbSession, SessionEnd};
use vmm_core::VmHandle;
use vmm_core::debug::DebugAttachment;

/// The gdb stub served on its own thread, one gdb after another.
pub struct GdbServer {
    thread: JoinHandle<anyhow::Result<SessionEnd>>,
    cancel: GdbCancel,
}

impl GdbServer {
    /// Binds `addr`, waits for gdb to connect, and starts serving it (and whoever
    /// connects after it detached or went away).
    pub fn start(addr: &str, attach: DebugAttachment, vm: VmHandle) -> anyhow::Result<Self> {
        let addr: GdbAddr = addr.parse()?;
        let listener = GdbListener::bind(&addr).context("cannot listen for gdb")?;
        // What the user types: gdb takes a Unix socket's bare path.
        let (shown, remote) = match (&addr, listener.local_addr()) {
            (GdbAddr::Tcp(_), Some(bound)) => (bound.to_string(), bound.to_string()),
            (GdbAddr::Tcp(a), None) => (a.to_string(), a.to_string()),
            (GdbAddr::Unix(path), _) => (
                format!("unix:{}", path.display()),
                path.display().to_string(),
            ),
        };
        eprintln!("vmm: waiting for gdb on {shown} (target remote {remote})");
        let cancel = GdbCancel::new();
        let conn = listener.accept(&cancel).context("waiting for gdb")?;
        eprintln!("vmm: gdb connected");
        let session = GdbSession::new(attach.target, attach.debugger, attach.stops)
            .with_info(vm.info().clone(), vm.info_executor());
        let stop = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("gdb".into())
            .spawn(move || serve(session, &listener, conn, &stop, &vm))
            .context("cannot start the gdb thread")?;
        Ok(GdbServer { thread, cancel })
    }

    /// Stops the stub (after the VM's run ended) and waits for its thread.
    pub fn finish(self) -> anyhow::Result<SessionEnd> {
        self.cancel.cancel();
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the gdb thread panicked"))?
    }
}

/// Says how one session ended.
fn report(end: &Result<SessionEnd, GdbServerError>, cancel: &GdbCancel) {
    match end {
        Ok(SessionEnd::Detached) => {
            eprintln!("vmm: gdb detached; the guest runs on, waiting for the next gdb");
        }
        Ok(SessionEnd::Killed) => eprintln!("vmm: gdb killed the VM"),
        Ok(SessionEnd::PoweredOff) => {}
        // The VM's run ended under a gdb that had it halted: nothing went wrong.
        Err(_) if cancel.is_cancelled() => {}
        Err(e) => {
            eprintln!("vmm: gdb session ended: {e}; the guest runs on, waiting for the next gdb")
        }
    }
}

fn serve(
    mut session: GdbSession<vmm_core::debug::VmDebugTarget>,
    listener: &GdbListener,
    conn: dbgf::gdb::GdbConnection,
    cancel: &GdbCancel,
    vm: &VmHandle,
) -> anyhow::Result<SessionEnd> {
    let end = session
        .serve(listener, conn, cancel, |one| report(one, cancel))
        .context("gdb stub")?;
    if end == SessionEnd::Killed {
        vm.power_off().context("powering off for gdb's kill")?;
    }
    Ok(end)
}
