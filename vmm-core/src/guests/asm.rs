//! Assembly helpers shared by the embedded guests.

use iced_x86::code_asm::*;

use crate::devices::{COM1_PORT, DEBUG_EXIT_PORT};
use crate::error::{Error, Result};

/// Turns an assembler error into a VM error (a bug in a guest's source).
pub(crate) fn asm_err(e: IcedError) -> Error {
    Error::Config(format!("embedded guest failed to assemble: {e}"))
}

/// Emits `print`: writes the NUL-terminated string at `[si]`/`[esi]`/`[rsi]`
/// (per the assembler's bitness) to COM1. Clobbers AL, DX and the index.
pub(crate) fn print_routine(a: &mut CodeAssembler, print: &mut CodeLabel) -> Result<()> {
    let mut next = a.create_label();
    let mut done = a.create_label();
    a.set_label(print).map_err(asm_err)?;
    a.mov(dx, u32::from(COM1_PORT)).map_err(asm_err)?;
    a.set_label(&mut next).map_err(asm_err)?;
    a.lodsb().map_err(asm_err)?;
    a.test(al, al).map_err(asm_err)?;
    a.jz(done).map_err(asm_err)?;
    a.out(dx, al).map_err(asm_err)?;
    a.jmp(next).map_err(asm_err)?;
    a.set_label(&mut done).map_err(asm_err)?;
    a.ret().map_err(asm_err)?;
    Ok(())
}

/// Emits the end of a run: write `status` to the debug-exit port, then halt
/// for good should the VMM let the guest continue.
pub(crate) fn exit_with(a: &mut CodeAssembler, status: u8) -> Result<()> {
    let mut stop = a.create_label();
    a.mov(dx, u32::from(DEBUG_EXIT_PORT)).map_err(asm_err)?;
    a.mov(al, u32::from(status)).map_err(asm_err)?;
    a.out(dx, al).map_err(asm_err)?;
    a.set_label(&mut stop).map_err(asm_err)?;
    a.cli().map_err(asm_err)?;
    a.hlt().map_err(asm_err)?;
    a.jmp(stop).map_err(asm_err)?;
    Ok(())
}
