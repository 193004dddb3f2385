//! The packet guard: what gdb sends is framed and checked here before `gdbstub` sees
//! it.
//!
//! - A packet with a bad checksum is answered `-` and dropped; gdb sends it again and
//!   the session goes on (`gdbstub` would end the session).
//! - Bytes outside a packet other than acks and Ctrl-C are dropped; a `$` inside a
//!   packet starts a new one; a packet longer than the stub's packet buffer is
//!   answered `-` and dropped.
//! - A memory read (`m ADDR,LEN`) is rewritten to ask for [`MAX_MEM_READ`] bytes at
//!   most, so that its reply fits one packet (`gdbstub` answers any length, in one
//!   endless reply); one whose address or length is not a 64-bit hex number is
//!   answered `E16` here.

use std::collections::VecDeque;
use std::io;

use gdbstub::conn::{Connection, ConnectionExt};

/// Size of `gdbstub`'s packet buffer (what `qSupported` advertises as `PacketSize`).
pub(super) const PACKET_BUFFER: usize = 4096;

/// Most bytes one `m` packet reads: the reply, two hex digits a byte, fits
/// the stub's packet buffer (the `PacketSize` it advertises; gdb expects
/// reads to come back short at times).
pub const MAX_MEM_READ: u64 = (PACKET_BUFFER as u64 - 32) / 2;

/// Where the guard is in gdb's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    Between,
    Body,
    Checksum1,
    Checksum2,
}

/// A connection whose incoming packets are checked before `gdbstub` sees them.
#[derive(Debug)]
pub(super) struct PacketGuard<'a, C> {
    inner: &'a mut C,
    /// Vetted bytes for `gdbstub`.
    ready: VecDeque<u8>,
    /// The packet being received, from its `$`.
    packet: Vec<u8>,
    frame: Frame,
}

/// A packet's checksum: the sum of its body's bytes.
fn checksum(body: &[u8]) -> u8 {
    body.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// Frames `body` as a packet.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(b'$');
    out.extend_from_slice(body);
    out.extend_from_slice(format!("#{:02x}", checksum(body)).as_bytes());
    out
}

/// A hex number of 64 bits at most.
fn hex_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

/// What to do with a packet that arrived whole and intact.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Hand it (possibly rewritten) to `gdbstub`.
    Pass(Vec<u8>),
    /// Answer it here with this body.
    Answer(&'static [u8]),
}

/// Clamps memory reads (rewritten with their numbers in canonical form); other
/// packets pass unchanged.
fn vet(packet: &[u8]) -> Verdict {
    let body = &packet[1..packet.len() - 3];
    let Some(args) = body.strip_prefix(b"m") else {
        return Verdict::Pass(packet.to_vec());
    };
    let parsed = args
        .iter()
        .position(|&b| b == b',')
        .and_then(|comma| Some((hex_u64(&args[..comma])?, hex_u64(&args[comma + 1..])?)));
    match parsed {
        None => Verdict::Answer(b"E16"), // EINVAL
        Some((addr, len)) => {
            let len = len.min(MAX_MEM_READ);
            Verdict::Pass(framed(format!("m{addr:x},{len:x}").as_bytes()))
        }
    }
}

impl<'a, C: Connection<Error = io::Error>> PacketGuard<'a, C> {
    pub(super) fn new(inner: &'a mut C) -> Self {
        Self {
            inner,
            ready: VecDeque::new(),
            packet: Vec::new(),
            frame: Frame::Between,
        }
    }

    /// Drops the packet being received and asks gdb to send it again.
    fn nak(&mut self) -> io::Result<()> {
        self.packet.clear();
        self.frame = Frame::Between;
        self.inner.write(b'-')?;
        self.inner.flush()
    }

    /// Takes one byte from gdb.
    fn take(&mut self, byte: u8) -> io::Result<()> {
        match (self.frame, byte) {
            (Frame::Between | Frame::Body, b'$') => {
                self.packet.clear();
                self.packet.push(byte);
                self.frame = Frame::Body;
            }
            (Frame::Between, b'+' | b'-' | 0x03) => self.ready.push_back(byte),
            (Frame::Between, _) => {}
            (Frame::Body, _) if self.packet.len() + 3 >= PACKET_BUFFER => self.nak()?,
            (Frame::Body, b'#') => {
                self.packet.push(byte);
                self.frame = Frame::Checksum1;
            }
            (Frame::Body, _) => self.packet.push(byte),
            (Frame::Checksum1, _) => {
                self.packet.push(byte);
                self.frame = Frame::Checksum2;
            }
            (Frame::Checksum2, _) => {
                self.packet.push(byte);
                self.frame = Frame::Between;
                self.finish()?;
            }
        }
        Ok(())
    }

    /// Checks a packet that arrived whole.
    fn finish(&mut self) -> io::Result<()> {
        let n = self.packet.len();
        let intact = hex_u64(&self.packet[n - 2..])
            .is_some_and(|sum| sum == u64::from(checksum(&self.packet[1..n - 3])));
        if !intact {
            return self.nak();
        }
        match vet(&self.packet) {
            Verdict::Pass(packet) => self.ready.extend(packet),
            Verdict::Answer(body) => {
                self.inner.write(b'+')?;
                self.inner.write_all(&framed(body))?;
                self.inner.flush()?;
            }
        }
        self.packet.clear();
        Ok(())
    }
}

impl<C: Connection<Error = io::Error>> Connection for PacketGuard<'_, C> {
    type Error = io::Error;

    fn write(&mut self, byte: u8) -> io::Result<()> {
        self.inner.write(byte)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    fn on_session_start(&mut self) -> io::Result<()> {
        self.inner.on_session_start()
    }
}

impl<C: ConnectionExt<Error = io::Error>> ConnectionExt for PacketGuard<'_, C> {
    fn read(&mut self) -> io::Result<u8> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Ok(b);
            }
            let b = self.inner.read()?;
            self.take(b)?;
        }
    }

    fn peek(&mut self) -> io::Result<Option<u8>> {
        loop {
            if let Some(&b) = self.ready.front() {
                return Ok(Some(b));
            }
            if self.inner.peek()?.is_none() {
                return Ok(None);
            }
            let b = self.inner.read()?;
            self.take(b)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gdb::testing::ScriptedConnection;

    /// What `gdbstub` gets and what gdb gets back for `input`.
    fn guard(input: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut conn = ScriptedConnection::new(input);
        let mut g = PacketGuard::new(&mut conn);
        let mut passed = Vec::new();
        while let Ok(b) = g.read() {
            passed.push(b);
        }
        (passed, conn.output().to_vec())
    }

    #[test]
    fn intact_packets_acks_and_interrupts_pass() {
        let input = b"+$g#67\x03-$qC#b4";
        assert_eq!(guard(input), (input.to_vec(), vec![]));
    }

    #[test]
    fn a_bad_checksum_is_nakked_and_the_next_packet_passes() {
        assert_eq!(guard(b"$g#00$g#67"), (b"$g#67".to_vec(), b"-".to_vec()));
        assert_eq!(guard(b"$g#zz"), (vec![], b"-".to_vec()));
    }

    #[test]
    fn noise_is_dropped_and_a_dollar_restarts_the_packet() {
        assert_eq!(guard(b"\nxx$qq$g#67").0, b"$g#67".to_vec());
    }

    #[test]
    fn an_oversized_packet_is_nakked() {
        let mut input = vec![b'$'];
        input.resize(PACKET_BUFFER * 2, b'a');
        input.extend_from_slice(b"#00$g#67");
        assert_eq!(guard(&input), (b"$g#67".to_vec(), b"-".to_vec()));
    }

    #[test]
    fn memory_reads_are_clamped_to_one_packet() {
        let (passed, _) = guard(&framed(b"m0,ffffffffffffffff"));
        assert_eq!(passed, framed(format!("m0,{MAX_MEM_READ:x}").as_bytes()));
        let small = framed(b"mffffffffffffff00,10");
        assert_eq!(guard(&small).0, small);
        let padded = framed(b"m000000000000000000000ff,0010");
        assert_eq!(guard(&padded).0, framed(b"mff,10"));
    }

    #[test]
    fn malformed_memory_reads_are_answered_here() {
        for body in [
            &b"m"[..],
            b"m12",
            b"m,4",
            b"m1,",
            b"m1,+4",
            b"m10000000000000000,1",
        ] {
            let (passed, out) = guard(&framed(body));
            assert!(passed.is_empty(), "{body:?}");
            assert_eq!(out, [&b"+"[..], &framed(b"E16")].concat(), "{body:?}");
        }
    }
}
