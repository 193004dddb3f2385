//! Two VMs with identical RAM contents: a sharing scan deduplicates their
//! pages, and a write gives the writer its own copy again.
//!
//! `cargo run -p gmm --example sharing`

use gmm::{Gmm, GmmConfig, Reservation};

fn main() -> Result<(), gmm::Error> {
    let gmm = Gmm::new(GmmConfig::new(1 << 14))?;
    let res = Reservation {
        base: 512,
        ..Default::default()
    };
    let (a, b) = (gmm.register_vm("a", res)?, gmm.register_vm("b", res)?);
    let (ram_a, ram_b) = (a.create_ram_region(16)?, b.create_ram_region(16)?);
    ram_a.alloc(0, 16)?;
    ram_b.alloc(0, 16)?;
    for i in 0..16u64 {
        ram_a.write(i * 4096, &[i as u8 + 1; 4096])?;
        ram_b.write(i * 4096, &[i as u8 + 1; 4096])?;
    }
    let report = gmm.share_scan()?;
    println!("deduplicated {} pages", report.pages_deduplicated);
    println!("host pages saved: {}", gmm.stats().saved_pages);
    ram_b.write(0, b"mine")?;
    let mut page_a = [0u8; 4];
    ram_a.read(0, &mut page_a)?;
    println!("VM b wrote to its copy; VM a still reads {page_a:?}");
    Ok(())
}
