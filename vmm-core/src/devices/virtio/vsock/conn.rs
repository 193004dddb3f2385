//! One vsock connection: its host stream, its state and both directions'
//! credit.
//!
//! Credit (virtio 1.2 section 5.10.6.3): each side tells the other how
//! much buffer it has (`buf_alloc`) and how many bytes it has consumed
//! (`fwd_cnt`); a sender may have at most `buf_alloc - (sent - fwd_cnt)`
//! bytes in flight. The device's buffer is the bytes the guest sent that
//! the host stream has not taken yet, at most [`CONN_BUF`]: a guest that
//! sends more than its credit is reset, so it cannot make the device hold
//! more.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::packet::{HOST_CID, Header, TYPE_STREAM};

/// The device's receive buffer per connection (its `buf_alloc`).
pub const CONN_BUF: u32 = 128 * 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A host program asked for it; the guest has not answered the request.
    Requested,
    /// Data flows.
    Established,
    /// The guest shut down both directions: the device forwards what it
    /// still holds, then resets the connection.
    Closing,
}

/// A connection between a guest port and a host stream.
#[derive(Debug)]
pub struct Conn {
    pub(super) stream: UnixStream,
    pub(super) token: u64,
    pub(super) state: State,
    /// The port on the host side (CID 2).
    pub(super) local_port: u32,
    /// The guest's port.
    pub(super) peer_port: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    rx_cnt: u32,
    /// Bytes of the guest's taken by the host stream.
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_told: u32,
    /// Guest bytes the host stream has not taken yet.
    pending: Vec<u8>,
    /// The guest will send no more.
    pub(super) guest_done_sending: bool,
    /// The guest will receive no more.
    pub(super) guest_done_receiving: bool,
    /// The host stream ended (its program shut down writing) and the
    /// guest was told: nothing more is read from it.
    pub(super) host_done_sending: bool,
    /// In the device's list of connections with data for the guest.
    pub(super) queued: bool,
    /// The events the device waits for on the stream.
    pub(super) interest: EventSet,
}

/// The guest broke the protocol on this connection: reset it.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation(pub &'static str);

impl Conn {
    /// A connection in `state` over `stream`.
    pub fn new(
        stream: UnixStream,
        token: u64,
        state: State,
        local_port: u32,
        peer_port: u32,
    ) -> Conn {
        Conn {
            stream,
            token,
            state,
            local_port,
            peer_port,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_told: 0,
            pending: Vec::new(),
            guest_done_sending: false,
            guest_done_receiving: false,
            host_done_sending: false,
            queued: false,
            interest: EventSet::empty(),
        }
    }

    /// A header from the host end to the guest end, with the device's
    /// current credit.
    pub fn header(&mut self, guest_cid: u64, op: u16, flags: u32, len: u32) -> Header {
        self.fwd_cnt_told = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Takes the guest's credit from any packet it sent.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
    }

    /// How many more bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Counts `n` bytes sent to the guest.
    pub fn sent_to_guest(&mut self, n: u32) {
        self.rx_cnt = self.rx_cnt.wrapping_add(n);
    }

    /// Whether the guest should hear of freed buffer space now (a quarter
    /// of the buffer consumed since it last heard).
    pub fn owes_credit_update(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_cnt_told) >= CONN_BUF / 4
    }

    /// Whether guest bytes wait for the host stream.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Forwards guest `data` to the host stream, keeping what it does not
    /// take; a guest beyond its credit is a violation.
    pub fn guest_data(&mut self, data: &[u8]) -> Result<(), Violation> {
        if self.guest_done_sending {
            return Err(Violation("data after the guest shut down sending"));
        }
        if self.pending.len() + data.len() > CONN_BUF as usize {
            return Err(Violation("data beyond the credit the device gave"));
        }
        self.pending.extend_from_slice(data);
        self.flush()
            .map_err(|_| Violation("the host stream failed"))
    }

    /// Writes what is pending to the host stream until it blocks.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads host bytes for the guest into `buf`.
    pub fn read_host(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }

    /// Whether the host program closed its end altogether (not only
    /// shut down writing): nothing it could read is left to send it.
    pub fn host_hung_up(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.stream),
            events: 0,
            revents: 0,
        };
        // SAFETY: `poll` is one valid pollfd that lives across the call;
        // a zero timeout does not block.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready > 0 && poll.revents & (libc::POLLHUP | libc::POLLERR) != 0
    }

    /// The events to wait for: readable while the guest has credit, the
    /// host stream has not ended and the connection is not already
    /// queued; writable while guest bytes wait.
    pub fn wanted(&self) -> EventSet {
        let mut events = EventSet::empty();
        let reading = self.state == State::Established
            && !self.guest_done_receiving
            && !self.host_done_sending
            && !self.queued
            && self.peer_credit() > 0;
        if reading {
            events |= EventSet::IN;
        }
        if self.has_pending() {
            events |= EventSet::OUT;
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Conn::new(a, 1, State::Established, 1024, 5000), b)
    }

    #[test]
    fn credit_follows_what_was_sent_and_what_the_guest_consumed() {
        let (mut c, _peer) = conn();
        assert_eq!(c.peer_credit(), 0, "no credit before the guest says");
        assert!(!c.wanted().contains(EventSet::IN));
        c.update_peer_credit(&Header {
            buf_alloc: 1000,
            fwd_cnt: 0,
            ..Header::default()
        });
        assert_eq!(c.peer_credit(), 1000);
        c.sent_to_guest(600);
        assert_eq!(c.peer_credit(), 400);
        c.sent_to_guest(400);
        assert_eq!(c.peer_credit(), 0);
        c.update_peer_credit(&Header {
            buf_alloc: 1000,
            fwd_cnt: 700,
            ..Header::default()
        });
        assert_eq!(c.peer_credit(), 700);
        assert!(c.wanted().contains(EventSet::IN));
    }

    #[test]
    fn credit_counters_wrap() {
        let (mut c, _peer) = conn();
        c.sent_to_guest(u32::MAX - 10);
        c.update_peer_credit(&Header {
            buf_alloc: 1000,
            fwd_cnt: u32::MAX - 10,
            ..Header::default()
        });
        assert_eq!(c.peer_credit(), 1000);
        c.sent_to_guest(100);
        assert_eq!(c.peer_credit(), 900);
    }

    #[test]
    fn guest_bytes_reach_the_stream_and_count_as_forwarded() {
        let (mut c, mut peer) = conn();
        c.guest_data(b"hello").unwrap();
        let mut got = [0; 5];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        let h = c.header(3, super::super::packet::op::CREDIT_UPDATE, 0, 0);
        assert_eq!((h.fwd_cnt, h.buf_alloc), (5, CONN_BUF));
    }

    #[test]
    fn a_guest_beyond_its_credit_is_a_violation_and_memory_stays_bounded() {
        let (mut c, _peer) = conn();
        // Nobody reads the peer: the stream's buffer fills, then the
        // device's, then the guest is over its credit.
        let chunk = vec![0u8; 64 * 1024];
        let mut result = Ok(());
        for _ in 0..64 {
            result = c.guest_data(&chunk);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(
            result,
            Err(Violation("data beyond the credit the device gave"))
        );
        assert!(c.pending.len() <= CONN_BUF as usize);
        assert!(c.wanted().contains(EventSet::OUT));
    }
}
