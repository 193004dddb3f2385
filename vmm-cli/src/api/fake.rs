//! A VM stand-in for the API's tests and fuzz targets: it follows the
//! running/suspended part of the VM state diagram and answers every other
//! request with fixed data, without KVM.

use std::sync::Mutex;

use super::control::{
    Action, BalloonInfo, Control, SaveResult, SaveSpec, VcpuInfo, VmConfigInfo, VmInfo,
};
use super::error::ApiError;
use super::format::StatsFormat;

/// A VM stand-in that follows the running/suspended part of the state diagram.
pub struct FakeVm {
    state: Mutex<&'static str>,
    balloon: Mutex<u64>,
    resets: Mutex<Vec<String>>,
}

impl FakeVm {
    /// A running VM with no balloon.
    pub fn new() -> Self {
        FakeVm {
            state: Mutex::new("RUNNING"),
            balloon: Mutex::new(0),
            resets: Mutex::new(Vec::new()),
        }
    }

    /// A VM in `state`, for states no request leads to from a fresh fake
    /// (`"SUSPENDED_LS"`: a teleport in progress).
    pub fn in_state(state: &'static str) -> Self {
        let vm = Self::new();
        *vm.state.lock().unwrap() = state;
        vm
    }

    /// The patterns of the statistics resets asked so far, in order.
    pub fn resets(&self) -> Vec<String> {
        self.resets.lock().unwrap().clone()
    }
}

impl Control for FakeVm {
    fn balloon(&self) -> BalloonInfo {
        BalloonInfo {
            target_mib: *self.balloon.lock().unwrap(),
            size_mib: 0,
        }
    }

    fn set_balloon(&self, mib: u64) -> BalloonInfo {
        *self.balloon.lock().unwrap() = mib;
        self.balloon()
    }

    fn vm_info(&self) -> VmInfo {
        VmInfo {
            state: (*self.state.lock().unwrap()).to_owned(),
            config: VmConfigInfo {
                ram_bytes: 1 << 20,
                cpus: 1,
                boot: "guest fake".into(),
                devices: Vec::new(),
            },
            vcpus: vec![VcpuInfo { id: 0, halts: 3 }],
            uptime_secs: 1.5,
            started_at_unix: 7,
        }
    }

    fn change_state(&self, action: Action) -> Result<String, ApiError> {
        let mut state = self.state.lock().unwrap();
        let next = match (*state, action) {
            ("RUNNING", Action::Pause) => "SUSPENDED",
            ("SUSPENDED", Action::Resume) => "RUNNING",
            (s @ ("RUNNING" | "SUSPENDED"), Action::Reset) => s,
            ("RUNNING" | "SUSPENDED", Action::PowerOff) => "OFF",
            (s, a) => return Err(ApiError::conflict(format!("{a:?} in state {s}"))),
        };
        *state = next;
        Ok(next.to_owned())
    }

    fn save(&self, spec: &SaveSpec) -> Result<SaveResult, ApiError> {
        let mut state = self.state.lock().unwrap();
        if !matches!(*state, "RUNNING" | "SUSPENDED") {
            return Err(ApiError::conflict(format!("cannot save in state {state}")));
        }
        if spec.power_off {
            *state = "OFF";
        }
        Ok(SaveResult {
            path: spec.path.clone(),
            bytes: 4096,
            live_passes: if spec.live { 3 } else { 0 },
            downtime_ms: 1.0,
            state: (*state).to_owned(),
        })
    }

    fn teleport(&self, address: &str) -> Result<SaveResult, ApiError> {
        self.save(&SaveSpec {
            path: format!("tcp://{address}"),
            live: true,
            power_off: true,
        })
    }

    fn cancel_teleport(&self) -> Result<String, ApiError> {
        let mut state = self.state.lock().unwrap();
        if !matches!(*state, "RUNNING_LS" | "SUSPENDED_LS") {
            return Err(ApiError::conflict("no teleport is in progress"));
        }
        *state = "RUNNING";
        Ok((*state).to_owned())
    }

    fn stats(&self, pattern: &str, format: StatsFormat) -> Result<String, ApiError> {
        Ok(format!("{}:{pattern}", format.name()))
    }

    /// Records `pattern`; the count is the number of resets so far.
    fn reset_stats(&self, pattern: &str) -> usize {
        let mut resets = self.resets.lock().unwrap();
        resets.push(pattern.to_owned());
        resets.len()
    }

    fn run_info(&self, name: &str, args: &str) -> Result<String, ApiError> {
        match name {
            "help" => Ok("fflags\n".into()),
            "fflags" => Ok(format!("flags {args}\n")),
            _ => Err(ApiError::not_found(format!(
                "unknown info handler {name:?}"
            ))),
        }
    }

    fn info_names(&self) -> Vec<String> {
        vec!["fflags".into()]
    }
}

impl Default for FakeVm {
    fn default() -> Self {
        Self::new()
    }
}
