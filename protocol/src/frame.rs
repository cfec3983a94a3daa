//! What clients send over the WebSocket: text frames holding one JSON object each, or a bare whole
//! number (a factorial submit, so that a person can type numbers into `websocat`).
//!
//! Frames are read as raw JSON: a submit's `input` is kept exactly as written, and `n` is read from
//! its text, so that no number is rounded on its way to a model.

use serde_json::value::RawValue;
use std::collections::HashMap;

use crate::idempotency::check_key;
use crate::model::{check_model_name, Json, FACTORIAL};
use crate::number::{parse_digits, whole_number, NumberError};
use crate::ws::{ErrorCode, ErrorMessage};
use crate::JobId;

/// Longest client tag (`ref`), in characters.
pub const MAX_REF_CHARS: usize = 64;

/// Longest webhook URL, in bytes.
pub const MAX_WEBHOOK_BYTES: usize = 2048;

/// What a client asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// Run a job.
    Submit(Submit),
    /// Tell me about this job now, and push its result when it comes.
    Resume { id: JobId },
    /// Stop this job: it ends as `cancelled`, pushed to every socket that watches it (this one too).
    Cancel { id: JobId },
}

/// A submit, as the client wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Submit {
    /// The model named; `None` for the factorial.
    pub model: Option<String>,
    /// What to compute.
    pub input: SubmitInput,
    /// The client's `ref`, echoed in `accepted` or `error`.
    pub tag: Option<String>,
    /// The client's idempotency key (`key`; over HTTP the `Idempotency-Key` header): a repeat of the
    /// submit under it returns the first one's job.
    pub key: Option<String>,
    /// Where to POST the job once it ends (`webhook`), as written; the server checks the address.
    pub webhook: Option<String>,
}

impl Submit {
    /// The model this submit is for.
    pub fn model(&self) -> &str {
        self.model.as_deref().unwrap_or(FACTORIAL)
    }
}

/// A submit's input.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitInput {
    /// The factorial's `n` (a bare number, or `"n"` in a submit).
    N(u64),
    /// A model's `input`, as written.
    Json(Json),
}

/// Reads one text frame from a client.
///
/// Unknown fields are ignored so that newer clients work with older servers. The error says what is
/// wrong, in words a client developer can act on, and echoes `ref` when it was valid.
pub fn parse_client_frame(text: &str) -> Result<ClientMessage, ErrorMessage> {
    let trimmed = text.trim();
    // Checked before JSON: "007" is not JSON, and a person typing numbers means them as written.
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return parse_digits(trimmed, u64::MAX)
            .map(|n| submit(None, SubmitInput::N(n), None))
            .map_err(|e| n_error(&e));
    }
    let value: &RawValue = serde_json::from_str(trimmed).map_err(|_| not_a_frame())?;
    match value.get().as_bytes().first() {
        Some(b'{') => {
            let object: HashMap<String, &RawValue> =
                serde_json::from_str(value.get()).map_err(|_| not_a_frame())?;
            parse_object(&object)
        }
        Some(b'-' | b'0'..=b'9') => whole_number(value, u64::MAX)
            .map(|n| submit(None, SubmitInput::N(n), None))
            .map_err(|e| n_error(&e)),
        _ => Err(ErrorMessage::bad_request(
            "a frame must be a JSON object with a \"type\", or a bare whole number",
        )),
    }
}

fn not_a_frame() -> ErrorMessage {
    ErrorMessage::bad_request(
        "a frame must be a JSON object such as {\"type\":\"submit\",\"n\":10}, or a bare whole number",
    )
}

fn submit(model: Option<String>, input: SubmitInput, tag: Option<String>) -> ClientMessage {
    ClientMessage::Submit(Submit {
        model,
        input,
        tag,
        key: None,
        webhook: None,
    })
}

fn parse_object(object: &HashMap<String, &RawValue>) -> Result<ClientMessage, ErrorMessage> {
    let kind = match object.get("type") {
        None => return Err(ErrorMessage::bad_request("\"type\" is missing")),
        Some(raw) => serde_json::from_str::<String>(raw.get())
            .map_err(|_| ErrorMessage::bad_request("\"type\" must be a string"))?,
    };
    match kind.as_str() {
        "submit" => {
            let tag = parse_tag(object.get("ref").copied())?;
            parse_submit(object, tag.clone()).map_err(|e| e.with_tag(tag))
        }
        "resume" => Ok(ClientMessage::Resume {
            id: parse_id(object.get("id").copied())?,
        }),
        "cancel" => Ok(ClientMessage::Cancel {
            id: parse_id(object.get("id").copied())?,
        }),
        other => Err(ErrorMessage::bad_request(format!(
            "unknown type {:?}; expected \"submit\", \"resume\" or \"cancel\"",
            other.chars().take(32).collect::<String>()
        ))),
    }
}

/// Reads the body of `POST /jobs`: a JSON object with `model` (optional: the factorial) and `input`
/// (or the factorial's `n`), checked as a WebSocket submit is.
pub fn parse_submit_body(text: &str) -> Result<Submit, ErrorMessage> {
    let object: HashMap<String, &RawValue> = serde_json::from_str(text).map_err(|_| {
        ErrorMessage::bad_request(
            "the body must be a JSON object such as {\"model\":\"factorial\",\"input\":{\"n\":10}}",
        )
    })?;
    match parse_submit(&object, None)? {
        ClientMessage::Submit(submit) => Ok(submit),
        _ => unreachable!("parse_submit only makes submits"),
    }
}

fn parse_submit(
    object: &HashMap<String, &RawValue>,
    tag: Option<String>,
) -> Result<ClientMessage, ErrorMessage> {
    let model = match object.get("model").copied().filter(|raw| !is_null(raw)) {
        None => None,
        Some(raw) => {
            let name = serde_json::from_str::<String>(raw.get())
                .map_err(|_| ErrorMessage::bad_request("\"model\" must be a string"))?;
            check_model_name(&name)
                .map_err(|reason| ErrorMessage::bad_request(format!("\"model\": {reason}")))?;
            Some(name)
        }
    };
    let n = object.get("n").copied().filter(|raw| !is_null(raw));
    let input = object.get("input").copied();
    let is_factorial = model.as_deref().is_none_or(|m| m == FACTORIAL);
    let input = match (n, input) {
        (Some(_), Some(_)) => {
            return Err(ErrorMessage::bad_request(
                "give either \"n\" or \"input\", not both",
            ))
        }
        (Some(raw), None) if is_factorial => {
            SubmitInput::N(whole_number(raw, u64::MAX).map_err(|e| n_error(&e))?)
        }
        (Some(_), None) => {
            return Err(ErrorMessage::bad_request(
                "\"n\" is the factorial's input; give this model its \"input\"",
            ))
        }
        (None, Some(raw)) => SubmitInput::Json(Json::from_raw(raw.to_owned())),
        (None, None) if model.is_none() => {
            return Err(ErrorMessage::bad_request(
                "\"n\" is missing (or name a \"model\" and give its \"input\")",
            ))
        }
        (None, None) => return Err(ErrorMessage::bad_request("\"input\" is missing")),
    };
    let key = match optional_string(object, "key")? {
        Some(key) => {
            check_key(&key)
                .map_err(|reason| ErrorMessage::bad_request(format!("\"key\" {reason}")))?;
            Some(key)
        }
        None => None,
    };
    let webhook = optional_string(object, "webhook")?;
    if webhook
        .as_ref()
        .is_some_and(|url| url.len() > MAX_WEBHOOK_BYTES)
    {
        return Err(ErrorMessage::bad_request(format!(
            "\"webhook\" must be a URL of at most {MAX_WEBHOOK_BYTES} bytes"
        )));
    }
    Ok(ClientMessage::Submit(Submit {
        model,
        input,
        tag,
        key,
        webhook,
    }))
}

/// A field that is absent, null or a string.
fn optional_string(
    object: &HashMap<String, &RawValue>,
    name: &str,
) -> Result<Option<String>, ErrorMessage> {
    match object.get(name).copied().filter(|raw| !is_null(raw)) {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<String>(raw.get())
            .map(Some)
            .map_err(|_| ErrorMessage::bad_request(format!("\"{name}\" must be a string"))),
    }
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// The error for an `n` that is not a whole number a 64-bit integer holds. Whether it is within the
/// server's maximum is the server's to say.
fn n_error(error: &NumberError) -> ErrorMessage {
    match error {
        NumberError::TooLarge => {
            ErrorMessage::new(ErrorCode::TooLarge, "\"n\" is far above the maximum")
        }
        other => ErrorMessage::bad_request(other.describe("n", u64::MAX)),
    }
}

fn parse_tag(value: Option<&RawValue>) -> Result<Option<String>, ErrorMessage> {
    let refused = || {
        ErrorMessage::bad_request(format!(
            "\"ref\" must be a string of at most {MAX_REF_CHARS} characters"
        ))
    };
    match value {
        None => Ok(None),
        Some(raw) if is_null(raw) => Ok(None),
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(tag) if tag.chars().count() <= MAX_REF_CHARS => Ok(Some(tag)),
            _ => Err(refused()),
        },
    }
}

fn parse_id(value: Option<&RawValue>) -> Result<JobId, ErrorMessage> {
    match value {
        None => Err(ErrorMessage::bad_request("\"id\" is missing")),
        Some(raw) if is_null(raw) => Err(ErrorMessage::bad_request("\"id\" is missing")),
        Some(raw) => {
            let text = serde_json::from_str::<String>(raw.get())
                .map_err(|_| ErrorMessage::bad_request("\"id\" must be a string"))?;
            JobId::try_parse(&text).map_err(|_| {
                ErrorMessage::bad_request("malformed \"id\": expected a request ID such as 6f1f4a52-2d3e-4c4a-9b0e-1c2d3e4f5a6b")
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factorial(n: u64) -> ClientMessage {
        submit(None, SubmitInput::N(n), None)
    }

    fn code_of(frame: &str) -> ErrorCode {
        parse_client_frame(frame).unwrap_err().code
    }

    fn message_of(frame: &str) -> String {
        parse_client_frame(frame).unwrap_err().message
    }

    #[test]
    fn bare_numbers_are_submits() {
        assert_eq!(parse_client_frame("150000"), Ok(factorial(150000)));
        assert_eq!(parse_client_frame(" 7\n"), Ok(factorial(7)));
        assert_eq!(parse_client_frame("007"), Ok(factorial(7)));
        assert_eq!(code_of("99999999999999999999999"), ErrorCode::TooLarge);
        assert_eq!(code_of("-5"), ErrorCode::BadRequest);
        assert_eq!(code_of("2.5"), ErrorCode::BadRequest);
        assert_eq!(code_of(""), ErrorCode::BadRequest);
        // A whole value is whole however it is written (JSON does not tell 1e3 from 1000); anything
        // else is refused as it is over HTTP, naming n.
        assert_eq!(parse_client_frame("1e3"), Ok(factorial(1000)));
        assert_eq!(parse_client_frame("10.0"), Ok(factorial(10)));
        assert_eq!(code_of("1e309"), ErrorCode::TooLarge);
        for frame in ["-0", "1e-400", "1000000.0000000001"] {
            assert_eq!(code_of(frame), ErrorCode::BadRequest, "{frame}");
            assert!(message_of(frame).contains("\"n\""), "{frame}");
        }
    }

    #[test]
    fn submit_objects() {
        assert_eq!(
            parse_client_frame(r#"{"type":"submit","n":10,"ref":"a","extra":1}"#),
            Ok(submit(None, SubmitInput::N(10), Some("a".into())))
        );
        let err = parse_client_frame(r#"{"type":"submit","n":-1,"ref":"x"}"#).unwrap_err();
        assert_eq!(
            (err.code, err.tag.as_deref()),
            (ErrorCode::BadRequest, Some("x"))
        );
        for bad in [
            r#"{"type":"submit"}"#,
            r#"{"type":"submit","n":null}"#,
            r#"{"type":"submit","n":"5"}"#,
            r#"{"type":"submit","n":1.5}"#,
            r#"{"type":"submit","n":-3.0}"#,
            r#"{"type":"submit","n":-0}"#,
            r#"{"type":"submit","n":1e-400}"#,
            r#"{"type":"submit","n":1000000.0000000001}"#,
            r#"{"type":"submit","n":[1]}"#,
            r#"{"type":"submit","n":1,"ref":5}"#,
        ] {
            assert_eq!(code_of(bad), ErrorCode::BadRequest, "{bad}");
            if !bad.contains("ref") {
                assert!(
                    message_of(bad).contains("\"n\""),
                    "{bad}: {}",
                    message_of(bad)
                );
            }
        }
        assert_eq!(
            parse_client_frame(r#"{"type":"submit","n":1e3}"#),
            Ok(submit(None, SubmitInput::N(1000), None))
        );
        assert_eq!(
            code_of(r#"{"type":"submit","n":1e309}"#),
            ErrorCode::TooLarge
        );
        let long_ref = format!(r#"{{"type":"submit","n":1,"ref":"{}"}}"#, "é".repeat(65));
        assert_eq!(code_of(&long_ref), ErrorCode::BadRequest);
        let huge = format!(r#"{{"type":"submit","n":{}}}"#, "9".repeat(500));
        assert_eq!(code_of(&huge), ErrorCode::TooLarge);
        assert!(message_of(&huge).contains("\"n\""));
    }

    #[test]
    fn submits_naming_a_model() {
        let frame =
            r#"{"type":"submit","model":"sentiment","input":{"text":"good", "x": 1.50},"ref":"r"}"#;
        let Ok(ClientMessage::Submit(submit)) = parse_client_frame(frame) else {
            panic!("a model submit");
        };
        assert_eq!(submit.model(), "sentiment");
        assert_eq!(submit.tag.as_deref(), Some("r"));
        let SubmitInput::Json(input) = submit.input else {
            panic!("a JSON input");
        };
        assert_eq!(
            input.get(),
            r#"{"text":"good", "x": 1.50}"#,
            "kept as written"
        );
        let Ok(ClientMessage::Submit(factorial)) =
            parse_client_frame(r#"{"type":"submit","model":"factorial","n":12}"#)
        else {
            panic!("the factorial named");
        };
        assert_eq!(factorial.model(), FACTORIAL);
        assert_eq!(factorial.input, SubmitInput::N(12));
        for bad in [
            r#"{"type":"submit","model":"sentiment"}"#,
            r#"{"type":"submit","model":"sentiment","n":5}"#,
            r#"{"type":"submit","model":"Sentiment","input":1}"#,
            r#"{"type":"submit","model":5,"input":1}"#,
            r#"{"type":"submit","n":5,"input":{"n":5}}"#,
        ] {
            assert_eq!(code_of(bad), ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn submits_with_a_key_and_a_webhook() {
        let Ok(ClientMessage::Submit(submit)) = parse_client_frame(
            r#"{"type":"submit","n":5,"key":"order-42","webhook":"https://example.com/hook"}"#,
        ) else {
            panic!("a submit");
        };
        assert_eq!(submit.key.as_deref(), Some("order-42"));
        assert_eq!(submit.webhook.as_deref(), Some("https://example.com/hook"));
        for bad in [
            r#"{"type":"submit","n":5,"key":""}"#,
            r#"{"type":"submit","n":5,"key":5}"#,
            r#"{"type":"submit","n":5,"key":"caf\u00e9"}"#,
            r#"{"type":"submit","n":5,"webhook":7}"#,
        ] {
            assert_eq!(code_of(bad), ErrorCode::BadRequest, "{bad}");
        }
        assert!(message_of(r#"{"type":"submit","n":5,"key":""}"#).contains("\"key\""));
        let long_key = format!(r#"{{"type":"submit","n":5,"key":"{}"}}"#, "k".repeat(256));
        assert!(message_of(&long_key).contains("255"));
        let long_hook = format!(
            r#"{{"type":"submit","n":5,"webhook":"https://example.com/{}"}}"#,
            "a".repeat(MAX_WEBHOOK_BYTES)
        );
        assert_eq!(code_of(&long_hook), ErrorCode::BadRequest);
    }

    #[test]
    fn resume_objects() {
        let id = JobId::new_v4();
        assert_eq!(
            parse_client_frame(&format!(r#"{{"type":"resume","id":"{id}"}}"#)),
            Ok(ClientMessage::Resume { id })
        );
        for bad in [
            r#"{"type":"resume"}"#,
            r#"{"type":"resume","id":"not-a-uuid"}"#,
            r#"{"type":"resume","id":42}"#,
        ] {
            assert_eq!(code_of(bad), ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn other_frames_are_bad_requests() {
        for bad in [
            "hello",
            "[1,2]",
            "null",
            "{}",
            r#"{"type":5}"#,
            r#"{"type":"explode"}"#,
            "{\"type\":",
        ] {
            assert_eq!(code_of(bad), ErrorCode::BadRequest, "{bad}");
        }
    }
}
