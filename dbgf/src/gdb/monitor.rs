//! gdb `monitor` commands: DBGF info handlers, breakpoint list with hit counts and the
//! breakpoints gdb has no command for (port I/O), named like VirtualBox's debugger.

use std::fmt::Write;

use crate::debugger::{BreakpointId, BreakpointKind, DebugTarget, Debugger, IoAccess, MemAccess};
use crate::{InfoExecutor, InfoRegistry};

const HELP: &str = "\
monitor commands:
  help                        this list
  info NAME [ARGS]            run a DBGF info handler (`info help` lists them)
  bl                          list breakpoints with their hit counts
  bo PORT[-LAST] [r|w|rw]     break on guest port I/O (default rw)
  wp PHYS LEN [r|w|rw]        watch guest-physical bytes through page traps (default w)
  bc ID                       clear a breakpoint set with a monitor command";

/// The info registry and the executor that runs its handlers on the right thread.
pub(super) type InfoAccess = (InfoRegistry, Box<dyn InfoExecutor + Send>);

/// Runs one monitor command; errors are reported on `out` (they are the user's).
///
/// `gdb_owned` lists the breakpoints gdb set itself (`bc` refuses those: gdb would lose
/// track of them).
pub(super) fn run<T: DebugTarget + ?Sized>(
    cmd: &str,
    dbg: &mut Debugger,
    target: &mut T,
    info: Option<&InfoAccess>,
    gdb_owned: &[BreakpointId],
    out: &mut dyn Write,
) -> std::fmt::Result {
    let mut words = cmd.split_whitespace();
    let verb = words.next().unwrap_or("help");
    let rest: Vec<&str> = words.collect();
    match (verb, rest.as_slice()) {
        ("help", _) => writeln!(out, "{HELP}"),
        ("info", [name, ..]) => {
            let args = cmd
                .trim_start()
                .strip_prefix("info")
                .map(str::trim_start)
                .and_then(|s| s.strip_prefix(name))
                .map_or("", str::trim);
            match info {
                None => writeln!(out, "no info handlers are attached to this session"),
                Some((reg, exec)) => {
                    let mut text = String::new();
                    match reg.run(name, args, &mut text, exec.as_ref()) {
                        Ok(()) => write!(out, "{text}"),
                        Err(e) => writeln!(out, "{text}error: {e}"),
                    }
                }
            }
        }
        ("bl", []) => list(dbg, out),
        ("bo", [ports, access @ ..]) if access.len() <= 1 => {
            let Some(access) = parse_access(access.first().copied(), IoAccess::ReadWrite) else {
                return writeln!(out, "bad access {access:?}: r, w or rw");
            };
            let Some((first, last)) = parse_ports(ports) else {
                return writeln!(out, "bad port range {ports:?}");
            };
            match dbg.add_io_breakpoint(first, last, access) {
                Ok(id) => writeln!(out, "breakpoint {id}: ports {first:#x}-{last:#x}"),
                Err(e) => writeln!(out, "error: {e}"),
            }
        }
        ("wp", [phys, len, access @ ..]) if access.len() <= 1 => {
            let Some(access) = parse_access(access.first().copied(), MemAccess::Write) else {
                return writeln!(out, "bad access {access:?}: r, w or rw");
            };
            let (Some(phys), Some(len)) = (parse_num(phys), parse_num(len)) else {
                return writeln!(out, "bad address or length in {cmd:?}");
            };
            match dbg.add_phys_watch(target, phys, len, access) {
                Ok(id) => writeln!(
                    out,
                    "breakpoint {id}: guest-physical {phys:#x} len {len} ({access:?})"
                ),
                Err(e) => writeln!(out, "error: {e}"),
            }
        }
        ("bc", [id]) => {
            let Some(id) = parse_num(id).and_then(|n| u32::try_from(n).ok()) else {
                return writeln!(out, "bad breakpoint id {id:?}");
            };
            let id = BreakpointId(id);
            if gdb_owned.contains(&id) {
                return writeln!(out, "breakpoint {id} belongs to gdb: use gdb's `delete`");
            }
            match dbg.remove_breakpoint(target, id) {
                Ok(()) => writeln!(out, "breakpoint {id} cleared"),
                Err(e) => writeln!(out, "error: {e}"),
            }
        }
        _ => writeln!(out, "unknown or malformed command {cmd:?}\n{HELP}"),
    }
}

fn list(dbg: &Debugger, out: &mut dyn Write) -> std::fmt::Result {
    let bps = dbg.breakpoints();
    if bps.is_empty() {
        return writeln!(out, "no breakpoints");
    }
    for bp in bps {
        write!(out, "{:>4}  hits {:>6}  ", bp.id.to_string(), bp.hits)?;
        match bp.kind {
            BreakpointKind::Hardware { addr, len, access } => {
                writeln!(out, "hw {access:?} {addr:#018x} len {len}")?
            }
            BreakpointKind::Software { addr, phys } => {
                writeln!(out, "int3 {addr:#018x} (phys {phys:#x})")?
            }
            BreakpointKind::Io {
                first,
                last,
                access,
            } => writeln!(out, "port {access:?} {first:#x}-{last:#x}")?,
            BreakpointKind::PageTrap {
                addr,
                len,
                phys,
                access,
            } => writeln!(
                out,
                "page-trap {access:?} {addr:#018x} len {len} (phys {phys:#x})"
            )?,
        }
    }
    Ok(())
}

/// An access filter word (`r`, `w`, `rw`), `default` when absent.
fn parse_access(word: Option<&str>, default: IoAccess) -> Option<IoAccess> {
    match word {
        None => Some(default),
        Some("rw") => Some(IoAccess::ReadWrite),
        Some("r") => Some(IoAccess::Read),
        Some("w") => Some(IoAccess::Write),
        Some(_) => None,
    }
}

fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_ports(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let first = u16::try_from(parse_num(a)?).ok()?;
    let last = u16::try_from(parse_num(b)?).ok()?;
    Some((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debugger::{MemTarget, stop_channel};
    use crate::{InfoCall, InfoError, InfoFlags, SameThreadExecutor};

    fn exec(
        cmd: &str,
        dbg: &mut Debugger,
        info: Option<&InfoAccess>,
        owned: &[BreakpointId],
    ) -> String {
        let (tx, _rx) = stop_channel();
        let mut vm = MemTarget::new(1, 0x1000, tx);
        let mut out = String::new();
        run(cmd, dbg, &mut vm, info, owned, &mut out).unwrap();
        out
    }

    #[test]
    fn io_breakpoints_list_and_clear() {
        let mut dbg = Debugger::new();
        assert!(exec("bl", &mut dbg, None, &[]).contains("no breakpoints"));
        let out = exec("bo 0x3f8-0x3ff w", &mut dbg, None, &[]);
        assert!(out.contains("breakpoint #1: ports 0x3f8-0x3ff"), "{out}");
        assert!(dbg.io_watch().matches(0x3f9, 1, true));
        assert!(!dbg.io_watch().matches(0x3f9, 1, false));
        exec("bo 96", &mut dbg, None, &[]);
        assert!(dbg.io_watch().matches(0x60, 1, false));
        let out = exec("bl", &mut dbg, None, &[]);
        assert!(
            out.contains("port Write 0x3f8-0x3ff") && out.contains("#2"),
            "{out}"
        );
        assert!(exec("bc 1", &mut dbg, None, &[BreakpointId(1)]).contains("belongs to gdb"));
        assert!(exec("bc 1", &mut dbg, None, &[]).contains("cleared"));
        assert!(exec("bc 1", &mut dbg, None, &[]).contains("error: no breakpoint #1"));
        assert!(!dbg.io_watch().matches(0x3f9, 1, true));
        for bad in [
            "bo 0x10000",
            "bo 5-2",
            "bo 1 x",
            "bc zz",
            "bogus",
            "bl extra",
        ] {
            let out = exec(bad, &mut dbg, None, &[]);
            assert!(
                out.contains("bad") || out.contains("error") || out.contains("unknown"),
                "{bad}: {out}"
            );
        }
        assert!(exec("", &mut dbg, None, &[]).contains("monitor commands"));
    }

    #[test]
    fn physical_watches_through_page_traps() {
        let mut dbg = Debugger::new();
        let out = exec("wp 0x800 4", &mut dbg, None, &[]);
        assert!(
            out.contains("breakpoint #1: guest-physical 0x800 len 4 (Write)"),
            "{out}"
        );
        assert!(dbg.mem_watch().matches(0x803, 1, true));
        assert!(!dbg.mem_watch().matches(0x803, 1, false));
        exec("wp 0x900 1 rw", &mut dbg, None, &[]);
        assert!(dbg.mem_watch().matches(0x900, 1, false));
        let out = exec("bl", &mut dbg, None, &[]);
        assert!(
            out.contains("page-trap ReadWrite 0x0000000000000900 len 1"),
            "{out}"
        );
        // The in-memory target has 4 KiB: the trap cannot be set beyond it.
        assert!(exec("wp 0x1000 4", &mut dbg, None, &[]).contains("error"));
        for bad in ["wp 0x800", "wp 0x800 0", "wp x 4", "wp 0x800 4 q"] {
            let out = exec(bad, &mut dbg, None, &[]);
            assert!(
                out.contains("bad") || out.contains("error") || out.contains("unknown"),
                "{bad}: {out}"
            );
        }
    }

    #[test]
    fn info_handlers_run_with_their_arguments() {
        let reg = InfoRegistry::new();
        reg.register(
            "mode",
            "Paging mode.",
            InfoFlags::empty(),
            |call: &InfoCall<'_>, out: &mut dyn Write| -> Result<(), InfoError> {
                writeln!(out, "long mode ({})", call.args)?;
                Ok(())
            },
        )
        .unwrap();
        let access: InfoAccess = (reg, Box::new(SameThreadExecutor::new(1)));
        let mut dbg = Debugger::new();
        assert_eq!(
            exec("info mode  a b", &mut dbg, Some(&access), &[]),
            "long mode (a b)\n"
        );
        assert!(exec("info help", &mut dbg, Some(&access), &[]).contains("Paging mode."));
        assert!(exec("info nope", &mut dbg, Some(&access), &[]).contains("error"));
        assert!(exec("info mode", &mut dbg, None, &[]).contains("no info handlers"));
    }
}
