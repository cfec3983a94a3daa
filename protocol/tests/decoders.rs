//! Property tests: every decoder of outside input takes arbitrary bytes without panicking, and what it
//! accepts is what it claims to accept.

use std::collections::HashMap;

use herald_protocol::model::{factorial_input, json};
use herald_protocol::{
    parse_client_frame, ClientMessage, Completion, ErrorCode, JobMessage, JobRecord,
    ProgressMessage, ServerMessage, Submit, SubmitInput, FACTORIAL,
};
use proptest::prelude::*;

/// Strings that look like client frames more often than uniform noise would.
fn frame_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{0,30}",
        r#"\{"type":"(submit|resume|x)","(n|id|ref)":[-0-9.e"a-f]{0,40}\}"#,
        r#"\{"type":"submit","model":"[a-zA-Z_./-]{0,8}","(input|n)":[-0-9.e"a-f\[\]{}:,]{0,40}\}"#,
        proptest::collection::vec(
            prop_oneof![
                Just("{".to_owned()),
                Just("}".to_owned()),
                Just("\"type\":\"submit\"".to_owned()),
                Just("\"n\":".to_owned()),
                Just("\"input\":".to_owned()),
                Just("\"model\":\"echo\"".to_owned()),
                Just(",".to_owned()),
                "[-0-9.e+]{1,12}",
                any::<String>(),
            ],
            0..12
        )
        .prop_map(|parts| parts.concat()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn client_frames_never_panic_and_errors_explain_themselves(frame in frame_like()) {
        match parse_client_frame(&frame) {
            Ok(ClientMessage::Submit(submit)) => {
                prop_assert!(submit.tag.as_ref().is_none_or(|t| t.chars().count() <= 64));
                prop_assert!(herald_protocol::model::check_model_name(submit.model()).is_ok());
                if let SubmitInput::Json(input) = &submit.input {
                    // What is kept is valid JSON, as written.
                    prop_assert!(json(input.get()).is_ok());
                }
            }
            Ok(ClientMessage::Resume { .. } | ClientMessage::Cancel { .. }) => {}
            Err(error) => {
                prop_assert!(!error.message.is_empty());
                prop_assert!(matches!(error.code, ErrorCode::BadRequest | ErrorCode::TooLarge));
                // The error is itself a valid message to send back.
                let json = ServerMessage::Error(error).to_json();
                prop_assert!(serde_json::from_str::<ServerMessage>(&json).is_ok());
            }
        }
    }

    #[test]
    fn bare_whole_numbers_are_always_submits(n in any::<u64>(), pad in "[ \t\n]{0,3}") {
        prop_assert_eq!(
            parse_client_frame(&format!("{pad}{n}{pad}")),
            Ok(ClientMessage::Submit(Submit { model: None, input: SubmitInput::N(n), tag: None, key: None, webhook: None }))
        );
    }

    #[test]
    fn amqp_payloads_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = JobMessage::decode(&body);
        let _ = Completion::decode(&body);
        let _ = ProgressMessage::decode(&body);
    }

    #[test]
    fn job_messages_round_trip(id in any::<u128>(), n in any::<u64>()) {
        let job = JobMessage {
            id: uuid::Uuid::from_u128(id),
            model: FACTORIAL.into(),
            input: factorial_input(n),
            client: Some(format!("ip:10.0.0.{}", n % 256)),
        };
        prop_assert_eq!(JobMessage::decode(&job.encode()).unwrap(), job);
    }

    #[test]
    fn stored_records_never_panic(
        fields in proptest::collection::hash_map(
            prop_oneof![
                Just("n".to_owned()), Just("status".to_owned()), Just("submitted_ms".to_owned()),
                Just("model".to_owned()), Just("input".to_owned()), Just("phase".to_owned()),
                Just("digits".to_owned()), Just("output".to_owned()), Just("error".to_owned()),
                Just("attempts".to_owned()), any::<String>(),
            ],
            prop_oneof![
                any::<String>(), "[0-9]{1,5}", "(queued|running|done|failed|cancelled)",
                "(factorial|echo)", r#"\{"n":[0-9]{1,3}\}"#, r#""[0-9]{1,5}""#,
            ],
            0..10,
        )
    ) {
        let fields: HashMap<String, String> = fields;
        if let Ok(record) = JobRecord::from_fields(fields) {
            prop_assert!(record.validate(false).is_ok());
        }
    }
}
