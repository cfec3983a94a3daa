//! The cases every [`JobStore`] must pass, written once and run by each backend's own tests (the
//! memory store's and the durable store's), each on a store that holds one queued job of `alice`,
//! watched by the instance `a`.

use herald_protocol::{JobId, JobStatus};

use crate::backend::{Cancel, JobStore, Start};

/// A queued job is cancelled at once by its owner (a stranger sees nothing), never starts, and a
/// second cancel finds it final.
pub(crate) async fn a_queued_job_is_cancelled_at_once_and_never_starts(
    store: &dyn JobStore,
    id: &JobId,
) {
    assert_eq!(
        store.cancel(id, None, Some("bob"), 9).await.unwrap(),
        Cancel::Missing,
        "another identity's job is unknown to it"
    );
    let Cancel::Cancelled { record, watchers } =
        store.cancel(id, None, Some("alice"), 9).await.unwrap()
    else {
        panic!("a queued job is cancelled at once");
    };
    assert_eq!(record.status, JobStatus::Cancelled);
    assert_eq!(record.finished_ms, Some(9));
    assert_eq!(watchers, vec!["a".to_owned()]);
    assert_eq!(store.start(id, 10, true).await.unwrap(), Start::Final);
    assert_eq!(
        store.cancel(id, None, None, 11).await.unwrap(),
        Cancel::Final(JobStatus::Cancelled)
    );
}

/// A running job reports its progress, is asked to stop by a cancel, and the canceller (`b`) then
/// watches it beside `a`.
pub(crate) async fn a_running_job_is_asked_to_stop_and_the_canceller_watches(
    store: &dyn JobStore,
    id: &JobId,
) {
    assert!(matches!(
        store.start(id, 2, true).await.unwrap(),
        Start::Run {
            attempts: 1,
            cancel_requested: false,
            ..
        }
    ));
    let report = store
        .report(id, Some((0.25, Some("product"))))
        .await
        .unwrap();
    assert!(!report.stop);
    let record = store.get(id).await.unwrap().unwrap();
    assert_eq!(
        (record.progress, record.phase.as_deref()),
        (Some(0.25), Some("product"))
    );
    assert_eq!(
        store.cancel(id, Some("b"), None, 3).await.unwrap(),
        Cancel::Requested
    );
    let report = store.report(id, None).await.unwrap();
    assert!(report.stop);
    let mut watchers = report.watchers;
    watchers.sort();
    assert_eq!(watchers, vec!["a".to_owned(), "b".to_owned()]);
}

/// Watchers are counted per instance and released one registration at a time; a stranger's resume
/// registers nothing.
pub(crate) async fn watchers_are_counted_and_released(store: &dyn JobStore, id: &JobId) {
    store.resume(id, "a", None).await.unwrap().unwrap();
    store.unwatch(id, "a", 1).await.unwrap();
    assert_eq!(store.watchers(id).await.unwrap(), vec!["a".to_owned()]);
    store.unwatch(id, "a", 1).await.unwrap();
    assert!(store.watchers(id).await.unwrap().is_empty());
    assert!(store.resume(id, "c", Some("bob")).await.unwrap().is_none());
    assert!(
        store.watchers(id).await.unwrap().is_empty(),
        "a stranger registers nothing"
    );
}
