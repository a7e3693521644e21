//! dp-core: the ground every dp tool stands on.
//!
//! - [`record`]: the host record that flows between tools as one JSON object per line;
//! - [`jsonl`]: reading and writing those lines (`stdin:LINE:` errors, per-line flush);
//! - [`exit`]: the exit codes shared by every tool;
//! - [`quote`]: the one function that quotes arguments for a remote POSIX shell;
//! - [`config`]: the `deploy.toml` file;
//! - [`transport`]: running commands on a host, locally or over SSH;
//! - [`layout`] and [`lock`]: the deploy root on a host and its deploy lock;
//! - [`parallel`]: running a step on many hosts at once, one session per host.

pub mod config;
pub mod defaults;
pub mod exit;
pub mod gate;
pub mod interrupt;
pub mod jsonl;
pub mod layout;
pub mod lock;
pub mod parallel;
pub mod quote;
pub mod record;
pub mod sshconfig;
pub mod template;
pub mod transport;

pub use exit::Exit;
pub use quote::{quote, quote_str};
pub use record::{ErrorKind, HostError, Record, TransportKind};
