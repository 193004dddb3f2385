//! Random registries holding every sample type, shared by the integration tests.

use proptest::prelude::*;
use stam::{Registry, Unit};

/// One sample to register: a type, its value(s) and its options.
#[derive(Debug, Clone)]
pub enum Spec {
    Counter(u64),
    Gauge8(u8, bool),
    Gauge16(u16, bool),
    Gauge32(u32, bool),
    Gauge64(u64, bool),
    Flag(bool),
    Profile(Vec<u64>),
    Ratio(u32, u32),
    Callback(u64, bool),
}

pub fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        any::<u64>().prop_map(Spec::Counter),
        (any::<u8>(), any::<bool>()).prop_map(|(v, h)| Spec::Gauge8(v, h)),
        (any::<u16>(), any::<bool>()).prop_map(|(v, h)| Spec::Gauge16(v, h)),
        (any::<u32>(), any::<bool>()).prop_map(|(v, h)| Spec::Gauge32(v, h)),
        (any::<u64>(), any::<bool>()).prop_map(|(v, h)| Spec::Gauge64(v, h)),
        any::<bool>().prop_map(Spec::Flag),
        proptest::collection::vec(0u64..10_000_000_000, 0..4).prop_map(Spec::Profile),
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| Spec::Ratio(a, b)),
        (any::<u64>(), any::<bool>()).prop_map(|(v, h)| Spec::Callback(v, h)),
    ]
}

pub fn unit() -> impl Strategy<Value = Unit> {
    proptest::sample::select(Unit::ALL.to_vec())
}

pub type Entry = (String, Unit, String, bool, Spec);

pub fn entries() -> impl Strategy<Value = Vec<Entry>> {
    let names = prop_oneof![
        "/[A-Za-z][A-Za-z0-9 _.<>&\"'-]{0,12}(/[A-Za-z0-9é]{1,6}){0,2}",
        // Words that Prometheus' naming lints care about.
        "(/(ms|s|b|Kb|kilobytes|MilliSeconds|Gauge|counter|total|count|sum|bucket|Minutes|bits|x|cPages|R3|a:b)){1,4}",
    ];
    proptest::collection::btree_map(
        names,
        (unit(), "[A-Za-z][ -~é\n\t]{0,20}", any::<bool>(), spec()),
        1..12,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(n, (u, d, r, s))| (n, u, d, r, s))
            .collect()
    })
}

pub fn build(entries: &[Entry]) -> Registry {
    let reg = Registry::new();
    for (name, unit, desc, resettable, spec) in entries {
        let b = reg
            .sample(name.as_str(), *unit, desc.as_str())
            .resettable(*resettable);
        match spec {
            Spec::Counter(v) => b.counter().unwrap().add(*v),
            Spec::Gauge8(v, h) => hexed(*h, b).gauge::<u8>().unwrap().set(*v),
            Spec::Gauge16(v, h) => hexed(*h, b).gauge::<u16>().unwrap().set(*v),
            Spec::Gauge32(v, h) => hexed(*h, b).gauge::<u32>().unwrap().set(*v),
            Spec::Gauge64(v, h) => hexed(*h, b).gauge::<u64>().unwrap().set(*v),
            Spec::Flag(v) => b.flag().unwrap().set(*v),
            Spec::Profile(periods) => {
                let p = b.profile().unwrap();
                periods.iter().for_each(|&ns| p.add_ns(ns));
            }
            Spec::Ratio(a, c) => b.ratio().unwrap().set(*a, *c),
            Spec::Callback(v, h) => {
                let v = *v;
                hexed(*h, b).callback(move || v).unwrap()
            }
        }
    }
    reg
}

pub fn hexed(hex: bool, b: stam::SampleBuilder<'_>) -> stam::SampleBuilder<'_> {
    if hex { b.hex() } else { b }
}
