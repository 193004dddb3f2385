//! Reading the lane's console: the steps the L1 init ran, the libtest
//! summaries they printed, and the command's status.

/// A step marker line: `HWKVM-STEP-BEGIN <name>`.
pub const BEGIN: &str = "HWKVM-STEP-BEGIN ";
/// A step marker line: `HWKVM-STEP-END <name> rc=<n>`.
pub const END: &str = "HWKVM-STEP-END ";
/// The status of the whole command: `HWKVM-RC=<n>`.
pub const RC: &str = "HWKVM-RC=";

/// What one step (one test binary) reported.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    /// The step's name.
    pub name: String,
    /// Tests that passed.
    pub passed: u32,
    /// Tests that failed, with their names.
    pub failed: Vec<String>,
    /// How long libtest says the tests took, in seconds.
    pub seconds: Option<f64>,
}

/// The lane's results: every step, and the command's status if L1 got to
/// report one.
#[derive(Debug, Default)]
pub struct Report {
    /// Steps in the order they ran.
    pub steps: Vec<Step>,
    /// `HWKVM-RC`, if printed.
    pub status: Option<i32>,
}

impl Report {
    /// Reads a console log.
    ///
    /// A step counts its libtest summary (`test result: ... N passed; M
    /// failed`); a step whose binary ended without a summary, or with a
    /// non-zero status but no failed test, counts one failure of its own,
    /// and so does a step that never ended (L1 died or timed out), which
    /// keeps the tests it saw pass.
    pub fn parse(log: &str) -> Report {
        let mut report = Report::default();
        // The step running, whether its summary came, and the tests seen passing.
        let mut open: Option<(Step, bool, u32)> = None;
        for line in log.lines().map(|l| l.trim_end_matches('\r')) {
            if let Some(name) = line.strip_prefix(BEGIN) {
                if let Some((step, _, ok)) = open.take() {
                    report.steps.push(unfinished(step, ok));
                }
                let step = Step {
                    name: name.trim().to_owned(),
                    ..Step::default()
                };
                open = Some((step, false, 0));
            } else if let Some(rest) = line.strip_prefix(END) {
                if let Some((mut step, summary, _)) = open.take() {
                    let rc = rest
                        .rsplit_once("rc=")
                        .and_then(|(_, n)| n.trim().parse::<i32>().ok());
                    if !summary {
                        step.failed.push(format!("{} (no test summary)", step.name));
                    } else if rc != Some(0) && step.failed.is_empty() {
                        step.failed
                            .push(format!("{} (exit status {rc:?})", step.name));
                    }
                    report.steps.push(step);
                }
            } else if let Some(rc) = line.strip_prefix(RC) {
                report.status = rc.trim().parse().ok();
            } else if let Some((step, summary, ok)) = open.as_mut() {
                if let Some((passed, _)) = summary_counts(line) {
                    step.passed += passed;
                    step.seconds = summary_seconds(line);
                    *summary = true;
                } else if let Some(test) = failed_test(line) {
                    step.failed.push(test.to_owned());
                } else if line.starts_with("test ") && line.ends_with(" ... ok") {
                    *ok += 1;
                }
            }
        }
        if let Some((step, _, ok)) = open {
            report.steps.push(unfinished(step, ok));
        }
        report
    }

    /// Tests passed in all steps.
    pub fn passed(&self) -> u32 {
        self.steps.iter().map(|s| s.passed).sum()
    }

    /// Failures in all steps.
    pub fn failed(&self) -> Vec<&str> {
        self.steps
            .iter()
            .flat_map(|s| s.failed.iter().map(String::as_str))
            .collect()
    }
}

fn unfinished(mut step: Step, passed: u32) -> Step {
    step.passed = passed;
    step.failed.push(format!(
        "{} (never finished: L1 stopped or timed out)",
        step.name
    ));
    step
}

/// `(passed, failed)` from libtest's `test result: ok. 3 passed; 0 failed; ...`.
fn summary_counts(line: &str) -> Option<(u32, u32)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| {
        rest.split(';').find_map(|part| {
            let part = part
                .trim()
                .trim_start_matches("ok.")
                .trim_start_matches("FAILED.");
            part.trim()
                .strip_suffix(word)
                .and_then(|n| n.trim().parse::<u32>().ok())
        })
    };
    Some((count("passed")?, count("failed")?))
}

/// The `finished in 1.2s` of libtest's summary line, in seconds.
fn summary_seconds(line: &str) -> Option<f64> {
    line.rsplit_once("finished in ")?
        .1
        .trim()
        .strip_suffix('s')?
        .parse()
        .ok()
}

/// The name in libtest's `test some::name ... FAILED`.
fn failed_test(line: &str) -> Option<&str> {
    line.strip_prefix("test ")?.strip_suffix(" ... FAILED")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
noise\r
HWKVM-STEP-BEGIN paging_kvm\r
running 3 tests\r
test a ... ok\r
test b ... ok\r
test c ... ok\r
test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.2s\r
HWKVM-STEP-END paging_kvm rc=0\r
HWKVM-STEP-BEGIN linux\r
test boots ... FAILED\r
test saves ... ok\r
test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\r
HWKVM-STEP-END linux rc=101\r
HWKVM-STEP-BEGIN gdb\r
Segmentation fault\r
HWKVM-STEP-END gdb rc=139\r
HWKVM-RC=1\r
";

    #[test]
    fn steps_summaries_and_failures_are_counted() {
        let r = Report::parse(LOG);
        assert_eq!(r.steps.len(), 3);
        assert_eq!(r.passed(), 4);
        assert_eq!(r.failed(), ["boots", "gdb (no test summary)"]);
        assert_eq!(r.status, Some(1));
        assert_eq!(r.steps[0].seconds, Some(1.2));
        assert_eq!(r.steps[1].seconds, None);
    }

    #[test]
    fn a_step_that_never_ends_is_a_failure() {
        let r = Report::parse("HWKVM-STEP-BEGIN linux\ntest a ... ok\ntest b ... ok\n");
        assert_eq!(r.passed(), 2);
        assert_eq!(
            r.failed(),
            ["linux (never finished: L1 stopped or timed out)"]
        );
        assert_eq!(r.status, None);
    }

    #[test]
    fn a_non_zero_status_without_failed_tests_is_a_failure() {
        let r = Report::parse(
            "HWKVM-STEP-BEGIN x\ntest result: ok. 2 passed; 0 failed; 0 ignored\nHWKVM-STEP-END x rc=3\n",
        );
        assert_eq!(r.passed(), 2);
        assert_eq!(r.failed(), ["x (exit status Some(3))"]);
    }
}
