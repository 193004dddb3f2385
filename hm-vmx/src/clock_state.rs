//! The VM's paravirtual clock (kvmclock): the guest's monotonic time base.

use kvm_bindings::kvm_clock_data;

use crate::error::{Error, Result, ioctl};
use crate::vm::Vm;

/// The time a VM's kvmclock shows, in nanoseconds.
///
/// Linux under KVM keeps its monotonic time on kvmclock. A new VM's clock
/// starts near zero, so a restored guest that is not given its clock back
/// sees time run backwards and waits, timer by timer, until the new clock
/// has caught up with the timers it armed before the save. Saving the
/// clock with the VM stopped and setting it in the new VM before it runs
/// lets the guest's time go on where it stopped (the time the VM spent
/// saved does not pass for it, as with QEMU's migration).
///
/// ```no_run
/// let hv = hm_vmx::Hypervisor::open()?;
/// let vm = hv.create_vm()?;
/// let clock = hm_vmx::ClockState::read(&vm)?;
/// hm_vmx::ClockState::decode(&clock.encode())?.write(&vm)?;
/// # Ok::<(), hm_vmx::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockState {
    /// kvmclock's time in nanoseconds.
    pub nanoseconds: u64,
}

impl ClockState {
    /// Reads the VM's clock (`KVM_GET_CLOCK`).
    pub fn read(vm: &Vm) -> Result<ClockState> {
        let data = vm.fd().get_clock().map_err(ioctl("KVM_GET_CLOCK"))?;
        Ok(ClockState {
            nanoseconds: data.clock,
        })
    }

    /// Sets the VM's clock to this time (`KVM_SET_CLOCK`); it runs on from
    /// there.
    pub fn write(&self, vm: &Vm) -> Result<()> {
        let data = kvm_clock_data {
            clock: self.nanoseconds,
            ..Default::default()
        };
        vm.fd().set_clock(&data).map_err(ioctl("KVM_SET_CLOCK"))
    }

    /// Encodes the clock as 8 little-endian bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.nanoseconds.to_le_bytes().to_vec()
    }

    /// Decodes what [`encode`](ClockState::encode) wrote.
    pub fn decode(bytes: &[u8]) -> Result<ClockState> {
        let bytes: [u8; 8] = bytes.try_into().map_err(|_| {
            Error::BadCpuState(format!(
                "a clock state is 8 bytes, this one {}",
                bytes.len()
            ))
        })?;
        Ok(ClockState {
            nanoseconds: u64::from_le_bytes(bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoding_round_trips_and_rejects_other_lengths() {
        let clock = ClockState {
            nanoseconds: 0x0123_4567_89ab_cdef,
        };
        assert_eq!(ClockState::decode(&clock.encode()).unwrap(), clock);
        assert!(ClockState::decode(&[0; 7]).is_err());
        assert!(ClockState::decode(&[0; 9]).is_err());
    }
}
