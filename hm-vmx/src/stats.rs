//! Exit statistics: every exit counted under `/HM/Exit/<reason>`.

use std::fmt::{self, Write};

use stam::{Counter, Registry, Unit, Visibility};

use crate::exit::Exit;
use crate::vmx::ExitReason;

/// Exits that have no VMX basic exit reason, counted on their own.
const KVM_ONLY: [(&str, &str); 3] = [
    (
        "KvmInternalError",
        "KVM internal errors (exits KVM could not handle itself)",
    ),
    (
        "KvmSystemEvent",
        "KVM system events (guest-requested reset or shutdown)",
    ),
    ("KvmOther", "KVM exits the backend does not decode"),
];

/// One counter per VMX basic exit reason plus the KVM-only exits, shared by
/// every vCPU of a VM (the counters are sharded per thread, so EMTs do not
/// contend).
pub struct ExitStats {
    /// Indexed by the VMX basic exit reason number.
    by_reason: Vec<Option<Counter>>,
    kvm_only: [Counter; 3],
}

impl ExitStats {
    /// Registers the exit counters in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, stam::Error> {
        let max = ExitReason::ALL
            .iter()
            .map(|&r| r as usize)
            .max()
            .unwrap_or(0);
        let mut by_reason = vec![None; max + 1];
        for &reason in ExitReason::ALL {
            let counter = registry
                .sample(
                    format!("/HM/Exit/{reason:?}"),
                    Unit::Occurrences,
                    format!("VMX exit: {}", reason.name()),
                )
                .visibility(Visibility::Used)
                .counter()?;
            by_reason[reason as usize] = Some(counter);
        }
        let kvm_only = KVM_ONLY.map(|(name, description)| {
            registry
                .sample(format!("/HM/Exit/{name}"), Unit::Occurrences, description)
                .visibility(Visibility::Used)
                .counter()
        });
        let [a, b, c] = kvm_only;
        Ok(ExitStats {
            by_reason,
            kvm_only: [a?, b?, c?],
        })
    }

    /// Counts one exit.
    #[inline]
    pub fn count(&self, exit: &Exit<'_>) {
        let counter = match exit {
            Exit::InternalError(_) => &self.kvm_only[0],
            Exit::SystemEvent { .. } => &self.kvm_only[1],
            Exit::Other { .. } => &self.kvm_only[2],
            exit => match exit
                .vmx_reason()
                .and_then(|r| self.by_reason[r as usize].as_ref())
            {
                Some(counter) => counter,
                None => &self.kvm_only[2],
            },
        };
        counter.inc();
    }

    /// How many exits of `reason` were counted.
    pub fn get(&self, reason: ExitReason) -> u64 {
        self.by_reason[reason as usize]
            .as_ref()
            .map_or(0, Counter::get)
    }

    /// Writes the `exits` info table: every exit reason seen so far with its
    /// VMX number, name and count (`all` in `args` lists unseen reasons too).
    pub fn write_table(&self, args: &str, out: &mut dyn Write) -> fmt::Result {
        let all = args.split_whitespace().any(|a| a == "all");
        writeln!(out, "{:>4}  {:<40} {:>12}", "VMX", "exit reason", "count")?;
        let mut total = 0;
        for &reason in ExitReason::ALL {
            let n = self.get(reason);
            total += n;
            if n > 0 || all {
                writeln!(out, "{:>4}  {:<40} {n:>12}", reason as u16, reason.name())?;
            }
        }
        for ((name, _), counter) in KVM_ONLY.iter().zip(&self.kvm_only) {
            let n = counter.get();
            total += n;
            if n > 0 || all {
                writeln!(out, "{:>4}  {:<40} {n:>12}", "-", name)?;
            }
        }
        writeln!(out, "{:>4}  {:<40} {total:>12}", "", "total")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_counted_by_vmx_reason_and_listed() {
        let registry = Registry::new();
        let stats = ExitStats::register(&registry).unwrap();
        stats.count(&Exit::Hlt);
        stats.count(&Exit::Hlt);
        stats.count(&Exit::Shutdown);
        stats.count(&Exit::Other { kvm_reason: 99 });
        assert_eq!(stats.get(ExitReason::Hlt), 2);
        assert_eq!(registry.snapshot("/HM/Exit/Hlt").samples.len(), 1);
        let mut table = String::new();
        stats.write_table("", &mut table).unwrap();
        assert!(table.contains("  12  HLT"), "{table}");
        assert!(table.contains("   2  Triple fault"), "{table}");
        assert!(table.contains("KvmOther"), "{table}");
        assert!(!table.contains("CPUID"), "{table}");
        assert!(table.lines().last().unwrap().ends_with(" 4"), "{table}");
        let mut all = String::new();
        stats.write_table("all", &mut all).unwrap();
        assert!(all.contains("CPUID"));
    }
}
