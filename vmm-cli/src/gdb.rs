//! `vmm run --gdb ADDR`: a gdb remote stub in front of the VM.
//!
//! The VM is built halted; `vmm` waits for gdb on ADDR before the guest runs
//! its first instruction, then serves the session on a thread of its own
//! while the EMTs run. `monitor info NAME ARGS` reaches the VM's info
//! handlers. gdb's watchpoints use the debug registers or page traps as
//! `--gdb-watch` says (see `dbgf::debugger::WatchMode`).

use std::thread::JoinHandle;

use anyhow::Context;
use dbgf::gdb::{GdbAddr, GdbListener, GdbSession, SessionEnd};
use vmm_core::VmHandle;
use vmm_core::debug::DebugAttachment;

/// A gdb session served on its own thread.
pub struct GdbServer {
    thread: JoinHandle<anyhow::Result<SessionEnd>>,
}

impl GdbServer {
    /// Binds `addr`, waits for gdb to connect, and starts serving it.
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
        let conn = listener.accept().context("waiting for gdb")?;
        eprintln!("vmm: gdb connected");
        let session = GdbSession::new(attach.target, attach.debugger, attach.stops)
            .with_info(vm.info().clone(), vm.info_executor());
        let thread = std::thread::Builder::new()
            .name("gdb".into())
            .spawn(move || serve(session, conn, &vm))
            .context("cannot start the gdb thread")?;
        Ok(GdbServer { thread })
    }

    /// Waits for the session to end (after the VM's run ended).
    pub fn finish(self) -> anyhow::Result<SessionEnd> {
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the gdb thread panicked"))?
    }
}

fn serve(
    mut session: GdbSession<vmm_core::debug::VmDebugTarget>,
    conn: dbgf::gdb::GdbConnection,
    vm: &VmHandle,
) -> anyhow::Result<SessionEnd> {
    let end = session.run(conn).context("gdb session")?;
    match end {
        SessionEnd::Detached => eprintln!("vmm: gdb detached; the guest runs on"),
        SessionEnd::Killed => {
            eprintln!("vmm: gdb killed the VM");
            vm.power_off().context("powering off for gdb's kill")?;
        }
        SessionEnd::PoweredOff => {}
    }
    Ok(end)
}
