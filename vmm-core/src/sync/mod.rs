//! The EMT synchronisation layer: how the threads of a VM agree, without
//! knowing anything of KVM, devices or guests.
//!
//! * [`ffs`]: forced-action flags, per VM and per vCPU, and the protocol
//!   that gets every flag to its EMT promptly (kicks out of the guest);
//! * [`halt`]: the wait/wake primitive a halted or waiting EMT sleeps on;
//! * [`request`]: requests queued to one EMT or any, run between exits;
//! * [`rendezvous`]: all EMTs running one callback together (once, in
//!   order, or all at once), as a save or a debugger stop needs;
//! * [`vmstate`]: the VM's state machine (VirtualBox's `VMSTATE` order)
//!   with its legal transitions.
//!
//! The EMTs (one per vCPU, started by [`crate::Vm::run`]) serve
//! these between guest exits; control threads use them through
//! [`VmHandle`](crate::VmHandle).

pub mod ffs;
pub mod halt;
pub mod rendezvous;
pub mod request;
pub mod vmstate;
