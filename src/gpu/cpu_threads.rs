//! The worker threads of CPU adapters (lavapipe, llvmpipe), one per CPU.
//!
//! A CPU adapter runs each dispatch on a pool of worker threads, one per CPU, which all
//! wake together and meet again at the dispatch's end. Linux's scheduler sometimes leaves two
//! of them queued on one CPU while another CPU idles, for a second or more at a time (the
//! figures: `docs/performance.md`, "the CPU adapter's threads"). Pinning the last unnamed
//! threads the driver started while the device was made, one per CPU, puts the pool's
//! workers on distinct CPUs. `MEMLAYERS_PIN_CPU_THREADS=0` turns it off.

/// This process's thread ids, ascending (creation order, as Linux hands them out).
pub(super) fn thread_ids() -> Vec<i32> {
    let mut ids: Vec<i32> = std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

fn name(tid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()
}

/// Of `after`'s threads (ascending), those not in `before` that carry the calling thread's
/// name: the threads a driver started without naming them, as its worker pool's are (named
/// ones, such as llvmpipe's idle rasterizer threads, are left alone, as are threads other
/// code started meanwhile under names of their own).
pub(super) fn started_unnamed(before: &[i32], after: &[i32]) -> Vec<i32> {
    let Ok(own) = std::fs::read_to_string("/proc/thread-self/comm") else {
        return Vec::new();
    };
    after
        .iter()
        .copied()
        .filter(|t| before.binary_search(t).is_err() && name(*t).as_ref() == Some(&own))
        .collect()
}

/// Whether pinning is on (it is unless `MEMLAYERS_PIN_CPU_THREADS=0`).
pub fn enabled() -> bool {
    std::env::var("MEMLAYERS_PIN_CPU_THREADS").map_or(true, |v| v.trim() != "0")
}

/// Pins the last of `threads` (ascending), as many as the process has CPUs, one to each
/// CPU, and returns the threads pinned: a worker pool of one thread per CPU is
/// started together, last (lavapipe starts one other unnamed thread first, which wakes
/// once a dispatch and runs best unpinned). Nothing happens with fewer than 2 CPUs.
pub(super) fn spread(threads: &[i32]) -> Vec<i32> {
    let cpus = thread_cpus(std::process::id() as i32);
    if cpus.len() < 2 {
        return Vec::new();
    }
    let pool = &threads[threads.len().saturating_sub(cpus.len())..];
    let mut pinned = Vec::new();
    for (&tid, &cpu) in pool.iter().zip(&cpus) {
        // Safety: `set` is a plain bit set; `tid` is a thread of this process.
        let ok = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        };
        if ok {
            pinned.push(tid);
        }
    }
    pinned
}

/// The CPUs thread `tid` of this process (0: the calling thread) may run on; the process's
/// id names its main thread.
pub fn thread_cpus(tid: i32) -> Vec<usize> {
    // Safety: `set` is a plain bit set that sched_getaffinity fills in.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}
