//! Every default of dp and its tools, defined once. The tools' flags, deploy.toml's keys
//! and the dp commands fall back to these, and `--help` shows them from here.

use std::time::Duration;

/// Hosts worked on at once (`--jobs`), by every tool and dp. Most of a host's time is
/// spent waiting for it, so this is high: measured with 50 hosts 50 ms away
/// (scripts/bench/wan.sh), 64 took 0.78x the time of 16; on loopback, where the hosts
/// share this machine's CPU, 1.05x. Each host holds one session (a socket) whatever
/// this is; the open-file limit is raised for them (`parallel::raise_fd_limit`).
pub const JOBS: u16 = 64;

/// Complete releases kept on each host (`keep`, `--keep`).
pub const KEEP: usize = 5;

/// The deploy lock's lease (`--lease`), taken or renewed by each step.
pub const LEASE: Duration = Duration::from_secs(15 * 60);

/// [`LEASE`] as `--lease` takes it (a test checks they agree).
pub const LEASE_TEXT: &str = "15m";

/// How long a host may take to become healthy (`[restart] health_timeout`).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the restart command may run (`[restart] timeout`).
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// How long building a dependency environment, or the `[build]` command, may take.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long a migration command (`[migrate] exec`, `exec_post`) may run.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long dp-migrate waits for the database's migration lock (`[migrate] lock_timeout`).
pub const MIGRATE_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to wait for a TCP connection and the SSH handshake (`connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A duration as the flags and deploy.toml write it (`30s`, `5m`).
pub fn text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lease_text_is_the_lease() {
        assert_eq!(
            crate::config::parse_duration(super::LEASE_TEXT).unwrap(),
            super::LEASE
        );
        assert_eq!(super::text(super::HEALTH_TIMEOUT), "30s");
    }
}
