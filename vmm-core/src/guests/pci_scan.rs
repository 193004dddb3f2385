//! The pci-scan guest: finds the PCI bus through configuration mechanism
//! #1, as an operating system does.
//!
//! Real mode throughout. It selects 00:00.0 register 0 at 0xCF8 and checks
//! what the data window gives at each width: the dword at 0xCFC, the device
//! ID as a word at 0xCFE, the vendor's high byte at 0xCFD; that the latch
//! reads back; that the class register says host bridge. Then it scans bus
//! 0 (function 0 of devices 0-31) and counts the functions present (vendor
//! not 0xFFFF): one, the host bridge. It prints
//! `vmm pci-scan: 00:00.0 VVVV:DDDD, alone on bus 0` and exits with status 0
//! through the debug-exit port, or with the number of the first check that
//! failed (see [`Check`]).

use iced_x86::code_asm::*;

use super::asm::{STRINGS, StringTable, asm_err, exit_with, print_hex_routine, print_routine};
use super::rom::RomImage;
use crate::devices::DEBUG_EXIT_PORT;
use crate::devices::pci::{HOST_BRIDGE_DEVICE, HOST_BRIDGE_VENDOR, PCI_CONFIG_PORT};
use crate::error::Result;

const ROM_SIZE: usize = 64 * 1024;
const LOW_SEGMENT: u32 = 0xf000;
const MAIN: usize = 0x1000;
const STACK_TOP: u32 = 0x7000;

const ADDRESS: u32 = PCI_CONFIG_PORT as u32;
const DATA: u32 = ADDRESS + 4;
/// Mechanism #1's enable bit; bus, device, function and register follow.
const ENABLE: u32 = 1 << 31;
/// One device further on in a configuration address.
const NEXT_DEVICE: u32 = 1 << 11;
/// The host bridge's ID register as the data window gives it.
const BRIDGE_ID: u32 = (HOST_BRIDGE_DEVICE as u32) << 16 | HOST_BRIDGE_VENDOR as u32;

/// The guest's checks, by exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Check {
    /// The dword at 0xCFC is the host bridge's vendor and device ID.
    DwordId = 1,
    /// The word at 0xCFE is the device ID.
    WordDevice = 2,
    /// The byte at 0xCFD is the vendor ID's high byte.
    ByteVendorHigh = 3,
    /// 0xCF8 reads back what was written.
    Latch = 4,
    /// The class register says host bridge (06/00/00).
    Class = 5,
    /// Exactly one function on bus 0.
    Scan = 6,
}

/// The guest's messages, as ROM offsets.
struct Messages {
    found: usize,
    colon: usize,
    alone: usize,
    failed: usize,
}

pub(super) fn firmware() -> Result<Vec<u8>> {
    let mut strings = StringTable::default();
    let messages = Messages {
        found: strings.add("vmm pci-scan: 00:00.0 "),
        colon: strings.add(":"),
        alone: strings.add(", alone on bus 0\n"),
        failed: strings.add("vmm pci-scan: a check failed\n"),
    };
    let mut rom = RomImage::new(ROM_SIZE)?;
    rom.place(STRINGS, strings.bytes())?;
    rom.place(MAIN, &main_code(&messages)?)?;
    rom.reset_jump(MAIN as u16)?;
    Ok(rom.into_bytes())
}

/// `out 0xCF8, address` (clobbers EAX, DX).
fn select(a: &mut CodeAssembler, address: u32) -> Result<()> {
    a.mov(eax, address).map_err(asm_err)?;
    a.mov(dx, ADDRESS).map_err(asm_err)?;
    a.out(dx, eax).map_err(asm_err)
}

/// Leaves for `fail` with `check` in BL unless the last compare was equal.
fn expect_equal(a: &mut CodeAssembler, check: Check, fail: CodeLabel) -> Result<()> {
    a.mov(bl, check as u32).map_err(asm_err)?;
    a.jne(fail).map_err(asm_err)
}

/// Prints the byte of EDI at bit `shift` as two hex digits.
fn print_byte(a: &mut CodeAssembler, shift: u32, print_hex: CodeLabel) -> Result<()> {
    a.mov(eax, edi).map_err(asm_err)?;
    a.shr(eax, shift).map_err(asm_err)?;
    a.call(print_hex).map_err(asm_err)
}

fn main_code(m: &Messages) -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(16).map_err(asm_err)?;
    let (mut print, mut print_hex) = (a.create_label(), a.create_label());
    let (mut scan, mut absent) = (a.create_label(), a.create_label());
    let (mut fail, mut stop) = (a.create_label(), a.create_label());
    a.cli().map_err(asm_err)?;
    a.xor(ax, ax).map_err(asm_err)?;
    a.mov(ss, ax).map_err(asm_err)?;
    a.mov(sp, STACK_TOP).map_err(asm_err)?;
    // The strings are in the ROM: DS at its low mirror.
    a.mov(ax, LOW_SEGMENT).map_err(asm_err)?;
    a.mov(ds, ax).map_err(asm_err)?;

    select(&mut a, ENABLE)?;
    a.mov(dx, DATA).map_err(asm_err)?;
    a.in_(eax, dx).map_err(asm_err)?;
    a.mov(edi, eax).map_err(asm_err)?;
    a.cmp(eax, BRIDGE_ID).map_err(asm_err)?;
    expect_equal(&mut a, Check::DwordId, fail)?;
    a.mov(dx, DATA + 2).map_err(asm_err)?;
    a.in_(ax, dx).map_err(asm_err)?;
    a.cmp(ax, u32::from(HOST_BRIDGE_DEVICE)).map_err(asm_err)?;
    expect_equal(&mut a, Check::WordDevice, fail)?;
    a.mov(dx, DATA + 1).map_err(asm_err)?;
    a.in_(al, dx).map_err(asm_err)?;
    a.cmp(al, u32::from(HOST_BRIDGE_VENDOR >> 8))
        .map_err(asm_err)?;
    expect_equal(&mut a, Check::ByteVendorHigh, fail)?;
    a.mov(dx, ADDRESS).map_err(asm_err)?;
    a.in_(eax, dx).map_err(asm_err)?;
    a.cmp(eax, ENABLE).map_err(asm_err)?;
    expect_equal(&mut a, Check::Latch, fail)?;
    select(&mut a, ENABLE | 0x08)?;
    a.mov(dx, DATA).map_err(asm_err)?;
    a.in_(eax, dx).map_err(asm_err)?;
    a.shr(eax, 8).map_err(asm_err)?;
    a.cmp(eax, 0x06_00_00).map_err(asm_err)?;
    expect_equal(&mut a, Check::Class, fail)?;

    // Bus 0: ECX walks function 0 of each device, BP counts those present.
    a.xor(bp, bp).map_err(asm_err)?;
    a.mov(ecx, ENABLE).map_err(asm_err)?;
    a.set_label(&mut scan).map_err(asm_err)?;
    a.mov(eax, ecx).map_err(asm_err)?;
    a.mov(dx, ADDRESS).map_err(asm_err)?;
    a.out(dx, eax).map_err(asm_err)?;
    a.mov(dx, DATA).map_err(asm_err)?;
    a.in_(ax, dx).map_err(asm_err)?;
    a.cmp(ax, 0xffff).map_err(asm_err)?;
    a.je(absent).map_err(asm_err)?;
    a.inc(bp).map_err(asm_err)?;
    a.set_label(&mut absent).map_err(asm_err)?;
    a.add(ecx, NEXT_DEVICE).map_err(asm_err)?;
    a.cmp(ecx, ENABLE | (32 * NEXT_DEVICE)).map_err(asm_err)?;
    a.jne(scan).map_err(asm_err)?;
    a.cmp(bp, 1).map_err(asm_err)?;
    expect_equal(&mut a, Check::Scan, fail)?;

    a.mov(si, m.found as u32).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    print_byte(&mut a, 8, print_hex)?;
    print_byte(&mut a, 0, print_hex)?;
    a.mov(si, m.colon as u32).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    print_byte(&mut a, 24, print_hex)?;
    print_byte(&mut a, 16, print_hex)?;
    a.mov(si, m.alone as u32).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    exit_with(&mut a, 0)?;

    a.set_label(&mut fail).map_err(asm_err)?;
    a.mov(si, m.failed as u32).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    a.mov(dx, u32::from(DEBUG_EXIT_PORT)).map_err(asm_err)?;
    a.mov(al, bl).map_err(asm_err)?;
    a.out(dx, al).map_err(asm_err)?;
    a.set_label(&mut stop).map_err(asm_err)?;
    a.cli().map_err(asm_err)?;
    a.hlt().map_err(asm_err)?;
    a.jmp(stop).map_err(asm_err)?;

    print_routine(&mut a, &mut print)?;
    print_hex_routine(&mut a, &mut print_hex)?;
    a.assemble(MAIN as u64).map_err(asm_err)
}
