use proptest::prelude::*;

use super::super::fake::FakeVm;
use super::*;

fn call(vm: &FakeVm, method: &str, target: &str, body: &str) -> (Response, serde_json::Value) {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let response = respond(vm, method, path, query, body.as_bytes());
    let value = serde_json::from_str(&response.body).unwrap_or(serde_json::Value::Null);
    (response, value)
}

#[test]
fn vm_info_reports_state_config_and_vcpus() {
    let vm = FakeVm::new();
    let (r, v) = call(&vm, "GET", "/v1/vm", "");
    assert_eq!(r.status, 200);
    assert_eq!(v["state"], "RUNNING");
    assert_eq!(v["config"]["cpus"], 1);
    assert_eq!(v["vcpus"][0]["halts"], 3);
}

#[test]
fn pause_resume_and_a_refused_transition() {
    let vm = FakeVm::new();
    let (r, v) = call(&vm, "PUT", "/v1/vm/state", r#"{"action":"pause"}"#);
    assert_eq!((r.status, v["state"].as_str()), (200, Some("SUSPENDED")));
    let (r, v) = call(&vm, "PUT", "/v1/vm/state", r#"{"action":"pause"}"#);
    assert_eq!(
        (r.status, v["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    let (r, v) = call(&vm, "PUT", "/v1/vm/state", r#" {"action": "resume"} "#);
    assert_eq!((r.status, v["state"].as_str()), (200, Some("RUNNING")));
    let (r, v) = call(&vm, "PUT", "/v1/vm/state", r#"{"action":"power_off"}"#);
    assert_eq!((r.status, v["state"].as_str()), (200, Some("OFF")));
}

#[test]
fn malformed_bodies_are_400_and_change_nothing() {
    let vm = FakeVm::new();
    for body in [
        "",
        "{",
        "[]",
        r#"{"action":"explode"}"#,
        r#"{"action":"pause","extra":1}"#,
        r#"{"act":"pause"}"#,
    ] {
        let (r, v) = call(&vm, "PUT", "/v1/vm/state", body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(v["error"]["code"], "bad_request");
    }
    assert_eq!(vm.vm_info().state, "RUNNING");
}

#[test]
fn unknown_endpoints_are_404_and_wrong_methods_405_with_allow() {
    let vm = FakeVm::new();
    for target in ["/", "/v1", "/v2/vm", "/v1/vm/", "/v1/info/", "/v1/info/a/b"] {
        assert_eq!(call(&vm, "GET", target, "").0.status, 404, "{target}");
    }
    let (r, v) = call(&vm, "DELETE", "/v1/vm", "");
    assert_eq!(r.status, 405);
    assert_eq!(r.allow.as_deref(), Some("GET"));
    assert_eq!(v["error"]["code"], "method_not_allowed");
    assert_eq!(call(&vm, "GET", "/v1/vm/state", "").0.status, 405);
    assert_eq!(
        call(&vm, "POST", "/v1/balloon", "").0.allow.as_deref(),
        Some("GET, PUT")
    );
}

#[test]
fn stats_reset_takes_a_pattern_and_no_body() {
    let vm = FakeVm::new();
    let (r, _) = call(&vm, "PUT", "/v1/stats/reset?pattern=%2FIOM%2F*", "");
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"reset":1}"#));
    let (r, _) = call(&vm, "PUT", "/v1/stats/reset", "");
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"reset":2}"#));
    assert_eq!(call(&vm, "GET", "/v1/stats/reset", "").0.status, 405);
    assert_eq!(
        call(&vm, "PUT", "/v1/stats/reset?format=json", "").0.status,
        400
    );
    assert_eq!(call(&vm, "PUT", "/v1/stats/reset", "{}").0.status, 400);
    assert_eq!(vm.resets(), ["/IOM/*".to_owned(), String::new()]);
}

#[test]
fn stats_take_pattern_and_format_and_refuse_others() {
    let vm = FakeVm::new();
    let (r, _) = call(
        &vm,
        "GET",
        "/v1/stats?pattern=%2FHM%2F*&format=prometheus",
        "",
    );
    assert_eq!((r.status, r.body.as_str()), (200, "prometheus:/HM/*"));
    assert!(r.content_type.starts_with("text/plain"));
    let (r, _) = call(&vm, "GET", "/v1/stats", "");
    assert_eq!((r.status, r.body.as_str()), (200, "json:"));
    assert_eq!(call(&vm, "GET", "/v1/stats?format=yaml", "").0.status, 400);
    assert_eq!(call(&vm, "GET", "/v1/stats?colour=red", "").0.status, 400);
    assert_eq!(
        call(&vm, "GET", "/v1/stats?format=xml&format=text", "")
            .0
            .status,
        400
    );
    assert_eq!(call(&vm, "GET", "/v1/vm?x=1", "").0.status, 400);
}

#[test]
fn info_handlers_by_name_with_args() {
    let vm = FakeVm::new();
    let (r, v) = call(&vm, "GET", "/v1/info/fflags?args=a+b%26c", "");
    assert_eq!(r.status, 200);
    assert_eq!(v["output"], "flags a b&c\n");
    assert_eq!(v["args"], "a b&c");
    let (r, v) = call(&vm, "GET", "/v1/info/nosuch", "");
    assert_eq!(
        (r.status, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (_, v) = call(&vm, "GET", "/v1/info", "");
    assert_eq!(v["handlers"][0], "fflags");
}

#[test]
fn save_answers_the_report_and_balloon_sets_its_target_after_validating_the_body() {
    let vm = FakeVm::new();
    let (r, v) = call(&vm, "PUT", "/v1/vm/save", r#"{"path":"/tmp/x.sav"}"#);
    assert_eq!(r.status, 200);
    assert_eq!(
        (v["path"].as_str(), v["live_passes"].as_u64()),
        (Some("/tmp/x.sav"), Some(0))
    );
    assert_eq!(v["state"], "RUNNING");
    let (r, v) = call(
        &vm,
        "PUT",
        "/v1/vm/save",
        r#"{"path":"/tmp/y.sav","live":true,"power_off":true}"#,
    );
    assert_eq!((r.status, v["live_passes"].as_u64()), (200, Some(3)));
    assert_eq!(v["state"], "OFF");
    assert_eq!(call(&vm, "PUT", "/v1/vm/save", "{").0.status, 400);
    assert_eq!(
        call(&vm, "PUT", "/v1/vm/save", r#"{"path":"/x","live":1}"#)
            .0
            .status,
        400
    );
    let other = FakeVm::new();
    let (r, v) = call(
        &other,
        "PUT",
        "/v1/vm/teleport",
        r#"{"address":"127.0.0.1:1"}"#,
    );
    assert_eq!(
        (r.status, v["path"].as_str()),
        (200, Some("tcp://127.0.0.1:1"))
    );
    assert_eq!(
        call(&vm, "PUT", "/v1/vm/teleport", r#"{"addr":"x"}"#)
            .0
            .status,
        400
    );
    // The VM is off now: saving is refused as a conflict.
    assert_eq!(
        call(&vm, "PUT", "/v1/vm/save", r#"{"path":"/tmp/z.sav"}"#)
            .0
            .status,
        409
    );
    assert_eq!(call(&vm, "GET", "/v1/balloon", "").0.status, 200);
    let (set, body) = call(&vm, "PUT", "/v1/balloon", r#"{"size_mib":8}"#);
    assert_eq!(set.status, 200);
    assert_eq!(body["target_mib"], 8, "{body}");
    assert_eq!(
        call(&vm, "PUT", "/v1/balloon", r#"{"size_mib":-1}"#)
            .0
            .status,
        400
    );
}

#[test]
fn delete_on_the_teleport_cancels_the_teleport_in_progress() {
    let vm = FakeVm::in_state("SUSPENDED_LS");
    assert_eq!(
        call(&vm, "DELETE", "/v1/vm/teleport", r#"{"address":"x"}"#)
            .0
            .status,
        400
    );
    assert_eq!(
        call(&vm, "DELETE", "/v1/vm/teleport?now=1", "").0.status,
        400
    );
    let (r, v) = call(&vm, "DELETE", "/v1/vm/teleport", "");
    assert_eq!(r.status, 200, "{v}");
    assert_eq!(v["cancelled"], true);
    assert_eq!(v["state"], "RUNNING");
    let (r, v) = call(&vm, "DELETE", "/v1/vm/teleport", "");
    assert_eq!(
        (r.status, v["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    let r = call(&vm, "GET", "/v1/vm/teleport", "").0;
    assert_eq!((r.status, r.allow.as_deref()), (405, Some("PUT, DELETE")));
}

/// The OpenAPI document lists every endpoint with its methods and every
/// error code the API answers with.
#[test]
fn openapi_document_covers_the_routes_and_error_codes() {
    let doc = include_str!("../../../openapi.yaml");
    for path in [
        "/v1/vm",
        "/v1/vm/state",
        "/v1/vm/save",
        "/v1/vm/teleport",
        "/v1/balloon",
        "/v1/stats",
        "/v1/info",
        "/v1/info/x",
    ] {
        let route = Route::parse(path).unwrap();
        let documented = if let Route::Info(_) = route {
            "/v1/info/{name}".to_owned()
        } else {
            path.to_owned()
        };
        let section = doc
            .split(&format!("\n  {documented}:\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("{documented} is not documented"));
        // The path's block, starting at its first method line.
        let section = format!("\n{}", section.split("\n  /").next().unwrap_or_default());
        for method in route.methods() {
            let key = format!("\n    {}:", method.to_lowercase());
            assert!(
                section.contains(&key),
                "{method} {documented} is not documented"
            );
        }
    }
    for code in [
        "bad_request",
        "not_found",
        "method_not_allowed",
        "conflict",
        "payload_too_large",
        "internal_error",
    ] {
        assert!(doc.contains(code), "error code {code} is not documented");
    }
}

proptest! {
    /// Whatever arrives, the answer is a status the API documents, with a
    /// JSON body for every error, and no panic.
    #[test]
    fn any_request_gets_a_documented_answer(
        method in prop::sample::select(vec!["GET", "PUT", "POST", "DELETE", "PATCH"]),
        path in "(/v1)?(/(vm|state|save|stats|info|balloon|[a-z%]{0,4})){0,3}",
        query in proptest::option::of("[a-z=&%+0-9]{0,12}"),
        body in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let vm = FakeVm::new();
        let r = respond(&vm, method, &path, query.as_deref(), &body);
        prop_assert!([200, 400, 404, 405, 409].contains(&r.status), "{}", r.status);
        if r.status >= 400 {
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            prop_assert_eq!(&v["error"]["status"], &serde_json::json!(r.status));
        }
    }

    /// Parameters the client encodes come back unchanged.
    #[test]
    fn query_values_round_trip(args in ".{0,40}") {
        let vm = FakeVm::new();
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("args", &args)
            .finish();
        let r = respond(&vm, "GET", "/v1/info/fflags", Some(&query), b"");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        prop_assert_eq!(v["args"].as_str(), Some(args.as_str()));
    }
}
