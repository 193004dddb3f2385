use super::*;
use crate::boot::header::{KernelFormat, inspect};

#[test]
fn image_passes_the_loader_checks() {
    let image = build().unwrap();
    let KernelFormat::BzImage(info) = inspect(&image).unwrap() else {
        panic!("not a bzImage");
    };
    assert_eq!(info.load_addr, HIGH_MEMORY);
    assert_eq!(info.cmdline_size, u64::from(CMDLINE_SIZE));
    assert!(info.init_size >= info.payload_bytes);
}

#[test]
fn entry_64_is_at_0x200() {
    let image = build().unwrap();
    let payload = &image[1024..];
    // mov r15, rsi
    assert_eq!(&payload[0x200..0x203], &[0x49, 0x89, 0xf7]);
    assert_eq!(payload[0], 0xf4);
}

#[test]
fn checksum_wraps() {
    assert_eq!(initrd_sum(&[]), 0);
    assert_eq!(initrd_sum(&[0xff; 3]), 0x2fd);
}
