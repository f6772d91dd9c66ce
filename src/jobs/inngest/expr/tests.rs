//! The expression subset's tables of cases and its fuzz properties.

use super::*;
use serde_json::json;

fn run(expr: &str, event: Value) -> Result<Value, ExprError> {
    let names = json!({"event": event, "async": {"data": {"id": 7}}});
    Expr::parse(expr)?.eval(names.as_object().unwrap())
}

#[test]
fn the_failure_handlers_trigger_matches_its_function_by_single_quoted_id() {
    let e = Expr::parse("event.data.function_id == 'app-summarize'").unwrap();
    let names = |id: &str| json!({"event": {"data": {"function_id": id}}}).as_object().unwrap().clone();
    assert!(e.holds(&names("app-summarize")));
    assert!(!e.holds(&names("app-other")));
}

#[test]
fn keys_and_conditions_read_the_event_as_the_sdk_docs_write_them() {
    let ev = json!({"name": "video/x", "data": {"userId": "u1", "n": 3, "tags": ["a", "b"], "plan": "pro"}});
    assert_eq!(run("event.data.userId", ev.clone()), Ok(json!("u1")));
    assert_eq!(run("event.data.n > 2 && event.data.plan == \"pro\"", ev.clone()), Ok(json!(true)));
    assert_eq!(run("'a' in event.data.tags || false", ev.clone()), Ok(json!(true)));
    assert_eq!(run("size(event.data.tags) == 2 && event.data.tags.size() == 2", ev.clone()), Ok(json!(true)));
    assert_eq!(run("event.name.startsWith('video/') && !event.name.endsWith('y')", ev.clone()), Ok(json!(true)));
    assert_eq!(run("event.data.userId + '-' + event.data.plan", ev.clone()), Ok(json!("u1-pro")));
    assert_eq!(run("event.data['plan'] == 'pro' && event.data.tags[1] == 'b'", ev.clone()), Ok(json!(true)));
    assert_eq!(run("event.data.n * 2 + 1 == 7.0", ev.clone()), Ok(json!(true)));
    assert_eq!(run("event.data.n >= 3 ? 'big' : 'small'", ev.clone()), Ok(json!("big")));
    assert_eq!(run("async.data.id == 7 && event.data.missing == null", ev.clone()), Ok(json!(true)));
    assert_eq!(run("event.data.missing > 1", ev), Ok(json!(false)));
}

#[test]
fn bad_expressions_are_refused_with_where_and_why() {
    assert!(matches!(Expr::parse("event.data.x =="), Err(ExprError::Syntax(..))));
    assert!(matches!(Expr::parse("event.data.x = 'a'"), Err(ExprError::Syntax(..))));
    assert!(matches!(Expr::parse("'open"), Err(ExprError::Syntax(0, _))));
    assert_eq!(Expr::parse(&"(".repeat(200)), Err(ExprError::TooDeep));
    assert_eq!(Expr::parse(&"!".repeat(200)), Err(ExprError::TooDeep));
    assert_eq!(Expr::parse("a.".repeat(100).trim_end_matches('.')).map(|_| ()), Err(ExprError::TooDeep));
    assert_eq!(Expr::parse(&"a".repeat(MAX_LEN + 1)), Err(ExprError::TooLong));
    assert!(run("event.data + 1", json!({"data": {}})).is_err());
    assert!(!Expr::parse("event.data.n").unwrap().holds(json!({"event": {"data": {"n": 1}}}).as_object().unwrap()));
}

proptest::proptest! {
    #[test]
    fn any_text_parses_or_is_refused_and_evaluates_without_panicking(text in "[ -~]{0,80}") {
        if let Ok(e) = Expr::parse(&text) {
            let _ = e.eval(json!({"event": {"data": {"a": [1, "x", {"b": null}]}}}).as_object().unwrap());
        }
    }

    #[test]
    fn any_mix_of_the_grammars_tokens_parses_or_is_refused(parts in proptest::collection::vec(
        proptest::sample::select(vec!["event", ".", "data", "[", "]", "(", ")", "'x'", "1", "==", "&&", "!", "in", "size", ",", "?", ":", "+"]), 0..60)) {
        let text = parts.join(" ");
        if let Ok(e) = Expr::parse(&text) {
            let _ = e.eval(json!({"event": {"data": [1]}}).as_object().unwrap());
        }
    }
}
