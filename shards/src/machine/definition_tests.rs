//! Unit tests of `definition.rs` (kept apart so the module shows its code).

use super::*;
use serde_json::json;

fn parse_text(text: &str) -> Result<MachineDef, EngineError> {
    let v: Value = serde_json::from_str(text).expect("test definition is JSON");
    parse_definition("m", 1, &v)
}

fn error_message(def: Value) -> String {
    match parse_definition("m", 1, &def) {
        Ok(_) => panic!("definition should be rejected: {def}"),
        Err(e) => {
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(!e.code.retryable());
            e.message
        }
    }
}

#[test]
fn appendix_a_minimal_checksum() {
    let text = r#"{"states":["a"],"initial":"a","transitions":[]}"#;
    let def = parse_text(text).expect("valid");
    assert_eq!(def.normalized_json(), text.as_bytes());
    assert_eq!(def.checksum, "6b16bc3e");
}

#[test]
fn appendix_a_unknown_keys_and_null_meta_checksum() {
    let def = parse_text(
            r#"{"transitions":[{"to":"paid","event":"PAY","from":"created","description":"x"}],"initial":"created","states":["created","paid"],"meta":null,"extra":1}"#,
        )
        .expect("valid");
    assert_eq!(
        String::from_utf8_lossy(&def.normalized_json()),
        r#"{"states":["created","paid"],"initial":"created","transitions":[{"from":["created"],"event":"PAY","to":"paid"}]}"#
    );
    assert_eq!(def.checksum, "26adbd14");
    assert_eq!(def.meta, None);
}

#[test]
fn appendix_a_guard_and_meta_checksum() {
    let def = parse_text(
            r#"{"meta":{"z":1,"a":[1.0,2]},"states":["created","paid","shipped"],"initial":"created",
                "transitions":[{"from":"created","event":"PAY","to":"paid"},
                               {"from":["paid"],"event":"SHIP","to":"shipped","guard":"ctx.ready"}]}"#,
        )
        .expect("valid");
    assert_eq!(
        String::from_utf8_lossy(&def.normalized_json()),
        r#"{"states":["created","paid","shipped"],"initial":"created","transitions":[{"from":["created"],"event":"PAY","to":"paid"},{"from":["paid"],"event":"SHIP","to":"shipped","guard":"ctx.ready"}],"meta":{"a":[1.0,2],"z":1}}"#
    );
    assert_eq!(def.checksum, "387f29a5");
}

#[test]
fn appendix_a_meta_formatting_checksum() {
    let def = parse_text(
            r#"{"states":["s"],"initial":"s","transitions":[],"meta":{"b":"é/\n\"\u0001","a":1e20,"c":1.5e-7,"d":100.0,"e":-0.0,"f":12345678901234567890}}"#,
        )
        .expect("valid");
    assert_eq!(
        String::from_utf8_lossy(&def.normalized_json()),
        r#"{"states":["s"],"initial":"s","transitions":[],"meta":{"a":1e+20,"b":"é/\n\"\u0001","c":1.5e-7,"d":100.0,"e":-0.0,"f":12345678901234567890}}"#
    );
    assert_eq!(def.checksum, "f5e5f316");
}

#[test]
fn from_as_string_or_array_gives_the_same_checksum() {
    let a = parse_definition(
            "m",
            1,
            &json!({"states":["x","y"],"initial":"x","transitions":[{"from":"x","event":"E","to":"y"}]}),
        )
        .expect("valid");
    let b = parse_definition(
            "m",
            1,
            &json!({"states":["x","y"],"initial":"x","transitions":[{"from":["x"],"event":"E","to":"y"}]}),
        )
        .expect("valid");
    assert_eq!(a.checksum, b.checksum);
    assert_eq!(a.normalized_json(), b.normalized_json());
    assert_eq!(a.transitions[0].from, vec!["x".to_owned()]);
}

#[test]
fn unknown_keys_are_dropped_and_null_guard_is_absent() {
    let def = parse_definition(
        "m",
        3,
        &json!({"states":["x"],"initial":"x","extra":{"deep":1},
                    "transitions":[{"from":"x","event":"E","to":"x","guard":null,"note":"n"}]}),
    )
    .expect("valid");
    assert_eq!(
        def.normalized_value(),
        json!({"states":["x"],"initial":"x","transitions":[{"from":["x"],"event":"E","to":"x"}]})
    );
    assert!(def.transitions[0].guard.is_none());
    assert_eq!(def.machine, "m");
    assert_eq!(def.version, 3);
}

#[test]
fn normalized_value_matches_normalized_json() {
    let def = parse_definition(
        "m",
        1,
        &json!({"states":["b","a","b"],"initial":"a","meta":{"k":[1,{"y":2,"x":1}]},
                    "transitions":[{"from":["a","b"],"event":"E","to":"b","guard":"ctx.ok"}]}),
    )
    .expect("valid");
    let from_json: Value = serde_json::from_slice(&def.normalized_json()).expect("JSON");
    assert_eq!(def.normalized_value(), from_json);
    assert_eq!(def.states, vec!["b", "a", "b"]);
}

#[test]
fn structural_errors_name_the_field() {
    let cases = [
            (json!([]), "core error: JSON error: invalid type: sequence, expected a machine definition object"),
            (json!({"initial":"a","transitions":[]}), "core error: JSON error: missing field `states`"),
            (json!({"states":["a"],"transitions":[]}), "core error: JSON error: missing field `initial`"),
            (json!({"states":["a"],"initial":"a"}), "core error: JSON error: missing field `transitions`"),
            (json!({"states":"a","initial":"a","transitions":[]}), "core error: JSON error: invalid type: string \"a\", expected a sequence at `states`"),
            (json!({"states":["a",5],"initial":"a","transitions":[]}), "core error: JSON error: invalid type: integer `5`, expected a string at `states[1]`"),
            (json!({"states":["a"],"initial":null,"transitions":[]}), "core error: JSON error: invalid type: null, expected a string at `initial`"),
            (json!({"states":["a"],"initial":"a","transitions":{}}), "core error: JSON error: invalid type: map, expected a sequence at `transitions`"),
            (json!({"states":["a"],"initial":"a","transitions":[1.5]}), "core error: JSON error: invalid type: floating point `1.5`, expected a transition object at `transitions[0]`"),
            (json!({"states":["a"],"initial":"a","transitions":[{"event":"E","to":"a"}]}), "core error: JSON error: missing field `from` at `transitions[0]`"),
            (json!({"states":["a"],"initial":"a","transitions":[{"from":"a","to":"a"}]}), "core error: JSON error: missing field `event` at `transitions[0]`"),
            (json!({"states":["a"],"initial":"a","transitions":[{"from":"a","event":"E"}]}), "core error: JSON error: missing field `to` at `transitions[0]`"),
            (json!({"states":["a"],"initial":"a","transitions":[{"from":true,"event":"E","to":"a"}]}), "core error: JSON error: invalid type: boolean `true`, expected a string or an array of strings at `transitions[0].from`"),
            (json!({"states":["a"],"initial":"a","transitions":[{"from":["a",null],"event":"E","to":"a"}]}), "core error: JSON error: invalid type: null, expected a string at `transitions[0].from[1]`"),
            (json!({"states":["a"],"initial":"a","transitions":[{"from":"a","event":"E","to":"a","guard":1}]}), "core error: JSON error: invalid type: integer `1`, expected a string at `transitions[0].guard`"),
        ];
    for (def, expected) in cases {
        assert_eq!(error_message(def), expected);
    }
}

#[test]
fn type_errors_come_before_missing_fields_like_serde() {
    assert_eq!(
        error_message(json!({"initial": 5})),
        "core error: JSON error: invalid type: integer `5`, expected a string at `initial`"
    );
}

#[test]
fn semantic_errors_follow_section_5_2_order() {
    let cases = [
        (
            json!({"states":[],"initial":"a","transitions":[]}),
            "core error: invalid machine definition: initial state 'a' not in states list",
        ),
        // Rule 2 before any transition rule.
        (
            json!({"states":["a"],"initial":"z","transitions":[{"from":"q","event":"E","to":"q"}]}),
            "core error: invalid machine definition: initial state 'z' not in states list",
        ),
        // Target before guard before sources, within one transition.
        (
            json!({"states":["a"],"initial":"a","transitions":[{"from":"q","event":"E","to":"t","guard":""}]}),
            "core error: invalid machine definition: transition target 't' not in states list",
        ),
        (
            json!({"states":["a"],"initial":"a","transitions":[{"from":"q","event":"E","to":"a","guard":""}]}),
            "core error: invalid guard expression: empty guard expression",
        ),
        (
            json!({"states":["a"],"initial":"a","transitions":[{"from":["a","q"],"event":"E","to":"a","guard":"ctx.x"}]}),
            "core error: invalid machine definition: transition source 'q' not in states list",
        ),
        // Transitions are checked in array order.
        (
            json!({"states":["a"],"initial":"a","transitions":[
                    {"from":"a","event":"E","to":"a","guard":"ctx.x garbage"},
                    {"from":"a","event":"F","to":"b"}]}),
            "core error: invalid guard expression: unexpected trailing input at byte 6: 'garbage'",
        ),
    ];
    for (def, expected) in cases {
        assert_eq!(error_message(def), expected);
    }
}

#[test]
fn sizes_are_bounded() {
    let states: Vec<String> = (0..=MACHINE_STATES_MAX).map(|i| format!("s{i}")).collect();
    let msg = error_message(json!({"states": states, "initial":"s0","transitions":[]}));
    assert_eq!(
        msg,
        "core error: invalid machine definition: too many states: 10001 (limit: 10000)"
    );
    let t = json!({"from":"a","event":"E","to":"a"});
    let transitions = vec![t; MACHINE_TRANSITIONS_MAX + 1];
    let msg = error_message(json!({"states":["a"],"initial":"a","transitions": transitions}));
    assert_eq!(
        msg,
        "core error: invalid machine definition: too many transitions: 10001 (limit: 10000)"
    );
    let wide = json!({"from": vec!["a"; 20_000], "event":"E","to":"a"});
    let msg = error_message(json!({"states":["a"],"initial":"a","transitions": vec![wide; 6]}));
    assert!(msg.contains("too many transition sources"), "{msg}");
}

fn alternatives() -> MachineDef {
    parse_definition(
        "m",
        1,
        &json!({"states":["new","big","small","other"],"initial":"new","transitions":[
            {"from":"new","event":"SIZE","to":"big","guard":"ctx.n > 100"},
            {"from":["other","new"],"event":"SIZE","to":"small","guard":"ctx.n > 10"},
            {"from":"new","event":"GO","to":"other"},
            {"from":"new","event":"GO","to":"big"}
        ]}),
    )
    .expect("guarded alternatives are allowed")
}

#[test]
fn first_passing_guard_wins() {
    let def = alternatives();
    match def.select("new", "SIZE", &json!({"n": 500})) {
        Selection::Fire(t) => assert_eq!(t.to, "big"),
        other => panic!("unexpected {other:?}"),
    }
    match def.select("new", "SIZE", &json!({"n": 50})) {
        Selection::Fire(t) => assert_eq!(t.to, "small"),
        other => panic!("unexpected {other:?}"),
    }
    // An unguarded candidate fires; a later duplicate is never reached.
    match def.select("new", "GO", &json!({})) {
        Selection::Fire(t) => assert_eq!(t.to, "other"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn no_passing_guard_reports_the_first_candidate() {
    let def = alternatives();
    match def.select("new", "SIZE", &json!({"n": 1})) {
        Selection::GuardFailed(t) => assert_eq!(t.to, "big"),
        other => panic!("unexpected {other:?}"),
    }
    match def.select("other", "SIZE", &json!({"n": 1})) {
        Selection::GuardFailed(t) => assert_eq!(t.to, "small"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn unknown_state_or_event_is_no_transition() {
    let def = alternatives();
    assert_eq!(
        def.select("big", "SIZE", &json!({})),
        Selection::NoTransition
    );
    assert_eq!(
        def.select("new", "NOPE", &json!({})),
        Selection::NoTransition
    );
    assert_eq!(
        def.select("nowhere", "GO", &json!({})),
        Selection::NoTransition
    );
}

#[test]
fn empty_from_never_fires_and_repeated_sources_are_harmless() {
    let def = parse_definition(
        "m",
        1,
        &json!({"states":["a","b"],"initial":"a","transitions":[
                {"from":[],"event":"E","to":"b"},
                {"from":["a","a"],"event":"F","to":"b","guard":"ctx.x"}]}),
    )
    .expect("valid");
    assert_eq!(def.select("a", "E", &json!({})), Selection::NoTransition);
    assert_eq!(
        def.select("a", "F", &json!({})),
        Selection::GuardFailed(&def.transitions[1])
    );
}

#[test]
fn has_state_and_empty_names() {
    let def = parse_definition(
        "",
        0,
        &json!({"states":["", "*"],"initial":"","transitions":[{"from":"*","event":"","to":""}]}),
    )
    .expect("empty strings are legal names");
    assert!(def.has_state(""));
    assert!(def.has_state("*"));
    assert!(!def.has_state("x"));
    assert_eq!(
        def.select("*", "", &json!(null)),
        Selection::Fire(&def.transitions[0])
    );
}
