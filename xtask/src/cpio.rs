//! Writes cpio archives in the "newc" format the kernel's initramfs
//! unpacker reads: directories, regular files, symbolic links and device
//! nodes, all owned by root, so that no root rights are needed to build one.

use std::collections::BTreeSet;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// A cpio "newc" archive being built.
///
/// Parent directories are added on demand (the kernel's unpacker does not
/// create them), each once.
#[derive(Default)]
pub struct Cpio {
    bytes: Vec<u8>,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    /// Adds a directory (and its parents) with mode 0755.
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_owned());
        self.entry(path, S_IFDIR | 0o755, &[], (0, 0));
    }

    /// Adds a regular file with permission bits `perm` (e.g. 0o755).
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.entry_in_dir(path, S_IFREG | perm, data, (0, 0));
    }

    /// Adds a symbolic link at `path` pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry_in_dir(path, S_IFLNK | 0o777, target.as_bytes(), (0, 0));
    }

    /// Adds a character device node with mode 0600.
    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) {
        self.entry_in_dir(path, S_IFCHR | 0o600, &[], (major, minor));
    }

    /// Ends the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.next_ino = 0;
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.bytes
    }

    fn entry_in_dir(&mut self, path: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        let path = path.trim_start_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entry(path, mode, data, rdev);
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.next_ino += 1;
        let nlink = if mode & 0o170_000 == S_IFDIR { 2 } else { 1 };
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for f in fields {
            self.bytes.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

/// One archive entry read back: name, mode, data, rdev.
#[cfg(test)]
pub type Entry = (String, u32, Vec<u8>, (u32, u32));

/// Reads a newc archive back (for tests).
#[cfg(test)]
pub fn parse(mut bytes: &[u8]) -> Vec<Entry> {
    let field = |h: &[u8], i: usize| {
        u32::from_str_radix(std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).unwrap(), 16).unwrap()
    };
    let align = |n: usize| n.div_ceil(4) * 4;
    let mut out = Vec::new();
    loop {
        assert_eq!(&bytes[..6], b"070701");
        let (mode, size, namesize) = (
            field(bytes, 1),
            field(bytes, 6) as usize,
            field(bytes, 11) as usize,
        );
        let rdev = (field(bytes, 9), field(bytes, 10));
        let name = String::from_utf8(bytes[110..110 + namesize - 1].to_vec()).unwrap();
        let data_at = align(110 + namesize);
        let data = bytes[data_at..data_at + size].to_vec();
        bytes = &bytes[align(data_at + size)..];
        if name == "TRAILER!!!" {
            assert!(bytes.is_empty());
            return out;
        }
        out.push((name, mode, data, rdev));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_read_back() {
        let mut cpio = Cpio::default();
        cpio.file("a", 0o644, b"12345");
        cpio.file("bcd", 0o644, b"");
        let bytes = cpio.finish();
        assert_eq!(bytes.len() % 4, 0);
        let entries = parse(&bytes);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].2, b"12345");
    }

    #[test]
    fn parents_come_first_and_once() {
        let mut cpio = Cpio::default();
        cpio.file("/usr/lib/x/libc.so", 0o755, b"elf");
        cpio.symlink("usr/lib/x/libc.so.6", "libc.so");
        cpio.char_dev("dev/console", 5, 1);
        let names: Vec<String> = parse(&cpio.finish()).into_iter().map(|e| e.0).collect();
        assert_eq!(
            names,
            [
                "usr",
                "usr/lib",
                "usr/lib/x",
                "usr/lib/x/libc.so",
                "usr/lib/x/libc.so.6",
                "dev",
                "dev/console"
            ]
        );
    }

    #[test]
    fn modes_and_devices_are_recorded() {
        let mut cpio = Cpio::default();
        cpio.char_dev("dev/console", 5, 1);
        cpio.symlink("bin/sh", "busybox");
        let entries = parse(&cpio.finish());
        let console = entries.iter().find(|e| e.0 == "dev/console").unwrap();
        assert_eq!((console.1, console.3), (S_IFCHR | 0o600, (5, 1)));
        let sh = entries.iter().find(|e| e.0 == "bin/sh").unwrap();
        assert_eq!((sh.1, sh.2.as_slice()), (S_IFLNK | 0o777, &b"busybox"[..]));
    }
}
