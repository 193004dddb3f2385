use super::*;

fn echo(tag: &'static str) -> impl Fn(&InfoCall<'_>, &mut dyn Write) -> Result<(), InfoError> {
    move |call: &InfoCall<'_>, out: &mut dyn Write| {
        writeln!(out, "{tag} args={:?} cpu={:?}", call.args, call.cpu)?;
        Ok(())
    }
}

fn sample() -> InfoRegistry {
    let info = InfoRegistry::new();
    info.register(
        "phys",
        "Guest-physical ranges.",
        InfoFlags::empty(),
        echo("phys"),
    )
    .unwrap();
    info.register("Mode", "Paging mode.", InfoFlags::RUN_ON_EMT, echo("mode"))
        .unwrap();
    info.register(
        "cpumguest",
        "Guest CPU state.",
        InfoFlags::ALL_EMTS,
        echo("cpu"),
    )
    .unwrap();
    info
}

fn run(
    info: &InfoRegistry,
    name: &str,
    args: &str,
    exec: &dyn InfoExecutor,
) -> Result<String, InfoError> {
    let mut out = String::new();
    info.run(name, args, &mut out, exec).map(|()| out)
}

#[test]
fn names_are_sorted_ignoring_case() {
    assert_eq!(sample().names(), ["cpumguest", "Mode", "phys"]);
}

#[test]
fn lookup_ignores_case_and_passes_args() {
    let info = sample();
    let exec = SameThreadExecutor::default();
    assert_eq!(
        run(&info, "PHYS", "a b", &exec).unwrap(),
        "phys args=\"a b\" cpu=None\n"
    );
    assert_eq!(
        run(&info, "mode", "", &exec).unwrap(),
        "mode args=\"\" cpu=Some(0)\n"
    );
    assert_eq!(
        info.get("MODE").map(|h| h.name().to_owned()),
        Some("Mode".to_owned())
    );
}

#[test]
fn same_thread_executor_runs_all_emt_handlers_per_cpu() {
    let out = run(&sample(), "cpumguest", "x", &SameThreadExecutor::new(3)).unwrap();
    assert_eq!(
        out,
        "cpu args=\"x\" cpu=Some(0)\ncpu args=\"x\" cpu=Some(1)\ncpu args=\"x\" cpu=Some(2)\n"
    );
}

#[test]
fn help_lists_sorted_with_descriptions() {
    let info = sample();
    let mut out = String::new();
    info.help("", &mut out).unwrap();
    assert_eq!(
        out,
        "Info handlers:\n  cpumguest  Guest CPU state.\n  Mode       Paging mode.\n  phys       Guest-physical ranges.\n"
    );
    let via_run = run(&info, "help", "", &SameThreadExecutor::default()).unwrap();
    assert_eq!(via_run, out);
}

#[test]
fn help_with_names_lists_only_those() {
    let info = sample();
    let mut out = String::new();
    info.help("phys, mode phys", &mut out).unwrap();
    assert_eq!(
        out,
        "  Mode  Paging mode.\n  phys  Guest-physical ranges.\n"
    );
    let err = info.help("phys nosuch", &mut String::new()).unwrap_err();
    assert!(matches!(err, InfoError::UnknownHandler { ref name, .. } if name == "nosuch"));
}

#[test]
fn unknown_names_are_clear_errors_with_hints() {
    let info = sample();
    let err = run(&info, "physical", "", &SameThreadExecutor::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown info handler \"physical\" (did you mean: phys?)"
    );
    let err = run(&info, "zzz", "", &SameThreadExecutor::default()).unwrap_err();
    assert_eq!(err.to_string(), "unknown info handler \"zzz\" (try 'help')");
}

#[test]
fn registration_errors() {
    let info = sample();
    assert!(matches!(
        info.register("PHYS", "again", InfoFlags::empty(), echo("x")),
        Err(InfoError::Duplicate(_))
    ));
    for bad in [
        "",
        "help",
        "HELP",
        "a b",
        "a/b",
        &"x".repeat(MAX_INFO_NAME_LEN + 1),
    ] {
        assert!(
            matches!(
                info.register(bad, "d", InfoFlags::empty(), echo("x")),
                Err(InfoError::InvalidName(_))
            ),
            "{bad:?}"
        );
    }
    assert!(info.deregister("Phys"));
    assert!(!info.deregister("phys"));
    info.register("phys", "back", InfoFlags::empty(), echo("x"))
        .unwrap();
}

#[test]
fn handler_errors_propagate() {
    let info = InfoRegistry::new();
    info.register(
        "strict",
        "Needs args.",
        InfoFlags::empty(),
        |call: &InfoCall<'_>, _out: &mut dyn Write| {
            if call.args.is_empty() {
                Err(InfoError::BadArgs("expected an address".into()))
            } else {
                Ok(())
            }
        },
    )
    .unwrap();
    let err = run(&info, "strict", "", &SameThreadExecutor::default()).unwrap_err();
    assert_eq!(err.to_string(), "bad arguments: expected an address");
    assert!(run(&info, "strict", "0x1000", &SameThreadExecutor::default()).is_ok());
}

#[test]
fn flags_combine() {
    let f = InfoFlags::RUN_ON_EMT | InfoFlags::ALL_EMTS;
    assert!(f.contains(InfoFlags::RUN_ON_EMT) && f.contains(InfoFlags::ALL_EMTS));
    assert!(!InfoFlags::RUN_ON_EMT.contains(InfoFlags::ALL_EMTS));
    assert!(InfoFlags::empty().contains(InfoFlags::empty()));
    assert!(!InfoFlags::empty().needs_emt());
}
