//! Model names and job inputs as they travel: which names are valid, how much input a job may carry,
//! and the built-in factorial's input shape, which older clients send as a bare `n`.

use std::sync::Arc;

use serde_json::value::RawValue;

/// A JSON value kept as its text: a job's input or output travels and is stored without being parsed
/// into a tree and written out again, so it stays exactly what its author wrote (numbers included).
/// Cheap to clone; two values are equal when their texts are.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Json(Arc<RawValue>);

impl Json {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The value as a raw value.
    pub fn raw(&self) -> &RawValue {
        &self.0
    }

    /// A value whose text is already known to be valid JSON.
    pub fn from_raw(raw: Box<RawValue>) -> Self {
        Self(Arc::from(raw))
    }
}

/// Any JSON value: a job's input or output is the model's to define.
impl utoipa::PartialSchema for Json {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::Object::builder()
            .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
            .description(Some("Any JSON value, as the model defines it."))
            .into()
    }
}

impl utoipa::ToSchema for Json {}

impl PartialEq for Json {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for Json {}

impl std::fmt::Debug for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 200;
        let text = self.get();
        match text.char_indices().nth(SHOWN) {
            None => f.write_str(text),
            Some((end, _)) => write!(f, "{}… ({} bytes)", &text[..end], text.len()),
        }
    }
}

/// The built-in model, served when a submit names none.
pub const FACTORIAL: &str = "factorial";

/// Longest model name, in bytes.
pub const MAX_MODEL_NAME: usize = 64;

/// Default cap on a job's input, in bytes of JSON text.
pub const DEFAULT_MAX_INPUT_BYTES: usize = 64 * 1024;

/// Checks a model name: 1 to 64 of `a-z 0-9 _ -`, starting with a letter or digit. Names become part
/// of queue names and Redis keys, so nothing else is allowed in them.
pub fn check_model_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_MODEL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "a model name is 1 to {MAX_MODEL_NAME} characters of a-z, 0-9, _ and -, starting with a letter or digit"
        ))
    }
}

/// The factorial's canonical input for `n`: `{"n":N}`.
pub fn factorial_input(n: u64) -> Json {
    Json::from_raw(RawValue::from_string(format!("{{\"n\":{n}}}")).expect("valid JSON"))
}

/// `n` of a factorial's canonical input, if `input` is one.
pub fn factorial_n(input: &RawValue) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct FactorialInput {
        n: u64,
    }
    serde_json::from_str::<FactorialInput>(input.get())
        .ok()
        .map(|i| i.n)
}

/// A JSON text as a [`Json`], if it is valid JSON.
pub fn json(text: &str) -> Result<Json, serde_json::Error> {
    let raw: Box<RawValue> = serde_json::from_str(text)?;
    Ok(Json::from_raw(raw))
}

/// A JSON string holding `text`.
pub fn json_string(text: &str) -> Json {
    let quoted = serde_json::to_string(text).expect("a string serialises");
    Json::from_raw(RawValue::from_string(quoted).expect("valid JSON"))
}

/// Deserializes a [`Json`] through a [`serde_json::Value`], for fields of messages serde reads through
/// its own buffer (internally tagged or flattened ones), where a raw value cannot be read directly.
/// Only clients read such messages; numbers beyond 64 bits lose precision on this path.
pub fn json_via_value<'de, D>(deserializer: D) -> Result<Json, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    use serde::Deserialize;
    let value = serde_json::Value::deserialize(deserializer)?;
    serde_json::value::to_raw_value(&value)
        .map(Json::from_raw)
        .map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names() {
        for good in ["factorial", "sentiment", "e5-small_v2", "7b"] {
            assert!(check_model_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Sentiment",
            "-x",
            "a b",
            "a.b",
            "a/b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(check_model_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn factorial_inputs_round_trip() {
        assert_eq!(factorial_input(10).get(), r#"{"n":10}"#);
        assert_eq!(factorial_n(factorial_input(10).raw()), Some(10));
        assert_eq!(factorial_n(json(r#"{"text":"x"}"#).unwrap().raw()), None);
        assert_eq!(json_string("12").get(), "\"12\"");
        assert!(json("{").is_err());
    }
}
