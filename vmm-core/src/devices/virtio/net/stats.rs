//! [`NetStats`]: the network device's counters.

/// The device's counters under `/Devices/<name>/`.
#[derive(Clone)]
pub struct NetStats {
    pub(super) rx_packets: stam::Counter,
    pub(super) rx_bytes: stam::Counter,
    pub(super) rx_drops: stam::Counter,
    pub(super) rx_errors: stam::Counter,
    pub(super) rx_notifications: stam::Counter,
    pub(super) tx_packets: stam::Counter,
    pub(super) tx_bytes: stam::Counter,
    pub(super) tx_drops: stam::Counter,
    pub(super) tx_errors: stam::Counter,
    pub(super) tx_notifications: stam::Counter,
}

impl NetStats {
    /// Registers the counters of device `name`.
    pub fn register(stats: &stam::Registry, name: &str) -> Result<NetStats, stam::Error> {
        use stam::Unit::{Bytes, Errors, Occurrences};
        let c = |leaf: &str, unit, what: &str| {
            stats.counter(format!("/Devices/{name}/{leaf}"), unit, what)
        };
        Ok(NetStats {
            rx_packets: c("ReceivePackets", Occurrences, "Frames given to the guest")?,
            rx_bytes: c(
                "ReceiveBytes",
                Bytes,
                "Bytes given to the guest (headers excluded)",
            )?,
            rx_drops: c(
                "ReceiveDrops",
                Occurrences,
                "Frames from the host that did not fit the guest's receive buffer",
            )?,
            rx_errors: c("ReceiveErrors", Errors, "Failed reads from the host side")?,
            rx_notifications: c(
                "ReceiveNotifications",
                Occurrences,
                "Receive queue notifications (buffers refilled)",
            )?,
            tx_packets: c("TransmitPackets", Occurrences, "Frames sent by the guest")?,
            tx_bytes: c(
                "TransmitBytes",
                Bytes,
                "Bytes sent by the guest (headers excluded)",
            )?,
            tx_drops: c(
                "TransmitDrops",
                Occurrences,
                "Guest frames the host side refused",
            )?,
            tx_errors: c(
                "TransmitErrors",
                Errors,
                "Guest transmit chains without a header or longer than a frame",
            )?,
            tx_notifications: c(
                "TransmitNotifications",
                Occurrences,
                "Transmit queue notifications",
            )?,
        })
    }
}
