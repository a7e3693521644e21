//! Running a step on many hosts at once: one session per host, opened on first use and
//! kept for every later step of the same process, on a bounded pool of threads.

use crate::transport::Connection;
use crate::{ErrorKind, Record};
use rayon::prelude::*;

/// Open sessions, one slot per record (same order as the records).
#[derive(Default)]
pub struct Sessions {
    slots: Vec<Option<Connection>>,
}

impl Sessions {
    /// No sessions yet.
    pub fn new() -> Sessions {
        Sessions::default()
    }

    /// Opens a session to every host that has not failed and has none yet (a host that
    /// cannot be reached gets `error` set for `step`, of kind `unreachable` when no
    /// session could be had at all).
    pub fn connect(&mut self, records: &mut [Record], jobs: usize, step: &str) {
        self.run(records, jobs, step, |_, _| Ok(()));
    }

    /// Runs `work` on the one host `records[index]`, opening its session if needed. The
    /// record is not marked failed here: the caller decides what a failure means.
    pub fn run_one<T>(
        &mut self,
        records: &mut [Record],
        index: usize,
        work: impl FnOnce(&mut Connection, &mut Record) -> Result<T, String>,
    ) -> Result<T, String> {
        if self.slots.len() < records.len() {
            self.slots.resize_with(records.len(), || None);
        }
        let record = &mut records[index];
        let slot = &mut self.slots[index];
        if slot.is_none() {
            *slot = Some(Connection::open(record).map_err(|e| e.to_string())?);
        }
        let result = work(slot.as_mut().expect("opened above"), record);
        if result.is_err() {
            *slot = None;
        }
        result
    }

    /// Runs `work` for the records at `indices` (failed or not), at most `jobs` at once,
    /// and returns each outcome in the same order. Records are not marked failed here;
    /// a host that cannot be reached yields its connection error.
    pub fn run_indices<F, T>(
        &mut self,
        records: &mut [Record],
        indices: &[usize],
        jobs: usize,
        work: F,
    ) -> Vec<Result<T, String>>
    where
        F: Fn(&mut Connection, &mut Record) -> Result<T, String> + Sync,
        T: Send,
    {
        if self.slots.len() < records.len() {
            self.slots.resize_with(records.len(), || None);
        }
        let hosts = records.len();
        let mut chosen: Vec<(usize, &mut Record, &mut Option<Connection>)> = records
            .iter_mut()
            .zip(self.slots.iter_mut())
            .enumerate()
            .filter(|(i, _)| indices.contains(i))
            .map(|(i, (r, s))| (i, r, s))
            .collect();
        let run_one = |(_, record, slot): &mut (usize, &mut Record, &mut Option<Connection>)| -> Result<T, String> {
            if slot.is_none() {
                **slot = Some(Connection::open(record).map_err(|e| e.to_string())?);
            }
            let result = work(slot.as_mut().expect("opened above"), record);
            if result.is_err() {
                **slot = None;
            }
            result
        };
        let mut results: Vec<(usize, Result<T, String>)> = match pool(jobs, hosts) {
            Some(pool) => {
                pool.install(|| chosen.par_iter_mut().map(|c| (c.0, run_one(c))).collect())
            }
            None => chosen.iter_mut().map(|c| (c.0, run_one(c))).collect(),
        };
        results.sort_by_key(|(i, _)| indices.iter().position(|j| j == i));
        results.into_iter().map(|(_, r)| r).collect()
    }

    /// Runs `work` for every record that has not failed, at most `jobs` at once, with an
    /// open session to its host. A host that cannot be reached, or whose `work` returns
    /// an error, gets `error` set for `step`; no record is dropped, order is kept.
    pub fn run<F>(&mut self, records: &mut [Record], jobs: usize, step: &str, work: F)
    where
        F: Fn(&mut Connection, &mut Record) -> Result<(), String> + Sync,
    {
        if self.slots.len() < records.len() {
            self.slots.resize_with(records.len(), || None);
        }
        let run_one = |(record, slot): (&mut Record, &mut Option<Connection>)| {
            if record.failed() {
                return;
            }
            if crate::interrupt::should_stop() {
                record.fail(step, "interrupted before this step ran on the host");
                return;
            }
            if slot.is_none() {
                match Connection::open(record) {
                    Ok(c) => *slot = Some(c),
                    Err(e) => {
                        let kind = if e.is_unreachable() {
                            ErrorKind::Unreachable
                        } else {
                            ErrorKind::Failed
                        };
                        record.fail_as(step, kind, e.to_string());
                        return;
                    }
                }
            }
            let conn = slot.as_mut().expect("opened above");
            if let Err(message) = work(conn, record) {
                record.fail(step, message);
                // A session that failed mid-command may be unusable: reopen next time.
                *slot = None;
            }
        };
        let hosts = records.len();
        let pairs = records.iter_mut().zip(self.slots.iter_mut());
        match pool(jobs, hosts) {
            Some(pool) => pool.install(|| {
                pairs.collect::<Vec<_>>().into_par_iter().for_each(run_one);
            }),
            None => pairs.for_each(run_one),
        }
    }
}

/// The thread pool that runs at most `jobs` of a fleet of `hosts` at once: made at the
/// first call and kept for the process (every step of a deploy uses the same `--jobs`
/// and fleet); a call with another size replaces it. No more threads than hosts: each
/// costs its start and its idle spinning (64 for one host took 5 ms here). None if no
/// thread could be started (then hosts run one by one).
pub fn pool(jobs: usize, hosts: usize) -> Option<std::sync::Arc<rayon::ThreadPool>> {
    use std::sync::{Arc, Mutex};
    static POOL: Mutex<Option<(usize, Arc<rayon::ThreadPool>)>> = Mutex::new(None);
    let jobs = jobs.min(hosts).max(1);
    let mut kept = POOL.lock().unwrap_or_else(|e| e.into_inner());
    match &*kept {
        Some((n, pool)) if *n == jobs => Some(pool.clone()),
        _ => {
            let pool = Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(jobs)
                    .thread_name(|i| format!("dp-host-{i}"))
                    .build()
                    .ok()?,
            );
            *kept = Some((jobs, pool.clone()));
            Some(pool)
        }
    }
}

/// Raises the soft limit on open files to the hard one: each host holds a session (a
/// socket, and with the local transport pipes) for the whole deploy, and a soft limit of
/// 1024 would end a large fleet's deploy partway. Called once at start; a failure leaves
/// the limit as it was (the hosts past it then fail with the OS error).
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let want = lim.rlim_max;
        lim.rlim_cur = want;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            // Some systems cap the soft limit below an unlimited hard one (macOS: OPEN_MAX).
            lim.rlim_cur = 10240.min(want);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
