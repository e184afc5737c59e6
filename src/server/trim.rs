//! Gives the heap memory a burst of requests freed back to the system once opendify has been
//! idle for a moment. glibc's allocator keeps it otherwise (tens of MiB after a thousand
//! concurrent streams); trimming off the hot path, after a quiet second, costs the requests
//! nothing. Each generation in flight holds a [`Busy`]; when the last one ends, a watcher
//! waits for a quiet second (no new generation started) and trims.
//!
//! Trimming also lets go of the pages of opendify's own code and constants that are mapped
//! (see [`release_code_pages`]), as does [`after_startup`]: startup runs the command line,
//! configuration and store-opening code once, and a burst maps the request path's pages, 64 KiB
//! of neighbours at a time (the kernel's fault-around). They stay in the page cache, shared by
//! every process running the binary; the next request maps back what it runs, a minor fault
//! per 64 KiB. No crate does this (it is a few lines over `/proc/self/smaps` and `madvise`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Generations to Dify in flight, and how many have started so far.
static OPEN: AtomicUsize = AtomicUsize::new(0);
static STARTED: AtomicU64 = AtomicU64::new(0);
/// A watcher task is waiting for a quiet moment.
static WATCHING: AtomicBool = AtomicBool::new(false);
const QUIET: Duration = Duration::from_secs(1);

/// One generation in flight; dropping the last one schedules a trim.
pub struct Busy(());

impl Busy {
    pub fn begin() -> Busy {
        OPEN.fetch_add(1, Ordering::AcqRel);
        STARTED.fetch_add(1, Ordering::AcqRel);
        Busy(())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if OPEN.fetch_sub(1, Ordering::AcqRel) != 1 || WATCHING.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            WATCHING.store(false, Ordering::Release);
            return;
        };
        handle.spawn(async {
            let _watching = Watching;
            loop {
                let seen = STARTED.load(Ordering::Acquire);
                tokio::time::sleep(QUIET).await;
                if OPEN.load(Ordering::Acquire) == 0 && STARTED.load(Ordering::Acquire) == seen {
                    let _ = tokio::task::spawn_blocking(trim).await;
                    return;
                }
            }
        });
    }
}

/// Clears [`WATCHING`] however the watcher ends (also when its runtime shuts down).
struct Watching;

impl Drop for Watching {
    fn drop(&mut self) {
        WATCHING.store(false, Ordering::Release);
    }
}

/// Once serving has started: the startup code's pages are not needed again. A quiet second
/// later, so that work started at startup (the first store cleanup) has run.
pub fn after_startup() {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async {
            tokio::time::sleep(QUIET).await;
            let _ = tokio::task::spawn_blocking(release_code_pages).await;
        });
    }
}

fn trim() {
    trim_heap();
    release_code_pages();
}

/// Unmaps opendify's read-only file-backed segments (code, constants) from this process:
/// `madvise(MADV_DONTNEED)` on a private file mapping drops the page-table entries, and the
/// next access maps the same page cache page again. Only mappings of the executable that are
/// not writable and hold no private copy of a page (`Anonymous: 0 kB`, which rules out the
/// relocated RELRO data) are released: their contents are exactly the file's.
#[cfg(target_os = "linux")]
fn release_code_pages() {
    let Ok(exe) = std::env::current_exe() else { return };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return };
    for (start, end) in pristine_mappings(&smaps, &exe.to_string_lossy()) {
        unsafe extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: std::ffi::c_int) -> std::ffi::c_int;
        }
        const MADV_DONTNEED: std::ffi::c_int = 4;
        // SAFETY: the range is a whole mapping of the executable that is read-only and identical
        // to the file (checked by `pristine_mappings`), so dropping its pages loses nothing:
        // the next access faults the same bytes back in from the page cache.
        unsafe {
            madvise(start as *mut std::ffi::c_void, end - start, MADV_DONTNEED);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn release_code_pages() {}

/// The address ranges of `path`'s mappings in `/proc/self/smaps` that are not writable and
/// have no anonymous (copied-on-write) pages.
fn pristine_mappings(smaps: &str, path: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    // The mapping being read: its range, and whether it is a candidate so far.
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first
            .split_once('-')
            .and_then(|(s, e)| Some((usize::from_str_radix(s, 16).ok()?, usize::from_str_radix(e, 16).ok()?)))
        {
            let perms = fields.next().unwrap_or("");
            // The path is the rest of the line after offset, device and inode (it may hold spaces).
            let file = line.splitn(6, char::is_whitespace).nth(5).unwrap_or("").trim();
            current = (file == path && perms.starts_with('r') && !perms.contains('w')).then_some((start, end));
        } else if first == "Anonymous:" {
            let anonymous = fields.next().and_then(|kb| kb.parse::<u64>().ok());
            if let Some(range) = current.take()
                && anonymous == Some(0)
            {
                found.push(range);
            }
        }
    }
    found
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim only hands free pages of glibc's heap back to the kernel; it is
    // thread-safe and has no preconditions.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55f53c298000-55f53c813000 r--p 00000000 fe:00 5368837                    /opt/opendify
Rss:                2016 kB
Anonymous:             0 kB
55f53c813000-55f53d749000 r-xp 0057a000 fe:00 5368837                    /opt/opendify
Rss:                8484 kB
Anonymous:             0 kB
55f53d749000-55f53d7ef000 r--p 014af000 fe:00 5368837                    /opt/opendify
Rss:                 664 kB
Anonymous:           664 kB
55f53d7ef000-55f53d7f9000 rw-p 01554000 fe:00 5368837                    /opt/opendify
Anonymous:            40 kB
7f0000000000-7f0000001000 r-xp 00000000 fe:00 77                         /usr/lib/libc.so.6
Anonymous:             0 kB
7f0000002000-7f0000003000 r-xp 00000000 fe:00 5368838                    /opt/opendify (deleted)
Anonymous:             0 kB
";

    #[test]
    fn only_read_only_unmodified_mappings_of_the_binary_are_released() {
        assert_eq!(
            pristine_mappings(SMAPS, "/opt/opendify"),
            [(0x55f53c298000, 0x55f53c813000), (0x55f53c813000, 0x55f53d749000)],
            "not the relocated RELRO mapping, the writable data, another file, or a replaced binary"
        );
    }

    #[test]
    fn releasing_our_own_code_pages_keeps_the_process_running() {
        release_code_pages();
        // Code and constants fault back in: this runs, formats and compares.
        assert_eq!(format!("{}", 6 * 7), "42");
    }
}
