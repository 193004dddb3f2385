//! `--json` on every command: one line of JSON that parses and carries the
//! same facts as the command's text. The client commands are checked
//! against a paused `vmm run --guest idle` (so that nothing changes
//! between the text and the JSON call), the others on their own.

#[allow(dead_code)]
mod support;

use std::process::Command;
use std::time::Duration;

use hm_vmx::testing::kvm_available;
use serde_json::Value;
use support::{VMM, Vmm, read};

/// `vmm ARGS` (must succeed) and its stdout; `socket` becomes
/// `VMM_API_SOCKET` (none: the variable is removed).
fn stdout_of(socket: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new(VMM);
    cmd.args(args);
    match socket {
        Some(socket) => cmd.env("VMM_API_SOCKET", socket),
        None => cmd.env_remove("VMM_API_SOCKET"),
    };
    let out = cmd.output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "vmm {args:?}: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

/// `vmm ARGS` without an API socket in the environment.
fn text_of(args: &[&str]) -> String {
    stdout_of(None, args)
}

/// `vmm ARGS --json`: one line that parses.
fn json_of(args: &[&str]) -> Value {
    let said = text_of(&[args, &["--json"]].concat());
    assert_eq!(said.lines().count(), 1, "not one line: {said}");
    serde_json::from_str(&said).unwrap_or_else(|e| panic!("{args:?}: {e}: {said}"))
}

/// The rest of the text line that starts with `label`.
fn field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in:\n{text}"))
        .trim()
}

#[test]
fn list_guests_json_has_every_guest_of_the_text() {
    let text = text_of(&["run", "--list-guests"]);
    let json = json_of(&["run", "--list-guests"]);
    let guests = json["guests"].as_array().unwrap();
    assert_eq!(guests.len(), text.lines().count(), "{json}\n{text}");
    for (g, line) in guests.iter().zip(text.lines()) {
        let (name, description) = line.split_once(' ').unwrap();
        assert_eq!(g["name"], name);
        assert_eq!(g["description"], description.trim());
    }
}

#[test]
fn doctor_json_has_the_texts_facts() {
    if !kvm_available("doctor_json_has_the_texts_facts") {
        return;
    }
    let text = text_of(&["doctor"]);
    let json = json_of(&["doctor"]);
    assert_eq!(json["usable"], true);
    assert_eq!(
        field(&text, "max vCPUs per VM:"),
        json["max_vcpus"].to_string()
    );
    assert_eq!(
        field(&text, "memory slots per VM:"),
        json["memory_slots"].to_string()
    );
    let caps = json["capabilities"].as_array().unwrap();
    assert!(!caps.is_empty());
    for cap in caps {
        let name = cap["name"].as_str().unwrap();
        let words: Vec<&str> = field(&text, &format!("  {name} "))
            .split_whitespace()
            .collect();
        assert_eq!(words[0], cap["state"], "{name}");
        assert_eq!(words[1], cap["need"], "{name}");
        assert_eq!(words[2..].join(" "), cap["purpose"], "{name}");
    }
}

/// Checks `vmm state inspect` and `verify` of `file`: text against JSON.
fn saved_state_json_matches_the_text(file: &str) {
    let text = text_of(&["state", "inspect", file]);
    let json = json_of(&["state", "inspect", file]);
    let units = json["units"].as_array().unwrap();
    assert!(!units.is_empty());
    assert!(!json.to_string().contains("4294967295"), "{json}");
    // The table's rows follow its heading, in the units' order; a
    // summary line ends it.
    let rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("unit "))
        .skip(1)
        .collect();
    assert_eq!(rows.len(), units.len() + 1, "{text}");
    let summary = format!(
        "{} unit records, {} logical bytes in {} stream bytes",
        units.len(),
        json["logical_bytes"],
        json["stream_bytes"]
    );
    assert!(rows[units.len()].starts_with(&summary), "{text}\n{json}");
    for (unit, row) in units.iter().zip(rows) {
        let name = unit["name"].as_str().unwrap();
        // name, inst, version, pass, offset, stored, logical, ...
        let row: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(row[0], name);
        assert_eq!(row[1], unit["instance"].to_string(), "{name}");
        assert_eq!(row[2], unit["version"].to_string(), "{name}");
        match unit["is_final"].as_bool().unwrap() {
            true => assert!(
                row[3] == "final" && unit["pass"].is_null(),
                "{name}: {unit}"
            ),
            false => assert_eq!(row[3], unit["pass"].to_string(), "{name}"),
        }
        assert_eq!(row[5], unit["stored_bytes"].to_string(), "{name}");
    }
    let text = text_of(&["state", "verify", file]);
    let json = json_of(&["state", "verify", file]);
    assert_eq!(json["ok"], true);
    let summary = format!(
        "ok ({} units, {} bytes checked)",
        json["units"], json["bytes"]
    );
    assert!(text.contains(&summary), "{text} vs {json}");
}

#[test]
fn client_commands_json_has_the_texts_facts() {
    if !kvm_available("client_commands_json_has_the_texts_facts") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (socket, output) = (dir.path().join("api.sock"), dir.path().join("out"));
    let s = socket.display().to_string();
    let mut vm = Vmm::spawn(
        "vmm run --guest idle",
        &[
            "run",
            "--guest",
            "idle",
            "--cpus",
            "2",
            "--console",
            "none",
            "--api-socket",
            &s,
        ],
        &output,
        Duration::from_secs(30),
    );
    vm.wait_for_text(&output, "heartbeat");
    // Every client call finds the socket in VMM_API_SOCKET.
    let client = |args: &[&str]| with_socket(&s, args);

    let paused_text = client(&["pause"]);
    assert!(paused_text.contains("state SUSPENDED"), "{paused_text}");
    let resumed = client_json(&s, &["resume"]);
    assert_eq!(
        (&resumed["action"], &resumed["state"]),
        (&"resume".into(), &"RUNNING".into())
    );
    let paused = client_json(&s, &["pause"]);
    assert_eq!(paused["state"], "SUSPENDED");

    let text = client(&["status"]);
    let json = client_json(&s, &["status"]);
    assert_eq!(field(&text, "state:"), json["state"]);
    assert_eq!(field(&text, "boot:"), json["config"]["boot"]);
    let mib = json["config"]["ram_bytes"].as_u64().unwrap() >> 20;
    assert_eq!(field(&text, "RAM:"), format!("{mib} MiB"));
    assert_eq!(field(&text, "vCPUs:"), json["config"]["cpus"].to_string());
    for cpu in json["vcpus"].as_array().unwrap() {
        let line = field(&text, &format!("vCPU {}:", cpu["id"]));
        assert_eq!(line, format!("{} halts", cpu["halts"]));
    }

    let text = client(&["stats", "/HM/Exit/*"]);
    let json = client_json(&s, &["stats", "/HM/Exit/*"]);
    let samples = json["samples"].as_array().unwrap();
    assert!(!samples.is_empty());
    for sample in samples {
        let row: Vec<&str> = field(&text, sample["name"].as_str().unwrap())
            .split_whitespace()
            .collect();
        assert_eq!(row[0], sample["value"].to_string(), "{sample}");
        assert_eq!(row[1], sample["unit"], "{sample}");
    }

    let text = client(&["info", "help"]);
    let json = client_json(&s, &["info", "help"]);
    assert_eq!(text.trim_end(), json["output"].as_str().unwrap().trim_end());

    client(&["balloon", "6"]);
    let text = client(&["balloon"]);
    let json = client_json(&s, &["balloon"]);
    assert_eq!(json["target_mib"], 6);
    assert!(
        text.contains(&format!("target {} MiB", json["target_mib"])),
        "{text}"
    );
    assert!(
        text.contains(&format!("size {} MiB", json["size_mib"])),
        "{text}"
    );

    let saved = dir.path().join("vm.sav").display().to_string();
    let json = client_json(&s, &["save", &saved]);
    assert_eq!(json["state"], "SUSPENDED", "{json}");
    let text = client(&["save", &saved]);
    assert!(
        text.contains(&format!("{} bytes", json["bytes"])) && text.contains("state SUSPENDED"),
        "{text} vs {json}"
    );
    saved_state_json_matches_the_text(&saved);

    let json = client_json(&s, &["poweroff"]);
    assert_eq!(json["state"], "OFF", "{json}");
    let exit = vm.wait(|| read(&output));
    assert!(exit.success(), "{exit}: {}", read(&output));
}

/// A client call with its socket in `VMM_API_SOCKET`; its stdout.
fn with_socket(socket: &str, args: &[&str]) -> String {
    stdout_of(Some(socket), args)
}

/// [`with_socket`] with `--json`: one line that parses.
fn client_json(socket: &str, args: &[&str]) -> Value {
    let said = with_socket(socket, &[args, &["--json"]].concat());
    assert_eq!(said.lines().count(), 1, "not one line: {said}");
    serde_json::from_str(&said).unwrap_or_else(|e| panic!("{args:?}: {e}: {said}"))
}
