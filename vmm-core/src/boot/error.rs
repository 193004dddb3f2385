//! Why a kernel could not be loaded or a boot machine set up.

/// A direct-kernel-boot failure: a malformed image, inputs that do not fit in
/// guest memory, or a backend call that set up the boot machine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel image is neither a bzImage nor an x86-64 ELF file.
    #[error("the kernel image is not a bzImage (no \"HdrS\" setup header) nor an ELF file")]
    UnknownFormat,
    /// The image is shorter than its headers say.
    #[error("the kernel image is truncated: {0}")]
    Truncated(String),
    /// The setup header has a wrong magic value.
    #[error("bad bzImage setup header: {0}")]
    BadHeader(String),
    /// The kernel's boot protocol cannot be used for a 64-bit direct boot.
    #[error("unsupported boot protocol: {0}")]
    UnsupportedProtocol(String),
    /// The kernel, command line, initrd or boot tables do not fit in RAM.
    #[error("does not fit in guest memory: {0}")]
    NoRoom(String),
    /// The command line is not acceptable.
    #[error("bad kernel command line: {0}")]
    Cmdline(String),
    /// `linux-loader` refused the image.
    #[error("cannot load the kernel: {0}")]
    Loader(#[from] linux_loader::loader::Error),
    /// Writing boot data into guest memory failed.
    #[error("cannot write {what} to guest memory: {source}")]
    GuestMemory {
        /// What was being written.
        what: &'static str,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
    /// The execution backend failed to set up or refused a vCPU state.
    #[error(transparent)]
    Backend(#[from] hm_vmx::Error),
    /// The machine description asks for something the boot tables cannot say.
    #[error("unsupported machine: {0}")]
    Machine(String),
}

/// Result type of the boot module.
pub type Result<T> = std::result::Result<T, Error>;

/// Maps a guest-memory error to [`Error::GuestMemory`] for `what`.
pub(crate) fn mem_err(what: &'static str) -> impl FnOnce(vm_memory::GuestMemoryError) -> Error {
    move |source| Error::GuestMemory { what, source }
}
