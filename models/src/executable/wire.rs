//! The line protocol between a worker and a model's program (docs/models.md): the line that hands a
//! program a job, and the messages a program answers with, checked against the protocol's shapes.

use std::borrow::Cow;
use std::io::Write;

use herald_protocol::{JobId, Json};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::model::Progress;

/// Longest `phase` of a progress message, in characters.
pub const MAX_PHASE_CHARS: usize = 32;

/// Longest message of an `{"error":…}` kept for the job, in bytes; a longer one is cut there.
pub const MAX_ERROR_BYTES: usize = 1024;

/// What a program said about its job, on one line.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// How far the job is; any number of these come before the answer.
    Progress(Progress),
    /// The job's output, as the program wrote it: the answer.
    Output(Json),
    /// The program refuses or cannot compute the input: the answer, with its message.
    Error(String),
}

/// A line that is not a message of the protocol, and why (for the job's error and the log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

/// The line that hands job `id` its `input` to a program, newline included:
/// `{"id":"<request id>","input":<input>}`.
pub fn job_line(id: JobId, input: &Json) -> Vec<u8> {
    let text = input.get().as_bytes();
    let mut line = Vec::with_capacity(text.len() + 56);
    write!(line, "{{\"id\":\"{id}\",\"input\":").expect("writing to a Vec never fails");
    let start = line.len();
    line.extend_from_slice(text);
    // An input is kept as its author wrote it, which may span lines. JSON forbids raw line breaks
    // inside strings, so every one is whitespace between tokens and becomes a space: the job stays
    // one line and means the same.
    for byte in &mut line[start..] {
        if *byte == b'\n' || *byte == b'\r' {
            *byte = b' ';
        }
    }
    line.extend_from_slice(b"}\n");
    line
}

/// Every field a message may have. `output` and `error` are read through [`present`], so that a
/// field written as `null` is told apart from a missing one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields {
    #[serde(default, deserialize_with = "present")]
    progress: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    phase: Option<String>,
    #[serde(default, deserialize_with = "present")]
    output: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "present")]
    error: Option<String>,
}

/// A field that is there, whatever its value: `null` is an output like any other, and a type error
/// for the other fields.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Reads one line (without its newline) from a program.
pub fn parse(line: &[u8]) -> Result<Message, WireError> {
    // serde would also read a struct from an array: only an object is a message.
    if line.trim_ascii_start().first() != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
                Ok(_) => {
                    WireError("a line that is not a message of the protocol (a JSON object)".into())
                }
                Err(e) => WireError(format!("a line that is not JSON ({e})")),
            },
        );
    }
    let fields: Fields = serde_json::from_slice(line).map_err(|e| {
        if e.is_data() {
            WireError(format!(
                "a line that is not a message of the protocol ({e})"
            ))
        } else {
            WireError(format!("a line that is not JSON ({e})"))
        }
    })?;
    match fields {
        Fields {
            progress: Some(fraction),
            phase,
            output: None,
            error: None,
        } => progress(fraction, phase).map(Message::Progress),
        Fields {
            progress: None,
            phase: None,
            output: Some(output),
            error: None,
        } => Ok(Message::Output(Json::from_raw(output))),
        Fields {
            progress: None,
            phase: None,
            output: None,
            error: Some(message),
        } => Ok(Message::Error(error_message(message))),
        Fields {
            progress: None,
            phase: Some(_),
            output: None,
            error: None,
        } => Err(WireError(
            "a message with a \"phase\" but no \"progress\"".into(),
        )),
        _ => Err(WireError(
            "a message that is not exactly one of {\"progress\":…}, {\"output\":…} or {\"error\":…}"
                .into(),
        )),
    }
}

fn progress(fraction: f64, phase: Option<String>) -> Result<Progress, WireError> {
    if !(0.0..=1.0).contains(&fraction) {
        return Err(WireError(format!(
            "a progress of {fraction}, outside 0 to 1"
        )));
    }
    if let Some(phase) = &phase {
        let chars = phase.chars().count();
        if chars == 0 || chars > MAX_PHASE_CHARS || phase.chars().any(char::is_control) {
            return Err(WireError(format!(
                "a phase that is not 1 to {MAX_PHASE_CHARS} printable characters"
            )));
        }
    }
    Ok(Progress {
        fraction,
        phase: phase.map(Cow::Owned),
    })
}

/// A program's error message as the job keeps it: cut at [`MAX_ERROR_BYTES`], never empty.
fn error_message(message: String) -> String {
    if message.trim().is_empty() {
        return "the model failed without saying why".into();
    }
    clip(message, MAX_ERROR_BYTES)
}

/// `text` cut to at most `max` bytes at a character boundary, with `…` where it was cut.
pub fn clip(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use herald_protocol::model::json;

    use super::*;

    fn parsed(line: &str) -> Result<Message, WireError> {
        parse(line.as_bytes())
    }

    #[test]
    fn a_job_is_one_line() {
        let id = JobId::nil();
        let line = job_line(id, &json("{\n \"text\": \"a\\nb\"\r\n}").unwrap());
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"id\":\"00000000-0000-0000-0000-000000000000\",\"input\":{  \"text\": \"a\\nb\"  }}\n"
        );
        let line = job_line(id, &json("[1, 2.50]").unwrap());
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["input"], serde_json::json!([1, 2.5]));
    }

    #[test]
    fn messages_of_the_protocol() {
        assert_eq!(
            parsed(r#"{"progress":0.25}"#),
            Ok(Message::Progress(Progress {
                fraction: 0.25,
                phase: None
            }))
        );
        assert_eq!(
            parsed(r#"{"progress":1,"phase":"scoring"}"#),
            Ok(Message::Progress(Progress {
                fraction: 1.0,
                phase: Some("scoring".into())
            }))
        );
        match parsed(r#"{"output": {"label":"positive", "score":0.98700}}"#) {
            Ok(Message::Output(output)) => {
                assert_eq!(output.get(), r#"{"label":"positive", "score":0.98700}"#)
            }
            other => panic!("{other:?}"),
        }
        match parsed(r#"{"output":null}"#) {
            Ok(Message::Output(output)) => assert_eq!(output.get(), "null"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parsed(r#"{"error":"text is empty"}"#),
            Ok(Message::Error("text is empty".into()))
        );
        assert_eq!(
            parsed(r#"{"error":" "}"#),
            Ok(Message::Error("the model failed without saying why".into()))
        );
        match parsed(&format!(r#"{{"error":"{}"}}"#, "é".repeat(1000))) {
            Ok(Message::Error(message)) => {
                assert!(message.len() <= MAX_ERROR_BYTES && message.ends_with('…'));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lines_outside_the_protocol_are_refused() {
        let refused = [
            ("hello", "not JSON"),
            ("", "not JSON"),
            (r#"{"output":1"#, "not JSON"),
            ("[1]", "not a message"),
            (r#"{"outptu":1}"#, "not a message"),
            (r#"{"progress":"half"}"#, "not a message"),
            (r#"{"progress":null}"#, "not a message"),
            (r#"{"error":null}"#, "not a message"),
            (r#"{"error":{"code":1}}"#, "not a message"),
            (r#"{"progress":1.5}"#, "outside 0 to 1"),
            (r#"{"progress":-0.1}"#, "outside 0 to 1"),
            (r#"{"progress":0.5,"phase":""}"#, "printable"),
            (r#"{"progress":0.5,"phase":"a\tb"}"#, "printable"),
            (
                &format!(r#"{{"progress":0.5,"phase":"{}"}}"#, "x".repeat(33)),
                "printable",
            ),
            (r#"{"phase":"x"}"#, "no \"progress\""),
            (r#"{}"#, "exactly one"),
            (r#"{"output":1,"error":"x"}"#, "exactly one"),
            (r#"{"progress":0.5,"output":1}"#, "exactly one"),
        ];
        for (line, why) in refused {
            match parsed(line) {
                Err(WireError(message)) => assert!(message.contains(why), "{line}: {message}"),
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn clipping_keeps_characters_whole() {
        assert_eq!(clip("abc".into(), 3), "abc");
        assert_eq!(clip("abcdef".into(), 5), "ab…");
        assert_eq!(clip("ééé".into(), 6), "ééé");
        assert_eq!(clip("ééé".into(), 5), "é…");
    }
}
