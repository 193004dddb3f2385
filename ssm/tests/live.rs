//! The live-save protocol: call order, votes, limits, and loading passes.

mod common;

use std::sync::{Arc, Mutex};

use common::{Op, ScriptUnit, fresh, manager};
use ssm::{
    Error, Manager, PASS_FINAL, SaveOptions, StreamReader, Unit, UnitReader, UnitWriter, Vote,
};

type Log = Arc<Mutex<Vec<String>>>;

/// A unit that votes from a script and logs every callback.
struct Voter {
    name: &'static str,
    votes: Vec<Vote>,
    bytes_per_pass: usize,
    log: Log,
}

impl Voter {
    fn log(&self, what: String) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}:{what}", self.name));
    }
}

impl Unit for Voter {
    fn name(&self) -> &str {
        self.name
    }
    fn version(&self) -> u32 {
        1
    }
    fn is_live(&self) -> bool {
        true
    }
    fn live_prep(&mut self) -> ssm::Result<()> {
        self.log("live_prep".into());
        Ok(())
    }
    fn live_exec(&mut self, w: &mut UnitWriter<'_>, pass: u32) -> ssm::Result<()> {
        self.log(format!("live_exec{pass}"));
        w.put_bytes(&vec![pass as u8 | 1; self.bytes_per_pass])
    }
    fn live_vote(&mut self, pass: u32) -> ssm::Result<Vote> {
        self.log(format!("vote{pass}"));
        Ok(self
            .votes
            .get(pass as usize)
            .copied()
            .unwrap_or(Vote::AnotherPass))
    }
    fn save_prep(&mut self) -> ssm::Result<()> {
        self.log("save_prep".into());
        Ok(())
    }
    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        self.log("save_exec".into());
        w.put_u8(0xff)
    }
    fn save_done(&mut self) -> ssm::Result<()> {
        self.log("save_done".into());
        Ok(())
    }
    fn load_exec(&mut self, r: &mut UnitReader<'_>, _v: u32, pass: u32) -> ssm::Result<()> {
        self.log(format!(
            "load{}",
            if pass == PASS_FINAL {
                "F".into()
            } else {
                pass.to_string()
            }
        ));
        r.skip_to_end_of_unit()
    }
}

fn voters(log: &Log, a: Vec<Vote>, b: Vec<Vote>) -> Manager {
    let mut m = Manager::new();
    for (name, votes) in [("a", a), ("b", b)] {
        m.register(Box::new(Voter {
            name,
            votes,
            bytes_per_pass: 16,
            log: log.clone(),
        }))
        .unwrap();
    }
    m
}

fn take(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[test]
fn passes_run_until_all_units_are_ready_then_the_vm_stops() {
    use Vote::*;
    let log = Log::default();
    let mut m = voters(&log, vec![Done], vec![AnotherPass, Ready]);
    let stop_log = log.clone();
    let mut bytes = Vec::new();
    m.save_live(&mut bytes, &SaveOptions::default(), || {
        stop_log.lock().unwrap().push("stop_vm".into());
        Ok(())
    })
    .unwrap();
    let expected = [
        "a:live_prep",
        "b:live_prep",
        "a:live_exec0",
        "b:live_exec0",
        "a:vote0",
        "b:vote0",
        // a voted Done: never called again for live passes.
        "b:live_exec1",
        "b:vote1",
        "stop_vm",
        "a:save_prep",
        "b:save_prep",
        "a:save_exec",
        "b:save_exec",
        "a:save_done",
        "b:save_done",
    ];
    assert_eq!(take(&log), expected);

    let report = ssm::inspect_stream(StreamReader::from_slice(&bytes).unwrap()).unwrap();
    let passes: Vec<_> = report
        .units
        .iter()
        .map(|u| (u.name.as_str(), u.pass))
        .collect();
    assert_eq!(
        passes,
        [
            ("a", 0),
            ("b", 0),
            ("b", 1),
            ("a", PASS_FINAL),
            ("b", PASS_FINAL)
        ]
    );

    voters(&log, vec![], vec![])
        .load(StreamReader::from_slice(&bytes).unwrap())
        .unwrap();
    assert_eq!(
        take(&log),
        ["a:load0", "b:load0", "b:load1", "a:loadF", "b:loadF"]
    );
}

#[test]
fn a_ready_unit_keeps_getting_passes_while_others_need_them() {
    use Vote::*;
    let log = Log::default();
    let mut m = voters(
        &log,
        vec![Ready, Ready, Ready],
        vec![AnotherPass, AnotherPass, Ready],
    );
    m.save_live(Vec::new(), &SaveOptions::default(), || Ok(()))
        .unwrap();
    let execs: Vec<_> = take(&log)
        .into_iter()
        .filter(|l| l.contains("live_exec"))
        .collect();
    assert_eq!(execs.len(), 6);
}

#[test]
fn a_unit_that_never_converges_hits_the_pass_limit() {
    let log = Log::default();
    let mut m = voters(&log, vec![], vec![Vote::Done]);
    let mut opts = SaveOptions::default();
    opts.max_passes = 5;
    let mut stopped = false;
    let e = m.save_live(Vec::new(), &opts, || {
        stopped = true;
        Ok(())
    });
    assert!(
        matches!(e, Err(Error::TooManyPasses { passes: 5 })),
        "{e:?}"
    );
    assert!(
        !stopped,
        "the VM must not be stopped when the live save fails"
    );
    // Units still get save_done to clean up.
    assert!(take(&log).iter().any(|l| l == "a:save_done"));
}

#[test]
fn the_growth_limit_stops_a_live_save() {
    let log = Log::default();
    let mut m = voters(&log, vec![], vec![]);
    let mut opts = SaveOptions::default();
    opts.max_live_bytes = Some(1000);
    match m.save_live(Vec::new(), &opts, || Ok(())) {
        Err(Error::LiveSaveTooLarge {
            written,
            limit: 1000,
        }) => assert!(written > 1000),
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn giving_up_and_stop_vm_failures_abort_the_save() {
    let log = Log::default();
    let mut m = voters(
        &log,
        vec![Vote::Ready],
        vec![Vote::AnotherPass, Vote::GiveUp],
    );
    match m.save_live(Vec::new(), &SaveOptions::default(), || Ok(())) {
        Err(Error::UnitGaveUp { unit, pass: 1 }) => assert_eq!(unit.name, "b"),
        e => panic!("unexpected {e:?}"),
    }
    let mut m = voters(&log, vec![Vote::Ready], vec![Vote::Done]);
    let e = m.save_live(Vec::new(), &SaveOptions::default(), || {
        Err(Error::callback("VM would not stop"))
    });
    assert!(matches!(e, Err(Error::Callback(_))), "{e:?}");
    assert!(!take(&log).iter().any(|l| l.ends_with("save_exec")));
}

#[test]
fn non_live_units_only_save_in_the_final_pass() {
    let mut live = ScriptUnit::new("ram", 0, vec![Op::U8(1)]);
    live.live = vec![vec![Op::U32(5)], vec![Op::U32(6)]];
    let plain = ScriptUnit::new("pic", 0, vec![Op::U16(9)]);
    let units = [live, plain];
    let mut bytes = Vec::new();
    manager(&units)
        .save_live(&mut bytes, &SaveOptions::default(), || Ok(()))
        .unwrap();
    let loaded = fresh(&units);
    manager(&loaded)
        .load(StreamReader::from_slice(&bytes).unwrap())
        .unwrap();
    assert_eq!(loaded[0].loaded(), units[0].expected(2));
    assert_eq!(loaded[1].loaded(), vec![(PASS_FINAL, vec![Op::U16(9)])]);
}
