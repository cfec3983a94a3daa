//! The durable store against the memory store's cases, and what it keeps across a reopening.

use std::time::Duration;

use herald_protocol::model::{factorial_input, json_string};
use herald_protocol::{JobId, JobRecord, JobStatus, Json, FACTORIAL};

use crate::backend::OverQuota;
use crate::store_cases;

use super::*;

async fn open(dir: &Path) -> Opened {
    // The writer of a store just dropped may still be releasing the directory's lock.
    for _ in 0..500 {
        match DurableStore::open(dir, true).await {
            Err(OpenError::Locked { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
            opened => return opened.expect("the store opens"),
        }
    }
    panic!("the directory stayed locked");
}

async fn store_with(dir: &Path, id: &JobId, ttl: Duration) -> DurableStore {
    let store = open(dir).await.store;
    let record = JobRecord::queued(FACTORIAL, factorial_input(5), 1).owned_by(Some("alice"));
    let created = store
        .create(id, &record, Some("a"), ttl, &ClientLimits::default())
        .await;
    assert_eq!(created.unwrap(), Admission::Created);
    store
}

#[tokio::test]
async fn a_queued_job_is_cancelled_at_once_and_never_starts() {
    let dir = tempfile::tempdir().unwrap();
    let id = JobId::new_v4();
    let store = store_with(dir.path(), &id, Duration::from_secs(60)).await;
    store_cases::a_queued_job_is_cancelled_at_once_and_never_starts(&store, &id).await;
    drop(store);
    let again = open(dir.path()).await;
    assert!(again.unfinished.is_empty(), "a cancelled job is final");
    let record = again.store.get(&id).await.unwrap().unwrap();
    assert_eq!(record.status, JobStatus::Cancelled);
    assert_eq!(record.owner.as_deref(), Some("alice"));
}

#[tokio::test]
async fn a_running_job_is_asked_to_stop_and_the_canceller_watches() {
    let dir = tempfile::tempdir().unwrap();
    let id = JobId::new_v4();
    let store = store_with(dir.path(), &id, Duration::from_secs(60)).await;
    store_cases::a_running_job_is_asked_to_stop_and_the_canceller_watches(&store, &id).await;
    drop(store);

    // The server died under it: the job comes back unfinished, its attempt and the cancel kept, and
    // the next start ends it without computing.
    let again = open(dir.path()).await;
    assert_eq!(again.unfinished.len(), 1);
    assert_eq!(again.unfinished[0].id, id);
    assert!(
        again.store.watchers(&id).await.unwrap().is_empty(),
        "watchers were sockets of the process that died"
    );
    assert!(matches!(
        again.store.start(&id, 4, true).await.unwrap(),
        Start::Run {
            attempts: 2,
            cancel_requested: true,
            ..
        }
    ));
}

#[tokio::test]
async fn watchers_are_counted_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let id = JobId::new_v4();
    let store = store_with(dir.path(), &id, Duration::from_secs(60)).await;
    store_cases::watchers_are_counted_and_released(&store, &id).await;
}

#[tokio::test]
async fn finished_records_and_results_are_kept_and_expire_with_their_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let (done, short) = (JobId::new_v4(), JobId::new_v4());
    let store = store_with(dir.path(), &done, Duration::from_secs(600)).await;
    let record = JobRecord::queued(FACTORIAL, factorial_input(6), 1);
    store
        .create(
            &short,
            &record,
            None,
            Duration::from_millis(300),
            &ClientLimits::default(),
        )
        .await
        .unwrap();
    let (input, output) = (factorial_input(5), json_string("120"));
    store.start(&done, 2, true).await.unwrap();
    store
        .cache_result(&done, FACTORIAL, &input, &output)
        .await
        .unwrap();
    let mut finished = JobRecord::queued(FACTORIAL, input.clone(), 1);
    finished.status = JobStatus::Done;
    finished.output = Some(output.clone());
    finished.attempts = 1;
    finished.finished_ms = Some(3);
    assert!(matches!(
        store.finish(&done, &finished).await.unwrap(),
        Finish::Applied { .. }
    ));
    assert_eq!(
        store.finish(&done, &finished).await.unwrap(),
        Finish::AlreadyFinal
    );
    drop(store);

    let again = open(dir.path()).await;
    let record = again.store.get(&done).await.unwrap().unwrap();
    assert_eq!(record.status, JobStatus::Done);
    assert_eq!(record.output, Some(output.clone()));
    assert_eq!(record.owner.as_deref(), Some("alice"), "kept by finish");
    assert_eq!(
        again.store.cached_result(FACTORIAL, &input).await.unwrap(),
        Some(output)
    );
    assert_eq!(again.unfinished.len(), 1, "the short one, not yet expired");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(again.store.get(&short).await.unwrap().is_none());
    assert_eq!(
        again.store.sweep().await.unwrap(),
        1,
        "its row left the file"
    );
    drop(again);
    let last = open(dir.path()).await;
    assert!(last.unfinished.is_empty());
    assert!(last.store.get(&short).await.unwrap().is_none());
    assert!(last.store.get(&done).await.unwrap().is_some());
}

#[tokio::test]
async fn a_second_store_on_the_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path()).await;
    let Err(error) = DurableStore::open(dir.path(), true).await else {
        panic!("two stores on one directory");
    };
    assert!(matches!(error, OpenError::Locked { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains(&format!("in use by process {}", std::process::id())),
        "{error}"
    );
    drop(first);
}

#[tokio::test]
async fn a_damaged_database_is_named_not_opened() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DATABASE_FILE), vec![b'x'; 8192]).unwrap();
    let Err(error) = DurableStore::open(dir.path(), true).await else {
        panic!("garbage opened as a database");
    };
    assert!(matches!(error, OpenError::Damaged { .. }), "{error}");
    assert!(error.hint().contains("Move the file"));
}

/// Rows of `table` in the database file (read beside the open store, as WAL allows).
fn rows(dir: &Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(dir.join(DATABASE_FILE)).unwrap();
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
        row.get(0)
    })
    .unwrap()
}

/// A finished record of `input` with `output`.
fn done_with(input: &Json, output: &Json) -> JobRecord {
    let mut finished = JobRecord::queued(FACTORIAL, input.clone(), 1);
    finished.status = JobStatus::Done;
    finished.output = Some(output.clone());
    finished.attempts = 1;
    finished.finished_ms = Some(3);
    finished
}

fn key<'a>(name: &'a str, fingerprint: &'a str) -> Key<'a> {
    Key {
        scope: Some("alice"),
        key: name,
        fingerprint,
    }
}

/// `record` created as job `id` under `key`, with no watcher and no limits.
async fn create_keyed(
    store: &DurableStore,
    key: crate::idempotency::Key<'_>,
    id: &JobId,
    record: &JobRecord,
    ttl: Duration,
) -> crate::idempotency::Keyed {
    use crate::idempotency::IdempotencyStore;
    store
        .create_keyed(key, id, record, None, ttl, &ClientLimits::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn idempotency_keys_are_kept_across_a_reopening() {
    use crate::idempotency::{IdempotencyStore, Keyed};
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(600);
    let (first, second, third) = (JobId::new_v4(), JobId::new_v4(), JobId::new_v4());
    let record = JobRecord::queued(FACTORIAL, factorial_input(5), 1);
    let store = open(dir.path()).await.store;
    assert_eq!(
        create_keyed(&store, key("k1", "f1"), &first, &record, ttl).await,
        Keyed::Created
    );
    create_keyed(&store, key("gone", "f1"), &third, &record, ttl).await;
    store.delete_keyed(key("gone", "f1"), &third).await.unwrap();
    drop(store);

    let store = open(dir.path()).await.store;
    let Keyed::Existing { id, .. } =
        create_keyed(&store, key("k1", "f1"), &second, &record, ttl).await
    else {
        panic!("the key still names its job after the reopening");
    };
    assert_eq!(id, first);
    assert_eq!(
        create_keyed(&store, key("k1", "f2"), &second, &record, ttl).await,
        Keyed::Conflict,
        "another input under the same key"
    );
    let other_scope = Key {
        scope: Some("bob"),
        ..key("k1", "f2")
    };
    assert_eq!(
        create_keyed(&store, other_scope, &second, &record, ttl).await,
        Keyed::Created,
        "keys belong to an identity"
    );
    assert_eq!(
        create_keyed(&store, key("gone", "f1"), &third, &record, ttl).await,
        Keyed::Created,
        "a key whose job was deleted is free"
    );
    assert!(store.get(&second).await.unwrap().is_some());
}

fn done_record(webhook: Option<&str>) -> JobRecord {
    let mut finished = JobRecord::queued(FACTORIAL, factorial_input(5), 1);
    finished.status = JobStatus::Done;
    finished.output = Some(json_string("120"));
    finished.attempts = 1;
    finished.finished_ms = Some(3);
    finished.webhook = webhook.map(str::to_owned);
    finished
}

#[tokio::test]
async fn an_output_is_written_once_and_survives_a_reopening_with_the_clients_counts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await.store;
    // Large enough to be compressed: what is stored is not the text.
    let input = factorial_input(3000);
    let output = json_string(&"1234567890".repeat(2000));
    let ids: Vec<JobId> = (0..3).map(|_| JobId::new_v4()).collect();
    let limits = ClientLimits {
        max_jobs: 4,
        ..ClientLimits::default()
    };
    for id in &ids {
        let record = JobRecord::queued(FACTORIAL, input.clone(), 1).from_client(Some("ip:a"));
        let created = store
            .create(id, &record, None, Duration::from_secs(600), &limits)
            .await;
        assert_eq!(created.unwrap(), Admission::Created);
        store.start(id, 2, true).await.unwrap();
    }
    store
        .cache_result(&ids[0], FACTORIAL, &input, &output)
        .await
        .unwrap();
    for id in &ids {
        let finish = store.finish(id, &done_with(&input, &output)).await.unwrap();
        assert!(matches!(finish, Finish::Applied { .. }));
    }
    store.ping().await.unwrap();
    assert_eq!(rows(dir.path(), "outputs"), 1, "three records, one output");
    assert_eq!(rows(dir.path(), "job_outputs"), 3);
    let conn = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    let (stored, inline): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT SUM(LENGTH(blob)) FROM outputs), \
             (SELECT COUNT(*) FROM jobs WHERE record LIKE '%1234567890%')",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert!(
        (stored as usize) < output.get().len() / 4,
        "compressed: {stored} bytes"
    );
    assert_eq!(inline, 0, "no record holds the output itself");
    drop(conn);
    drop(store);

    let again = open(dir.path()).await;
    assert!(again.unfinished.is_empty());
    for id in &ids {
        let record = again.store.get(id).await.unwrap().unwrap();
        assert_eq!(record.status, JobStatus::Done);
        assert_eq!(record.output.as_ref(), Some(&output));
    }
    assert_eq!(
        again.store.cached_result(FACTORIAL, &input).await.unwrap(),
        Some(output.clone())
    );
    assert_eq!(again.store.memory.outputs_held().0, 1);
    // The client's three kept jobs were counted again: a fourth is taken, a fifth is not.
    let record = JobRecord::queued(FACTORIAL, input.clone(), 1).from_client(Some("ip:a"));
    for expected in [Admission::Created, Admission::Refused(OverQuota::Jobs(4))] {
        let taken = again
            .store
            .create(
                &JobId::new_v4(),
                &record,
                None,
                Duration::from_secs(600),
                &limits,
            )
            .await;
        assert_eq!(taken.unwrap(), expected);
    }
}

#[tokio::test]
async fn an_output_leaves_the_file_once_no_live_record_refers_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await.store;
    let input = factorial_input(7);
    let (shared, alone) = (json_string("5040"), json_string("other"));
    let (short, long, lone) = (JobId::new_v4(), JobId::new_v4(), JobId::new_v4());
    for (id, ttl) in [
        (short, Duration::from_millis(300)),
        (long, Duration::from_secs(600)),
        (lone, Duration::from_millis(300)),
    ] {
        let record = JobRecord::queued(FACTORIAL, input.clone(), 1);
        let created = store
            .create(&id, &record, None, ttl, &ClientLimits::default())
            .await;
        assert_eq!(created.unwrap(), Admission::Created);
    }
    for (id, output) in [(short, &shared), (long, &shared), (lone, &alone)] {
        store.finish(&id, &done_with(&input, output)).await.unwrap();
    }
    store.ping().await.unwrap();
    assert_eq!(rows(dir.path(), "outputs"), 2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    store.sweep().await.unwrap();
    assert_eq!(
        rows(dir.path(), "outputs"),
        1,
        "the lone output went with its record; the shared one stays for the live record"
    );
    assert_eq!(rows(dir.path(), "job_outputs"), 1);
    drop(store);
    let again = open(dir.path()).await.store;
    assert_eq!(
        again.get(&long).await.unwrap().unwrap().output,
        Some(shared)
    );
    assert!(again.get(&lone).await.unwrap().is_none());
}

#[tokio::test]
async fn pending_deliveries_and_their_attempts_are_kept_across_a_reopening() {
    use crate::deliveries::DeliveryStore;
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(600);
    let lease = Duration::from_secs(60);
    let hook = "https://example.com/hook";
    let (done, cancelled, plain) = (JobId::new_v4(), JobId::new_v4(), JobId::new_v4());
    let store = open(dir.path()).await.store;
    for id in [&done, &cancelled] {
        let record = JobRecord::queued(FACTORIAL, factorial_input(5), 1).with_webhook(Some(hook));
        store
            .create(id, &record, None, ttl, &ClientLimits::default())
            .await
            .unwrap();
    }
    let record = JobRecord::queued(FACTORIAL, factorial_input(5), 1);
    store
        .create(&plain, &record, None, ttl, &ClientLimits::default())
        .await
        .unwrap();
    store.start(&done, 2, true).await.unwrap();
    store.finish(&done, &done_record(Some(hook))).await.unwrap();
    store.start(&plain, 2, true).await.unwrap();
    store.finish(&plain, &done_record(None)).await.unwrap();
    assert!(matches!(
        store.cancel(&cancelled, None, None, 4).await.unwrap(),
        Cancel::Cancelled { .. }
    ));
    // Claimed and begun, then the process stops before the attempt's outcome is written.
    let mut claimed = store.claim_due(10, lease).await.unwrap();
    claimed.sort();
    let mut expected = vec![done, cancelled];
    expected.sort();
    assert_eq!(claimed, expected, "a job without a webhook has no delivery");
    assert_eq!(store.begin_attempt(&done).await.unwrap().unwrap().number, 1);
    store.retry_after(&done, Duration::ZERO).await.unwrap();
    drop(store);

    let store = open(dir.path()).await.store;
    let mut claimed = store.claim_due(10, lease).await.unwrap();
    claimed.sort();
    assert_eq!(
        claimed, expected,
        "the lease of a stopped server is not kept"
    );
    let attempt = store.begin_attempt(&done).await.unwrap().unwrap();
    assert_eq!(attempt.number, 2, "the attempt before the reopening counts");
    assert_eq!(attempt.record.webhook.as_deref(), Some(hook));
    store.complete(&done).await.unwrap();
    store
        .retry_after(&cancelled, Duration::from_secs(3600))
        .await
        .unwrap();
    drop(store);

    let store = open(dir.path()).await.store;
    assert!(
        store.claim_due(10, lease).await.unwrap().is_empty(),
        "one delivered, the other due in an hour"
    );
    assert!(store.get(&done).await.unwrap().is_some());
}

#[tokio::test]
async fn a_file_of_the_first_layout_is_upgraded_and_its_jobs_kept() {
    let dir = tempfile::tempdir().unwrap();
    let id = JobId::new_v4();
    let record = JobRecord::queued(FACTORIAL, factorial_input(7), 1);
    {
        let conn = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        conn.execute_batch(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, record TEXT NOT NULL, expires_ms INTEGER NOT NULL);
             CREATE TABLE results (digest TEXT PRIMARY KEY, job TEXT NOT NULL, output TEXT NOT NULL,
                                   expires_ms INTEGER NOT NULL);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO jobs (id, record, expires_ms) VALUES (?1, ?2, ?3)",
            rusqlite::params![
                id.to_string(),
                serde_json::to_string(&record).unwrap(),
                (unix_ms() + 600_000) as i64
            ],
        )
        .unwrap();
    }
    let opened = open(dir.path()).await;
    assert_eq!(opened.unfinished.len(), 1);
    assert_eq!(opened.unfinished[0].id, id);
    let store = opened.store;
    store.start(&id, 2, true).await.unwrap();
    store
        .finish(&id, &done_record(Some("https://example.com/hook")))
        .await
        .unwrap();
    drop(store);
    let again = open(dir.path()).await;
    assert_eq!(
        again.store.get(&id).await.unwrap().unwrap().status,
        JobStatus::Done,
        "the upgraded file takes the new columns"
    );
}
