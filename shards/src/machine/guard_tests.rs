//! Unit tests of `guard.rs` (kept apart so the module shows its code).

use super::*;
use serde_json::json;

fn truth_table_ctx() -> Value {
    let text = r#"{"n":1,"f":1.0,"s":"a\\\"b","q":"a\"b","t":true,"arr":[1],"emptyarr":[],"obj":{"a":1},"emptyobj":{},"items":[5],"nested":{"deep":{"x":3}},"snum":"10","zero":0,"a":7,"big":9007199254740992,"nul":null}"#;
    serde_json::from_str(text).expect("appendix A context parses")
}

fn passes(guard: &str, ctx: &Value) -> bool {
    match parse(guard) {
        Ok(g) => g.eval(ctx),
        Err(e) => panic!("guard {guard:?} should parse, got: {e}"),
    }
}

fn reason(guard: &str) -> String {
    match parse(guard) {
        Ok(g) => panic!("guard {guard:?} should be rejected, parsed as {:?}", g.root),
        Err(e) => e.to_string(),
    }
}

#[test]
fn appendix_a_guards_that_pass() {
    let ctx = truth_table_ctx();
    for guard in [
        "ctx.n == 1",
        "ctx.f == 1",
        "ctx.n > .5",
        "ctx.n >= -1",
        "ctx.n==1",
        "ctx.missing == null",
        "ctx.missing != \"x\"",
        "ctx.nul == null",
        "ctx.n != null",
        "!ctx.n > 5",
        "!!ctx.n",
        "! ctx.zero",
        r#"ctx.s == "a\"b""#,
        "ctx.arr",
        "ctx.obj",
        "ctx.nested.deep.x",
        "ctx.big == 9007199254740993",
        "ctx.n < 1.0000000000000002",
        "ctx.n > 0 && ctx.zero || ctx.t",
        "ctx.zero || ctx.n && ctx.t",
        "(ctx.zero) || (ctx.n)",
        "ctx.t == true",
    ] {
        assert!(passes(guard, &ctx), "{guard:?} should pass");
    }
}

#[test]
fn appendix_a_guards_that_fail() {
    let ctx = truth_table_ctx();
    for guard in [
        "ctx.n > 5.",
        r#"ctx.q == "a\"b""#,
        "ctx.emptyarr",
        "ctx.emptyobj",
        "ctx.items.0",
        "ctx.zero",
        "ctx.nul",
        "ctx.n.",
        "ctx.snum > 5",
        "ctx.snum == 10",
        "ctx.n == \"1\"",
        "ctx.t == 1",
    ] {
        assert!(!passes(guard, &ctx), "{guard:?} should fail");
    }
}

#[test]
fn trailing_text_that_0_3_ignored_is_rejected() {
    for (guard, expected) in [
        (
            "ctx.a garbage &&& (((",
            "unexpected trailing input at byte 6: 'garbage &&& ((('",
        ),
        ("ctx.a = 1", "unexpected trailing input at byte 6: '= 1'"),
        ("ctx.n = 2", "unexpected trailing input at byte 6: '= 2'"),
        (
            "ctx.a & ctx.b",
            "unexpected trailing input at byte 6: '& ctx.b'",
        ),
        ("ctx.n > 1e3", "unexpected trailing input at byte 9: 'e3'"),
        ("ctx.a-b", "unexpected trailing input at byte 5: '-b'"),
        (
            "ctx.t == trueish",
            "unexpected trailing input at byte 13: 'ish'",
        ),
        (
            "ctx.n == 1 ctx.zero",
            "unexpected trailing input at byte 11: 'ctx.zero'",
        ),
        ("ctx.a)", "unexpected trailing input at byte 5: ')'"),
        (
            "ctx.a !ctx.b",
            "unexpected trailing input at byte 6: '!ctx.b'",
        ),
    ] {
        assert_eq!(reason(guard), expected, "guard {guard:?}");
    }
}

#[test]
fn section_6_4_parse_errors() {
    for (guard, expected) in [
        ("", "empty guard expression"),
        ("  \t\n ", "empty guard expression"),
        ("ctx", "field must start with 'ctx.'"),
        ("n == 1", "field must start with 'ctx.'"),
        ("!", "field must start with 'ctx.'"),
        ("ctx.a ||", "field must start with 'ctx.'"),
        ("ctx.a && ", "field must start with 'ctx.'"),
        ("ctx.", "empty field name"),
        ("ctx. a", "empty field name"),
        ("(ctx.a", "expected ')'"),
        ("((ctx.a)", "expected ')'"),
        ("ctx.a == \"x", "unterminated string"),
        ("ctx.a == \"x\\", "unterminated string"),
        ("ctx.a == \"x\\\"", "unterminated string"),
        ("ctx.a > abc", "invalid number: ''"),
        ("ctx.a == ", "invalid number: ''"),
        ("ctx.a >= \"x\"", "invalid number: ''"),
        ("ctx.a > -", "invalid number: '-'"),
        ("ctx.a > .", "invalid number: '.'"),
        ("ctx.a > -.", "invalid number: '-.'"),
        ("ctx.a > ctx.b", "invalid number: ''"),
        ("ctx.a >= true", "invalid number: ''"),
    ] {
        assert_eq!(reason(guard), expected, "guard {guard:?}");
    }
}

#[test]
fn keyword_and_number_literals() {
    let ctx = json!({"t": true, "f": false, "x": -2.5, "z": 0});
    assert!(passes("ctx.t == true", &ctx));
    assert!(passes("ctx.f == false", &ctx));
    assert!(passes("ctx.f != true", &ctx));
    assert!(passes("ctx.x == -2.5", &ctx));
    assert!(passes("ctx.x <= -2.5 && ctx.x < -2 && ctx.x >= -2.5", &ctx));
    assert!(passes("ctx.z == -0", &ctx));
    assert!(passes("ctx.z == 0.", &ctx));
    assert!(!passes("ctx.t == null", &ctx));
    assert!(passes("ctx.t==true&&ctx.f==false", &ctx));
}

#[test]
fn number_equality_uses_the_f64_tolerance() {
    let ctx = json!({"a": 0.1, "b": 0.30000000000000004, "one": 1});
    assert!(passes("ctx.b == 0.3", &ctx));
    assert!(passes("ctx.a == 0.1", &ctx));
    assert!(!passes("ctx.one == 1.0000000000000002", &ctx));
    assert!(passes("ctx.one != 1.0000000000000002", &ctx));
}

#[test]
fn field_lookup_rules() {
    let ctx = json!({"a": {"": {"b": 1}, "c": [1]}, "": {"x": true}, "s": "str"});
    assert!(passes("ctx.a..b", &ctx));
    assert!(passes("ctx..x", &ctx));
    assert!(!passes("ctx.s.len", &ctx));
    assert!(passes("ctx.s.len == null", &ctx));
    assert!(!passes("ctx.a.c.0", &ctx));
    for not_an_object in [json!(null), json!([1]), json!("ctx"), json!(3)] {
        assert!(!passes("ctx.a", &not_an_object));
        assert!(passes("ctx.a == null", &not_an_object));
        assert!(!passes("ctx.a > 0", &not_an_object));
    }
}

#[test]
fn not_applies_to_a_whole_comparison_and_precedence_is_and_over_or() {
    let ctx = json!({"n": 10, "t": true, "f": false});
    assert!(!passes("!ctx.n > 5", &ctx));
    assert!(passes("!ctx.n > 50", &ctx));
    assert!(passes("ctx.t || ctx.f && ctx.f", &ctx));
    assert!(!passes("(ctx.t || ctx.f) && ctx.f", &ctx));
    assert!(passes("!(ctx.f || ctx.f)", &ctx));
    assert!(passes("!!!ctx.f", &ctx));
}

#[test]
fn unicode_fields_and_strings_work() {
    let ctx = json!({"ü": {"名前": "é\\€"}, "_x1": 1});
    assert!(passes("ctx.ü", &ctx));
    assert!(passes(r#"ctx.ü.名前 == "é\€""#, &ctx));
    assert!(passes("ctx._x1", &ctx));
    // A backslash before a multi-byte char keeps both (0.3 crashed here).
    let g = parse(r#"ctx.k == "\€""#).expect("parses");
    assert!(g.eval(&json!({"k": "\\€"})));
    // Unicode whitespace separates tokens.
    assert!(passes("ctx._x1\u{3000}==\u{a0}1", &ctx));
}

#[test]
fn string_literals_keep_backslashes() {
    let g = parse(r#"ctx.s == "a\"b""#).expect("parses");
    assert!(g.eval(&json!({"s": "a\\\"b"})));
    assert!(!g.eval(&json!({"s": "a\"b"})));
    let g = parse(r#"ctx.s == "a\\b""#).expect("parses");
    assert!(g.eval(&json!({"s": "a\\\\b"})));
    let g = parse(r#"ctx.s == "with 'quotes' && || ()""#).expect("parses");
    assert!(g.eval(&json!({"s": "with 'quotes' && || ()"})));
}

#[test]
fn source_is_kept_verbatim() {
    let g = parse("  ctx.a  ").expect("parses");
    assert_eq!(g.source(), "  ctx.a  ");
}

#[test]
fn nesting_is_bounded() {
    let ok = format!(
        "{}ctx.a{}",
        "(".repeat(GUARD_NESTING_MAX_DEPTH),
        ")".repeat(GUARD_NESTING_MAX_DEPTH)
    );
    assert!(passes(&ok, &json!({"a": 1})));
    let too_deep = format!(
        "{}ctx.a{}",
        "(".repeat(GUARD_NESTING_MAX_DEPTH + 1),
        ")".repeat(GUARD_NESTING_MAX_DEPTH + 1)
    );
    assert_eq!(
        reason(&too_deep),
        "guard nesting exceeds the maximum depth of 64"
    );
    let nots = format!("{}ctx.a", "!".repeat(GUARD_NESTING_MAX_DEPTH + 1));
    assert_eq!(
        reason(&nots),
        "guard nesting exceeds the maximum depth of 64"
    );
    // Sibling groups do not add up.
    let siblings = vec!["(ctx.a)"; 200].join(" && ");
    assert!(passes(&siblings, &json!({"a": 1})));
}

#[test]
fn length_is_bounded() {
    let long = format!("ctx.{}", "a".repeat(GUARD_SOURCE_BYTES_MAX));
    assert_eq!(
        reason(&long),
        format!(
            "guard expression too long: {} bytes (limit: {GUARD_SOURCE_BYTES_MAX})",
            long.len()
        )
    );
}

#[test]
fn hostile_inputs_do_not_overflow_the_stack() {
    // Within the length limit, so it is the depth bound that stops them.
    let bombs = [
        "(".repeat(GUARD_SOURCE_BYTES_MAX),
        "!".repeat(GUARD_SOURCE_BYTES_MAX),
        "(!".repeat(GUARD_SOURCE_BYTES_MAX / 2),
    ];
    for bomb in bombs {
        assert_eq!(parse(&bomb), Err(GuardError::TooDeep));
    }
}

proptest::proptest! {
    #[test]
    fn parse_and_eval_never_panic(text in proptest::prelude::any::<String>()) {
        if let Ok(g) = parse(&text) {
            let _ = g.eval(&truth_table_ctx());
            let _ = g.eval(&Value::Null);
        }
    }

    #[test]
    fn guard_shaped_text_never_panics(
        text in "[ctx.!&|()=<>\"\\\\0-9a-zü€ \\-]{0,40}"
    ) {
        if let Ok(g) = parse(&text) {
            let _ = g.eval(&truth_table_ctx());
        }
    }
}
