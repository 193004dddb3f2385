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

/// Emits `print_hex`: writes AL as two lowercase hex digits to COM1.
/// Clobbers AX and DX; works in 16- and 32-bit code.
pub(crate) fn print_hex_routine(a: &mut CodeAssembler, print_hex: &mut CodeLabel) -> Result<()> {
    let mut digit = a.create_label();
    let mut decimal = a.create_label();
    a.set_label(print_hex).map_err(asm_err)?;
    a.mov(dx, u32::from(COM1_PORT)).map_err(asm_err)?;
    a.mov(ah, al).map_err(asm_err)?;
    a.shr(al, 4).map_err(asm_err)?;
    a.call(digit).map_err(asm_err)?;
    a.mov(al, ah).map_err(asm_err)?;
    a.and(al, 0xf).map_err(asm_err)?;
    a.call(digit).map_err(asm_err)?;
    a.ret().map_err(asm_err)?;
    a.set_label(&mut digit).map_err(asm_err)?;
    a.cmp(al, 10).map_err(asm_err)?;
    a.jb(decimal).map_err(asm_err)?;
    a.add(al, i32::from(b'a' - 10 - b'0')).map_err(asm_err)?;
    a.set_label(&mut decimal).map_err(asm_err)?;
    a.add(al, i32::from(b'0')).map_err(asm_err)?;
    a.out(dx, al).map_err(asm_err)?;
    a.ret().map_err(asm_err)?;
    Ok(())
}

/// A flat 4 GiB code segment (0x08) and data segment (0x10) after the null
/// descriptor, with their accessed bits set (the GDT lives in ROM, where
/// the CPU could not set them).
pub(crate) const FLAT_GDT: [u64; 3] = [0, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

/// The GDT as bytes.
pub(crate) fn gdt_bytes(descriptors: &[u64]) -> Vec<u8> {
    descriptors.iter().flat_map(|d| d.to_le_bytes()).collect()
}

/// A pseudo-descriptor (`lgdt`/`lidt` operand): 16-bit limit, 32-bit base.
pub(crate) fn pseudo_descriptor(entries: usize, base: u32) -> [u8; 6] {
    let mut d = [0u8; 6];
    d[..2].copy_from_slice(&((entries * 8 - 1) as u16).to_le_bytes());
    d[2..].copy_from_slice(&base.to_le_bytes());
    d
}
