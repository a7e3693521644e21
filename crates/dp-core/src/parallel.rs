//! Running a step on many hosts at once: one session per host, opened on first use and
//! kept for every later step of the same process, at most `jobs` hosts at a time.

use crate::transport::Connection;
use crate::{ErrorKind, Record};
use std::sync::Mutex;

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
        let chosen: Vec<(usize, &mut Record, &mut Option<Connection>)> = records
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
        let mut results: Vec<(usize, Result<T, String>)> =
            map(jobs, chosen, |mut c| (c.0, run_one(&mut c)));
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
        let pairs: Vec<_> = records.iter_mut().zip(self.slots.iter_mut()).collect();
        map(jobs, pairs, run_one);
    }
}

/// `work` on every item, at most `jobs` at once: up to `jobs` threads (no more than
/// items) each take the next item until none is left, then end, so that no thread waits
/// idle between steps (a kept pool's idle threads spun looking for work: 13% of the
/// client's CPU in a 100-host deploy). Gives the outcomes in the items' order. With no
/// thread to be had, the items run one by one here.
pub fn map<I: Send, T: Send>(jobs: usize, items: Vec<I>, work: impl Fn(I) -> T + Sync) -> Vec<T> {
    let threads = jobs.min(items.len());
    if threads <= 1 {
        return items.into_iter().map(work).collect();
    }
    let n = items.len();
    let queue = Mutex::new(items.into_iter().enumerate());
    let done: Mutex<Vec<(usize, T)>> = Mutex::new(Vec::with_capacity(n));
    let worker = || loop {
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
        let Some((i, item)) = next else { break };
        let out = work(item);
        done.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((i, out));
    };
    std::thread::scope(|s| {
        let started = (0..threads)
            .take_while(|t| {
                std::thread::Builder::new()
                    .name(format!("dp-host-{t}"))
                    .spawn_scoped(s, worker)
                    .is_ok()
            })
            .count();
        if started == 0 {
            worker();
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, out)| out).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn map_runs_every_item_at_most_jobs_at_once_and_keeps_their_order() {
        let (running, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let out = map(3, (0..20).collect(), |i: u32| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            running.fetch_sub(1, Ordering::SeqCst);
            (i * 2, std::thread::current().name().map(str::to_string))
        });
        assert_eq!(
            out.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            (0..20).map(|i| i * 2).collect::<Vec<_>>()
        );
        assert_eq!(most.load(Ordering::SeqCst), 3);
        assert!(out
            .iter()
            .all(|(_, name)| name.as_deref().is_some_and(|n| n.starts_with("dp-host-"))));
        // One job, or one item: no thread at all.
        let here = std::thread::current().id();
        assert!(map(1, vec![1, 2], |_| std::thread::current().id() == here)
            .into_iter()
            .all(|same| same));
        assert!(map(8, vec![1], |_| std::thread::current().id() == here)[0]);
        assert!(map(8, Vec::<u8>::new(), |_| ()).is_empty());
    }
}
