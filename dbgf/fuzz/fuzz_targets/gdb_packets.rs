//! Fuzz the gdb stub: arbitrary bytes from the client side of a connection, served
//! by a session over the in-memory target, must end the session with a result (a
//! disconnect, an error), never a panic, a hang or an unbounded reply.

#![no_main]

use dbgf::debugger::{DebugTarget, Debugger, MemTarget, stop_channel};
use dbgf::gdb::GdbSession;
use dbgf::gdb::testing::ScriptedConnection;
use libfuzzer_sys::fuzz_target;

/// Output allowed per input byte: a packet of a few bytes may ask for a full reply
/// (a memory read, the registers, the target description, monitor text).
const OUTPUT_PER_BYTE: usize = 16 << 10;

/// `mov eax, [0x800]`; `out 0x80, al`; 4 x `nop`; `hlt` (the fake machine powers off).
const PROGRAM: &[u8] = &[
    0x8b, 0x04, 0x25, 0x00, 0x08, 0x00, 0x00, 0xe6, 0x80, 0x90, 0x90, 0x90, 0x90, 0xf4,
];

fuzz_target!(|data: &[u8]| {
    let (tx, rx) = stop_channel();
    let mut vm = MemTarget::new(2, 0x2000, tx);
    vm.write_phys(0x100, PROGRAM).unwrap();
    for cpu in 0..2 {
        let mut regs = vm.read_regs(cpu).unwrap();
        regs.rip = 0x100;
        vm.write_regs(cpu, &regs).unwrap();
    }
    let dbg = Debugger::new();
    vm.set_io_watch(dbg.io_watch());
    vm.set_mem_watch(dbg.mem_watch());
    let mut session = GdbSession::new(vm, dbg, rx);
    let limit = (data.len() + 1) * OUTPUT_PER_BYTE;
    let mut conn = ScriptedConnection::with_limit(data, limit);
    // Any end is fine (the script runs out: a closed connection); a panic is not.
    let _ = session.run(&mut conn);
    assert!(
        !conn.overflowed(),
        "{} input bytes got more than {limit} bytes of replies",
        data.len()
    );
});
