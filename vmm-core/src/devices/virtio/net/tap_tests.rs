//! The network device on a real tap: UDP between the host's stack and
//! frames the test builds and reads in the guest's rings. Needs root and
//! `/dev/net/tun` (missing ones fail the test; they are not skipped).

use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Net, NetSpec, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::testing::{Recorder, Ring, guest_ram};
use crate::devices::virtio::{Activation, VirtioDevice};

/// A tap made with `ip tuntap add`, deleted when dropped.
struct TestTap(String);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestTap {
    fn create(name: &str) -> TestTap {
        let _ = Command::new("ip").args(["link", "del", name]).output();
        ip(&["tuntap", "add", name, "mode", "tap"]);
        let tap = TestTap(name.to_owned());
        // No IPv6 chatter (router solicitations) in the guest's rings.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        tap
    }
}

impl Drop for TestTap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A virtio-net header and an Ethernet/IPv4/UDP frame (UDP checksum 0).
fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn tap_mac(name: &str) -> [u8; 6] {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).unwrap();
    let mac: super::MacAddress = text.trim().parse().unwrap();
    mac.octets()
}

/// A tap `prefix<pid>` that is up, the host at `10.<net>.<subnet>.1` on
/// it, and a device on it whose guest is `.2` (with a static neighbour
/// entry: no ARP).
struct Link {
    _tap: TestTap,
    name: String,
    host_ip: Ipv4Addr,
    guest_ip: Ipv4Addr,
    spec: NetSpec,
    net: Net,
}

fn link(prefix: &str, net: u8) -> Link {
    let name = format!("{prefix}{}", std::process::id() % 100_000);
    let tap = TestTap::create(&name);
    let subnet = 1 + (std::process::id() % 250) as u8;
    let host_ip = Ipv4Addr::new(10, net, subnet, 1);
    let guest_ip = Ipv4Addr::new(10, net, subnet, 2);
    let spec: NetSpec = format!("tap={name},mac=52:54:00:12:34:56").parse().unwrap();
    let device = Net::open(&spec, "net0", &stam::Registry::new()).unwrap();
    ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &name]);
    ip(&["link", "set", &name, "up"]);
    let guest = guest_ip.to_string();
    let mac = spec.mac.to_string();
    ip(&["neigh", "replace", &guest, "lladdr", &mac, "dev", &name]);
    Link {
        _tap: tap,
        name,
        host_ip,
        guest_ip,
        spec,
        net: device,
    }
}

#[test]
fn udp_flows_both_ways_between_the_host_and_the_rings() {
    let Link {
        _tap,
        name,
        host_ip,
        guest_ip,
        spec,
        mut net,
    } = link("vmmt", 231);

    let mem = guest_ram(16 << 20);
    let mut rx = Ring::new(&mem, 0, 16);
    let mut tx = Ring::new(&mem, 0x1_0000, 16);
    for i in 0..8 {
        rx.add(&[(0x10_0000 + i * 0x1000, 1526, true)]);
    }
    let (rx_handle, tx_handle) = (rx.handle(RX_QUEUE), tx.handle(TX_QUEUE));
    let tx_notify = tx_handle.notify.clone();
    let irq = Recorder::new();
    net.activate(Activation {
        memory: mem.clone(),
        features: net.features(),
        queues: vec![rx_handle, tx_handle],
        interrupt: irq.clone(),
    })
    .unwrap();

    // Host → guest.
    let host = UdpSocket::bind((host_ip, 5555)).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.send_to(b"to the guest", (guest_ip, 5555)).unwrap();
    let mut found = false;
    wait_until("the frame in the receive ring", || {
        found = (0..rx.used_count()).any(|i| {
            let (id, len) = rx.used(i);
            let data = rx.read(0x10_0000 + u64::from(id) * 0x1000, len as usize);
            data.windows(12).any(|w| w == b"to the guest")
        });
        found
    });
    assert!(irq.take_signals().contains(&RX_QUEUE));

    // Guest → host.
    let frame = udp_frame(
        tap_mac(&name),
        spec.mac.octets(),
        guest_ip,
        host_ip,
        5555,
        b"to the host",
    );
    tx.write(0x20_0000, &frame);
    tx.add(&[(0x20_0000, frame.len() as u32, false)]);
    tx_notify.write(1).unwrap();
    let mut got = [0; 64];
    let (n, from) = host.recv_from(&mut got).unwrap();
    assert_eq!(&got[..n], b"to the host");
    assert_eq!(from, (guest_ip, 5555).into());
    wait_until("the transmit chain used", || tx.used_count() == 1);

    let queues = net.deactivate().unwrap();
    assert_eq!(queues.iter().map(|q| q.index).collect::<Vec<_>>(), [0, 1]);
    let mut text = String::new();
    net.describe(&mut text).unwrap();
    assert!(
        text.contains(&name) && text.contains("tx 1 frames"),
        "{text}"
    );
}

#[test]
fn a_missing_tap_or_an_interface_that_is_no_tap_is_a_clear_error() {
    let stats = stam::Registry::new();
    let spec: NetSpec = "tap=vmm-no-such".parse().unwrap();
    let err = Net::open(&spec, "net0", &stats).err().unwrap().to_string();
    assert!(
        err.contains("tap vmm-no-such") && err.contains("ip tuntap add"),
        "{err}"
    );
    assert!(
        !std::path::Path::new("/sys/class/net/vmm-no-such").exists(),
        "not created"
    );
    let spec: NetSpec = "tap=lo".parse().unwrap();
    let err = Net::open(&spec, "net0", &stats).err().unwrap().to_string();
    assert!(err.contains("cannot attach to tap lo"), "{err}");
}

#[test]
fn config_space_and_saved_state_carry_the_mac() {
    let name = format!("vmms{}", std::process::id() % 100_000);
    let _tap = TestTap::create(&name);
    let stats = stam::Registry::new();
    let spec: NetSpec = format!("tap={name},mac=02:11:22:33:44:55").parse().unwrap();
    let net = Net::open(&spec, "net0", &stats).unwrap();
    let mut config = [0xffu8; 12];
    net.read_config(0, &mut config);
    assert_eq!(config, [2, 0x11, 0x22, 0x33, 0x44, 0x55, 1, 0, 1, 0, 0, 0]);
    let mut status = [0u8; 2];
    net.read_config(6, &mut status);
    assert_eq!(status, [1, 0], "link up");
    net.read_config(u64::MAX, &mut status);
    assert_eq!(status, [0, 0]);

    let saved = net.save();
    drop(net);
    let mut same = Net::open(&spec, "net1", &stats).unwrap();
    same.restore(&saved).unwrap();
    assert!(same.restore(&saved[..7]).is_err());
    assert!(same.restore(b"BLK1\0\0\0\0\0\0").is_err());
    // One attachment at a time: a second device on the tap is refused.
    let err = Net::open(&spec, "net3", &stats).err().unwrap().to_string();
    assert!(err.contains("busy"), "{err}");
    drop(same);
    let other: NetSpec = format!("tap={name},mac=02:11:22:33:44:56").parse().unwrap();
    let mut other = Net::open(&other, "net2", &stats).unwrap();
    let err = other.restore(&saved).unwrap_err().to_string();
    assert!(err.contains("02:11:22:33:44:55"), "{err}");
}

/// The virtio-net header's flags of the first frame a host UDP datagram
/// makes in the receive ring of a device whose driver accepted
/// `features`.
fn received_header_flags(prefix: &str, subnet_net: u8, features: u64) -> u8 {
    let mut link = link(prefix, subnet_net);
    let mem = guest_ram(16 << 20);
    let mut rx = Ring::new(&mem, 0, 16);
    let tx = Ring::new(&mem, 0x1_0000, 16);
    for i in 0..8 {
        rx.add(&[(0x10_0000 + i * 0x1000, 4096, true)]);
    }
    link.net
        .activate(Activation {
            memory: mem.clone(),
            features,
            queues: vec![rx.handle(RX_QUEUE), tx.handle(TX_QUEUE)],
            interrupt: Recorder::new(),
        })
        .unwrap();
    let host = UdpSocket::bind((link.host_ip, 5556)).unwrap();
    host.send_to(&[7; 600], (link.guest_ip, 5556)).unwrap();
    let mut flags = None;
    wait_until("the datagram in the receive ring", || {
        flags = (0..rx.used_count()).find_map(|i| {
            let (id, len) = rx.used(i);
            let data = rx.read(0x10_0000 + u64::from(id) * 0x1000, len as usize);
            data.windows(600).any(|w| w == [7; 600]).then_some(data[0])
        });
        flags.is_some()
    });
    link.net.deactivate().unwrap();
    flags.unwrap_or_default()
}

#[test]
fn the_tap_leaves_checksums_to_a_guest_that_accepted_guest_csum() {
    use virtio_bindings::virtio_net::{
        VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    };
    let version_1 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    let offloads = version_1 | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4;
    // TUNSETOFFLOAD with TUN_F_CSUM: the host's UDP checksum is left
    // for the guest (a partial checksum, NEEDS_CSUM).
    let flags = received_header_flags("vmmo", 232, offloads);
    assert_ne!(flags & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, 0, "{flags:#x}");
    // Without: the kernel finishes every checksum.
    let flags = received_header_flags("vmmn", 233, version_1);
    assert_eq!(flags & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, 0, "{flags:#x}");
}
