//! Prints one small registry in every output form.

use stam::{Registry, Unit};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let reg = Registry::new();
    reg.counter("/GMM/cChunks", Unit::Count, "Chunks allocated")?
        .add(5);
    reg.gauge_u64("/PGM/Page/cAllPages", Unit::Pages, "All pages")?
        .set(4096);
    reg.sample("/HM/LastExitQual", Unit::None, "Last exit qualification")
        .hex()
        .gauge::<u32>()?
        .set(0x1234);
    reg.flag("/PGM/A20", "A20 gate open")?.set(true);
    reg.ratio(
        "/PGM/CR3/HitsMisses",
        Unit::GoodBad,
        "CR3 cache hits:misses",
    )?
    .set(30, 2);
    let p = reg.profile("/HM/RunLoop", "Time in KVM_RUN")?;
    p.add_ns(1_500);
    p.add_ns(4_500);
    reg.callback("/GMM/cAllocated", Unit::Pages, "Pages allocated", || 42)?;
    let snap = reg.snapshot("");
    println!("{}", snap.to_text(true));
    println!("{}", snap.to_json()?);
    println!("{}", snap.to_prometheus());
    println!("{}", snap.to_xml(true));
    Ok(())
}
