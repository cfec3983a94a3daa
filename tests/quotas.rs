//! Results stored once, and each client's quotas: many jobs of one input leave one stored copy of
//! the output, and a client past a quota is answered `busy` (with `retry_after`) while every result
//! already taken stays readable.

use herald_protocol::{ErrorCode, ErrorMessage, JobId, Outcome, ServerMessage};

use crate::both_modes;
use crate::helpers::{eventually, metric, try_connect, Client, Mode, TestEnv, TestServer};

/// Digits of 1,000,000!.
const DIGITS_OF_A_MILLION: usize = 5_565_709;

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789";

async fn connect(server: &TestServer, token: &str) -> Client {
    let bearer = format!("Bearer {token}");
    match try_connect(&server.ws_url(), &[("Authorization", &bearer)]).await {
        Ok((client, _)) => client,
        Err(status) => panic!("the upgrade was refused with {status}"),
    }
}

/// Sends `count` submits of `n` at once and returns the IDs accepted (results arriving meanwhile
/// are set aside).
async fn submit_many(client: &mut Client, n: u64, count: usize) -> Vec<JobId> {
    for _ in 0..count {
        client
            .send_json(serde_json::json!({"type": "submit", "n": n}))
            .await;
    }
    let mut accepted = Vec::new();
    while accepted.len() < count {
        match client.recv().await {
            ServerMessage::Accepted { id, .. } => accepted.push(id),
            ServerMessage::Result(_) => {}
            other => panic!("expected accepted, got {other:?}"),
        }
    }
    accepted
}

/// Sends `submit` and expects `busy` naming the limit `flag`; the refusal.
async fn refused_busy(client: &mut Client, submit: serde_json::Value, flag: &str) -> ErrorMessage {
    client.send_json(submit).await;
    let busy = client.expect_error(ErrorCode::Busy).await;
    assert!(busy.message.contains(flag), "{}", busy.message);
    busy
}

/// How many of `ids` are done, by their records' status in Redis (read without their outputs).
async fn done_in_redis(
    env: &TestEnv,
    redis: &mut redis::aio::MultiplexedConnection,
    ids: &[JobId],
) -> usize {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.hget(env.backend.keys().job(id), "status");
    }
    // A Redis busy with the outputs may answer late: that counts as none done yet.
    let statuses: Vec<Option<String>> = pipe.query_async(redis).await.unwrap_or_default();
    statuses
        .iter()
        .filter(|status| status.as_deref() == Some("done"))
        .count()
}

/// The digits of job `id`'s output, over HTTP.
async fn output_length(server: &TestServer, id: &JobId) -> usize {
    let response = reqwest::get(server.http_url(&format!("/jobs/{id}/output")))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap().len()
}

async fn two_hundred_submits_of_one_input_store_one_output(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let mut settings = env.server_settings();
    settings.max_in_flight = 200;
    let server = env.spawn_app_with(settings).await;
    let mut client = server.client().await;
    let ids = submit_many(&mut client, 1_000_000, 200).await;
    // The socket goes: 200 results of 5.5 MB each are not what this test is about.
    client.close().await;
    match mode {
        Mode::Distributed => {
            let mut redis = env.redis().await;
            eventually("every job done", || {
                let mut redis = redis.clone();
                let (env, ids) = (&env, &ids);
                async move { done_in_redis(env, &mut redis, ids).await == ids.len() }
            })
            .await;
            let outputs: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}output:*", env.backend.redis_prefix))
                .query_async(&mut redis)
                .await
                .unwrap();
            assert_eq!(outputs.len(), 1, "one stored copy: {outputs:?}");
            let bytes: u64 = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&outputs[0])
                .query_async(&mut redis)
                .await
                .unwrap();
            assert!(
                bytes < DIGITS_OF_A_MILLION as u64 / 2,
                "stored compressed: {bytes} bytes"
            );
            for id in [ids[0], ids[199]] {
                let inline: Option<String> = redis::cmd("HGET")
                    .arg(env.backend.keys().job(&id))
                    .arg("output")
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                assert_eq!(inline, None, "records refer to the output, holding none");
            }
        }
        Mode::Embedded => {
            eventually("every job done", || async {
                metric(server.addr, "herald_worker_jobs_total{status=\"done\"}").await
                    == Some(200.0)
            })
            .await;
            assert_eq!(
                metric(server.addr, "herald_stored_outputs").await,
                Some(1.0)
            );
            let bytes = metric(server.addr, "herald_stored_output_bytes")
                .await
                .unwrap();
            assert!(
                bytes > 1.0 && bytes < DIGITS_OF_A_MILLION as f64 / 2.0,
                "stored compressed: {bytes} bytes"
            );
        }
    }
    // Every record still reads back its whole output.
    for id in [ids[0], ids[100], ids[199]] {
        assert_eq!(output_length(&server, &id).await, DIGITS_OF_A_MILLION);
    }
}

async fn quotas_answer_busy_and_lose_no_result(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let mut settings = env.server_settings_with_tokens(&[("alice", ALICE), ("bob", BOB)]);
    settings.max_queued_per_client = 3;
    settings.max_jobs_per_client = 6;
    let server = env.spawn_app_with(settings).await;
    let mut alice = connect(&server, ALICE).await;

    // Three long jobs take Alice's three places: a fourth is refused, Bob's is not.
    let mut long = Vec::new();
    for n in [999_990, 999_991, 999_992] {
        long.push(alice.submit(n).await);
    }
    let busy = refused_busy(
        &mut alice,
        serde_json::json!({"type": "submit", "n": 7}),
        "--max-queued-per-client",
    )
    .await;
    assert!(busy.retry_after_ms.unwrap() > 0);
    let mut bob = connect(&server, BOB).await;
    let id = bob.submit(8).await;
    assert_eq!(bob.output_of(id).await, "40320");
    let outputs = alice.outputs_of(&long).await;
    assert!(outputs.values().all(|digits| digits.len() > 5_000_000));
    if mode == Mode::Distributed {
        // Finished jobs left Alice's count of jobs queued or running.
        let mut redis = env.redis().await;
        let active: u64 = redis::cmd("ZCARD")
            .arg(format!(
                "{}client:id:alice:active",
                env.backend.redis_prefix
            ))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(active, 0);
    }

    // Three more make six kept: the seventh is refused, and every one of the six still reads.
    let mut small = Vec::new();
    for n in [4, 5, 6] {
        let id = alice.submit(n).await;
        alice.output_of(id).await;
        small.push(id);
    }
    refused_busy(
        &mut alice,
        serde_json::json!({"type": "submit", "n": 9}),
        "--max-jobs-per-client",
    )
    .await;
    for id in long.iter().chain(&small) {
        alice.resume(*id).await;
        assert!(matches!(alice.result_of(*id).await, Outcome::Done { .. }));
    }
}

async fn stored_bytes_answer_busy_once_past(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let mut settings = env.server_settings_with_tokens(&[("alice", ALICE), ("bob", BOB)]);
    settings.max_stored_bytes_per_client = 1000;
    let server = env.spawn_app_with(settings).await;
    let mut alice = connect(&server, ALICE).await;
    // 3000! has 9,131 digits: over a kilobyte even compressed. The submit that goes past is taken
    // (with an idempotency key: a keyed create is counted as any other).
    alice
        .send_json(serde_json::json!({"type": "submit", "n": 3000, "key": "first"}))
        .await;
    let first = match alice.recv().await {
        ServerMessage::Accepted { id, existing, .. } => {
            assert!(!existing);
            id
        }
        other => panic!("expected accepted, got {other:?}"),
    };
    let digits = alice.output_of(first).await;
    assert_eq!(digits.len(), 9131);
    // The same output again costs nothing more, but Alice is past her bytes already.
    refused_busy(
        &mut alice,
        serde_json::json!({"type": "submit", "n": 3000}),
        "--max-stored-bytes-per-client",
    )
    .await;
    // A new key is refused the same way, checked in the step that would take the key; a repeat of
    // her key is answered with its job, whose stored output is read back, whatever she holds.
    refused_busy(
        &mut alice,
        serde_json::json!({"type": "submit", "n": 3000, "key": "second"}),
        "--max-stored-bytes-per-client",
    )
    .await;
    alice
        .send_json(serde_json::json!({"type": "submit", "n": 3000, "key": "first"}))
        .await;
    match alice.recv().await {
        ServerMessage::Accepted { id, existing, .. } => {
            assert_eq!((id, existing), (first, true));
        }
        other => panic!("expected accepted, got {other:?}"),
    }
    assert_eq!(alice.output_of(first).await, digits);
    // Her result stays, and Bob stores his own.
    alice.resume(first).await;
    assert_eq!(alice.output_of(first).await, digits);
    let mut bob = connect(&server, BOB).await;
    let his = bob.submit(3000).await;
    assert_eq!(bob.output_of(his).await, digits);
}

both_modes!(
    two_hundred_submits_of_one_input_store_one_output,
    quotas_answer_busy_and_lose_no_result,
    stored_bytes_answer_busy_once_past,
);
