//! A fair share of the workers: one client's burst of long jobs does not hold another client's short
//! job behind it. The outcome is asserted (the short job's result comes before most of the burst);
//! how long it takes is measured in BENCHMARKS.md ("Fair share").

use herald_protocol::{ErrorCode, JobId, ServerMessage};

use crate::both_modes;
use crate::helpers::{try_connect, Client, Mode, TestEnv, TestServer};

const HEAVY: &str = "heavy-token-0123456789";
const LIGHT: &str = "light-token-0123456789";

/// The burst: as in the issue, 100 jobs of n close to a million, each a computation of its own.
const BURST: u64 = 100;

async fn connect(server: &TestServer, token: &str) -> Client {
    let bearer = format!("Bearer {token}");
    match try_connect(&server.ws_url(), &[("Authorization", &bearer)]).await {
        Ok((client, _)) => client,
        Err(status) => panic!("the upgrade was refused with {status}"),
    }
}

/// The heavy client sends its burst, then the light client its n = 10: the light result must come
/// while most of the burst is still waiting. `cap`: --max-queued-per-client (0: none, so that only
/// the queue's order can be what keeps the light job from waiting).
async fn a_short_job_passes_a_burst(mode: Mode, cap: u32) {
    let env = TestEnv::in_mode(mode);
    let mut settings = env.server_settings_with_tokens(&[("heavy", HEAVY), ("light", LIGHT)]);
    settings.max_queued_per_client = cap;
    settings.max_in_flight = BURST as usize;
    let server = env.spawn_app_with(settings).await;
    let mut heavy = connect(&server, HEAVY).await;
    for i in 0..BURST {
        heavy
            .send_json(serde_json::json!({"type": "submit", "n": 960_000 + i}))
            .await;
    }
    let mut accepted: Vec<JobId> = Vec::new();
    let mut refused = 0;
    let mut done_early = 0;
    while accepted.len() + refused < BURST as usize {
        match heavy.recv().await {
            ServerMessage::Accepted { id, .. } => accepted.push(id),
            ServerMessage::Error(e) if e.code == ErrorCode::Busy => refused += 1,
            ServerMessage::Result(_) => done_early += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected = if cap == 0 {
        BURST as usize
    } else {
        cap as usize
    };
    assert_eq!(accepted.len(), expected, "the cap holds the burst");

    let mut light = connect(&server, LIGHT).await;
    let id = light.submit(10).await;
    assert_eq!(light.output_of(id).await, "3628800");

    // Every heavy result pushed before the light one is on the heavy socket ahead of the answer to
    // this probe (an unknown ID's resume).
    let probe = JobId::new_v4();
    heavy.resume(probe).await;
    let mut done_before = done_early;
    loop {
        match heavy.recv().await {
            ServerMessage::Result(_) => done_before += 1,
            ServerMessage::Error(e) if e.id == Some(probe) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        done_before * 4 < accepted.len(),
        "the light job waited for {done_before} of the {} heavy jobs",
        accepted.len()
    );
    for id in accepted {
        heavy
            .send_json(serde_json::json!({"type": "cancel", "id": id}))
            .await;
    }
}

/// With the default cap on each client's jobs queued or running.
async fn a_short_job_passes_a_capped_burst(mode: Mode) {
    a_short_job_passes_a_burst(mode, 32).await;
}

both_modes!(a_short_job_passes_a_capped_burst);

/// Embedded, without any cap: the queue's turns between clients alone let the short job pass.
#[tokio::test]
async fn the_embedded_queue_serves_clients_in_turn() {
    a_short_job_passes_a_burst(Mode::Embedded, 0).await;
}
