//! The data directory's lock: one server at a time keeps its jobs there.
//!
//! An advisory lock (`flock`, through the standard library's `File::try_lock`) on `herald.lock`
//! rather than SQLite's own exclusive locking mode: the kernel releases it when the process dies,
//! `kill -9` included, so a crashed server never leaves a stale lock behind; the database stays
//! readable by other tools (`sqlite3`, the tests) while the server runs; and the second server is
//! told which process holds the directory (its PID is written in the file).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use super::OpenError;

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "herald.lock";

/// The held lock; released when dropped (or when the process ends, however it ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of `dir` (which exists), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<Self, OpenError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| OpenError::directory(dir, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(OpenError::Locked {
                    dir: dir.to_path_buf(),
                    holder: if holder.is_empty() || !holder.bytes().all(|b| b.is_ascii_digit()) {
                        "another process".to_owned()
                    } else {
                        format!("process {holder}")
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(OpenError::directory(dir, e)),
        }
        // Who holds it, for the message the next server gets; the lock does not depend on it.
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()))
            .and_then(|()| file.flush());
        if let Err(e) = written {
            return Err(OpenError::directory(dir, e));
        }
        Ok(Self { _file: file })
    }
}
