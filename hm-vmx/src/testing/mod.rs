//! Support for tests: a check for tests that need `/dev/kvm`, and a
//! scripted vCPU for those that must not.

mod scripted;

pub use scripted::{ScriptedExit, ScriptedVcpu};

/// Whether tests that boot guests can run here.
///
/// Returns `true` when KVM is usable. When it is not, prints a loud notice
/// and returns `false` so that the caller can skip — except under `CI=true`,
/// where a missing KVM is a failure and this panics.
///
/// ```
/// if !hm_vmx::testing::kvm_available("my_test") {
///     return;
/// }
/// ```
pub fn kvm_available(test: &str) -> bool {
    match crate::Hypervisor::open() {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: KVM is required under CI=true but is not usable: {e}");
            }
            eprintln!("!!! SKIPPED {test}: KVM is not usable on this host ({e}) !!!");
            false
        }
    }
}
