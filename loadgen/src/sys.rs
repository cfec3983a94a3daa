//! What the operating system allows and reports: file-descriptor limits, and a process's resident memory.

use std::io;

use rlimit::Resource;

/// A limit or reading from the system that could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// getrlimit/setrlimit failed.
    #[error("cannot {0} the open-file limit: {1}")]
    Limit(&'static str, io::Error),
    /// A /proc file could not be read.
    #[error("cannot read {path}: {error}")]
    Proc {
        /// The file.
        path: String,
        /// Why.
        error: io::Error,
    },
    /// A /proc file lacks the line looked for.
    #[error("{path} has no {what} line")]
    Missing {
        /// The file.
        path: String,
        /// The line looked for.
        what: &'static str,
    },
}

/// This process's open-file limit, before and after raising the soft limit to the hard one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FdLimit {
    /// Soft limit before.
    pub soft_before: u64,
    /// Soft limit now.
    pub soft: u64,
    /// Hard limit (the ceiling without privileges).
    pub hard: u64,
}

/// Raises this process's soft open-file limit to its hard limit.
pub fn raise_fd_limit() -> Result<FdLimit, SysError> {
    let (soft_before, hard) =
        rlimit::getrlimit(Resource::NOFILE).map_err(|e| SysError::Limit("read", e))?;
    if soft_before < hard {
        rlimit::setrlimit(Resource::NOFILE, hard, hard).map_err(|e| SysError::Limit("raise", e))?;
    }
    let (soft, hard) =
        rlimit::getrlimit(Resource::NOFILE).map_err(|e| SysError::Limit("read", e))?;
    Ok(FdLimit {
        soft_before,
        soft,
        hard,
    })
}

fn read_proc(pid: u32, file: &str) -> Result<(String, String), SysError> {
    let path = format!("/proc/{pid}/{file}");
    let text = std::fs::read_to_string(&path).map_err(|error| SysError::Proc {
        path: path.clone(),
        error,
    })?;
    Ok((path, text))
}

/// A process's resident memory (VmRSS), in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, SysError> {
    let (path, status) = read_proc(pid, "status")?;
    parse_vm_rss(&status).ok_or(SysError::Missing {
        path,
        what: "VmRSS",
    })
}

/// A process's soft open-file limit (`u64::MAX` for unlimited).
pub fn max_open_files(pid: u32) -> Result<u64, SysError> {
    let (path, limits) = read_proc(pid, "limits")?;
    parse_max_open_files(&limits).ok_or(SysError::Missing {
        path,
        what: "Max open files",
    })
}

/// The kernel's slab caches that hold a TCP socket's objects: the socket itself, its inode, its file and
/// dentry, its epoll entry and the security module's blobs.
pub const SOCKET_SLABS: [&str; 9] = [
    "TCP",
    "TCPv6",
    "sock_inode_cache",
    "dentry",
    "filp",
    "eventpoll_epi",
    "ep_head",
    "lsm_inode_cache",
    "lsm_file_cache",
];

/// What the kernel holds for sockets, machine-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KernelMemory {
    /// Bytes in use in the slab caches of [`SOCKET_SLABS`] (active objects times their size).
    pub socket_slabs_bytes: u64,
    /// Pages of TCP socket buffers (`mem` of the TCP line of /proc/net/sockstat).
    pub tcp_buffer_pages: u64,
}

/// The kernel's memory for sockets now, from /proc/slabinfo (readable by root only) and
/// /proc/net/sockstat.
pub fn kernel_memory() -> Result<KernelMemory, SysError> {
    let read = |path: &str| {
        std::fs::read_to_string(path).map_err(|error| SysError::Proc {
            path: path.to_owned(),
            error,
        })
    };
    let slabinfo = read("/proc/slabinfo")?;
    let sockstat = read("/proc/net/sockstat")?;
    Ok(KernelMemory {
        socket_slabs_bytes: parse_slab_bytes(&slabinfo, &SOCKET_SLABS),
        tcp_buffer_pages: parse_tcp_pages(&sockstat).ok_or(SysError::Missing {
            path: "/proc/net/sockstat".into(),
            what: "TCP mem",
        })?,
    })
}

/// Sums active objects times object size over the caches `names` of /proc/slabinfo's text.
pub fn parse_slab_bytes(slabinfo: &str, names: &[&str]) -> u64 {
    slabinfo
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            if !names.contains(&name) {
                return None;
            }
            let active: u64 = words.next()?.parse().ok()?;
            let _total = words.next()?;
            let size: u64 = words.next()?.parse().ok()?;
            Some(active * size)
        })
        .sum()
}

/// Reads `mem` of `TCP: inuse 88 orphan 0 tw 8 alloc 91 mem 184` in /proc/net/sockstat's text.
pub fn parse_tcp_pages(sockstat: &str) -> Option<u64> {
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem")?;
    words.next()?.parse().ok()
}

/// How many local ports outgoing connections can use (net.ipv4.ip_local_port_range); one per socket to a
/// given server address.
pub fn local_ports() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    parse_port_range(&text)
}

/// Reads `32768\t60999` as the number of ports in the range.
pub fn parse_port_range(text: &str) -> Option<u64> {
    let mut words = text.split_whitespace().map(str::parse::<u64>);
    let (low, high) = (words.next()?.ok()?, words.next()?.ok()?);
    (high >= low).then(|| high - low + 1)
}

/// Reads `VmRSS:   12345 kB` from the text of /proc/PID/status.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value),
        _ => None,
    }
}

/// Reads the soft limit of `Max open files  1024  524288  files` from the text of /proc/PID/limits.
pub fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    match line["Max open files".len()..].split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        soft => soft.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\therald-server\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t 12 MB\n"), None);
    }

    #[test]
    fn reads_open_file_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_open_files(unlimited), Some(u64::MAX));
        assert_eq!(parse_max_open_files(""), None);
    }

    #[test]
    fn reads_kernel_socket_memory() {
        let slabinfo = "slabinfo - version: 2.1\n\
                        # name <active_objs> <num_objs> <objsize> <objperslab>\n\
                        TCP                 122    140   2368   13    8 : tunables 0 0 0\n\
                        sock_inode_cache    217    240    832   19    4 : tunables 0 0 0\n\
                        kmalloc-64         2742   2752     64   64    1 : tunables 0 0 0\n";
        assert_eq!(
            parse_slab_bytes(slabinfo, &SOCKET_SLABS),
            122 * 2368 + 217 * 832
        );
        let sockstat =
            "sockets: used 130\nTCP: inuse 88 orphan 0 tw 8 alloc 91 mem 184\nUDP: inuse 0 mem 7\n";
        assert_eq!(parse_tcp_pages(sockstat), Some(184));
        assert_eq!(parse_tcp_pages("UDP: inuse 0 mem 7\n"), None);
    }

    #[test]
    fn reads_port_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(28232));
        assert_eq!(parse_port_range("9 1"), None);
        assert_eq!(parse_port_range(""), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(max_open_files(pid).unwrap() > 0);
        let limit = raise_fd_limit().unwrap();
        assert_eq!(limit.soft, limit.hard);
    }
}
