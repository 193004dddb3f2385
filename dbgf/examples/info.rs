//! An info-handler registry like VirtualBox's `debugvm info`: registers a
//! handler and runs it and `help`.
//!
//! `cargo run -p dbgf --example info [NAME [ARGS]]`

use dbgf::{InfoError, InfoFlags, InfoRegistry, SameThreadExecutor};

fn main() -> Result<(), InfoError> {
    let info = InfoRegistry::new();
    info.register(
        "echo",
        "Prints its arguments.",
        InfoFlags::empty(),
        |call, out| {
            writeln!(out, "echo: {}", call.args)?;
            Ok(())
        },
    )?;
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "help".into());
    let rest: Vec<String> = args.collect();
    let mut out = String::new();
    info.run(
        &name,
        &rest.join(" "),
        &mut out,
        &SameThreadExecutor::new(1),
    )?;
    print!("{out}");
    Ok(())
}
