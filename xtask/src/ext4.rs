//! ext4 images built without root rights: a directory tree written by
//! [`Tree`], turned into a file system image by e2fsprogs' `mke2fs -d`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::tool;

/// The path of e2fsprogs' `tool` (`mke2fs`, `e2fsck`, `debugfs`).
pub fn e2fsprogs(tool: &str) -> anyhow::Result<PathBuf> {
    tool::find_program(tool, "e2fsprogs")
}

/// A directory tree that becomes the image's contents.
pub struct Tree {
    root: PathBuf,
}

impl Tree {
    /// Starts an empty tree at `root` (removing what was there).
    pub fn new(root: &Path) -> anyhow::Result<Tree> {
        if root.exists() {
            std::fs::remove_dir_all(root)
                .with_context(|| format!("cannot remove {}", root.display()))?;
        }
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create {}", root.display()))?;
        Ok(Tree {
            root: root.to_owned(),
        })
    }

    /// Adds an empty directory (and its parents).
    pub fn dir(&self, path: &str) -> anyhow::Result<()> {
        let at = self.root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&at).with_context(|| format!("cannot create {}", at.display()))
    }

    /// Adds a regular file with permission bits `perm`.
    pub fn file(&self, path: &str, perm: u32, data: &[u8]) -> anyhow::Result<()> {
        let at = self.parent_of(path)?;
        std::fs::write(&at, data).with_context(|| format!("cannot write {}", at.display()))?;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(perm))?;
        Ok(())
    }

    /// Adds a symbolic link at `path` pointing at `target`.
    pub fn symlink(&self, path: &str, target: &str) -> anyhow::Result<()> {
        let at = self.parent_of(path)?;
        std::os::unix::fs::symlink(target, &at)
            .with_context(|| format!("cannot link {}", at.display()))
    }

    /// `path` under the root, its parent directory created.
    fn parent_of(&self, path: &str) -> anyhow::Result<PathBuf> {
        let at = self.root.join(path.trim_start_matches('/'));
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent)?;
        }
        Ok(at)
    }

    /// Writes the tree as an ext4 image of `size` (as `mke2fs` takes it:
    /// `16M`) to `image`, root directory owned by root. `mke2fs` names
    /// every file it copies: that output is dropped, its errors are not.
    pub fn build(&self, image: &Path, size: &str) -> anyhow::Result<()> {
        tool::output(
            Command::new(e2fsprogs("mke2fs")?)
                .args([
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-E",
                    "root_owner=0:0",
                    "-L",
                    "vmm-root",
                ])
                .arg("-d")
                .arg(&self.root)
                .arg(image)
                .arg(size),
            Duration::from_secs(120),
        )
        .with_context(|| format!("mke2fs could not build {}", image.display()))?;
        Ok(())
    }

    /// Removes the tree.
    pub fn remove(self) -> anyhow::Result<()> {
        std::fs::remove_dir_all(&self.root)
            .with_context(|| format!("cannot remove {}", self.root.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_becomes_a_clean_ext4_image_with_its_files() {
        let dir = std::env::temp_dir().join(format!("xtask-ext4-{}", std::process::id()));
        let tree = Tree::new(&dir.join("tree")).unwrap();
        tree.file("bin/hello", 0o755, b"hello, disk\n").unwrap();
        tree.symlink("bin/sh", "hello").unwrap();
        tree.dir("proc").unwrap();
        let image = dir.join("root.ext4");
        tree.build(&image, "8M").unwrap();
        assert_eq!(std::fs::metadata(&image).unwrap().len(), 8 << 20);
        let fsck = Command::new(e2fsprogs("e2fsck").unwrap())
            .arg("-fn")
            .arg(&image)
            .output()
            .unwrap();
        assert!(fsck.status.success(), "{fsck:?}");
        let debugfs = e2fsprogs("debugfs").unwrap();
        let ask = |request: &str| {
            let out = Command::new(&debugfs)
                .args(["-R", request])
                .arg(&image)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert_eq!(ask("cat /bin/hello"), "hello, disk\n");
        let stat = ask("stat /bin/hello");
        assert!(stat.contains("Mode:  0755"), "{stat}");
        assert!(ask("stat /bin/sh").contains("Fast link dest: \"hello\""));
        assert!(ask("ls -l /").contains("proc"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_size_is_an_error() {
        let dir = std::env::temp_dir().join(format!("xtask-ext4-bad-{}", std::process::id()));
        let tree = Tree::new(&dir.join("tree")).unwrap();
        assert!(tree.build(&dir.join("x.ext4"), "lots").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
