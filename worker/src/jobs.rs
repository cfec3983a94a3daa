//! What a worker does with one job, apart from how the job arrived: mark it running, compute it on a
//! blocking thread, store the final record, and say who must be told.

use std::sync::Arc;
use std::time::Instant;

use herald_protocol::{unix_ms, Completion, JobMessage, JobRecord, JobStatus};
use tracing::{info, warn};

use crate::compute;
use crate::store::{Finish, Start, Store, StoreError};

/// What is left to do once a job has been processed.
#[derive(Debug)]
pub enum Processed {
    /// Nothing to publish: the record is gone, or another writer already finished and published it.
    Nothing,
    /// Publish `completion` once to each of `watchers` (server instances' routing keys).
    Publish {
        completion: Completion,
        watchers: Vec<String>,
    },
}

/// Runs one job to its final state.
///
/// Safe to call again for a job already processed (a redelivery): a job whose result is stored is not
/// computed again, its completion is published again instead, since the first publish may not have
/// happened; servers drop the duplicate.
pub async fn process(store: &Store, job: JobMessage, max_n: u64) -> Result<Processed, StoreError> {
    let started_ms = unix_ms();
    let submitted_ms = match store.start(&job.id, started_ms).await? {
        Start::Missing => {
            warn!("job record is missing (expired or never stored); dropping the job");
            return Ok(Processed::Nothing);
        }
        Start::Final => return republish(store, job).await,
        Start::Run {
            attempts,
            submitted_ms,
        } => {
            info!(n = job.n, attempts, "job started");
            submitted_ms
        }
    };
    let mut record = JobRecord::queued(job.n, submitted_ms);
    record.started_ms = Some(started_ms);
    if job.n > max_n {
        // The server checks this too; a worker still refuses what would exhaust its memory.
        record.status = JobStatus::Failed;
        record.error = Some(format!("n is above this worker's maximum of {max_n}"));
    } else {
        let n = job.n;
        let computed = tokio::task::spawn_blocking(move || {
            let clock = Instant::now();
            let output = compute::factorial_decimal(n, &mut |_| true);
            (output, clock.elapsed())
        })
        .await;
        match computed {
            Ok((Ok(output), elapsed)) => {
                record.status = JobStatus::Done;
                record.compute_ms = Some(elapsed.as_millis() as u64);
                record.digits = Some(output.len() as u64);
                record.output = Some(Arc::from(output));
            }
            Ok((Err(interrupted), _)) => {
                record.status = JobStatus::Failed;
                record.error = Some(interrupted.to_string());
            }
            Err(panic) => {
                warn!(error = %panic, "computation panicked");
                record.status = JobStatus::Failed;
                record.error = Some("internal error while computing".into());
            }
        }
    }
    record.finished_ms = Some(unix_ms());
    match store.finish(&job.id, &record).await? {
        Finish::Applied { watchers } => {
            info!(status = %record.status, compute_ms = record.compute_ms, "job finished");
            Ok(Processed::Publish {
                completion: Completion::new(job.id, record),
                watchers,
            })
        }
        Finish::AlreadyFinal => Ok(Processed::Nothing),
        Finish::Missing => {
            warn!("job record expired while the job ran; result dropped");
            Ok(Processed::Nothing)
        }
    }
}

async fn republish(store: &Store, job: JobMessage) -> Result<Processed, StoreError> {
    let Some(record) = store.get(&job.id).await? else {
        return Ok(Processed::Nothing);
    };
    info!(status = %record.status, "job already final; publishing its completion again");
    Ok(Processed::Publish {
        completion: Completion::new(job.id, record),
        watchers: store.watchers(&job.id).await?,
    })
}
