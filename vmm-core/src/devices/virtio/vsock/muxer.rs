//! The host side of the vsock device: the listening socket, the
//! handshakes of host programs, and the connection table, keyed by
//! (host port, guest port).
//!
//! Host sockets are non-blocking and registered in the muxer's own epoll
//! set, whose descriptor the queue worker watches; a connection is
//! registered only while the device wants something from its stream (see
//! [`Conn::wanted`]), so a stream the device cannot serve now (no credit,
//! no receive buffers) never wakes the worker.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::VsockStats;
use super::conn::{Conn, State, Violation};
use super::host::{Listener, connect_nonblocking};
use super::packet::{HOST_CID, Header, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, op};

/// Most connections (and host handshakes) at a time.
pub const MAX_CONNECTIONS: usize = 128;
/// Most payload bytes in one packet.
pub const MAX_PKT: usize = 64 * 1024;
/// Most packets without payload waiting for receive buffers.
const MAX_CONTROL: usize = 1024;
/// Longest `CONNECT <port>\n` line.
const MAX_LINE: usize = 32;
/// The listener's epoll token.
const LISTENER: u64 = 0;
/// Host ports the device gives connections host programs open.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

type Key = (u32, u32);

enum Slot {
    Handshake(Vec<u8>, UnixStream),
    Conn(Key),
}

/// The host side of the device.
pub struct Muxer {
    guest_cid: u64,
    path: PathBuf,
    listener: Listener,
    epoll: Epoll,
    conns: HashMap<Key, Conn>,
    slots: HashMap<u64, Slot>,
    next_token: u64,
    next_local_port: u32,
    control: VecDeque<Header>,
    ready: VecDeque<Key>,
    buf: Vec<u8>,
    stats: VsockStats,
}

fn epoll_ctl(epoll: &Epoll, op: ControlOperation, fd: &impl AsRawFd, token: u64, events: EventSet) {
    if let Err(e) = epoll.ctl(op, fd.as_raw_fd(), EpollEvent::new(events, token)) {
        tracing::warn!("vsock: epoll: {e}");
    }
}

impl Muxer {
    /// The host side of guest `guest_cid`, listening on `listener`.
    pub fn new(
        guest_cid: u64,
        path: PathBuf,
        listener: Listener,
        stats: VsockStats,
    ) -> io::Result<Muxer> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.socket.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER),
        )?;
        Ok(Muxer {
            guest_cid,
            path,
            listener,
            epoll,
            conns: HashMap::new(),
            slots: HashMap::new(),
            next_token: LISTENER + 1,
            next_local_port: FIRST_LOCAL_PORT,
            control: VecDeque::new(),
            ready: VecDeque::new(),
            buf: vec![0; MAX_PKT],
            stats,
        })
    }

    /// The descriptor that is readable when a host socket needs service.
    pub fn epoll_fd(&self) -> std::os::fd::RawFd {
        self.epoll.as_raw_fd()
    }

    /// Closes every connection and handshake (after a restore: the guest
    /// is told with a transport reset event).
    pub fn reset_all(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        self.slots.clear();
        self.control.clear();
        self.ready.clear();
    }

    /// Whether the device has packets for the guest.
    pub fn has_work(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    fn push_control(&mut self, hdr: Header) {
        if self.control.len() < MAX_CONTROL {
            self.control.push_back(hdr);
        } else {
            self.stats.dropped.inc();
        }
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Registers the connection's stream for what it wants now.
    fn sync(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let wanted = conn.wanted();
        let op = match (conn.interest.is_empty(), wanted.is_empty()) {
            _ if wanted == conn.interest => return,
            (true, _) => ControlOperation::Add,
            (false, true) => ControlOperation::Delete,
            (false, false) => ControlOperation::Modify,
        };
        epoll_ctl(&self.epoll, op, &conn.stream, conn.token, wanted);
        conn.interest = wanted;
    }

    fn remove(&mut self, key: Key) -> Option<Conn> {
        let conn = self.conns.remove(&key)?;
        if !conn.interest.is_empty() {
            epoll_ctl(
                &self.epoll,
                ControlOperation::Delete,
                &conn.stream,
                conn.token,
                EventSet::empty(),
            );
        }
        self.slots.remove(&conn.token);
        self.stats.connections.dec();
        Some(conn)
    }

    /// Closes a connection and tells the guest with a reset.
    fn reset(&mut self, key: Key) {
        if let Some(mut conn) = self.remove(key) {
            let rst = conn.header(self.guest_cid, op::RST, 0, 0);
            self.push_control(rst);
            self.stats.resets.inc();
        }
    }

    fn insert(&mut self, conn: Conn) {
        let key = (conn.local_port, conn.peer_port);
        self.slots.insert(conn.token, Slot::Conn(key));
        self.conns.insert(key, conn);
        self.stats.connections.inc();
        self.stats.opened.inc();
    }

    /// Serves every host socket that is ready.
    pub fn host_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("vsock: epoll: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    LISTENER => self.accept(),
                    token => self.stream_event(token, ev.event_set()),
                }
            }
            if n < events.len() {
                return;
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.socket.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            // Every handshake and connection has a slot.
            if self.slots.len() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
                self.stats.refused.inc();
                continue;
            }
            let token = self.token();
            epoll_ctl(
                &self.epoll,
                ControlOperation::Add,
                &stream,
                token,
                EventSet::IN,
            );
            self.slots
                .insert(token, Slot::Handshake(Vec::new(), stream));
            // The line may be there already.
            self.handshake(token);
        }
    }

    fn stream_event(&mut self, token: u64, events: EventSet) {
        match self.slots.get_mut(&token) {
            Some(Slot::Handshake(..)) => self.handshake(token),
            Some(&mut Slot::Conn(key)) => self.conn_event(key, events),
            None => {}
        }
    }

    /// Reads a host program's `CONNECT <port>\n`, a byte at a time so
    /// that nothing after the line is taken from the stream.
    fn handshake(&mut self, token: u64) {
        let Some(Slot::Handshake(line, stream)) = self.slots.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8];
        let port = loop {
            match stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(line),
                Ok(1) if line.len() < MAX_LINE => line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break None,
            }
        };
        let Some(Slot::Handshake(_, stream)) = self.slots.remove(&token) else {
            return;
        };
        let Some(peer_port) = port else {
            self.stats.refused.inc();
            epoll_ctl(
                &self.epoll,
                ControlOperation::Delete,
                &stream,
                token,
                EventSet::empty(),
            );
            return;
        };
        let mut local_port = self.next_local_port;
        while self.conns.contains_key(&(local_port, peer_port)) {
            local_port = local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
        }
        self.next_local_port = local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
        let mut conn = Conn::new(stream, token, State::Requested, local_port, peer_port);
        // Registered for IN as a handshake; `sync` drops that.
        conn.interest = EventSet::IN;
        let request = conn.header(self.guest_cid, op::REQUEST, 0, 0);
        self.insert(conn);
        self.push_control(request);
        self.sync((local_port, peer_port));
    }

    fn conn_event(&mut self, key: Key, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.interest.contains(EventSet::IN) {
            conn.queued = true;
            self.ready.push_back(key);
        }
        let hung_up = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if conn.interest.contains(EventSet::OUT) && (events.contains(EventSet::OUT) || hung_up) {
            if conn.flush().is_err() {
                self.reset(key);
                return;
            }
            self.after_flush(key);
        }
        self.sync(key);
    }

    /// Once the guest's bytes are all with the host: pass on its shutdown
    /// of sending, finish a close (the guest's of both directions, or of
    /// its sending after the host's), tell it of freed space.
    fn after_flush(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if !conn.has_pending() && conn.guest_done_sending {
            let _ = conn.stream.shutdown(Shutdown::Write);
            if conn.state == State::Closing || conn.host_done_sending {
                self.reset(key);
                return;
            }
        }
        if conn.owes_credit_update() {
            let update = conn.header(self.guest_cid, op::CREDIT_UPDATE, 0, 0);
            self.push_control(update);
        }
    }

    /// A packet the device could not take (malformed, wrong type): reset
    /// the connection it names, if the guest has one.
    pub fn bad_packet(&mut self, hdr: &Header) {
        self.stats.bad.inc();
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) {
            self.reset(key);
        } else if hdr.op != op::RST && hdr.src_cid == self.guest_cid {
            self.push_control(hdr.reset_reply());
            self.stats.resets.inc();
        }
    }

    /// A packet from the guest.
    pub fn guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            // Not from this guest or not to the host: nobody to answer.
            self.stats.bad.inc();
            return;
        }
        if hdr.kind != TYPE_STREAM {
            return self.bad_packet(hdr);
        }
        let key = (hdr.dst_port, hdr.src_port);
        let Some(conn) = self.conns.get_mut(&key) else {
            match hdr.op {
                op::REQUEST => self.connect_guest(hdr),
                op::RST => {}
                _ => {
                    self.push_control(hdr.reset_reply());
                    self.stats.resets.inc();
                }
            }
            return;
        };
        conn.update_peer_credit(hdr);
        let result = match (hdr.op, conn.state) {
            (op::RESPONSE, State::Requested) => {
                conn.state = State::Established;
                let ok = format!("OK {}\n", conn.local_port);
                conn.stream
                    .write_all(ok.as_bytes())
                    .map_err(|_| Violation("the host program went away"))
            }
            (op::RW, State::Established) => conn.guest_data(payload),
            (op::CREDIT_UPDATE, _) => Ok(()),
            (op::CREDIT_REQUEST, _) => {
                let update = conn.header(self.guest_cid, op::CREDIT_UPDATE, 0, 0);
                self.push_control(update);
                Ok(())
            }
            (op::SHUTDOWN, State::Established) => {
                conn.guest_done_receiving |= hdr.flags & SHUTDOWN_RCV != 0;
                conn.guest_done_sending |= hdr.flags & SHUTDOWN_SEND != 0;
                if conn.guest_done_receiving && conn.guest_done_sending {
                    conn.state = State::Closing;
                }
                Ok(())
            }
            (op::RST, _) => {
                self.remove(key);
                return;
            }
            _ => Err(Violation(
                "an operation the connection's state does not allow",
            )),
        };
        match result {
            Ok(()) => {
                self.after_flush(key);
                self.sync(key);
            }
            Err(Violation(why)) => {
                tracing::debug!("vsock: resetting {key:?}: {why}");
                self.stats.bad.inc();
                self.reset(key);
            }
        }
    }

    /// The guest connects to host port `dst_port`: the Unix socket
    /// `PATH_<port>`.
    fn connect_guest(&mut self, hdr: &Header) {
        let mut path = OsString::from(self.path.as_os_str());
        path.push(format!("_{}", hdr.dst_port));
        let stream = if self.conns.len() >= MAX_CONNECTIONS {
            Err(io::Error::from(io::ErrorKind::OutOfMemory))
        } else {
            connect_nonblocking(path.as_ref())
        };
        let Ok(stream) = stream else {
            self.stats.refused.inc();
            self.stats.resets.inc();
            self.push_control(hdr.reset_reply());
            return;
        };
        let token = self.token();
        let mut conn = Conn::new(
            stream,
            token,
            State::Established,
            hdr.dst_port,
            hdr.src_port,
        );
        conn.update_peer_credit(hdr);
        let response = conn.header(self.guest_cid, op::RESPONSE, 0, 0);
        self.insert(conn);
        self.push_control(response);
        self.sync((hdr.dst_port, hdr.src_port));
    }

    /// The next packet for a receive buffer with room for `room` payload
    /// bytes: a control packet, else data (or the end of a stream) from a
    /// connection whose host stream was readable.
    pub fn next_for_guest(&mut self, room: usize) -> Option<(Header, &[u8])> {
        if let Some(hdr) = self.control.pop_front() {
            return Some((hdr, &[]));
        }
        while let Some(key) = self.ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            let max = room.min(MAX_PKT).min(conn.peer_credit() as usize);
            if conn.state != State::Established || conn.guest_done_receiving || max == 0 {
                self.sync(key);
                continue;
            }
            match conn.read_host(&mut self.buf[..max]) {
                // The host program stopped sending. If it still reads
                // and the guest may still send, only that direction
                // ends; otherwise the connection is over.
                Ok(0) if !conn.host_hung_up() && !conn.guest_done_sending => {
                    conn.host_done_sending = true;
                    let hdr = conn.header(self.guest_cid, op::SHUTDOWN, SHUTDOWN_SEND, 0);
                    self.sync(key);
                    return Some((hdr, &[]));
                }
                Ok(0) => {
                    let mut conn = self.remove(key)?;
                    let flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                    return Some((conn.header(self.guest_cid, op::SHUTDOWN, flags, 0), &[]));
                }
                Ok(n) => {
                    conn.sent_to_guest(n as u32);
                    let hdr = conn.header(self.guest_cid, op::RW, 0, n as u32);
                    // More may wait: serve it again after the others.
                    conn.queued = true;
                    self.ready.push_back(key);
                    self.stats.rx_bytes.add(n as u64);
                    return Some((hdr, &self.buf[..n]));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.sync(key),
                Err(_) => self.reset(key),
            }
        }
        None
    }
}

/// The port of `CONNECT <port>` (a trailing `\r` allowed).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let port = text.strip_prefix("CONNECT ")?.trim_end_matches('\r');
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn connect_lines_name_a_port() {
        use super::parse_connect;
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295\r"), Some(u32::MAX));
        for bad in [
            &b"CONNECT"[..],
            b"connect 5",
            b"CONNECT -1",
            b"CONNECT 5 6",
            b"\xff",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }
}
