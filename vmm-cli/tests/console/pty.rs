//! A pseudo-terminal for a child process: the child gets its slave side as
//! stdin, stdout, stderr and controlling terminal (so that, were the
//! terminal's signals on, Ctrl-C would send it SIGINT); the test types on
//! the master side and reads what the child shows.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::support::Vmm;

/// How long to wait for a text on the screen.
const DEADLINE: Duration = Duration::from_secs(40);

/// Everything the child wrote to the terminal.
#[derive(Clone, Default)]
pub struct Screen(Arc<Mutex<Vec<u8>>>);

impl Screen {
    /// The screen so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Polls until the screen shows `needle`; panics if `vm` exits first
    /// or after [`DEADLINE`].
    pub fn wait_for(&self, vm: &mut Vmm, needle: &str) {
        let start = Instant::now();
        while !self.text().contains(needle) {
            if let Some(status) = vm.child.try_wait().unwrap() {
                panic!("vmm exited ({status}) before {needle:?}:\n{}", self.text());
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {needle:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A pseudo-terminal; a thread copies the master's output to a [`Screen`].
pub struct Pty {
    master: Arc<OwnedFd>,
    slave: OwnedFd,
    screen: Screen,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

fn check(result: libc::c_int, what: &str) -> libc::c_int {
    assert!(result >= 0, "{what}: {}", std::io::Error::last_os_error());
    result
}

impl Pty {
    /// Opens a new pseudo-terminal (in its default, cooked mode).
    pub fn open() -> Pty {
        // SAFETY: plain libc calls on a descriptor this function owns; the
        // name buffer is valid for its length and NUL-terminated by
        // ptsname_r on success.
        let (master, slave) = unsafe {
            let master = check(
                libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY),
                "posix_openpt",
            );
            let master = OwnedFd::from_raw_fd(master);
            check(libc::grantpt(master.as_raw_fd()), "grantpt");
            check(libc::unlockpt(master.as_raw_fd()), "unlockpt");
            let mut name = [0 as libc::c_char; 128];
            assert_eq!(
                libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()),
                0,
                "ptsname_r"
            );
            let slave = check(
                libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY),
                "open the pty's slave",
            );
            (master, OwnedFd::from_raw_fd(slave))
        };
        let master = Arc::new(master);
        let screen = Screen::default();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (master, screen, stop) = (Arc::clone(&master), screen.clone(), Arc::clone(&stop));
            std::thread::spawn(move || copy_to_screen(&master, &screen, &stop))
        };
        Pty {
            master,
            slave,
            screen,
            stop,
            reader: Some(reader),
        }
    }

    /// The terminal's settings now.
    pub fn settings(&self) -> libc::termios {
        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr fills the struct on success (checked).
        unsafe {
            check(
                libc::tcgetattr(self.slave.as_raw_fd(), termios.as_mut_ptr()),
                "tcgetattr",
            );
            termios.assume_init()
        }
    }

    /// Makes the terminal `command`'s stdin, stdout, stderr and
    /// controlling terminal (in a session of its own).
    pub fn controlling_terminal_of(&self, command: &mut Command) {
        let fd = || Stdio::from(self.slave.try_clone().unwrap());
        command.stdin(fd()).stdout(fd()).stderr(fd());
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only async-signal-safe functions (setsid, ioctl).
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() == -1 || libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// What the child wrote so far, and will write.
    pub fn screen(&self) -> Screen {
        self.screen.clone()
    }

    /// Types `keys` on the terminal.
    pub fn type_keys(&self, keys: &[u8]) {
        // SAFETY: `keys` is valid for reads of its length.
        let written =
            unsafe { libc::write(self.master.as_raw_fd(), keys.as_ptr().cast(), keys.len()) };
        assert_eq!(usize::try_from(written).ok(), Some(keys.len()), "typing");
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Copies the master's output to `screen` until `stop`.
fn copy_to_screen(master: &OwnedFd, screen: &Screen, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let mut fd = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; `buf` is valid for writes of its length.
        let n = unsafe {
            if libc::poll(&mut fd, 1, 50) <= 0 {
                continue;
            }
            libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
        };
        match usize::try_from(n) {
            Ok(n) if n > 0 => screen.0.lock().unwrap().extend_from_slice(&buf[..n]),
            // No child holds the slave side now (EIO) or nothing was there.
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
