//! How many connections this process can hold: its open-file limit, raised to the hard limit at start,
//! and the connection cap (--max-connections) that fits in it.

use std::io;

use rlimit::Resource;
use tracing::{info, warn};

/// Files the server needs besides its connections: the listener, the runtime's epoll and wakers, the
/// RabbitMQ and Redis connections, log files, with room to spare. A cap closer than this to the file
/// limit lets `accept` fail with EMFILE instead of the cap answering 503.
pub const FILES_BESIDES_CONNECTIONS: u64 = 128;

/// The default cap is this share of the file limit, in percent: the rest is for everything else the
/// process opens, and for connections refused with a 503 while the cap is reached.
const DEFAULT_SHARE_PERCENT: u64 = 90;

/// The process's open-file limit (RLIMIT_NOFILE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// The soft limit the process started with.
    pub soft_before: u64,
    /// The soft limit now: what the process may open.
    pub soft: u64,
    /// The hard limit: the ceiling without privileges.
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard one: a server of long-lived connections needs one file
/// per connection, and the usual soft default (1024) is far below what the system allows.
pub fn raise_file_limit() -> io::Result<FileLimit> {
    let (soft_before, hard) = Resource::NOFILE.get()?;
    if soft_before < hard {
        Resource::NOFILE.set(hard, hard)?;
    }
    let (soft, hard) = Resource::NOFILE.get()?;
    Ok(FileLimit {
        soft_before,
        soft,
        hard,
    })
}

/// The connection cap: `configured`, or 90 % of the soft file limit (at least 1).
pub fn connection_cap(configured: Option<u32>, soft: u64) -> u32 {
    configured.unwrap_or_else(|| {
        let share = soft.saturating_mul(DEFAULT_SHARE_PERCENT) / 100;
        u32::try_from(share.max(1)).unwrap_or(u32::MAX)
    })
}

/// Raises the file limit, sizes the connection cap and logs both; warns when the cap does not fit in
/// the file limit (connections past what fits fail at `accept` instead of getting a 503).
pub fn plan(configured: Option<u32>) -> u32 {
    let limit = match raise_file_limit() {
        Ok(limit) => limit,
        Err(e) => {
            warn!(error = %e, "could not read or raise the open-file limit");
            let soft = Resource::NOFILE.get().map_or(1024, |(soft, _)| soft);
            FileLimit {
                soft_before: soft,
                soft,
                hard: soft,
            }
        }
    };
    let cap = connection_cap(configured, limit.soft);
    info!(
        soft_before = limit.soft_before,
        soft = limit.soft,
        hard = limit.hard,
        max_connections = cap,
        "open-file limit {} ({}, hard limit {}); at most {cap} connections{}",
        limit.soft,
        if limit.soft > limit.soft_before {
            format!("raised from {}", limit.soft_before)
        } else {
            "already the hard limit".to_owned()
        },
        limit.hard,
        if configured.is_some() {
            " (--max-connections)"
        } else {
            " (90 % of the file limit; set --max-connections to change it)"
        },
    );
    if u64::from(cap) + FILES_BESIDES_CONNECTIONS > limit.soft {
        warn!(
            max_connections = cap,
            file_limit = limit.soft,
            "--max-connections {cap} does not fit in the open-file limit {}: the server needs about \
             {FILES_BESIDES_CONNECTIONS} files besides its connections, so past about {} connections \
             new ones fail at accept instead of getting a 503. Raise the hard limit (`ulimit -Hn`, \
             LimitNOFILE= in systemd, nofile in /etc/security/limits.conf) or lower the cap",
            limit.soft,
            limit.soft.saturating_sub(FILES_BESIDES_CONNECTIONS),
        );
    }
    cap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_is_ninety_percent_of_the_file_limit() {
        assert_eq!(connection_cap(None, 20_000), 18_000);
        assert_eq!(connection_cap(None, 1024), 921);
        assert_eq!(connection_cap(None, 1), 1);
        assert_eq!(connection_cap(None, u64::MAX), u32::MAX);
        assert_eq!(connection_cap(Some(5), 20_000), 5);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = raise_file_limit().unwrap();
        assert_eq!(limit.soft, limit.hard);
        assert!(limit.soft >= limit.soft_before);
    }
}
