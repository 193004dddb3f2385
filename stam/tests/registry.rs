//! Registry behaviour through the public API.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use stam::{Error, NameError, Registry, Unit, Value, Visibility};

#[test]
fn duplicate_and_invalid_names_are_errors() {
    let reg = Registry::new();
    reg.counter("/A/b", Unit::Count, "x").unwrap();
    assert_eq!(
        reg.gauge_u64("/A/b", Unit::Count, "y").unwrap_err(),
        Error::Duplicate("/A/b".into())
    );
    assert_eq!(
        reg.counter("A/b", Unit::Count, "x").unwrap_err(),
        Error::InvalidName {
            name: "A/b".into(),
            reason: NameError::NoLeadingSlash
        }
    );
    assert_eq!(
        reg.counter("/A/d", Unit::Count, " ").unwrap_err(),
        Error::NoDescription("/A/d".into())
    );
    assert!(matches!(
        reg.sample("/A/c", Unit::Count, "x").hex().counter(),
        Err(Error::HexNotSupported { .. })
    ));
    assert_eq!(reg.len(), 1);
}

#[test]
fn clones_share_samples() {
    let reg = Registry::new();
    let other = reg.clone();
    let c = reg.counter("/A", Unit::Count, "x").unwrap();
    c.add(3);
    assert_eq!(
        other.snapshot("/A").samples[0].value,
        Value::Counter { value: 3 }
    );
}

#[test]
fn reset_semantics_per_type() {
    let reg = Registry::new();
    let counter = reg.counter("/c", Unit::Count, "d").unwrap();
    let gauge = reg.gauge::<u16>("/g", Unit::Count, "d").unwrap();
    let gauge_r: stam::Gauge<u8> = reg
        .sample("/gr", Unit::Count, "d")
        .resettable(true)
        .gauge()
        .unwrap();
    let flag = reg.flag("/f", "d").unwrap();
    let flag_r = reg
        .sample("/fr", Unit::None, "d")
        .resettable(true)
        .flag()
        .unwrap();
    let profile = reg.profile("/p", "d").unwrap();
    let ratio = reg.ratio("/r", Unit::GoodBad, "d").unwrap();
    let ratio_r = reg
        .sample("/rr", Unit::GoodBad, "d")
        .resettable(true)
        .ratio()
        .unwrap();
    let backing = Arc::new(AtomicU64::new(9));
    let (b1, b2) = (Arc::clone(&backing), Arc::clone(&backing));
    reg.sample("/cb", Unit::Count, "d")
        .callback_with_reset(
            move || b1.load(Ordering::Relaxed),
            move || b2.store(0, Ordering::Relaxed),
        )
        .unwrap();
    reg.callback("/cb2", Unit::Count, "d", || 5).unwrap();
    let counter_keep = reg
        .sample("/ck", Unit::Count, "d")
        .resettable(false)
        .counter()
        .unwrap();

    counter.add(4);
    counter_keep.add(4);
    gauge.set(7);
    gauge_r.set(7);
    flag.set(true);
    flag_r.set(true);
    profile.add_ns(10);
    profile.add_ns(30);
    ratio.set(1, 2);
    ratio_r.set(1, 2);

    // counter, gauge_r, flag_r, profile, ratio_r, cb
    assert_eq!(reg.reset(""), 6);
    assert_eq!(counter.get(), 0);
    assert_eq!(counter_keep.get(), 4);
    assert_eq!(gauge.get(), 7);
    assert_eq!(gauge_r.get(), 0);
    assert!(flag.get());
    assert!(!flag_r.get());
    let p = profile.stats();
    assert_eq!(
        (p.periods, p.total_ns, p.min_ns, p.max_ns),
        (0, 0, u64::MAX, 0)
    );
    assert_eq!(ratio.get(), (1, 2));
    assert_eq!(ratio_r.get(), (0, 0));
    assert_eq!(backing.load(Ordering::Relaxed), 0);

    // After a reset the minimum tracks again from its maximum.
    profile.add_ns(50);
    assert_eq!(profile.stats().min_ns, 50);
}

#[test]
fn reset_only_touches_matching_samples() {
    let reg = Registry::new();
    let a = reg.counter("/A/x", Unit::Count, "d").unwrap();
    let b = reg.counter("/B/x", Unit::Count, "d").unwrap();
    a.inc();
    b.inc();
    assert_eq!(reg.reset("/A/*"), 1);
    assert_eq!((a.get(), b.get()), (0, 1));
}

#[test]
fn snapshot_filters_by_pattern_and_visibility() {
    let reg = Registry::new();
    for n in ["/PGM/a", "/PGM/b", "/GMM/a", "/HM/a"] {
        reg.counter(n, Unit::Count, "d").unwrap();
    }
    let used = reg
        .sample("/PGM/used", Unit::Count, "d")
        .visibility(Visibility::Used)
        .counter()
        .unwrap();
    let names = |s: stam::Snapshot| {
        s.samples
            .iter()
            .map(|s| s.name.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(reg.snapshot("/PGM/*")), ["/PGM/a", "/PGM/b"]);
    assert_eq!(
        names(reg.snapshot_all("/PGM/*")),
        ["/PGM/a", "/PGM/b", "/PGM/used"]
    );
    used.inc();
    assert_eq!(names(reg.snapshot("/PGM/u*")), ["/PGM/used"]);
    assert_eq!(names(reg.snapshot("/HM/*|/GMM/?")), ["/GMM/a", "/HM/a"]);
    assert_eq!(reg.snapshot("").samples.len(), 5);
    assert!(reg.snapshot("/Nothing*").samples.is_empty());
}

#[test]
fn callbacks_may_use_the_registry() {
    let reg = Registry::new();
    let inner = reg.clone();
    reg.callback("/count", Unit::Count, "samples", move || inner.len() as u64)
        .unwrap();
    reg.counter("/other", Unit::Count, "d").unwrap();
    assert_eq!(
        reg.snapshot("/count").samples[0].value,
        Value::Callback {
            value: 2,
            hex: false
        }
    );
}

#[test]
fn remove_detaches_samples() {
    let reg = Registry::new();
    let c = reg.counter("/A/x", Unit::Count, "d").unwrap();
    reg.counter("/A/y", Unit::Count, "d").unwrap();
    reg.counter("/B/y", Unit::Count, "d").unwrap();
    assert!(reg.remove("/A/x"));
    assert!(!reg.remove("/A/x"));
    c.inc();
    assert_eq!(reg.remove_matching("*/y"), 2);
    assert!(reg.is_empty());
    // The name is free again.
    reg.counter("/A/x", Unit::Count, "d").unwrap();
}

#[test]
fn counters_sum_over_threads() {
    let reg = Registry::new();
    let c = reg.counter("/c", Unit::Count, "d").unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || (0..10_000).for_each(|_| c.inc()))
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(c.get(), 40_000);
}

#[test]
fn gauges_wrap_at_their_width() {
    let reg = Registry::new();
    let g = reg.gauge::<u8>("/g", Unit::Count, "d").unwrap();
    g.set(255);
    g.inc();
    assert_eq!(g.get(), 0);
    g.dec();
    assert_eq!(
        reg.snapshot("/g").samples[0].value,
        Value::Gauge {
            value: 255,
            bits: 8,
            hex: false
        }
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A profile's aggregate equals the folded periods, across any number of threads.
    #[test]
    fn profile_aggregates(periods in proptest::collection::vec(0u64..1_000_000, 0..40), split in 0usize..40) {
        let reg = Registry::new();
        let p = reg.profile("/p", "d").unwrap();
        let (first, second) = periods.split_at(split.min(periods.len()));
        let second = second.to_vec();
        let q = p.clone();
        let t = std::thread::spawn(move || second.iter().for_each(|&ns| q.add_ns(ns)));
        first.iter().for_each(|&ns| p.add_ns(ns));
        t.join().unwrap();
        let s = p.stats();
        prop_assert_eq!(s.periods, periods.len() as u64);
        prop_assert_eq!(s.total_ns, periods.iter().sum::<u64>());
        prop_assert_eq!(s.min_ns, periods.iter().copied().min().unwrap_or(u64::MAX));
        prop_assert_eq!(s.max_ns, periods.iter().copied().max().unwrap_or(0));
    }

    /// Snapshot by pattern returns exactly the registered names the pattern matches, sorted.
    #[test]
    fn snapshot_is_filter_of_all(names in proptest::collection::btree_set("/[ab]{1,3}(/[ab]{1,2})?", 0..20),
                                 pattern in "[ab/*?|]{0,8}") {
        let reg = Registry::new();
        for n in &names {
            reg.counter(n.as_str(), Unit::Count, "d").unwrap();
        }
        let p = stam::Pattern::new(&pattern);
        let want: Vec<&str> = names.iter().map(String::as_str).filter(|n| p.matches(n)).collect();
        let snap = reg.snapshot(&pattern);
        let got: Vec<&str> = snap.samples.iter().map(|s| &*s.name).collect();
        prop_assert_eq!(got, want);
    }
}

mod common;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A reset zeroes exactly the resettable samples (a profile's minimum
    /// back to its maximum) and leaves every other sample as it was.
    #[test]
    fn reset_zeroes_exactly_the_resettable(entries in common::entries()) {
        let reg = common::build(&entries);
        let before = reg.snapshot_all("");
        let resettable = before.samples.iter().filter(|s| s.resettable).count();
        prop_assert_eq!(reg.reset(""), resettable);
        let after = reg.snapshot_all("");
        for (b, a) in before.samples.iter().zip(&after.samples) {
            if !b.resettable {
                prop_assert_eq!(&a.value, &b.value);
                continue;
            }
            match &a.value {
                Value::Profile { periods, total_ns, min_ns, max_ns } => {
                    prop_assert_eq!((*periods, *total_ns, *min_ns, *max_ns), (0, 0, u64::MAX, 0));
                }
                Value::Callback { .. } => {} // no reset hook in these registries
                v => prop_assert!(v.is_zero(), "{} not reset: {:?}", a.name, v),
            }
        }
    }
}
