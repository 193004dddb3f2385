//! What the API asks of a VM, as a trait (so the routes can be tested
//! without KVM), and its implementation on a running VM's [`VmHandle`].

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use stam::Value;
use vmm_core::VmHandle;
use vmm_core::saved_state::{AfterSave, SaveRequest};

use super::error::ApiError;
use super::format::StatsFormat;

/// A state change the API can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Suspend the VM.
    Pause,
    /// Resume a suspended VM.
    Resume,
    /// Reset the VM (it stays suspended if it was).
    Reset,
    /// Power the VM off; `vmm run` then exits.
    PowerOff,
}

impl Action {
    /// The action in words (`pause`, `power off`, ...).
    pub fn verb(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Reset => "reset",
            Action::PowerOff => "power off",
        }
    }
}

/// The VM's configuration, as `GET /v1/vm` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfigInfo {
    /// Guest RAM in bytes.
    pub ram_bytes: u64,
    /// Number of vCPUs.
    pub cpus: u32,
    /// What the VM boots: `guest NAME` (embedded), `firmware FILE` or
    /// `kernel FILE`.
    pub boot: String,
    /// The virtio devices, in PCI slot order.
    #[serde(default)]
    pub devices: Vec<DeviceInfo>,
}

/// A virtio device as `GET /v1/vm` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Its name (`blk0`, `net0`, `vsock0`, `rng0`): statistics are under
    /// `/Devices/<name>/`.
    pub name: String,
    /// `block`, `net`, `vsock` or `rng`.
    pub kind: String,
    /// Its PCI address (`0000:00:01.0`).
    pub pci: String,
    /// What backs it on the host, as `vmm run` was given it (`disk.img,ro`,
    /// `tap=tap0,mac=...`, `cid=3,socket=...`, `getrandom`).
    pub backend: String,
}

/// One vCPU as `GET /v1/vm` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuInfo {
    /// The vCPU id.
    pub id: u32,
    /// HLT exits handled so far (`/VMM/CPU<id>/Halts`).
    pub halts: u64,
}

/// The answer of `GET /v1/vm`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The VM state (VirtualBox's name: `RUNNING`, `SUSPENDED`, ...).
    pub state: String,
    /// The configuration.
    pub config: VmConfigInfo,
    /// The vCPUs.
    pub vcpus: Vec<VcpuInfo>,
    /// Seconds since the VM was powered on.
    pub uptime_secs: f64,
    /// When the VM was powered on, in seconds since the Unix epoch.
    pub started_at_unix: u64,
}

/// A save request: where to, live or not, and what happens afterwards.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SaveSpec {
    /// Where the VMM writes the saved state (absolute path).
    pub path: String,
    /// Keep the guest running while memory is sent in passes.
    #[serde(default)]
    pub live: bool,
    /// Power the VM off after the save instead of resuming it.
    #[serde(default)]
    pub power_off: bool,
}

/// What a save did, as `PUT /v1/vm/save` answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaveResult {
    /// The file written.
    pub path: String,
    /// Bytes written.
    pub bytes: u64,
    /// Live passes before the VM stopped (0 for a plain save).
    pub live_passes: u32,
    /// How long the guest was stopped, in milliseconds.
    pub downtime_ms: f64,
    /// The VM state afterwards.
    pub state: String,
}

/// The memory balloon, as `GET`/`PUT /v1/balloon` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BalloonInfo {
    /// The balloon size asked of the guest, MiB.
    pub target_mib: u64,
    /// What the guest has given so far, MiB (rounded down).
    pub size_mib: u64,
}

/// What the API needs from a VM.
pub trait Control: Send + Sync + 'static {
    /// State, configuration, vCPUs and uptime.
    fn vm_info(&self) -> VmInfo;
    /// Carries out `action` and returns the state afterwards.
    fn change_state(&self, action: Action) -> Result<String, ApiError>;
    /// Saves the VM's state.
    fn save(&self, spec: &SaveSpec) -> Result<SaveResult, ApiError>;
    /// Teleports the VM to the target at `address` (host:port).
    fn teleport(&self, address: &str) -> Result<SaveResult, ApiError>;
    /// Cancels the teleport in progress; returns the state afterwards (the
    /// VM runs on).
    fn cancel_teleport(&self) -> Result<String, ApiError>;
    /// The statistics matching `pattern`, rendered in `format`.
    fn stats(&self, pattern: &str, format: StatsFormat) -> Result<String, ApiError>;
    /// Resets the resettable statistics matching `pattern` (everything when
    /// empty), as `VBoxManage debugvm statistics --reset`; returns how many.
    fn reset_stats(&self, pattern: &str) -> usize;
    /// Runs info handler `name` (or `help`) with `args`.
    fn run_info(&self, name: &str, args: &str) -> Result<String, ApiError>;
    /// The names of the registered info handlers.
    fn info_names(&self) -> Vec<String>;
    /// The memory balloon's target and size.
    fn balloon(&self) -> BalloonInfo;
    /// Asks the guest for a balloon of `mib` MiB.
    fn set_balloon(&self, mib: u64) -> BalloonInfo;
}

/// A running VM behind the API.
pub struct VmControl {
    handle: VmHandle,
    config: VmConfigInfo,
    started: Instant,
    started_at_unix: u64,
}

impl VmControl {
    /// Wraps `handle`; `config` is what the VM was built with. The uptime
    /// counts from now: create it right before powering the VM on.
    pub fn new(handle: VmHandle, config: VmConfigInfo) -> Self {
        let started_at_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        VmControl {
            handle,
            config,
            started: Instant::now(),
            started_at_unix,
        }
    }

    fn halts(&self, cpu: u32) -> u64 {
        let name = format!("/VMM/CPU{cpu}/Halts");
        let snapshot = self.handle.stats().snapshot(&name);
        match snapshot.get(&name).map(|s| &s.value) {
            Some(Value::Counter { value }) => *value,
            _ => 0,
        }
    }
}

impl Control for VmControl {
    fn vm_info(&self) -> VmInfo {
        VmInfo {
            state: self.handle.state().name().to_owned(),
            config: self.config.clone(),
            vcpus: (0..self.config.cpus)
                .map(|id| VcpuInfo {
                    id,
                    halts: self.halts(id),
                })
                .collect(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            started_at_unix: self.started_at_unix,
        }
    }

    fn change_state(&self, action: Action) -> Result<String, ApiError> {
        match action {
            Action::Pause => self.handle.pause(),
            Action::Resume => self.handle.resume(),
            Action::Reset => self.handle.reset(),
            Action::PowerOff => self.handle.power_off(),
        }
        .map_err(|e| ApiError::from(e).in_context(&format!("cannot {}", action.verb())))?;
        Ok(self.handle.state().name().to_owned())
    }

    fn save(&self, spec: &SaveSpec) -> Result<SaveResult, ApiError> {
        let path = std::path::Path::new(&spec.path);
        if !path.is_absolute() {
            return Err(ApiError::bad_request(format!(
                "save path {:?} must be absolute (the VMM's working directory is not the client's)",
                spec.path
            )));
        }
        let request = SaveRequest {
            live: spec.live,
            then: if spec.power_off {
                AfterSave::PowerOff
            } else {
                AfterSave::Resume
            },
        };
        let report = self
            .handle
            .save(path, request)
            .map_err(|e| ApiError::from(e).in_context(&format!("cannot save to {}", spec.path)))?;
        Ok(SaveResult {
            path: spec.path.clone(),
            bytes: report.bytes,
            live_passes: report.live_passes,
            downtime_ms: report.downtime.as_secs_f64() * 1000.0,
            state: self.handle.state().name().to_owned(),
        })
    }

    fn balloon(&self) -> BalloonInfo {
        let (target, size) = self.handle.balloon();
        BalloonInfo {
            target_mib: target >> 20,
            size_mib: size >> 20,
        }
    }

    fn set_balloon(&self, mib: u64) -> BalloonInfo {
        self.handle.set_balloon(mib.saturating_mul(1 << 20));
        self.balloon()
    }

    fn teleport(&self, address: &str) -> Result<SaveResult, ApiError> {
        let report = self
            .handle
            .teleport(address)
            .map_err(|e| ApiError::from(e).in_context(&format!("cannot teleport to {address}")))?;
        Ok(SaveResult {
            path: format!("tcp://{address}"),
            bytes: report.bytes,
            live_passes: report.live_passes,
            downtime_ms: report.downtime.as_secs_f64() * 1000.0,
            state: self.handle.state().name().to_owned(),
        })
    }

    fn cancel_teleport(&self) -> Result<String, ApiError> {
        self.handle
            .cancel_teleport()
            .map_err(|e| ApiError::from(e).in_context("cannot cancel the teleport"))?;
        Ok(self.handle.state().name().to_owned())
    }

    fn stats(&self, pattern: &str, format: StatsFormat) -> Result<String, ApiError> {
        let snapshot = self.handle.stats().snapshot(pattern);
        format
            .render(&snapshot)
            .map_err(|e| ApiError::internal(format!("cannot render statistics: {e:#}")))
    }

    fn reset_stats(&self, pattern: &str) -> usize {
        self.handle.stats().reset(pattern)
    }

    fn run_info(&self, name: &str, args: &str) -> Result<String, ApiError> {
        let mut out = String::new();
        self.handle.run_info(name, args, &mut out)?;
        Ok(out)
    }

    fn info_names(&self) -> Vec<String> {
        self.handle.info().names()
    }
}
