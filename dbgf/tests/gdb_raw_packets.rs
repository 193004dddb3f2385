//! The gdb stub against a hand-written client over TCP and the in-memory target:
//! oversized memory reads, bad checksums, one session after another, cancellation.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use dbgf::debugger::{DebugTarget, Debugger, MemTarget, stop_channel};
use dbgf::gdb::testing::GdbClient;
use dbgf::gdb::{GdbCancel, GdbListener, GdbServerError, GdbSession, MAX_MEM_READ, SessionEnd};

/// `jmp $`: the VM runs until halted.
const SPIN: &[u8] = &[0xeb, 0xfe];
/// `hlt`: the fake machine powers off.
const HLT: &[u8] = &[0xf4];
const CODE: u64 = 0x1000;
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A stub serving one gdb after another, on its own thread.
struct Stub {
    addr: SocketAddr,
    cancel: GdbCancel,
    ends: Arc<Mutex<Vec<String>>>,
    thread: thread::JoinHandle<Result<SessionEnd, GdbServerError>>,
}

impl Stub {
    /// Serves a one-vCPU VM running `code` at [`CODE`].
    fn start(code: &[u8]) -> Self {
        let (tx, rx) = stop_channel();
        let mut vm = MemTarget::new(1, 0x10000, tx);
        vm.write_phys(CODE, code).unwrap();
        let mut regs = vm.read_regs(0).unwrap();
        regs.rip = CODE;
        vm.write_regs(0, &regs).unwrap();
        let listener = GdbListener::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = GdbCancel::new();
        let ends = Arc::new(Mutex::new(Vec::new()));
        let (stop, seen) = (cancel.clone(), Arc::clone(&ends));
        let thread = thread::spawn(move || {
            let first = listener.accept(&stop)?;
            let mut session = GdbSession::new(vm, Debugger::new(), rx);
            session.serve(&listener, first, &stop, |end| {
                seen.lock().unwrap().push(format!("{end:?}"));
            })
        });
        Stub {
            addr,
            cancel,
            ends,
            thread,
        }
    }

    /// How each session ended, so far.
    fn ends(&self) -> Vec<String> {
        self.ends.lock().unwrap().clone()
    }

    /// Waits (bounded) for the stub's thread.
    fn join(self) -> (Result<SessionEnd, GdbServerError>, Vec<String>) {
        let start = Instant::now();
        while !self.thread.is_finished() {
            assert!(
                start.elapsed() < REPLY_TIMEOUT,
                "the stub did not end; sessions so far: {:?}",
                self.ends()
            );
            thread::sleep(Duration::from_millis(10));
        }
        let ends = self.ends();
        (self.thread.join().unwrap(), ends)
    }
}

fn client(addr: SocketAddr) -> Client {
    Client(GdbClient::connect(addr, REPLY_TIMEOUT).unwrap())
}

/// [`GdbClient`] with every failure a test failure.
struct Client(GdbClient);

impl Client {
    fn send_raw(&mut self, bytes: &[u8]) {
        self.0.send_raw(bytes).unwrap();
    }

    fn expect(&mut self, want: u8) {
        self.0.expect(want).unwrap();
    }

    fn reply(&mut self) -> String {
        self.0.reply().unwrap()
    }

    fn ask(&mut self, body: &str) -> String {
        self.0.ask(body).unwrap()
    }

    fn tell(&mut self, body: &str) {
        self.0.tell(body).unwrap();
    }
}

#[test]
fn a_huge_memory_read_gets_one_bounded_reply() {
    let stub = Stub::start(SPIN);
    let mut gdb = client(stub.addr);
    let reply = gdb.ask("m0,ffffffffffffffff");
    assert_eq!(reply.len() as u64, 2 * MAX_MEM_READ, "a short read, in hex");
    assert!(reply.chars().all(|c| c.is_ascii_hexdigit()), "{reply}");
    let reply = gdb.ask(&format!("m{:x},ffffffffffffffff", CODE - 0x10));
    assert_eq!(reply.len() as u64, 2 * MAX_MEM_READ);
    assert_eq!(&reply[0x20..0x24], "ebfe");
    // Unmapped, and at the very end of the address space: an error reply.
    assert!(gdb.ask("mffffffffffffff00,200").starts_with('E'));
    assert_eq!(gdb.ask("mnonsense"), "E16");
    assert_eq!(gdb.ask(&format!("m{CODE:x},2")), "ebfe");
    gdb.tell("k");
    assert_eq!(stub.join().0.unwrap(), SessionEnd::Killed);
}

#[test]
fn a_bad_checksum_is_nakked_and_the_session_goes_on() {
    let stub = Stub::start(SPIN);
    let mut gdb = client(stub.addr);
    gdb.send_raw(b"$m1000,2#00");
    gdb.expect(b'-');
    gdb.send_raw(b"noise$m10");
    gdb.send_raw(b"00,2#zz");
    gdb.expect(b'-');
    assert_eq!(gdb.ask("m1000,2"), "ebfe");
    gdb.tell("k");
    let (end, ends) = stub.join();
    assert_eq!(end.unwrap(), SessionEnd::Killed);
    assert_eq!(ends, ["Ok(Killed)"]);
}

#[test]
fn gdb_sessions_follow_one_another() {
    let stub = Stub::start(SPIN);
    // The first gdb lets the VM run and detaches.
    let mut gdb = client(stub.addr);
    assert_eq!(gdb.ask("m1000,2"), "ebfe");
    gdb.tell("vCont;c");
    gdb.send_raw(b"\x03");
    assert!(gdb.reply().starts_with('T'), "a stop reply");
    assert_eq!(gdb.ask("D"), "OK");
    drop(gdb);
    // The next one finds the VM halted, reads memory and hangs up without a word.
    let mut gdb = client(stub.addr);
    assert!(gdb.ask("?").starts_with('T'));
    assert_eq!(gdb.ask("m1000,2"), "ebfe");
    drop(gdb);
    // And the third kills the VM.
    let mut gdb = client(stub.addr);
    assert_eq!(gdb.ask("m1000,2"), "ebfe");
    gdb.tell("k");
    let (end, ends) = stub.join();
    assert_eq!(end.unwrap(), SessionEnd::Killed);
    assert_eq!(ends.len(), 3, "{ends:?}");
    assert_eq!(ends[0], "Ok(Detached)");
    assert!(ends[1].contains("closed the connection"), "{ends:?}");
    assert_eq!(ends[2], "Ok(Killed)");
}

#[test]
fn the_vm_powering_off_between_sessions_ends_the_stub() {
    let stub = Stub::start(HLT);
    let mut gdb = client(stub.addr);
    assert_eq!(gdb.ask("D"), "OK");
    let (end, ends) = stub.join();
    assert_eq!(end.unwrap(), SessionEnd::PoweredOff);
    assert_eq!(ends, ["Ok(Detached)"]);
}

#[test]
fn cancelling_ends_the_stub_under_an_idle_gdb_and_between_sessions() {
    // gdb connected, the VM halted, nobody says a word.
    let stub = Stub::start(SPIN);
    let mut gdb = client(stub.addr);
    assert!(gdb.ask("?").starts_with('T'));
    stub.cancel.cancel();
    let (end, ends) = stub.join();
    assert_eq!(end.unwrap(), SessionEnd::PoweredOff);
    assert!(ends[0].contains("stopped"), "{ends:?}");

    // Waiting for the next gdb while the VM runs.
    let stub = Stub::start(SPIN);
    let mut gdb = client(stub.addr);
    assert_eq!(gdb.ask("D"), "OK");
    let start = Instant::now();
    while stub.ends().is_empty() {
        assert!(start.elapsed() < REPLY_TIMEOUT);
        thread::sleep(Duration::from_millis(10));
    }
    stub.cancel.cancel();
    assert_eq!(stub.join().0.unwrap(), SessionEnd::PoweredOff);

    // Waiting for the first gdb.
    let stub = Stub::start(SPIN);
    stub.cancel.cancel();
    assert!(matches!(stub.join().0, Err(GdbServerError::Cancelled)));
}
