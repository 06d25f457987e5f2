//! "Admitted as written": everything a manifest says is in the object the API server stored.

use serde_json::Value;

/// The first place where `written` is not in `stored`, or None when all of it is. Objects match
/// key by key (the server may add defaults), lists element by element in any order (the injector
/// may add entries), anything else must be equal.
pub fn first_difference(written: &Value, stored: &Value, path: &str) -> Option<String> {
    match (written, stored) {
        (Value::Object(w), Value::Object(s)) => w.iter().find_map(|(key, value)| {
            let here = format!("{path}.{key}");
            match s.get(key) {
                Some(stored) => first_difference(value, stored, &here),
                None if is_empty(value) => None,
                None => Some(format!("{here} is missing (written {value})")),
            }
        }),
        (Value::Array(w), Value::Array(s)) => w.iter().enumerate().find_map(|(i, value)| {
            let found = s
                .iter()
                .any(|stored| first_difference(value, stored, "").is_none());
            (!found).then(|| {
                format!(
                    "{path}[{i}] = {value} is not among {}",
                    Value::Array(s.clone())
                )
            })
        }),
        _ if written == stored => None,
        _ => Some(format!("{path}: written {written}, stored {stored}")),
    }
}

/// An empty list or map the server may leave out.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::first_difference;
    use serde_json::json;

    #[test]
    fn defaults_and_added_entries_are_allowed_changes_are_not() {
        let written = json!({"a": {"b": 1, "l": [{"n": "x"}], "e": []}});
        let stored = json!({"a": {"b": 1, "c": 2, "l": [{"n": "y"}, {"n": "x", "v": 1}]}});
        assert_eq!(first_difference(&written, &stored, ""), None);
        let changed = json!({"a": {"b": 2, "l": [{"n": "x"}]}});
        assert!(
            first_difference(&written, &changed, "")
                .unwrap()
                .contains(".a.b")
        );
        let dropped = json!({"a": {"b": 1, "l": [{"n": "y"}]}});
        assert!(
            first_difference(&written, &dropped, "")
                .unwrap()
                .contains(".a.l[0]")
        );
    }
}
