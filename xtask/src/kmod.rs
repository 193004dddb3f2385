//! Loadable modules of a Debian kernel package, for an initramfs: the
//! modules asked for and everything they depend on, in load order,
//! decompressed.
//!
//! Debian's kernel packages ship no `modules.dep` (`depmod` writes it at
//! install time), so the dependencies come from each module's own
//! `.modinfo` section (`depends=a,b`), which is what `depmod` reads too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::tool;

/// A module ready for `insmod`.
pub struct Module {
    /// Its name as the kernel knows it (`virtio_pci`; dashes of the file
    /// name become underscores).
    pub name: String,
    /// The decompressed `.ko`.
    pub data: Vec<u8>,
}

/// The module named by a file `NAME.ko` or `NAME.ko.xz`, if it is one.
fn module_name(file: &str) -> Option<String> {
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))?;
    Some(stem.replace('-', "_"))
}

/// Every module file under `dir`, by module name.
fn index(dir: &Path, into: &mut BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index(&path, into)?;
        } else if let Some(name) = path
            .file_name()
            .and_then(|n| module_name(&n.to_string_lossy()))
        {
            into.insert(name, path);
        }
    }
    Ok(())
}

/// The modules `wanted` (by name) and their dependencies, found under the
/// module tree `tree` (`lib/modules/RELEASE/kernel`), each after the ones
/// it depends on. `.ko.xz` files are decompressed with `busybox unxz`.
pub fn with_dependencies(
    tree: &Path,
    wanted: &[&str],
    busybox: &Path,
) -> anyhow::Result<Vec<Module>> {
    let mut files = BTreeMap::new();
    index(tree, &mut files)?;
    let mut order = Vec::new();
    let mut visiting = BTreeSet::new();
    for name in wanted {
        visit(name, &files, busybox, &mut visiting, &mut order)
            .with_context(|| format!("module {name} of {}", tree.display()))?;
    }
    Ok(order)
}

/// Depth first: appends `name` to `order` after its dependencies.
fn visit(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    busybox: &Path,
    visiting: &mut BTreeSet<String>,
    order: &mut Vec<Module>,
) -> anyhow::Result<()> {
    if order.iter().any(|m| m.name == name) {
        return Ok(());
    }
    if !visiting.insert(name.to_owned()) {
        bail!("modules depend on each other in a circle through {name}");
    }
    let path = files
        .get(name)
        .with_context(|| format!("no module {name} (neither NAME.ko nor NAME.ko.xz)"))?;
    let data = read(path, busybox)?;
    let section = modinfo(&data).with_context(|| format!("{} has no .modinfo", path.display()))?;
    for dep in depends(section) {
        visit(&dep, files, busybox, visiting, order)
            .with_context(|| format!("needed by {name}"))?;
    }
    visiting.remove(name);
    order.push(Module {
        name: name.to_owned(),
        data,
    });
    Ok(())
}

/// A module file's contents, decompressed if it is `.xz`.
fn read(path: &Path, busybox: &Path) -> anyhow::Result<Vec<u8>> {
    if path.extension().is_some_and(|e| e == "xz") {
        return tool::output_bytes(
            Command::new(busybox).arg("unxz").arg("-c").arg(path),
            Duration::from_secs(120),
        );
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The `.modinfo` section of a little-endian ELF64 object.
fn modinfo(elf: &[u8]) -> Option<&[u8]> {
    let bytes = |at: usize, n: usize| elf.get(at..at.checked_add(n)?);
    let u16_at = |at| Some(u16::from_le_bytes(bytes(at, 2)?.try_into().ok()?) as usize);
    let u32_at = |at| Some(u32::from_le_bytes(bytes(at, 4)?.try_into().ok()?) as usize);
    let u64_at = |at| usize::try_from(u64::from_le_bytes(bytes(at, 8)?.try_into().ok()?)).ok();
    if bytes(0, 6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let header = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    let section = |i: usize| {
        let h = header(i)?;
        bytes(u64_at(h + 0x18)?, u64_at(h + 0x20)?)
    };
    let names = section(shstrndx)?;
    (0..shnum).find_map(|i| {
        let name_at = u32_at(header(i)?)?;
        let name = names.get(name_at..)?.split(|&b| b == 0).next()?;
        (name == b".modinfo").then(|| section(i)).flatten()
    })
}

/// The module names of the `depends=` entry of a `.modinfo` section.
fn depends(modinfo: &[u8]) -> Vec<String> {
    modinfo
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"depends="))
        .map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 object with a null section, `.modinfo` holding
    /// `info`, and the section-name table.
    fn object(info: &[u8]) -> Vec<u8> {
        let names = b"\0.modinfo\0.shstrtab\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let info_at = elf.len();
        elf.extend_from_slice(info);
        let names_at = elf.len();
        elf.extend_from_slice(names);
        let shoff = elf.len();
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        for (name, at, size) in [
            (0u32, 0, 0),
            (1, info_at, info.len()),
            (10, names_at, names.len()),
        ] {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(at as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        }
        elf
    }

    #[test]
    fn dependencies_come_from_modinfo() {
        let elf = object(b"license=GPL\0depends=virtio_ring,virtio\0vermagic=6.1\0");
        let section = modinfo(&elf).unwrap();
        assert_eq!(depends(section), ["virtio_ring", "virtio"]);
        assert!(depends(modinfo(&object(b"depends=\0")).unwrap()).is_empty());
        assert!(modinfo(b"\x7fELF\x01\x01").is_none());
        assert!(modinfo(&elf[..100]).is_none(), "a cut file has no sections");
    }

    #[test]
    fn modules_follow_their_dependencies() {
        let dir = std::env::temp_dir().join(format!("xtask-kmod-{}", std::process::id()));
        let sub = dir.join("drivers/virtio");
        std::fs::create_dir_all(&sub).unwrap();
        for (file, deps) in [
            ("virtio_ring.ko", ""),
            ("virtio.ko", "virtio_ring"),
            ("virtio_pci.ko", "virtio_ring,virtio"),
            ("virtio-rng.ko", "virtio,virtio_ring"),
            ("loop_a.ko", "loop_b"),
            ("loop_b.ko", "loop_a"),
        ] {
            let info = format!("depends={deps}\0");
            std::fs::write(sub.join(file), object(info.as_bytes())).unwrap();
        }
        let busybox = Path::new("/nonexistent");
        let names = |wanted: &[&str]| {
            with_dependencies(&dir, wanted, busybox)
                .map(|m| m.into_iter().map(|m| m.name).collect::<Vec<_>>())
        };
        assert_eq!(
            names(&["virtio_pci", "virtio_rng"]).unwrap(),
            ["virtio_ring", "virtio", "virtio_pci", "virtio_rng"]
        );
        assert!(names(&["missing"]).is_err());
        assert!(names(&["loop_a"]).is_err(), "a cycle is an error");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
