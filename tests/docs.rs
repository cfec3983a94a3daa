//! Holds the reference docs to the code: `docs/configuration.md` against the binaries' real `--help`,
//! and `docs/protocol.md` against the protocol crate's message types, frame parser and HTTP API
//! documents, so that a renamed flag, a new error code or an example that drifted from the wire
//! format fails a test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use herald_protocol::model::json_string;
use herald_protocol::{
    parse_client_frame, ClientMessage, Completion, ErrorCode, ErrorMessage, JobId, JobMessage,
    JobResult, JobStatus, Outcome, ProgressMessage, ServerMessage, Timings, FACTORIAL,
};
use serde_json::Value;

use crate::helpers::binary;

/// A file of the repository (this crate lives in `tests/`).
fn read_doc(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What `--help` says about one flag.
#[derive(Debug, Default, PartialEq)]
struct HelpFlag {
    env: Option<String>,
    default: Option<String>,
}

/// Every long flag of a binary's real `--help`, with its environment variable and default.
fn help_flags(name: &str) -> BTreeMap<String, HelpFlag> {
    let output = std::process::Command::new(binary(name))
        .arg("--help")
        // A HERALD_* variable set around the test would show up as `[env: X=value]`, and a default is
        // read the same way either way; clear them so the help is the same everywhere.
        .env_clear()
        .output()
        .expect("--help runs");
    assert!(output.status.success(), "{name} --help failed");
    let help = String::from_utf8(output.stdout).expect("help is UTF-8");
    let mut flags: BTreeMap<String, HelpFlag> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        // clap puts a flag's first line at an indent of 2 to 6 and its description at 10; "- text:"
        // lines listing possible values are descriptions, not flags.
        if indent < 10 && text.starts_with('-') {
            let long = text
                .split([' ', ','])
                .find(|word| word.starts_with("--"))
                .unwrap_or_else(|| panic!("{name}: a flag line without a long flag: {line:?}"));
            current = Some(long.to_owned());
            flags.insert(long.to_owned(), HelpFlag::default());
            continue;
        }
        let Some(flag) = current.as_ref().and_then(|c| flags.get_mut(c)) else {
            continue;
        };
        if let Some(rest) = text.strip_prefix("[env: ") {
            let env: String = rest
                .chars()
                .take_while(|c| *c != '=' && *c != ']')
                .collect();
            flag.env = Some(env);
        } else if let Some(rest) = text.strip_prefix("[default: ") {
            flag.default = Some(rest.trim_end_matches(']').to_owned());
        }
    }
    // Guards against a change in clap's help format silently emptying the map.
    assert!(
        flags.len() >= 10 && flags["--amqp-url"].env.as_deref() == Some("HERALD_AMQP_URL"),
        "{name} --help did not parse: {flags:?}\n{help}"
    );
    flags
}

/// One row of a flag table in `docs/configuration.md`.
#[derive(Debug)]
struct DocRow {
    env: Option<String>,
    default: String,
}

/// The text between backticks of the first code span in `cell` that satisfies `keep`.
fn code_span(cell: &str, keep: impl Fn(&str) -> bool) -> Option<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .find(|span| keep(span))
        .map(str::to_owned)
}

/// The flag table under the heading `## {binary}`: flag to its row.
fn doc_table(doc: &str, binary: &str) -> BTreeMap<String, DocRow> {
    let heading = format!("## {binary}");
    let section: Vec<&str> = doc
        .lines()
        .skip_while(|line| line.trim() != heading)
        .skip(1)
        .take_while(|line| !line.starts_with("## "))
        .collect();
    assert!(!section.is_empty(), "configuration.md has no `{heading}`");
    let mut rows = BTreeMap::new();
    for line in section.iter().filter(|line| line.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert!(cells.len() >= 4, "{binary}: a short row: {line}");
        let flag = code_span(cells[0], |span| span.starts_with("--"))
            .unwrap_or_else(|| panic!("{binary}: a row without a flag: {line}"));
        let row = DocRow {
            env: code_span(cells[1], |span| !span.is_empty()),
            default: cells[2].to_owned(),
        };
        assert!(
            rows.insert(flag.clone(), row).is_none(),
            "{binary}: {flag} is listed twice"
        );
    }
    rows
}

#[test]
fn docs_configuration_lists_every_flag_of_both_binaries() {
    let doc = read_doc("docs/configuration.md");
    for binary in ["herald-server", "herald-worker"] {
        let help = help_flags(binary);
        let table = doc_table(&doc, binary);
        let in_help: BTreeSet<&String> = help.keys().collect();
        let in_doc: BTreeSet<&String> = table.keys().collect();
        let missing: Vec<_> = in_help.difference(&in_doc).collect();
        let extra: Vec<_> = in_doc.difference(&in_help).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{binary}: configuration.md lacks {missing:?} and lists {extra:?}, which --help has not"
        );
        for (flag, said) in &help {
            let row = &table[flag];
            assert_eq!(
                row.env, said.env,
                "{binary} {flag}: the environment variable in configuration.md differs from --help"
            );
            if let Some(default) = &said.default {
                assert!(
                    row.default.contains(&format!("`{default}`")),
                    "{binary} {flag}: --help's default `{default}` is not in configuration.md ({:?})",
                    row.default
                );
            }
        }
    }
}

/// The connection limits and each client's quotas, as README's Guarantees table states them: each flag with its default from the
/// real `--help` in parentheses after it (`--max-connections` has none there: it is sized from the file
/// limit at start).
#[test]
fn readme_guarantees_state_the_connection_limits_with_their_defaults() {
    let readme = read_doc("README.md");
    let guarantees: String = readme
        .lines()
        .skip_while(|line| line.trim() != "## Guarantees")
        .skip(1)
        .take_while(|line| !line.starts_with("## "))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!guarantees.is_empty(), "README has no `## Guarantees`");
    let help = help_flags("herald-server");
    for flag in [
        "--header-timeout-secs",
        "--request-timeout-secs",
        "--ping-interval-secs",
        "--ping-timeout-secs",
        "--max-sockets-per-client",
        "--max-queued-per-client",
        "--max-jobs-per-client",
        "--max-stored-bytes-per-client",
    ] {
        let default = help[flag]
            .default
            .as_ref()
            .unwrap_or_else(|| panic!("{flag} has no default in --help"));
        let stated = format!("`{flag}` ({default})");
        assert!(
            guarantees.contains(&stated),
            "README's Guarantees lack {stated}"
        );
    }
    assert_eq!(help["--max-connections"].default, None);
    assert!(
        guarantees.contains("`--max-connections` (90 % of the open-file limit"),
        "README's Guarantees lack --max-connections and its default"
    );
    assert_eq!(help["--max-buffered-bytes"].default, None);
    assert!(
        guarantees.contains("`--max-buffered-bytes` (an eighth of the machine's memory"),
        "README's Guarantees lack --max-buffered-bytes and its default"
    );
}

/// Every error code (the match has no wildcard, so a new variant must be added here to compile).
fn error_codes() -> Vec<ErrorCode> {
    let codes = [
        ErrorCode::BadRequest,
        ErrorCode::TooLarge,
        ErrorCode::NotFound,
        ErrorCode::Unavailable,
        ErrorCode::Busy,
        ErrorCode::AlreadyFinished,
        ErrorCode::UnknownModel,
        ErrorCode::Conflict,
        ErrorCode::Unauthorized,
    ];
    for code in codes {
        match code {
            ErrorCode::BadRequest
            | ErrorCode::TooLarge
            | ErrorCode::NotFound
            | ErrorCode::Unavailable
            | ErrorCode::Busy
            | ErrorCode::AlreadyFinished
            | ErrorCode::UnknownModel
            | ErrorCode::Conflict
            | ErrorCode::Unauthorized => {}
        }
    }
    codes.to_vec()
}

/// One message of every kind the server sends (exhaustive for the same reason as [`error_codes`]).
fn server_messages() -> Vec<ServerMessage> {
    let id = JobId::nil();
    let result = |outcome| {
        ServerMessage::Result(JobResult {
            id,
            model: FACTORIAL.into(),
            n: Some(3),
            outcome,
        })
    };
    let messages = vec![
        ServerMessage::Accepted {
            id,
            model: FACTORIAL.into(),
            n: Some(3),
            tag: None,
            workers: Some(1),
            existing: false,
        },
        ServerMessage::Status {
            id,
            model: FACTORIAL.into(),
            n: Some(3),
            status: JobStatus::Running,
            fraction: Some(0.5),
            phase: Some("product".into()),
            workers: None,
        },
        ServerMessage::Progress {
            id,
            model: FACTORIAL.into(),
            fraction: 0.5,
            phase: Some("product".into()),
        },
        result(Outcome::Done {
            digits: Some(1),
            output: json_string("6"),
            timings: Timings {
                queued_ms: 0,
                compute_ms: 0,
                total_ms: 0,
            },
        }),
        result(Outcome::Failed { error: "x".into() }),
        result(Outcome::Cancelled {}),
        ServerMessage::Error(ErrorMessage::new(ErrorCode::Busy, "x")),
    ];
    for message in &messages {
        match message {
            ServerMessage::Accepted { .. }
            | ServerMessage::Status { .. }
            | ServerMessage::Progress { .. }
            | ServerMessage::Result(_)
            | ServerMessage::Error(_) => {}
        }
    }
    messages
}

/// The `type` of a client message (exhaustive, so a new request must be documented to compile).
fn client_type(message: &ClientMessage) -> &'static str {
    match message {
        ClientMessage::Submit(_) => "submit",
        ClientMessage::Resume { .. } => "resume",
        ClientMessage::Cancel { .. } => "cancel",
    }
}

/// The string a value of a serde enum serialises to (given as `serde_json::to_value`'s answer: this
/// crate has no `serde` of its own to name the trait with).
fn wire_name(value: serde_json::Result<Value>) -> String {
    match value.expect("serialises") {
        Value::String(name) => name,
        other => panic!("not a plain string: {other}"),
    }
}

/// Every value of `"field":"…"` written in the doc.
fn quoted_values<'a>(doc: &'a str, field: &str) -> BTreeSet<&'a str> {
    let marker = format!("\"{field}\":\"");
    doc.split(marker.as_str())
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect()
}

#[test]
fn docs_protocol_names_every_message_type_and_error_code_of_the_crate() {
    let doc = read_doc("docs/protocol.md");

    let mut server_types = BTreeSet::new();
    for message in server_messages() {
        let json: Value = serde_json::from_str(&message.to_json()).unwrap();
        let kind = json["type"].as_str().expect("a type").to_owned();
        // Each message has its paragraph (**`type`**) and at least one real example.
        for needle in [format!("**`{kind}`**"), format!("\"type\":\"{kind}\"")] {
            assert!(doc.contains(&needle), "protocol.md lacks {needle}");
        }
        let outcome = json.get("status").and_then(Value::as_str);
        if let (Some(status), "result") = (outcome, kind.as_str()) {
            assert!(
                doc.contains(&format!("| `{status}` |")),
                "protocol.md's table of results lacks status `{status}`"
            );
        }
        server_types.insert(kind);
    }

    let id = JobId::new_v4();
    let mut client_types = BTreeSet::new();
    for kind in ["submit", "resume", "cancel"] {
        let frame = format!(r#"{{"type":"{kind}","n":1,"id":"{id}"}}"#);
        let parsed = parse_client_frame(&frame).unwrap_or_else(|e| panic!("{frame}: {e:?}"));
        assert_eq!(client_type(&parsed), kind);
        for needle in [format!("| `{kind}` |"), format!("\"type\":\"{kind}\"")] {
            assert!(doc.contains(&needle), "protocol.md lacks {needle}");
        }
        client_types.insert(kind.to_owned());
    }
    // Frames shown as refused by the parser may name any type; everything else must be real.
    let accepted: String = doc
        .lines()
        .filter(|line| {
            line.strip_prefix("> ")
                .is_none_or(|frame| parse_client_frame(frame).is_ok())
        })
        .collect::<Vec<_>>()
        .join("\n");
    for kind in quoted_values(&accepted, "type") {
        assert!(
            server_types.contains(kind) || client_types.contains(kind),
            "protocol.md shows a message type {kind:?} that the protocol does not have"
        );
    }

    let codes: BTreeSet<String> = error_codes()
        .into_iter()
        .map(|code| wire_name(serde_json::to_value(code)))
        .collect();
    for code in &codes {
        assert!(
            doc.contains(&format!("| `{code}` |")),
            "protocol.md's table of error codes lacks `{code}`"
        );
    }
    for code in quoted_values(&doc, "code") {
        assert!(
            codes.contains(code),
            "protocol.md shows an error code {code:?} that the protocol does not have"
        );
    }

    let statuses = [JobStatus::Queued, JobStatus::Running].map(serde_json::to_value);
    let phases = herald_models::compute::Phase::ALL.map(|p| Ok(Value::from(p.as_str())));
    for name in statuses.into_iter().chain(phases).map(wire_name) {
        assert!(
            doc.contains(&format!("`{name}`")),
            "protocol.md lacks `{name}`"
        );
    }
}

/// `json` read as a `$type` and written back, or `None` if it does not read (a macro: this crate has
/// no `serde` of its own to bound a generic function with).
macro_rules! round_trip {
    ($type:ty, $json:expr) => {
        serde_json::from_value::<$type>($json.clone())
            .ok()
            .map(|typed| serde_json::to_value(typed).expect("serialises"))
    };
}

#[test]
fn docs_protocol_examples_are_what_the_crate_reads_and_writes() {
    let doc = read_doc("docs/protocol.md");
    let lines: Vec<&str> = doc.lines().collect();
    let mut checked = 0;
    for (i, line) in lines.iter().enumerate() {
        if let Some(sent) = line.strip_prefix("< ") {
            // Read and written back unchanged: a misspelt or invented field would not survive.
            let json: Value = serde_json::from_str(sent).unwrap_or_else(|e| panic!("{sent}: {e}"));
            assert_eq!(
                round_trip!(ServerMessage, json).as_ref(),
                Some(&json),
                "protocol.md shows a server message the protocol does not write: {sent}"
            );
            checked += 1;
        } else if let Some(frame) = line.strip_prefix("> ") {
            // A refused frame is followed by the refusal itself, word for word.
            if let Err(error) = parse_client_frame(frame) {
                let expected: Value =
                    serde_json::from_str(&ServerMessage::Error(error).to_json()).unwrap();
                let next = lines
                    .get(i + 1)
                    .and_then(|next| next.strip_prefix("< "))
                    .map(|next| serde_json::from_str::<Value>(next).unwrap());
                assert_eq!(
                    next.as_ref(),
                    Some(&expected),
                    "protocol.md: the answer to {frame} is not what the parser says"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} transcript lines found");

    // The AMQP payloads: each JSON block is a job, a completion or a progress message, exactly.
    let mut blocks = 0;
    for block in doc.split("```json\n").skip(1) {
        let text = block.split("```").next().unwrap().trim();
        let json: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let bytes = text.as_bytes();
        let matches = [
            JobMessage::decode(bytes)
                .is_ok_and(|job| serde_json::to_value(job).ok() == Some(json.clone())),
            Completion::decode(bytes).is_ok()
                && round_trip!(Completion, json) == Some(json.clone()),
            ProgressMessage::decode(bytes).is_ok()
                && round_trip!(ProgressMessage, json) == Some(json.clone()),
        ];
        assert!(
            matches.contains(&true),
            "protocol.md shows an AMQP payload no decoder takes unchanged: {text}"
        );
        blocks += 1;
    }
    assert!(blocks >= 4, "only {blocks} AMQP payloads found");
}

/// The keys of a JSON object, or `None` if `json` is not one.
fn keys(json: &Value) -> Option<BTreeSet<&str>> {
    json.as_object()
        .map(|object| object.keys().map(String::as_str).collect())
}

#[test]
fn docs_protocol_http_documents_are_what_the_api_writes() {
    use herald_protocol::api::{Accepted, ApiErrorBody, CancelAnswer, JobView};
    let doc = read_doc("docs/protocol.md");
    let mut checked = BTreeMap::<&str, usize>::new();
    let mut in_example = false;
    for line in doc.lines() {
        // Examples are ```text blocks (the ```json blocks are AMQP payloads, checked above), where
        // the documents are the lines that start with `{`.
        if line.starts_with("```") {
            in_example = line == "```text";
            continue;
        }
        if !in_example || !line.starts_with('{') {
            continue;
        }
        let json: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let object = keys(&json).unwrap_or_else(|| panic!("not an object: {line}"));
        // Each document is read as the type the server writes it from and written back unchanged,
        // so a misspelt or invented field fails.
        let (kind, same) = if object.contains("code") {
            (
                "error",
                round_trip!(ApiErrorBody, json) == Some(json.clone()),
            )
        } else if object.contains("submitted_ms") {
            ("job", round_trip!(JobView, json) == Some(json.clone()))
        } else if object.contains("status") && object.contains("id") {
            (
                "cancel",
                round_trip!(CancelAnswer, json) == Some(json.clone()),
            )
        } else if object.contains("id") {
            (
                "accepted",
                round_trip!(Accepted, json) == Some(json.clone()),
            )
        } else if object.contains("models") {
            // `GET /models`: the server's own type; each entry a name and, distributed, workers.
            let entries = json["models"].as_array().expect("a list of models");
            let valid = entries.iter().all(|entry| {
                keys(entry)
                    .is_some_and(|k| k.contains("name") && k.is_subset(&["name", "workers"].into()))
                    && entry["name"].is_string()
                    && entry.get("workers").is_none_or(Value::is_u64)
            });
            ("models", valid)
        } else if !object.contains("status") {
            // A model's output, downloaded from `GET /jobs/ID/output`: any JSON.
            ("output", true)
        } else {
            // The classic result document.
            let valid = object.is_subset(&["input", "status", "output", "error"].into())
                && ["processing", "done", "failed", "cancelled"]
                    .contains(&json["status"].as_str().unwrap_or(""))
                && json["output"].is_string();
            ("classic", valid)
        };
        assert!(
            same,
            "protocol.md shows an HTTP {kind} document the API does not write: {line}"
        );
        *checked.entry(kind).or_default() += 1;
    }
    for kind in ["error", "job", "cancel", "accepted", "models", "classic"] {
        assert!(
            checked.get(kind).is_some_and(|n| *n > 0),
            "protocol.md shows no HTTP {kind} document: {checked:?}"
        );
    }
}

#[test]
fn docs_protocol_route_table_is_the_openapi_document() {
    // The document of the router itself (server/src/http/mod.rs), as `GET /openapi.json` serves it.
    let (_, document) = herald_server::http::routes().split_for_parts();
    let mut described = BTreeSet::new();
    for (path, item) in &document.paths.paths {
        for (method, operation) in [
            ("GET", &item.get),
            ("HEAD", &item.head),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
        ] {
            if operation.is_some() {
                described.insert(format!("{method} {path}"));
            }
        }
    }
    // protocol.md's table of routes: "| `GET /factorial/result?id=ID` | …", IDs written `ID`.
    let doc = read_doc("docs/protocol.md");
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .filter(|route| {
            ["GET /", "HEAD /", "POST /", "DELETE /"]
                .iter()
                .any(|m| route.starts_with(m))
        })
        .map(|route| {
            let route = route.split('?').next().unwrap();
            route.replace("/ID", "/{id}")
        })
        .collect();
    assert_eq!(
        documented, described,
        "docs/protocol.md's table of HTTP routes and the OpenAPI document differ"
    );
}

/// The OpenAPI sections of README.md and protocol.md hold to the code: the schemathesis version the
/// README names is the one scripts/install-schemathesis.sh installs (and tests/openapi.rs finds),
/// scripts/test.sh runs that script, and every check the tests scope is named in protocol.md.
#[test]
fn docs_openapi_sections_state_how_schemathesis_runs() {
    let install = read_doc("scripts/install-schemathesis.sh");
    let version = install
        .lines()
        .find_map(|line| line.strip_prefix("SCHEMATHESIS_VERSION="))
        .expect("the script pins schemathesis");
    let readme = read_doc("README.md").replace('\n', " ");
    assert!(
        readme.contains(&format!(
            "schemathesis](https://schemathesis.readthedocs.io) {version}"
        )),
        "README.md does not name schemathesis {version}"
    );
    assert!(readme.contains("`scripts/install-schemathesis.sh`"));
    let tests = read_doc("tests/openapi.rs");
    assert!(
        tests.contains(&format!("herald/schemathesis-{version}")),
        "tests/openapi.rs looks for another version than {version}"
    );
    assert!(read_doc("scripts/test.sh")
        .lines()
        .any(|line| line.trim() == "scripts/install-schemathesis.sh"));
    let protocol = read_doc("docs/protocol.md").replace('\n', " ");
    let config = read_doc("tests/schemathesis.toml");
    let mut scoped: Vec<&str> = config
        .lines()
        .filter_map(|line| line.strip_prefix("[checks."))
        .filter_map(|rest| rest.strip_suffix(']'))
        .collect();
    scoped.extend(
        config
            .lines()
            .filter_map(|line| line.strip_prefix("checks."))
            .filter_map(|rest| rest.split('.').next()),
    );
    scoped.extend(
        tests
            .lines()
            .filter_map(|line| line.trim().strip_prefix(".args([\"--exclude-checks\", \""))
            .filter_map(|rest| rest.split('"').next()),
    );
    assert!(scoped.len() >= 3, "{scoped:?}");
    for check in scoped {
        assert!(
            protocol.contains(&format!("`{check}`")),
            "protocol.md does not name the scoped check {check}"
        );
    }
}

/// The idempotency keys' and webhooks' reference holds to the code: the limits the parser applies,
/// the headers, the outcomes the metric counts, and the default retry schedule of `--help`.
#[test]
fn docs_protocol_states_idempotency_keys_and_webhooks_as_the_code_does() {
    use herald_protocol::frame::MAX_WEBHOOK_BYTES;
    use herald_protocol::idempotency::MAX_KEY_BYTES;
    let doc = read_doc("docs/protocol.md");
    let flat = doc.replace('\n', " ");
    for needle in [
        format!("1 to {MAX_KEY_BYTES} printable ASCII"),
        format!("at most {MAX_WEBHOOK_BYTES} bytes"),
        "`Idempotency-Key`".into(),
        "\"existing\":true".into(),
        "| `webhook-id` |".into(),
        "| `webhook-timestamp` |".into(),
        "| `webhook-signature` |".into(),
    ] {
        assert!(
            flat.contains(&needle),
            "protocol.md does not say {needle:?}"
        );
    }
    let row = doc
        .lines()
        .find(|line| line.starts_with("| `herald_webhook_deliveries_total` |"))
        .expect("protocol.md lists the webhook metric");
    for outcome in herald_server::metrics::WEBHOOK_OUTCOMES {
        assert!(
            row.contains(&format!("`{outcome}`")),
            "the metric's row lacks {outcome}"
        );
    }
    let default = help_flags("herald-server")["--webhook-retry-delays"]
        .default
        .clone()
        .expect("a default schedule");
    let words: Vec<String> = default
        .split(',')
        .map(|delay| {
            let (number, unit) = delay.split_at(delay.len() - 1);
            let unit = match unit {
                "s" => "s",
                "m" => "min",
                "h" => "h",
                other => panic!("a delay in {other}"),
            };
            format!("{number} {unit}")
        })
        .collect();
    let (last, rest) = words.split_last().unwrap();
    let schedule = format!("at once, then after {} and {last}", rest.join(", "));
    assert!(
        flat.contains(&schedule),
        "protocol.md does not state the default schedule: {schedule}"
    );
}
