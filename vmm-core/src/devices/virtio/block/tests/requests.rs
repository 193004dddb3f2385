//! Requests one at a time: what each type does and how malformed ones end.

use virtio_bindings::virtio_blk::*;
use vm_memory::{Bytes, GuestAddress};

use super::*;

/// A 64-sector disk, its queue and a driver, for `$body`.
macro_rules! with_disk {
    ($read_only:expr, |$rig:ident, $q:ident, $d:ident| $body:block) => {{
        let $rig = Rig::new(64, $read_only);
        let mut $d = Driver::new(&$rig.mem);
        let mut $q = $rig.serve(&$d);
        $body
    }};
}

#[test]
fn written_sectors_read_back_and_reach_the_image() {
    with_disk!(false, |rig, q, d| {
        let data = pattern(0x40, 1024);
        let w = d.write(3, &data);
        q.process().unwrap();
        assert_eq!(d.one().len, 1);
        assert_eq!(d.status(w), OK);
        assert_eq!(&rig.image_bytes()[3 * 512..5 * 512], &data[..]);

        let r = d.read(3, 1024);
        q.process().unwrap();
        assert_eq!(d.one().len, 1024 + 1);
        assert_eq!(d.status(r), OK);
        assert_eq!(d.data(r, 1024), data);
        // Untouched sectors keep the image's pattern.
        let r = d.read(0, 512);
        q.process().unwrap();
        d.one();
        assert_eq!(d.data(r, 512), pattern(7, 512));

        assert_eq!(rig.stat("cWrites"), 1);
        assert_eq!(rig.stat("cReads"), 2);
        assert_eq!(rig.stat("cbWritten"), 1024);
        assert_eq!(rig.stat("cbRead"), 1536);
        assert_eq!(rig.stat("cErrors"), 0);
    });
}

#[test]
fn data_split_over_many_descriptors_of_odd_sizes() {
    let rig = Rig::new(1024, false);
    let mut d = Driver::new(&rig.mem);
    let mut q = rig.serve(&d);
    // 3 segments, 130.5 KiB, of sizes that are no multiple of a page.
    let s = d.slot();
    d.header(s, VIRTIO_BLK_T_IN, 1);
    let lens = [512u32, 0x2_0200, 1024];
    let mut at = s + 0x1000;
    let mut descs = vec![Desc::r(s, 16)];
    for len in lens {
        descs.push(Desc::w(at, len));
        at += u64::from(len);
    }
    descs.push(Desc::w(s + 0x10, 1));
    d.push(&descs);
    q.process().unwrap();
    let total: u32 = lens.iter().sum();
    assert_eq!(d.one().len, total + 1);
    assert_eq!(d.status(s), OK);
    let image = rig.image_bytes();
    assert_eq!(d.data(s, total as usize), &image[512..512 + total as usize]);
}

#[test]
fn a_header_and_status_framed_differently_still_work() {
    // Header and data in one readable descriptor, data and status in one
    // writable descriptor: virtio 1.x forbids assuming framing.
    with_disk!(false, |rig, q, d| {
        let s = d.slot();
        d.header(s, VIRTIO_BLK_T_OUT, 2);
        let data = pattern(1, 512);
        d.mem.write_slice(&data, GuestAddress(s + 16)).unwrap();
        d.push(&[Desc::r(s, 16 + 512), Desc::w(s + 0x10, 1)]);
        q.process().unwrap();
        assert_eq!(d.status(s), OK);
        assert_eq!(&rig.image_bytes()[1024..1536], &data[..]);

        let s = d.slot();
        d.header(s, VIRTIO_BLK_T_IN, 2);
        d.push(&[Desc::r(s, 16), Desc::w(s + 0x1000, 513)]);
        q.process().unwrap();
        d.completed();
        assert_eq!(d.data(s, 512), data);
        let status: u8 = d.mem.read_obj(GuestAddress(s + 0x1000 + 512)).unwrap();
        assert_eq!(status, OK);
    });
}

#[test]
fn flush_and_get_id() {
    with_disk!(false, |rig, q, d| {
        let f = d.command(VIRTIO_BLK_T_FLUSH);
        q.process().unwrap();
        assert_eq!(d.one().len, 1);
        assert_eq!(d.status(f), OK);
        assert_eq!(rig.stat("cFlushes"), 1);

        let s = d.slot();
        d.header(s, VIRTIO_BLK_T_GET_ID, 0);
        d.mem
            .write_slice(&[0xff; 20], GuestAddress(s + 0x1000))
            .unwrap();
        d.push(&[
            Desc::r(s, 16),
            Desc::w(s + 0x1000, 20),
            Desc::w(s + 0x10, 1),
        ]);
        q.process().unwrap();
        assert_eq!(d.one().len, 21);
        assert_eq!(d.status(s), OK);
        let mut id = b"blk0".to_vec();
        id.resize(20, 0);
        assert_eq!(d.data(s, 20), id);
    });
}

#[test]
fn discard_and_write_zeroes_leave_zeros_and_keep_the_size() {
    with_disk!(false, |rig, q, d| {
        let size = rig.image_bytes().len();
        let s = d.ranges(VIRTIO_BLK_T_DISCARD, &[(8, 8, 0)]);
        q.process().unwrap();
        assert_eq!(d.status(s), OK);
        let s = d.ranges(
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[(1, 2, 0), (20, 3, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)],
        );
        q.process().unwrap();
        assert_eq!(d.status(s), OK);
        assert_eq!(d.completed().len(), 2);
        let image = rig.image_bytes();
        assert_eq!(image.len(), size);
        let zero = |from: usize, sectors: usize| {
            image[from * 512..(from + sectors) * 512]
                .iter()
                .all(|b| *b == 0)
        };
        assert!(zero(8, 8) && zero(1, 2) && zero(20, 3));
        // Neighbours keep their bytes.
        assert_eq!(&image[0..512], &pattern(7, 512)[..]);
        assert_eq!(image[16 * 512], pattern(7, 16 * 512 + 1)[16 * 512]);
        assert_eq!(image[23 * 512], pattern(7, 23 * 512 + 1)[23 * 512]);

        // The read path sees the zeros too.
        let r = d.read(8, 4096);
        q.process().unwrap();
        d.one();
        assert!(d.data(r, 4096).iter().all(|b| *b == 0));
        assert_eq!(rig.stat("cDiscards"), 1);
        assert_eq!(rig.stat("cWriteZeroes"), 1);
    });
}

#[test]
fn bad_ranges_fail_before_anything_is_zeroed() {
    with_disk!(false, |rig, q, d| {
        let before = rig.image_bytes();
        // The second range runs past the end: the first is not done either.
        let s = d.ranges(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 0), (63, 2, 0)]);
        q.process().unwrap();
        assert_eq!(d.status(s), IOERR);
        // Discard with the unmap flag and unknown flags are unsupported.
        let s = d.ranges(VIRTIO_BLK_T_DISCARD, &[(0, 1, 1)]);
        q.process().unwrap();
        assert_eq!(d.status(s), UNSUPP);
        let s = d.ranges(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 2)]);
        q.process().unwrap();
        assert_eq!(d.status(s), UNSUPP);
        // An empty range list, one too many ranges, an overflowing sector.
        let s = d.ranges(VIRTIO_BLK_T_DISCARD, &[]);
        q.process().unwrap();
        assert_eq!(d.status(s), IOERR);
        let s = d.ranges(VIRTIO_BLK_T_DISCARD, &[(0, 1, 0); 33]);
        q.process().unwrap();
        assert_eq!(d.status(s), IOERR);
        let s = d.ranges(VIRTIO_BLK_T_DISCARD, &[(u64::MAX / 256, 8, 0)]);
        q.process().unwrap();
        assert_eq!(d.status(s), IOERR);
        assert_eq!(d.completed().len(), 6);
        assert_eq!(rig.image_bytes(), before);
        assert_eq!(rig.stat("cErrors"), 4);
        assert_eq!(rig.stat("cUnsupported"), 2);
    });
}

#[test]
fn a_read_only_disk_refuses_every_change() {
    with_disk!(true, |rig, q, d| {
        let before = rig.image_bytes();
        let w = d.write(0, &pattern(0x99, 512));
        let z = d.ranges(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 8, 0)]);
        let x = d.ranges(VIRTIO_BLK_T_DISCARD, &[(0, 8, 0)]);
        let r = d.read(0, 512);
        q.process().unwrap();
        assert_eq!(d.completed().len(), 4);
        assert_eq!([d.status(w), d.status(z), d.status(x)], [IOERR; 3]);
        assert_eq!(d.status(r), OK);
        assert_eq!(d.data(r, 512), pattern(7, 512));
        assert_eq!(rig.image_bytes(), before);
        assert_eq!(rig.stat("cErrors"), 3);
        assert_eq!(rig.stat("cbWritten"), 0);
    });
}

#[test]
fn sectors_past_the_end_are_io_errors() {
    with_disk!(false, |rig, q, d| {
        let before = rig.image_bytes();
        let last = d.read(63, 512);
        let over = d.read(63, 1024);
        let far = d.read(u64::MAX, 512);
        let wrap = d.write(u64::MAX / 512 + 1, &[1; 512]);
        let end = d.write(64, &[1; 512]);
        q.process().unwrap();
        assert_eq!(d.completed().len(), 5);
        assert_eq!(d.status(last), OK);
        for s in [over, far, wrap, end] {
            assert_eq!(d.status(s), IOERR);
        }
        assert_eq!(rig.image_bytes(), before);
    });
}

#[test]
fn a_missing_or_unwritable_status_consumes_the_request_with_length_zero() {
    with_disk!(false, |rig, q, d| {
        let s = d.slot();
        d.header(s, VIRTIO_BLK_T_FLUSH, 0);
        // No status descriptor at all; a readable one last; an empty one;
        // one outside guest RAM.
        d.push(&[Desc::r(s, 16)]);
        d.push(&[Desc::r(s, 16), Desc::r(s + 0x10, 1)]);
        d.push(&[Desc::r(s, 16), Desc::w(s + 0x10, 0)]);
        d.push(&[Desc::r(s, 16), Desc::w(RAM + 0x1000, 1)]);
        q.process().unwrap();
        let done = d.completed();
        assert_eq!(done.len(), 4);
        assert!(done.iter().all(|u| u.len == 0), "{done:?}");
        assert_eq!(d.status(s), 0xee, "no status written anywhere");
        assert_eq!(rig.stat("cErrors"), 4);
        assert_eq!(rig.irq.resets(), 0);
    });
}

#[test]
fn data_in_the_wrong_direction_is_an_io_error() {
    with_disk!(false, |rig, q, d| {
        let before = rig.image_bytes();
        // A read whose buffer is device-readable, a write whose buffer is
        // device-writable, a readable descriptor after a writable one, a
        // flush carrying data.
        let a = d.slot();
        d.header(a, VIRTIO_BLK_T_IN, 0);
        d.push(&[
            Desc::r(a, 16),
            Desc::r(a + 0x1000, 512),
            Desc::w(a + 0x10, 1),
        ]);
        let b = d.slot();
        d.header(b, VIRTIO_BLK_T_OUT, 0);
        d.push(&[
            Desc::r(b, 16),
            Desc::w(b + 0x1000, 512),
            Desc::w(b + 0x10, 1),
        ]);
        let c = d.slot();
        d.header(c, VIRTIO_BLK_T_OUT, 0);
        d.push(&[
            Desc::r(c, 16),
            Desc::w(c + 0x1000, 512),
            Desc::r(c + 0x2000, 512),
            Desc::w(c + 0x10, 1),
        ]);
        let f = d.slot();
        d.header(f, VIRTIO_BLK_T_FLUSH, 0);
        d.push(&[
            Desc::r(f, 16),
            Desc::r(f + 0x1000, 512),
            Desc::w(f + 0x10, 1),
        ]);
        q.process().unwrap();
        let done = d.completed();
        assert!(done.iter().all(|u| u.len == 1), "{done:?}");
        for s in [a, b, c, f] {
            assert_eq!(d.status(s), IOERR);
        }
        assert_eq!(rig.image_bytes(), before);
    });
}

#[test]
fn odd_lengths_short_headers_and_unknown_types() {
    with_disk!(false, |rig, q, d| {
        let zero = d.read(0, 0);
        let odd = d.read(0, 100);
        let short = d.slot();
        d.header(short, VIRTIO_BLK_T_IN, 0);
        d.push(&[Desc::r(short, 8), Desc::w(short + 0x10, 1)]);
        let unknown = d.command(99);
        let no_id_room = d.command(VIRTIO_BLK_T_GET_ID);
        q.process().unwrap();
        assert_eq!(d.completed().len(), 5);
        assert_eq!(d.status(zero), OK);
        assert_eq!(d.status(odd), IOERR);
        assert_eq!(d.status(short), IOERR);
        assert_eq!(d.status(unknown), UNSUPP);
        assert_eq!(d.status(no_id_room), IOERR);
        assert_eq!(rig.stat("cUnsupported"), 1);
    });
}

#[test]
fn huge_or_outside_buffers_fail_only_their_request() {
    with_disk!(false, |rig, q, d| {
        let before = rig.image_bytes();
        // A 4 GiB - 512 read into RAM of 4 MiB; a write from beyond RAM; a
        // buffer whose end wraps the address space.
        let huge = d.slot();
        d.header(huge, VIRTIO_BLK_T_IN, 0);
        d.push(&[
            Desc::r(huge, 16),
            Desc::w(huge + 0x1000, u32::MAX - 511),
            Desc::w(huge + 0x10, 1),
        ]);
        let outside = d.slot();
        d.header(outside, VIRTIO_BLK_T_OUT, 0);
        d.push(&[
            Desc::r(outside, 16),
            Desc::r(RAM - 256, 512),
            Desc::w(outside + 0x10, 1),
        ]);
        let wraps = d.slot();
        d.header(wraps, VIRTIO_BLK_T_IN, 0);
        d.push(&[
            Desc::r(wraps, 16),
            Desc::w(u64::MAX - 255, 512),
            Desc::w(wraps + 0x10, 1),
        ]);
        let fine = d.read(1, 512);
        q.process().unwrap();
        assert_eq!(d.completed().len(), 4);
        for s in [huge, outside, wraps] {
            assert_eq!(d.status(s), IOERR);
        }
        assert_eq!(d.status(fine), OK);
        assert_eq!(rig.image_bytes(), before);
        assert_eq!(rig.irq.resets(), 0);
    });
}
