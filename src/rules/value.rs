//! Conversion between JSON and rhai values.

use rhai::{Array, Dynamic, ImmutableString, Map};
use serde_json::Value;

/// Converts JSON into a rhai value: objects become maps, `null` becomes `()`.
pub fn to_dynamic(value: &Value) -> Dynamic {
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Dynamic::from(s.clone()),
        Value::Array(items) => Dynamic::from_array(items.iter().map(to_dynamic).collect::<Array>()),
        Value::Object(fields) => {
            let map: Map = fields.iter().map(|(k, v)| (k.as_str().into(), to_dynamic(v))).collect();
            Dynamic::from_map(map)
        }
    }
}

/// Deepest nesting `to_json` converts. rhai's limits count items, not depth, and a
/// script can nest arrays thousands deep; recursing into that could overflow the stack.
pub const MAX_JSON_DEPTH: usize = 64;

/// Converts a rhai value into JSON; values with no JSON form, or nested deeper than
/// `MAX_JSON_DEPTH`, are an error.
pub fn to_json(value: &Dynamic) -> Result<Value, String> {
    to_json_at(value, 0)
}

fn to_json_at(value: &Dynamic, depth: usize) -> Result<Value, String> {
    if depth > MAX_JSON_DEPTH {
        return Err(format!("cannot be represented as JSON: nested deeper than {MAX_JSON_DEPTH} levels"));
    }
    if value.is_shared() {
        return to_json_at(&value.flatten_clone(), depth);
    }
    if value.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = value.as_int() {
        return Ok(Value::from(i));
    }
    if let Ok(f) = value.as_float() {
        return serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("cannot be represented as JSON: {f} is not a finite number"));
    }
    if let Ok(c) = value.as_char() {
        return Ok(Value::String(c.to_string()));
    }
    if let Some(text) = value.read_lock::<ImmutableString>() {
        return Ok(Value::String(text.to_string()));
    }
    if let Some(items) = value.read_lock::<Array>() {
        return items.iter().map(|item| to_json_at(item, depth + 1)).collect::<Result<_, _>>().map(Value::Array);
    }
    if let Some(map) = value.read_lock::<Map>() {
        let fields: Result<serde_json::Map<String, Value>, String> =
            map.iter().map(|(k, v)| Ok((k.to_string(), to_json_at(v, depth + 1)?))).collect();
        return fields.map(Value::Object);
    }
    Err(format!("cannot be represented as JSON: a {} value", value.type_name()))
}

/// How a value appears in text: strings as they are, maps and arrays as JSON, `()` (a
/// missing or null value) as an error.
pub fn to_text(value: &Dynamic) -> Result<String, String> {
    if value.is_unit() {
        return Err("the value is () (missing or null); give a default with `?? \"...\"`".into());
    }
    if let Some(text) = value.read_lock::<ImmutableString>() {
        return Ok(text.to_string());
    }
    if value.is_map() || value.is_array() {
        return to_json(value).map(|json| json.to_string());
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut nested = Dynamic::from_array(Array::new());
        for _ in 0..10_000 {
            nested = Dynamic::from_array(vec![nested]);
        }
        assert!(to_json(&nested).unwrap_err().contains("nested deeper"));
        // Dropping it iteratively is rhai's business; keep the test about conversion.
        std::mem::forget(nested);
    }

    #[test]
    fn round_trips_json() {
        let json = serde_json::json!({"a": [1, 2.5, "x", true, null], "b": {"c": "d"}});
        assert_eq!(to_json(&to_dynamic(&json)).unwrap(), json);
    }
}
