//! `vmm run --config FILE`: the options of `vmm run` in a TOML file.
//!
//! Each key is a long option of `vmm run` (`api-socket` or `api_socket`),
//! each value what the option takes: a string or a number, `true` for a
//! flag (`rng = true`; `stats = true` is `--stats` without a pattern), a
//! list for a repeatable option (`disk = ["a.img", "b.img,ro"]`). The
//! file's options are turned into command-line arguments and parsed with
//! the others, so they are checked exactly as flags are; an option also
//! given on the command line is taken from there (a repeatable one as a
//! whole). A key that is not an option or a value of the wrong kind is a
//! usage error.

use std::path::Path;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use toml::Value;

use crate::exit::UsageError;

/// Options a file cannot set.
const NOT_IN_FILE: [&str; 2] = ["config", "help"];

/// The arguments that the config file at `path` adds to `vmm run`, whose
/// options are `run` and whose command line gave `given`.
pub fn args(path: &Path, given: &ArgMatches, run: &Command) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    file_args(&text, given, run).map_err(|e| {
        anyhow::Error::new(UsageError(format!(
            "in the config file {}: {e}",
            path.display()
        )))
    })
}

/// [`args`] for the file's `text`.
fn file_args(text: &str, given: &ArgMatches, run: &Command) -> Result<Vec<String>, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| e.to_string().trim_end().to_owned())?;
    let mut args = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = run
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .filter(|_| !NOT_IN_FILE.contains(&long.as_str()))
            .ok_or_else(|| format!("{key:?} is not an option of `vmm run`"))?;
        if given.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            continue;
        }
        push(&mut args, &long, arg, value).map_err(|e| format!("{key}: {e}"))?;
    }
    Ok(args)
}

/// Appends the arguments that give option `--long` (`arg`) `value`.
fn push(args: &mut Vec<String>, long: &str, arg: &Arg, value: &Value) -> Result<(), String> {
    let flag = matches!(arg.get_action(), ArgAction::SetTrue);
    let value_optional = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
    match value {
        Value::Boolean(on) if flag || value_optional => {
            if *on {
                args.push(format!("--{long}"));
            }
        }
        _ if flag => return Err("expected true or false".into()),
        Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => {
            for item in items {
                args.push(format!("--{long}={}", scalar(item)?));
            }
        }
        Value::Array(_) => return Err("takes one value, not a list".into()),
        other => args.push(format!("--{long}={}", scalar(other)?)),
    }
    Ok(())
}

/// A string or a number as the command line spells it.
fn scalar(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Float(f) => Ok(f.to_string()),
        other => Err(format!(
            "expected a string or a number, not a {}",
            other.type_str()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_command() -> Command {
        Command::new("run")
            .arg(Arg::new("mem").long("mem"))
            .arg(Arg::new("rng").long("rng").action(ArgAction::SetTrue))
            .arg(Arg::new("disk").long("disk").action(ArgAction::Append))
            .arg(
                Arg::new("stats")
                    .long("stats")
                    .num_args(0..=1)
                    .default_missing_value(""),
            )
            .arg(Arg::new("config").long("config"))
    }

    fn convert(text: &str, cli: &[&str]) -> Result<Vec<String>, String> {
        let run = run_command();
        let given = run.clone().try_get_matches_from(cli).unwrap();
        file_args(text, &given, &run)
    }

    #[test]
    fn values_become_the_equivalent_arguments() {
        let text = "mem = 512\nrng = true\ndisk = [\"a.img\", \"b.img,ro\"]\nstats = true\n";
        let mut args = convert(text, &["run"]).unwrap();
        args.sort();
        assert_eq!(
            args,
            [
                "--disk=a.img",
                "--disk=b.img,ro",
                "--mem=512",
                "--rng",
                "--stats"
            ]
        );
        assert_eq!(
            convert("rng = false", &["run"]).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_command_line_overrides_the_file() {
        let args = convert(
            "mem = \"1G\"\ndisk = [\"a.img\"]",
            &["run", "--disk", "c.img"],
        );
        assert_eq!(args.unwrap(), ["--mem=1G"]);
    }

    #[test]
    fn unknown_keys_and_wrong_kinds_are_refused() {
        for (text, needle) in [
            ("memory = 1", "not an option"),
            ("config = \"x\"", "not an option"),
            ("rng = 1", "true or false"),
            ("mem = [1, 2]", "not a list"),
            ("mem = true", "string or a number"),
            ("mem = ", "TOML parse error"),
        ] {
            let err = convert(text, &["run"]).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
