//! The stored outputs of the durable store: each output once in the file under its digest, as the
//! memory store keeps it (see [`crate::output`]), and the records and shared results that refer to it
//! by that digest, so that two hundred jobs with one result write (and reload) that result once.
//!
//! Job records are written without their output; `job_outputs` names the output each refers to, and
//! `shared_results` the output of each shared result. An output stays in the file while a row of
//! either refers to it: a sweep removes what expired, then every output that nothing refers to any
//! more.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rusqlite::{params, OptionalExtension, Transaction};

/// The tables of this module, created beside the jobs'.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outputs (
    digest TEXT PRIMARY KEY,
    blob BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS job_outputs (
    job TEXT PRIMARY KEY,
    digest TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_outputs_digest ON job_outputs (digest);
CREATE TABLE IF NOT EXISTS shared_results (
    digest TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    output TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS shared_results_output ON shared_results (output);
CREATE INDEX IF NOT EXISTS shared_results_expiry ON shared_results (expires_ms);
";

/// One write of this module's tables.
pub enum Write {
    /// Output `digest` in its stored form (written only if the file does not hold it yet).
    Output { digest: String, blob: Arc<[u8]> },
    /// Job `job`'s record refers to output `digest`.
    Refer { job: String, digest: String },
    /// The shared result `digest` (see [`herald_protocol::record::result_digest`]) is output
    /// `output`, expiring with job `job`.
    Shared {
        digest: String,
        job: String,
        output: String,
    },
}

/// What the file held at start-up.
#[derive(Default)]
pub struct Loaded {
    /// Stored outputs by digest.
    pub outputs: HashMap<String, Arc<[u8]>>,
    /// The output digest of each job that refers to one.
    pub jobs: HashMap<String, String>,
    /// Shared results that have not expired: the result's digest, the job whose expiry it takes,
    /// and its output digest.
    pub shared: Vec<(String, String, String)>,
}

/// Applies `write`; the answer is the rows changed.
pub(super) fn apply(tx: &Transaction<'_>, write: &Write) -> rusqlite::Result<usize> {
    match write {
        Write::Output { digest, blob } => {
            // Looked up first: a stored output is not bound (copied) again for every job that
            // refers to it.
            let held = tx
                .prepare_cached("SELECT 1 FROM outputs WHERE digest = ?1")?
                .query_row([digest], |_| Ok(()))
                .optional()?;
            if held.is_some() {
                return Ok(0);
            }
            tx.prepare_cached("INSERT INTO outputs (digest, blob) VALUES (?1, ?2)")?
                .execute(params![digest, &blob[..]])
        }
        Write::Refer { job, digest } => tx
            .prepare_cached("INSERT OR REPLACE INTO job_outputs (job, digest) VALUES (?1, ?2)")?
            .execute(params![job, digest]),
        Write::Shared {
            digest,
            job,
            output,
        } => tx
            .prepare_cached(
                "INSERT OR REPLACE INTO shared_results (digest, job, output, expires_ms) \
                 SELECT ?1, id, ?3, expires_ms FROM jobs WHERE id = ?2",
            )?
            .execute(params![digest, job, output]),
    }
}

/// Removes the shared results expired by `now_ms`, the references of jobs no longer in the file,
/// then every output nothing refers to. Run after the expired jobs are removed. Returns the rows
/// removed.
pub(super) fn sweep(tx: &Transaction<'_>, now_ms: i64) -> rusqlite::Result<usize> {
    let shared = tx
        .prepare_cached("DELETE FROM shared_results WHERE expires_ms <= ?1")?
        .execute([now_ms])?;
    let references = tx
        .prepare_cached(
            "DELETE FROM job_outputs WHERE NOT EXISTS \
             (SELECT 1 FROM jobs WHERE jobs.id = job_outputs.job)",
        )?
        .execute([])?;
    let outputs = tx
        .prepare_cached(
            "DELETE FROM outputs WHERE \
             NOT EXISTS (SELECT 1 FROM job_outputs WHERE job_outputs.digest = outputs.digest) \
             AND NOT EXISTS (SELECT 1 FROM shared_results WHERE shared_results.output = outputs.digest)",
        )?
        .execute([])?;
    Ok(shared + references + outputs)
}

/// Reads the outputs that live rows refer to, and those rows.
pub(super) fn load(conn: &rusqlite::Connection, now_ms: i64) -> rusqlite::Result<Loaded> {
    let mut loaded = Loaded::default();
    let mut statement = conn.prepare(
        "SELECT job_outputs.job, job_outputs.digest FROM job_outputs \
         JOIN jobs ON jobs.id = job_outputs.job WHERE jobs.expires_ms > ?1",
    )?;
    for row in statement.query_map([now_ms], |row| Ok((row.get(0)?, row.get(1)?)))? {
        let (job, digest): (String, String) = row?;
        loaded.jobs.insert(job, digest);
    }
    let mut statement =
        conn.prepare("SELECT digest, job, output FROM shared_results WHERE expires_ms > ?1")?;
    loaded.shared = statement
        .query_map([now_ms], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    // Only what a live row refers to: an output whose referrers all expired waits for the sweep.
    let wanted: HashSet<&String> = loaded
        .jobs
        .values()
        .chain(loaded.shared.iter().map(|(_, _, digest)| digest))
        .collect();
    let mut outputs = HashMap::new();
    let mut statement = conn.prepare("SELECT digest, blob FROM outputs")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let digest: String = row.get(0)?;
        // The blob is read only when wanted (SQLite reads a column's overflow pages when asked).
        if wanted.contains(&digest) {
            let blob: Vec<u8> = row.get(1)?;
            outputs.insert(digest, Arc::from(blob));
        }
    }
    loaded.outputs = outputs;
    Ok(loaded)
}
