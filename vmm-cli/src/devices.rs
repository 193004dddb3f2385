//! `vmm run`'s virtio devices: `--disk`, `--net`, `--vsock`, `--rng`.
//!
//! Every device is opened before the VM is built, so that a missing
//! image, a tap that does not exist or a vsock socket in use is a clear
//! error before anything runs. They are attached over PCI in a fixed
//! order (disks, networks, vsock, entropy) at 00:01.0, 00:02.0, ...; a
//! restore (`--restore`) must be given the same devices in the same order.

use anyhow::anyhow;
use clap::Args;
use vmm_core::devices::virtio::{
    Block, BlockSpec, Net, NetSpec, Rng, VirtioDevice, Vsock, VsockSpec,
};

use crate::api::DeviceInfo;

/// The device options of `vmm run`.
#[derive(Args, Debug, Default)]
pub struct DeviceArgs {
    /// Attach a raw disk image as a virtio block device (`blk0`, `blk1`,
    /// ... in the order given; Linux sees /dev/vda, /dev/vdb, ...). `,ro`
    /// makes it read-only: the guest's writes fail with I/O errors.
    /// Repeatable.
    #[arg(long, value_name = "FILE[,ro]")]
    disk: Vec<BlockSpec>,
    /// Attach a virtio network device (`net0`, ...) on the existing tap
    /// device NAME (`ip tuntap add NAME mode tap`), with MAC address MAC
    /// (default: 52:54:00 and three bytes derived from NAME). Repeatable.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    net: Vec<NetSpec>,
    /// Attach a virtio socket device (`vsock0`) with guest context id N.
    /// The host side is the Unix socket PATH, in Firecracker's hybrid
    /// convention: a host program connects to PATH and sends
    /// `CONNECT <port>\n` to reach a guest port; the guest's connections
    /// to host port P go to the socket `PATH_P`.
    #[arg(long, value_name = "cid=N,socket=PATH")]
    vsock: Option<VsockSpec>,
    /// Attach a virtio entropy device (`rng0`) that fills the guest's
    /// requests from the host's getrandom.
    #[arg(long)]
    rng: bool,
}

/// The devices opened for one VM, and what `GET /v1/vm` says of them.
pub struct Opened {
    /// The devices, in slot order.
    pub devices: Vec<Box<dyn VirtioDevice>>,
    /// Their descriptions, in the same order.
    pub info: Vec<DeviceInfo>,
}

impl DeviceArgs {
    /// Opens every device asked for, registering their statistics in
    /// `stats` (the VM's registry).
    pub fn open(&self, stats: &stam::Registry) -> anyhow::Result<Opened> {
        let mut opened = Opened {
            devices: Vec::new(),
            info: Vec::new(),
        };
        for (i, spec) in self.disk.iter().enumerate() {
            let name = format!("blk{i}");
            let disk = Block::open(spec, &name, stats)
                .map_err(|e| anyhow!("cannot attach --disk {spec}: {e}"))?;
            opened.push(Box::new(disk), "block", spec.to_string());
        }
        for (i, spec) in self.net.iter().enumerate() {
            let name = format!("net{i}");
            let net = Net::open(spec, &name, stats)
                .map_err(|e| anyhow!("cannot attach --net {spec}: {e}"))?;
            opened.push(Box::new(net), "net", spec.to_string());
        }
        if let Some(spec) = &self.vsock {
            let vsock = Vsock::open(spec, "vsock0", stats)
                .map_err(|e| anyhow!("cannot attach --vsock {spec}: {e}"))?;
            opened.push(Box::new(vsock), "vsock", spec.to_string());
        }
        if self.rng {
            opened.push(Box::new(Rng::new("rng0")), "rng", "getrandom".into());
        }
        Ok(opened)
    }
}

impl Opened {
    fn push(&mut self, device: Box<dyn VirtioDevice>, kind: &str, backend: String) {
        let slot = self.devices.len() + 1;
        self.info.push(DeviceInfo {
            name: device.name().to_owned(),
            kind: kind.to_owned(),
            pci: format!("0000:00:{slot:02x}.0"),
            backend,
        });
        self.devices.push(device);
    }
}
