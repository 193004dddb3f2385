//! Teleports to peers that misbehave: a target that takes no data, one that
//! takes the state but never confirms it, a source that stalls or never
//! hands the VM over. Every wait ends within its timeout, a teleport can
//! be cancelled (or the VM powered off) while it waits, and the source VM
//! runs on as before, ready to teleport again.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::Capture;
use hm_vmx::testing::kvm_available;
use vm_memory::{Bytes, GuestAddress};
use vmm_core::saved_state::{AfterSave, SaveRequest, TeleportError, TeleportOptions};
use vmm_core::sync::vmstate::VmState;
use vmm_core::{Error, RunOutcome, Vm, VmConfig, VmHandle, guests};

/// Short enough for a test, long enough for a slow host to send a few MB.
const SHORT_STALL: Duration = Duration::from_secs(2);
/// How long anything that should be prompt may take here.
const PROMPT: Duration = Duration::from_secs(10);
/// Guest RAM filled with incompressible data, so that a live save has far
/// more to send than loopback's socket buffers hold.
const NOISE: usize = 40 << 20;
const NOISE_AT: u64 = 8 << 20;

struct RunningIdle {
    handle: VmHandle,
    serial: Capture,
    run: JoinHandle<vmm_core::Result<RunOutcome>>,
}

impl RunningIdle {
    /// The idle guest in `ram` bytes, with [`NOISE`] in its RAM if asked,
    /// running and past its first heartbeat.
    fn start(ram: u64, noise: bool) -> Self {
        let serial = Capture::default();
        let mut config = VmConfig::new(ram, guests::find("idle").unwrap().firmware().unwrap());
        config.serial = Box::new(serial.clone());
        let mut vm = Vm::new(config).expect("VM builds");
        if noise {
            vm.memory()
                .ram()
                .write_slice(
                    &common::noise_bytes(NOISE, 0x9e37_79b9_7f4a_7c15),
                    GuestAddress(NOISE_AT),
                )
                .unwrap();
        }
        let handle = vm.handle();
        let run = std::thread::spawn(move || vm.run());
        let idle = RunningIdle {
            handle,
            serial,
            run,
        };
        idle.wait_for_heartbeats(1);
        idle
    }

    fn heartbeats(&self) -> usize {
        self.serial.text().matches("heartbeat").count()
    }

    /// Waits until the guest printed `n` heartbeats in all.
    fn wait_for_heartbeats(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.heartbeats() < n {
            assert!(
                Instant::now() < deadline,
                "no heartbeat {n}; serial output:\n{}",
                self.serial.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The guest is running and makes progress.
    fn assert_runs_on(&self) {
        assert_eq!(self.handle.state(), VmState::Running);
        self.wait_for_heartbeats(self.heartbeats() + 2);
    }

    /// Teleports to `address` on a thread of its own.
    fn teleport_in_background(
        &self,
        address: String,
        options: TeleportOptions,
    ) -> JoinHandle<vmm_core::Result<vmm_core::saved_state::SaveReport>> {
        let handle = self.handle.clone();
        std::thread::spawn(move || handle.teleport_with(&address, &options))
    }

    fn wait_for_state(&self, state: VmState) {
        let reached = self
            .handle
            .state_machine()
            .wait_for(|s| s == state, Some(Duration::from_secs(30)));
        assert_eq!(reached, Ok(state), "{}", self.serial.text());
    }

    fn power_off(self) {
        self.handle.power_off().expect("power off");
        assert_eq!(self.run.join().unwrap().unwrap(), RunOutcome::PoweredOff);
    }
}

/// A teleport target that accepts one connection and, as `behave` says,
/// reads nothing or reads everything; it never answers. It holds the
/// connection until dropped.
struct BadTarget {
    address: String,
    release: mpsc::Sender<()>,
}

#[derive(Clone, Copy)]
enum Behave {
    TakesNothing,
    NeverConfirms,
}

impl BadTarget {
    fn start(behave: Behave) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (release, released) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            if let Behave::NeverConfirms = behave {
                stream
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let mut buf = vec![0u8; 1 << 20];
                // Reads until the source goes or the test ends.
                loop {
                    if let Ok(0) = stream.read(&mut buf) {
                        break;
                    }
                    if released.try_recv() != Err(mpsc::TryRecvError::Empty) {
                        return;
                    }
                }
            }
            let _ = released.recv_timeout(Duration::from_secs(120));
        });
        BadTarget { address, release }
    }
}

impl Drop for BadTarget {
    fn drop(&mut self) {
        let _ = self.release.send(());
    }
}

fn stall_options(stall: Duration) -> TeleportOptions {
    TeleportOptions {
        stall_timeout: stall,
        ..TeleportOptions::default()
    }
}

#[test]
fn a_target_that_takes_no_data_fails_the_teleport_and_the_vm_runs_on() {
    if !kvm_available("a_target_that_takes_no_data_fails_the_teleport_and_the_vm_runs_on") {
        return;
    }
    let vm = RunningIdle::start(64 << 20, true);
    let target = BadTarget::start(Behave::TakesNothing);
    let start = Instant::now();
    let result = vm
        .handle
        .teleport_with(&target.address, &stall_options(SHORT_STALL));
    let took = start.elapsed();
    match result {
        Err(Error::Teleport(TeleportError::TargetStalled { timeout })) => {
            assert_eq!(timeout, SHORT_STALL);
        }
        other => panic!("not a stall: {other:?}"),
    }
    assert!(took < SHORT_STALL + PROMPT, "took {took:?}");
    // The sender really waited on the target: most of the noise never left.
    let written = common::stat(&vm.handle, "/SSM/Save/cbWritten");
    assert!(written < NOISE as u64, "{written} bytes went out");
    vm.assert_runs_on();
    vm.power_off();
}

#[test]
fn a_target_that_never_confirms_fails_the_teleport_and_the_vm_runs_on() {
    if !kvm_available("a_target_that_never_confirms_fails_the_teleport_and_the_vm_runs_on") {
        return;
    }
    let vm = RunningIdle::start(16 << 20, false);
    let target = BadTarget::start(Behave::NeverConfirms);
    let start = Instant::now();
    let result = vm
        .handle
        .teleport_with(&target.address, &stall_options(SHORT_STALL));
    let took = start.elapsed();
    assert!(
        matches!(
            result,
            Err(Error::Teleport(TeleportError::TargetStalled { .. }))
        ),
        "{result:?}"
    );
    assert!(took < SHORT_STALL + PROMPT, "took {took:?}");
    vm.assert_runs_on();
    vm.power_off();
}

#[test]
fn a_cancelled_teleport_resumes_the_vm_which_can_teleport_again() {
    if !kvm_available("a_cancelled_teleport_resumes_the_vm_which_can_teleport_again") {
        return;
    }
    let vm = RunningIdle::start(16 << 20, false);
    let stalled = BadTarget::start(Behave::TakesNothing);
    // The default stall timeout (30 s): only the cancel ends this soon.
    let teleport = vm.teleport_in_background(stalled.address.clone(), TeleportOptions::default());
    // The state fits in the socket buffers: the source waits, stopped,
    // for a confirmation that never comes.
    vm.wait_for_state(VmState::SuspendedLs);
    let refused = vm.handle.pause();
    assert!(
        matches!(refused, Err(Error::Teleport(TeleportError::InProgress))),
        "{refused:?}"
    );
    let start = Instant::now();
    vm.handle.cancel_teleport().expect("cancel");
    assert!(
        start.elapsed() < PROMPT,
        "cancel took {:?}",
        start.elapsed()
    );
    assert_eq!(vm.handle.state(), VmState::Running);
    let result = teleport.join().unwrap();
    assert!(
        matches!(result, Err(Error::Teleport(TeleportError::Cancelled))),
        "{result:?}"
    );
    let again = vm.handle.cancel_teleport();
    assert!(
        matches!(again, Err(Error::Teleport(TeleportError::NotInProgress))),
        "{again:?}"
    );
    vm.assert_runs_on();

    // Intact: it teleports to a real target, where it runs on.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let target_serial = Capture::default();
    let mut config = VmConfig::new(16 << 20, guests::find("idle").unwrap().firmware().unwrap());
    config.serial = Box::new(target_serial.clone());
    let (handles, handle_rx) = mpsc::channel();
    let target = std::thread::spawn(move || {
        let mut vm = Vm::incoming(config, &listener)?;
        handles.send(vm.handle()).unwrap();
        vm.run()
    });
    vm.handle.teleport(&address).expect("second teleport");
    assert_eq!(vm.run.join().unwrap().unwrap(), RunOutcome::PoweredOff);
    let moved = handle_rx.recv_timeout(PROMPT).expect("target VM");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !target_serial.text().contains("heartbeat") {
        assert!(Instant::now() < deadline, "{}", target_serial.text());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!target_serial.text().contains("started"));
    moved.power_off().unwrap();
    assert_eq!(target.join().unwrap().unwrap(), RunOutcome::PoweredOff);
}

#[test]
fn power_off_during_a_stalled_teleport_cancels_it_and_powers_off() {
    if !kvm_available("power_off_during_a_stalled_teleport_cancels_it_and_powers_off") {
        return;
    }
    let vm = RunningIdle::start(64 << 20, true);
    let stalled = BadTarget::start(Behave::TakesNothing);
    let teleport = vm.teleport_in_background(stalled.address.clone(), TeleportOptions::default());
    // Sending the noise, with the guest running, until the target's
    // buffers are full.
    vm.wait_for_state(VmState::RunningLs);
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    vm.handle
        .power_off()
        .expect("power off during the teleport");
    assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
    let result = teleport.join().unwrap();
    assert!(
        matches!(result, Err(Error::Teleport(TeleportError::Cancelled))),
        "{result:?}"
    );
    assert_eq!(vm.run.join().unwrap().unwrap(), RunOutcome::PoweredOff);
}

fn idle_config() -> VmConfig {
    let mut config = VmConfig::new(16 << 20, guests::find("idle").unwrap().firmware().unwrap());
    config.serial = Box::new(std::io::sink());
    config
}

#[test]
fn a_source_that_connects_and_stalls_fails_the_incoming_vm() {
    if !kvm_available("a_source_that_connects_and_stalls_fails_the_incoming_vm") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let source = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let start = Instant::now();
    let result = Vm::incoming_with(idle_config(), &listener, &stall_options(SHORT_STALL));
    assert!(start.elapsed() < SHORT_STALL + PROMPT);
    match result {
        Err(Error::Teleport(TeleportError::SourceStalled { .. })) => {}
        Err(other) => panic!("not a stall: {other}"),
        Ok(_) => panic!("a VM came out of nothing"),
    }
    drop(source);
}

#[test]
fn a_target_runs_the_vm_only_once_the_source_hands_it_over() {
    if !kvm_available("a_target_runs_the_vm_only_once_the_source_hands_it_over") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idle.sav");
    let vm = RunningIdle::start(16 << 20, false);
    let request = SaveRequest {
        live: false,
        then: AfterSave::PowerOff,
    };
    vm.handle.save(&path, request).expect("save");
    assert_eq!(vm.run.join().unwrap().unwrap(), RunOutcome::PoweredOff);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let target = std::thread::spawn(move || {
        Vm::incoming_with(idle_config(), &listener, &stall_options(SHORT_STALL))
            .map(|vm| vm.handle().state())
    });
    // A source that sends the state, takes the confirmation, and goes
    // without handing the VM over (it was cancelled, say).
    let mut source = TcpStream::connect(address).unwrap();
    source.set_read_timeout(Some(PROMPT)).unwrap();
    source.write_all(&std::fs::read(&path).unwrap()).unwrap();
    let mut ack = [0u8; 1];
    source.read_exact(&mut ack).expect("the target confirms");
    drop(source);
    match target.join().unwrap() {
        Err(Error::Teleport(TeleportError::NotReceived(_))) => {}
        Err(other) => panic!("wrong error: {other}"),
        Ok(state) => panic!("the target would run a VM never handed over ({state:?})"),
    }
}
