//! Damaged streams: every single-byte corruption, truncation and a few
//! thousand splices of a valid stream must give an error — never a panic,
//! a hang, or a successful load.

mod common;

use common::{fresh, manager, sample_stream, sample_units};
use ssm::StreamReader;

/// Loads `bytes` into fresh sample units and also walks it with the
/// verifier. Returns true if either accepted it.
fn accepted(bytes: &[u8]) -> bool {
    let units = fresh(&sample_units());
    let loaded = StreamReader::from_slice(bytes).and_then(|r| manager(&units).load(r));
    let verified = StreamReader::from_slice(bytes).and_then(ssm::inspect_stream);
    loaded.is_ok() || verified.is_ok()
}

/// Tiny deterministic generator, so failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn the_sample_stream_itself_loads() {
    let bytes = sample_stream();
    let units = fresh(&sample_units());
    manager(&units)
        .load(StreamReader::from_slice(&bytes).unwrap())
        .unwrap();
    let passes = common::live_passes(&units);
    for u in &units {
        assert_eq!(u.loaded(), u.expected(passes));
    }
    assert!(!accepted(&bytes[..bytes.len() - 1]));
    assert!(
        bytes.len() > 4096,
        "the sample covers raw, zero and compressed pages"
    );
}

#[test]
fn every_single_byte_corruption_is_rejected() {
    let bytes = sample_stream();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for pos in 0..bytes.len() {
        let flip = match pos % 3 {
            0 => 0x01,
            1 => 0x80,
            _ => (rng.next() as u8) | 1,
        };
        let mut bad = bytes.clone();
        bad[pos] ^= flip;
        assert!(!accepted(&bad), "corruption {flip:#x} at {pos} accepted");
    }
}

#[test]
fn every_truncation_and_extension_is_rejected() {
    let bytes = sample_stream();
    for len in 0..bytes.len() {
        assert!(!accepted(&bytes[..len]), "truncation to {len} accepted");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(!accepted(&longer));
}

#[test]
fn splices_are_rejected() {
    let bytes = sample_stream();
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut tried = 0;
    while tried < 2000 {
        let a = rng.below(bytes.len());
        let len = 1 + rng.below(64.min(bytes.len() - a));
        let chunk = bytes[a..a + len].to_vec();
        let at = rng.below(bytes.len());
        let mut bad = bytes.clone();
        if rng.next() % 2 == 0 {
            // Overwrite in place with bytes from elsewhere.
            let end = (at + len).min(bad.len());
            bad[at..end].copy_from_slice(&chunk[..end - at]);
        } else {
            // Insert bytes from elsewhere.
            bad.splice(at..at, chunk);
        }
        if bad == bytes {
            continue;
        }
        tried += 1;
        assert!(
            !accepted(&bad),
            "splice of {len} bytes from {a} to {at} accepted"
        );
    }
}
