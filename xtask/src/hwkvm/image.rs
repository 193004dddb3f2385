//! L1's initramfs: busybox, the KVM modules, the L2 guest, and host
//! binaries (`vmm`, gdb, test binaries) with the shared libraries they
//! load, debug information stripped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::cpio::Cpio;
use crate::tool;

/// An L1 initramfs being built.
pub struct Image {
    cpio: Cpio,
    scratch: PathBuf,
}

impl Image {
    /// Starts an image with busybox as `/bin/sh` and `/init`; `scratch` is
    /// a directory for stripped copies.
    pub fn new(busybox: &[u8], init: &str, scratch: &Path) -> anyhow::Result<Image> {
        std::fs::create_dir_all(scratch)?;
        let mut cpio = Cpio::default();
        for dir in ["dev", "proc", "sys", "tmp", "root"] {
            cpio.dir(dir);
        }
        cpio.char_dev("dev/console", 5, 1);
        cpio.file("bin/busybox", 0o755, busybox);
        cpio.symlink("bin/sh", "busybox");
        cpio.file("init", 0o755, init.as_bytes());
        Ok(Image {
            cpio,
            scratch: scratch.to_owned(),
        })
    }

    /// Adds a file.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.cpio.file(path, perm, data);
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.cpio.symlink(path, target);
    }

    /// Adds the host executable `src` at `dest` without its debug
    /// information, and every shared library `ldd` says it loads, at the
    /// same paths as on the host.
    pub fn executable(&mut self, src: &Path, dest: &str) -> anyhow::Result<()> {
        let name = src
            .file_name()
            .context("an executable path has a file name")?;
        let stripped = self.scratch.join(name);
        tool::run(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(src)
                .arg(&stripped),
            Duration::from_secs(300),
        )
        .context("objcopy (binutils) strips the binaries for L1")?;
        let data = std::fs::read(&stripped)?;
        self.cpio.file(dest, 0o755, &data);
        std::fs::remove_file(&stripped)?;
        for lib in shared_libraries(src)? {
            let data =
                std::fs::read(&lib).with_context(|| format!("cannot read {}", lib.display()))?;
            self.cpio.file(&lib.to_string_lossy(), 0o755, &data);
        }
        Ok(())
    }

    /// Ends the archive.
    pub fn finish(self) -> Vec<u8> {
        self.cpio.finish()
    }
}

/// The shared libraries `ldd` lists for `binary` (none for a static one).
/// A library `ldd` cannot find is an error naming it.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(missing) = text.lines().find(|l| l.contains("not found")) {
        anyhow::bail!(
            "{} needs a library this machine lacks: {}",
            binary.display(),
            missing.trim()
        );
    }
    Ok(text
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::parse;

    #[test]
    fn a_dynamic_binary_brings_its_libraries() {
        let scratch = std::env::temp_dir().join(format!("hwkvm-image-{}", std::process::id()));
        let mut image = Image::new(b"bb", "#!/bin/sh\n", &scratch).unwrap();
        image
            .executable(Path::new("/bin/sh"), "bin/hostsh")
            .unwrap();
        let entries = parse(&image.finish());
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert!(names.contains(&"bin/hostsh"), "{names:?}");
        assert!(
            names.iter().any(|n| n.contains("libc.so")),
            "the C library travels with the binary: {names:?}"
        );
        assert!(names.contains(&"init") && names.contains(&"dev/console"));
        std::fs::remove_dir_all(&scratch).unwrap();
    }
}
