//! Gives the heap memory a burst of requests freed back to the system once opendify has been
//! idle for a moment. glibc's allocator keeps it otherwise (tens of MiB after a thousand
//! concurrent streams); trimming off the hot path, after a quiet second, costs the requests
//! nothing. Each generation in flight holds a [`Busy`]; when the last one ends, a watcher
//! waits for a quiet second (no new generation started) and trims.

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

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
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
fn trim() {}
