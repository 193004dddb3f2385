//! `vmm run --config FILE`: a TOML file and the equivalent flags build the
//! same VM (the same `GET /v1/vm` configuration), and flags override the
//! file.

#[allow(dead_code)]
mod support;

use std::path::Path;
use std::time::Duration;

use hm_vmx::testing::kvm_available;
use serde_json::Value;
use support::{Vmm, client_ok, read};

const DEADLINE: Duration = Duration::from_secs(30);

/// Starts `vmm run ARGS --api-socket SOCKET` (in `dir`, as `name`), reads
/// its configuration through the API, powers it off and returns the
/// configuration.
fn configuration(dir: &Path, name: &str, args: &[&str]) -> Value {
    let socket = dir.join(format!("{name}.sock"));
    let output = dir.join(format!("{name}.out"));
    let socket_arg = socket.display().to_string();
    let args = [args, &["--api-socket", &socket_arg]].concat();
    let mut vm = Vmm::spawn(name, &args, &output, DEADLINE);
    vm.wait_for_text(&output, "control API on");
    let status = client_ok(&["status", "--json", "--api-socket", &socket_arg]);
    client_ok(&["poweroff", "--api-socket", &socket_arg]);
    let exit = vm.wait(|| read(&output));
    assert!(exit.success(), "{name}: {exit}: {}", read(&output));
    let status: Value = serde_json::from_str(&status).expect("JSON status");
    status["config"].clone()
}

#[test]
fn a_config_file_and_the_equivalent_flags_build_the_same_vm() {
    if !kvm_available("a_config_file_and_the_equivalent_flags_build_the_same_vm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (disk_a, disk_b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    std::fs::write(&disk_a, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&disk_b, vec![0u8; 1 << 20]).unwrap();
    let (a, b) = (disk_a.display(), disk_b.display());
    let serial = dir.path().join("serial").display().to_string();
    let config = dir.path().join("vm.toml");
    std::fs::write(
        &config,
        format!(
            "# the same VM as the flags below\n\
             guest = \"idle\"\nmem = \"48M\"\ncpus = 2\nconsole = \"none\"\n\
             serial = \"{serial}\"\nrng = true\nstats = true\nexit_code = \"guest\"\n\
             disk = [\"{a}\", \"{b},ro\"]\nballoon = 4\n"
        ),
    )
    .unwrap();
    let (disk_a, disk_b) = (a.to_string(), format!("{b},ro"));
    let flags = [
        "run",
        "--guest",
        "idle",
        "--mem",
        "48M",
        "--cpus",
        "2",
        "--console",
        "none",
        "--serial",
        &serial,
        "--rng",
        "--stats",
        "--exit-code",
        "guest",
        "--disk",
        &disk_a,
        "--disk",
        &disk_b,
        "--balloon",
        "4",
    ];
    let from_flags = configuration(dir.path(), "flags", &flags);
    let config_arg = config.display().to_string();
    let from_file = configuration(dir.path(), "file", &["run", "--config", &config_arg]);
    assert_eq!(from_file, from_flags);
    // What the file said is what the VM is.
    assert_eq!(from_file["ram_bytes"], 48 << 20, "{from_file}");
    assert_eq!(from_file["cpus"], 2, "{from_file}");
    assert_eq!(from_file["boot"], "guest idle", "{from_file}");
    assert_eq!(
        from_file["devices"].as_array().map(Vec::len),
        Some(3),
        "{from_file}"
    );

    // Flags override the file: a value, and a repeatable option as a whole.
    let overridden = configuration(
        dir.path(),
        "override",
        &[
            "run",
            "--config",
            &config_arg,
            "--cpus",
            "1",
            "--disk",
            &disk_a,
        ],
    );
    assert_eq!(overridden["cpus"], 1, "{overridden}");
    assert_eq!(overridden["ram_bytes"], 48 << 20, "{overridden}");
    assert_eq!(
        overridden["devices"].as_array().map(Vec::len),
        Some(2),
        "{overridden}"
    );
}
