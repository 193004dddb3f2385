//! Plain data types in KVM's layouts that the backend's API carries, under
//! the backend's own names, so that users of `hm-vmx` need not name the
//! KVM crates.

/// One segment register: selector, base, limit and attributes (KVM's layout).
pub type Segment = kvm_bindings::kvm_segment;
/// A descriptor-table register (GDTR, IDTR): base and limit (KVM's layout).
pub type DescriptorTable = kvm_bindings::kvm_dtable;
/// A list of CPUID leaves as KVM takes them (`KVM_SET_CPUID2`).
pub type Cpuid = kvm_bindings::CpuId;
/// One CPUID leaf or subleaf: function, index, flags and EAX–EDX.
pub type CpuidEntry = kvm_bindings::kvm_cpuid_entry2;
/// The most leaves a [`Cpuid`] can hold.
pub const MAX_CPUID_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;
