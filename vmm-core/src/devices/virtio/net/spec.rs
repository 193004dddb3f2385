//! [`NetSpec`]: the `--net tap=NAME[,mac=MAC]` text.

use std::fmt;
use std::str::FromStr;

/// The longest interface name Linux accepts (`IFNAMSIZ` less the NUL).
pub const MAX_TAP_NAME: usize = 15;

/// An Ethernet MAC address.
///
/// ```
/// use vmm_core::devices::virtio::net::MacAddress;
/// let mac: MacAddress = "52:54:00:12:34:56".parse()?;
/// assert_eq!(mac.octets(), [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
/// assert_eq!(mac.to_string(), "52:54:00:12:34:56");
/// # Ok::<(), vmm_core::devices::virtio::net::NetSpecError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddress([u8; 6]);

impl MacAddress {
    /// The six octets, in wire order.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// The default MAC of the device on tap `tap`: `52:54:00` (a locally
    /// administered unicast prefix) followed by three bytes of an FNV-1a
    /// hash of the tap's name, so that a VM keeps its MAC from run to run
    /// (and across a save and restore) without one being given.
    pub fn default_for(tap: &str) -> MacAddress {
        let hash = tap.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let [a, b, c, ..] = hash.to_le_bytes();
        MacAddress([0x52, 0x54, 0x00, a, b, c])
    }
}

impl From<[u8; 6]> for MacAddress {
    fn from(octets: [u8; 6]) -> Self {
        MacAddress(octets)
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddress {
    type Err = NetSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetSpecError::BadMac(s.to_owned());
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if octets[0] & 1 != 0 {
            return Err(NetSpecError::MulticastMac(s.to_owned()));
        }
        Ok(MacAddress(octets))
    }
}

/// What is wrong with a `--net` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetSpecError {
    /// No `tap=NAME`.
    #[error("--net needs tap=NAME (e.g. --net tap=tap0,mac=52:54:00:12:34:56)")]
    NoTap,
    /// A tap name Linux would not accept.
    #[error(
        "--net: {0:?} is not a tap name (1 to {MAX_TAP_NAME} bytes, no '/', ':', ',' or whitespace)"
    )]
    BadTapName(String),
    /// A MAC not written `xx:xx:xx:xx:xx:xx`.
    #[error("--net: {0:?} is not a MAC address (xx:xx:xx:xx:xx:xx, hexadecimal)")]
    BadMac(String),
    /// A group (multicast) MAC, which a NIC cannot have.
    #[error("--net: {0} is a multicast MAC address; the first octet must be even")]
    MulticastMac(String),
    /// An item that is not `key=value` or has an unknown key.
    #[error("--net: unknown item {0:?} (expected tap=NAME or mac=MAC)")]
    UnknownItem(String),
    /// A key given twice.
    #[error("--net: {0} given twice")]
    Duplicate(&'static str),
}

/// A network device's configuration: the host tap it is attached to and
/// its MAC address.
///
/// ```
/// use vmm_core::devices::virtio::net::{MacAddress, NetSpec};
/// let spec: NetSpec = "tap=tap0,mac=52:54:00:aa:bb:cc".parse()?;
/// assert_eq!(spec.tap, "tap0");
/// assert_eq!(spec.mac.to_string(), "52:54:00:aa:bb:cc");
/// // Without a MAC, one derived from the tap's name.
/// let spec: NetSpec = "tap=tap0".parse()?;
/// assert_eq!(spec.mac, MacAddress::default_for("tap0"));
/// # Ok::<(), vmm_core::devices::virtio::net::NetSpecError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// The name of an existing tap interface.
    pub tap: String,
    /// The MAC address the guest sees.
    pub mac: MacAddress,
}

fn valid_tap_name(name: &str) -> bool {
    (1..=MAX_TAP_NAME).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == ',' || c.is_whitespace() || c.is_control())
}

impl FromStr for NetSpec {
    type Err = NetSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut tap = None;
        let mut mac = None;
        for item in s.split(',') {
            match item.split_once('=') {
                Some(("tap", name)) => {
                    if !valid_tap_name(name) {
                        return Err(NetSpecError::BadTapName(name.to_owned()));
                    }
                    if tap.replace(name.to_owned()).is_some() {
                        return Err(NetSpecError::Duplicate("tap"));
                    }
                }
                Some(("mac", text)) => {
                    if mac.replace(text.parse::<MacAddress>()?).is_some() {
                        return Err(NetSpecError::Duplicate("mac"));
                    }
                }
                _ => return Err(NetSpecError::UnknownItem(item.to_owned())),
            }
        }
        let tap = tap.ok_or(NetSpecError::NoTap)?;
        let mac = mac.unwrap_or_else(|| MacAddress::default_for(&tap));
        Ok(NetSpec { tap, mac })
    }
}

impl fmt::Display for NetSpec {
    /// The `--net` text that parses back to this spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tap={},mac={}", self.tap, self.mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_reads_back_as_it_prints() {
        let spec: NetSpec = "tap=vmtap0".parse().unwrap();
        assert_eq!(spec.to_string().parse::<NetSpec>().unwrap(), spec);
    }

    #[test]
    fn tap_and_mac_parse_in_either_order() {
        let a: NetSpec = "tap=vmtap0,mac=02:00:00:00:00:01".parse().unwrap();
        let b: NetSpec = "mac=02:00:00:00:00:01,tap=vmtap0".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.mac.octets(), [2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn the_default_mac_is_local_unicast_and_depends_on_the_tap() {
        let a = MacAddress::default_for("tap0").octets();
        let b = MacAddress::default_for("tap1").octets();
        assert_eq!(a[..3], [0x52, 0x54, 0x00]);
        assert_ne!(a, b);
        assert_eq!(a[0] & 0b11, 0b10, "locally administered, unicast");
    }

    #[test]
    fn bad_texts_say_what_is_wrong() {
        let cases = [
            ("", NetSpecError::UnknownItem(String::new())),
            ("mac=52:54:00:00:00:01", NetSpecError::NoTap),
            ("tap=", NetSpecError::BadTapName(String::new())),
            (
                "tap=a-name-far-too-long",
                NetSpecError::BadTapName("a-name-far-too-long".into()),
            ),
            ("tap=a/b", NetSpecError::BadTapName("a/b".into())),
            ("tap=t,tap=u", NetSpecError::Duplicate("tap")),
            (
                "tap=t,mac=52:54:00:00:00",
                NetSpecError::BadMac("52:54:00:00:00".into()),
            ),
            (
                "tap=t,mac=52:54:00:00:00:01:02",
                NetSpecError::BadMac("52:54:00:00:00:01:02".into()),
            ),
            (
                "tap=t,mac=5:54:00:00:00:01",
                NetSpecError::BadMac("5:54:00:00:00:01".into()),
            ),
            (
                "tap=t,mac=zz:54:00:00:00:01",
                NetSpecError::BadMac("zz:54:00:00:00:01".into()),
            ),
            (
                "tap=t,mac=01:00:5e:00:00:01",
                NetSpecError::MulticastMac("01:00:5e:00:00:01".into()),
            ),
            (
                "tap=t,queues=2",
                NetSpecError::UnknownItem("queues=2".into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<NetSpec>(), Err(want), "{text:?}");
        }
        let message = "tap=t,mac=x".parse::<NetSpec>().unwrap_err().to_string();
        assert!(message.contains("\"x\" is not a MAC address"), "{message}");
    }
}
