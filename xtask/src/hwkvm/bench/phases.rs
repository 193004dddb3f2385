//! The phases of one boot, read from the guest's serial lines and the
//! times (since the VMM was spawned) at which they reached the host.
//!
//! The guest kernel stamps its messages with its own clock (`[   1.234567]`,
//! `printk.time`, on in Debian's kernels), which starts early in
//! `setup_arch`, after the decompressor ran. Its serial console comes up
//! later and first replays what was stamped before; from then on each
//! message is written as it is made. A message reaches the host no earlier
//! than it was stamped, so the earliest `arrival - stamp` (at the line the
//! console printed once it was live) places the kernel's time zero on the
//! host's clock. After that line the arrival times are the better clock:
//! until Linux picks its clocksource, its stamps follow the timer ticks,
//! which the nested emulation delivers late, and fall seconds behind.

use std::time::Duration;

use anyhow::{Context, bail};

/// The kernel message that ends its own initialization: it is about to
/// start the initramfs' init.
const RUN_INIT: &str = "Run /init as init process";

/// One line of serial output and when the host read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Time since the VMM was spawned.
    pub at: Duration,
    /// The line, without its line end.
    pub text: String,
}

/// Where one boot spent its time, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phases {
    /// Spawn to the kernel's time zero: the VMM's setup, firmware, loading
    /// and decompressing the kernel, its first steps.
    pub setup: f64,
    /// The kernel's time zero to "Run /init": kernel initialization with
    /// device probing.
    pub kernel: f64,
    /// "Run /init" to the userspace marker: the init up to the marker.
    pub init: f64,
    /// Spawn to the marker.
    pub total: f64,
}

/// A long pause between two kernel messages: the seconds that passed
/// before `line` was printed.
#[derive(Debug, Clone, PartialEq)]
pub struct Gap {
    /// Seconds since the previous kernel message.
    pub seconds: f64,
    /// The message printed after the pause.
    pub line: String,
}

/// The kernel's timestamp of a message line (`[    1.234567] text`), in
/// seconds, with the text after it.
pub fn stamp(line: &str) -> Option<(f64, &str)> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (number, text) = rest.split_once(']')?;
    let number = number.trim();
    if !number.contains('.') {
        return None;
    }
    let seconds = number.parse::<f64>().ok()?;
    Some((seconds, text.strip_prefix(' ').unwrap_or(text)))
}

/// A kernel message: when it arrived, its stamp, its text.
struct Stamped<'a> {
    at: f64,
    stamp: f64,
    text: &'a str,
}

/// The kernel's messages in `lines`, and the index of the first one with
/// the least `arrival - stamp` (from there on the console is live).
fn kernel_messages(lines: &[Line]) -> (Vec<Stamped<'_>>, Option<usize>) {
    let messages: Vec<Stamped> = lines
        .iter()
        .filter_map(|l| {
            stamp(&l.text).map(|(stamp, text)| Stamped {
                at: l.at.as_secs_f64(),
                stamp,
                text,
            })
        })
        .collect();
    let live = (0..messages.len()).min_by(|&a, &b| {
        let offset = |i: usize| messages[i].at - messages[i].stamp;
        offset(a).total_cmp(&offset(b))
    });
    (messages, live)
}

/// The phases of a boot whose serial output was `lines`, up to and with
/// the line containing `marker`.
pub fn phases(lines: &[Line], marker: &str) -> anyhow::Result<Phases> {
    let marker_at = lines
        .iter()
        .find(|l| l.text.contains(marker))
        .with_context(|| format!("the guest never printed {marker:?}"))?
        .at
        .as_secs_f64();
    let (messages, live) = kernel_messages(lines);
    let Some(live) = live else {
        bail!("the kernel's messages carry no timestamps (printk.time=1 missing?)");
    };
    let zero = (messages[live].at - messages[live].stamp).max(0.0);
    let run_init = messages
        .iter()
        .find(|m| m.text.contains(RUN_INIT))
        .with_context(|| format!("the kernel never printed {RUN_INIT:?}"))?
        .at;
    Ok(Phases {
        setup: zero,
        kernel: run_init - zero,
        init: marker_at - run_init,
        total: marker_at,
    })
}

/// The `n` longest pauses between consecutive kernel messages, longest
/// first: by their stamps up to the console's going live (the replay
/// arrives in a burst), by their arrival after it.
pub fn slowest(lines: &[Line], n: usize) -> Vec<Gap> {
    let (messages, live) = kernel_messages(lines);
    let live = live.unwrap_or(messages.len());
    let mut gaps: Vec<Gap> = (1..messages.len())
        .map(|i| {
            let (a, b) = (&messages[i - 1], &messages[i]);
            Gap {
                seconds: if i > live {
                    b.at - a.at
                } else {
                    b.stamp - a.stamp
                },
                line: b.text.to_owned(),
            }
        })
        .collect();
    gaps.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    gaps.truncate(n);
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKER: &str = "VMM-GUEST-LINUX: reached userspace";

    /// A captured boot: (host seconds since spawn, serial line). The
    /// console came up at 0.512, replaying the first messages in a burst;
    /// later stamps fall behind the arrivals (late ticks).
    const BOOT: &[(f64, &str)] = &[
        (1.90, "[    0.000000] Linux version 6.1.0-48-cloud-amd64"),
        (1.91, "[    0.000000] Command line: console=ttyS0"),
        (1.93, "[    0.052000] tsc: Detected 2994.374 MHz processor"),
        (1.95, "[    0.512000] printk: console [ttyS0] enabled"),
        (2.40, "[    0.910000] i8042: PNP: No PS/2 controller found."),
        (
            3.10,
            "[    1.600000] serio: i8042 KBD port at 0x60,0x64 irq 1",
        ),
        (3.30, "[    1.790000] Run /init as init process"),
        (3.31, ""),
        (3.50, "VMM-GUEST-LINUX: reached userspace"),
    ];

    fn lines() -> Vec<Line> {
        BOOT.iter()
            .map(|(at, text)| Line {
                at: Duration::from_secs_f64(*at),
                text: text.to_string(),
            })
            .collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn the_boot_splits_into_setup_kernel_and_init() {
        let p = phases(&lines(), MARKER).unwrap();
        // Earliest arrival - stamp: 1.95 - 0.512 = 1.438 (the console's
        // own message, printed as it came up); "Run /init" arrived at 3.30.
        assert!(close(p.setup, 1.438), "{p:?}");
        assert!(close(p.kernel, 3.30 - 1.438), "{p:?}");
        assert!(close(p.init, 0.20), "{p:?}");
        assert!(close(p.total, 3.50), "{p:?}");
        assert!(close(p.setup + p.kernel + p.init, p.total));
    }

    #[test]
    fn timestamps_are_read_and_other_lines_are_not() {
        assert_eq!(stamp("[    1.790000] Run /init"), Some((1.79, "Run /init")));
        assert_eq!(stamp("[12345.5] x"), Some((12345.5, "x")));
        assert_eq!(stamp("VMM-GUEST-LINUX: reached userspace"), None);
        assert_eq!(stamp("[ OK ] Started"), None);
        assert_eq!(stamp("[1] x"), None);
    }

    #[test]
    fn the_longest_pauses_come_first() {
        let gaps = slowest(&lines(), 2);
        assert_eq!(gaps.len(), 2);
        // After the console went live, by arrival (3.10 - 2.40), not by
        // stamp (0.69); before, by stamp (the replay's 0.46).
        assert!(close(gaps[0].seconds, 0.70));
        assert_eq!(gaps[0].line, "serio: i8042 KBD port at 0x60,0x64 irq 1");
        assert!(close(gaps[1].seconds, 0.46));
        assert_eq!(gaps[1].line, "printk: console [ttyS0] enabled");
    }

    #[test]
    fn a_boot_without_marker_or_timestamps_is_an_error() {
        let mut no_marker = lines();
        no_marker.pop();
        let e = phases(&no_marker, MARKER).unwrap_err().to_string();
        assert!(e.contains("never printed"), "{e}");
        let plain: Vec<Line> = lines()
            .into_iter()
            .map(|l| Line {
                text: stamp(&l.text).map_or(l.text.clone(), |(_, t)| t.to_owned()),
                ..l
            })
            .collect();
        let e = phases(&plain, MARKER).unwrap_err().to_string();
        assert!(e.contains("no timestamps"), "{e}");
        let no_init: Vec<Line> = lines()
            .into_iter()
            .filter(|l| !l.text.contains(RUN_INIT))
            .collect();
        let e = phases(&no_init, MARKER).unwrap_err().to_string();
        assert!(e.contains("Run /init"), "{e}");
    }
}
