//! What `dp` shows on stderr while it works: on a terminal, a live line per host (a
//! spinner with the steps done so far) under an overall step counter; otherwise plain
//! lines, one per step. Records stay on stdout either way. `NO_COLOR` turns color off.

use dp_core::Record;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How much to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// Errors only.
    Quiet,
    /// Progress and a summary.
    Normal,
    /// Also what each step did on each host.
    Verbose,
}

/// The progress display of one deploy.
pub struct Progress {
    verbosity: Verbosity,
    live: Option<(MultiProgress, ProgressBar, Vec<ProgressBar>)>,
    last: Instant,
    done: Vec<String>,
}

impl Progress {
    /// Starts the display for `records`, running `steps` steps.
    pub fn start(records: &[Record], steps: usize, verbosity: Verbosity) -> Progress {
        let tty = std::io::stderr().is_terminal() && verbosity != Verbosity::Quiet;
        let live = tty.then(|| {
            let color = std::env::var_os("NO_COLOR").is_none();
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(steps as u64));
            let bar = if color {
                "{bar:30.cyan/blue}"
            } else {
                "{bar:30}"
            };
            overall.set_style(
                ProgressStyle::with_template(&format!("dp {bar} {{pos}}/{{len}} steps  {{msg}}"))
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let spin = if color {
                "{spinner:.green}"
            } else {
                "{spinner}"
            };
            let hosts = records
                .iter()
                .map(|r| {
                    let b = multi.add(ProgressBar::new_spinner());
                    b.set_style(
                        ProgressStyle::with_template(&format!("  {spin} {{prefix:<16}} {{msg}}"))
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    b.set_prefix(r.host.clone());
                    b.enable_steady_tick(Duration::from_millis(120));
                    b
                })
                .collect();
            let hidden = multi.clone();
            dp_core::transport::passphrase::around_prompt(move |ask| hidden.suspend(ask));
            (multi, overall, hosts)
        });
        if verbosity == Verbosity::Verbose {
            // What the commands on the hosts write, as they write it.
            let width = records.iter().map(|r| r.host.len()).max().unwrap_or(0);
            let multi = live.as_ref().map(|(m, _, _)| m.clone());
            dp_core::transport::live::stream_to(move |host, line| {
                let line = format!("{host:<width$} | {line}");
                match &multi {
                    Some(m) => {
                        let _ = m.println(line);
                    }
                    None => eprintln!("{line}"),
                }
            });
        }
        Progress {
            verbosity,
            live,
            last: Instant::now(),
            done: vec![String::new(); records.len()],
        }
    }

    /// A step finished on every host.
    pub fn step(&mut self, step: &str, records: &[Record]) {
        let secs = self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
        let failed = records.iter().filter(|r| r.failed()).count();
        // Step names in records: "migrate pre" is `migrate`, "migrate post" is
        // `migrate_post` (see dp_migrate's step names).
        let key = match step {
            "migrate post" => "migrate_post",
            _ => step.split_whitespace().next().unwrap_or(step),
        };
        // A step that ran on no host (the deploy stopped before it) is not reported.
        let ran = records
            .iter()
            .any(|r| r.steps.contains_key(key) || r.error.as_ref().is_some_and(|e| e.step == key));
        if !ran {
            return;
        }
        match &self.live {
            Some((_, overall, hosts)) => {
                overall.inc(1);
                overall.set_message(format!("{step} ({secs:.1} s)"));
                for ((bar, r), done) in hosts.iter().zip(records).zip(self.done.iter_mut()) {
                    match &r.error {
                        Some(e) => {
                            bar.finish_with_message(format!(
                                "{done} FAILED in {}: {}",
                                e.step, e.message
                            ));
                        }
                        None => {
                            done.push_str(&format!(" {step} \u{2713}"));
                            bar.set_message(done.trim_start().to_string());
                        }
                    }
                }
            }
            None if self.verbosity != Verbosity::Quiet => {
                eprintln!(
                    "dp: {step}: {}/{} hosts ok ({secs:.1} s)",
                    records.len() - failed,
                    records.len()
                );
            }
            None => {}
        }
        if self.verbosity == Verbosity::Verbose {
            for r in records {
                if let Some(stats) = r.steps.get(key) {
                    self.println(&format!("dp: {}: {step}: {stats}", r.host));
                }
            }
        }
    }

    fn println(&self, line: &str) {
        match &self.live {
            Some((multi, _, _)) => {
                let _ = multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// Clears the live display.
    pub fn finish(self) {
        if let Some((multi, overall, hosts)) = self.live {
            for b in hosts {
                b.finish();
            }
            overall.finish();
            let _ = multi.clear();
        }
    }
}
