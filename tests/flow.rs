//! The core flow: submit over WebSocket, compute in a worker, push the exact result back.

use herald_protocol::{Outcome, ServerMessage};
use num_bigint::BigUint;

use crate::helpers::Mode;
use crate::helpers::TestEnv;

/// n! by the plain definition, as the reference.
fn reference(n: u64) -> String {
    (1..=n)
        .fold(BigUint::from(1u32), |acc, k| acc * k)
        .to_string()
}

async fn small_factorials_are_exact(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app(2).await;
    let mut client = server.client().await;
    for n in [0, 1, 10, 20] {
        let id = client.submit(n).await;
        assert_eq!(client.output_of(id).await, reference(n), "{n}!");
    }
    assert_eq!(reference(20), "2432902008176640000");
}

async fn large_factorial_matches_digit_count_and_residue(mode: Mode) {
    const N: u64 = 30_000;
    // A prime far above N, so n! mod P is not trivially zero.
    const P: u64 = 1_000_000_007;
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app(1).await;
    let mut client = server.client().await;
    let id = client.submit(N).await;
    let output = client.output_of(id).await;

    // Digit count from log10, independent of any big-integer code.
    let log10: f64 = (1..=N).map(|k| (k as f64).log10()).sum();
    assert_eq!(output.len() as u64, log10.floor() as u64 + 1);
    let residue = output
        .bytes()
        .fold(0u64, |acc, d| (acc * 10 + u64::from(d - b'0')) % P);
    let expected = (1..=N).fold(1u64, |acc, k| acc * k % P);
    assert_eq!(residue, expected);
    assert!(!output.starts_with('0'));
}

async fn websocat_style_bare_numbers_are_submits(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app(1).await;
    let mut client = server.client().await;
    client.send_text("5").await;
    let id = match client.recv().await {
        ServerMessage::Accepted {
            id,
            n: Some(5),
            tag: None,
            ..
        } => id,
        other => panic!("expected accepted, got {other:?}"),
    };
    assert_eq!(client.output_of(id).await, "120");
    client.send_text("  12\n").await;
    let id = match client.recv().await {
        ServerMessage::Accepted {
            id, n: Some(12), ..
        } => id,
        other => panic!("expected accepted, got {other:?}"),
    };
    assert_eq!(client.output_of(id).await, "479001600");
}

async fn ref_is_echoed_and_results_carry_timings(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app(1).await;
    let mut client = server.client().await;
    client
        .send_json(serde_json::json!({"type":"submit","n":7,"ref":"row-1"}))
        .await;
    let accepted = client.recv_json().await;
    assert_eq!(accepted["type"], "accepted");
    assert_eq!(accepted["ref"], "row-1");
    assert_eq!(accepted["n"], 7);
    let id = accepted["id"].as_str().unwrap().parse().unwrap();
    match client.result_of(id).await {
        Outcome::Done {
            output, timings, ..
        } => {
            assert_eq!(output.get(), "\"5040\"");
            assert!(timings.total_ms >= timings.compute_ms);
        }
        other => panic!("expected done, got {other:?}"),
    }
}

async fn many_jobs_on_one_socket_each_get_one_result(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app(2).await;
    let mut client = server.client().await;
    let count = 40u64;
    for n in 0..count {
        client
            .send_json(serde_json::json!({"type":"submit","n":n,"ref":n.to_string()}))
            .await;
    }
    let mut ids = std::collections::HashMap::new();
    let mut results = std::collections::HashMap::new();
    while results.len() < count as usize {
        match client.recv().await {
            ServerMessage::Accepted {
                id,
                n: Some(n),
                tag,
                ..
            } => {
                assert_eq!(tag, Some(n.to_string()));
                assert!(ids.insert(id, n).is_none());
            }
            ServerMessage::Result(result) => {
                let n = *ids
                    .get(&result.id)
                    .expect("accepted precedes the result of the same job");
                let output = result.outcome.output_text().expect("expected done");
                assert_eq!(output, reference(n));
                assert!(results.insert(result.id, n).is_none(), "one result per job");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    client.expect_nothing_pending().await;
}

async fn stopping_the_server_sends_every_socket_a_close_frame(mode: Mode) {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app(1).await;
    let mut first = server.client().await;
    let mut second = server.client().await;
    let id = first.submit(3).await;
    assert_eq!(first.output_of(id).await, "6");
    second.expect_nothing_pending().await;

    server.stop().await;
    for client in [&mut first, &mut second] {
        match client.next_message().await {
            Some(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, CloseCode::Away);
                assert_eq!(frame.reason, "server shutting down");
            }
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn identical_inputs_are_computed_once_and_each_job_gets_its_own_result() {
    use std::sync::atomic::Ordering;

    let env = TestEnv::new();
    let server = env.spawn_server().await;
    let worker = env.spawn_worker(2).await;
    let mut client = server.client().await;
    // Four jobs for one n (in flight together, or answered from the stored result), one for another.
    let mut ids = Vec::new();
    for n in [60_000, 60_000, 60_000, 60_000, 61_000] {
        client
            .send_json(serde_json::json!({"type":"submit","n":n}))
            .await;
        ids.push(n);
    }
    let mut accepted = std::collections::HashMap::new();
    let mut done = std::collections::HashMap::new();
    while done.len() < ids.len() {
        match client.recv().await {
            ServerMessage::Accepted { id, n: Some(n), .. } => {
                accepted.insert(id, n);
            }
            ServerMessage::Result(result) => {
                let output = result.outcome.output_text().expect("expected done");
                done.insert(result.id, output);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(accepted.len(), 5, "each job has its own ID");
    let by_n = |n: u64| {
        accepted
            .iter()
            .filter(move |(_, &m)| m == n)
            .map(|(id, _)| done[id].clone())
            .collect::<Vec<_>>()
    };
    let same = by_n(60_000);
    assert_eq!(same.len(), 4);
    assert!(same.iter().all(|o| *o == same[0]));
    assert_eq!(same[0].len(), 260_635, "digits of 60000!");
    assert_ne!(by_n(61_000)[0], same[0]);
    assert_eq!(worker.stats.computations.load(Ordering::Relaxed), 2);
    assert_eq!(worker.stats.reused.load(Ordering::Relaxed), 3);

    // Later, the stored result answers a new job for the same n without computing.
    let id = client.submit(60_000).await;
    assert_eq!(client.output_of(id).await, same[0]);
    assert_eq!(worker.stats.computations.load(Ordering::Relaxed), 2);
}

crate::both_modes!(
    small_factorials_are_exact,
    large_factorial_matches_digit_count_and_residue,
    websocat_style_bare_numbers_are_submits,
    ref_is_echoed_and_results_carry_timings,
    many_jobs_on_one_socket_each_get_one_result,
    stopping_the_server_sends_every_socket_a_close_frame,
);
