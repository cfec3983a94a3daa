//! Idempotency keys: what a client may send as one, and the fingerprint that tells a repeat of a
//! submit (same model, same input) from another submit reusing its key.

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// Longest idempotency key, in bytes (all printable ASCII, so also in characters).
pub const MAX_KEY_BYTES: usize = 255;

/// Checks an idempotency key: 1 to [`MAX_KEY_BYTES`] printable ASCII characters (space to `~`).
/// The reason is a sentence a client developer can act on.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "must be 1 to {MAX_KEY_BYTES} characters (it has {})",
            key.chars().count()
        ));
    }
    if let Some(bad) = key.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!(
            "must be printable ASCII (space to ~); it holds {:?}",
            bad
        ));
    }
    Ok(())
}

/// What a key's first submit asked for: the SHA-256 (hex) of the model's name and the canonical form
/// of its input. A repeat must match it; another submit under the same key does not.
pub fn fingerprint(model: &str, input: &RawValue) -> String {
    let mut canonical = String::with_capacity(input.get().len());
    canonicalize(input, &mut canonical);
    let mut hasher = Sha256::new();
    hasher.update(model.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical.as_bytes());
    format!("{:x}", hasher.finalize())
}

/// Writes `value` without insignificant whitespace, object members sorted by name and strings in
/// serde_json's escaping, so that a client retrying with its JSON re-serialised still matches.
/// Numbers are kept as written: rounding them through `f64` (as RFC 8785 canonical JSON does) would
/// make inputs that differ in their 17th digit look like one, and a repeat of the other.
fn canonicalize(value: &RawValue, out: &mut String) {
    let text = value.get();
    match text.as_bytes().first() {
        Some(b'{') => {
            let members: BTreeMap<String, &RawValue> =
                serde_json::from_str(text).unwrap_or_default();
            out.push('{');
            for (i, (name, member)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(name).expect("a string serialises"));
                out.push(':');
                canonicalize(member, out);
            }
            out.push('}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).unwrap_or_default();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonicalize(item, out);
            }
            out.push(']');
        }
        Some(b'"') => match serde_json::from_str::<String>(text) {
            Ok(s) => out.push_str(&serde_json::to_string(&s).expect("a string serialises")),
            Err(_) => out.push_str(text),
        },
        _ => out.push_str(text.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::json;

    fn print(text: &str) -> String {
        fingerprint("m", json(text).unwrap().raw())
    }

    #[test]
    fn keys_are_printable_ascii_of_bounded_length() {
        assert!(check_key("order-42 retry").is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert!(check_key("tab\there").is_err());
        assert!(check_key("clé").is_err());
    }

    #[test]
    fn fingerprints_ignore_layout_but_not_values() {
        assert_eq!(
            print(r#"{"b": [1, 2.50], "a": "\u0041"}"#),
            print(r#"{"a":"A","b":[1,2.50]}"#)
        );
        assert_ne!(print(r#"{"a":1}"#), print(r#"{"a":2}"#));
        assert_ne!(
            print("12345678901234567890"),
            print("12345678901234567891"),
            "numbers are not rounded"
        );
        assert_ne!(
            fingerprint("m", json("1").unwrap().raw()),
            fingerprint("n", json("1").unwrap().raw())
        );
    }
}
