//! Facts about processes that tests and load tools need: raising the open-file limit,
//! reading resident memory. Shared by `tests/hostile.rs` and `examples/loadtest.rs`.
#![allow(dead_code)]

/// Raises the soft limit on open files towards `wanted`, as far as the hard limit allows
/// (raising the hard limit too, up to the kernel's `fs.nr_open`, where the process may),
/// and returns the soft limit in force.
pub fn raise_fd_limit(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|value| value.trim().parse::<u64>().ok());
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if let Some(ceiling) = ceiling.filter(|_| limit.rlim_max < wanted) {
            // Allowed with CAP_SYS_RESOURCE (root, say); refused otherwise.
            let top = wanted.min(ceiling).max(limit.rlim_max);
            let raised = libc::rlimit {
                rlim_cur: top,
                rlim_max: top,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        if limit.rlim_cur < wanted {
            let raised = libc::rlimit {
                rlim_cur: wanted.min(limit.rlim_max),
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// The resident memory of process `pid` (`"self"` for this one), in KiB; 0 when unknown.
pub fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0)
}
