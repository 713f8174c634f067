//! What the local provisioner reads from Linux's `/proc`: per-process CPU time, faults, RSS
//! and storage I/O, and the processes of a process group.
//!
//! Parsing is split from reading so the parsers are tested on fixed text as well as on the
//! test's own process. Network bytes are deliberately absent: Linux keeps no per-process
//! network counters, and `/proc/PID/net/dev` shows the whole network namespace, which for a
//! process on the host's loopback is the host's traffic, not the group's.

use std::io;
use std::path::Path;

/// The fields of `/proc/PID/stat` the provisioner uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Process id.
    pub pid: i32,
    /// State letter: `R`, `S`, `D`, `Z` (zombie), `T`, `X` (dead), ...
    pub state: char,
    /// Parent's pid.
    pub ppid: i32,
    /// Process group id.
    pub pgrp: i32,
    /// Minor faults (no disk read needed).
    pub minflt: u64,
    /// Major faults (the page came from disk).
    pub majflt: u64,
    /// User CPU time, clock ticks.
    pub utime: u64,
    /// System CPU time, clock ticks.
    pub stime: u64,
    /// Start time, clock ticks after boot: with `pid`, identifies one process over pid reuse.
    pub starttime: u64,
    /// Resident set size, pages.
    pub rss_pages: u64,
}

impl ProcStat {
    /// Whether the process has exited (a zombie waiting to be reaped, or dead).
    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses `/proc/PID/stat`. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    // Fields 3.. (state onwards); field n is at index n - 3.
    let f: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let num = |n: usize| f.get(n - 3).and_then(|s| s.parse::<u64>().ok());
    let int = |n: usize| f.get(n - 3).and_then(|s| s.parse::<i32>().ok());
    Some(ProcStat {
        pid,
        state: f.first()?.chars().next()?,
        ppid: int(4)?,
        pgrp: int(5)?,
        minflt: num(10)?,
        majflt: num(12)?,
        utime: num(14)?,
        stime: num(15)?,
        starttime: num(22)?,
        // Signed in the kernel's format; a negative value never happens for a live process.
        rss_pages: f.get(24 - 3)?.parse::<i64>().ok()?.max(0) as u64,
    })
}

/// Storage I/O of a process, from `/proc/PID/io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcIo {
    /// Bytes the process caused to be fetched from storage.
    pub read_bytes: u64,
    /// Bytes the process caused to be sent to storage.
    pub write_bytes: u64,
}

/// Parses `/proc/PID/io`. `rchar`/`wchar` count every read and write call, page cache
/// included; `read_bytes`/`write_bytes` are the storage traffic, which is what is wanted.
pub fn parse_io(text: &str) -> Option<ProcIo> {
    let mut read = None;
    let mut write = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim() {
            "read_bytes" => read = v.trim().parse().ok(),
            "write_bytes" => write = v.trim().parse().ok(),
            _ => {}
        }
    }
    Some(ProcIo {
        read_bytes: read?,
        write_bytes: write?,
    })
}

/// Reads and parses `/proc/PID/stat`; `Ok(None)` when the process is gone (or the file does
/// not parse, which only a kernel with another format would cause).
pub fn read_stat(proc_root: &Path, pid: i32) -> io::Result<Option<ProcStat>> {
    match std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")) {
        Ok(text) => Ok(parse_stat(&text)),
        Err(e) if gone(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads `/proc/PID/io`; `None` when it cannot be read: the process is gone, the kernel has
/// no I/O accounting, or reading it is not allowed (`EACCES`: another user's process, or a
/// hardened `ptrace` policy).
pub fn read_io(proc_root: &Path, pid: i32) -> Option<ProcIo> {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("io"))
        .ok()
        .and_then(|t| parse_io(&t))
}

/// The live (not exited) processes whose process group is one of `pgids`, found by reading
/// every `/proc/PID/stat`: a group's members include what its instances started, which their
/// own pids alone would miss. Processes that vanish while the scan runs are skipped.
pub fn group_members(proc_root: &Path, pgids: &[i32]) -> io::Result<Vec<ProcStat>> {
    let mut out = Vec::new();
    if pgids.is_empty() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(proc_root)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(Some(stat)) = read_stat(proc_root, pid)
            && pgids.contains(&stat.pgrp)
            && !stat.exited()
        {
            out.push(stat);
        }
    }
    Ok(out)
}

/// Whether `pid` is a live process: in `/proc` and not a zombie.
pub fn alive(proc_root: &Path, pid: i32) -> bool {
    matches!(read_stat(proc_root, pid), Ok(Some(s)) if !s.exited())
}

fn gone(e: &io::Error) -> bool {
    // ESRCH shows up when the process exits between open and read.
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC: &str = "/proc";

    #[test]
    fn stat_with_spaces_and_parentheses_in_the_name() {
        // The kernel's format, for a process named "tmux: server (1)".
        let line = "4242 (tmux: server (1)) S 1 4242 4242 0 -1 4194560 8815 0 3 0 1200 345 0 0 \
                    20 0 1 0 987654 28672000 1536 18446744073709551615 1 1 0 0 0 0 0 4096 \
                    134433283 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            ProcStat {
                pid: 4242,
                state: 'S',
                ppid: 1,
                pgrp: 4242,
                minflt: 8815,
                majflt: 3,
                utime: 1200,
                stime: 345,
                starttime: 987654,
                rss_pages: 1536,
            }
        );
        assert!(!s.exited());
        assert!(parse_stat("4242 (truncated) S 1").is_none());
        assert!(parse_stat("").is_none());
    }

    #[test]
    fn own_stat_is_read() {
        let me = std::process::id() as i32;
        let s = read_stat(Path::new(PROC), me).unwrap().unwrap();
        assert_eq!(s.pid, me);
        assert_eq!(s.ppid, std::os::unix::process::parent_id() as i32);
        assert!(s.rss_pages > 0, "{s:?}");
        assert!(s.minflt > 0, "{s:?}");
        assert!(s.starttime > 0, "{s:?}");
        assert!(alive(Path::new(PROC), me));
        // Our own process group holds at least us.
        let pgrp = s.pgrp;
        let members = group_members(Path::new(PROC), &[pgrp]).unwrap();
        assert!(members.iter().any(|m| m.pid == me), "{members:?}");
    }

    #[test]
    fn io_is_parsed_and_own_io_is_readable() {
        let text = "rchar: 323934931\nwchar: 323929600\nsyscr: 632687\nsyscw: 632675\n\
                    read_bytes: 4096\nwrite_bytes: 323932160\ncancelled_write_bytes: 0\n";
        assert_eq!(
            parse_io(text),
            Some(ProcIo {
                read_bytes: 4096,
                write_bytes: 323932160
            })
        );
        assert_eq!(parse_io("rchar: 1\n"), None);
        // The kernel may lack I/O accounting; when it has it, our own file parses.
        if Path::new("/proc/self/io").exists() {
            assert!(read_io(Path::new(PROC), std::process::id() as i32).is_some());
        }
    }

    #[test]
    fn a_missing_process_is_none_not_an_error() {
        // Pids are below 2^22 on Linux.
        assert_eq!(read_stat(Path::new(PROC), i32::MAX).unwrap(), None);
        assert_eq!(read_io(Path::new(PROC), i32::MAX), None);
        assert!(!alive(Path::new(PROC), i32::MAX));
        assert!(group_members(Path::new(PROC), &[]).unwrap().is_empty());
    }
}
